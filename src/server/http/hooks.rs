//! `POST /hooks/<app>`: the webhook door. Cheap refusals first (address, spent budgets, app, size), then the
//! body (capped, with a deadline), then `intake::evaluate` (signature before parsing), then the address's
//! budget for what it turned out to be (signed, or a failure: see `limits`), then the durable record, then
//! the reply: a forge gets its 202 once the request is committed, before any work is done.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{error, limits, HookReply, HttpState};
use crate::config::Provider;
use crate::intake::{self, Accepted};
use crate::store::Enqueued;

pub(super) async fn hook(
    State(st): State<Arc<HttpState>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    app: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A name that does not even decode (`%FF`) names no app: refused like any unknown one, in the one shape.
    let app = app.map(|Path(a)| a).unwrap_or_default();
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
    // Cheap refusals first: who is asking, and whether it has anything left to spend.
    let ip = st.client_ip(peer.map(|c| c.0 .0), headers);
    if let Err(refused) = limits::admit(st, ip) {
        return (refused.reply(), "none", refused.result);
    }
    let env = st.queue.env();
    let found = env
        .apps
        .get(app)
        .zip(st.secrets.get(app))
        .and_then(|(cfg, secrets)| cfg.webhook.as_ref().map(|w| (cfg, secrets, w)));
    let Some((cfg, secrets, webhook)) = found else {
        tracing::info!(app = %crate::model::clean_actor(app), "webhook for an unknown app (or one without a webhook) refused");
        let reply = error(StatusCode::NOT_FOUND, "no app with a webhook by that name");
        let (resp, result) = limits::unauthenticated(st, ip, reply, "unknown_app");
        return (resp, "none", result);
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
        let reply = error(StatusCode::PAYLOAD_TOO_LARGE, msg);
        let (resp, result) = limits::unauthenticated(st, ip, reply, "too_large");
        return (resp, provider, result);
    }
    let body = match limits::read_body(body, st.max_body_bytes, st.body_timeout, declared).await {
        Ok(b) => b,
        Err(reply) => {
            let (resp, result) = limits::unauthenticated(st, ip, reply, "bad_body");
            return (resp, provider, result);
        }
    };
    let now_secs = crate::model::now_ms() / 1000;
    let accepted = match intake::evaluate(cfg, webhook.provider, secrets, headers, &body, now_secs) {
        Ok(a) => a,
        Err(rej) => {
            tracing::info!(app = %app, "webhook refused: {rej}");
            let status = StatusCode::from_u16(rej.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let reply = error(status, rej.to_string());
            let (resp, result) = match rej {
                intake::Rejected::Malformed(_) if signed_before_malformed(webhook.provider, headers) => {
                    match limits::authenticated(st, ip) {
                        Ok(()) => (reply, "malformed"),
                        Err(refused) => (refused.reply(), refused.result),
                    }
                }
                intake::Rejected::Malformed(_) => limits::unauthenticated(st, ip, reply, "malformed"),
                intake::Rejected::MissingSignature(_) | intake::Rejected::BadSignature => {
                    limits::unauthenticated(st, ip, reply, "bad_signature")
                }
                intake::Rejected::Stale => limits::unauthenticated(st, ip, reply, "stale"),
            };
            return (resp, provider, result);
        }
    };
    if let Err(refused) = limits::authenticated(st, ip) {
        return (refused.reply(), provider, refused.result);
    }
    // A fleet app's push keeps its signed delivery with its row: every host re-verifies it before deploying.
    let accepted = match accepted {
        Accepted::Deploy(req) if cfg.fleet.is_some() => {
            Accepted::Deploy(req.with_signed(intake::carried(webhook.provider, headers, &body)))
        }
        other => other,
    };
    let (response, result) = decide(st, app, accepted, &body).await;
    (response, provider, result)
}

/// Was a request that `intake` refused as malformed signed correctly? Every provider checks the signature
/// before it reads anything else, with one exception: the Standard Webhooks check (the `standard` provider,
/// and GitLab when it sends `webhook-signature`) refuses a missing or unreadable `webhook-id` or
/// `webhook-timestamp` as malformed before it can compute the signature, since both are signed with the
/// body. Such a request proved nothing, so it spends the failure budget like a forgery. This mirrors the
/// header checks of `intake::verify::verify_standard`; the door's tests pin both cases.
fn signed_before_malformed(provider: Provider, headers: &HeaderMap) -> bool {
    let standard = match provider {
        Provider::Standard => true,
        Provider::Gitlab => headers.contains_key("webhook-signature"),
        _ => false,
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    !standard
        || (header("webhook-id").is_some_and(crate::model::is_valid_delivery_id)
            && header("webhook-timestamp").is_some_and(|t| t.parse::<i64>().is_ok()))
}

/// What a verified request becomes: a pong, an ignored event, or a row in the audit (queued or ignored),
/// answered only once that row is committed.
async fn decide(st: &HttpState, app: &str, accepted: Accepted, body: &[u8]) -> (Response, &'static str) {
    let recorded = match accepted {
        Accepted::Ping => {
            return (
                (StatusCode::OK, Json(HookReply::new("pong"))).into_response(),
                "ping",
            )
        }
        Accepted::OtherEvent(event) => {
            let mut r = HookReply::new("ignored");
            r.reason = Some(format!("event {event:?} is not a push"));
            return ((StatusCode::ACCEPTED, Json(r)).into_response(), "other_event");
        }
        // `gate = "ci"`: the forge's word on a commit, recorded; what waited on it runs or fails.
        Accepted::CiResult { sha, passed, what } => {
            return ci_verdict(st, app, &sha, passed, &what, body).await
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
        Ok((Enqueued::Recorded { id, superseded, held }, status, reason, quiet)) => {
            // Held (paused, outside a window, waiting for approval): acknowledged and durable all the
            // same, and said so.
            let (status, reason) = match held {
                Some((state, why)) => (state.as_str(), Some(why)),
                None => (status, reason),
            };
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
            ((StatusCode::ACCEPTED, Json(r)).into_response(), status)
        }
        Ok((Enqueued::Passed { id, state, reason }, ..)) => {
            tracing::info!(deploy_id = %id, app = %app, "webhook {state}: {reason}");
            let mut r = HookReply::new(state.as_str());
            r.deploy_id = Some(id.to_string());
            r.reason = Some(reason);
            ((StatusCode::ACCEPTED, Json(r)).into_response(), state.as_str())
        }
        Ok((Enqueued::Replay { first }, ..)) => {
            // A replay storm is in the answers, not in the daemon's log (like a storm of already-live redeliveries).
            tracing::debug!(deploy_id = %first, app = %app, "webhook repeats the body of an earlier delivery under a new delivery id; nothing queued");
            let mut r = HookReply::new("duplicate");
            r.deploy_id = Some(first.to_string());
            r.reason = Some(
                "this signed body was already received under another delivery id (a replay); nothing was queued"
                    .into(),
            );
            ((StatusCode::OK, Json(r)).into_response(), "replay")
        }
        Ok((Enqueued::Duplicate { first }, ..)) => {
            tracing::info!(deploy_id = %first, app = %app, "webhook is a replay of an earlier delivery; nothing queued");
            let mut r = HookReply::new("duplicate");
            r.deploy_id = Some(first.to_string());
            r.reason = Some("this delivery id was already received; nothing was queued".into());
            ((StatusCode::OK, Json(r)).into_response(), "duplicate")
        }
        Err(e) => {
            tracing::error!(app = %app, "cannot record a webhook: {e}");
            let resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "haul could not record this request, so nothing was queued; the forge may redeliver it",
            );
            (resp, "error")
        }
    }
}

/// `gate = "ci"`: the forge's verdict on `sha`, recorded (a body seen before is a duplicate), and the reply
/// naming what it released or failed.
async fn ci_verdict(
    st: &HttpState,
    app: &str,
    sha: &str,
    passed: bool,
    what: &str,
    body: &[u8],
) -> (Response, &'static str) {
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
    match st.queue.ci_result(app, sha, passed, what, &digest).await {
        Ok(None) => {
            let mut r = HookReply::new("duplicate");
            r.reason = Some(format!(
                "this {what} on {} was received before (kept 8 days); nothing changed",
                crate::model::short_sha(sha)
            ));
            ((StatusCode::OK, Json(r)).into_response(), "duplicate")
        }
        Ok(Some(ids)) => {
            let mut r = HookReply::new(if passed { "ci_passed" } else { "ci_failed" });
            r.reason = Some(match ids.len() {
                0 => format!(
                    "{what} on {}; nothing was waiting for it (a push of it will be decided at once)",
                    crate::model::short_sha(sha)
                ),
                _ => format!(
                    "{what} on {}: {} {}",
                    crate::model::short_sha(sha),
                    ids.join(", "),
                    if passed { "released" } else { "recorded ci_failed" }
                ),
            });
            ((StatusCode::ACCEPTED, Json(r)).into_response(), "ci_result")
        }
        Err(e) => {
            tracing::error!(app = %app, "cannot record a CI result: {e}");
            (
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the audit database cannot be written",
                ),
                "unavailable",
            )
        }
    }
}
