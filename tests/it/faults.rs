//! Never loop, never lose, never half-deploy: real faults against real processes. sshd is killed mid-fetch,
//! the deploy key is revoked, a real HTTP git server answers 429, the daemon is SIGKILLed at each stage, the
//! disk fills up, the health check fails. After each: what the audit says, and that `current` is whole.

use std::process::Command;

use haul::model::{State, Trigger};

use crate::support::*;

fn log_of(h: &Haul, id: &str) -> String {
    std::fs::read_to_string(h.state_dir.join("logs").join(format!("{id}.log"))).unwrap_or_default()
}

/// `current` points at a complete release that some deploy finished building.
fn assert_current_is_whole(h: &Haul) {
    let live = h.current().expect("a release is live");
    let dir = h.app_path.join("releases").join(&live);
    assert!(dir.join("v").exists(), "live release {live} is complete");
    let leftovers: Vec<String> = std::fs::read_dir(h.app_path.join("releases"))
        .expect("releases")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".index") || n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");
}

#[test]
fn sshd_killed_mid_fetch_is_transient_retried_a_bounded_number_of_times_then_failed() {
    let t = TempDir::new("sshd-mid-fetch");
    let mut git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, "fetch_attempts = 3");
    h.start();
    git.slow_down();
    let (_, reply) = h.push("refs/heads/main", &sha, &delivery());
    let id = reply["deploy_id"].as_str().expect("id").to_string();
    wait_until("the fetch to reach the server", || git.fetches() == 1);
    git.kill();
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("transient") && reason.contains("after 3 attempts"),
        "{reason}"
    );
    let log = log_of(&h, &id);
    assert_eq!(
        log.matches("! fetch attempt").count(),
        2,
        "two retries, then it gave up:\n{log}"
    );
    assert!(
        reason.contains("Connection refused"),
        "the telling line, not git's epilogue: {reason}"
    );
    assert_eq!(h.current(), None, "nothing was switched");
}

#[test]
fn a_revoked_deploy_key_is_permanent_one_attempt_and_no_retry() {
    let t = TempDir::new("revoked");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, "fetch_attempts = 5");
    h.start();
    assert_eq!(push_and_wait(&h, &sha).state, State::Succeeded);
    let live = h.current();
    git.revoke_key();
    let sha2 = git.commit(&[("v", "2")], "two");
    let before = git
        .sshd_log()
        .matches("Connection closed by authenticating user")
        .count();
    let row = push_and_wait(&h, &sha2);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("permanent") && reason.contains("deploy key was refused"),
        "{reason}"
    );
    let attempts = git
        .sshd_log()
        .matches("Connection closed by authenticating user")
        .count()
        - before;
    assert_eq!(
        attempts,
        1,
        "exactly one attempt with fetch_attempts = 5:\n{}",
        git.sshd_log()
    );
    assert_eq!(h.current(), live);
}

#[test]
fn a_429_with_retry_after_opens_the_circuit_and_the_retry_waits() {
    let t = TempDir::new("ratelimit");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    // The first request is answered 429 "Retry-After: 2", then the server serves.
    let http = HttpGitServer::start(&git, "limited-once", 1, 2);
    let mut h = Haul::configure(
        t.path(),
        &git,
        &format!("repo = \"{}\"\nfetch_attempts = 3", http.url),
    );
    h.start();
    let row = push_and_wait(&h, &sha);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("rate-limited") && reason.contains("Retry-After 2s"),
        "the audit says why: {reason}"
    );
    let log = log_of(&h, row.id.as_str());
    assert!(log.contains("circuit open") && log.contains("waiting"), "{log}");
    let (requests, limited) = http.requests();
    assert_eq!(limited, 1);
    assert!(requests <= 4, "no hammering: {requests} requests");
    assert!(
        !log.contains("http.c:"),
        "git's HTTP trace stays out of the deploy log"
    );
}

#[test]
fn a_forge_that_keeps_rate_limiting_gets_a_bounded_number_of_requests() {
    let t = TempDir::new("ratelimit-always");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let http = HttpGitServer::start(&git, "limited-always", -1, 1);
    let mut h = Haul::configure(
        t.path(),
        &git,
        &format!("repo = \"{}\"\nfetch_attempts = 3", http.url),
    );
    h.start();
    let row = push_and_wait(&h, &sha);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("rate-limited")
            && reason.contains("after 3 attempts")
            && reason.contains("circuit open"),
        "{reason}"
    );
    assert_eq!(
        http.requests(),
        (3, 3),
        "one request per attempt, three attempts in all"
    );
}

