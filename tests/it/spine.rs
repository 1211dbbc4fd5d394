//! The spine end to end: a signed GitHub push over real HTTP, fetched over real SSH with a read-only deploy
//! key, built, switched atomically, and recorded.

use std::path::Path;
use std::process::Command;

use haul::model::{State, Trigger};

use crate::support::*;

const BUILD: &str =
    "build = [\"sh build.sh\"]\nactivate = [\"echo activated $HAUL_RELEASE_DIR >> ../../activations.log\"]";

fn build_script(body: &str) -> String {
    format!("set -eu\n{body}\n")
}

#[test]
fn signed_push_deploys_over_ssh_and_is_audited() {
    let t = TempDir::new("e2e");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(
        &[
            ("index.html", "v1"),
            (
                "build.sh",
                &build_script("echo \"built $HAUL_SHA by $HAUL_ACTOR\" > out.txt"),
            ),
        ],
        "first",
    );
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();

    let delivery1 = delivery();
    let (status, reply) = h.push("refs/heads/main", &sha1, &delivery1);
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "queued");
    let id1 = reply["deploy_id"].as_str().expect("deploy id").to_string();
    let row = h.wait_final(&id1);
    assert_eq!(
        row.state,
        State::Succeeded,
        "{:?}\n{}",
        row.reason,
        h.daemon_log()
    );
    assert_eq!(row.sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(row.actor, "Codertocat", "the pusher from GitHub's payload");
    assert_eq!(row.trigger, Trigger::Webhook);
    assert_eq!(row.delivery_id.as_deref(), Some(delivery1.as_str()));
    assert_eq!(row.provider.as_deref(), Some("github"));
    assert!(row.started_at.is_some() && row.finished_at.is_some());
    let live = h.current().expect("current points at a release");
    assert_eq!(row.release_id.as_deref(), Some(live.as_str()));
    assert!(
        live.ends_with(&sha1[..7]),
        "release id carries the short sha: {live}"
    );
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/out.txt")).expect("build output"),
        format!("built {sha1} by Codertocat\n")
    );
    assert_eq!(git.fetches(), 1);

    // An incremental deploy of the next commit records the previous one.
    let sha2 = git.commit(&[("index.html", "v2")], "second");
    let (status, reply) = h.push("refs/heads/main", &sha2, &delivery());
    assert_eq!(status, 202);
    let id2 = reply["deploy_id"].as_str().expect("id").to_string();
    let row2 = h.wait_final(&id2);
    assert_eq!(row2.state, State::Succeeded, "{:?}", row2.reason);
    assert_eq!(row2.previous_sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/index.html")).expect("index"),
        "v2"
    );
    assert_eq!(git.fetches(), 2);
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("activations.log"))
            .expect("activate ran")
            .lines()
            .count(),
        2
    );

    // One thread of evidence: the id names the log file, and every daemon log line of the deploy.
    let log = h.cli(&["logs", &id2]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains("==> fetch") && log.contains("==> switch") && log.contains("==> activate step 1/1"),
        "{log}"
    );
    // The page says `[source]` where the repository is; `haul logs` keeps it.
    assert!(log.contains(&format!("==> fetch {} (", git.url)), "{log}");
    let daemon_log = h.daemon_log();
    let deploy_lines: Vec<&str> = daemon_log
        .lines()
        .filter(|l| l.contains("deploy started") || l.contains("deploy succeeded"))
        .collect();
    assert!(deploy_lines.len() >= 4, "{daemon_log}");
    assert!(
        deploy_lines
            .iter()
            .all(|l| l.contains(&format!("id={id1}")) || l.contains(&format!("id={id2}"))),
        "{deploy_lines:#?}"
    );

    let log_json = h.cli(&["logs", &id2, "--json"]);
    let log_json: serde_json::Value = serde_json::from_slice(&log_json.stdout).expect("logs json");
    assert_eq!(log_json["deploy"]["outcome"], "succeeded");
    assert!(log_json["log"].as_array().is_some_and(|l| l.len() > 5));

    // The read commands, for people and for scripts.
    let status = h.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(status[0]["app"], "blog");
    assert_eq!(status[0]["live_sha"], sha2.as_str());
    assert_eq!(status[0]["last_outcome"], "succeeded");
    let history = h.cli(&["history", "blog", "--json", "--limit", "1"]);
    let history: serde_json::Value = serde_json::from_slice(&history.stdout).expect("history json");
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    assert_eq!(history[0]["deploy_id"], id2.as_str());
    let table = h.cli(&["history"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.starts_with("DEPLOY") && table.contains("Codertocat") && !table.contains("\x1b["),
        "plain when piped: {table}"
    );

    // SIGTERM is a clean stop.
    assert!(h.stop().success());
}

