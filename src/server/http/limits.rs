//! What the door refuses by address and by size: addresses outside `allow_ips`, clients over their budgets,
//! bodies over `max_body` or slower than `body_timeout`.
//!
//! Every client address has two budgets of the same size (token buckets, `rate_limit_per_minute` with a
//! quarter of it as a burst): one for requests whose signature verified, one for requests that did not
//! authenticate (no or a wrong signature, a stale timestamp, an unknown app, a body refused before it could
//! be checked). A forge's hook addresses are shared by every one of its customers, so forgeries from such an
//! address must not cost that forge's real deliveries anything: they spend the failure budget only, and once
//! it is empty they are answered 429 instead of 401 or 404, before the app is looked up when that is enough to
//! know. Only an address that has spent both is refused before its body is read.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use http_body_util::BodyExt;

use super::{error, HttpState};

/// A refusal by address: what it answers ([`Refused::reply`]) and the metric's result.
pub(super) struct Refused {
    status: StatusCode,
    msg: &'static str,
    pub(super) result: &'static str,
    /// For a 429: how long until the address may try again.
    wait: Option<Duration>,
}

impl Refused {
    pub(super) fn reply(&self) -> Response {
        match self.wait {
            Some(wait) => too_many(wait, self.msg),
            None => error(self.status, self.msg),
        }
    }

    fn limited(wait: Duration, msg: &'static str, result: &'static str) -> Refused {
        Refused {
            status: StatusCode::TOO_MANY_REQUESTS,
            msg,
            result,
            wait: Some(wait),
        }
    }
}

/// The checks before anything else: `allow_ips`, then an address that has spent both of its budgets, whom
/// nothing it could send would get past the door now.
pub(super) fn admit(st: &HttpState, ip: Option<IpAddr>) -> Result<(), Refused> {
    if !st.allow_ips.is_empty() && !ip.is_some_and(|ip| st.allow_ips.iter().any(|n| n.contains(&ip))) {
        tracing::info!(client = ?ip, "webhook refused: client address not in allow_ips");
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            msg: "this address may not call haul's webhooks",
            result: "forbidden",
            wait: None,
        });
    }
    let Some(ip) = ip else { return Ok(()) };
    if let (Some(signed), Some(failed)) = (st.signed.wait(ip), st.failures.wait(ip)) {
        tracing::info!(client = %ip, "webhook refused: both rate limits spent");
        let msg = "too many requests from this address; slow down";
        return Err(Refused::limited(signed.min(failed), msg, "rate_limited"));
    }
    Ok(())
}

/// A request whose signature verified: it spends the address's signed budget, or is refused with 429.
pub(super) fn authenticated(st: &HttpState, ip: Option<IpAddr>) -> Result<(), Refused> {
    match ip.map(|ip| st.signed.take(ip)) {
        Some(Err(wait)) => {
            tracing::info!(client = ?ip, "webhook refused: rate limit");
            let msg = "too many requests from this address; slow down";
            Err(Refused::limited(wait, msg, "rate_limited"))
        }
        _ => Ok(()),
    }
}

/// A request that did not authenticate, refused with `reply` (and `result`): it spends the address's failure
/// budget, and once that is empty the reply is a 429 instead, which says nothing about why it failed.
pub(super) fn unauthenticated(
    st: &HttpState,
    ip: Option<IpAddr>,
    reply: Response,
    result: &'static str,
) -> (Response, &'static str) {
    match ip.map(|ip| st.failures.take(ip)) {
        Some(Err(wait)) => {
            tracing::info!(client = ?ip, "webhook refused: rate limit of failed requests");
            let msg = "too many failed requests from this address; slow down";
            (too_many(wait, msg), "failures_limited")
        }
        _ => (reply, result),
    }
}

/// 429, with `Retry-After` saying when the bucket has a token again (whole seconds, at least 1).
fn too_many(wait: Duration, msg: &str) -> Response {
    let mut resp = error(StatusCode::TOO_MANY_REQUESTS, msg);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from(secs.max(1)),
    );
    resp
}

