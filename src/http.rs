//! The HTTP face of the daemon: `POST /hooks/<app>` for forge webhooks and `GET /healthz`. It reads the body
//! (capped, with a deadline), hands bytes and headers to [`crate::intake`], and turns the decision into a
//! durable record and a reply. The reply comes after the record is committed and before any work is done: a
//! forge gets its 202 in milliseconds while the deploy runs in the background.
//!
//! Errors never leak internals: a person gets what failed and what to do; the details go to the daemon's log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::Serialize;

use crate::intake::{self, Accepted};
use crate::queue::Queue;
use crate::store::Enqueued;

const BODY_DEADLINE: Duration = Duration::from_secs(10);

pub struct HttpState {
    pub queue: Arc<Queue>,
    /// Per app with a webhook: the secrets, current first.
    pub secrets: HashMap<String, Vec<Vec<u8>>>,
    pub max_body_bytes: usize,
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
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Reads at most `max` bytes of body within the deadline.
async fn read_body(body: Body, max: usize) -> Result<Vec<u8>, Response> {
    let mut body = body;
    let mut buf = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| error(StatusCode::BAD_REQUEST, "could not read the request body"))?;
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
    match tokio::time::timeout(BODY_DEADLINE, read).await {
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
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let env = st.queue.env();
    let (Some(cfg), Some(secrets)) = (env.apps.get(&app), st.secrets.get(&app)) else {
        tracing::info!(app = %crate::model::clean_actor(&app), "webhook for an unknown app (or one without a webhook) refused");
        return error(StatusCode::NOT_FOUND, "no app with a webhook by that name");
    };
    let Some(webhook) = &cfg.webhook else {
        return error(StatusCode::NOT_FOUND, "no app with a webhook by that name");
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > st.max_body_bytes) {
        tracing::info!(app = %app, "webhook refused: body over max_body");
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body is larger than the {}-byte limit (max_body)",
                st.max_body_bytes
            ),
        );
    }
    let body = match read_body(body, st.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let accepted = match intake::evaluate(cfg, webhook.provider, secrets, &headers, &body) {
        Ok(a) => a,
        Err(rej) => {
            tracing::info!(app = %app, "webhook refused: {rej}");
            let status = StatusCode::from_u16(rej.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, rej.to_string());
        }
    };
    let recorded = match accepted {
        Accepted::Ping => return (StatusCode::OK, Json(HookReply::new("pong"))).into_response(),
        Accepted::OtherEvent(event) => {
            let mut r = HookReply::new("ignored");
            r.reason = Some(format!("event {event:?} is not a push"));
            return (StatusCode::ACCEPTED, Json(r)).into_response();
        }
        Accepted::Ignore(req, reason) => st
            .queue
            .ignore(req, reason.clone())
            .await
            .map(|e| (e, "ignored", Some(reason))),
        Accepted::Deploy(req) => st.queue.submit(req).await.map(|e| (e, "queued", None)),
    };
    match recorded {
        Ok((Enqueued::Recorded { id, superseded }, status, reason)) => {
            tracing::info!(deploy_id = %id, app = %app, "webhook {status}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default());
            let mut r = HookReply::new(status);
            r.deploy_id = Some(id.to_string());
            r.reason = reason;
            r.superseded = superseded.iter().map(ToString::to_string).collect();
            (StatusCode::ACCEPTED, Json(r)).into_response()
        }
        Ok((Enqueued::Duplicate { first }, _, _)) => {
            tracing::info!(deploy_id = %first, app = %app, "webhook is a replay of an earlier delivery; nothing queued");
            let mut r = HookReply::new("duplicate");
            r.deploy_id = Some(first.to_string());
            r.reason = Some("this delivery id was already received; nothing was queued".into());
            (StatusCode::OK, Json(r)).into_response()
        }
        Err(e) => {
            tracing::error!(app = %app, "cannot record a webhook: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "haul could not record this request, so nothing was queued; the forge may redeliver it",
            )
        }
    }
}