/// Every bad input gets its answer and changes nothing: no fetch, nothing queued, `current` untouched.
#[test]
fn bad_webhooks_are_refused_and_change_nothing() {
    let t = TempDir::new("bad");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("index.html", "v1"), ("build.sh", "true")], "first");
    let feature = git.commit_on("feature", &[("f.txt", "x")], "feature work");
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();
    let (_, reply) = h.push("refs/heads/main", &sha1, &delivery());
    let first = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(first.state, State::Succeeded);
    let live = h.current();
    let rows_before = h.rows().len();

    let good = github_push("refs/heads/main", &sha1);
    let good_again = github_push("refs/heads/main", &sha1);
    let replayed = delivery();
    let (st, _) = h.deliver(&good, &replayed);
    assert_eq!(st, 202);
    let _ = h.wait_final(h.rows()[0].id.as_str());
    let fetches_before = git.fetches();
    let rows_before = rows_before + 1;

    let mut tag = serde_json::from_str::<serde_json::Value>(&fixture("github/push-tag.json")).expect("json");
    tag["after"] = sha1.clone().into();
    let tag = tag.to_string();
    let delete_tag = fixture("github/push-delete.json");
    let mut delete_main =
        serde_json::from_str::<serde_json::Value>(&fixture("github/push-delete.json")).expect("json");
    delete_main["ref"] = "refs/heads/main".into();
    let delete_main = delete_main.to_string();
    let other_branch = github_push("refs/heads/feature", &feature);
    let ping = fixture("github/ping.json");
    let oversized = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let bad_ref = github_push("refs/heads/-rf", &sha1);
    let short_sha = github_push("refs/heads/main", &sha1[..7]);
    let sig = |b: &str| haul::intake::sign_github(SECRET.as_bytes(), b.as_bytes());
    let wrong_sig = haul::intake::sign_github(b"not the secret at all, sorry", good.as_bytes());

    struct Case<'a> {
        name: &'a str,
        path: &'a str,
        headers: Vec<(&'a str, String)>,
        body: &'a str,
        status: u16,
        reply: &'a str,
        recorded: bool,
    }
    let push_headers = |b: &str| signed_headers("push", &delivery(), b);
    let cases = vec![
        Case {
            name: "wrong signature",
            path: "/hooks/blog",
            headers: vec![
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", wrong_sig),
            ],
            body: &good,
            status: 401,
            reply: "signature does not match",
            recorded: false,
        },
        Case {
            name: "missing signature",
            path: "/hooks/blog",
            headers: vec![("X-GitHub-Event", "push".into())],
            body: &good,
            status: 401,
            reply: "missing signature",
            recorded: false,
        },
        Case {
            name: "tampered body",
            path: "/hooks/blog",
            headers: vec![
                ("X-GitHub-Event", "push".into()),
                ("X-Hub-Signature-256", sig(&good)),
            ],
            body: &other_branch,
            status: 401,
            reply: "signature",
            recorded: false,
        },
        Case {
            name: "unknown app",
            path: "/hooks/nope",
            headers: push_headers(&good),
            body: &good,
            status: 404,
            reply: "no app",
            recorded: false,
        },
        Case {
            name: "oversized body",
            path: "/hooks/blog",
            headers: push_headers(&oversized),
            body: &oversized,
            status: 413,
            reply: "larger than",
            recorded: false,
        },
        Case {
            name: "malformed JSON",
            path: "/hooks/blog",
            headers: push_headers("{not json"),
            body: "{not json",
            status: 400,
            reply: "not valid JSON",
            recorded: false,
        },
        Case {
            name: "invalid ref",
            path: "/hooks/blog",
            headers: push_headers(&bad_ref),
            body: &bad_ref,
            status: 400,
            reply: "not a valid git ref",
            recorded: false,
        },
        Case {
            name: "short sha",
            path: "/hooks/blog",
            headers: push_headers(&short_sha),
            body: &short_sha,
            status: 400,
            reply: "not a full commit sha",
            recorded: false,
        },
        Case {
            name: "unknown branch",
            path: "/hooks/blog",
            headers: push_headers(&other_branch),
            body: &other_branch,
            status: 202,
            reply: "ignored",
            recorded: true,
        },
        Case {
            name: "tag",
            path: "/hooks/blog",
            headers: push_headers(&tag),
            body: &tag,
            status: 202,
            reply: "ignored",
            recorded: true,
        },
        Case {
            name: "tag deletion",
            path: "/hooks/blog",
            headers: push_headers(&delete_tag),
            body: &delete_tag,
            status: 202,
            reply: "ignored",
            recorded: true,
        },
        Case {
            name: "branch deletion",
            path: "/hooks/blog",
            headers: push_headers(&delete_main),
            body: &delete_main,
            status: 202,
            reply: "ignored",
            recorded: true,
        },
        Case {
            name: "ping",
            path: "/hooks/blog",
            headers: signed_headers("ping", &delivery(), &ping),
            body: &ping,
            status: 200,
            reply: "pong",
            recorded: false,
        },
        Case {
            name: "other event",
            path: "/hooks/blog",
            headers: signed_headers("issues", &delivery(), &good),
            body: &good,
            status: 202,
            reply: "ignored",
            recorded: false,
        },
        Case {
            name: "replayed delivery",
            path: "/hooks/blog",
            headers: signed_headers("push", &replayed, &good),
            body: &good,
            status: 200,
            reply: "duplicate",
            recorded: false,
        },
        // GitHub signs the body, not the delivery id: a delivery is known by what is signed. The same id with
        // another validly signed body (only the secret's holder can make one) is a new delivery, and here it
        // is for the live sha.
        Case {
            name: "the same delivery id with another signed body",
            path: "/hooks/blog",
            headers: signed_headers("push", &replayed, &good_again),
            body: &good_again,
            status: 202,
            reply: "already live",
            recorded: true,
        },
    ];
    let mut recorded = 0;
    for c in &cases {
        let (status, reply) = http_post(&h.addr(), c.path, &c.headers, c.body.as_bytes());
        assert_eq!(status, c.status, "{}: {reply}", c.name);
        assert!(reply.to_string().contains(c.reply), "{}: {reply}", c.name);
        if c.recorded {
            recorded += 1;
            let row = h.row(reply["deploy_id"].as_str().expect("ignored requests are audited"));
            assert_eq!(row.state, State::Ignored, "{}", c.name);
            assert!(row.reason.is_some(), "{}", c.name);
        }
    }
    // Nothing was queued, nothing ran.
    let rows = h.rows();
    assert_eq!(rows.len(), rows_before + recorded);
    assert!(
        rows.iter().all(|r| r.state.is_final()),
        "nothing queued or running"
    );
    // A valid push now is the only thing that fetches: everything before it fetched nothing.
    let sha2 = git.commit(&[("index.html", "v2")], "second");
    let (_, reply) = h.push("refs/heads/main", &sha2, &delivery());
    assert_eq!(
        h.wait_final(reply["deploy_id"].as_str().expect("id")).state,
        State::Succeeded
    );
    assert_eq!(
        git.fetches(),
        fetches_before + 1,
        "none of the refused or ignored webhooks fetched"
    );
    assert_ne!(h.current(), live);
}

