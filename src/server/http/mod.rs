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

/// Connections one client address may hold at once; past that, its new ones are closed at once, so one
/// client holding idle connections cannot keep every other address out for the whole `header_timeout`. Not
/// applied behind a reverse proxy (`client_ip_header` set): there the proxy is the one peer, and limiting
/// its clients' connections is the proxy's job.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;

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
    /// Per client address: the budget of requests whose signature verified...
    pub signed: RateLimiter,
    /// ...and the budget of those that did not authenticate (see `limits`).
    pub failures: RateLimiter,
    pub liveness: Arc<crate::server::liveness::Liveness>,
    pub status_page: bool,
    /// Every app's source locations, which the status page replaces with `[source]`.
    pub sources: crate::ops::page::Sources,
    /// With `[fleet]`: the agent, whose view of the engine `/healthz` reports.
    pub fleet: Option<crate::fleet::AgentHandle>,
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
            signed: RateLimiter::new(cfg.rate_limit_per_minute),
            failures: RateLimiter::new(cfg.rate_limit_per_minute),
            liveness: Arc::default(),
            status_page: cfg.status_page,
            sources: crate::ops::page::Sources::of(cfg.apps.values()),
            fleet: None,
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

/// Every error reply, whoever refuses: `{"status": "error", "error": "<message>"}`, the shape of a
/// [`HookReply`] so a client reads `status` first whatever came back (`error` alone was the old shape).
#[derive(Serialize)]
struct ErrorReply {
    status: &'static str,
    error: String,
}

pub(super) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    let reply = ErrorReply {
        status: "error",
        error: msg.into(),
    };
    (status, Json(reply)).into_response()
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/hooks/{app}", post(hooks::hook))
        .route("/healthz", get(pages::healthz))
        .route("/metrics", get(pages::metrics))
        .route("/", get(pages::status_index))
        .route("/deploys/{id}", get(pages::status_deploy))
        // axum's own refusals are plain text; these keep every error reply in the one shape.
        .fallback(|| async { error(StatusCode::NOT_FOUND, "nothing here") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "this method is not served here")
        })
        .with_state(state)
}

/// How many connections each peer address holds. A slot is a guard that gives itself back when dropped, so a
/// connection's slot is released however its task ends: done, panicked or aborted.
#[derive(Clone)]
struct PeerSlots {
    max: usize,
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

struct PeerSlot {
    slots: PeerSlots,
    ip: IpAddr,
}

impl PeerSlots {
    fn new(max: usize) -> PeerSlots {
        PeerSlots {
            max,
            open: Arc::default(),
        }
    }

