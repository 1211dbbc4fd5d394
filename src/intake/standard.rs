//! Standard Webhooks: what a CI job or a script sends when no forge is involved. One signed JSON shape, every
//! field optional, serves every kind of app: a git app names a ref and a sha, an image app a tag (and maybe a
//! digest), an object or URL app a commit plus the digest its upload must have.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::{check_digest, decide, decide_image, Change};
use super::payload::parse;
use super::verify::verify_standard;
use super::{Accepted, Rejected};
use crate::config::{AppConfig, Source, Track};
use crate::model;

/// What a CI job or a script sends with the `standard` provider (all fields optional).
#[derive(Deserialize)]
struct StandardPayload {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    sha: Option<String>,
    actor: Option<String>,
    /// An artifact: the image tag.
    tag: Option<String>,
    /// An artifact: the digest it must have (`sha256:<hex>`); `sha256` (bare hex) says the same.
    digest: Option<String>,
    sha256: Option<String>,
}

pub(super) fn evaluate(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
    now_secs: i64,
) -> Result<Accepted, Rejected> {
    let id = verify_standard(secrets, headers, body, now_secs)?;
    let p: StandardPayload = parse(body)?;
    match p.kind.as_deref() {
        None | Some("push") | Some("deploy") => {}
        Some("ping") => return Ok(Accepted::Ping),
        Some(other) => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
    let digest = match (p.digest, p.sha256) {
        (Some(d), _) => Some(d),
        (None, Some(h)) => Some(format!("sha256:{h}")),
        (None, None) => None,
    };
    let actor = p.actor.as_deref().unwrap_or("standard webhook");
    if matches!(app.source, Source::Image(_)) {
        let tag = p.tag.or_else(|| {
            p.git_ref
                .as_deref()
                .and_then(|r| r.strip_prefix("refs/tags/"))
                .map(String::from)
        });
        return decide_image(app, "standard", Some(id), tag, digest, actor);
    }
    commit(app, id, p.git_ref, p.sha, digest, actor)
}

/// A git, object or URL app: the commit the payload names (the tracked branch when it names none), and for
/// an artifact the digest its upload must have.
fn commit(
    app: &AppConfig,
    id: String,
    git_ref: Option<String>,
    sha: Option<String>,
    digest: Option<String>,
    actor: &str,
) -> Result<Accepted, Rejected> {
    check_digest(digest.as_deref())?;
    let git_ref = match (git_ref, &app.track) {
        (Some(r), _) => r,
        (None, Track::Branch(b)) => format!("refs/heads/{b}"),
        (None, Track::Tags(_)) => {
            return Err(Rejected::Malformed(
                "this app deploys tags: the payload must name one in \"ref\"".into(),
            ))
        }
    };
    let change = Change {
        git_ref,
        sha,
        parent: None,
        deleted: false,
    };
    let decided = decide(app, "standard", Some(id), vec![change], actor)?;
    // An object or URL app: the digest the upload must have travels with the request.
    Ok(match decided {
        Accepted::Deploy(mut r) if app.source.is_artifact() => {
            r.digest = digest;
            Accepted::Deploy(r)
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use crate::config::{AppConfig, Provider};
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, Accepted, Rejected};

    /// Standard Webhooks naming a digest: what an image or object app accepts, and a bad digest refused with
    /// nothing recorded.
    #[test]
    fn artifact_triggers_fail_closed() {
        let now = 1_800_000_000;
        let app = image_app("");
        let digest = format!("sha256:{}", "a".repeat(64));
        let secrets = [SECRET.to_vec()];
        let eval = |app: &AppConfig, p: Provider, h: &HeaderMap, b: &str| {
            evaluate(app, p, &secrets, h, b.as_bytes(), now)
        };
        // Standard Webhooks from CI: a tag and a digest.
        let std_body = format!(r#"{{"tag":"main","digest":"{digest}","actor":"ci"}}"#);
        let sh = signed(Provider::Standard, "", &std_body, now);
        match eval(&app, Provider::Standard, &sh, &std_body) {
            Ok(Accepted::Deploy(r)) => assert_eq!(r.digest.as_deref(), Some(digest.as_str())),
            other => panic!("standard image trigger gave {other:?}"),
        }
        let bad_digest = r#"{"tag":"main","digest":"sha256:../../etc"}"#;
        let sh = signed(Provider::Standard, "", bad_digest, now);
        assert!(matches!(
            eval(&app, Provider::Standard, &sh, bad_digest),
            Err(Rejected::Malformed(_))
        ));
        // An object app: the commit names the key, the sha256 pins the bytes.
        let obj = crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            "state_dir = \"/s\"\n[apps.o]\nobject = \"s3://b/app-{sha}.tgz\"\npath = \"/p\"\n",
        )
        .expect("config")
        .apps
        .remove("o")
        .expect("o");
        let sha = "c".repeat(40);
        let ob = format!(
            r#"{{"ref":"refs/heads/main","sha":"{sha}","sha256":"{}"}}"#,
            "b".repeat(64)
        );
        let sh = signed(Provider::Standard, "", &ob, now);
        match eval(&obj, Provider::Standard, &sh, &ob) {
            Ok(Accepted::Deploy(r)) => {
                assert_eq!(r.sha.as_deref(), Some(sha.as_str()));
                assert_eq!(r.digest, Some(format!("sha256:{}", "b".repeat(64))));
            }
            other => panic!("standard object trigger gave {other:?}"),
        }
        let ob_bad = format!(r#"{{"ref":"refs/heads/main","sha":"{sha}","sha256":"zz"}}"#);
        let sh = signed(Provider::Standard, "", &ob_bad, now);
        assert!(matches!(
            eval(&obj, Provider::Standard, &sh, &ob_bad),
            Err(Rejected::Malformed(_))
        ));
    }
}