#[test]
fn a_sha_not_on_the_branch_is_never_deployed() {
    let t = TempDir::new("offbranch");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("build.sh", "true")], "first");
    let feature = git.commit_on("feature", &[("evil.txt", "x")], "not reviewed");
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();
    let (_, reply) = h.push("refs/heads/main", &sha1, &delivery());
    assert_eq!(
        h.wait_final(reply["deploy_id"].as_str().expect("id")).state,
        State::Succeeded
    );
    let live = h.current();

    // A signed payload claiming main moved to a commit that is not on main.
    let (status, reply) = h.push("refs/heads/main", &feature, &delivery());
    assert_eq!(status, 202);
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::Failed);
    assert!(
        row.reason.as_deref().unwrap_or("").contains(&feature[..7]),
        "{:?}",
        row.reason
    );
    assert_eq!(h.current(), live);
    assert_eq!(h.releases().len(), 1, "no release directory was made");

    // The same through `haul deploy --sha`, with the feature commit now in the mirror's reach or not.
    let out = h.cli(&["deploy", "blog", "--sha", &feature[..10]]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed"));
    assert_eq!(h.current(), live);
}

#[test]
fn a_changed_host_key_fails_the_fetch_once_and_never_retries() {
    let t = TempDir::new("hostkey");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("build.sh", "true")], "first");
    // Pin a different key for the server: as if someone sat in the middle.
    let other = t.path().join("other_host_key");
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other));
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("pub");
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(
        &git.known_hosts,
        format!("[127.0.0.1]:{} {}\n", git.port, other_pub.join(" ")),
    )
    .expect("known_hosts");
    let mut h = Haul::configure(t.path(), &git, "build = [\"sh build.sh\"]\nfetch_attempts = 5");
    h.start();
    let (status, reply) = h.push("refs/heads/main", &sha1, &delivery());
    assert_eq!(status, 202);
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("permanent") && reason.contains("host key"),
        "{reason}"
    );
    assert_eq!(git.fetches(), 0);
    // The readiness probe also connects, but never reaches key exchange; an ssh client that gives up during
    // key exchange or authentication is logged as closed "[preauth]".
    let connections = git
        .sshd_log()
        .lines()
        .filter(|l| l.contains("Connection closed by 127.0.0.1") && l.contains("[preauth]"))
        .count();
    assert_eq!(
        connections,
        1,
        "exactly one attempt, even with fetch_attempts = 5:\n{}",
        git.sshd_log()
    );
    assert_eq!(h.current(), None);
}

