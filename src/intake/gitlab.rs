//! GitLab: push and tag push hooks. GitLab authenticates a hook one of two ways: with a signing token it signs
//! Standard Webhooks style, otherwise it sends the secret token itself in `X-Gitlab-Token` (which covers
//! nothing of the body). Both are accepted; a request carrying a signature is held to the signature.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::{check_repository, decide, Change, RepoName};
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
    before: Option<String>,
    after: Option<String>,
    user_username: Option<String>,
    user_name: Option<String>,
    project: Option<GitlabProject>,
}

#[derive(Deserialize)]
struct GitlabProject {
    /// `group/subgroup/name`, as in the project's URLs.
    path_with_namespace: Option<String>,
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
    if event == "Pipeline Hook" && app.ci_gate.is_some() {
        return pipeline(app, body);
    }
    if event != "Push Hook" && event != "Tag Push Hook" {
        return Ok(Accepted::OtherEvent(model::clean_actor(event)));
    }
    let push: GitlabPush = parse(body)?;
    if !matches!(push.object_kind.as_deref(), Some("push" | "tag_push")) {
        return Err(Rejected::Malformed(
            "payload's object_kind is not push or tag_push".into(),
        ));
    }
    let named = push
        .project
        .as_ref()
        .and_then(|p| p.path_with_namespace.as_deref());
    check_repository(app, named.map(RepoName::Path))?;
    let actor = push.user_username.or(push.user_name).unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        parent: push.before,
        deleted: false,
    };
    decide(app, "gitlab", delivery_id, vec![change], &actor)
}

#[derive(Deserialize)]
struct GitlabPipeline {
    object_kind: Option<String>,
    object_attributes: Option<PipelineAttributes>,
    project: Option<GitlabProject>,
}

#[derive(Deserialize)]
struct PipelineAttributes {
    name: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    tag: bool,
    sha: Option<String>,
    status: Option<String>,
}

