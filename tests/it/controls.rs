//! Team controls (issue 14): `haul pause` / `haul resume` on a real daemon.

use std::path::Path;
use std::time::Duration;

use haul::model::State;

use super::support::*;

fn said(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A paused app records every webhook `deferred` (acknowledged, durable, coalesced to the newest) and
/// fetches nothing; `haul deploy` still deploys; `haul resume` runs the newest deferred push. Who paused,
/// when and why is in `status`, the page, `/metrics` and the notifications; `--all` holds every app.
#[test]
fn a_paused_app_defers_webhooks_and_runs_the_newest_on_resume() {
    let t = TempDir::new("pause");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    let top = format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"http://{}/slack\"\nevents = [\"paused\", \"resumed\"]\n",
        receiver.addr
    );
    let mut h = Haul::configure_apps(t.path(), &git, &top, &[("blog", "github", "")]);
    h.start();
    let c1 = git.commit(&[("v", "1")], "one");
    assert_eq!(push_and_wait(&h, &c1).state, State::Succeeded);
    let live = h.current();

    let out = h.cli(&["pause", "blog", "--reason", "migrating the database"]);
    assert!(
        out.status.success() && said(&out).contains("blog paused"),
        "{}",
        said(&out)
    );
    let again = h.cli(&["pause", "blog"]);
    assert!(
        again.status.success() && said(&again).contains("already paused"),
        "{}",
        said(&again)
    );
    wait_until("the pause is told", || receiver.count() >= 1);

    let fetches = git.fetches();
    let c2 = git.commit(&[("v", "2")], "two");
    let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c1, &c2), &delivery());
    assert_eq!(code, 202, "{reply}");
    assert_eq!(reply["status"], "deferred", "{reply}");
    let why = reply["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("paused by") && why.contains("migrating the database"),
        "{why}"
    );
    let first = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    let c3 = git.commit(&[("v", "3")], "three");
    let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c2, &c3), &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("deferred")),
        "{reply}"
    );
    let newest = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(h.row(&first).state, State::Superseded, "coalesced to the newest");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(h.row(&newest).state, State::Deferred);
    assert_eq!(git.fetches(), fetches, "a paused app fetches nothing");
    assert_eq!(h.current(), live);

    let status = String::from_utf8_lossy(&h.cli(&["status"]).stdout).to_string();
    assert!(
        status.contains("PAUSED by") && status.contains("migrating"),
        "{status}"
    );
    let json: serde_json::Value = serde_json::from_slice(&h.cli(&["status", "--json"]).stdout).expect("json");
    assert_eq!(json[0]["deferred"], 1, "{json}");
    assert!(json[0]["paused"]["actor"].is_string(), "{json}");
    let (_, page) = http_get(&h.addr(), "/");
    assert!(
        page.contains("paused</span> by") && page.contains("migrating"),
        "{page}"
    );
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(metrics.contains("haul_paused{app=\"blog\"} 1"), "{metrics}");
    assert!(metrics.contains("haul_deferred{app=\"blog\"} 1"), "{metrics}");

    // A person's deploy is never held, and leaves the deferred push where it is.
    let out = h.cli(&["deploy", "blog", "--sha", &c2]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(h.row(&newest).state, State::Deferred);

    let out = h.cli(&["resume", "blog"]);
    assert!(
        out.status.success() && said(&out).contains("runs now"),
        "{}",
        said(&out)
    );
    assert_eq!(h.wait_final(&newest).state, State::Succeeded);
    wait_until("the resume is told", || receiver.count() >= 2);
    let told: Vec<String> = receiver
        .all()
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect();
    assert!(
        told[0].contains("PAUSED") && told[0].contains("migrating"),
        "{told:?}"
    );
    assert!(told[1].contains("resumed"), "{told:?}");
    let out = h.cli(&["resume", "blog"]);
    assert!(
        !out.status.success() && said(&out).contains("not paused"),
        "{}",
        said(&out)
    );
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(metrics.contains("haul_paused{app=\"blog\"} 0"), "{metrics}");

    // Every app at once: an app's own resume does not lift it.
    let out = h.cli(&["pause", "--all"]);
    assert!(out.status.success(), "{}", said(&out));
    let c4 = git.commit(&[("v", "4")], "four");
    let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c3, &c4), &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("deferred")),
        "{reply}"
    );
    let held = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    let out = h.cli(&["resume", "blog"]);
    assert!(
        !out.status.success() && said(&out).contains("--all"),
        "{}",
        said(&out)
    );
    let out = h.cli(&["resume", "--all"]);
    assert!(out.status.success(), "{}", said(&out));
    assert_eq!(h.wait_final(&held).state, State::Succeeded);
}

