//! Every forge, fail closed: each provider's documented push payload deploys end to end; polling deploys
//! without a webhook and never fetches when nothing moved; tag apps; the HTTP door's limits; a secret shared
//! by two repositories' hooks (`repository`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use haul::model::{State, Trigger};
use serde_json::Value;

use crate::support::*;

fn json_fixture(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).expect("fixture json")
}

/// A provider's own documented payload, pointed at `sha` on `main`, and signed the way that provider signs.
pub(crate) fn documented_push(
    provider: &str,
    sha: &str,
) -> (Vec<(&'static str, String)>, String, &'static str) {
    let hmac = |b: &str| haul::intake::sign_github(SECRET.as_bytes(), b.as_bytes());
    let bare = |b: &str| hmac(b).trim_start_matches("sha256=").to_string();
    match provider {
        "github" => {
            let body = github_push("refs/heads/main", sha);
            (signed_headers("push", &delivery(), &body), body, "Codertocat")
        }
        "gitlab" => {
            let mut v = json_fixture("gitlab/push.json");
            v["ref"] = "refs/heads/main".into();
            v["after"] = sha.into();
            v["checkout_sha"] = sha.into();
            let body = v.to_string();
            let h = vec![
                ("X-Gitlab-Event", "Push Hook".to_string()),
                ("X-Gitlab-Token", SECRET.to_string()),
                ("X-Gitlab-Webhook-UUID", delivery()),
            ];
            (h, body, "jsmith")
        }
        "gitea" | "forgejo" => {
            let mut v = json_fixture(&format!("{provider}/push.json"));
            v["ref"] = "refs/heads/main".into();
            v["after"] = sha.into();
            let body = v.to_string();
            let h = if provider == "gitea" {
                vec![
                    ("X-Gitea-Event", "push".to_string()),
                    ("X-Gitea-Signature", bare(&body)),
                    ("X-Gitea-Delivery", delivery()),
                ]
            } else {
                vec![
                    ("X-Forgejo-Event", "push".to_string()),
                    ("X-Forgejo-Signature", bare(&body)),
                    ("X-Forgejo-Delivery", delivery()),
                ]
            };
            (h, body, if provider == "gitea" { "gitea" } else { "forgejo" })
        }
        "bitbucket-cloud" => {
            let mut v = json_fixture("bitbucket-cloud/push.json");
            v["push"]["changes"][0]["new"]["name"] = "main".into();
            v["push"]["changes"][0]["new"]["target"]["hash"] = sha.into();
            let body = v.to_string();
            let h = vec![
                ("X-Event-Key", "repo:push".to_string()),
                ("X-Hub-Signature", hmac(&body)),
                ("X-Request-UUID", delivery()),
            ];
            (h, body, "Emma")
        }
        "bitbucket-server" => {
            let mut v = json_fixture("bitbucket-server/push.json");
            v["changes"][0]["refId"] = "refs/heads/main".into();
            v["changes"][0]["ref"]["id"] = "refs/heads/main".into();
            v["changes"][0]["toHash"] = sha.into();
            let body = v.to_string();
            let h = vec![
                ("X-Event-Key", "repo:refs_changed".to_string()),
                ("X-Hub-Signature", hmac(&body)),
                ("X-Request-Id", delivery()),
            ];
            (h, body, "admin")
        }
        "standard" => {
            let body = serde_json::json!({"type": "push", "ref": "refs/heads/main", "sha": sha, "actor": "ci-job-4711"}).to_string();
            let h = standard_headers(&body);
            (h, body, "ci-job-4711")
        }
        other => panic!("no fixture for {other}"),
    }
}

#[test]
fn each_forges_documented_push_deploys_end_to_end() {
    let t = TempDir::new("forges");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("index.html", "hello")], "first");
    let apps = [
        ("gh", "github", "github"),
        ("gl", "gitlab", "gitlab"),
        ("gt", "gitea", "gitea"),
        ("fj", "forgejo", "forgejo"),
        ("bbc", "bitbucket", "bitbucket-cloud"),
        ("bbs", "bitbucket", "bitbucket-server"),
        ("std", "standard", "standard"),
    ];
    let config: Vec<(&str, &str, &str)> = apps.iter().map(|(a, p, _)| (*a, *p, "")).collect();
    let mut h = Haul::configure_apps(t.path(), &git, "", &config);
    h.start();
    let mut ids = Vec::new();
    for (app, _, fixture_name) in apps {
        let (headers, body, actor) = documented_push(fixture_name, &sha);
        let (status, reply) = h.post(&format!("/hooks/{app}"), &headers, body.as_bytes());
        assert_eq!(status, 202, "{fixture_name}: {reply}");
        assert_eq!(reply["status"], "queued", "{fixture_name}: {reply}");
        ids.push((
            app,
            fixture_name,
            actor,
            reply["deploy_id"].as_str().expect("id").to_string(),
        ));
    }
    for (app, fixture_name, actor, id) in ids {
        let row = h.wait_final(&id);
        assert_eq!(row.state, State::Succeeded, "{fixture_name}: {:?}", row.reason);
        assert_eq!(row.sha.as_deref(), Some(sha.as_str()));
        assert_eq!(row.actor, actor, "{fixture_name}");
        assert_eq!(
            std::fs::read_to_string(h.path_of(app).join("current/index.html")).expect("live"),
            "hello"
        );
    }
}

