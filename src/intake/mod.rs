//! Intake: turns the raw bytes and headers of a webhook into a typed decision, and nothing else.
//!
//! This is the trust boundary. It is pure and cheap on purpose: it never touches git, the network, the disk or
//! a shell, so every decision that can be made without fetching (signature, event, branch filter, deletion,
//! tag) is made here, can be tested with a table of cases, and can be fuzzed. Signatures are checked over the
//! raw body, in constant time, before a single byte of JSON is parsed.
//!
//! # Layout
//! [`evaluate`] is one `match` over the provider; each provider's dialect lives in a file named after it
//! (`github`, `gitlab`, `gitea` for Gitea and Forgejo, `bitbucket` for Cloud and Data Center, `standard`,
//! `distribution` for a registry's notifications). Each one verifies with `verify`, parses with `payload`, and
//! ends in `decide` (git refs) or `decide_image` (image tags). Adding a provider is a file and an arm.

use http::HeaderMap;

use crate::config::{AppConfig, Provider};
use crate::model::DeployRequest;

mod bitbucket;
mod decide;
mod distribution;
mod gitea;
mod github;
mod gitlab;
mod payload;
mod standard;
mod verify;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod test_support;

pub use verify::{sign_github, sign_standard};

/// What a verified webhook asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Accepted {
    /// Queue this deploy.
    Deploy(DeployRequest),
    /// A push this app does not deploy (another branch, a tag, a deletion): recorded in the audit as ignored,
    /// never fetched.
    Ignore(DeployRequest, String),
    /// The forge checking that the hook works.
    Ping,
    /// A signed event that is not a push (issues, stars, ...): answered, not recorded.
    OtherEvent(String),
    /// `gate = "ci"`: the forge says CI finished on `sha` (on the app's branch): passed or not, and how.
    CiResult { sha: String, passed: bool, what: String },
}

/// Why a webhook was refused. Nothing is recorded or queued for any of these.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("missing signature header {0}")]
    MissingSignature(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("timestamp is outside the 5-minute window (replayed, or a clock is wrong)")]
    Stale,
    /// Not a request this app can act on, however well signed: invalid JSON, an invalid ref or sha, or a
    /// payload for another repository than `webhook.repository` (or naming none).
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Rejected {
    pub fn status(&self) -> u16 {
        match self {
            Rejected::MissingSignature(_) | Rejected::BadSignature | Rejected::Stale => 401,
            Rejected::Malformed(_) => 400,
        }
    }
}