    fn take(&self, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            slots: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // An address with nothing open is forgotten, so the map is as large as the open connections.
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` until `stop` turns true: HTTP/1.1 only, a deadline on request headers, a cap on
/// connections in all and per client address, and each request told its peer address. In-flight requests
/// finish; idle connections close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let header_timeout = state.header_timeout;
    let per_peer = state
        .client_ip_header
        .is_none()
        .then(|| PeerSlots::new(MAX_CONNECTIONS_PER_ADDRESS));
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
        let peer_slot = match &per_peer {
            Some(p) => match p.take(peer.ip().to_canonical()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::info!(client = %peer, "too many connections from this address; closing a new one");
                    continue;
                }
            },
            None => None,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(client = %peer, "too many connections; closing a new one");
            continue;
        };
        while conns.try_join_next().is_some() {}
        let router = router.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _slots = (slot, peer_slot);
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
    use crate::deploy::testkit::Fixture;
    use crate::model::State;
    use axum::body::Body;
    use axum::http::Request;

    const SECRET: &[u8] = b"it's a secret to everybody";
    /// GitHub's documented push, unchanged: `refs/heads/master` at 6113728.
    const PUSH: &str = include_str!("../../../tests/fixtures/github/push.json");
    const PUSHED_SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    const APPS: &str = r#"
[apps.blog]
repo = "repo.git"
branch = "master"
path = "srv/blog"
[apps.blog.webhook]
provider = "github"
secret_file = "blog.secret"

[apps.quiet]
repo = "repo.git"
path = "srv/quiet"
"#;

    /// The daemon's HTTP side over a real audit database, without a socket. No worker runs, so what is
    /// queued stays queued.
    struct Door {
        fx: Fixture,
        state: Arc<HttpState>,
        router: Router,
    }

    impl Door {
        /// `top` holds top-level keys (`max_body = ...`).
        fn new(top: &str) -> Door {
            Door::with_apps(top, APPS)
        }

        /// Other apps than [`APPS`]; `blog` and `ci` get [`SECRET`] if they have a webhook.
        fn with_apps(top: &str, apps: &str) -> Door {
            let fx = Fixture::new(&format!("max_body = \"16KiB\"\n{top}\n{apps}"));
            let secrets = HashMap::from([
                ("blog".to_string(), vec![SECRET.to_vec()]),
                ("ci".to_string(), vec![SECRET.to_vec()]),
            ]);
            let state = Arc::new(HttpState::new(&fx.cfg, fx.queue(), secrets));
            Door {
                fx,
                router: router(state.clone()),
                state,
            }
        }

        /// One request through the router, as `serve` hands it over; (status, headers, body).
        async fn send(&self, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
            use tower_service::Service;
            let mut svc = self.router.clone();
            std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut svc, cx))
                .await
                .expect("a router is always ready");
            let resp = svc.call(req).await.expect("a router never fails");
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("read the reply");
            (status, headers, String::from_utf8_lossy(&body).into_owned())
        }

        async fn get(&self, uri: &str) -> (StatusCode, String) {
            let req = Request::get(uri).body(Body::empty()).expect("request");
            let (status, _, body) = self.send(req).await;
            (status, body)
        }

        async fn recorded(&self) -> usize {
            self.fx.rows().await.len()
        }
    }

    /// A webhook delivery, signed correctly unless a case says otherwise.
    struct Hook {
        app: &'static str,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
        peer: Option<SocketAddr>,
        declare_length: bool,
    }

    impl Hook {
        fn push(delivery: &str) -> Hook {
            Hook {
                app: "blog",
                body: PUSH.as_bytes().to_vec(),
                headers: vec![
                    ("x-github-event", "push".into()),
                    ("x-github-delivery", delivery.into()),
                    ("content-type", "application/json".into()),
                    (
                        "x-hub-signature-256",
                        crate::intake::sign_github(SECRET, PUSH.as_bytes()),
                    ),
                ],
                peer: Some(peer("192.0.2.1")),
                declare_length: true,
            }
        }
        fn to(mut self, app: &'static str) -> Hook {
            self.app = app;
            self
        }
        fn from(mut self, peer: Option<SocketAddr>) -> Hook {
            self.peer = peer;
            self
        }
        /// Replaces (or, with `None`, removes) a header.
        fn header(mut self, name: &'static str, value: Option<String>) -> Hook {
            self.headers.retain(|(n, _)| *n != name);
            if let Some(v) = value {
                self.headers.push((name, v));
            }
            self
        }
        /// The fixture's push moved on by one commit: `after` is `sha`, `before` the fixture's own `after`
        /// (a new push, not a replay of the fixture's body).
        fn next_push(self, sha: &str) -> Hook {
            let body = PUSH
                .replace(
                    "\"before\": \"0000000000000000000000000000000000000000\"",
                    &format!("\"before\": \"{PUSHED_SHA}\""),
                )
                .replace(
                    &format!("\"after\": \"{PUSHED_SHA}\""),
                    &format!("\"after\": \"{sha}\""),
                );
            assert_ne!(
                body, PUSH,
                "the fixture's before and after are where this expects them"
            );
            self.signed_body(body.into_bytes())
        }
        /// A different body, signed with the right secret.
        fn signed_body(self, body: Vec<u8>) -> Hook {
            let sig = crate::intake::sign_github(SECRET, &body);
            let mut h = self.header("x-hub-signature-256", Some(sig));
            h.body = body;
            h
        }
        fn without_length(mut self) -> Hook {
            self.declare_length = false;
            self
        }
        fn request(self) -> Request<Body> {
            let mut b = Request::post(format!("/hooks/{}", self.app));
            for (n, v) in &self.headers {
                b = b.header(*n, v.as_str());
            }
            if self.declare_length {
                b = b.header("content-length", self.body.len().to_string());
            }
            let mut req = b.body(Body::from(self.body)).expect("request");
            if let Some(p) = self.peer {
                req.extensions_mut().insert(ConnectInfo(p));
            }
            req
        }
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("an address"), 40000)
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?} is not JSON: {e}"))
    }

    /// Sends `hook`, expects `status` with `says` in the body, and that nothing was recorded.
    async fn refused(door: &Door, case: &str, hook: Hook, status: u16, says: &str) {
        let before = door.recorded().await;
        let (got, _, body) = door.send(hook.request()).await;
        assert_eq!(got.as_u16(), status, "{case}: {body}");
        assert!(body.contains(says), "{case}: {body:?} does not say {says:?}");
        let reply = json(&body);
        assert_eq!(reply["status"], "error", "{case}: {body}");
        assert!(reply["error"].is_string(), "{case}: {body}");
        assert_eq!(door.recorded().await, before, "{case}: nothing is recorded");
    }

    /// Regression: error replies were `{"error": ...}`, without the `status` the README promises every
    /// reply carries; and axum's own refusals (no route, wrong method, a name that does not decode) were
    /// plain text.
    #[tokio::test]
    async fn regression_every_error_reply_says_status_error() {
        let door = Door::new("");
        let get = |uri: &str| Request::get(uri).body(Body::empty()).expect("request");
        let cases: Vec<(&str, Request<Body>, u16)> = vec![
            (
                "a forged push",
                Hook::push("d-1").header("x-hub-signature-256", None).request(),
                401,
            ),
            ("an unknown app", Hook::push("d-1").to("nope").request(), 404),
            (
                "an app name that does not decode",
                Request::post("/hooks/%FF")
                    .body(Body::from("{}"))
                    .expect("request"),
                404,
            ),
            ("GET of a webhook", get("/hooks/blog"), 405),
            ("no such route", get("/nothing/here"), 404),
            ("no such deploy", get("/deploys/20260101T000000-nope"), 404),
            ("a deploy id that does not decode", get("/deploys/%FF"), 404),
        ];
        for (case, req, want) in cases {
            let (status, headers, body) = door.send(req).await;
            assert_eq!(status.as_u16(), want, "{case}: {body}");
            assert_eq!(
                headers.get("content-type").and_then(|v| v.to_str().ok()),
                Some("application/json"),
                "{case}"
            );
            let reply = json(&body);
            assert_eq!(reply["status"], "error", "{case}: {body}");
            assert!(
                reply["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{case}: the old `error` field stays: {body}"
            );
        }
        assert_eq!(door.recorded().await, 0, "nothing is recorded");
    }

    #[tokio::test]
    async fn a_signed_push_is_answered_202_and_recorded_queued() {
        let door = Door::new("");
        let (status, _, body) = door.send(Hook::push("d-1").request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let reply = json(&body);
        assert_eq!(reply["status"], "queued", "{body}");
        let id = reply["deploy_id"].as_str().expect("a deploy id");
        let id = crate::model::DeployId::parse(id).expect("a well-formed deploy id");
        let row = door.fx.row(&id).await;
        assert_eq!(row.state, State::Queued);
        assert_eq!(row.trigger, crate::model::Trigger::Webhook);
        assert_eq!(row.sha.as_deref(), Some(PUSHED_SHA));
        assert_eq!(row.git_ref.as_deref(), Some("refs/heads/master"));
        assert_eq!(row.delivery_id.as_deref(), Some("d-1"));
        assert_eq!(row.provider.as_deref(), Some("github"));
        assert_eq!(row.actor, "Codertocat");
        assert_eq!(door.recorded().await, 1);
    }

    #[tokio::test]
    async fn a_replayed_delivery_is_a_duplicate_and_a_new_one_supersedes() {
        let door = Door::new("");
        let (_, _, first) = door.send(Hook::push("d-1").request()).await;
        let first_id = json(&first)["deploy_id"].clone();

        let (status, _, body) = door.send(Hook::push("d-1").request()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let reply = json(&body);
        assert_eq!(reply["status"], "duplicate", "{body}");
        assert_eq!(reply["deploy_id"], first_id, "names the first delivery's deploy");
        assert_eq!(door.recorded().await, 1, "a replay records nothing");

        let next = Hook::push("d-2").next_push(&"b".repeat(40));
        let (status, _, body) = door.send(next.request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let reply = json(&body);
        assert_eq!(reply["superseded"], serde_json::json!([first_id]), "{body}");
        assert_eq!(door.recorded().await, 2);
    }

    #[tokio::test]
    async fn bad_deliveries_are_refused_and_record_nothing() {
        let door = Door::new("");
        let push = || Hook::push("d-1");
        let sig = |s: &str| Some(s.to_string());
        let other = crate::intake::sign_github(b"another secret", PUSH.as_bytes());
        let of_other_body = crate::intake::sign_github(SECRET, b"{}");
        let big = {
            let mut b = PUSH.as_bytes().to_vec();
            b.extend(std::iter::repeat_n(b' ', 17 * 1024));
            b
        };
        let cases: Vec<(&str, Hook, u16, &str)> = vec![
            (
                "no signature",
                push().header("x-hub-signature-256", None),
                401,
                "missing signature header",
            ),
            (
                "signed with another secret",
                push().header("x-hub-signature-256", Some(other.clone())),
                401,
                "signature does not match",
            ),
            (
                "the signature of another body",
                push().header("x-hub-signature-256", Some(of_other_body)),
                401,
                "signature does not match",
            ),
            (
                "no sha256= prefix",
                push().header(
                    "x-hub-signature-256",
                    Some(other.trim_start_matches("sha256=").to_string()),
                ),
                401,
                "signature does not match",
            ),
            (
                "not hex",
                push().header("x-hub-signature-256", sig("sha256=zz")),
                401,
                "signature does not match",
            ),
            (
                "signed garbage",
                push().signed_body(b"not json".to_vec()),
                400,
                "malformed",
            ),
            (
                "no delivery id",
                push().header("x-github-delivery", None),
                400,
                "delivery id",
            ),
            (
                "an unknown app",
                push().to("nope"),
                404,
                "no app with a webhook by that name",
            ),
            (
                "an app without a webhook",
                push().to("quiet"),
                404,
                "no app with a webhook by that name",
            ),
            (
                "a body over max_body, declared",
                push().signed_body(big.clone()),
                413,
                "max_body",
            ),
            (
                "a body over max_body, streamed",
                push().signed_body(big).without_length(),
                413,
                "max_body",
            ),
        ];
        for (case, hook, status, says) in cases {
            refused(&door, case, hook, status, says).await;
        }
        assert_eq!(door.recorded().await, 0);
    }

    /// GitHub's push with `edit` applied, as bytes.
    fn edited_push(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_str(PUSH).expect("the fixture is JSON");
        edit(&mut v);
        v.to_string().into_bytes()
    }

    /// Regression: a signed push whose ref carried a right-to-left override was recorded, ref and all, and
    /// an actor's bidi and zero-width characters reached the audit (and so the page and `HAUL_ACTOR`).
    #[tokio::test]
    async fn regression_bidi_and_format_characters_never_reach_the_audit() {
        let door = Door::new("");
        for (i, c) in [
            '\u{202e}', '\u{2066}', '\u{200b}', '\u{feff}', '\u{ad}', '\u{2028}', '\u{85}',
        ]
        .into_iter()
        .enumerate()
        {
            let body = edited_push(|v| v["ref"] = format!("refs/heads/mas{c}ter").into());
            let hook = Hook::push(&format!("r-{i}")).signed_body(body);
            refused(
                &door,
                &format!("a ref with {c:?}"),
                hook,
                400,
                "not a valid git ref",
            )
            .await;
        }
        assert_eq!(door.recorded().await, 0);

        let body = edited_push(|v| v["pusher"]["name"] = "Coder\u{202e}\u{200b}tocat\u{2069}".into());
        let (status, _, reply) = door.send(Hook::push("a-1").signed_body(body).request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
        let rows = door.fx.rows().await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].actor, "Codertocat", "the actor is recorded without them");
    }

    #[tokio::test]
    async fn allow_ips_refuses_other_addresses() {
        let door = Door::new("allow_ips = [\"10.0.0.0/8\", \"2001:db8::1\"]");
        let push = || Hook::push("d-1");
        let says = "this address may not call";
        refused(&door, "outside", push().from(Some(peer("192.0.2.1"))), 403, says).await;
        refused(
            &door,
            "another v6",
            push().from(Some(peer("2001:db8::2"))),
            403,
            says,
        )
        .await;
        refused(&door, "no peer address at all", push().from(None), 403, says).await;
        // Refused before the app is looked up: an unknown app says nothing about what is configured.
        refused(&door, "outside, unknown app", push().to("nope"), 403, says).await;
        let (status, _, body) = door.send(push().from(Some(peer("10.1.2.3"))).request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "inside: {body}");
        let (status, _, body) = door
            .send(
                Hook::push("d-2")
                    .next_push(&"b".repeat(40))
                    .from(Some(peer("2001:db8::1")))
                    .request(),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "a single v6 address: {body}");
        assert_eq!(door.recorded().await, 2);
    }

    fn retry_after(headers: &HeaderMap) -> u64 {
        headers
            .get(axum::http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After in seconds")
    }

    /// Sends `hook` and expects a 429 (with an honest `Retry-After` for 1 request a minute) that says `says`
    /// and records nothing.
    async fn limited(door: &Door, case: &str, hook: Hook, says: &str) {
        let before = door.recorded().await;
        let (status, headers, body) = door.send(hook.request()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{case}: {body}");
        assert!(body.contains(says), "{case}: {body:?} does not say {says:?}");
        assert_eq!(json(&body)["status"], "error", "{case}: {body}");
        let secs = retry_after(&headers);
        assert!(
            (50..=60).contains(&secs),
            "{case}: a token a minute: Retry-After {secs}"
        );
        assert_eq!(door.recorded().await, before, "{case}: nothing is recorded");
    }

    /// A body that never arrives, and says whether anyone asked for it.
    struct Untouched(Arc<std::sync::atomic::AtomicBool>);

    impl futures_util::Stream for Untouched {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            std::task::Poll::Pending
        }
    }

    /// Regression: every request from an address drew on one budget before its body was read, so a flood of
    /// forgeries from an address a forge shares with everyone (GitHub's hook deliveries) got that forge's
    /// real, signed deliveries answered 429; and `Retry-After` said 10 whatever the bucket held.
    #[tokio::test]
    async fn regression_forgeries_from_a_shared_address_had_its_signed_deliveries_refused() {
        // 1 a minute: each budget's burst is the floor of 10.
        let door = Door::new("rate_limit_per_minute = 1");
        let shared = Some(peer("192.0.2.7"));
        let push = |d: &str| Hook::push(d).from(shared);
        let forged = |i: usize| -> (Hook, u16) {
            match i % 4 {
                0 => (push("f").header("x-hub-signature-256", None), 401),
                1 => (
                    push("f").header("x-hub-signature-256", Some("sha256=00".into())),
                    401,
                ),
                2 => (push("f").to("nope"), 404),
                _ => (push("f").to("quiet"), 404),
            }
        };
        for i in 0..10 {
            let (hook, status) = forged(i);
            refused(&door, &format!("forgery {i}, within the burst"), hook, status, "").await;
        }
        for i in 10..14 {
            let (hook, _) = forged(i);
            limited(&door, &format!("forgery {i}"), hook, "too many failed requests").await;
        }

        // The forgeries spent nothing of what signed deliveries spend.
        let (status, _, body) = door.send(push("d-0").request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "a signed delivery: {body}");
        // Malformed after a valid signature is the sender's honest mistake: a 400, from the signed budget.
        refused(
            &door,
            "signed garbage",
            push("g").signed_body(b"not json".to_vec()),
            400,
            "malformed",
        )
        .await;
        for i in 1..9 {
            // Each its own push (the same body again would be a replay, answered `duplicate`).
            let next = push(&format!("d-{i}")).next_push(&format!("{:040x}", 100 + i));
            let (status, _, body) = door.send(next.request()).await;
            assert_eq!(status, StatusCode::ACCEPTED, "signed delivery {i}: {body}");
        }
        assert_eq!(door.recorded().await, 9);
        limited(
            &door,
            "a signed delivery over its budget",
            push("d-9"),
            "too many requests",
        )
        .await;

        // Both spent: refused before the body is read (this one never arrives).
        let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (parts, _) = push("d-10").without_length().request().into_parts();
        let req = Request::from_parts(parts, Body::from_stream(Untouched(asked.clone())));
        let (status, headers, body) = door.send(req).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!((50..=60).contains(&retry_after(&headers)), "{headers:?}");
        assert!(
            !asked.load(std::sync::atomic::Ordering::SeqCst),
            "the body was not read"
        );
        assert_eq!(door.recorded().await, 9);

        // Per address: another client is held back by neither budget.
        let other = Some(peer("192.0.2.8"));
        refused(
            &door,
            "another address's forgery",
            forged(0).0.from(other),
            401,
            "missing signature",
        )
        .await;
        let next = Hook::push("e-1").next_push(&"e".repeat(40)).from(other);
        let (status, _, body) = door.send(next.request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }

    /// A Standard Webhooks request without its `webhook-id` is refused as malformed before any signature is
    /// computed: it proved nothing, so it spends the failure budget; a signed delivery's malformed payload
    /// spends the signed one and is answered 400 even after the forgeries have spent theirs.
    #[tokio::test]
    async fn regression_an_unsigned_malformed_request_spent_the_signed_budget() {
        let apps = r#"
[apps.ci]
repo = "repo.git"
path = "srv/ci"
[apps.ci.webhook]
provider = "standard"
secret_file = "ci.secret"
"#;
        let door = Door::with_apps("rate_limit_per_minute = 1", apps);
        let standard = |id: &str, body: &str| {
            let ts = crate::model::now_ms() / 1000;
            let sig = crate::intake::sign_standard(SECRET, id, ts, body.as_bytes());
            Hook {
                app: "ci",
                body: body.as_bytes().to_vec(),
                headers: vec![
                    ("webhook-id", id.to_string()),
                    ("webhook-timestamp", ts.to_string()),
                    ("webhook-signature", sig),
                    ("content-type", "application/json".into()),
                ],
                peer: Some(peer("192.0.2.9")),
                declare_length: true,
            }
        };
        let deploy = format!("{{\"ref\": \"refs/heads/main\", \"sha\": \"{PUSHED_SHA}\"}}");
        for i in 0..10 {
            let hook = standard("x", &deploy).header("webhook-id", None);
            refused(&door, &format!("no webhook-id {i}"), hook, 400, "webhook-id").await;
        }
        let hook = standard("x", &deploy).header("webhook-timestamp", Some("soon".into()));
        limited(&door, "an unreadable timestamp", hook, "too many failed requests").await;
        let signed_garbage = standard("msg-1", "{\"ref\": 7}");
        refused(&door, "signed garbage", signed_garbage, 400, "malformed").await;
        let (status, _, body) = door.send(standard("msg-2", &deploy).request()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(door.recorded().await, 1);
    }

    /// Regression: `/deploys/<id>` showed the log's `==> fetch <url>` line and `/` showed reasons naming a
    /// mirror, so anyone who could read the page learnt where the repositories live. The page says
    /// `[source]`; the log on disk (what `haul logs` prints) is left whole.
    #[tokio::test]
    async fn regression_the_status_page_never_shows_a_repository_url() {
        let apps = r#"
[apps.blog]
repo = "https://deploy:ghp_TOKEN@git.example.com/acme/blog.git"
mirrors = ["https://cache.internal/acme/blog.git"]
branch = "master"
path = "srv/blog"
[apps.blog.webhook]
provider = "github"
secret_file = "blog.secret"
"#;
        let door = Door::with_apps("", apps);
        let (_, _, reply) = door.send(Hook::push("d-1").request()).await;
        let id = json(&reply)["deploy_id"].as_str().expect("an id").to_string();
        let id = crate::model::DeployId::parse(&id).expect("an id");
        let log_path = crate::infra::state_dir::StateDir::new(&door.fx.cfg.state_dir).log_of(&id);
        let log = format!(
            "2026-01-01T00:00:00Z ==> fetch https://deploy:***@git.example.com/acme/blog.git (branch master)\n\
             2026-01-01T00:00:01Z   ! fetching from https://deploy:***@git.example.com/acme/blog.git failed (transient)\n\
             2026-01-01T00:00:02Z     fetched from mirror https://cache.internal/acme/blog.git; {PUSHED_SHA} is the sha the primary's signed webhook named\n"
        );
        std::fs::write(&log_path, &log).expect("write the log");
        let ignored = crate::deploy::testkit::webhook("blog", &crate::deploy::testkit::sha('a'));
        door.fx
            .queue()
            .ignore(
                ignored,
                "mirror https://cache.internal/acme/blog.git offers a sha the primary does not contain"
                    .into(),
            )
            .await
            .expect("record");
        let rows = door.recorded().await;

        for uri in ["/".to_string(), format!("/deploys/{id}")] {
            let (status, page) = door.get(&uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {page}");
            for hidden in ["git.example.com", "cache.internal", "ghp_TOKEN", "https://"] {
                assert!(!page.contains(hidden), "{uri} shows {hidden:?}: {page}");
            }
            assert!(page.contains("[source]"), "{uri}: {page}");
        }
        let (_, page) = door.get(&format!("/deploys/{id}")).await;
        assert!(page.contains("==&gt; fetch [source] (branch master)"), "{page}");
        assert!(page.contains("fetched from mirror [source];"), "{page}");
        let (_, index) = door.get("/").await;
        assert!(index.contains("mirror [source] offers"), "{index}");

        assert_eq!(
            std::fs::read_to_string(&log_path).expect("the log"),
            log,
            "the log itself, what `haul logs` shows, keeps the (redacted) URLs"
        );
        assert_eq!(door.recorded().await, rows, "reading the page records nothing");
    }

    /// Regression: one slot per connection in all, none per address, so a single client holding idle
    /// connections could keep every other address out for the whole `header_timeout`. A slot is a guard:
    /// it comes back when the connection's task ends, whether it finishes, panics or is aborted.
    #[tokio::test]
    async fn regression_a_connection_slot_is_given_back_however_its_task_ends() {
        let slots = PeerSlots::new(2);
        let ip: IpAddr = "192.0.2.1".parse().expect("an address");
        let other: IpAddr = "192.0.2.2".parse().expect("an address");
        let a = slots.take(ip).expect("one");
        let b = slots.take(ip).expect("two");
        assert!(
            slots.take(ip).is_none(),
            "a third from the same address is refused"
        );
        let _c = slots.take(other).expect("another address has its own");
        drop(a);
        assert_eq!(slots.held(ip), 1);

        let held = slots.clone();
        let panicked = std::thread::spawn(move || {
            let _slot = held.take(ip).expect("the freed one");
            panic!("a connection's task panics");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(slots.held(ip), 1, "given back by the panic");

        let held = slots.clone();
        let task = tokio::spawn(async move {
            let _slot = held.take(ip).expect("the freed one");
            std::future::pending::<()>().await;
        });
        while slots.held(ip) < 2 {
            tokio::task::yield_now().await;
        }
        task.abort();
        assert!(task.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(slots.held(ip), 1, "given back by the abort");
        drop(b);
        assert!(
            slots.open.lock().expect("lock").get(&ip).is_none(),
            "and forgotten"
        );
    }

    /// `serve` on a real socket: one address at its cap of idle connections does not keep another out, and
    /// gets a slot back when one of its connections ends.
    #[tokio::test]
    async fn regression_one_address_holding_idle_connections_kept_every_other_one_out() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        /// A request on a new connection from `from`; the reply's first bytes, empty if it was closed unserved.
        async fn ask(addr: SocketAddr, from: &str) -> Vec<u8> {
            let sock = tokio::net::TcpSocket::new_v4().expect("socket");
            sock.bind(SocketAddr::new(from.parse().expect("an address"), 0))
                .expect("bind");
            let mut conn = sock.connect(addr).await.expect("connect");
            let _ = conn
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: haul\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = vec![0; 64];
            let read = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await;
            let n = read.expect("an answer or a close, not silence").unwrap_or(0);
            buf.truncate(n);
            buf
        }
        let door = Door::new("header_timeout = \"10m\"");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, door.state.clone(), stopped));

        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_ADDRESS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        // Accepted in order, so by the time this one is looked at, the idle ones hold every slot.
        assert_eq!(
            ask(addr, "127.0.0.1").await,
            b"",
            "the 65th from one address is closed unserved"
        );
        assert!(
            ask(addr, "127.0.0.2").await.starts_with(b"HTTP/1.1 503"),
            "another address is served (healthz: starting)"
        );
        drop(idle.pop());
        loop {
            // The server notices the close in its own time; nothing else can free the slot.
            let reply = ask(addr, "127.0.0.1").await;
            if reply.starts_with(b"HTTP/1.1 503") {
                break;
            }
            assert_eq!(reply, b"", "served or closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(door.recorded().await, 0);
        stop.send(true).expect("stop");
        drop(idle);
        server.await.expect("serve ends");
    }

    /// Behind a proxy every connection comes from the proxy: the per-address cap would cap the proxy.
    #[tokio::test]
    async fn behind_a_proxy_the_per_address_cap_is_the_proxys_job() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let door = Door::new("header_timeout = \"10m\"\nclient_ip_header = \"X-Forwarded-For\"");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, door.state.clone(), stopped));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_ADDRESS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: haul\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), conn.read_to_end(&mut reply)).await;
        read.expect("an answer").expect("read");
        assert!(
            reply.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        stop.send(true).expect("stop");
        drop(idle);
        server.await.expect("serve ends");
    }

    #[tokio::test]
    async fn healthz_says_starting_until_the_liveness_is_wired() {
        let door = Door::new("");
        let (status, body) = door.get("/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "unhealthy: starting\n");
    }

    #[tokio::test]
    async fn the_status_page_can_be_turned_off() {
        async fn a_deploy(door: &Door) -> String {
            let (_, _, queued) = door.send(Hook::push("d-1").request()).await;
            json(&queued)["deploy_id"].as_str().expect("an id").to_string()
        }
        let on = Door::new("");
        let id = a_deploy(&on).await;
        for uri in ["/".to_string(), format!("/deploys/{id}")] {
            let (status, body) = on.get(&uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
            assert!(body.contains("blog"), "{uri}: the page names the app");
        }

        let off = Door::new("status_page = false");
        let id = a_deploy(&off).await;
        for uri in ["/".to_string(), format!("/deploys/{id}")] {
            let (status, body) = off.get(&uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
            assert!(body.contains("status_page = false"), "{uri}: {body}");
            assert!(!body.contains("blog"), "{uri}: nothing about the apps: {body}");
        }
    }
}