#[test]
fn polling_deploys_without_a_webhook_and_never_fetches_when_idle() {
    let t = TempDir::new("poll");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "one");
    let mut h = Haul::configure(t.path(), &git, "poll = \"1s\"");
    h.start();
    let first = wait_for_row(&h, |rows| {
        rows.iter()
            .find(|r| r.trigger == Trigger::Poll && r.state.is_final())
            .cloned()
    });
    assert_eq!(first.state, State::Succeeded, "{:?}", first.reason);
    assert_eq!(first.sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(first.actor, "poll");

    // Nothing new: several polls go by, each one `ls-remote`, none of them a deploy (and so none a fetch).
    let polls_before = idle_polls(&h);
    let deadline = Instant::now() + WAIT;
    while idle_polls(&h) < polls_before + 3 {
        assert!(Instant::now() < deadline, "the poller stopped polling");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(h.rows().len(), 1, "no deploy without a change");
    assert_eq!(deploy_fetches(&h), 1, "one fetch in all: the first deploy's");

    // A commit pushed with no webhook is deployed within a poll interval or so.
    let sha2 = git.commit(&[("v", "2")], "two");
    let second = wait_for_row(&h, |rows| {
        rows.iter()
            .find(|r| r.sha.as_deref() == Some(sha2.as_str()) && r.state.is_final())
            .cloned()
    });
    assert_eq!(second.state, State::Succeeded);
    assert_eq!(second.trigger, Trigger::Poll);
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "2"
    );
}

/// Polls that found nothing to do, from the daemon's debug log.
fn idle_polls(h: &Haul) -> usize {
    h.daemon_log().matches("nothing to do").count()
}

