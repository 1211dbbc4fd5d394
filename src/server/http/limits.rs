//! What the door refuses before it reads a byte of the payload: addresses outside `allow_ips`, clients over
//! their per-address budget (a token bucket each), bodies over `max_body` or slower than `body_timeout`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::BodyExt;

use super::{error, HttpState};

/// The address checks: `allow_ips`, then the per-address rate limit. A refusal is the reply's status and
/// message, and the metric's result.
pub(super) fn admit(
    st: &HttpState,
    ip: Option<IpAddr>,
) -> Result<(), (StatusCode, &'static str, &'static str)> {
    if !st.allow_ips.is_empty() && !ip.is_some_and(|ip| st.allow_ips.iter().any(|n| n.contains(&ip))) {
        tracing::info!(client = ?ip, "webhook refused: client address not in allow_ips");
        return Err((
            StatusCode::FORBIDDEN,
            "this address may not call haul's webhooks",
            "forbidden",
        ));
    }
    if let Some(ip) = ip {
        if !st.limiter.allow(ip) {
            tracing::info!(client = %ip, "webhook refused: rate limit");
            let msg = "too many requests from this address; slow down";
            return Err((StatusCode::TOO_MANY_REQUESTS, msg, "rate_limited"));
        }
    }
    Ok(())
}

/// The reply to a refusal by [`admit`]: a rate limit says when to come back.
pub(super) fn refusal(status: StatusCode, msg: &str) -> Response {
    let mut resp = error(status, msg);
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("10"),
        );
    }
    resp
}

/// A token bucket per client address: `per_minute` sustained, a quarter of that as a burst.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, ip: IpAddr) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let rate = f64::from(self.per_minute) / 60.0;
        let burst = (f64::from(self.per_minute) / 4.0).max(10.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 50_000 {
            // Forget clients whose bucket has refilled: they are indistinguishable from new ones.
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads at most `max` bytes of body within the deadline.
pub(super) async fn read_body(body: Body, max: usize, deadline: Duration) -> Result<Vec<u8>, Response> {
    let mut body = body;
    let mut buf = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| error(StatusCode::BAD_REQUEST, "could not read the request body"))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body is larger than the {max}-byte limit (max_body)"),
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(())) => Ok(buf),
        Ok(Err(resp)) => Err(resp),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "the body did not arrive in time",
        )),
    }
}