/// Bad pause and resume requests are refused and change nothing.
#[test]
fn pause_and_resume_refuse_what_they_cannot_do() {
    let t = TempDir::new("pause-bad");
    let git = GitServer::start(t.path());
    let mut h = Haul::configure(t.path(), &git, "");
    for (args, says) in [
        (vec!["pause"], "required"),
        (vec!["pause", "blog", "--all"], "cannot be used with"),
        (vec!["pause", "nope"], "no app named"),
        (vec!["resume", "blog"], "not paused"),
    ] {
        let out = h.cli(&args);
        assert!(
            !out.status.success() && said(&out).contains(says),
            "{args:?}: {}",
            said(&out)
        );
    }
    // Without a daemon the pause is recorded for when it starts, and holds from its first webhook.
    let out = h.cli(&["pause", "blog"]);
    assert!(
        out.status.success() && said(&out).contains("no daemon"),
        "{}",
        said(&out)
    );
    h.start();
    let sha = git.commit(&[("v", "1")], "one");
    let (code, reply) = h.push("refs/heads/main", &sha, &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("deferred")),
        "{reply}"
    );
    assert_eq!(git.fetches(), 0);
}

/// The next minute boundary at least 15 s away, in UTC: (as `YYYY-MM-DD HH:MM`, as Unix seconds).
fn next_minute() -> (String, i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let mut end = (now / 60 + 1) * 60;
    if end - now < 15 {
        end += 60;
    }
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{end}"), "+%Y-%m-%d %H:%M"])
        .output()
        .expect("date");
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), end)
}

