//! Issue 12: one captured, validly signed delivery (or a forge delivering late and out of order) must never
//! change what is live. GitHub signs the body, not the delivery id, so each test here re-sends a real body
//! under a fresh id, or sends an older push late, and checks what is live, what was fetched and what the
//! audit says.

use haul::model::State;

use crate::support::*;

const ZERO: &str = "0000000000000000000000000000000000000000";

fn live_v(h: &Haul) -> String {
    std::fs::read_to_string(h.app_path.join("current/v")).expect("v")
}

fn deliver_and_wait(h: &Haul, body: &str) -> haul::store::DeployRow {
    let (status, reply) = h.deliver(body, &delivery());
    assert_eq!(status, 202, "{reply}");
    h.wait_final(reply["deploy_id"].as_str().expect("id"))
}

/// Regression (hole 1): c2 went live by a push, `haul rollback` put c1 back, and c2's push re-sent with a fresh
/// delivery id was queued and made c2 live again.
#[test]
fn regression_a_replay_never_undoes_a_rollback() {
    let t = TempDir::new("replay-rollback");
    let git = GitServer::start(t.path());
    let c1 = git.commit(&[("v", "1")], "one");
    let c2 = git.commit(&[("v", "2")], "two");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", ZERO, &c1)).state,
        State::Succeeded
    );
    let push2 = github_push_from("refs/heads/main", &c1, &c2);
    assert_eq!(deliver_and_wait(&h, &push2).state, State::Succeeded);
    let out = h.cli(&["rollback", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(live_v(&h), "1");
    let (fetches, rows) = (git.fetches(), h.rows().len());

    // The captured delivery, re-sent: a replay, answered at the door, no fetch.
    let (status, reply) = h.deliver(&push2, &delivery());
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("duplicate")),
        "{reply}"
    );
    assert_eq!(h.rows().len(), rows, "a replay records nothing");

    // Another delivery naming c2 (not a byte-for-byte replay): the rollback is sticky, so it is ignored
    // before any fetch.
    let row = deliver_and_wait(&h, &github_push_from("refs/heads/main", &c1, &c2));
    assert_eq!(row.state, State::Ignored, "{:?}", row.reason);
    assert!(
        row.reason.as_deref().unwrap_or("").contains("rollback"),
        "{:?}",
        row.reason
    );
    assert_eq!(git.fetches(), fetches, "nothing was fetched for it");
    assert_eq!(live_v(&h), "1", "c1 is still live");

    // A commit haul has never deployed moves the app on again.
    let c3 = git.commit(&[("v", "3")], "three");
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", &c2, &c3)).state,
        State::Succeeded
    );
    assert_eq!(live_v(&h), "3");
    // And a person can still deploy c2 on purpose.
    let out = h.cli(&["deploy", "blog", "--sha", &c2]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(live_v(&h), "2");
}

/// Regression (hole 2): c3 building, c4 acknowledged, then a late delivery of an older push superseded c4,
/// and c4 was never deployed.
#[test]
fn regression_a_late_delivery_never_loses_a_newer_push() {
    let t = TempDir::new("late-delivery");
    let git = GitServer::start(t.path());
    let gate = t.path().join("gate");
    let started = t.path().join("started");
    let build = format!(
        "build = [\"if [ \\\"$(cat v)\\\" = 3 ]; then touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; fi\"]",
        started.display(),
        gate.display()
    );
    let c1 = git.commit(&[("v", "1")], "one");
    let c2 = git.commit(&[("v", "2")], "two");
    let c3 = git.commit(&[("v", "3")], "three");
    let c4 = git.commit(&[("v", "4")], "four");
    let mut h = Haul::configure(t.path(), &git, &build);
    h.start();
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", ZERO, &c1)).state,
        State::Succeeded
    );
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", &c1, &c2)).state,
        State::Succeeded
    );
    let (_, reply) = h.deliver(&github_push_from("refs/heads/main", &c2, &c3), &delivery());
    let id3 = reply["deploy_id"].as_str().expect("id").to_string();
    wait_until("c3's build started", || started.exists());
    let (status, reply) = h.deliver(&github_push_from("refs/heads/main", &c3, &c4), &delivery());
    assert_eq!(
        (status, reply["status"].as_str()),
        (202, Some("queued")),
        "{reply}"
    );
    let id4 = reply["deploy_id"].as_str().expect("id").to_string();

    // The push of c2, delivered again 40 minutes late under its own new delivery (not a replay of bytes).
    let (status, reply) = h.deliver(&github_push_from("refs/heads/main", &c1, &c2), &delivery());
    assert_eq!(
        (status, reply["status"].as_str()),
        (202, Some("superseded")),
        "{reply}"
    );
    assert!(
        reply["superseded"].as_array().is_none_or(|a| a.is_empty()),
        "it replaced nothing: {reply}"
    );
    assert_eq!(h.row(&id4).state, State::Queued, "c4 keeps its slot");

    std::fs::write(&gate, "").expect("open the gate");
    assert_eq!(h.wait_final(&id3).state, State::Succeeded);
    assert_eq!(h.wait_final(&id4).state, State::Succeeded);
    assert_eq!(live_v(&h), "4", "the newest acknowledged push is live");
}

/// Regression (hole 3): 20 replays of an old delivery with fresh ids each cost a real fetch.
#[test]
fn regression_replays_cost_no_fetch() {
    let t = TempDir::new("replay-fetches");
    let git = GitServer::start(t.path());
    let c1 = git.commit(&[("v", "1")], "one");
    let c2 = git.commit(&[("v", "2")], "two");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    let push1 = github_push_from("refs/heads/main", ZERO, &c1);
    assert_eq!(deliver_and_wait(&h, &push1).state, State::Succeeded);
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", &c1, &c2)).state,
        State::Succeeded
    );
    let (fetches, rows) = (git.fetches(), h.rows().len());
    for _ in 0..20 {
        let (status, reply) = h.deliver(&push1, &delivery());
        assert_eq!(
            (status, reply["status"].as_str()),
            (200, Some("duplicate")),
            "{reply}"
        );
    }
    assert_eq!(git.fetches(), fetches, "no replay fetched");
    assert_eq!(h.rows().len(), rows, "no replay was recorded");
    assert_eq!(live_v(&h), "2");
}

/// A real force-push back (the forge names the live commit as the push's parent) still deploys, even when the
/// commit it rewinds to is older than the live one.
#[test]
fn a_real_force_push_rewind_deploys() {
    let t = TempDir::new("rewind-lineage");
    let git = GitServer::start(t.path());
    let c1 = git.commit(&[("v", "1")], "one");
    let c2 = git.commit(&[("v", "2")], "two");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", ZERO, &c1)).state,
        State::Succeeded
    );
    assert_eq!(
        deliver_and_wait(&h, &github_push_from("refs/heads/main", &c1, &c2)).state,
        State::Succeeded
    );
    sh(std::process::Command::new("git").current_dir(&git.work).args([
        "push",
        "--quiet",
        "--force",
        "origin",
        &format!("{c1}:refs/heads/main"),
    ]));
    let row = deliver_and_wait(&h, &github_push_from("refs/heads/main", &c2, &c1));
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert_eq!(live_v(&h), "1");
}