/// Fetches the daemon made: every deploy log records its `git fetch`.
fn deploy_fetches(h: &Haul) -> usize {
    std::fs::read_dir(h.state_dir.join("logs"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .matches("==> fetch")
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}

fn wait_for_row(
    h: &Haul,
    find: impl Fn(&[haul::store::DeployRow]) -> Option<haul::store::DeployRow>,
) -> haul::store::DeployRow {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = find(&h.rows()) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no such deploy appeared:\n{}",
            h.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tag_apps_deploy_matching_tags() {
    let t = TempDir::new("tags");
    let git = GitServer::start(t.path());
    let sha1 = git.commit(&[("v", "1")], "one");
    git.tag("v1.9.0");
    let sha2 = git.commit(&[("v", "2")], "two");
    git.tag("v1.10.0");
    git.commit(&[("v", "3")], "untagged work on main");
    let mut h = Haul::configure(t.path(), &git, "tags = \"v*\"");
    h.start();

    // A branch push is not what a tag app deploys.
    let (status, reply) = h.push("refs/heads/main", &sha1, &delivery());
    assert_eq!(
        (status, reply["status"].as_str()),
        (202, Some("ignored")),
        "{reply}"
    );

    // A tag push deploys the tag's commit (GitHub sends the tag object's sha for annotated tags: it is peeled).
    let tag_object = sh(std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git.dir.join("repo.git"))
        .args(["rev-parse", "refs/tags/v1.9.0"]));
    let (status, reply) = h.push("refs/tags/v1.9.0", &tag_object, &delivery());
    assert_eq!(status, 202, "{reply}");
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert_eq!(row.sha.as_deref(), Some(sha1.as_str()));

    // By hand, with no sha: the newest matching tag by version order (v1.10.0 > v1.9.0), not the branch tip.
    let out = h.cli(&["deploy", "blog"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(h.rows()[0].sha.as_deref(), Some(sha2.as_str()));
    assert_eq!(
        std::fs::read_to_string(h.app_path.join("current/v")).expect("v"),
        "2"
    );

    // A signed tag push whose sha is not that tag's commit is refused after the fetch.
    let (_, reply) = h.push("refs/tags/v1.10.0", &sha1, &delivery());
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::Failed);
    assert!(
        row.reason
            .as_deref()
            .unwrap_or("")
            .contains("not the commit of refs/tags/v1.10.0"),
        "{:?}",
        row.reason
    );
}

#[test]
fn the_http_door_limits_what_it_lets_in() {
    let t = TempDir::new("door");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let top = "rate_limit_per_minute = 60\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nallow_ips = [\"127.0.0.1/32\", \"198.51.100.0/24\"]\nclient_ip_header = \"X-Forwarded-For\"";
    let mut h = Haul::configure_apps(t.path(), &git, top, &[("blog", "github", "")]);
    h.start();
    let body = github_push("refs/heads/main", &sha);

    // allow_ips, with the client address taken from the proxy's header.
    let mut headers = signed_headers("push", &delivery(), &body);
    headers.push(("X-Forwarded-For", "203.0.113.9, 192.0.2.1".into()));
    let (status, reply) = h.post("/hooks/blog", &headers, body.as_bytes());
    assert_eq!(status, 403, "{reply}");
    let mut headers = signed_headers("push", &delivery(), &body);
    headers.push(("X-Forwarded-For", "198.51.100.7".into()));
    let (status, reply) = h.post("/hooks/blog", &headers, body.as_bytes());
    assert_eq!(status, 202, "{reply}");

    // A client that never finishes its headers is cut off, and so is one that never finishes its body.
    let mut slow = TcpStream::connect(h.addr()).expect("connect");
    slow.write_all(b"POST /hooks/blog HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("202"),
        "the slow client was not served"
    );
    let mut slow = TcpStream::connect(h.addr()).expect("connect");
    slow.write_all(b"POST /hooks/blog HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"ref\":")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    // Per-address rate limit: a burst of 15, then 429 with Retry-After; other addresses are unaffected.
    let mut limited = 0;
    for _ in 0..40 {
        let mut headers = vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-Forwarded-For", "198.51.100.8".into()),
        ];
        headers.push(("X-Hub-Signature-256", "sha256=00".into()));
        let (status, _) = h.post("/hooks/blog", &headers, b"{}");
        if status == 429 {
            limited += 1;
        } else {
            assert_eq!(status, 401);
        }
    }
    assert!(limited >= 20, "only {limited} of 40 were limited");
    let mut headers = signed_headers("ping", &delivery(), "{}");
    headers.push(("X-Forwarded-For", "198.51.100.9".into()));
    assert_eq!(h.post("/hooks/blog", &headers, b"{}").0, 200);
    let rows = h.rows();
    assert_eq!(rows.len(), 1, "only the one allowed push was recorded");
}

#[test]
fn a_secret_can_be_rotated_without_failed_deliveries() {
    let t = TempDir::new("rotate");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "1")], "one");
    let h0 = Haul::configure(t.path(), &git, "");
    // Add the previous secret beside the current one.
    let old = h0.dir.join("old.secret");
    write_private(&old, "the secret the forge still signs with");
    let text = std::fs::read_to_string(&h0.config).expect("config");
    std::fs::write(
        &h0.config,
        text.replace(
            "[apps.blog.webhook]\n",
            &format!(
                "[apps.blog.webhook]\nprevious_secret_file = \"{}\"\n",
                old.display()
            ),
        ),
    )
    .expect("config");
    let mut h = h0;
    h.start();
    for secret in [SECRET, "the secret the forge still signs with"] {
        let body = github_push("refs/heads/main", &sha);
        let headers = vec![
            ("X-GitHub-Event", "push".to_string()),
            ("X-GitHub-Delivery", delivery()),
            (
                "X-Hub-Signature-256",
                haul::intake::sign_github(secret.as_bytes(), body.as_bytes()),
            ),
        ];
        let (status, reply) = h.post("/hooks/blog", &headers, body.as_bytes());
        assert_eq!(status, 202, "{reply}");
    }
    let body = github_push("refs/heads/main", &sha);
    let headers = vec![
        ("X-GitHub-Event", "push".to_string()),
        (
            "X-Hub-Signature-256",
            haul::intake::sign_github(b"a third secret, never configured", body.as_bytes()),
        ),
    ];
    assert_eq!(h.post("/hooks/blog", &headers, body.as_bytes()).0, 401);
}

