//! Production is watched: systemd's notify protocol and a unit that verifies, metrics and health, every kind
//! of notification against a receiver on loopback, the dead-man's switch, and the status page in a real
//! headless Chromium.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use haul::model::State;

use crate::support::*;

#[test]
fn the_generated_unit_passes_systemd_analyze_verify() {
    let t = TempDir::new("unit");
    let git = GitServer::start(t.path());
    let h = Haul::configure(t.path(), &git, "");
    let out = h.cli(&[
        "systemd-unit",
        "--user",
        "root",
        "--exe",
        env!("CARGO_BIN_EXE_haul"),
    ]);
    assert!(out.status.success());
    let unit = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LoadCredential=blog.webhook:",
    ] {
        assert!(unit.contains(want), "{want}:\n{unit}");
    }
    assert!(unit.contains(&format!("ReadWritePaths=-{}", h.state_dir.display())));
    let file = t.path().join("haul.service");
    std::fs::write(&file, &unit).expect("unit");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn sd_notify_ready_watchdog_and_stopping() {
    let t = TempDir::new("notify-socket");
    let git = GitServer::start(t.path());
    let mut h = Haul::configure(t.path(), &git, "");
    let sock_path = t.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    h.start_with_env(&[
        ("NOTIFY_SOCKET", sock_path.to_str().expect("utf8")),
        ("WATCHDOG_USEC", "400000"),
    ]);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while seen.iter().filter(|m: &&String| m.contains("WATCHDOG=1")).count() < 3 {
        let n = sock.recv(&mut buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        seen[0].starts_with("READY=1") && seen[0].contains("STATUS=serving 1 app(s)"),
        "{seen:?}"
    );
    assert!(h.stop().success());
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1");
        if String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1") {
            break;
        }
    }
}

#[test]
fn metrics_and_healthz() {
    let t = TempDir::new("metrics");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    wait_until("healthz", || {
        http_get(&h.addr(), "/healthz") == (200, "ok\n".to_string())
    });
    assert_eq!(push_and_wait(&h, &sha).state, State::Succeeded);
    let _ = h.post(
        "/hooks/blog",
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", "sha256=00")],
        b"{}",
    );
    let (status, text) = http_get(&h.addr(), "/metrics");
    assert_eq!(status, 200);
    for want in [
        "haul_deploys_total{app=\"blog\",outcome=\"succeeded\"} 1",
        "haul_webhook_requests_total{provider=\"github\",result=\"queued\"} 1",
        "haul_webhook_requests_total{provider=\"github\",result=\"bad_signature\"} 1",
        "haul_fetches_total{upstream=\"127.0.0.1:",
        "haul_stage_duration_seconds_count{app=\"blog\",stage=\"fetch\"} 1",
        "haul_deploy_duration_seconds_count{app=\"blog\"} 1",
        "haul_queue_depth{app=\"blog\"} 0",
        "haul_last_success_timestamp_seconds{app=\"blog\"}",
        "haul_circuit_open{upstream=\"127.0.0.1:",
    ] {
        assert!(text.contains(want), "missing {want}:\n{text}");
    }
}