#[test]
fn pushes_during_a_slow_build_coalesce_to_the_newest() {
    let t = TempDir::new("coalesce");
    let git = GitServer::start(t.path());
    let gate = t.path().join("gate");
    let started = t.path().join("started");
    // The build of every commit waits for the test to open the gate: "slow" without a clock.
    let script = build_script(&format!(
        "touch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.05; done",
        started.display(),
        gate.display()
    ));
    let a = git.commit(&[("build.sh", &script), ("v", "a")], "a");
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();
    let (_, reply) = h.push("refs/heads/main", &a, &delivery());
    let id_a = reply["deploy_id"].as_str().expect("id").to_string();
    h.wait_state(&id_a, State::Running);
    while !started.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut later = Vec::new();
    for v in ["b", "c", "d"] {
        let sha = git.commit(&[("v", v)], v);
        let (status, reply) = h.push("refs/heads/main", &sha, &delivery());
        assert_eq!(status, 202);
        later.push((sha, reply["deploy_id"].as_str().expect("id").to_string()));
    }
    std::fs::write(&gate, "").expect("open the gate");
    let row_a = h.wait_final(&id_a);
    let (sha_d, id_d) = later.last().cloned().expect("d");
    let row_d = h.wait_final(&id_d);
    assert_eq!(row_a.state, State::Succeeded);
    assert_eq!(row_d.state, State::Succeeded);
    for (_, id) in &later[..2] {
        let r = h.row(id);
        assert_eq!(r.state, State::Superseded);
        assert!(r.superseded_by.is_some());
        assert!(r.started_at.is_none(), "a superseded request never ran");
    }
    assert_eq!(
        h.row(&later[1].1).superseded_by.map(|i| i.to_string()),
        Some(id_d.clone())
    );
    assert_eq!(
        h.rows().iter().filter(|r| r.started_at.is_some()).count(),
        2,
        "exactly one more deploy ran"
    );
    assert_eq!(git.fetches(), 2);
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "d"
    );
    assert_eq!(row_d.sha.as_deref(), Some(sha_d.as_str()));
}