/// A token bucket per client address: `per_minute` sustained, a quarter of that (at least 10) as a burst.
pub struct RateLimiter {
    /// Tokens per second; 0 when the limit is off.
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute = 0` turns the limit off.
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            rate: f64::from(per_minute) / 60.0,
            burst: (f64::from(per_minute) / 4.0).max(10.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from `ip`'s bucket, or says how long until it has one.
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        let (rate, burst) = (self.rate, self.burst);
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
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    /// How long until `ip`'s bucket has a token; `None` if it has one now. Takes nothing, and remembers no
    /// address it has not seen take.
    pub fn wait(&self, ip: IpAddr) -> Option<Duration> {
        if self.rate == 0.0 {
            return None;
        }
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.get(&ip)?;
        let tokens = (tokens + at.elapsed().as_secs_f64() * self.rate).min(self.burst);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.rate))
    }
}

/// The most a declared Content-Length reserves before any of the body arrived.
pub(super) const PRESIZE_LIMIT: usize = 64 * 1024;

/// Reads the body, at most `max` bytes, before `deadline`. `declared` (the Content-Length, already checked
/// against `max`) sizes the buffer up front, so a forge's usual payload is copied once instead of through
/// doubling reallocations; at most [`PRESIZE_LIMIT`] of it, since a declared length is only a claim (a client
/// declaring 1 MiB and sending nothing must not hold 1 MiB per connection).
pub(super) async fn read_body(
    body: Body,
    max: usize,
    deadline: Duration,
    declared: Option<usize>,
) -> Result<Vec<u8>, Response> {
    let mut body = body;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(max).min(PRESIZE_LIMIT));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `Retry-After` was 10 whatever the bucket held. It is the wait for the next token, in whole
    /// seconds rounded up, at least 1.
    #[test]
    fn regression_retry_after_says_when_a_token_is_back() {
        fn check(wait: Duration, want: &str) {
            let resp = too_many(wait, "slow down");
            assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(resp.headers()["retry-after"], want, "{wait:?}");
        }
        check(Duration::from_secs(60), "60");
        check(Duration::from_secs_f64(59.2), "60");
        check(Duration::from_secs_f64(1.5), "2");
        check(Duration::from_millis(100), "1");
        check(Duration::ZERO, "1");
    }

    /// Each case: `rate_limit_per_minute`, how many requests pass at once (the burst), and the wait after.
    #[test]
    fn a_bucket_holds_its_burst_then_says_how_long() {
        fn check(per_minute: u32, burst: usize, wait_secs: f64) {
            let limiter = RateLimiter::new(per_minute);
            let ip: IpAddr = "192.0.2.1".parse().expect("an address");
            assert_eq!(limiter.wait(ip), None, "{per_minute}: a new address may");
            for i in 0..burst {
                assert_eq!(limiter.take(ip), Ok(()), "{per_minute}: request {i}");
            }
            // At most a token's time; less by whatever refilled while the burst was spent.
            let wait = limiter.take(ip).expect_err("over the burst").as_secs_f64();
            assert!(wait > 0.0 && wait <= wait_secs, "{per_minute}: {wait}");
            let peeked = limiter.wait(ip).expect("still empty").as_secs_f64();
            assert!(peeked <= wait, "{per_minute}: waiting takes nothing: {peeked}");
            let other: IpAddr = "192.0.2.2".parse().expect("an address");
            assert_eq!(limiter.take(other), Ok(()), "{per_minute}: per address");
        }
        check(1, 10, 60.0);
        let slow = RateLimiter::new(1);
        let ip: IpAddr = "192.0.2.1".parse().expect("an address");
        (0..10).for_each(|_| slow.take(ip).expect("the burst"));
        let wait = slow.take(ip).expect_err("over the burst");
        assert!(wait > Duration::from_secs(50), "a token a minute: {wait:?}");
        check(60, 15, 1.0);
        check(600, 150, 0.1);
        let off = RateLimiter::new(0);
        let ip: IpAddr = "192.0.2.1".parse().expect("an address");
        assert!(
            (0..1000).all(|_| off.take(ip).is_ok() && off.wait(ip).is_none()),
            "0 is off"
        );
    }
}