/// Verifies and parses one webhook delivery for `app`, whose webhook secrets (current, then previous) are
/// `secrets`. `now_secs` is the current Unix time (a parameter, so tests can replay published vectors).
pub fn evaluate(
    app: &AppConfig,
    provider: Provider,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Accepted, Rejected> {
    let accepted = match provider {
        Provider::Github => github::evaluate(app, secrets, headers, body),
        Provider::Gitlab => gitlab::evaluate(app, secrets, headers, body, now_secs),
        Provider::Gitea => gitea::evaluate(app, secrets, headers, body, &gitea::GITEA),
        Provider::Forgejo => gitea::evaluate(app, secrets, headers, body, &gitea::FORGEJO),
        Provider::Bitbucket => bitbucket::evaluate(app, secrets, headers, body),
        Provider::Standard => standard::evaluate(app, secrets, headers, body, now_secs),
        Provider::Distribution => distribution::evaluate(app, secrets, headers, body),
    }?;
    // Standard Webhooks (and GitLab when it signs that way) sign the id and the timestamp with the body, so a
    // fresh id cannot be forged and the same body twice is two deliveries; every other forge signs the body
    // alone (or, GitLab's token, nothing of it), so a delivery is remembered by its body. By the body's own
    // sha256, not by its HMAC: a forge that redelivers after a secret rotation signs the same body anew, and
    // the digests kept before an upgrade are sha256 too.
    let signs_id = match provider {
        Provider::Standard => true,
        Provider::Gitlab => headers.contains_key("webhook-signature"),
        _ => false,
    };
    Ok(if signs_id {
        accepted
    } else {
        accepted.remembering(<sha2::Sha256 as sha2::Digest>::digest(body).into())
    })
}

impl Accepted {
    /// The request, carrying the digest of the body it came in.
    fn remembering(self, digest: [u8; 32]) -> Accepted {
        match self {
            Accepted::Deploy(r) => Accepted::Deploy(r.with_body_digest(Some(digest))),
            Accepted::Ignore(r, why) => Accepted::Ignore(r.with_body_digest(Some(digest)), why),
            other => other,
        }
    }
}

/// The headers a fleet host keeps with a signed delivery, for the other hosts to verify it again: the
/// signatures, events, delivery ids and timestamps every provider's check reads. Not `X-Gitlab-Token` (the
/// shared secret in clear) nor anything else: a header not on this list never leaves the host it came to.
pub const CARRIED_HEADERS: &[&str] = &[
    "x-github-event",
    "x-github-delivery",
    "x-hub-signature-256",
    "x-gitea-event",
    "x-gitea-delivery",
    "x-gitea-signature",
    "x-forgejo-event",
    "x-forgejo-delivery",
    "x-forgejo-signature",
    "x-event-key",
    "x-request-uuid",
    "x-request-id",
    "x-hub-signature",
    "x-gitlab-event",
    "x-gitlab-webhook-uuid",
    "x-gitlab-event-uuid",
    "idempotency-key",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The delivery as the other hosts of a fleet can verify it again, or `None` where they cannot: GitLab's
/// plain token signs nothing of the body (and is the secret itself, which is never carried), nor does a
/// registry's bearer token (Distribution).
pub fn carried(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Option<crate::model::SignedDelivery> {
    if provider == Provider::Distribution
        || (provider == Provider::Gitlab && !headers.contains_key("webhook-signature"))
    {
        return None;
    }
    let kept = CARRIED_HEADERS
        .iter()
        .filter_map(|name| {
            let v = headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), v.to_string()))
        })
        .collect();
    Some(crate::model::SignedDelivery::new(kept, body))
}

/// Verifies again, on another host and with its own secrets, a delivery a fleet host received at
/// `received_secs` (the Standard Webhooks timestamp window is judged as of then), and checks that it asks
/// for `sha` of this app: what a host does before it deploys a release that claims a forge's webhook.
pub fn reverify(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    signed: &crate::model::SignedDelivery,
    received_secs: i64,
    sha: &str,
) -> Result<(), String> {
    let Some(webhook) = &app.webhook else {
        return Err(format!(
            "app {} has no webhook on this host, so a forge's signature cannot be checked here",
            app.name
        ));
    };
    let body = signed
        .body_bytes()
        .ok_or_else(|| "the signed delivery's body is not base64".to_string())?;
    let mut headers = HeaderMap::new();
    for (name, value) in &signed.headers {
        // Only the carried headers count: a record that adds its own (a token, say) gains nothing by it.
        if !CARRIED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            return Err(format!("the signed delivery has an invalid header {name:?}"));
        };
        headers.append(n, v);
    }
    let what = webhook.provider.as_str();
    // For an artifact the delivery's sha names the release only where it is the image's digest or fills a
    // location's `{sha}`; a delivery that names a tag alone leaves the digest to the conductor's resolve,
    // which each host checks against the package and its own signature key.
    let names_release = match &app.source {
        crate::config::Source::Git | crate::config::Source::Image(_) => true,
        other => other.is_templated(),
    };
    let git = matches!(app.source, crate::config::Source::Git);
    match evaluate(app, webhook.provider, secrets, &headers, &body, received_secs) {
        Ok(Accepted::Deploy(r)) if r.sha.as_deref() == Some(sha) => Ok(()),
        Ok(Accepted::Deploy(r)) if !git && (!names_release || r.sha.is_none()) => Ok(()),
        Ok(Accepted::Deploy(r)) => Err(format!(
            "the signed {what} delivery asks for {}, not {}",
            r.sha.as_deref().map_or("the branch tip", crate::model::short_sha),
            crate::model::short_sha(sha)
        )),
        Ok(Accepted::Ignore(_, why)) => {
            Err(format!("the signed {what} delivery deploys nothing here ({why})"))
        }
        Ok(_) => Err(format!("the signed {what} delivery is not a push")),
        Err(e) => Err(format!(
            "the {what} delivery does not verify with this host's webhook secret: {e}"
        )),
    }
}

