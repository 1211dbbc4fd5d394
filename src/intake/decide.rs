//! Decide: where every provider's parsed payload becomes an [`Accepted`]. A signed payload is still untrusted
//! text (a forge's bug or a leaked secret must not hand `git` a ref like `--upload-pack=...`), so refs, shas,
//! tags and digests are validated here, once for all providers, before the app's `Track` says deploy or
//! ignore. Git refs end in [`decide`], image tags in [`decide_image`]. A payload for another repository than
//! the app's `webhook.repository` is refused by [`check_repository`] before either.

use std::fmt;

use super::{Accepted, Rejected};
use crate::config::{AppConfig, Track};
use crate::model::{self, DeployRequest, Trigger};

/// One ref update as a forge reports it.
pub(super) struct Change {
    pub(super) git_ref: String,
    pub(super) sha: Option<String>,
    /// What the ref pointed at before (`before`, `fromHash`, `old.target.hash`); the all-zero sha of a
    /// creation means none.
    pub(super) parent: Option<String>,
    pub(super) deleted: bool,
}

/// Validates every change, then filters. With several changes (Bitbucket), the first one this app deploys
/// wins; if none does, the first one is recorded as ignored. The changes are taken, so the one chosen moves
/// into the request without a copy.
pub(super) fn decide(
    app: &AppConfig,
    provider: &str,
    delivery_id: Option<String>,
    mut changes: Vec<Change>,
    actor: &str,
) -> Result<Accepted, Rejected> {
    if changes.is_empty() {
        return Err(Rejected::Malformed("push payload names no ref".into()));
    }
    for c in &changes {
        validate(c)?;
    }
    let wanted = changes
        .iter()
        .position(|c| app.track.wants(&c.git_ref) && !is_deletion(c));
    let c = changes.swap_remove(wanted.unwrap_or(0));
    let deleted = is_deletion(&c);
    let ignored = wanted.is_none().then(|| ignore_reason(app, &c, deleted));
    // A tag's previous target says nothing about the order of commits on a branch.
    let parent = c
        .parent
        .filter(|p| !model::is_zero_sha(p) && !c.git_ref.starts_with("refs/tags/"));
    let request = DeployRequest::new(&app.name, Trigger::Webhook, model::clean_actor(actor))
        .sent_by(provider, delivery_id)
        .with_sha(if deleted { None } else { c.sha })
        .after_parent(parent)
        .at_ref(Some(c.git_ref));
    Ok(match ignored {
        None => Accepted::Deploy(request),
        Some(reason) => Accepted::Ignore(request, reason),
    })
}

fn validate(c: &Change) -> Result<(), Rejected> {
    if !model::is_valid_ref(&c.git_ref) {
        return Err(Rejected::Malformed(
            "push payload's ref is not a valid git ref name".into(),
        ));
    }
    if let Some(sha) = &c.sha {
        if !model::is_full_sha(sha) {
            return Err(Rejected::Malformed(
                "push payload's sha is not a full commit sha".into(),
            ));
        }
    }
    if let Some(parent) = &c.parent {
        if !model::is_full_sha(parent) {
            return Err(Rejected::Malformed(
                "push payload's previous sha (what the ref pointed at before) is not a full commit sha"
                    .into(),
            ));
        }
    }
    Ok(())
}

/// How a payload names the repository it is about, as a person writes it in `webhook.repository`.
#[derive(Clone, Copy)]
pub(super) enum RepoName<'a> {
    /// The repository's path: `owner/name`, or GitLab's `group/subgroup/name`.
    Path(&'a str),
    /// Bitbucket Data Center's project key and repository slug, written `KEY/slug`.
    Project { key: &'a str, slug: &'a str },
}

impl RepoName<'_> {
    fn is_empty(self) -> bool {
        match self {
            RepoName::Path(p) => p.is_empty(),
            RepoName::Project { key, slug } => key.is_empty() || slug.is_empty(),
        }
    }
    /// Forges treat names without regard to case (`Acme/Blog` is `acme/blog`), and all of them are ASCII.
    fn is(self, configured: &str) -> bool {
        match self {
            RepoName::Path(p) => p.eq_ignore_ascii_case(configured),
            RepoName::Project { key, slug } => configured
                .split_once('/')
                .is_some_and(|(k, s)| k.eq_ignore_ascii_case(key) && s.eq_ignore_ascii_case(slug)),
        }
    }
}

impl fmt::Display for RepoName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoName::Path(p) => f.write_str(p),
            RepoName::Project { key, slug } => write!(f, "{key}/{slug}"),
        }
    }
}