#[test]
fn every_kind_of_notification_reaches_its_receiver_once() {
    let t = TempDir::new("notifications");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    let mail = t.path().join("mail.txt");
    let sendmail = t.path().join("sendmail");
    std::fs::write(
        &sendmail,
        format!(
            "#!/bin/sh\n[ \"$1\" = -t ] || exit 64\ncat >> '{}'\necho --- >> '{}'\n",
            mail.display(),
            mail.display()
        ),
    )
    .expect("sendmail");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sendmail, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let notify_secret = t.path().join("notify.secret");
    write_private(&notify_secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let top = format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://{a}/hook\"\nsecret_file = \"{s}\"\n\n\
         [[notify]]\nkind = \"slack\"\nurl = \"http://{a}/slack\"\n\n\
         [[notify]]\nkind = \"ntfy\"\nurl = \"http://{a}/ntfy/haul\"\n\n\
         [[notify]]\nkind = \"email\"\nto = [\"ops@example.com\"]\nfrom = \"haul@example.com\"\nsendmail = \"{m}\"\n\n\
         [[notify]]\nkind = \"slack\"\nurl = \"http://127.0.0.1:{dead}/nobody-listens\"\n",
        dead = free_port(),
        a = receiver.addr,
        s = notify_secret.display(),
        m = sendmail.display()
    );
    let sha1 = git.commit(
        &[
            ("v", "1"),
            ("build.sh", "echo 'npm ERR! missing script: build' >&2; exit 1"),
        ],
        "broken",
    );
    let mut h = Haul::configure_apps(
        t.path(),
        &git,
        &top,
        &[("blog", "github", "build = [\"sh build.sh\"]")],
    );
    h.start();
    assert_eq!(push_and_wait(&h, &sha1).state, State::Failed);
    wait_until("three HTTP notifications", || receiver.count() >= 3);
    wait_until("the mail", || mail.exists());
    let got = receiver.all();
    let by_path = |p: &str| {
        got.iter()
            .find(|(head, _)| head.starts_with(&format!("POST {p} ")))
            .cloned()
            .unwrap_or_else(|| panic!("no POST {p}: {got:?}"))
    };
    // The generic webhook is JSON, signed with Standard Webhooks, so the receiver can verify it.
    let (head, body) = by_path("/hook");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
            .unwrap_or_else(|| panic!("{name} in {head}"))
    };
    let id = header("webhook-id");
    let ts: i64 = header("webhook-timestamp").parse().expect("ts");
    let expected = haul::intake::sign_standard(b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &id, ts, &body);
    assert_eq!(header("webhook-signature"), expected);
    let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (json["type"].as_str(), json["app"].as_str()),
        (Some("failed"), Some("blog"))
    );
    assert!(
        json["reason"].as_str().unwrap_or("").contains("missing script"),
        "{json}"
    );
    let (_, slack) = by_path("/slack");
    let slack: serde_json::Value = serde_json::from_slice(&slack).expect("slack json");
    assert!(
        slack["text"]
            .as_str()
            .unwrap_or("")
            .contains("blog deploy FAILED"),
        "{slack}"
    );
    let (ntfy_head, ntfy) = by_path("/ntfy/haul");
    assert!(ntfy_head.contains("Priority: high") && String::from_utf8_lossy(&ntfy).contains("deploy FAILED"));
    // A target that is down is retried a bounded number of times and logged; it held up nothing.
    wait_until("the dead target to be given up", || {
        h.daemon_log().contains("could not notify")
    });
    let mail_text = std::fs::read_to_string(&mail).expect("mail");
    assert!(
        mail_text.contains("To: ops@example.com") && mail_text.contains("Subject: haul: blog failed"),
        "{mail_text}"
    );

    // The same failure again: not told again (operators get one alert, not hundreds overnight).
    let sha2 = git.commit(&[("v", "2")], "still broken");
    assert_eq!(push_and_wait(&h, &sha2).state, State::Failed);
    wait_until("the suppression", || {
        h.daemon_log().contains("notification suppressed")
    });
    assert_eq!(receiver.count(), 3, "no second round of notifications");
}

