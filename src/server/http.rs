//! The HTTP face of the daemon: `POST /hooks/<app>` for forge webhooks and `GET /healthz`. It reads the body
//! (capped, with a deadline), hands bytes and headers to [`crate::intake`], and turns the decision into a
//! durable record and a reply. The reply comes after the record is committed and before any work is done: a
//! forge gets its 202 in milliseconds while the deploy runs in the background.
//!
//! Errors never leak internals: a person gets what failed and what to do; the details go to the daemon's log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::config::Config;
use crate::deploy::queue::Queue;
use crate::intake::{self, Accepted};
use crate::store::Enqueued;

/// Connections served at once; past that, new ones are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;

pub struct HttpState {
    pub queue: Arc<Queue>,
    /// Per app with a webhook: the secrets, current first.
    pub secrets: HashMap<String, Vec<Vec<u8>>>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// A client that has not sent its request headers by then is cut off (slow-loris).
    pub header_timeout: Duration,
    pub allow_ips: Vec<ipnet::IpNet>,
    pub client_ip_header: Option<String>,
    pub limiter: RateLimiter,
    pub liveness: Arc<crate::server::daemon::Liveness>,
    pub status_page: bool,
}

impl HttpState {
    pub fn new(cfg: &Config, queue: Arc<Queue>, secrets: HashMap<String, Vec<Vec<u8>>>) -> HttpState {
        HttpState {
            queue,
            secrets,
            max_body_bytes: cfg.max_body_bytes,
            body_timeout: cfg.body_timeout,
            header_timeout: cfg.header_timeout,
            allow_ips: cfg.allow_ips.clone(),
            client_ip_header: cfg.client_ip_header.as_ref().map(|h| h.to_ascii_lowercase()),
            limiter: RateLimiter::new(cfg.rate_limit_per_minute),
            liveness: Arc::default(),
            status_page: cfg.status_page,
        }
    }

    /// The client's address: the socket peer, or, behind a reverse proxy that the operator named with
    /// `client_ip_header`, the last address that proxy appended.
    fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if let Some(h) = &self.client_ip_header {
            let from_proxy = headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            if from_proxy.is_some() {
                return from_proxy;
            }
        }
        peer.map(|p| p.ip())
    }
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

/// The reply to a webhook: the wire type.
#[derive(Serialize, Debug)]
pub struct HookReply {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
}

impl HookReply {
    fn new(status: &'static str) -> HookReply {
        HookReply {
            status,
            deploy_id: None,
            reason: None,
            superseded: vec![],
        }
    }
}

#[derive(Serialize)]
struct ErrorReply {
    error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorReply { error: msg.into() })).into_response()
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/hooks/{app}", post(hook))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", get(status_index))
        .route("/deploys/{id}", get(status_deploy))
        .with_state(state)
}

fn html(body: String) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "this server".into(), |h| h.trim().to_string())
}

/// `GET /`: every app and the recent deploys.
async fn status_index(State(st): State<Arc<HttpState>>) -> Response {
    if !st.status_page {
        return error(
            StatusCode::NOT_FOUND,
            "the status page is off (status_page = false)",
        );
    }
    let env = st.queue.env();
    let apps: Vec<(String, Option<String>)> = env
        .apps
        .values()
        .map(|a| (a.name.clone(), crate::deploy::release::current(&a.path)))
        .collect();
    let data = env
        .store
        .call(move |c| {
            let mut views = Vec::new();
            for (name, live_release) in apps {
                let summary = crate::store::summary(c, &name)?;
                let live = match &live_release {
                    Some(r) => crate::store::live_deploy(c, &name, r)?,
                    None => None,
                };
                views.push(crate::ops::page::AppView {
                    name,
                    live_release,
                    live,
                    summary,
                });
            }
            views.sort_by(|a, b| a.name.cmp(&b.name));
            Ok((views, crate::store::history(c, None, 50)?))
        })
        .await;
    match data {
        Ok((views, recent)) => html(crate::ops::page::index(
            &hostname(),
            &views,
            &recent,
            crate::model::now_ms(),
        )),
        Err(e) => {
            tracing::error!("status page: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit database is not answering",
            )
        }
    }
}

/// The page shows at most the last 256 KiB of a log: a chatty build must not make every page view expensive.
fn log_tail(path: &std::path::Path, id: &crate::model::DeployId) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 256 * 1024;
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let mut buf = Vec::new();
    if len > MAX {
        f.seek(SeekFrom::Start(len - MAX)).ok()?;
    }
    f.take(MAX).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if len > MAX {
        // Start at a whole line.
        let rest = text.split_once('\n').map_or(text.as_str(), |(_, r)| r);
        Some(format!(
            "[the first {} KiB are not shown: `haul logs {id}` has all of it]\n{rest}",
            (len - MAX) / 1024
        ))
    } else {
        Some(text)
    }
}