/// A secret proves who signed, not which repository the push is about: when the app names its repository,
/// a payload must name the same one, and a payload that names none is refused too (fail closed). Nothing is
/// recorded for a refusal.
pub(super) fn check_repository(app: &AppConfig, named: Option<RepoName<'_>>) -> Result<(), Rejected> {
    let Some(want) = app.webhook.as_ref().and_then(|w| w.repository.as_deref()) else {
        return Ok(());
    };
    match named.filter(|n| !n.is_empty()) {
        Some(n) if n.is(want) => Ok(()),
        Some(n) => Err(Rejected::Malformed(format!(
            "this app deploys only repository {want:?} (webhook.repository), and this payload is for {:?}; \
             is its secret shared with another repository's webhook?",
            model::clean_actor(&n.to_string())
        ))),
        None => Err(Rejected::Malformed(format!(
            "this app deploys only repository {want:?} (webhook.repository), and this payload names no repository"
        ))),
    }
}

/// A forge reports a deleted ref either with a flag or with the all-zero sha; both mean the same.
fn is_deletion(c: &Change) -> bool {
    c.deleted || c.sha.as_deref().is_some_and(model::is_zero_sha)
}

fn ignore_reason(app: &AppConfig, c: &Change, deleted: bool) -> String {
    if deleted {
        format!("{} was deleted; deletions are never deployed", c.git_ref)
    } else if let Some(tag) = c.git_ref.strip_prefix("refs/tags/") {
        format!("tag {tag}: this app deploys {}", app.track.describe())
    } else {
        format!("push to {}: this app deploys {}", c.git_ref, app.track.describe())
    }
}

/// A pinned digest is compared with what is fetched, and its hex stands in for the sha in the audit, so
/// anything but `sha256:<64 hex>` is refused rather than carried along.
pub(super) fn check_digest(digest: Option<&str>) -> Result<(), Rejected> {
    match digest {
        Some(d) if !model::is_sha256_digest(d) => {
            Err(Rejected::Malformed("digest is not sha256:<64 hex digits>".into()))
        }
        _ => Ok(()),
    }
}

/// `decide` for an image app: the tag must be a valid tag this app deploys, the digest a sha256 digest.
pub(super) fn decide_image(
    app: &AppConfig,
    provider: &str,
    delivery_id: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    actor: &str,
) -> Result<Accepted, Rejected> {
    check_digest(digest.as_deref())?;
    let tag = match tag.or_else(|| fixed_tag(&app.track)) {
        Some(t) if model::is_oci_tag(&t) => t,
        Some(_) => return Err(Rejected::Malformed("tag is not a valid image tag".into())),
        None => {
            return Err(Rejected::Malformed(
                "this app deploys tags matching a glob: the trigger must name the tag".into(),
            ))
        }
    };
    let git_ref = format!("refs/tags/{tag}");
    let wanted = app.track.wants(&git_ref);
    let sha = digest
        .as_deref()
        .map(|d| d.trim_start_matches("sha256:").to_string());
    let request = DeployRequest::new(&app.name, Trigger::Webhook, model::clean_actor(actor))
        .sent_by(provider, delivery_id)
        .at_ref(Some(git_ref))
        .with_sha(sha)
        .with_digest(digest);
    if wanted {
        Ok(Accepted::Deploy(request))
    } else {
        let reason = format!("tag {tag}: this app deploys {}", app.track.describe());
        Ok(Accepted::Ignore(request, reason))
    }
}

/// An app that tracks one exact tag needs no tag in the trigger; a glob does.
fn fixed_tag(track: &Track) -> Option<String> {
    match track {
        Track::Tags(g) if !g.contains(['*', '?']) => Some(g.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Provider;
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, sign_github, Accepted, Rejected};

    #[test]
    fn push_filters() {
        let app = app_with("");
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
            let got = match evaluate(&app, Provider::Github, &[SECRET.to_vec()], &h, body.as_bytes(), 0) {
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

    #[test]
    fn tag_apps_deploy_matching_tags_only() {
        let app = app_with("tags = \"v*\"");
        let sha = "d".repeat(40);
        for (r, want) in [
            ("refs/tags/v1.2.0", "deploy"),
            ("refs/tags/nightly", "ignore"),
            ("refs/heads/main", "ignore"),
        ] {
            let body = push_body(r, &sha);
            let h = signed(Provider::Github, "push", &body, 0);
            let got = match evaluate(&app, Provider::Github, &[SECRET.to_vec()], &h, body.as_bytes(), 0) {
                Ok(Accepted::Deploy(req)) => {
                    assert_eq!(req.git_ref.as_deref(), Some(r));
                    "deploy"
                }
                Ok(Accepted::Ignore(..)) => "ignore",
                other => panic!("{r}: {other:?}"),
            };
            assert_eq!(got, want, "{r}");
        }
    }
}
