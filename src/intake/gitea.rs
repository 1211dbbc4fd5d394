//! Gitea and Forgejo: one payload, two dialects of headers. Forgejo is a fork of Gitea and sends its own
//! `X-Forgejo-*` headers beside Gitea's, so a Forgejo hook accepts either; a Gitea hook only Gitea's. The
//! signature is a bare hex HMAC-SHA256 of the body.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::{check_repository, decide, Change};
use super::payload::{full_name, parse, required_ref, required_sha, Login, Repository};
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
    before: Option<String>,
    after: Option<String>,
    pusher: Option<Login>,
    sender: Option<Login>,
    repository: Option<Repository>,
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
    push(app, headers, body, dialect)
}

/// A verified delivery: a push, or another event (answered, not recorded).
fn push(app: &AppConfig, headers: &HeaderMap, body: &[u8], dialect: &Dialect) -> Result<Accepted, Rejected> {
    let event = first_header(headers, dialect.event)
        .ok_or_else(|| Rejected::Malformed(dialect.event_missing.into()))?;
    let delivery_id = Some(required_delivery(headers, dialect.delivery)?);
    if event != "push" {
        return Ok(Accepted::OtherEvent(model::clean_actor(event)));
    }
    let push: GiteaPush = parse(body)?;
    check_repository(app, full_name(push.repository.as_ref()))?;
    let actor = push
        .pusher
        .and_then(|p| p.username.or(p.login).or(p.full_name))
        .or_else(|| push.sender.and_then(|s| s.username.or(s.login)))
        .unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        parent: push.before,
        deleted: false,
    };
    decide(app, dialect.provider, delivery_id, vec![change], &actor)
}

#[cfg(test)]
mod tests {
    use crate::config::Provider;
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, sign_github, Accepted, Rejected};

    /// Each dialect's refusals name its own headers, and only Forgejo falls back to Gitea's.
    #[test]
    fn each_dialect_reads_its_own_headers() {
        let app = app_with("");
        let sha = "a".repeat(40);
        let (body, event) = payload(Provider::Gitea, "refs/heads/main", &sha);
        let sig = sign_github(SECRET, body.as_bytes());
        let bare = sig.trim_start_matches("sha256=");
        let eval = |p, h| evaluate(&app, p, &[SECRET.to_vec()], &h, body.as_bytes(), 0);
        let gitea_headers = || {
            headers(&[
                ("x-gitea-signature", bare),
                ("x-gitea-event", event),
                ("x-gitea-delivery", "d-1"),
            ])
        };
        match eval(Provider::Forgejo, gitea_headers()) {
            Ok(Accepted::Deploy(r)) => assert_eq!(r.provider.as_deref(), Some("forgejo")),
            other => panic!("forgejo with gitea's headers gave {other:?}"),
        }
        let forgejo_only = headers(&[
            ("x-forgejo-signature", bare),
            ("x-forgejo-event", event),
            ("x-forgejo-delivery", "d-1"),
        ]);
        assert_eq!(
            eval(Provider::Gitea, forgejo_only),
            Err(Rejected::MissingSignature("X-Gitea-Signature"))
        );
        for (provider, shown, missing_event) in [
            (
                Provider::Gitea,
                "X-Gitea-Signature",
                "missing X-Gitea-Event header",
            ),
            (
                Provider::Forgejo,
                "X-Forgejo-Signature",
                "missing X-Forgejo-Event header",
            ),
        ] {
            let mut h = gitea_headers();
            h.remove("x-gitea-signature");
            assert_eq!(eval(provider, h), Err(Rejected::MissingSignature(shown)));
            let mut h = gitea_headers();
            h.remove("x-gitea-event");
            assert_eq!(eval(provider, h), Err(Rejected::Malformed(missing_event.into())));
        }
    }
}