/// Outside its deploy window an app records a push `deferred` with when the window opens, keeps it across
/// a restart, and runs it when the window opens; `haul deploy` refuses unless `--override-window`, which
/// the audit records with the actor.
#[test]
fn a_push_outside_the_deploy_window_waits_and_runs_when_it_opens() {
    let t = TempDir::new("window");
    let git = GitServer::start(t.path());
    let (end, end_s) = next_minute();
    let extra = format!("windows = [{{ deny = \"2026-01-01 00:00 - {end}\" }}]\ntimezone = \"UTC\"\n");
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();
    let c1 = git.commit(&[("v", "1")], "one");
    let out = h.cli(&["deploy", "blog"]);
    assert!(
        !out.status.success() && said(&out).contains("--override-window"),
        "{}",
        said(&out)
    );
    assert!(h.rows().is_empty(), "a refused deploy records nothing");
    let out = h.cli(&["deploy", "blog", "--override-window"]);
    assert!(out.status.success(), "{}", said(&out));
    let row = h.rows().into_iter().next().expect("the override's row");
    assert_eq!(row.state, State::Succeeded);
    assert!(
        row.actor.contains("overriding the deploy window"),
        "{}",
        row.actor
    );

    let c2 = git.commit(&[("v", "2")], "two");
    let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c1, &c2), &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("deferred")),
        "{reply}"
    );
    let why = reply["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("deny") && why.contains(&end) && why.contains("(UTC)"),
        "{why}"
    );
    let id = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    let status = String::from_utf8_lossy(&h.cli(&["status"]).stdout).to_string();
    assert!(
        status.contains("window closed until") && status.contains(&end),
        "{status}"
    );
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(metrics.contains("haul_window_open{app=\"blog\"} 0"), "{metrics}");

    // Across a restart, and then when the window opens (within a minute or so), it runs.
    h.kill();
    h.start();
    assert_eq!(h.row(&id).state, State::Deferred);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !h.row(&id).state.is_final() {
        assert!(
            std::time::Instant::now() < deadline,
            "the window never opened for {id}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let row = h.row(&id);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    let started_s = row.started_at.unwrap_or_default() / 1000;
    assert!(
        started_s >= end_s,
        "it ran at {started_s}, before the window opened at {end_s}"
    );
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(metrics.contains("haul_window_open{app=\"blog\"} 1"), "{metrics}");
}

/// `approve = true`: a push waits as `awaiting_approval` (and the people are told), `haul approve` deploys
/// the newest (the audit names the approver), `haul reject` drops what waits; bad requests change nothing.
#[test]
fn an_app_with_approvals_deploys_only_what_a_person_approved() {
    let t = TempDir::new("approve");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    let top = format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"http://{}/slack\"\nevents = [\"awaiting_approval\"]\n",
        receiver.addr
    );
    let mut h = Haul::configure_apps(t.path(), &git, &top, &[("blog", "github", "approve = true\n")]);
    h.start();
    let out = h.cli(&["approve", "blog"]);
    assert!(
        !out.status.success() && said(&out).contains("nothing of blog is awaiting"),
        "{}",
        said(&out)
    );
    let c1 = git.commit(&[("v", "1")], "one");
    let (code, reply) = h.push("refs/heads/main", &c1, &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("awaiting_approval")),
        "{reply}"
    );
    let id = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    wait_until("the people are told", || receiver.count() >= 1);
    let told = String::from_utf8_lossy(&receiver.all()[0].1).to_string();
    assert!(
        told.contains("AWAITING APPROVAL") && told.contains("haul approve blog"),
        "{told}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.row(&id).state, State::AwaitingApproval);
    assert_eq!(git.fetches(), 0, "nothing fetched before the approval");
    let status = String::from_utf8_lossy(&h.cli(&["status"]).stdout).to_string();
    assert!(status.contains("awaiting approval"), "{status}");
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(
        metrics.contains("haul_awaiting_approval{app=\"blog\"} 1"),
        "{metrics}"
    );

    let out = h.cli(&["approve", "blog"]);
    assert!(out.status.success() && said(&out).contains(&id), "{}", said(&out));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    let history: serde_json::Value =
        serde_json::from_slice(&h.cli(&["history", "--json"]).stdout).expect("json");
    assert!(history[0]["approved_by"].is_string(), "{history}");
    let log = String::from_utf8_lossy(&h.cli(&["logs", &id]).stdout).to_string();
    assert!(log.contains("approved by"), "{log}");

    let c2 = git.commit(&[("v", "2")], "two");
    let (_, reply) = h.push("refs/heads/main", &c2, &delivery());
    let second = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    let out = h.cli(&["reject", "blog"]);
    assert!(
        out.status.success() && said(&out).contains(&second),
        "{}",
        said(&out)
    );
    let row = h.row(&second);
    assert_eq!(row.state, State::Ignored);
    assert!(row.reason.unwrap_or_default().contains("rejected by"));
    assert_eq!(
        h.current().as_deref(),
        Some(h.row(&id).release_id.unwrap_or_default().as_str())
    );
}

/// Approval settings that cannot work are refused before anything starts.
#[test]
fn approval_and_window_settings_that_cannot_work_are_refused() {
    let t = TempDir::new("gate-config");
    let git = GitServer::start(t.path());
    for (extra, says) in [
        ("approve_within = \"1h\"\n", "approve_within needs approve = true"),
        ("approve = true\napprove_within = \"10s\"\n", "at least 1m"),
        ("windows = [{ allow = \"Mon-Fri 9-17\" }]\n", "not a time of day"),
        ("gate = \"ci\"\n", "needs gate_workflow"),
        ("gate = \"cd\"\ngate_workflow = \"CI\"\n", "the only gate"),
        ("gate_workflow = \"CI\"\n", "needs gate = \"ci\""),
        (
            "windows = [{ allow = \"Mon 09:00-10:00\" }]\ntimezone = \"Mars/Olympus\"\n",
            "not a time zone",
        ),
    ] {
        let h = Haul::configure(t.path(), &git, extra);
        let out = h.cli(&["check"]);
        assert!(
            !out.status.success() && said(&out).contains(says),
            "{extra}: {}",
            said(&out)
        );
    }
}

