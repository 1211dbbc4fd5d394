//! Bitbucket: Cloud (`repo:push`) and Data Center (`repo:refs_changed`) share the signature header but not the
//! payload, and both can carry several ref changes in one delivery, so each shape is turned into a list of
//! `Change`s and `decide` picks the one this app deploys. They name their repository differently too: Cloud
//! as `repository.full_name` (`workspace/slug`), Data Center as a project key and a slug, which a person
//! writes `KEY/slug` as in its clone URLs.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::{check_repository, decide, Change, RepoName};
use super::payload::{parse, required_ref};
use super::verify::{check_sha256_prefixed, header, required_delivery};
use super::{Accepted, Rejected};
use crate::config::AppConfig;
use crate::model;

#[derive(Deserialize)]
struct BitbucketPayload {
    push: Option<BbCloudPush>,
    changes: Option<Vec<BbServerChange>>,
    actor: Option<BbActor>,
    repository: Option<BbRepository>,
}

/// Cloud's repository has `full_name`; Data Center's a `slug` inside a `project`.
#[derive(Deserialize)]
struct BbRepository {
    full_name: Option<String>,
    slug: Option<String>,
    project: Option<BbProject>,
}

#[derive(Deserialize)]
struct BbProject {
    key: Option<String>,
}

#[derive(Deserialize)]
struct BbCloudPush {
    changes: Vec<BbCloudChange>,
}

#[derive(Deserialize)]
struct BbCloudChange {
    new: Option<BbCloudRef>,
    old: Option<BbCloudRef>,
}

#[derive(Deserialize)]
struct BbCloudRef {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    target: Option<BbTarget>,
}

#[derive(Deserialize)]
struct BbTarget {
    hash: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BbServerChange {
    ref_id: Option<String>,
    from_hash: Option<String>,
    to_hash: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct BbActor {
    nickname: Option<String>,
    display_name: Option<String>,
    name: Option<String>,
    #[serde(rename = "displayName")]
    display_name_dc: Option<String>,
}

pub(super) fn evaluate(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    let sig = header(headers, "x-hub-signature").ok_or(Rejected::MissingSignature("X-Hub-Signature"))?;
    check_sha256_prefixed(secrets, body, sig)?;
    events(app, headers, body)
}

/// A verified delivery: a push (Cloud or Data Center), a ping, or another event (answered, not recorded).
fn events(app: &AppConfig, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, Rejected> {
    let event = header(headers, "x-event-key")
        .ok_or_else(|| Rejected::Malformed("missing X-Event-Key header".into()))?;
    let delivery_id = Some(required_delivery(headers, &["x-request-uuid", "x-request-id"])?);
    match event {
        "diagnostics:ping" => return Ok(Accepted::Ping),
        "repo:push" | "repo:refs_changed" => {}
        other => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
    let p: BitbucketPayload = parse(body)?;
    check_repository(app, repository(event, p.repository.as_ref()))?;
    let mut changes = Vec::new();
    for c in p.push.map(|push| push.changes).unwrap_or_default() {
        if let Some(change) = cloud_change(c)? {
            changes.push(change);
        }
    }
    for c in p.changes.unwrap_or_default() {
        changes.push(server_change(c)?);
    }
    let actor = p
        .actor
        .and_then(|a| a.nickname.or(a.name).or(a.display_name).or(a.display_name_dc))
        .unwrap_or_default();
    decide(app, "bitbucket", delivery_id, changes, &actor)
}

/// The event key says which product sent the payload, and so where it names its repository.
fn repository<'a>(event: &str, r: Option<&'a BbRepository>) -> Option<RepoName<'a>> {
    let r = r?;
    if event == "repo:push" {
        return r.full_name.as_deref().map(RepoName::Path);
    }
    let key = r.project.as_ref()?.key.as_deref()?;
    Some(RepoName::Project {
        key,
        slug: r.slug.as_deref()?,
    })
}

/// Cloud names a ref without its `refs/...` prefix and reports a deletion as a change with no `new` side
/// (and a creation as one with no `old` side); a change with neither side says nothing and is skipped.
fn cloud_change(c: BbCloudChange) -> Result<Option<Change>, Rejected> {
    let (r, old, deleted) = match (c.new, c.old) {
        (Some(new), old) => (new, old, false),
        (None, Some(old)) => (old, None, true),
        (None, None) => return Ok(None),
    };
    let name = r
        .name
        .ok_or_else(|| Rejected::Malformed("a change has no ref name".into()))?;
    let prefix = match r.kind.as_deref() {
        Some("tag") | Some("annotated_tag") => "refs/tags/",
        _ => "refs/heads/",
    };
    let hash = r.target.and_then(|t| t.hash);
    // A deletion's only side is the old one: what the ref pointed at before.
    let (sha, parent) = if deleted {
        (None, hash)
    } else {
        (hash, old.and_then(|o| o.target?.hash))
    };
    Ok(Some(Change {
        git_ref: format!("{prefix}{name}"),
        sha,
        parent,
        deleted,
    }))
}

/// Data Center names the full ref and says `DELETE` in the change's type (and `ADD`, with an all-zero
/// `fromHash`, for a creation).
fn server_change(c: BbServerChange) -> Result<Change, Rejected> {
    Ok(Change {
        git_ref: required_ref(c.ref_id)?,
        deleted: c.kind.as_deref() == Some("DELETE"),
        sha: c.to_hash,
        parent: c.from_hash,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Provider;
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, Accepted};

    #[test]
    fn bitbucket_picks_the_change_for_this_branch() {
        let app = app_with("");
        let sha = "f".repeat(40);
        let body = format!(
            r#"{{"actor":{{"nickname":"n"}},"push":{{"changes":[
                {{"new":{{"type":"branch","name":"feature","target":{{"hash":"{sha}"}}}},"old":null}},
                {{"new":{{"type":"branch","name":"main","target":{{"hash":"{sha}"}}}},"old":null}}]}}}}"#
        );
        let h = signed(Provider::Bitbucket, "repo:push", &body, 0);
        let got = evaluate(
            &app,
            Provider::Bitbucket,
            &[SECRET.to_vec()],
            &h,
            body.as_bytes(),
            0,
        );
        assert!(
            matches!(got, Ok(Accepted::Deploy(ref r)) if r.git_ref.as_deref() == Some("refs/heads/main")),
            "{got:?}"
        );
        // Data Center's shape, with a deletion of main.
        let body = format!(
            r#"{{"actor":{{"name":"admin"}},"changes":[{{"refId":"refs/heads/main","toHash":"{}","type":"DELETE"}}]}}"#,
            "0".repeat(40)
        );
        let h = signed(Provider::Bitbucket, "repo:refs_changed", &body, 0);
        let got = evaluate(
            &app,
            Provider::Bitbucket,
            &[SECRET.to_vec()],
            &h,
            body.as_bytes(),
            0,
        );
        assert!(
            matches!(got, Ok(Accepted::Ignore(_, ref why)) if why.contains("deleted")),
            "{got:?}"
        );
    }
}