/// `haul deploy` with no daemon running deploys in its own process, and tells the notification targets how
/// it ended before it exits, as the daemon would.
#[test]
fn an_in_process_deploy_tells_the_notification_targets_before_it_exits() {
    let t = TempDir::new("inproc-notify");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    git.commit(&[("v", "1")], "one");
    let top = format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"http://{}/hook\"\nevents = [\"succeeded\", \"failed\"]\n",
        receiver.addr
    );
    let h = Haul::configure_apps(t.path(), &git, &top, &[("blog", "github", "")]);
    let out = h.cli(&["deploy", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon is running"));
    // Delivered before the command returned: no waiting here.
    let got = receiver.all();
    assert_eq!(got.len(), 1, "{got:?}");
    let json: serde_json::Value = serde_json::from_slice(&got[0].1).expect("json");
    assert_eq!(
        (json["type"].as_str(), json["app"].as_str()),
        (Some("succeeded"), Some("blog"))
    );
}

#[test]
fn the_dead_mans_switch_alerts_once_survives_a_restart_and_says_recovered() {
    let t = TempDir::new("deadman");
    let git = GitServer::start(t.path());
    let receiver = Receiver::start();
    let top = format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"http://{}/slack\"\nevents = [\"stale\", \"recovered\"]\n",
        receiver.addr
    );
    let sha1 = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure_apps(
        t.path(),
        &git,
        &top,
        &[(
            "blog",
            "github",
            "alert_if_no_success_within = \"2s\"\nrealert_every = \"1h\"",
        )],
    );
    let fast = [("HAUL_DEADMAN_CHECK_MS", "200")];
    h.start_with_env(&fast);
    assert_eq!(push_and_wait(&h, &sha1).state, State::Succeeded);
    wait_until("the stale alert", || receiver.count() == 1);
    let texts = |r: &Receiver| {
        r.all()
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect::<Vec<_>>()
    };
    assert!(
        texts(&receiver)[0].contains("no successful deploy"),
        "{:?}",
        texts(&receiver)
    );
    // A restart neither forgets the alert nor repeats it.
    h.kill();
    h.start_with_env(&fast);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(receiver.count(), 1, "{:?}", texts(&receiver));
    // A successful deploy ends it, with one "recovered".
    let sha2 = git.commit(&[("v", "2")], "two");
    assert_eq!(push_and_wait(&h, &sha2).state, State::Succeeded);
    wait_until("recovered", || receiver.count() == 2);
    assert!(
        texts(&receiver)[1].contains("recovered"),
        "{:?}",
        texts(&receiver)
    );
}

#[test]
fn the_status_page_in_headless_chromium() {
    let t = TempDir::new("page");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, "");
    h.start();
    let row = push_and_wait(&h, &sha);
    let (_, reply) = h.push("refs/heads/feature", &sha, &delivery());
    assert_eq!(reply["status"], "ignored");
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let chromium = |args: &[&str]| {
        let profile = t.path().join(format!("chromium-{}", fastrand::u32(..)));
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .output()
            .expect("chromium (apt-get install chromium)")
    };
    let url = format!("http://{}/", h.addr());
    let dom = chromium(&["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    for want in [
        "haul on",
        "blog",
        &sha[..7],
        "succeeded",
        "Codertocat",
        "ignored",
        "push to refs/heads/feature",
        &format!("href=\"deploys/{}\"", row.id),
    ] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    assert!(
        !dom.contains(&git.url) && !dom.contains("secret"),
        "nothing secret on the page"
    );
    let out = chromium(&[
        "--window-size=1280,800",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    assert!(
        shot.exists(),
        "screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One deploy's page, with its log; links are relative, so a path prefix works.
    let dom = chromium(&["--dump-dom", &format!("{url}deploys/{}", row.id)]);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.contains("==&gt; fetch [source]") || dom.contains("==> fetch [source]"),
        "{dom}"
    );
    assert!(!dom.contains(&git.url), "no repository URL on the page: {dom}");
    assert!(dom.contains("href=\"../\""));
    assert_eq!(http_get(&h.addr(), "/deploys/..%2f..%2fetc").0, 404);

    // status_page = false: nothing served.
    h.kill();
    let text = std::fs::read_to_string(&h.config).expect("config");
    std::fs::write(&h.config, format!("status_page = false\n{text}")).expect("config");
    h.start();
    assert_eq!(http_get(&h.addr(), "/").0, 404);
}