/// `haul` as the unprivileged user `nobody` (group `nogroup`), talking to the daemon's socket.
fn as_nobody(h: &Haul, args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    // The build's binary lives under root's home, which nobody may enter: a copy beside the config.
    let exe = h.dir.join("haul-bin");
    if !exe.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_haul"), &exe).expect("copy haul");
    }
    std::process::Command::new(&exe)
        .arg("--config")
        .arg(&h.config)
        .args(args)
        .uid(65534)
        .gid(65534)
        .env("HOME", "/nonexistent")
        .output()
        .expect("run haul as nobody")
}

/// Permissions by the peer's unix user and groups: `nobody` may roll back (by its group) but not deploy,
/// and the refusal names the missing permission and is in the audit; root always may; `haul check` lists
/// who may do what.
#[test]
fn who_may_deploy_is_decided_by_the_peer_s_user_and_groups() {
    let t = TempDir::new("allow");
    let git = GitServer::start(t.path());
    let extra = "[apps.blog.allow]\ndeploy = [\"alice\"]\nrollback = [\"@nogroup\"]\n";
    // shop: nobody may deploy it (by its group), but neither approve nor override a window.
    let shop = "approve = true\n[apps.shop.allow]\ndeploy = [\"@nogroup\"]\napprove = [\"bob\"]\noverride = [\"bob\"]\n";
    let mut h = Haul::configure_apps(
        t.path(),
        &git,
        "[allow]\npause = [\"@deployers\"]\n",
        &[("blog", "github", extra), ("shop", "github", shop)],
    );
    h.start();
    // The operator lets everyone reach the socket; the lists decide.
    use std::os::unix::fs::PermissionsExt;
    let mut p = h.state_dir.join("haul.sock");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod the socket");
    while let Some(parent) = p.parent().map(Path::to_path_buf) {
        let _ = std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755));
        if parent == std::path::Path::new("/tmp") || parent.as_os_str().is_empty() {
            break;
        }
        p = parent;
    }
    let _ = std::fs::set_permissions(&h.config, std::fs::Permissions::from_mode(0o644));

    let out = as_nobody(&h, &["deploy", "blog", "--no-follow"]);
    let why = said(&out);
    assert!(!out.status.success(), "{why}");
    assert!(
        why.contains("nobody may not deploy blog") && why.contains("[alice]"),
        "{why}"
    );
    let rows = h.rows();
    assert_eq!(rows.len(), 1, "the refusal is audited, and nothing else happened");
    assert_eq!(rows[0].state, State::Ignored);
    assert!(rows[0]
        .reason
        .as_deref()
        .unwrap_or_default()
        .contains("refused: nobody may not deploy"));
    assert_eq!(rows[0].actor, "nobody");
    let out = as_nobody(&h, &["pause", "blog"]);
    assert!(
        !out.status.success() && said(&out).contains("may not pause"),
        "{}",
        said(&out)
    );
    // Its group may roll back (there is nothing to roll back to yet: a failure of the rollback, not of the
    // permission).
    let out = as_nobody(&h, &["rollback", "blog", "--no-follow"]);
    assert!(!said(&out).contains("may not"), "{}", said(&out));

    // Approving, rejecting and overriding a window are permissions of their own, refused and audited alike.
    for (args, says) in [
        (&["approve", "shop"][..], "nobody may not approve shop"),
        (&["reject", "shop"][..], "nobody may not approve shop"),
        (
            &["deploy", "shop", "--override-window", "--no-follow"][..],
            "nobody may not override",
        ),
    ] {
        let out = as_nobody(&h, args);
        assert!(
            !out.status.success() && said(&out).contains(says),
            "{args:?}: {}",
            said(&out)
        );
    }
    let refused: Vec<_> = h
        .rows()
        .into_iter()
        .filter(|r| r.app == "shop" && r.actor == "nobody" && r.state == State::Ignored)
        .collect();
    assert_eq!(refused.len(), 3, "each refusal is an audit row: {refused:?}");

    let sha = git.commit(&[("v", "1")], "one");
    let out = h.cli(&["deploy", "blog", "--sha", &sha]);
    assert!(out.status.success(), "root always may: {}", said(&out));
    let check = String::from_utf8_lossy(&h.cli(&["check"]).stdout).to_string();
    assert!(check.contains("may deploy: root, alice"), "{check}");
    assert!(check.contains("may pause: root, @deployers"), "{check}");
    assert!(
        check.contains("may approve: anyone who can reach the control socket"),
        "{check}"
    );
}

