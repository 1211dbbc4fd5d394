//! GitLab: push and tag push hooks. GitLab authenticates a hook one of two ways: with a signing token it signs
//! Standard Webhooks style, otherwise it sends the secret token itself in `X-Gitlab-Token` (which covers
//! nothing of the body). Both are accepted; a request carrying a signature is held to the signature.

use axum::http::HeaderMap;
use serde::Deserialize;

use super::decide::{decide, Change};
use super::payload::{parse, required_ref, required_sha};
use super::verify::{check_token, delivery, header, verify_standard};
use super::{Accepted, Rejected};
use crate::config::AppConfig;
use crate::model;

#[derive(Deserialize)]
struct GitlabPush {
    object_kind: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    user_username: Option<String>,
    user_name: Option<String>,
}

pub(super) fn evaluate(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Accepted, Rejected> {
    let delivery_id = authenticate(secrets, headers, body, now_secs)?;
    let event = header(headers, "x-gitlab-event")
        .ok_or_else(|| Rejected::Malformed("missing X-Gitlab-Event header".into()))?;
    if event != "Push Hook" && event != "Tag Push Hook" {
        return Ok(Accepted::OtherEvent(model::clean_actor(event)));
    }
    let push: GitlabPush = parse(body)?;
    if !matches!(push.object_kind.as_deref(), Some("push" | "tag_push")) {
        return Err(Rejected::Malformed(
            "payload's object_kind is not push or tag_push".into(),
        ));
    }
    let actor = push.user_username.or(push.user_name).unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        deleted: false,
    };
    decide(app, "gitlab", delivery_id, &[change], &actor)
}

/// Checks whichever proof the request carries and returns its delivery id. Beside a plain token the delivery
/// id is optional, and GitLab has named its header three ways, so all three are looked for.
fn authenticate(
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Option<String>, Rejected> {
    if headers.contains_key("webhook-signature") {
        return Ok(Some(verify_standard(secrets, headers, body, now_secs)?));
    }
    let token = header(headers, "x-gitlab-token").ok_or(Rejected::MissingSignature("X-Gitlab-Token"))?;
    check_token(secrets, token)?;
    delivery(
        headers,
        &["x-gitlab-webhook-uuid", "idempotency-key", "x-gitlab-event-uuid"],
    )
}