/// `GET /deploys/<id>`: one deploy and its log.
async fn status_deploy(State(st): State<Arc<HttpState>>, Path(id): Path<String>) -> Response {
    if !st.status_page {
        return error(
            StatusCode::NOT_FOUND,
            "the status page is off (status_page = false)",
        );
    }
    let Some(id) = crate::model::DeployId::parse(&id) else {
        return error(StatusCode::NOT_FOUND, "no such deploy");
    };
    let env = st.queue.env();
    let lookup = id.clone();
    match env.store.call(move |c| crate::store::get(c, &lookup)).await {
        Ok(Some(row)) => {
            let log = log_tail(&crate::infra::deploylog::path_for(&env.logs_dir, &id), &id);
            html(crate::ops::page::deploy(
                &row,
                log.as_deref(),
                crate::model::now_ms(),
            ))
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "no such deploy"),
        Err(e) => {
            tracing::error!("status page: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit database is not answering",
            )
        }
    }
}

/// Prometheus scrape: counters as recorded, gauges read now from the store and the upstream registry.
async fn metrics(State(st): State<Arc<HttpState>>) -> Response {
    let env = st.queue.env();
    let m = crate::infra::metrics::get();
    let apps: Vec<(String, String)> = env
        .apps
        .values()
        .map(|a| (a.name.clone(), a.upstream()))
        .collect();
    let names: Vec<String> = apps.iter().map(|(a, _)| a.clone()).collect();
    let summaries = env
        .store
        .call(move |c| {
            names
                .iter()
                .map(|a| crate::store::summary(c, a).map(|s| (a.clone(), s)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
    if let Ok(summaries) = summaries {
        for (app, s) in summaries {
            let label = crate::infra::metrics::AppLabel { app };
            m.queue_depth.get_or_create(&label).set(s.queued as i64);
            if let Some(t) = s.last_success.and_then(|r| r.finished_at) {
                m.last_success.get_or_create(&label).set(t / 1000);
            }
        }
    }
    for (_, upstream) in apps {
        let open = crate::sources::upstream::global().open_for(&upstream).is_some();
        m.circuit_open
            .get_or_create(&crate::infra::metrics::UpstreamLabel { upstream })
            .set(i64::from(open));
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// For the reverse proxy and uptime checks: 200 while the daemon, its database and its workers are alive.
async fn healthz(State(st): State<Arc<HttpState>>) -> Response {
    match st.liveness.check().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(problem) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {problem}\n")).into_response(),
    }
}

/// Reads at most `max` bytes of body within the deadline.
async fn read_body(body: Body, max: usize, deadline: Duration) -> Result<Vec<u8>, Response> {
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

async fn hook(
    State(st): State<Arc<HttpState>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (response, provider, result) = hook_inner(&st, peer, &app, &headers, body).await;
    crate::infra::metrics::webhook(provider, result);
    response
}

/// The webhook door; returns the reply, and the provider and result for the metrics.
async fn hook_inner(
    st: &HttpState,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    app: &str,
    headers: &HeaderMap,
    body: Body,
) -> (Response, &'static str, &'static str) {
    // Cheap refusals first: who is asking, and how often.
    let ip = st.client_ip(peer.map(|c| c.0 .0), headers);
    if !st.allow_ips.is_empty() && !ip.is_some_and(|ip| st.allow_ips.iter().any(|n| n.contains(&ip))) {
        tracing::info!(client = ?ip, "webhook refused: client address not in allow_ips");
        return (
            error(StatusCode::FORBIDDEN, "this address may not call haul's webhooks"),
            "none",
            "forbidden",
        );
    }
    if let Some(ip) = ip {
        if !st.limiter.allow(ip) {
            tracing::info!(client = %ip, "webhook refused: rate limit");
            let mut resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this address; slow down",
            );
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("10"),
            );
            return (resp, "none", "rate_limited");
        }
    }
    let env = st.queue.env();
    let (Some(cfg), Some(secrets)) = (env.apps.get(app), st.secrets.get(app)) else {
        tracing::info!(app = %crate::model::clean_actor(app), "webhook for an unknown app (or one without a webhook) refused");
        return (
            error(StatusCode::NOT_FOUND, "no app with a webhook by that name"),
            "none",
            "unknown_app",
        );
    };
    let Some(webhook) = &cfg.webhook else {
        return (
            error(StatusCode::NOT_FOUND, "no app with a webhook by that name"),
            "none",
            "unknown_app",
        );
    };
    let provider = webhook.provider.as_str();
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > st.max_body_bytes) {
        tracing::info!(app = %app, "webhook refused: body over max_body");
        let msg = format!(
            "body is larger than the {}-byte limit (max_body)",
            st.max_body_bytes
        );
        return (error(StatusCode::PAYLOAD_TOO_LARGE, msg), provider, "too_large");
    }
    let body = match read_body(body, st.max_body_bytes, st.body_timeout).await {
        Ok(b) => b,
        Err(resp) => return (resp, provider, "bad_body"),
    };
    let now_secs = crate::model::now_ms() / 1000;
    let accepted = match intake::evaluate(cfg, webhook.provider, secrets, headers, &body, now_secs) {
        Ok(a) => a,
        Err(rej) => {
            tracing::info!(app = %app, "webhook refused: {rej}");
            let status = StatusCode::from_u16(rej.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let result = match rej {
                intake::Rejected::MissingSignature(_) | intake::Rejected::BadSignature => "bad_signature",
                intake::Rejected::Stale => "stale",
                intake::Rejected::Malformed(_) => "malformed",
            };
            return (error(status, rej.to_string()), provider, result);
        }
    };
    let recorded = match accepted {
        Accepted::Ping => {
            return (
                (StatusCode::OK, Json(HookReply::new("pong"))).into_response(),
                provider,
                "ping",
            )
        }
        Accepted::OtherEvent(event) => {
            let mut r = HookReply::new("ignored");
            r.reason = Some(format!("event {event:?} is not a push"));
            return (
                (StatusCode::ACCEPTED, Json(r)).into_response(),
                provider,
                "other_event",
            );
        }
        Accepted::Ignore(req, reason) => st
            .queue
            .ignore(req, reason.clone())
            .await
            .map(|e| (e, "ignored", Some(reason), false)),
        // A redelivery of what is live: recorded, answered, and logged only at debug (a storm of them is
        // in the audit, not in the daemon's log).
        Accepted::Deploy(req) => match st.queue.already_live(&req) {
            Some(reason) => st
                .queue
                .ignore(req, reason.clone())
                .await
                .map(|e| (e, "ignored", Some(reason), true)),
            None => st.queue.submit(req).await.map(|e| (e, "queued", None, false)),
        },
    };
    match recorded {
        Ok((Enqueued::Recorded { id, superseded }, status, reason, quiet)) => {
            let why = reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            if quiet {
                tracing::debug!(deploy_id = %id, app = %app, "webhook {status}{why}");
            } else {
                tracing::info!(deploy_id = %id, app = %app, "webhook {status}{why}");
            }
            let mut r = HookReply::new(status);
            r.deploy_id = Some(id.to_string());
            r.reason = reason;
            r.superseded = superseded.iter().map(ToString::to_string).collect();
            ((StatusCode::ACCEPTED, Json(r)).into_response(), provider, status)
        }
        Ok((Enqueued::Duplicate { first }, ..)) => {
            tracing::info!(deploy_id = %first, app = %app, "webhook is a replay of an earlier delivery; nothing queued");
            let mut r = HookReply::new("duplicate");
            r.deploy_id = Some(first.to_string());
            r.reason = Some("this delivery id was already received; nothing was queued".into());
            ((StatusCode::OK, Json(r)).into_response(), provider, "duplicate")
        }
        Err(e) => {
            tracing::error!(app = %app, "cannot record a webhook: {e}");
            let resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "haul could not record this request, so nothing was queued; the forge may redeliver it",
            );
            (resp, provider, "error")
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true: HTTP/1.1 only, a deadline on request headers, a cap on
/// connections, and each request told its peer address. In-flight requests finish; idle connections close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let header_timeout = state.header_timeout;
    let router = router(state);
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower_service::Service;

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "too many connections; closing a new one");
            continue;
        };
        while conns.try_join_next().is_some() {}
        let router = router.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _slot = slot;
            let svc =
                hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().call(req)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the deploy page loaded and escaped whole logs, however large.
    #[test]
    fn regression_the_page_shows_only_a_logs_tail() {
        let dir =
            std::env::temp_dir().join(format!("haul-tail-{}-{}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("x.log");
        let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
        std::fs::write(&path, line.repeat(5000) + "the last line\n").expect("write");
        let id = crate::model::DeployId::new(0);
        let tail = log_tail(&path, &id).expect("tail");
        assert!(tail.len() <= 256 * 1024 + 200, "{}", tail.len());
        assert!(tail.starts_with("[the first ") && tail.ends_with("the last line\n"));
        std::fs::write(&path, "short\n").expect("write");
        assert_eq!(log_tail(&path, &id).as_deref(), Some("short\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