/// Two SSH signing keys under `dir/keys` (alice, mallory), and an allowed-signers file naming alice only.
fn alice_and_mallory(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    for (name, who) in [("alice", "alice@example.com"), ("mallory", "mallory@example.com")] {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", who, "-f"])
            .arg(keys.join(name))
            .output()
            .expect("ssh-keygen");
        assert!(out.status.success());
    }
    let alice_pub = std::fs::read_to_string(keys.join("alice.pub")).expect("pub");
    let signers = keys.join("allowed_signers");
    std::fs::write(
        &signers,
        format!("alice@example.com namespaces=\"git\" {alice_pub}"),
    )
    .expect("write");
    (keys, signers)
}

/// `verify_commits`: a commit signed by an allowed SSH key deploys (the audit names the key); an unsigned
/// one, and one signed by a key not allowed, are refused for good before anything is built, with why.
#[test]
fn only_commits_signed_by_an_allowed_key_deploy() {
    let t = TempDir::new("signed");
    let git = GitServer::start(t.path());
    let (keys, signers) = alice_and_mallory(t.path());
    let extra = format!(
        "build = [\"test ! -e marker\", \"touch marker\"]\nverify_commits = {{ ssh_allowed_signers = \"{}\" }}\n",
        signers.display()
    );
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();

    let good = git.commit_signed(&[("v", "1")], "signed by alice", &keys.join("alice"));
    let row = push_and_wait(&h, &good);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    let why = row.reason.unwrap_or_default();
    assert!(
        why.contains("alice@example.com") && why.contains("ED25519"),
        "{why}"
    );
    let live = h.current();

    let unsigned = git.commit(&[("v", "2")], "not signed");
    let row = push_and_wait(&h, &unsigned);
    assert_eq!(row.state, State::Failed);
    let why = row.reason.unwrap_or_default();
    assert!(
        why.contains("permanent") && why.contains("carries no signature"),
        "{why}"
    );
    assert_eq!(h.current(), live, "nothing changed");

    let forged = git.commit_signed(&[("v", "3")], "signed by mallory", &keys.join("mallory"));
    let row = push_and_wait(&h, &forged);
    assert_eq!(row.state, State::Failed);
    let why = row.reason.unwrap_or_default();
    assert!(
        why.contains("No principal matched") && why.contains("SHA256:"),
        "{why}"
    );
    assert_eq!(h.current(), live, "nothing changed");
    assert_eq!(h.releases().len(), 1, "nothing was built for either refusal");
}

