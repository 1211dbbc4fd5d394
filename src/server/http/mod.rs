//! The HTTP face of the daemon: `POST /hooks/<app>` for forge webhooks and `GET /healthz`. It reads the body
//! (capped, with a deadline), hands bytes and headers to [`crate::intake`], and turns the decision into a
//! durable record and a reply. The reply comes after the record is committed and before any work is done: a
//! forge gets its 202 in milliseconds while the deploy runs in the background.
//!
//! Errors never leak internals: a person gets what failed and what to do; the details go to the daemon's log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::config::Config;
use crate::deploy::queue::Queue;

mod hooks;
mod limits;
mod pages;

pub use limits::RateLimiter;

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
    pub liveness: Arc<crate::server::liveness::Liveness>,
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
    pub(super) fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
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
    pub(super) fn new(status: &'static str) -> HookReply {
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

pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorReply { error: msg.into() })).into_response()
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/hooks/{app}", post(hooks::hook))
        .route("/healthz", get(pages::healthz))
        .route("/metrics", get(pages::metrics))
        .route("/", get(pages::status_index))
        .route("/deploys/{id}", get(pages::status_deploy))
        .with_state(state)
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