#[test]
fn sigkill_during_a_build_leaves_the_previous_release_live_and_the_deploy_interrupted() {
    let t = TempDir::new("sigkill");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("build.sh", "true"), ("v", "1")], "good");
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();
    let (_, reply) = h.push("refs/heads/main", &sha1, &delivery());
    assert_eq!(
        h.wait_final(reply["deploy_id"].as_str().expect("id")).state,
        State::Succeeded
    );
    let live = h.current().expect("live");

    let pidfile = t.path().join("build.pid");
    let script = build_script(&format!("echo $$ > '{}'\nexec sleep 600", pidfile.display()));
    let sha2 = git.commit(&[("build.sh", &script), ("v", "2")], "slow");
    let (_, reply) = h.push("refs/heads/main", &sha2, &delivery());
    let id2 = reply["deploy_id"].as_str().expect("id").to_string();
    while !pidfile.exists()
        || std::fs::read_to_string(&pidfile)
            .unwrap_or_default()
            .trim()
            .is_empty()
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let half_built = h
        .row(&id2)
        .release_id
        .expect("the release being built is recorded before it is written");
    assert!(h.app_path.join("releases").join(&half_built).exists());
    h.kill();
    // The build's process group outlives a SIGKILLed daemon; end it as an operator would.
    let pgid: i32 = std::fs::read_to_string(&pidfile)
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: signalling a process group this test created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }

    assert_eq!(h.current(), Some(live.clone()), "current never moved");
    h.start();
    let row = h.wait_state(&id2, State::Interrupted);
    assert!(
        row.reason.as_deref().unwrap_or("").contains("stopped"),
        "{:?}",
        row.reason
    );
    assert_eq!(h.current(), Some(live.clone()));
    assert!(
        !h.app_path.join("releases").join(&half_built).exists(),
        "the half-built release was cleaned up"
    );
    assert!(h.app_path.join("current/v").exists());

    // And the daemon carries on.
    let sha3 = git.commit(&[("build.sh", "true"), ("v", "3")], "fixed");
    let (_, reply) = h.push("refs/heads/main", &sha3, &delivery());
    assert_eq!(
        h.wait_final(reply["deploy_id"].as_str().expect("id")).state,
        State::Succeeded
    );
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "3"
    );
}

#[test]
fn failed_build_leaves_current_and_failed_activate_rolls_back() {
    let t = TempDir::new("failures");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(
        &[("build.sh", "true"), ("activate.sh", "true"), ("v", "1")],
        "good",
    );
    let mut h = Haul::configure(
        t.path(),
        &git,
        "build = [\"sh build.sh\"]\nactivate = [\"sh activate.sh\"]",
    );
    h.start();
    let (_, reply) = h.push("refs/heads/main", &sha1, &delivery());
    assert_eq!(
        h.wait_final(reply["deploy_id"].as_str().expect("id")).state,
        State::Succeeded
    );
    let live = h.current();

    let sha2 = git.commit(
        &[("build.sh", "echo 'npm ERR! missing script: build' >&2; exit 7")],
        "broken build",
    );
    let (_, reply) = h.push("refs/heads/main", &sha2, &delivery());
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("build step 1/1") && reason.contains("status 7") && reason.contains("missing script"),
        "{reason}"
    );
    assert_eq!(h.current(), live);

    let sha3 = git.commit(
        &[
            ("build.sh", "true"),
            ("activate.sh", "[ \"${HAUL_ROLLBACK:-}\" = 1 ] || exit 3"),
            ("v", "3"),
        ],
        "broken activate",
    );
    let (_, reply) = h.push("refs/heads/main", &sha3, &delivery());
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::RolledBack, "{:?}", row.reason);
    assert!(
        row.reason.as_deref().unwrap_or("").contains("rolled back to"),
        "{:?}",
        row.reason
    );
    assert_eq!(h.current(), live, "the previous release is live again");
    assert!(
        Path::new(&h.app_path.join("releases").join(row.release_id.expect("rid"))).exists(),
        "kept for inspection"
    );
}