/// `verify_commits` on a tag app checks the tag, not the commit: a tag signed by an allowed key deploys; an
/// unsigned tag and one signed by an unknown key are refused for good, each with one fetch, `current` alone.
#[test]
fn a_tag_app_deploys_only_tags_signed_by_an_allowed_key() {
    let t = TempDir::new("signed-tags");
    let git = GitServer::start(t.path());
    let (keys, signers) = alice_and_mallory(t.path());
    let extra = format!(
        "tags = \"v*\"\nverify_commits = {{ ssh_allowed_signers = \"{}\" }}\n",
        signers.display()
    );
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();
    let push_tag = |name: &str, object: &str| {
        let (code, reply) = h.push(&format!("refs/tags/{name}"), object, &delivery());
        assert_eq!(code, 202, "{reply}");
        h.wait_final(reply["deploy_id"].as_str().expect("id"))
    };

    let c1 = git.commit(&[("v", "1")], "one");
    let good = git.tag_signed("v1.0.0", Some(&keys.join("alice")));
    let row = push_tag("v1.0.0", &good);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert_eq!(row.sha.as_deref(), Some(c1.as_str()));
    assert!(row.reason.unwrap_or_default().contains("alice@example.com"));
    let live = h.current();

    git.commit(&[("v", "2")], "two");
    for (name, key, says) in [
        ("v1.1.0", None, "carries no signature"),
        ("v1.2.0", Some(keys.join("mallory")), "No principal matched"),
    ] {
        let object = git.tag_signed(name, key.as_deref());
        let fetches = git.fetches();
        let row = push_tag(name, &object);
        assert_eq!(row.state, State::Failed, "{name}");
        let why = row.reason.unwrap_or_default();
        assert!(why.contains("permanent") && why.contains(says), "{name}: {why}");
        assert_eq!(git.fetches() - fetches, 1, "{name}: one attempt, never retried");
        assert_eq!(h.current(), live, "{name}: nothing changed");
    }
}