/// What every provider must do alike; each provider's own quirks are tested in its file.
#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    /// The table every provider must pass: valid, wrong secret, missing header, tampered body, non-push event,
    /// unknown branch, tag, invalid ref.
    #[test]
    fn every_provider_fails_closed() {
        let app = app_with("");
        let sha = "c".repeat(40);
        let now = 1_800_000_000;
        // `distribution` is for image apps: its own table is in `distribution.rs`.
        for provider in Provider::ALL.into_iter().filter(|p| *p != Provider::Distribution) {
            let (body, event) = payload(provider, "refs/heads/main", &sha);
            let h = signed(provider, event, &body, now);
            let eval =
                |h: &HeaderMap, b: &str| evaluate(&app, provider, &[SECRET.to_vec()], h, b.as_bytes(), now);
            let name = provider.as_str();
            match eval(&h, &body) {
                Ok(Accepted::Deploy(r)) => {
                    assert_eq!(r.sha.as_deref(), Some(sha.as_str()), "{name}");
                    assert_eq!(r.actor, "octocat", "{name}");
                    assert_eq!(r.delivery_id.as_deref(), Some("d-1"), "{name}");
                    assert_eq!(r.provider.as_deref(), Some(name));
                }
                other => panic!("{name}: valid push gave {other:?}"),
            }
            // Wrong secret: the same request checked against another secret.
            let wrong = evaluate(
                &app,
                provider,
                &[b"another secret entirely!".to_vec()],
                &h,
                body.as_bytes(),
                now,
            );
            assert_eq!(wrong, Err(Rejected::BadSignature), "{name}: wrong secret");
            // Missing signature header.
            let mut stripped = h.clone();
            for k in [
                "x-hub-signature-256",
                "x-gitlab-token",
                "x-gitea-signature",
                "x-forgejo-signature",
                "x-hub-signature",
                "webhook-signature",
            ] {
                stripped.remove(k);
            }
            assert!(
                matches!(eval(&stripped, &body), Err(Rejected::MissingSignature(_))),
                "{name}: missing header"
            );
            // Tampered body (GitLab's plain token does not cover the body: that is GitLab's design, and why
            // haul prefers its signed mode when GitLab sends one).
            let tampered = body.replace("octocat", "mallory");
            if provider != Provider::Gitlab {
                assert_eq!(
                    eval(&h, &tampered),
                    Err(Rejected::BadSignature),
                    "{name}: tampered"
                );
            }
            // Unknown branch and a tag: ignored, never deployed.
            for (r, why) in [
                ("refs/heads/feature", "push to refs/heads/feature"),
                ("refs/tags/v1.0", "tag v1.0"),
            ] {
                let (b, e) = payload(provider, r, &sha);
                match eval(&signed(provider, e, &b, now), &b) {
                    Ok(Accepted::Ignore(_, reason)) => assert!(reason.starts_with(why), "{name}: {reason}"),
                    other => panic!("{name} {r}: {other:?}"),
                }
            }
            // An invalid ref is malformed, whoever signed it.
            let (b, e) = payload(provider, "refs/heads/--upload-pack=x", &sha);
            assert!(
                matches!(
                    eval(&signed(provider, e, &b, now), &b),
                    Err(Rejected::Malformed(_))
                ),
                "{name}: bad ref"
            );
        }
    }

    #[test]
    fn a_missing_delivery_id_is_refused() {
        let app = app_with("");
        let body = push_body("refs/heads/main", &"a".repeat(40));
        for provider in [
            Provider::Github,
            Provider::Gitea,
            Provider::Forgejo,
            Provider::Bitbucket,
        ] {
            let event = match provider {
                Provider::Bitbucket => "repo:push",
                _ => "push",
            };
            let mut h = signed(provider, event, &body, 0);
            for k in [
                "x-github-delivery",
                "x-gitea-delivery",
                "x-forgejo-delivery",
                "x-request-uuid",
            ] {
                h.remove(k);
            }
            let got = evaluate(&app, provider, &[SECRET.to_vec()], &h, body.as_bytes(), 0);
            assert!(
                matches!(got, Err(Rejected::Malformed(ref m)) if m.contains("delivery id")),
                "{provider:?}: {got:?}"
            );
        }
    }

    #[test]
    fn non_push_events_are_answered_not_recorded() {
        let app = app_with("");
        let now = 1_800_000_000;
        for (provider, event) in [
            (Provider::Github, "issues"),
            (Provider::Gitlab, "Merge Request Hook"),
            (Provider::Gitea, "pull_request"),
            (Provider::Forgejo, "issues"),
            (Provider::Bitbucket, "pullrequest:created"),
        ] {
            let body = "{}";
            let got = evaluate(
                &app,
                provider,
                &[SECRET.to_vec()],
                &signed(provider, event, body, now),
                body.as_bytes(),
                now,
            );
            assert!(
                matches!(got, Ok(Accepted::OtherEvent(_))),
                "{provider:?}: {got:?}"
            );
        }
        let body = r#"{"type":"ping"}"#;
        let got = evaluate(
            &app,
            Provider::Standard,
            &[SECRET.to_vec()],
            &signed(Provider::Standard, "", body, now),
            body.as_bytes(),
            now,
        );
        assert_eq!(got, Ok(Accepted::Ping));
    }

    /// A delivery is remembered by its body's sha256, whoever signed it: a forge that redelivers after a
    /// secret rotation signs the same body with the new secret, and must still meet the first delivery's
    /// digest (as must the digests kept before the upgrade, which were sha256). Standard Webhooks, and GitLab
    /// when it signs that way, sign the id: nothing is remembered by the body there.
    #[test]
    fn the_body_digest_is_the_bodys_sha256_whichever_secret_signed_it() {
        let app = app_with("");
        let body = push_body("refs/heads/main", &"e".repeat(40));
        let want: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(body.as_bytes()).into();
        let old = b"the old secret, still accepted".to_vec();
        let new = b"the new secret, now preferred".to_vec();
        for signer in [&old, &new] {
            let h = headers(&[
                ("x-hub-signature-256", &sign_github(signer, body.as_bytes())),
                ("x-github-event", "push"),
                ("x-github-delivery", "d-2"),
            ]);
            let secrets = [new.clone(), old.clone()];
            match evaluate(&app, Provider::Github, &secrets, &h, body.as_bytes(), 0) {
                Ok(Accepted::Deploy(r)) => assert_eq!(r.body_digest, Some(want)),
                other => panic!("{other:?}"),
            }
        }
        let now = 1_800_000_000;
        for (provider, remembered) in [
            (Provider::Gitlab, true),
            (Provider::Standard, false),
            (Provider::Gitea, true),
            (Provider::Bitbucket, true),
        ] {
            let (b, event) = payload(provider, "refs/heads/main", &"e".repeat(40));
            let h = signed(provider, event, &b, now);
            match evaluate(&app, provider, &[SECRET.to_vec()], &h, b.as_bytes(), now) {
                Ok(Accepted::Deploy(r)) => assert_eq!(r.body_digest.is_some(), remembered, "{provider:?}"),
                other => panic!("{provider:?}: {other:?}"),
            }
        }
        // GitLab's token covers nothing of the body (remembered by it, above); signed the Standard way, the id
        // is signed and nothing is remembered by the body.
        let (b, event) = payload(Provider::Gitlab, "refs/heads/main", &"e".repeat(40));
        let sig = sign_standard(SECRET, "d-1", now, b.as_bytes());
        let h = headers(&[
            ("x-gitlab-event", event),
            ("webhook-id", "d-1"),
            ("webhook-timestamp", &now.to_string()),
            ("webhook-signature", &sig),
        ]);
        match evaluate(&app, Provider::Gitlab, &[SECRET.to_vec()], &h, b.as_bytes(), now) {
            Ok(Accepted::Deploy(r)) => assert_eq!(r.body_digest, None),
            other => panic!("gitlab, signed: {other:?}"),
        }
    }

    #[test]
    fn rotation_accepts_either_secret() {
        let app = app_with("");
        let body = push_body("refs/heads/main", &"e".repeat(40));
        let old = b"the old secret, still accepted".to_vec();
        let new = b"the new secret, now preferred".to_vec();
        for signer in [&old, &new] {
            let h = headers(&[
                ("x-hub-signature-256", &sign_github(signer, body.as_bytes())),
                ("x-github-event", "push"),
                ("x-github-delivery", "d-2"),
            ]);
            let got = evaluate(
                &app,
                Provider::Github,
                &[new.clone(), old.clone()],
                &h,
                body.as_bytes(),
                0,
            );
            assert!(matches!(got, Ok(Accepted::Deploy(_))), "{got:?}");
            let got = evaluate(
                &app,
                Provider::Github,
                std::slice::from_ref(&new),
                &h,
                body.as_bytes(),
                0,
            );
            assert_eq!(
                got.is_ok(),
                signer == &new,
                "once the old secret is removed it stops working"
            );
        }
    }

    /// What a fleet host hands over and another host verifies again: every signing provider's delivery
    /// verifies on the other host for its own sha and no other; a tampered body, another secret, or headers
    /// the record added (GitLab's token) do not; GitLab's plain token is never carried.
    #[test]
    fn a_carried_delivery_verifies_again_only_as_it_came() {
        let sha = "c".repeat(40);
        let other = "d".repeat(40);
        let now = 1_800_000_000;
        for provider in Provider::ALL.into_iter().filter(|p| *p != Provider::Distribution) {
            let name = provider.as_str();
            let app = app_with(&format!(
                "[apps.blog.webhook]\nprovider = \"{name}\"\nsecret_file = \"/s\"\n"
            ));
            let (body, event) = payload(provider, "refs/heads/main", &sha);
            let mut h = signed(provider, event, &body, now);
            h.insert("x-forwarded-for", http::HeaderValue::from_static("10.0.0.1"));
            let secrets = [SECRET.to_vec()];
            let Some(d) = carried(provider, &h, body.as_bytes()) else {
                assert_eq!(
                    provider,
                    Provider::Gitlab,
                    "{name}: only GitLab's token mode is not carried"
                );
                assert!(h.contains_key("x-gitlab-token"));
                // A record that puts the token in itself gains nothing: only carried headers count.
                let forged = crate::model::SignedDelivery::new(
                    vec![
                        ("x-gitlab-token".into(), String::from_utf8_lossy(SECRET).into()),
                        ("x-gitlab-event".into(), event.into()),
                    ],
                    body.as_bytes(),
                );
                let e = reverify(&app, &secrets, &forged, now, &sha).expect_err("token dropped");
                assert!(e.contains("does not verify"), "{name}: {e}");
                continue;
            };
            assert!(
                d.headers
                    .iter()
                    .all(|(k, _)| CARRIED_HEADERS.contains(&k.as_str())),
                "{name}: {:?}",
                d.headers
            );
            assert_eq!(reverify(&app, &secrets, &d, now, &sha), Ok(()), "{name}");
            let e = reverify(&app, &secrets, &d, now, &other).expect_err("other sha");
            assert!(e.contains("asks for"), "{name}: {e}");
            let e =
                reverify(&app, &[b"another secret entirely!".to_vec()], &d, now, &sha).expect_err("secret");
            assert!(e.contains("does not verify"), "{name}: {e}");
            let tampered =
                crate::model::SignedDelivery::new(d.headers.clone(), body.replace(&sha, &other).as_bytes());
            let e = reverify(&app, &secrets, &tampered, now, &other).expect_err("tampered");
            assert!(e.contains("does not verify"), "{name}: {e}");
            let garbled = crate::model::SignedDelivery {
                headers: d.headers.clone(),
                body: "not base64!".into(),
            };
            assert!(reverify(&app, &secrets, &garbled, now, &sha).is_err(), "{name}");
            // An app without a webhook on this host cannot check a forge's signature: refused.
            let bare = app_with("");
            assert!(reverify(&bare, &secrets, &d, now, &sha).is_err(), "{name}");
        }
    }
}