#[test]
fn manual_deploy_goes_through_the_daemon_or_runs_in_process() {
    let t = TempDir::new("manual");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("build.sh", "echo building $HAUL_TRIGGER"), ("v", "1")], "one");
    let sha2 = git.commit(&[("v", "2")], "two");
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();

    let out = h.cli(&["deploy", "blog"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("queued")
            && stderr.contains("==> fetch")
            && stderr.contains("building manual")
            && stderr.contains("deployed blog"),
        "{stderr}"
    );
    let row = &h.rows()[0];
    assert_eq!((row.trigger, row.state), (Trigger::Manual, State::Succeeded));
    assert_eq!(
        row.sha.as_deref(),
        Some(sha2.as_str()),
        "no --sha: the branch tip"
    );
    assert_eq!(
        row.actor,
        haul::server::control::user_name(unsafe { libc::getuid() })
    );

    let out = h.cli(&["deploy", "blog", "--sha", &sha1[..8]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.rows()[0].sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "1"
    );

    // No daemon: the same pipeline in this process, under the same lock.
    h.kill();
    let out = h.cli(&["deploy", "blog"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no daemon is running"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "2"
    );

    for (args, code) in [
        (&["deploy", "nope"][..], 2),
        (&["deploy", "blog", "--sha", "xyz"][..], 2),
        (&["logs", "../etc/passwd"][..], 2),
    ] {
        let out = h.cli(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_validates_keys_and_secrets() {
    let t = TempDir::new("check");
    let git = GitServer::start(t.path());
    let h = Haul::configure(t.path(), &git, "");
    let out = h.cli(&["check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        h.dir.join("webhook.secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let out = h.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("chmod 600"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The daemon refuses to start with it, too.
    let out = h.cli(&["serve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by other users"));
}

/// The README's first command: the self-contained demo deploys through the real daemon.
#[test]
fn the_demo_lands_a_release() {
    let out = Command::new(env!("CARGO_BIN_EXE_haul"))
        .args(["demo", "--once"])
        .output()
        .expect("run the demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("outcome succeeded") && stderr.contains("BUILD.txt in the live release says: built"),
        "{stderr}"
    );
    // It says where it lives; clean that up.
    if let Some(dir) = stderr
        .lines()
        .find_map(|l| l.split("everything lives in ").nth(1))
    {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
}

/// Regression: a trigger for the live sha was recorded `ignored` at intake while another deploy was running,
/// so a real rewind (the branch force-pushed back to the live commit during a deploy) was lost and the newer
/// release stayed live. While anything is queued or running, every trigger goes through the queue.
#[test]
fn regression_a_rewind_to_the_live_sha_during_a_deploy_is_not_ignored_at_intake() {
    let t = TempDir::new("rewind-busy");
    let git = GitServer::start(t.path());
    let gate = t.path().join("gate");
    let started = t.path().join("started");
    let script = build_script(&format!(
        "if [ \"$(cat v)\" = b ]; then touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; fi",
        started.display(),
        gate.display()
    ));
    let a = git.commit(&[("build.sh", &script), ("v", "a")], "a");
    let mut h = Haul::configure(t.path(), &git, BUILD);
    h.start();
    assert_eq!(push_and_wait(&h, &a).state, State::Succeeded);
    // A redelivery of the live sha once the app is idle (the worker has looked at its queue once more after
    // the deploy): recorded ignored at intake.
    wait_until("a redelivery is ignored at intake", || {
        h.push("refs/heads/main", &a, &delivery()).1["status"] == "ignored"
    });
    // b starts building; meanwhile main is force-pushed back to a.
    let b = git.commit(&[("v", "b")], "b");
    let (_, reply) = h.push("refs/heads/main", &b, &delivery());
    let id_b = reply["deploy_id"].as_str().expect("id").to_string();
    wait_until("b's build started", || started.exists());
    sh(Command::new("git").arg("-C").arg(&git.work).args([
        "push",
        "--quiet",
        "--force",
        "origin",
        &format!("{a}:refs/heads/main"),
    ]));
    let (status, reply) = h.push("refs/heads/main", &a, &delivery());
    assert_eq!(
        (status, reply["status"].as_str()),
        (202, Some("queued")),
        "{reply}"
    );
    let id_rewind = reply["deploy_id"].as_str().expect("id").to_string();
    std::fs::write(&gate, "").expect("open the gate");
    assert_eq!(h.wait_final(&id_b).state, State::Succeeded);
    let row = h.wait_final(&id_rewind);
    assert_eq!(row.state, State::Succeeded, "{row:?}");
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "a"
    );
}

/// `after` steps run once the health gate passed, in the live release: a failure there never rolls back;
/// the deploy stays succeeded, its reason names the step, and an `after_failed` notification says so.
#[test]
fn a_failing_after_step_leaves_the_release_live_and_says_so() {
    let t = TempDir::new("after");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    let top = format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"http://{}/slack\"\nevents = [\"after_failed\"]\n",
        receiver.addr
    );
    let app = "after = [\"touch after-ran\", \"test -e fail-after && exit 3 || true\"]\n";
    let mut h = Haul::configure_apps(t.path(), &git, &top, &[("blog", "github", app)]);
    h.start();
    let c1 = git.commit(&[("v", "1")], "one");
    let row = push_and_wait(&h, &c1);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert!(
        h.path_of("blog").join("current/after-ran").exists(),
        "after ran in the live release"
    );
    let c2 = git.commit(&[("v", "2"), ("fail-after", "")], "two");
    let row = push_and_wait(&h, &c2);
    assert_eq!(
        row.state,
        State::Succeeded,
        "an after step never fails the deploy"
    );
    let why = row.reason.clone().unwrap_or_default();
    assert!(
        why.contains("after step 2/2") && why.contains("nothing was rolled back"),
        "{why}"
    );
    assert_eq!(h.current(), row.release_id, "the release stays live");
    wait_until("the after failure is told", || receiver.count() >= 1);
    let told = String::from_utf8_lossy(&receiver.all()[0].1).to_string();
    assert!(told.contains("AFTER STEP FAILED"), "{told}");
}

/// `shared`: files and directories under `<path>/shared/` linked into every release before `build`, kept
/// across releases and rollbacks; a missing shared file fails the first deploy with what to create.
#[test]
fn shared_files_and_directories_outlive_every_release() {
    let t = TempDir::new("shared");
    let git = GitServer::start(t.path());
    let app = "shared = [\".env\", \"storage/\"]\nbuild = [\"grep -q secret .env\", \"echo built >> storage/log\"]\n";
    let mut h = Haul::configure(t.path(), &git, app);
    h.start();
    let c1 = git.commit(&[("v", "1"), ("storage/readme", "from the repository")], "one");
    let row = push_and_wait(&h, &c1);
    assert_eq!(row.state, State::Failed);
    let why = row.reason.unwrap_or_default();
    let env = h.path_of("blog").join("shared/.env");
    assert!(
        why.contains("shared file .env is missing") && why.contains(&env.display().to_string()),
        "{why}"
    );
    assert_eq!(h.current(), None, "nothing went live");

    std::fs::write(&env, "TOKEN=secret\n").expect("write .env");
    let c2 = git.commit(&[("v", "2")], "two");
    assert_eq!(push_and_wait(&h, &c2).state, State::Succeeded);
    let live = h.path_of("blog").join("current");
    assert!(std::fs::symlink_metadata(live.join(".env"))
        .expect(".env")
        .file_type()
        .is_symlink());
    assert!(
        !live.join("storage/readme").exists(),
        "the shared directory replaced the repository's"
    );
    let c3 = git.commit(&[("v", "3")], "three");
    assert_eq!(push_and_wait(&h, &c3).state, State::Succeeded);
    let log = std::fs::read_to_string(h.path_of("blog").join("shared/storage/log")).expect("log");
    assert_eq!(
        log.lines().count(),
        2,
        "one shared directory across both releases: {log}"
    );
    let out = h.cli(&["rollback", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(live.join("storage/log")).expect("the rolled-back release sees it too");
    assert_eq!(log.lines().count(), 2);
}

/// `paths` (a monorepo): a push that changed nothing under the app's paths since the live release is
/// `ignored` after the fetch, decided from haul's own mirror; one that touches them deploys.
#[test]
fn a_monorepo_app_deploys_only_pushes_that_touch_its_paths() {
    let t = TempDir::new("paths");
    let git = GitServer::start(t.path());
    let mut h = Haul::configure(
        t.path(),
        &git,
        "paths = [\"services/blog/**\", \"libs/shared\"]\n",
    );
    h.start();
    let c1 = git.commit(&[("services/blog/index.html", "v1")], "blog one");
    assert_eq!(push_and_wait(&h, &c1).state, State::Succeeded);
    let live = h.current();
    let c2 = git.commit(
        &[("services/shop/index.html", "v1"), ("README", "x")],
        "shop only",
    );
    let row = push_and_wait(&h, &c2);
    assert_eq!(row.state, State::Ignored, "{:?}", row.reason);
    let why = row.reason.unwrap_or_default();
    assert!(
        why.contains("no change under paths") && why.contains("2 file(s)"),
        "{why}"
    );
    assert_eq!(h.current(), live);
    // Counted from the live release, not from the last push: c2's files plus one under libs/shared.
    let c3 = git.commit(&[("libs/shared/util.js", "v1")], "shared lib");
    assert_eq!(push_and_wait(&h, &c3).state, State::Succeeded);
    assert_ne!(h.current(), live);
}
