//! Gitea and Forgejo: one payload, two dialects of headers. Forgejo is a fork of Gitea and sends its own
//! `X-Forgejo-*` headers beside Gitea's, so a Forgejo hook accepts either; a Gitea hook only Gitea's. The
//! signature is a bare hex HMAC-SHA256 of the body.

use axum::http::HeaderMap;
use serde::Deserialize;

use super::decide::{decide, Change};
use super::payload::{parse, required_ref, required_sha, Login};
use super::verify::{check_hex, first_header, required_delivery};
use super::{Accepted, Rejected};
use crate::config::AppConfig;
use crate::model;

/// The headers one forge sends, in the order they are looked for, and the names a refusal shows.
pub(super) struct Dialect {
    provider: &'static str,
    signature: &'static [&'static str],
    signature_shown: &'static str,
    event: &'static [&'static str],
    event_missing: &'static str,
    delivery: &'static [&'static str],
}

pub(super) const GITEA: Dialect = Dialect {
    provider: "gitea",
    signature: &["x-gitea-signature"],
    signature_shown: "X-Gitea-Signature",
    event: &["x-gitea-event"],
    event_missing: "missing X-Gitea-Event header",
    delivery: &["x-gitea-delivery"],
};

pub(super) const FORGEJO: Dialect = Dialect {
    provider: "forgejo",
    signature: &["x-forgejo-signature", "x-gitea-signature"],
    signature_shown: "X-Forgejo-Signature",
    event: &["x-forgejo-event", "x-gitea-event"],
    event_missing: "missing X-Forgejo-Event header",
    delivery: &["x-forgejo-delivery", "x-gitea-delivery"],
};

#[derive(Deserialize)]
struct GiteaPush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    pusher: Option<Login>,
    sender: Option<Login>,
}

pub(super) fn evaluate(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    dialect: &Dialect,
) -> Result<Accepted, Rejected> {
    let sig = first_header(headers, dialect.signature)
        .ok_or(Rejected::MissingSignature(dialect.signature_shown))?;
    check_hex(secrets, body, sig)?;
    let event = first_header(headers, dialect.event)
        .ok_or_else(|| Rejected::Malformed(dialect.event_missing.into()))?;
    let delivery_id = Some(required_delivery(headers, dialect.delivery)?);
    if event != "push" {
        return Ok(Accepted::OtherEvent(model::clean_actor(event)));
    }
    let push: GiteaPush = parse(body)?;
    let actor = push
        .pusher
        .and_then(|p| p.username.or(p.login).or(p.full_name))
        .or_else(|| push.sender.and_then(|s| s.username.or(s.login)))
        .unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        deleted: false,
    };
    decide(app, dialect.provider, delivery_id, &[change], &actor)
}