#[test]
fn two_hundred_webhooks_cause_at_most_two_fetches_and_two_deploys() {
    let t = TempDir::new("storm");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure_apps(
        t.path(),
        &git,
        "rate_limit_per_minute = 0",
        &[("blog", "github", "build = [\"sleep 0.2\"]")],
    );
    h.start();
    let addr = h.addr();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, sha) = (addr.clone(), sha.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for _ in 0..50 {
                    // 200 pushes of the same commit (each its own body, as GitHub sends them).
                    let body = github_push("refs/heads/main", &sha);
                    statuses.push(
                        http_post(
                            &addr,
                            "/hooks/blog",
                            &signed_headers("push", &delivery(), &body),
                            body.as_bytes(),
                        )
                        .0,
                    );
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses.iter().all(|s| *s == 202),
        "every valid webhook was accepted"
    );
    wait_until("the queue to drain", || {
        let rows = h.rows();
        rows.len() == 200 && rows.iter().all(|r| r.state.is_final())
    });
    let rows = h.rows();
    let deployed = rows.iter().filter(|r| r.state == State::Succeeded).count();
    assert!((1..=2).contains(&deployed), "{deployed} deploys");
    assert!(git.fetches() <= 2, "{} fetches", git.fetches());
    assert!(rows
        .iter()
        .all(|r| matches!(r.state, State::Succeeded | State::Superseded | State::Ignored)));
}

#[test]
fn sigkill_at_each_stage_leaves_a_whole_release_live_and_the_deploy_interrupted() {
    let t = TempDir::new("sigkill-stages");
    let git = GitServer::start(t.path());
    let gate = t.path().join("stage");
    // Steps that wait forever when the test says so, and say where they are.
    let step = |name: &str| {
        format!(
            "if [ -e '{g}.{name}' ]; then touch '{g}.{name}.reached'; sleep 602; fi",
            g = gate.display()
        )
    };
    let extra = format!(
        "build = [\"{}\"]\nactivate = [\"{}\"]\nhealth = {{ command = \"{}\", retries = 1 }}",
        step("build"),
        step("activate"),
        step("health")
    );
    let sha1 = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();
    assert_eq!(push_and_wait(&h, &sha1).state, State::Succeeded);
    let mut last_good = h.current().expect("live");

    for (n, stage) in ["fetch", "build", "activate", "health"].into_iter().enumerate() {
        let sha = git.commit(&[("v", &format!("{}", n + 2))], stage);
        if stage == "fetch" {
            git.slow_down();
        } else {
            std::fs::write(format!("{}.{stage}", gate.display()), "").expect("gate");
        }
        let before = git.fetches();
        let (_, reply) = h.push("refs/heads/main", &sha, &delivery());
        let id = reply["deploy_id"].as_str().expect("id").to_string();
        if stage == "fetch" {
            wait_until("the fetch", || git.fetches() > before);
        } else {
            let reached = std::path::PathBuf::from(format!("{}.{stage}.reached", gate.display()));
            wait_until(stage, || reached.exists());
        }
        let live_before_kill = h.current();
        h.kill();
        // Undo the trap before the restart, so the next deploy can pass.
        git.speed_up();
        let _ = std::fs::remove_file(format!("{}.{stage}", gate.display()));
        assert_eq!(
            h.current(),
            live_before_kill,
            "{stage}: a kill never moves current"
        );
        h.start();
        let row = h.wait_state(&id, State::Interrupted);
        assert_current_is_whole(&h);
        match stage {
            "fetch" | "build" => {
                assert_eq!(
                    h.current().as_deref(),
                    Some(last_good.as_str()),
                    "{stage}: the last good release is live"
                );
                if let Some(rid) = &row.release_id {
                    assert!(
                        !h.app_path.join("releases").join(rid).exists(),
                        "{stage}: the half-built release is gone"
                    );
                }
            }
            _ => {
                // Killed after the switch: the new release is complete and live, and the audit says to check it.
                assert_eq!(h.current(), row.release_id, "{stage}");
                assert!(
                    row.reason
                        .as_deref()
                        .unwrap_or("")
                        .contains("may not have finished"),
                    "{stage}: {:?}",
                    row.reason
                );
            }
        }
        // The step the dead daemon left running was ended at start-up.
        let leftover = Command::new("pgrep")
            .args(["-f", "sleep 602"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&leftover).trim().is_empty(),
            "{stage}: orphaned step still running"
        );
        // The mirror is sound and the next deploy goes through.
        let mirror = h.state_dir.join("mirrors/blog.git");
        sh(Command::new("git").arg("--git-dir").arg(&mirror).args([
            "fsck",
            "--connectivity-only",
            "--no-progress",
        ]));
        let next = git.commit(&[("v", &format!("{}-fixed", n + 2))], "fixed");
        assert_eq!(
            push_and_wait(&h, &next).state,
            State::Succeeded,
            "{stage}: recovered"
        );
        last_good = h.current().expect("live");
        h.kill();
        h.start();
    }
}

