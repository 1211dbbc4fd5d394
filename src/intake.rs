//! Intake: turns the raw bytes and headers of a webhook into a typed decision, and nothing else.
//!
//! This is the trust boundary. It is pure and cheap on purpose: it never touches git, the network, the disk or
//! a shell, so every decision that can be made without fetching (signature, event, branch filter, deletion,
//! tag) is made here, can be tested with a table of cases, and can be fuzzed. Signatures are checked over the
//! raw body, in constant time, before a single byte of JSON is parsed.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::{AppConfig, Provider};
use crate::model::{self, DeployRequest, Trigger};

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
}

/// Why a webhook was refused. Nothing is recorded or queued for any of these.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("missing signature header {0}")]
    MissingSignature(&'static str),
    #[error("signature does not match")]
    BadSignature,
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl Rejected {
    pub fn status(&self) -> u16 {
        match self {
            Rejected::MissingSignature(_) | Rejected::BadSignature => 401,
            Rejected::Malformed(_) => 400,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Verifies and parses one webhook delivery for `app`, whose webhook secrets (current, then previous) are
/// `secrets`.
pub fn evaluate(
    app: &AppConfig,
    provider: Provider,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    match provider {
        Provider::Github => github(app, secrets, headers, body),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Constant-time check of a hex HMAC-SHA256 against every configured secret.
pub fn verify_hmac_sha256_hex(secrets: &[Vec<u8>], body: &[u8], hex_sig: &str) -> bool {
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    if sig.len() != 32 {
        return false;
    }
    secrets.iter().any(|secret| {
        let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    })
}

/// `sha256=<hex>` over `body` with `secret`: what a forge sends (used by the demo and tests).
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Deserialize)]
struct GithubPush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    pusher: Option<Named>,
    sender: Option<Login>,
}

#[derive(Deserialize)]
struct Named {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Login {
    login: Option<String>,
}

fn github(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    const SIG: &str = "x-hub-signature-256";
    let sig = header(headers, SIG).ok_or(Rejected::MissingSignature("X-Hub-Signature-256"))?;
    let hex_sig = sig.strip_prefix("sha256=").ok_or(Rejected::BadSignature)?;
    if !verify_hmac_sha256_hex(secrets, body, hex_sig) {
        return Err(Rejected::BadSignature);
    }
    let event = header(headers, "x-github-event")
        .ok_or_else(|| Rejected::Malformed("missing X-GitHub-Event header".into()))?;
    let delivery_id = match header(headers, "x-github-delivery") {
        Some(d) if model::is_valid_delivery_id(d) => Some(d.to_string()),
        Some(_) => {
            return Err(Rejected::Malformed(
                "X-GitHub-Delivery is not a valid delivery id".into(),
            ))
        }
        None => None,
    };
    match event {
        "ping" => return Ok(Accepted::Ping),
        "push" => {}
        other => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
    let push: GithubPush = serde_json::from_slice(body)
        .map_err(|e| Rejected::Malformed(format!("push payload is not valid JSON: {e}")))?;
    let actor = push
        .pusher
        .and_then(|p| p.name)
        .or_else(|| push.sender.and_then(|s| s.login))
        .unwrap_or_default();
    push_decision(
        app,
        "github",
        delivery_id,
        push.git_ref,
        push.after,
        push.deleted,
        &actor,
    )
}

/// The part every forge shares once its payload is parsed: validate the ref and sha, then filter.
fn push_decision(
    app: &AppConfig,
    provider: &str,
    delivery_id: Option<String>,
    git_ref: Option<String>,
    after: Option<String>,
    deleted: bool,
    actor: &str,
) -> Result<Accepted, Rejected> {
    let git_ref =
        git_ref.ok_or_else(|| Rejected::Malformed("push payload has no \"ref\"".into()))?;
    if !model::is_valid_ref(&git_ref) {
        return Err(Rejected::Malformed(
            "push payload's \"ref\" is not a valid git ref name".into(),
        ));
    }
    let after =
        after.ok_or_else(|| Rejected::Malformed("push payload has no \"after\" sha".into()))?;
    if !model::is_full_sha(&after) {
        return Err(Rejected::Malformed(
            "push payload's \"after\" is not a full commit sha".into(),
        ));
    }
    let deleted = deleted || model::is_zero_sha(&after);
    let request = DeployRequest {
        app: app.name.clone(),
        trigger: Trigger::Webhook,
        provider: Some(provider.to_string()),
        delivery_id,
        sha: (!deleted).then(|| after.clone()),
        git_ref: Some(git_ref.clone()),
        actor: model::clean_actor(actor),
    };
    let wanted = format!("refs/heads/{}", app.branch);
    if deleted {
        return Ok(Accepted::Ignore(
            request,
            format!("{git_ref} was deleted; deletions are never deployed"),
        ));
    }
    if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        return Ok(Accepted::Ignore(
            request,
            format!("tag {tag}: this app deploys branch {}", app.branch),
        ));
    }
    if git_ref != wanted {
        return Ok(Accepted::Ignore(
            request,
            format!("push to {git_ref}: this app deploys branch {}", app.branch),
        ));
    }
    Ok(Accepted::Deploy(request))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &[u8] = b"It's a Secret to Everybody";

    fn app() -> AppConfig {
        crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            "state_dir = \"/s\"\n[apps.blog]\nrepo = \"/r\"\npath = \"/p\"\n",
        )
        .expect("config")
        .apps
        .remove("blog")
        .expect("blog")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn githubs_published_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
        assert_eq!(
            sign_github(SECRET, b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
        assert!(verify_hmac_sha256_hex(
            &[SECRET.to_vec()],
            b"Hello, World!",
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        ));
    }

    fn push_body(r: &str, after: &str) -> String {
        format!(
            r#"{{"ref":"{r}","after":"{after}","deleted":false,"pusher":{{"name":"octocat"}}}}"#
        )
    }

    #[test]
    fn github_table() {
        let app = app();
        let sha = "a".repeat(40);
        let ok = push_body("refs/heads/main", &sha);
        let sig = sign_github(SECRET, ok.as_bytes());
        let secrets = [b"an older secret that rotated".to_vec(), SECRET.to_vec()];
        type Want = Result<&'static str, Rejected>;
        type Case = (&'static str, Vec<(&'static str, String)>, String, Want);
        let cases: Vec<Case> = vec![
            (
                "valid",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Ok("deploy"),
            ),
            (
                "missing signature",
                vec![("x-github-event", "push".into())],
                ok.clone(),
                Err(Rejected::MissingSignature("X-Hub-Signature-256")),
            ),
            (
                "wrong secret",
                vec![
                    (
                        "x-hub-signature-256",
                        sign_github(b"nope nope nope nope", ok.as_bytes()),
                    ),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Err(Rejected::BadSignature),
            ),
            (
                "tampered body",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "push".into()),
                ],
                ok.replace("octocat", "mallory"),
                Err(Rejected::BadSignature),
            ),
            (
                "sha1 prefix",
                vec![
                    ("x-hub-signature-256", sig.replace("sha256=", "sha1=")),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Err(Rejected::BadSignature),
            ),
            (
                "garbage signature",
                vec![
                    ("x-hub-signature-256", "sha256=zz".into()),
                    ("x-github-event", "push".into()),
                ],
                ok.clone(),
                Err(Rejected::BadSignature),
            ),
            (
                "ping",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "ping".into()),
                ],
                ok.clone(),
                Ok("ping"),
            ),
            (
                "other event",
                vec![
                    ("x-hub-signature-256", sig.clone()),
                    ("x-github-event", "issues".into()),
                ],
                ok.clone(),
                Ok("other"),
            ),
        ];
        for (name, hs, body, want) in cases {
            let h = headers(&hs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
            let got =
                evaluate(&app, Provider::Github, &secrets, &h, body.as_bytes()).map(|a| match a {
                    Accepted::Deploy(_) => "deploy",
                    Accepted::Ignore(..) => "ignore",
                    Accepted::Ping => "ping",
                    Accepted::OtherEvent(_) => "other",
                });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn push_filters() {
        let app = app();
        let sha = "b".repeat(40);
        let zero = "0".repeat(40);
        let cases: Vec<(String, &str)> = vec![
            (push_body("refs/heads/main", &sha), "deploy"),
            (
                push_body("refs/heads/feature", &sha),
                "ignore: push to refs/heads/feature",
            ),
            (push_body("refs/tags/v1.0", &sha), "ignore: tag v1.0"),
            (
                push_body("refs/heads/main", &zero),
                "ignore: refs/heads/main was deleted",
            ),
            (push_body("refs/heads/main", "abc"), "malformed"),
            (push_body("refs/heads/-x", &sha), "malformed"),
            (push_body("refs/heads/a..b", &sha), "malformed"),
            (r#"{"after":"x"}"#.to_string(), "malformed"),
            ("not json".to_string(), "malformed"),
            ("[]".to_string(), "malformed"),
        ];
        for (body, want) in cases {
            let h = headers(&[
                ("x-hub-signature-256", &sign_github(SECRET, body.as_bytes())),
                ("x-github-event", "push"),
                ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ]);
            let got = match evaluate(
                &app,
                Provider::Github,
                &[SECRET.to_vec()],
                &h,
                body.as_bytes(),
            ) {
                Ok(Accepted::Deploy(r)) => {
                    assert_eq!(r.sha.as_deref(), Some(sha.as_str()));
                    assert_eq!(r.actor, "octocat");
                    assert_eq!(
                        r.delivery_id.as_deref(),
                        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
                    );
                    "deploy".to_string()
                }
                Ok(Accepted::Ignore(_, reason)) => format!("ignore: {reason}"),
                Err(Rejected::Malformed(_)) => "malformed".to_string(),
                other => format!("{other:?}"),
            };
            assert!(got.starts_with(want), "{body}: got {got}, want {want}");
        }
    }
}