/// The README's recipe for CI (`examples/notify-haul.sh`: openssl + curl) really deploys.
#[test]
fn the_standard_webhook_recipe_for_ci_works() {
    let t = TempDir::new("recipe");
    let git = GitServer::start(t.path());
    let sha = git.commit(&[("v", "from-ci")], "built by CI");
    let mut h = Haul::configure_apps(t.path(), &git, "", &[("api", "standard", "")]);
    h.start();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/notify-haul.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(format!("http://{}/hooks/api", h.addr()))
        .arg(h.dir.join("webhook.secret"))
        .arg(&sha)
        .output()
        .expect("run the recipe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).expect("json reply");
    let row = h.wait_final(reply["deploy_id"].as_str().expect("id"));
    assert_eq!(row.state, State::Succeeded, "{:?}", row.reason);
    assert_eq!(row.sha.as_deref(), Some(sha.as_str()));
    assert_eq!(
        std::fs::read_to_string(h.path_of("api").join("current/v")).expect("v"),
        "from-ci"
    );
    // With no sha: the branch tip. A wrong secret fails (curl -f exits non-zero on the 401).
    let bad = h.dir.join("wrong.secret");
    write_private(&bad, "not the secret the app has, at all");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(format!("http://{}/hooks/api", h.addr()))
        .arg(&bad)
        .output()
        .expect("run");
    assert!(!out.status.success());
}

/// Issue 12: one secret on two repositories' hooks. With `repository` set, a push signed with that secret but
/// for the other repository is refused at the door (`400`, saying which is which), and nothing is recorded
/// for the app it was not for; the right app still takes it, whatever the case of the name.
#[test]
fn issue_12_a_secret_shared_by_two_repositories_deploys_only_the_right_app() {
    let t = TempDir::new("issue-12");
    let app = |name: &str, repository: &str| {
        format!(
            "[apps.{name}]\nrepo = \"/nonexistent/{name}.git\"\npath = \"{{SRV}}/{name}\"\n\
             [apps.{name}.webhook]\nprovider = \"github\"\nsecret_file = \"{{SECRET}}\"\nrepository = \"{repository}\"\n\n"
        )
    };
    let apps = format!(
        "{}{}",
        app("blog", "codertocat/hello-world"),
        app("shop", "acme/shop")
    );
    let mut h = Haul::configure_raw(t.path(), "blog", &apps);
    h.start();
    // GitHub's example push names Codertocat/Hello-World.
    let body = github_push("refs/heads/main", &"a".repeat(40));
    let (status, reply) = h.post(
        "/hooks/shop",
        &signed_headers("push", &delivery(), &body),
        body.as_bytes(),
    );
    assert_eq!(status, 400, "{reply}");
    let why = reply["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("\"acme/shop\"") && why.contains("\"Codertocat/Hello-World\""),
        "{reply}"
    );
    assert!(h.rows().is_empty(), "a refused push was recorded");
    let (status, reply) = h.post(
        "/hooks/blog",
        &signed_headers("push", &delivery(), &body),
        body.as_bytes(),
    );
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["status"], "queued", "{reply}");
    assert!(h.rows().iter().all(|r| r.app == "blog"));
}