#[test]
fn a_full_disk_fails_the_deploy_cleanly() {
    let t = TempDir::new("fulldisk");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "small");
    let mut h = Haul::configure(t.path(), &git, "");
    std::fs::create_dir_all(&h.app_path).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&h.app_path)
        .status()
        .expect("mount");
    assert!(mounted.success(), "this test needs root to mount a small tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(h.app_path.clone());
    h.start();
    assert_eq!(push_and_wait(&h, &sha1).state, State::Succeeded);
    let live = h.current();
    // 2 MB that do not compress: more than the disk holds.
    let big: String = (0..2 * 1024 * 1024 / 16)
        .map(|_| format!("{:016x}", fastrand::u64(..)))
        .collect();
    let sha2 = git.commit(&[("big.bin", &big), ("v", "2")], "too big");
    let row = push_and_wait(&h, &sha2);
    assert_eq!(row.state, State::Failed);
    assert!(
        row.reason
            .as_deref()
            .unwrap_or("")
            .contains("No space left on device"),
        "{:?}",
        row.reason
    );
    assert_eq!(h.current(), live, "current untouched");
    assert_eq!(h.releases().len(), 1, "the partial release was removed");
    assert_current_is_whole(&h);
}

#[test]
fn a_failing_health_check_rolls_back_and_rollback_is_a_command() {
    let t = TempDir::new("health");
    let git = GitServer::start(t.path());
    // A health endpoint: answers 503 twice, then 200, on every round of three requests.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let status = if i % 3 == 2 {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = std::io::Write::write_all(
                &mut conn,
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            );
        }
    });
    let extra = format!("health = {{ url = \"http://127.0.0.1:{port}/healthz\", retries = 3, interval = \"50ms\", timeout = \"2s\" }}\nactivate = [\"test -e ok\"]");
    let sha1 = git.commit(&[("v", "1"), ("ok", "")], "one");
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();
    let row1 = push_and_wait(&h, &sha1);
    assert_eq!(
        row1.state,
        State::Succeeded,
        "healthy on the third try: {:?}",
        row1.reason
    );
    let sha2 = git.commit(&[("v", "2")], "two");
    let row2 = push_and_wait(&h, &sha2);
    assert_eq!(row2.state, State::Succeeded);

    // `haul rollback`: back to the release before, through the daemon, audited, activate run again.
    let out = h.cli(&["rollback", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rb = &h.rows()[0];
    assert_eq!((rb.trigger, rb.state), (Trigger::Rollback, State::Succeeded));
    assert_eq!(h.current(), row1.release_id);
    assert_eq!(rb.sha.as_deref(), Some(sha1.as_str()));
    // --to a sha; --to something that is not there.
    let out = h.cli(&["rollback", "blog", "--to", &sha2[..8]]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.current(), row2.release_id);
    let out = h.cli(&["rollback", "blog", "--to", "20200101T000000-nothere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("releases you can roll back to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(h.current(), row2.release_id);
    let out = h.cli(&["rollback", "blog", "--to", "../../etc"]);
    assert_eq!(out.status.code(), Some(2));

    // A release whose health never passes: rolled back automatically, and kept on disk for inspection.
    let bad = "health = { command = \"test -e healthy\", retries = 2, interval = \"50ms\" }";
    h.kill();
    let text = std::fs::read_to_string(&h.config).expect("config");
    let text = text.replace(&extra, &format!("{bad}\nactivate = [\"true\"]"));
    std::fs::write(&h.config, text).expect("config");
    std::fs::write(h.app_path.join("current/healthy"), "").ok();
    h.start();
    let sha3 = git.commit(&[("v", "3"), ("healthy", "")], "three");
    assert_eq!(push_and_wait(&h, &sha3).state, State::Succeeded);
    let good = h.current();
    let sha4 = git.commit_removing("healthy", &[("v", "4")], "four: unhealthy");
    let row4 = push_and_wait(&h, &sha4);
    assert_eq!(row4.state, State::RolledBack, "{:?}", row4.reason);
    let reason = row4.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("health check failed 2 time(s)") && reason.contains("rolled back to"),
        "{reason}"
    );
    assert_eq!(h.current(), good, "the previous release is live again");
    assert!(
        h.app_path
            .join("releases")
            .join(row4.release_id.expect("rid"))
            .exists(),
        "kept for inspection"
    );
}

#[test]
fn sigterm_stops_cleanly_and_on_restart_hold_runs_nothing() {
    let t = TempDir::new("sigterm");
    let git = GitServer::start(t.path());
    let started = t.path().join("started");
    let sha = git.commit(&[("v", "1")], "one");
    let extra = format!(
        "build = [\"touch '{}'; sleep 601\"]\non_restart = \"hold\"",
        started.display()
    );
    let mut h = Haul::configure_apps(
        t.path(),
        &git,
        "stop_grace = \"1s\"",
        &[("blog", "github", &extra)],
    );
    h.start();
    let (_, reply) = h.push("refs/heads/main", &sha, &delivery());
    let running = reply["deploy_id"].as_str().expect("id").to_string();
    wait_until("the build", || started.exists());
    let sha2 = git.commit(&[("v", "2")], "two");
    let (_, reply) = h.push("refs/heads/main", &sha2, &delivery());
    let queued = reply["deploy_id"].as_str().expect("id").to_string();
    let status = h.stop();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let leftover = Command::new("pgrep")
        .args(["-f", "sleep 601"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&leftover).trim().is_empty(),
        "the step's process group was stopped"
    );
    h.start();
    assert_eq!(h.wait_final(&running).state, State::Interrupted);
    let held = h.wait_final(&queued);
    assert_eq!(held.state, State::Interrupted);
    assert!(
        held.reason.as_deref().unwrap_or("").contains("on_restart"),
        "{:?}",
        held.reason
    );
    assert_eq!(h.current(), None);
}

#[test]
fn mirrors_serve_the_objects_but_only_the_primary_vouches_for_a_sha() {
    let t = TempDir::new("mirrors");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "one");
    let mirror = git.add_mirror("cache");
    let mut h = Haul::configure(
        t.path(),
        &git,
        &format!("mirrors = [\"{mirror}\"]\nmirror_mode = \"prefer\""),
    );
    h.start();

    // A webhook from the primary forge names the sha: the mirror's copy of it is deployed, the primary is
    // not touched at all.
    let row = push_and_wait(&h, &sha1);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert_eq!((git.requests_for("cache"), git.requests_for("repo")), (1, 0));
    assert!(log_of(&h, row.id.as_str()).contains("fetched from mirror"));

    // By hand (no sha): from the mirror, checked with one ls-remote of the primary.
    let sha2 = git.commit(&[("v", "2")], "two");
    git.sync_mirror("cache");
    let out = h.cli(&["deploy", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.rows()[0].sha.as_deref(), Some(sha2.as_str()));
    assert_eq!(
        (git.requests_for("cache"), git.requests_for("repo")),
        (2, 1),
        "one cheap ls-remote of the primary"
    );

    // A mirror that offers a commit the primary never published is refused.
    let poison = t.path().join("poison");
    std::fs::create_dir_all(&poison).expect("mkdir");
    let g = |args: &[&str]| {
        sh(Command::new("git")
            .current_dir(&poison)
            .env("GIT_AUTHOR_NAME", "m")
            .env("GIT_AUTHOR_EMAIL", "m@example.com")
            .env("GIT_COMMITTER_NAME", "m")
            .env("GIT_COMMITTER_EMAIL", "m@example.com")
            .args(args))
    };
    g(&[
        "clone",
        "--quiet",
        git.dir.join("cache.git").to_str().expect("utf8"),
        ".",
    ]);
    std::fs::write(poison.join("v"), "evil").expect("write");
    g(&["commit", "--quiet", "-am", "not from the primary"]);
    g(&["push", "--quiet", "origin", "HEAD:main"]);
    let live = h.current();
    let out = h.cli(&["deploy", "blog"]);
    assert_eq!(out.status.code(), Some(1));
    let reason = h.rows()[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("does not contain it"), "{reason}");
    assert_eq!(h.current(), live);
}

#[test]
fn with_the_primary_down_a_mirror_deploys_only_what_the_primary_signed() {
    let t = TempDir::new("mirror-fallback");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "one");
    let mirror = git.add_mirror("cache");
    let dead = free_port();
    let primary = format!(
        "ssh://root@127.0.0.1:{dead}{}",
        git.dir.join("repo.git").display()
    );
    let extra = format!(
        "repo = \"{primary}\"\nmirrors = [\"{mirror}\"]\nmirror_mode = \"fallback\"\nfetch_attempts = 1"
    );
    let mut h = Haul::configure(t.path(), &git, &extra);
    h.start();
    let row = push_and_wait(&h, &sha1);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    let log = log_of(&h, row.id.as_str());
    assert!(
        log.contains("Connection refused") && log.contains("fetched from mirror"),
        "{log}"
    );
    // Without a signed sha there is nobody to vouch for the mirror's tip.
    let out = h.cli(&["deploy", "blog"]);
    assert_eq!(out.status.code(), Some(1));
    let reason = h.rows()[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("never deploys a mirror's word alone"), "{reason}");
}

#[test]
fn a_damaged_mirror_is_repaired_and_the_deploy_goes_on() {
    let t = TempDir::new("repair");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1"), ("unchanged", "from the first commit")], "one");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    assert_eq!(push_and_wait(&h, &sha1).state, State::Succeeded);
    // Every object file the mirror has is emptied, as a bad disk or a crash without fsync would leave them.
    // (Deleting them is not enough to test this: git notices missing objects and fetches them again.)
    let objects = h.state_dir.join("mirrors/blog.git/objects");
    let mut damaged = 0;
    for dir in std::fs::read_dir(&objects)
        .expect("objects")
        .filter_map(Result::ok)
    {
        if dir.file_name().len() != 2 && dir.file_name() != "pack" {
            continue;
        }
        for f in std::fs::read_dir(dir.path()).expect("dir").filter_map(Result::ok) {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
            std::fs::write(f.path(), b"").expect("truncate");
            damaged += 1;
        }
    }
    assert!(damaged > 0);
    let sha2 = git.commit(&[("v", "2")], "two");
    let row = push_and_wait(&h, &sha2);
    assert_eq!(
        row.state,
        State::Succeeded,
        "{:?}\n{}",
        row.reason,
        log_of(&h, row.id.as_str())
    );
    assert!(
        log_of(&h, row.id.as_str()).contains("damaged"),
        "{}",
        log_of(&h, row.id.as_str())
    );
    sh(Command::new("git")
        .arg("--git-dir")
        .arg(h.state_dir.join("mirrors/blog.git"))
        .args(["fsck", "--no-progress"]));
}

/// Regression: a signed push body replayed with a fresh delivery id (the id is not signed) put an older commit
/// live again. Now a webhook never takes an app back in time, unless the branch really was rewound.
#[test]
fn regression_a_replayed_old_push_does_not_go_back_in_time_but_a_real_rewind_deploys() {
    let t = TempDir::new("replay-old");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "one");
    let sha2 = git.commit(&[("v", "2")], "two");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    assert_eq!(push_and_wait(&h, &sha1).state, State::Succeeded);
    assert_eq!(push_and_wait(&h, &sha2).state, State::Succeeded);
    let live = h.current();
    // The first push again, with a new delivery id: refused after the fetch, nothing switched.
    let row = push_and_wait(&h, &sha1);
    assert_eq!(row.state, State::Ignored, "{:?}", row.reason);
    assert!(
        row.reason
            .as_deref()
            .unwrap_or("")
            .contains("older than the live"),
        "{:?}",
        row.reason
    );
    assert_eq!(h.current(), live);
    // Without a delivery id at all: refused at the door.
    let body = github_push("refs/heads/main", &sha1);
    let headers: Vec<(&str, String)> = signed_headers("push", "x", &body)
        .into_iter()
        .filter(|(k, _)| *k != "X-GitHub-Delivery")
        .collect();
    let (status, reply) = h.post("/hooks/blog", &headers, body.as_bytes());
    assert_eq!(status, 400, "{reply}");
    // Someone force-pushes main back to the first commit: that is the tip now, and it deploys.
    sh(Command::new("git").current_dir(&git.work).args([
        "push",
        "--quiet",
        "--force",
        "origin",
        &format!("{sha1}:refs/heads/main"),
    ]));
    let row = push_and_wait(&h, &sha1);
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "1"
    );
}

