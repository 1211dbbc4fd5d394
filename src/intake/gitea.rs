//! Gitea and Forgejo: one payload, two dialects of headers. Forgejo is a fork of Gitea and sends its own
//! `X-Forgejo-*` headers beside Gitea's, so a Forgejo hook accepts either; a Gitea hook only Gitea's. The
//! signature is a bare hex HMAC-SHA256 of the body.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::{check_repository, decide, Change};
use super::payload::{full_name, parse, required_ref, required_sha, workflow_matches, Login, Repository};
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
    match event {
        "push" => {}
        // `gate = "ci"`: Gitea's (1.25+) workflow_run, Forgejo's (12+) action_run_*.
        "workflow_run" if app.ci_gate.is_some() => return workflow_run(app, body),
        "action_run_success" | "action_run_failure" | "action_run_recover" if app.ci_gate.is_some() => {
            return action_run(app, body)
        }
        other => return Ok(Accepted::OtherEvent(model::clean_actor(other))),
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

#[derive(Deserialize)]
struct WorkflowRunEvent {
    action: Option<String>,
    workflow: Option<Workflow>,
    workflow_run: Option<WorkflowRun>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct Workflow {
    /// The file's name (`ci.yml`).
    id: Option<String>,
    name: Option<String>,
    path: Option<String>,
}

#[derive(Deserialize)]
struct WorkflowRun {
    head_sha: Option<String>,
    head_branch: Option<String>,
    conclusion: Option<String>,
}

/// Gitea's `workflow_run` (1.25+): a completed run of the gate's workflow on the app's branch.
fn workflow_run(app: &AppConfig, body: &[u8]) -> Result<Accepted, Rejected> {
    let ev: WorkflowRunEvent = parse(body)?;
    check_repository(app, full_name(ev.repository.as_ref()))?;
    let run = ev
        .workflow_run
        .ok_or_else(|| Rejected::Malformed("workflow_run event has no \"workflow_run\"".into()))?;
    let w = ev.workflow.unwrap_or(Workflow {
        id: None,
        name: None,
        path: None,
    });
    let files = [w.path.as_deref(), w.id.as_deref()];
    ci_verdict(
        app,
        CiRun {
            what: "workflow_run",
            done: ev.action.as_deref() == Some("completed"),
            name: w.name.as_deref().or(w.id.as_deref()).unwrap_or_default(),
            matches: workflow_matches(app.ci_gate.as_deref(), w.name.as_deref(), &files),
            branch: run.head_branch.as_deref(),
            sha: run.head_sha,
            conclusion: run.conclusion.as_deref().unwrap_or_default(),
        },
    )
}

#[derive(Deserialize)]
struct ActionRunEvent {
    run: Option<ActionRun>,
}

#[derive(Deserialize)]
struct ActionRun {
    /// The workflow's file (`ci.yml`): Forgejo sends no workflow name.
    workflow_id: Option<String>,
    commit_sha: Option<String>,
    /// The short branch (or tag) name; `#12` for a pull request's run.
    prettyref: Option<String>,
    status: Option<String>,
    repository: Option<Repository>,
}

/// Forgejo's `action_run_success` / `action_run_failure` / `action_run_recover` (12+): a finished run of the
/// gate's workflow file on the app's branch.
fn action_run(app: &AppConfig, body: &[u8]) -> Result<Accepted, Rejected> {
    let ev: ActionRunEvent = parse(body)?;
    let run = ev
        .run
        .ok_or_else(|| Rejected::Malformed("action_run event has no \"run\"".into()))?;
    check_repository(app, full_name(run.repository.as_ref()))?;
    let file = run.workflow_id.as_deref();
    ci_verdict(
        app,
        CiRun {
            what: "action run",
            done: true,
            name: file.unwrap_or_default(),
            matches: workflow_matches(app.ci_gate.as_deref(), None, &[file]),
            branch: run.prettyref.as_deref(),
            sha: run.commit_sha,
            conclusion: run.status.as_deref().unwrap_or_default(),
        },
    )
}

/// A CI run as the gate sees it.
struct CiRun<'a> {
    what: &'static str,
    done: bool,
    name: &'a str,
    matches: bool,
    branch: Option<&'a str>,
    sha: Option<String>,
    conclusion: &'a str,
}

/// What a finished run of the gate's workflow on the app's branch says of its commit; anything else changes
/// nothing (answered, not recorded).
fn ci_verdict(app: &AppConfig, run: CiRun<'_>) -> Result<Accepted, Rejected> {
    let other = |why: String| Ok(Accepted::OtherEvent(model::clean_actor(&why)));
    let wanted = app.ci_gate.as_deref().unwrap_or_default();
    if !run.done {
        return other(format!("{} not completed", run.what));
    }
    if !run.matches {
        return other(format!(
            "{} of {:?}, not the gate's {wanted:?}",
            run.what, run.name
        ));
    }
    if run.branch != Some(app.branch.as_str()) {
        return other(format!(
            "{} on {:?}, not {}",
            run.what,
            run.branch.unwrap_or_default(),
            app.branch
        ));
    }
    let sha = run
        .sha
        .filter(|s| model::is_full_sha(s))
        .map(|s| s.to_ascii_lowercase())
        .ok_or_else(|| {
            Rejected::Malformed(format!("{} has no valid commit sha (40 hex digits)", run.what))
        })?;
    let passed = match run.conclusion {
        "success" => true,
        "failure" | "cancelled" => false,
        // skipped, or a status Forgejo or Gitea adds later: no verdict on the commit.
        c => return other(format!("workflow {:?} {c}", run.name)),
    };
    Ok(Accepted::CiResult {
        passed,
        what: format!("workflow {:?} {}", run.name, run.conclusion),
        sha,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Provider;
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, sign_github, Accepted, Rejected};

    /// `gate = "ci"`: Gitea's `workflow_run` and Forgejo's `action_run_*` (tests/fixtures, built from each
    /// forge's payload structs): only a finished run of the gate's workflow on the app's branch is a verdict.
    #[test]
    fn a_finished_run_of_the_gate_s_workflow_is_a_ci_verdict() {
        let sha = "c".repeat(40);
        let gitea = include_str!("../../tests/fixtures/gitea/workflow_run.json");
        let forgejo = include_str!("../../tests/fixtures/forgejo/action_run_success.json");
        let edit = |example: &str, f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(example).expect("json");
            f(&mut v);
            v.to_string()
        };
        let run = |provider: Provider, workflow: &str, event: &str, body: String| {
            let app = app_with(&format!(
                "gate = \"ci\"\ngate_workflow = \"{workflow}\"\n[apps.blog.webhook]\nprovider = \"{}\"\nsecret_file = \"s\"",
                provider.as_str()
            ));
            let sig = sign_github(SECRET, body.as_bytes());
            let h = headers(&[
                ("x-gitea-signature", sig.trim_start_matches("sha256=")),
                ("x-gitea-event", event),
                ("x-gitea-delivery", "d-1"),
            ]);
            match evaluate(&app, provider, &[SECRET.to_vec()], &h, body.as_bytes(), 0) {
                Ok(Accepted::CiResult { sha, passed, what }) => format!("{} {passed} {what}", &sha[..4]),
                Ok(Accepted::OtherEvent(e)) => format!("other: {e}"),
                other => format!("{other:?}"),
            }
        };
        let g = |f: &dyn Fn(&mut serde_json::Value)| {
            edit(gitea, &|v| {
                v["workflow_run"]["head_sha"] = sha.clone().into();
                f(v)
            })
        };
        // Gitea: by the workflow's name, its file, or its path.
        for wanted in ["CI", "ci.yml", ".gitea/workflows/ci.yml"] {
            assert_eq!(
                run(Provider::Gitea, wanted, "workflow_run", g(&|_| {})),
                "cccc true workflow \"CI\" success"
            );
        }
        let failed = g(&|v| v["workflow_run"]["conclusion"] = "failure".into());
        assert_eq!(
            run(Provider::Gitea, "CI", "workflow_run", failed),
            "cccc false workflow \"CI\" failure"
        );
        for (body, says) in [
            (g(&|v| v["action"] = "in_progress".into()), "not completed"),
            (
                g(&|v| v["workflow_run"]["head_branch"] = "feature".into()),
                "not main",
            ),
            (
                g(&|v| v["workflow_run"]["conclusion"] = "skipped".into()),
                "skipped",
            ),
        ] {
            let got = run(Provider::Gitea, "CI", "workflow_run", body);
            assert!(got.starts_with("other") && got.contains(says), "{got}");
        }
        let lint = run(Provider::Gitea, "Lint", "workflow_run", g(&|_| {}));
        assert!(lint.contains("not the gate's"), "{lint}");
        // Forgejo: by the workflow's file; a failure is a verdict, a skipped run is not.
        let f = |status: &str, r: &str| {
            edit(forgejo, &|v| {
                v["run"]["commit_sha"] = sha.clone().into();
                v["run"]["status"] = status.into();
                v["run"]["prettyref"] = r.into();
            })
        };
        for wanted in ["ci.yml", ".forgejo/workflows/ci.yml"] {
            assert_eq!(
                run(
                    Provider::Forgejo,
                    wanted,
                    "action_run_success",
                    f("success", "main")
                ),
                "cccc true workflow \"ci.yml\" success"
            );
        }
        assert_eq!(
            run(
                Provider::Forgejo,
                "ci.yml",
                "action_run_failure",
                f("cancelled", "main")
            ),
            "cccc false workflow \"ci.yml\" cancelled"
        );
        for (body, says) in [
            (f("skipped", "main"), "skipped"),
            (f("success", "#12"), "not main"),
        ] {
            let got = run(Provider::Forgejo, "ci.yml", "action_run_failure", body);
            assert!(got.starts_with("other") && got.contains(says), "{got}");
        }
        let bad = edit(forgejo, &|v| v["run"]["commit_sha"] = "nope".into());
        assert!(run(Provider::Forgejo, "ci.yml", "action_run_success", bad).contains("Malformed"));
        // Without the gate, these are other events.
        let plain = app_with("[apps.blog.webhook]\nprovider = \"gitea\"\nsecret_file = \"s\"");
        let body = g(&|_| {});
        let sig = sign_github(SECRET, body.as_bytes());
        let h = headers(&[
            ("x-gitea-signature", sig.trim_start_matches("sha256=")),
            ("x-gitea-event", "workflow_run"),
            ("x-gitea-delivery", "d-2"),
        ]);
        assert!(matches!(
            evaluate(
                &plain,
                Provider::Gitea,
                &[SECRET.to_vec()],
                &h,
                body.as_bytes(),
                0
            ),
            Ok(Accepted::OtherEvent(_))
        ));
    }

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
