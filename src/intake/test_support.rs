//! Test support: the apps, headers and payloads the provider tests share, so each provider's file tests its
//! own quirks and `mod.rs` the table every provider must pass, all signing the same way.

use http::{HeaderMap, HeaderValue};

use super::{sign_github, sign_standard};
use crate::config::{AppConfig, Provider};

pub(super) const SECRET: &[u8] = b"It's a Secret to Everybody";

/// A git app `blog` tracking `main`, with `extra` lines appended to its section.
pub(super) fn app_with(extra: &str) -> AppConfig {
    crate::config::Config::parse(
        std::path::Path::new("/x/haul.toml"),
        &format!("state_dir = \"/s\"\n[apps.blog]\nrepo = \"/r\"\npath = \"/p\"\n{extra}\n"),
    )
    .expect("config")
    .apps
    .remove("blog")
    .expect("blog")
}

/// An image app `api` on a loopback registry, tracking the tag `main`.
pub(super) fn image_app(extra: &str) -> AppConfig {
    crate::config::Config::parse(
        std::path::Path::new("/x/haul.toml"),
        &format!("state_dir = \"/s\"\n[apps.api]\nimage = \"127.0.0.1:5000/acme/api\"\ntag = \"main\"\npath = \"/p\"\n{extra}\n"),
    )
    .expect("config")
    .apps
    .remove("api")
    .expect("api")
}

pub(super) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).expect("header"));
    }
    h
}

pub(super) fn push_body(r: &str, after: &str) -> String {
    format!(r#"{{"ref":"{r}","after":"{after}","deleted":false,"pusher":{{"name":"octocat"}}}}"#)
}

/// One signed request per provider, in that provider's own dialect.
pub(super) fn signed(provider: Provider, event: &str, body: &str, now: i64) -> HeaderMap {
    let sig = sign_github(SECRET, body.as_bytes());
    let bare = sig.trim_start_matches("sha256=").to_string();
    match provider {
        Provider::Github => headers(&[
            ("x-hub-signature-256", &sig),
            ("x-github-event", event),
            ("x-github-delivery", "d-1"),
        ]),
        Provider::Gitlab => headers(&[
            ("x-gitlab-token", std::str::from_utf8(SECRET).expect("utf8")),
            ("x-gitlab-event", event),
            ("x-gitlab-webhook-uuid", "d-1"),
        ]),
        Provider::Gitea => headers(&[
            ("x-gitea-signature", &bare),
            ("x-gitea-event", event),
            ("x-gitea-delivery", "d-1"),
        ]),
        Provider::Forgejo => headers(&[
            ("x-forgejo-signature", &bare),
            ("x-forgejo-event", event),
            ("x-forgejo-delivery", "d-1"),
        ]),
        Provider::Bitbucket => headers(&[
            ("x-hub-signature", &sig),
            ("x-event-key", event),
            ("x-request-uuid", "d-1"),
        ]),
        Provider::Standard => {
            let s = sign_standard(SECRET, "d-1", now, body.as_bytes());
            headers(&[
                ("webhook-id", "d-1"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", &s),
            ])
        }
        Provider::Distribution => headers(&[(
            "authorization",
            &format!("Bearer {}", std::str::from_utf8(SECRET).expect("utf8")),
        )]),
    }
}

/// A push of `sha` to `r` in the provider's own payload shape, and the event header it comes with.
pub(super) fn payload(provider: Provider, r: &str, sha: &str) -> (String, &'static str) {
    match provider {
        Provider::Github => (push_body(r, sha), "push"),
        Provider::Gitlab => (
            format!(r#"{{"object_kind":"push","ref":"{r}","after":"{sha}","user_username":"octocat"}}"#),
            "Push Hook",
        ),
        Provider::Gitea | Provider::Forgejo => (
            format!(r#"{{"ref":"{r}","after":"{sha}","pusher":{{"login":"octocat","username":"octocat"}}}}"#),
            "push",
        ),
        Provider::Bitbucket => {
            let (kind, name) = match r.strip_prefix("refs/tags/") {
                Some(t) => ("tag", t),
                None => ("branch", r.trim_start_matches("refs/heads/")),
            };
            (
                format!(
                    r#"{{"actor":{{"nickname":"octocat"}},"push":{{"changes":[{{"new":{{"type":"{kind}","name":"{name}","target":{{"hash":"{sha}"}}}},"old":null}}]}}}}"#
                ),
                "repo:push",
            )
        }
        Provider::Standard => (format!(r#"{{"ref":"{r}","sha":"{sha}","actor":"octocat"}}"#), ""),
        Provider::Distribution => (
            distribution_body("acme/api", r.trim_start_matches("refs/tags/"), sha),
            "",
        ),
    }
}

pub(super) fn distribution_body(repo: &str, tag: &str, digest: &str) -> String {
    format!(
        r#"{{"events":[{{"id":"ev-1","timestamp":"2026-11-26T18:00:00Z","action":"push","target":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":400,"digest":"{digest}","repository":"{repo}","url":"http://127.0.0.1:5000/v2/{repo}/manifests/{digest}","tag":"{tag}"}},"request":{{"id":"r","addr":"127.0.0.1","host":"127.0.0.1:5000","method":"PUT","useragent":"skopeo"}},"actor":{{"name":"pusher"}},"source":{{"addr":"x:5000","instanceID":"i"}}}}]}}"#
    )
}