/// `gate = "ci"`: a finished pipeline on the app's branch (of the gate's name, when `gate_workflow` is set)
/// says whether its `sha` passed. Pipelines still running, of tags, of merge requests or of other branches
/// change nothing.
fn pipeline(app: &AppConfig, body: &[u8]) -> Result<Accepted, Rejected> {
    let ev: GitlabPipeline = parse(body)?;
    if ev.object_kind.as_deref() != Some("pipeline") {
        return Err(Rejected::Malformed(
            "payload's object_kind is not pipeline".into(),
        ));
    }
    let named = ev.project.as_ref().and_then(|p| p.path_with_namespace.as_deref());
    check_repository(app, named.map(RepoName::Path))?;
    let attrs = ev
        .object_attributes
        .ok_or_else(|| Rejected::Malformed("pipeline event has no \"object_attributes\"".into()))?;
    let other = |why: String| Ok(Accepted::OtherEvent(model::clean_actor(&why)));
    let name = attrs.name.unwrap_or_default();
    let wanted = app.ci_gate.as_deref().unwrap_or_default();
    if !wanted.is_empty() && name != wanted {
        return other(format!("pipeline {name:?}, not the gate's {wanted:?}"));
    }
    if attrs.tag || attrs.git_ref.as_deref() != Some(app.branch.as_str()) {
        return other(format!(
            "pipeline on {:?}, not {}",
            attrs.git_ref.unwrap_or_default(),
            app.branch
        ));
    }
    let sha = attrs
        .sha
        .filter(|s| model::is_full_sha(s))
        .map(|s| s.to_ascii_lowercase())
        .ok_or_else(|| Rejected::Malformed("pipeline has no valid sha (40 hex digits)".into()))?;
    let status = attrs.status.unwrap_or_default();
    let passed = match status.as_str() {
        "success" => true,
        "failed" | "canceled" => false,
        // created, pending, running, manual, skipped, ...: no verdict yet.
        other_status => return other(format!("pipeline {other_status}")),
    };
    Ok(Accepted::CiResult {
        passed,
        what: if name.is_empty() {
            format!("pipeline {status}")
        } else {
            format!("pipeline {name:?} {status}")
        },
        sha,
    })
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

#[cfg(test)]
mod tests {
    use crate::config::Provider;
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, sign_standard, Accepted, Rejected};

    /// GitLab's own Pipeline Hook example (tests/fixtures), for a `gate = "ci"` app: a finished pipeline of
    /// the app's branch is a verdict on its `sha`; running ones, other branches, tags and other names are not.
    #[test]
    fn a_finished_pipeline_of_the_branch_is_a_ci_verdict() {
        let gitlab = "[apps.blog.webhook]\nprovider = \"gitlab\"\nsecret_file = \"s\"";
        let any = app_with(&format!("gate = \"ci\"\n{gitlab}"));
        let named = app_with(&format!(
            "gate = \"ci\"\ngate_workflow = \"Deploy gate\"\n{gitlab}"
        ));
        let example = include_str!("../../tests/fixtures/gitlab/pipeline.json");
        let sha = "c".repeat(40);
        let body = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(example).expect("json");
            v["object_attributes"]["ref"] = "main".into();
            v["object_attributes"]["sha"] = sha.clone().into();
            edit(&mut v);
            v.to_string()
        };
        let token = std::str::from_utf8(SECRET).expect("utf8");
        let run = |app: &crate::config::AppConfig, b: String| {
            let h = headers(&[("x-gitlab-token", token), ("x-gitlab-event", "Pipeline Hook")]);
            match evaluate(app, Provider::Gitlab, &[SECRET.to_vec()], &h, b.as_bytes(), 0) {
                Ok(Accepted::CiResult { sha, passed, what }) => format!("{} {passed} {what}", &sha[..4]),
                Ok(Accepted::OtherEvent(e)) => format!("other: {e}"),
                other => format!("{other:?}"),
            }
        };
        assert_eq!(
            run(&any, body(&|_| {})),
            "cccc true pipeline \"Pipeline for branch: master\" success"
        );
        let failed = body(&|v| v["object_attributes"]["status"] = "failed".into());
        assert!(run(&any, failed).starts_with("cccc false"));
        let running = body(&|v| v["object_attributes"]["status"] = "running".into());
        assert!(run(&any, running).starts_with("other: pipeline running"));
        let tag = body(&|v| v["object_attributes"]["tag"] = true.into());
        assert!(run(&any, tag).starts_with("other"));
        let mr = body(&|v| v["object_attributes"]["ref"] = "refs/merge-requests/1/head".into());
        assert!(run(&any, mr).starts_with("other"));
        assert!(run(&named, body(&|_| {})).contains("not the gate's"));
        let gate = body(&|v| v["object_attributes"]["name"] = "Deploy gate".into());
        assert!(run(&named, gate).starts_with("cccc true"));
        // An app without the gate takes a Pipeline Hook as any other event.
        assert!(run(&app_with(""), body(&|_| {})).starts_with("other"));
    }

    /// GitLab's signed mode: the Standard Webhooks headers decide, and a correct plain token beside a wrong
    /// signature does not rescue it.
    #[test]
    fn a_signed_gitlab_hook_is_held_to_its_signature() {
        let app = app_with("");
        let now = 1_800_000_000;
        let sha = "a".repeat(40);
        let (body, event) = payload(Provider::Gitlab, "refs/heads/main", &sha);
        let token = std::str::from_utf8(SECRET).expect("utf8");
        let eval = |h| {
            evaluate(
                &app,
                Provider::Gitlab,
                &[SECRET.to_vec()],
                &h,
                body.as_bytes(),
                now,
            )
        };
        let good = sign_standard(SECRET, "msg-1", now, body.as_bytes());
        let bad = sign_standard(b"not the secret", "msg-1", now, body.as_bytes());
        let signed_with = |sig: &str| {
            headers(&[
                ("webhook-id", "msg-1"),
                ("webhook-timestamp", &now.to_string()),
                ("webhook-signature", sig),
                ("x-gitlab-token", token),
                ("x-gitlab-event", event),
            ])
        };
        match eval(signed_with(&good)) {
            Ok(Accepted::Deploy(r)) => assert_eq!(r.delivery_id.as_deref(), Some("msg-1")),
            other => panic!("signed gitlab push gave {other:?}"),
        }
        assert_eq!(eval(signed_with(&bad)), Err(Rejected::BadSignature));
    }

    #[test]
    fn a_plain_token_hook_may_omit_the_delivery_id_but_not_the_object_kind() {
        let app = app_with("");
        let sha = "a".repeat(40);
        let (body, event) = payload(Provider::Gitlab, "refs/heads/main", &sha);
        let mut h = signed(Provider::Gitlab, event, &body, 0);
        h.remove("x-gitlab-webhook-uuid");
        match evaluate(&app, Provider::Gitlab, &[SECRET.to_vec()], &h, body.as_bytes(), 0) {
            Ok(Accepted::Deploy(r)) => assert_eq!(r.delivery_id, None),
            other => panic!("gitlab push without a delivery id gave {other:?}"),
        }
        let issue = body.replace(r#""object_kind":"push""#, r#""object_kind":"issue""#);
        assert!(matches!(
            evaluate(&app, Provider::Gitlab, &[SECRET.to_vec()], &h, issue.as_bytes(), 0),
            Err(Rejected::Malformed(ref m)) if m.contains("object_kind")
        ));
    }
}