/// `verify_commits = { gpg_keyring = ... }`: a commit signed by a key in the keyring deploys; one signed by
/// another GPG key is refused, and an SSH-signed one cannot verify against a GPG keyring at all.
#[test]
fn gpg_signed_commits_verify_against_a_private_keyring_only() {
    let t = TempDir::new("signed-gpg");
    let git = GitServer::start(t.path());
    let gpg = |home: &Path, args: &[&str]| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(home).expect("mkdir");
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let out = std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(home)
            .args([
                "--batch",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .expect("gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (bob, eve) = (t.path().join("gpg-bob"), t.path().join("gpg-eve"));
    gpg(
        &bob,
        &[
            "--quick-gen-key",
            "Bob <bob@example.com>",
            "ed25519",
            "sign",
            "never",
        ],
    );
    gpg(
        &eve,
        &[
            "--quick-gen-key",
            "Eve <eve@example.com>",
            "ed25519",
            "sign",
            "never",
        ],
    );
    let keyring = t.path().join("trusted.gpg");
    let public = gpg(&bob, &["--armor", "--export", "bob@example.com"]);
    std::fs::write(&keyring, public).expect("write the keyring");
    let extra = format!("verify_commits = {{ gpg_keyring = \"{}\" }}\n", keyring.display());
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();

    let good = git.commit_signed_gpg(&[("v", "1")], "signed by bob", &bob, "bob@example.com");
    let row = push_and_wait(&h, &good);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    let why = row.reason.unwrap_or_default();
    assert!(
        why.contains("Good signature") && why.contains("bob@example.com"),
        "{why}"
    );

    let bad = git.commit_signed_gpg(&[("v", "2")], "signed by eve", &eve, "eve@example.com");
    let row = push_and_wait(&h, &bad);
    assert_eq!(row.state, State::Failed);
    let why = row.reason.unwrap_or_default();
    assert!(why.contains("not signed by a key verify_commits allows"), "{why}");
    assert!(
        !why.contains("eve@example.com") || why.contains("No public key") || why.contains("Can't check"),
        "{why}"
    );
}

/// GitHub's own `workflow_run` example (tests/fixtures) for `sha`, rewritten to the gate's workflow name, the
/// test branch and `conclusion`.
fn workflow_run(name: &str, sha: &str, conclusion: &str) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&fixture("github/workflow_run-completed.json")).expect("json");
    v["workflow_run"]["name"] = name.into();
    v["workflow_run"]["head_branch"] = "main".into();
    v["workflow_run"]["head_sha"] = sha.into();
    v["workflow_run"]["conclusion"] = conclusion.into();
    v.to_string()
}

/// `gate = "ci"`: a push waits as `awaiting_ci` (nothing fetched) until GitHub's signed `workflow_run` of the
/// gate's workflow says CI passed on that commit; a failed run records `ci_failed`; a run that finished
/// before its push arrived decides the push at once; other workflows change nothing.
#[test]
fn a_ci_gated_app_deploys_only_what_ci_passed() {
    let t = TempDir::new("ci-gate");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    let top = format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"http://{}/slack\"\nevents = [\"ci_failed\"]\n",
        receiver.addr
    );
    let mut h = Haul::configure_apps(
        t.path(),
        &git,
        &top,
        &[("blog", "github", "gate = \"ci\"\ngate_workflow = \"CI\"\n")],
    );
    h.start();
    let send = |body: String| {
        h.post(
            "/hooks/blog",
            &signed_headers("workflow_run", &delivery(), &body),
            body.as_bytes(),
        )
    };
    let c1 = git.commit(&[("v", "1")], "one");
    let (code, reply) = h.push("refs/heads/main", &c1, &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("awaiting_ci")),
        "{reply}"
    );
    let first = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    assert!(
        reply["reason"].as_str().unwrap_or_default().contains("\"CI\""),
        "{reply}"
    );
    let (code, reply) = send(workflow_run("Lint", &c1, "success"));
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("ignored")),
        "another workflow: {reply}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(h.row(&first).state, State::AwaitingCi);
    assert_eq!(git.fetches(), 0, "nothing fetched before CI passed");
    let status = String::from_utf8_lossy(&h.cli(&["status"]).stdout).to_string();
    assert!(status.contains("awaiting CI"), "{status}");
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(metrics.contains("haul_awaiting_ci{app=\"blog\"} 1"), "{metrics}");
    let (_, page) = http_get(&h.addr(), "/");
    assert!(page.contains("awaiting CI"), "{page}");

    let verdict = workflow_run("CI", &c1, "success");
    let (code, reply) = send(verdict.clone());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("ci_passed")),
        "{reply}"
    );
    assert!(
        reply["reason"].as_str().unwrap_or_default().contains(&first),
        "{reply}"
    );
    assert_eq!(h.wait_final(&first).state, State::Succeeded);
    // The same signed verdict again, under a fresh delivery id: a duplicate, nothing changes.
    let rows = h.rows().len();
    let (code, reply) = send(verdict);
    assert_eq!(
        (code, reply["status"].as_str()),
        (200, Some("duplicate")),
        "{reply}"
    );
    assert_eq!(h.rows().len(), rows, "nothing recorded");

    let c2 = git.commit(&[("v", "2")], "two");
    let (_, reply) = h.deliver(&github_push_from("refs/heads/main", &c1, &c2), &delivery());
    let second = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    let (code, reply) = send(workflow_run("CI", &c2, "failure"));
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("ci_failed")),
        "{reply}"
    );
    let row = h.row(&second);
    assert_eq!(row.state, State::CiFailed);
    assert!(row.reason.unwrap_or_default().contains("failure"));
    wait_until("the CI failure is told", || receiver.count() >= 1);
    let told = String::from_utf8_lossy(&receiver.all()[0].1).to_string();
    assert!(told.contains("CI FAILED") && told.contains(&second), "{told}");
    let live = h.current();

    // CI may finish before the push is delivered: the push is then decided at once.
    let c3 = git.commit(&[("v", "3")], "three");
    let (_, reply) = send(workflow_run("CI", &c3, "success"));
    assert_eq!(reply["status"], "ci_passed", "{reply}");
    let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c2, &c3), &delivery());
    assert_eq!((code, reply["status"].as_str()), (202, Some("queued")), "{reply}");
    let third = reply["deploy_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(h.wait_final(&third).state, State::Succeeded);
    assert_ne!(h.current(), live);
    // CI failed first: the push is recorded ci_failed at once, and told like a verdict that came after it.
    let c4 = git.commit(&[("v", "4")], "four");
    let (_, reply) = send(workflow_run("CI", &c4, "failure"));
    assert_eq!(reply["status"], "ci_failed", "{reply}");
    let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c3, &c4), &delivery());
    assert_eq!(
        (code, reply["status"].as_str()),
        (202, Some("ci_failed")),
        "{reply}"
    );
    wait_until("that CI failure is told too", || receiver.count() >= 2);
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(
        metrics.contains("haul_deploys_total{app=\"blog\",outcome=\"succeeded\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("haul_deploys_total{app=\"blog\",outcome=\"ci_failed\"} 2"),
        "{metrics}"
    );
}