/// Regression: polling saw the branch tip differ from the live (rolled-back) release and deployed it again.
#[test]
fn regression_polling_does_not_undo_a_rollback() {
    let t = TempDir::new("poll-rollback");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, "poll = \"1s\"");
    h.start();
    wait_until("the first poll deploy", || {
        h.rows()
            .iter()
            .any(|r| r.sha.as_deref() == Some(sha1.as_str()) && r.state == State::Succeeded)
    });
    let sha2 = git.commit(&[("v", "2")], "two");
    wait_until("the second poll deploy", || {
        h.rows()
            .iter()
            .any(|r| r.sha.as_deref() == Some(sha2.as_str()) && r.state == State::Succeeded)
    });
    let out = h.cli(&["rollback", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "1"
    );
    // Several polls later, the rollback stands.
    let polls = |h: &Haul| h.daemon_log().matches("nothing to do").count();
    let before = polls(&h);
    wait_until("three more polls", || polls(&h) >= before + 3);
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "1"
    );
    assert!(
        h.rows()[0].trigger == haul::model::Trigger::Rollback,
        "nothing ran after the rollback"
    );
}

/// Regression: `haul rollback --to <release id>` never matched (the id was lowercased), and a second
/// `haul rollback` went forward to the release just rolled back from.
#[test]
fn regression_rollback_to_a_release_id_and_twice_in_a_row() {
    let t = TempDir::new("rollback-ids");
    let git = GitServer::start(t.path());
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    let mut releases = Vec::new();
    for v in ["1", "2", "3"] {
        let sha = git.commit(&[("v", v)], v);
        let row = push_and_wait(&h, &sha);
        assert_eq!(row.state, State::Succeeded);
        releases.push(row.release_id.expect("rid"));
    }
    let rollback = |args: &[&str]| {
        let mut all = vec!["rollback", "blog"];
        all.extend_from_slice(args);
        let out = h.cli(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v")
    };
    assert_eq!(rollback(&[]), "2");
    assert_eq!(rollback(&[]), "1", "a second rollback goes further back");
    assert_eq!(rollback(&["--to", &releases[2]]), "3", "an exact release id");
}

/// Regression: an in-process `haul deploy` after a SIGKILLed daemon ran beside the dead daemon's step, and the
/// dead deploy stayed `running` forever.
#[test]
fn regression_an_in_process_deploy_cleans_up_after_a_killed_daemon() {
    let t = TempDir::new("inprocess-recover");
    let git = GitServer::start(t.path());
    let started = t.path().join("started");
    let sha1 = git.commit(
        &[
            ("v", "1"),
            (
                "build.sh",
                &format!(
                    "if [ ! -e '{}' ]; then touch '{}'; exec sleep 603; fi",
                    started.display(),
                    started.display()
                ),
            ),
        ],
        "slow once",
    );
    let mut h = Haul::configure(t.path(), &git, "build = [\"sh build.sh\"]");
    h.start();
    let (_, reply) = h.push("refs/heads/main", &sha1, &delivery());
    let id = reply["deploy_id"].as_str().expect("id").to_string();
    wait_until("the build", || started.exists());
    h.kill();
    let out = h.cli(&["deploy", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.row(&id).state, State::Interrupted);
    let leftover = Command::new("pgrep")
        .args(["-f", "sleep 603"])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&leftover).trim().is_empty(),
        "the dead daemon's step was ended"
    );
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "1"
    );
}
