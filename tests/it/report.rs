//! Commit statuses (issue 15): a real daemon tells a forge's status endpoint, played on loopback by a server
//! that checks method, path, auth header and body against the forge's documentation (for GitHub, against
//! the official OpenAPI description in `@octokit/openapi`, which `scripts/test` installs).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haul::model::State;

use crate::support::*;

/// One request the forge got: when, the request line and headers (lower-cased names), and the JSON body.
#[derive(Debug, Clone)]
struct Got {
    at: Instant,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A forge's API on loopback: answers each request with what `answer` says for the n-th request.
struct ForgeApi {
    addr: String,
    got: Arc<Mutex<Vec<Got>>>,
}

impl ForgeApi {
    fn start(answer: impl Fn(usize) -> &'static str + Send + 'static) -> ForgeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let Some(g) = read_request(&mut conn) else {
                    continue;
                };
                let n = {
                    let mut all = keep.lock().expect("lock");
                    all.push(g);
                    all.len() - 1
                };
                let _ = conn.write_all(answer(n).as_bytes());
            }
        });
        ForgeApi { addr, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }
}

const CREATED: &str = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
const LIMITED: &str =
    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
const DENIED: &str = "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{\"message\":\"Bad credentials\"}";

fn read_request(conn: &mut std::net::TcpStream) -> Option<Got> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let split = loop {
        let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[split + 4..].to_vec();
    while body.len() < len {
        let n = conn.read(&mut chunk).ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Got {
        at: Instant::now(),
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    })
}

/// GitHub's own description of "create a commit status", from `@octokit/openapi`.
fn github_operation() -> serde_json::Value {
    let path = std::env::var("HAUL_TEST_OCTOKIT_OPENAPI").unwrap_or_else(|_| {
        format!(
            "{}/.cache/haul-npm/node_modules/@octokit/openapi/generated/api.github.com.deref.json",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {path} ({e}): run ./scripts/test, which installs @octokit/openapi")
    });
    let spec: serde_json::Value = serde_json::from_str(&text).expect("the OpenAPI description parses");
    spec["paths"]["/repos/{owner}/{repo}/statuses/{sha}"]["post"].clone()
}

/// Checks a request against the OpenAPI operation: the path's shape, every required property, each
/// property's type and enum, and nothing the schema does not name.
fn check_against_openapi(op: &serde_json::Value, g: &Got, api_root: &str, repo: &str, sha: &str) {
    assert_eq!(g.method, "POST");
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "path")
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["owner", "repo", "sha"], "the path the spec documents");
    let (owner, name) = repo.split_once('/').expect("owner/name");
    assert_eq!(g.path, format!("{api_root}/repos/{owner}/{name}/statuses/{sha}"));
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    let props = schema["properties"].as_object().expect("properties");
    let body = g.body.as_object().expect("a JSON object body");
    for req in schema["required"].as_array().expect("required") {
        let k = req.as_str().expect("a name");
        assert!(body.contains_key(k), "required {k} missing from {body:?}");
    }
    for (k, v) in body {
        let p = props
            .get(k)
            .unwrap_or_else(|| panic!("{k} is not in GitHub's schema ({:?})", props.keys()));
        assert_eq!(p["type"], "string", "{k}");
        assert!(v.is_string(), "{k} must be a string: {v}");
        if let Some(allowed) = p["enum"].as_array() {
            assert!(allowed.contains(v), "{k} = {v} is not one of {allowed:?}");
        }
    }
    assert!(
        g.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        g.headers
    );
}

fn configure(t: &TempDir, git: &GitServer, provider: &str, api: &ForgeApi, token: &str) -> Haul {
    let token_file = t.path().join(format!("{provider}-status.token"));
    write_private(&token_file, token);
    let repository = if provider == "gitlab" {
        "acme/web/blog"
    } else {
        "acme/blog"
    };
    let extra = format!(
        "build = [\"test ! -e fail\"]\n[apps.blog.report]\nprovider = \"{provider}\"\nrepository = \"{repository}\"\ntoken_file = \"{}\"\n\
         api_url = \"http://{}/api\"\ncontext = \"deploy/production\"\n",
        token_file.display(),
        api.addr
    );
    Haul::configure_apps(
        t.path(),
        git,
        "public_url = \"https://deploy.example.com/haul/\"\n",
        &[("blog", "github", &extra)],
    )
}