/// `gate = "ci"` on Gitea (its `workflow_run`, 1.25+) and Forgejo (its `action_run_success` /
/// `action_run_failure`, 12+), each from the fixture built from that forge's payload structs: a push waits
/// as `awaiting_ci`, the forge's signed word on a run of the gate's workflow file releases it or records
/// `ci_failed`.
#[test]
fn gitea_and_forgejo_ci_runs_release_or_fail_a_push() {
    for provider in ["gitea", "forgejo"] {
        let t = TempDir::new(&format!("ci-gate-{provider}"));
        let git = GitServer::start(t.path());
        let mut h = Haul::configure_apps(
            t.path(),
            &git,
            "",
            &[("blog", provider, "gate = \"ci\"\ngate_workflow = \"ci.yml\"\n")],
        );
        h.start();
        let ci = |sha: &str, passed: bool| {
            let (file, event) = if provider == "gitea" {
                ("gitea/workflow_run.json", "workflow_run")
            } else if passed {
                ("forgejo/action_run_success.json", "action_run_success")
            } else {
                ("forgejo/action_run_success.json", "action_run_failure")
            };
            let mut v: serde_json::Value = serde_json::from_str(&fixture(file)).expect("json");
            let outcome = if passed { "success" } else { "failure" };
            if provider == "gitea" {
                v["workflow_run"]["head_sha"] = sha.into();
                v["workflow_run"]["conclusion"] = outcome.into();
            } else {
                v["run"]["commit_sha"] = sha.into();
                v["run"]["status"] = outcome.into();
                v["action"] = outcome.into();
            }
            let body = v.to_string();
            let sig = haul::intake::sign_github(SECRET.as_bytes(), body.as_bytes());
            let prefix = if provider == "gitea" {
                "X-Gitea"
            } else {
                "X-Forgejo"
            };
            let hs = vec![
                (format!("{prefix}-Event"), event.to_string()),
                (
                    format!("{prefix}-Signature"),
                    sig.trim_start_matches("sha256=").to_string(),
                ),
                (format!("{prefix}-Delivery"), delivery()),
            ];
            h.post("/hooks/blog", &hs, body.as_bytes())
        };
        let c1 = git.commit(&[("v", "1")], "one");
        let (hs, body, _) = crate::forges::documented_push(provider, &c1);
        let (code, reply) = h.post("/hooks/blog", &hs, body.as_bytes());
        assert_eq!(
            (code, reply["status"].as_str()),
            (202, Some("awaiting_ci")),
            "{provider}: {reply}"
        );
        let first = reply["deploy_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(git.fetches(), 0, "{provider}: nothing fetched before CI passed");
        let (code, reply) = ci(&c1, true);
        assert_eq!(
            (code, reply["status"].as_str()),
            (202, Some("ci_passed")),
            "{provider}: {reply}"
        );
        assert_eq!(h.wait_final(&first).state, State::Succeeded, "{provider}");

        let c2 = git.commit(&[("v", "2")], "two");
        let (hs, body, _) = crate::forges::documented_push(provider, &c2);
        let (_, reply) = h.post("/hooks/blog", &hs, body.as_bytes());
        let second = reply["deploy_id"].as_str().unwrap_or_default().to_string();
        let (code, reply) = ci(&c2, false);
        assert_eq!(
            (code, reply["status"].as_str()),
            (202, Some("ci_failed")),
            "{provider}: {reply}"
        );
        assert_eq!(h.row(&second).state, State::CiFailed, "{provider}");
        // A replay of the first verdict (c1 passed) changes nothing, and says so.
        let (code, reply) = ci(&c1, true);
        assert_eq!(
            (code, reply["status"].as_str()),
            (200, Some("duplicate")),
            "{provider}: {reply}"
        );
    }
}
