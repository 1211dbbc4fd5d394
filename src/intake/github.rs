//! GitHub: `push` events for git apps, and `package` / `registry_package` events (a container version
//! published to GHCR) for image apps. GitHub signs every delivery with `X-Hub-Signature-256` and always sends
//! a delivery id, so a delivery without either is refused.

use http::HeaderMap;
use serde::Deserialize;

use super::decide::{check_repository, decide, decide_image, Change};
use super::payload::{full_name, parse, required_ref, required_sha, Login, Named, Repository};
use super::verify::{check_sha256_prefixed, header, required_delivery};
use super::{Accepted, Rejected};
use crate::config::{AppConfig, Source};
use crate::model;

pub(super) fn evaluate(
    app: &AppConfig,
    secrets: &[Vec<u8>],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Accepted, Rejected> {
    let sig =
        header(headers, "x-hub-signature-256").ok_or(Rejected::MissingSignature("X-Hub-Signature-256"))?;
    check_sha256_prefixed(secrets, body, sig)?;
    events(app, headers, body)
}

/// A verified delivery: what its event asks for.
fn events(app: &AppConfig, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, Rejected> {
    let event = header(headers, "x-github-event")
        .ok_or_else(|| Rejected::Malformed("missing X-GitHub-Event header".into()))?;
    let delivery_id = Some(required_delivery(headers, &["x-github-delivery"])?);
    match event {
        "ping" => Ok(Accepted::Ping),
        "push" => push(app, delivery_id, body),
        "workflow_run" if app.ci_gate.is_some() => workflow_run(app, body),
        "package" | "registry_package" if matches!(app.source, Source::Image(_)) => {
            package(app, delivery_id, body)
        }
        other => Ok(Accepted::OtherEvent(model::clean_actor(other))),
    }
}

#[derive(Deserialize)]
struct GithubPush {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    before: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
    pusher: Option<Named>,
    sender: Option<Login>,
    repository: Option<Repository>,
}

fn push(app: &AppConfig, delivery_id: Option<String>, body: &[u8]) -> Result<Accepted, Rejected> {
    let push: GithubPush = parse(body)?;
    check_repository(app, full_name(push.repository.as_ref()))?;
    let actor = push
        .pusher
        .and_then(|p| p.name)
        .or_else(|| push.sender.and_then(|s| s.login))
        .unwrap_or_default();
    let change = Change {
        git_ref: required_ref(push.git_ref)?,
        sha: Some(required_sha(push.after)?),
        parent: push.before,
        deleted: push.deleted,
    };
    decide(app, "github", delivery_id, vec![change], &actor)
}

#[derive(Deserialize)]
struct WorkflowRunEvent {
    action: Option<String>,
    workflow_run: Option<WorkflowRun>,
    workflow: Option<Named>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct WorkflowRun {
    name: Option<String>,
    /// `.github/workflows/ci.yml`.
    path: Option<String>,
    head_branch: Option<String>,
    head_sha: Option<String>,
    conclusion: Option<String>,
}

/// `gate = "ci"`: a completed run of the gate's workflow on the app's branch says whether `head_sha` passed.
/// Other runs (another workflow, another branch, not completed yet) change nothing.
fn workflow_run(app: &AppConfig, body: &[u8]) -> Result<Accepted, Rejected> {
    let ev: WorkflowRunEvent = parse(body)?;
    check_repository(app, full_name(ev.repository.as_ref()))?;
    let run = ev
        .workflow_run
        .ok_or_else(|| Rejected::Malformed("workflow_run event has no \"workflow_run\"".into()))?;
    let name = run
        .name
        .filter(|n| !n.is_empty())
        .or_else(|| ev.workflow.and_then(|w| w.name))
        .unwrap_or_default();
    let wanted = app.ci_gate.as_deref().unwrap_or_default();
    let other = |why: String| Ok(Accepted::OtherEvent(model::clean_actor(&why)));
    if ev.action.as_deref() != Some("completed") {
        return other(format!(
            "workflow_run {}",
            ev.action.as_deref().unwrap_or("event")
        ));
    }
    if !super::payload::workflow_matches(Some(wanted), Some(&name), &[run.path.as_deref()]) {
        return other(format!("workflow_run of {name:?}, not the gate's {wanted:?}"));
    }
    if run.head_branch.as_deref() != Some(app.branch.as_str()) {
        return other(format!(
            "workflow_run on {:?}, not {}",
            run.head_branch.unwrap_or_default(),
            app.branch
        ));
    }
    let sha = run
        .head_sha
        .filter(|s| model::is_full_sha(s))
        .map(|s| s.to_ascii_lowercase())
        .ok_or_else(|| Rejected::Malformed("workflow_run has no valid head_sha (40 hex digits)".into()))?;
    let conclusion = run.conclusion.unwrap_or_default();
    let passed = match conclusion.as_str() {
        "success" => true,
        "failure" | "cancelled" | "timed_out" | "startup_failure" | "action_required" => false,
        // neutral, skipped, stale: no verdict on the commit.
        other_conclusion => return other(format!("workflow {name:?} {other_conclusion}")),
    };
    Ok(Accepted::CiResult {
        passed,
        what: format!("workflow {name:?} {conclusion}"),
        sha,
    })
}

/// GitHub's `package` / `registry_package` event: a container version published to GHCR.
#[derive(Deserialize)]
struct GithubPackageEvent {
    action: Option<String>,
    package: Option<GithubPackage>,
    registry_package: Option<GithubPackage>,
    sender: Option<Login>,
    repository: Option<Repository>,
}

#[derive(Deserialize)]
struct GithubPackage {
    name: Option<String>,
    package_version: Option<GithubPackageVersion>,
}

#[derive(Deserialize)]
struct GithubPackageVersion {
    version: Option<String>,
    name: Option<String>,
    container_metadata: Option<GithubContainer>,
}

#[derive(Deserialize)]
struct GithubContainer {
    tag: Option<GithubTag>,
}

#[derive(Deserialize)]
struct GithubTag {
    name: Option<String>,
    digest: Option<String>,
}

fn package(app: &AppConfig, delivery_id: Option<String>, body: &[u8]) -> Result<Accepted, Rejected> {
    let ev: GithubPackageEvent = parse(body)?;
    if !matches!(ev.action.as_deref(), Some("published" | "updated")) {
        return Ok(Accepted::OtherEvent(format!(
            "package {}",
            model::clean_actor(ev.action.as_deref().unwrap_or("event"))
        )));
    }
    let Some(pkg) = ev.package.or(ev.registry_package) else {
        return Err(Rejected::Malformed("package event has no \"package\"".into()));
    };
    let Source::Image(img) = &app.source else {
        return Ok(Accepted::OtherEvent("package".into()));
    };
    // Another package of the same owner: not this app's business.
    let ours = img.repository.rsplit('/').next().unwrap_or("");
    if !pkg.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(ours)) {
        return Ok(Accepted::OtherEvent(format!(
            "package {}",
            model::clean_actor(pkg.name.as_deref().unwrap_or("?"))
        )));
    }
    let (listed, tag) = match pkg.package_version {
        Some(v) => (v.version.or(v.name), v.container_metadata.and_then(|c| c.tag)),
        None => (None, None),
    };
    let (tag_name, tag_digest) = tag.map_or((None, None), |t| (t.name, t.digest));
    // GitHub names a container version by its digest; the tag's own digest is the fallback.
    let digest = listed
        .filter(|d| model::is_sha256_digest(d))
        .or_else(|| tag_digest.filter(|d| model::is_sha256_digest(d)));
    // An untagged version (a platform's manifest of a multi-arch push, say) is not any tag's new version.
    let Some(tag) = tag_name.filter(|t| !t.is_empty()) else {
        return Ok(Accepted::OtherEvent("untagged package version".into()));
    };
    check_repository(app, full_name(ev.repository.as_ref()))?;
    let actor = ev.sender.and_then(|s| s.login).unwrap_or_default();
    decide_image(app, "github", delivery_id, Some(tag), digest, &actor)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use crate::config::Provider;
    use crate::intake::test_support::*;
    use crate::intake::{evaluate, sign_github, Accepted, Rejected};

    #[test]
    fn github_table() {
        let app = app_with("");
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
            let mut h = headers(&hs.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>());
            h.entry("x-github-delivery")
                .or_insert(HeaderValue::from_static("d-1"));
            let got = evaluate(&app, Provider::Github, &secrets, &h, body.as_bytes(), 0).map(|a| match a {
                Accepted::Deploy(_) => "deploy",
                Accepted::Ignore(..) => "ignore",
                Accepted::Ping => "ping",
                Accepted::OtherEvent(_) => "other",
                Accepted::CiResult { .. } => "ci",
            });
            assert_eq!(got, want, "{name}");
        }
    }

    /// GitHub's own `workflow_run` example (tests/fixtures), for a `gate = "ci"` app: only a completed run
    /// of the gate's workflow on the app's branch is a verdict on its `head_sha`.
    #[test]
    fn a_completed_run_of_the_gate_s_workflow_is_a_ci_verdict() {
        let gated = app_with("gate = \"ci\"\ngate_workflow = \"CI\"\n[apps.blog.webhook]\nprovider = \"github\"\nsecret_file = \"s\"");
        let plain = app_with("");
        let example = include_str!("../../tests/fixtures/github/workflow_run-completed.json");
        let sha = "b".repeat(40);
        let body = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(example).expect("json");
            v["workflow_run"]["name"] = "CI".into();
            v["workflow_run"]["head_branch"] = "main".into();
            v["workflow_run"]["head_sha"] = sha.clone().into();
            edit(&mut v);
            v.to_string()
        };
        let run = |app: &crate::config::AppConfig, b: String| {
            let h = headers(&[
                ("x-hub-signature-256", &sign_github(SECRET, b.as_bytes())),
                ("x-github-event", "workflow_run"),
                ("x-github-delivery", "d-1"),
            ]);
            evaluate(app, Provider::Github, &[SECRET.to_vec()], &h, b.as_bytes(), 0)
        };
        let verdict = |r: Result<Accepted, Rejected>| match r {
            Ok(Accepted::CiResult { sha, passed, what }) => format!("{} {passed} {what}", &sha[..4]),
            Ok(Accepted::OtherEvent(e)) => format!("other: {e}"),
            other => format!("{other:?}"),
        };
        assert_eq!(
            verdict(run(&gated, body(&|_| {}))),
            "bbbb true workflow \"CI\" success"
        );
        let failed = body(&|v| v["workflow_run"]["conclusion"] = "failure".into());
        assert_eq!(verdict(run(&gated, failed)), "bbbb false workflow \"CI\" failure");
        // gate_workflow may name the workflow's file path instead of its name.
        for file in [".github/workflows/test.yml", "test.yml"] {
            let by_path = app_with(&format!("gate = \"ci\"\ngate_workflow = \"{file}\"\n[apps.blog.webhook]\nprovider = \"github\"\nsecret_file = \"s\""));
            assert_eq!(
                verdict(run(&by_path, body(&|_| {}))),
                "bbbb true workflow \"CI\" success",
                "{file}"
            );
        }
        for (edit, says) in [
            (
                &(|v: &mut serde_json::Value| v["workflow_run"]["name"] = "Lint".into())
                    as &dyn Fn(&mut serde_json::Value),
                "not the gate's",
            ),
            (
                &|v: &mut serde_json::Value| v["workflow_run"]["head_branch"] = "feature".into(),
                "not main",
            ),
            (
                &|v: &mut serde_json::Value| v["action"] = "requested".into(),
                "workflow_run requested",
            ),
            (
                &|v: &mut serde_json::Value| v["workflow_run"]["conclusion"] = "skipped".into(),
                "skipped",
            ),
        ] {
            let got = verdict(run(&gated, body(edit)));
            assert!(got.starts_with("other") && got.contains(says), "{got}");
        }
        let bad = body(&|v| v["workflow_run"]["head_sha"] = "not-a-sha".into());
        let got = run(&gated, bad);
        assert!(matches!(got, Err(Rejected::Malformed(_))), "{got:?}");
        // An app without the gate takes a workflow_run as any other event.
        assert!(verdict(run(&plain, body(&|_| {}))).starts_with("other"));
    }

    /// GitHub's own `package` example (tests/fixtures), with the test's package name, tag and digest.
    #[test]
    fn github_package_events() {
        let now = 1_800_000_000;
        let app = crate::config::Config::parse(
            std::path::Path::new("/x/haul.toml"),
            "state_dir = \"/s\"\n[apps.api]\nimage = \"ghcr.io/codertocat/hello-world-npm\"\ntag = \"main\"\npath = \"/p\"\n",
        )
        .expect("config")
        .apps
        .remove("api")
        .expect("api");
        let fixture = include_str!("../../tests/fixtures/github/package-published.json");
        let digest = format!("sha256:{}", "d".repeat(64));
        let mut v: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
        v["package"]["package_version"]["version"] = digest.clone().into();
        v["package"]["package_version"]["container_metadata"]["tag"]["name"] = "main".into();
        let body = v.to_string();
        let h = signed(Provider::Github, "package", &body, now);
        match evaluate(
            &app,
            Provider::Github,
            &[SECRET.to_vec()],
            &h,
            body.as_bytes(),
            now,
        ) {
            Ok(Accepted::Deploy(r)) => {
                assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
                assert_eq!(r.git_ref.as_deref(), Some("refs/tags/main"));
                assert_eq!(r.actor, "Codertocat");
            }
            other => panic!("package event gave {other:?}"),
        }
        // GitHub's example as published: an untagged version of this app's package cannot be placed.
        let h = signed(Provider::Github, "package", fixture, now);
        let raw = evaluate(
            &app,
            Provider::Github,
            &[SECRET.to_vec()],
            &h,
            fixture.as_bytes(),
            now,
        );
        assert!(matches!(raw, Ok(Accepted::OtherEvent(_))), "{raw:?}");
        // Another package: not this app's; a tampered body: refused.
        v["package"]["name"] = "other".into();
        let other = v.to_string();
        let h = signed(Provider::Github, "package", &other, now);
        assert!(matches!(
            evaluate(
                &app,
                Provider::Github,
                &[SECRET.to_vec()],
                &h,
                other.as_bytes(),
                now
            ),
            Ok(Accepted::OtherEvent(_))
        ));
        assert_eq!(
            evaluate(
                &app,
                Provider::Github,
                &[SECRET.to_vec()],
                &h,
                body.as_bytes(),
                now
            ),
            Err(Rejected::BadSignature)
        );
    }
}