/// Each forge hears `pending` when a deploy starts and `success` once it is live, at its documented
/// endpoint with its documented auth header and body; GitHub's is checked against the official OpenAPI
/// description; a paused app's held push is `pending` with the reason, and a failed deploy is `failure`.
#[test]
fn each_forge_hears_how_each_deploy_went() {
    let op = github_operation();
    for provider in ["github", "gitlab", "gitea", "forgejo", "bitbucket"] {
        let t = TempDir::new(&format!("report-{provider}"));
        let git = GitServer::start(t.path());
        let api = ForgeApi::start(|_| CREATED);
        let token = format!("tok-{provider}-0123456789abcdef");
        let mut h = configure(&t, &git, provider, &api, &token);
        h.start();
        let c1 = git.commit(&[("index.html", "v1")], "one");
        let row = push_and_wait(&h, &c1);
        assert_eq!(row.state, State::Succeeded, "{provider}");
        wait_until("two statuses", || api.got().len() >= 2);
        std::thread::sleep(Duration::from_millis(1500));
        let got = api.got();
        assert_eq!(got.len(), 2, "{provider}: pending, then success: {got:#?}");
        let link = format!("https://deploy.example.com/haul/deploys/{}", row.id);
        let (states, path, auth): (Vec<&str>, String, (&str, String)) = match provider {
            "github" => (
                vec!["pending", "success"],
                format!("/api/repos/acme/blog/statuses/{c1}"),
                ("authorization", format!("Bearer {token}")),
            ),
            "gitlab" => (
                vec!["running", "success"],
                format!("/api/projects/acme%2Fweb%2Fblog/statuses/{c1}"),
                ("private-token", token.clone()),
            ),
            "bitbucket" => (
                vec!["INPROGRESS", "SUCCESSFUL"],
                format!("/api/repositories/acme/blog/commit/{c1}/statuses/build"),
                ("authorization", format!("Bearer {token}")),
            ),
            _ => (
                vec!["pending", "success"],
                format!("/api/repos/acme/blog/statuses/{c1}"),
                ("authorization", format!("token {token}")),
            ),
        };
        for (g, state) in got.iter().zip(&states) {
            assert_eq!(
                (g.method.as_str(), g.path.as_str()),
                ("POST", path.as_str()),
                "{provider}"
            );
            assert_eq!(
                g.header(auth.0),
                Some(auth.1.as_str()),
                "{provider}: {:?}",
                g.headers
            );
            assert_eq!(g.body["state"], *state, "{provider}: {}", g.body);
            let (name_key, link_key) = match provider {
                "gitlab" => ("name", "target_url"),
                "bitbucket" => ("key", "url"),
                _ => ("context", "target_url"),
            };
            assert_eq!(g.body[name_key], "deploy/production", "{provider}: {}", g.body);
            assert_eq!(g.body[link_key], link.as_str(), "{provider}: {}", g.body);
            assert!(
                g.body["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty() && d.chars().count() <= 140),
                "{}",
                g.body
            );
            if provider == "github" {
                check_against_openapi(&op, g, "/api", "acme/blog", &c1);
                assert_eq!(g.header("accept"), Some("application/vnd.github+json"));
                assert_eq!(g.header("x-github-api-version"), Some("2022-11-28"));
            }
        }
        if provider != "github" {
            continue;
        }
        // Held: a paused app's push is pending, with the reason; its resume deploys, and says so.
        assert!(h
            .cli(&["pause", "blog", "--reason", "migrating"])
            .status
            .success());
        let c2 = git.commit(&[("index.html", "v2")], "two");
        let (code, reply) = h.deliver(&github_push_from("refs/heads/main", &c1, &c2), &delivery());
        assert_eq!(
            (code, reply["status"].as_str()),
            (202, Some("deferred")),
            "{reply}"
        );
        wait_until("the deferred status", || api.got().len() >= 3);
        let held = &api.got()[2];
        assert_eq!(held.body["state"], "pending", "{}", held.body);
        assert!(
            held.body["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("deferred") && d.contains("migrating")),
            "{}",
            held.body
        );
        check_against_openapi(&op, held, "/api", "acme/blog", &c2);
        assert!(h.cli(&["resume", "blog"]).status.success());
        wait_until("deploying, then live", || api.got().len() >= 5);
        let got = api.got();
        assert_eq!(
            (got[3].body["state"].as_str(), got[4].body["state"].as_str()),
            (Some("pending"), Some("success"))
        );
        // A failed deploy is a failure, with what failed.
        let c3 = git.commit(&[("index.html", "v3"), ("fail", "yes")], "three");
        assert_eq!(push_and_wait(&h, &c3).state, State::Failed);
        wait_until("deploying, then failed", || api.got().len() >= 7);
        let got = api.got();
        assert_eq!(
            (got[5].body["state"].as_str(), got[6].body["state"].as_str()),
            (Some("pending"), Some("failure"))
        );
        assert!(
            got[6].body["description"]
                .as_str()
                .is_some_and(|d| d.starts_with("failed")),
            "{}",
            got[6].body
        );
        check_against_openapi(&op, &got[6], "/api", "acme/blog", &c3);
    }
}

/// A 429 is waited out for its `Retry-After` and tried again; a 401 is logged once, with what to check,
/// and never retried; the token never reaches a log, the page or `history --json`.
#[test]
fn a_rate_limited_status_waits_and_a_refused_one_is_not_retried() {
    let t = TempDir::new("report-limits");
    let git = GitServer::start(t.path());
    // The first answer is a 429 with Retry-After: 2; then 201s until the sixth request, then 401s.
    let api = ForgeApi::start(|n| match n {
        0 => LIMITED,
        1..=2 => CREATED,
        _ => DENIED,
    });
    let token = "ghp_statusonly_TOKEN_never_in_logs_42";
    let mut h = configure(&t, &git, "github", &api, token);
    h.start();
    let c1 = git.commit(&[("index.html", "v1")], "one");
    let first = push_and_wait(&h, &c1);
    assert_eq!(first.state, State::Succeeded);
    wait_until("pending (limited, then set) and success", || api.got().len() >= 3);
    let got = api.got();
    assert_eq!(got[0].body["state"], "pending");
    assert_eq!(
        got[1].body["state"], "pending",
        "the limited status is tried again"
    );
    assert!(
        got[1].at.duration_since(got[0].at) >= Duration::from_millis(1800),
        "after its Retry-After: {:?}",
        got[1].at.duration_since(got[0].at)
    );
    assert_eq!(got[2].body["state"], "success");

    let c2 = git.commit(&[("index.html", "v2")], "two");
    let second = push_and_wait(&h, &c2);
    assert_eq!(
        second.state,
        State::Succeeded,
        "a forge that refuses never fails a deploy"
    );
    wait_until("both statuses tried", || api.got().len() >= 5);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        api.got().len(),
        5,
        "each refused status is tried once: {:#?}",
        api.got()
    );
    let log = h.daemon_log();
    assert!(
        log.contains("not retried") && log.contains("report.token_file") && log.contains(second.id.as_str()),
        "{log}"
    );
    // The token is nowhere a person or a scraper reads.
    let history = h.cli(&["history", "--json"]);
    let (_, page) = http_get(&h.addr(), "/");
    let (_, deploy_page) = http_get(&h.addr(), &format!("/deploys/{}", second.id));
    let logs: String = std::fs::read_dir(h.state_dir.join("logs"))
        .expect("logs")
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    for (what, text) in [
        ("the daemon log", log),
        (
            "history --json",
            String::from_utf8_lossy(&history.stdout).into_owned(),
        ),
        ("the page", page),
        ("the deploy's page", deploy_page),
        ("the deploy logs", logs),
    ] {
        assert!(!text.contains(token), "the token is in {what}");
    }
}
