//! Micro-benchmarks of the trust boundary: `intake::evaluate` (signature check + JSON parse + ref/sha
//! validation + branch filter) on each provider's documented push payload, from `tests/fixtures/`, signed the
//! way that provider signs. A second group times the refusal of a forged signature (verify only, no parse).
//!
//! Run: `cargo bench --bench intake` (or `bench/run micro`). Nothing here asserts a time.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use haul::config::{AppConfig, Config, Provider};
use haul::intake::{self, Accepted, Rejected};
use serde_json::Value;

const SECRET: &str = "a benchmark secret that is long enough";
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const DELIVERY: &str = "72d3162e-cc78-11e3-81ab-4c9367dc0958";

fn app() -> AppConfig {
    Config::parse(
        Path::new("/bench/haul.toml"),
        "state_dir = \"/s\"\n[apps.blog]\nrepo = \"/r\"\npath = \"/p\"\nbranch = \"main\"\n",
    )
    .expect("config")
    .apps
    .remove("blog")
    .expect("app blog")
}

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    for (k, v) in pairs {
        h.insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    h
}

/// One case: a provider's documented push to `main`, signed with `secret`.
struct Case {
    name: &'static str,
    provider: Provider,
    headers: HeaderMap,
    body: Vec<u8>,
    now: i64,
}

fn cases(secret: &str) -> Vec<Case> {
    let hmac = |b: &str| intake::sign_github(secret.as_bytes(), b.as_bytes());
    let bare = |b: &str| hmac(b).trim_start_matches("sha256=").to_string();
    let now = 1_764_000_000;
    let mut out = Vec::new();

    let mut v = fixture("github/push.json");
    v["ref"] = "refs/heads/main".into();
    v["after"] = SHA.into();
    v["head_commit"]["id"] = SHA.into();
    let body = v.to_string();
    out.push(Case {
        name: "github",
        provider: Provider::Github,
        headers: headers(&[
            ("x-github-event", "push".into()),
            ("x-github-delivery", DELIVERY.into()),
            ("x-hub-signature-256", hmac(&body)),
        ]),
        body: body.into_bytes(),
        now,
    });

    let mut v = fixture("gitlab/push.json");
    v["ref"] = "refs/heads/main".into();
    v["after"] = SHA.into();
    v["checkout_sha"] = SHA.into();
    let body = v.to_string();
    out.push(Case {
        name: "gitlab-token",
        provider: Provider::Gitlab,
        headers: headers(&[
            ("x-gitlab-event", "Push Hook".into()),
            ("x-gitlab-token", secret.into()),
            ("x-gitlab-webhook-uuid", DELIVERY.into()),
        ]),
        body: body.clone().into_bytes(),
        now,
    });
    let id = format!("msg_{DELIVERY}");
    out.push(Case {
        name: "gitlab-signed",
        provider: Provider::Gitlab,
        headers: headers(&[
            ("x-gitlab-event", "Push Hook".into()),
            ("webhook-id", id.clone()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                intake::sign_standard(secret.as_bytes(), &id, now, body.as_bytes()),
            ),
        ]),
        body: body.into_bytes(),
        now,
    });

    for (name, provider, prefix) in [
        ("gitea", Provider::Gitea, "x-gitea"),
        ("forgejo", Provider::Forgejo, "x-forgejo"),
    ] {
        let mut v = fixture(&format!("{name}/push.json"));
        v["ref"] = "refs/heads/main".into();
        v["after"] = SHA.into();
        let body = v.to_string();
        out.push(Case {
            name,
            provider,
            headers: headers(&[
                (&format!("{prefix}-event"), "push".into()),
                (&format!("{prefix}-signature"), bare(&body)),
                (&format!("{prefix}-delivery"), DELIVERY.into()),
            ]),
            body: body.into_bytes(),
            now,
        });
    }

    let mut v = fixture("bitbucket-cloud/push.json");
    v["push"]["changes"][0]["new"]["name"] = "main".into();
    v["push"]["changes"][0]["new"]["target"]["hash"] = SHA.into();
    let body = v.to_string();
    out.push(Case {
        name: "bitbucket-cloud",
        provider: Provider::Bitbucket,
        headers: headers(&[
            ("x-event-key", "repo:push".into()),
            ("x-hub-signature", hmac(&body)),
            ("x-request-uuid", DELIVERY.into()),
        ]),
        body: body.into_bytes(),
        now,
    });

    let mut v = fixture("bitbucket-server/push.json");
    v["changes"][0]["refId"] = "refs/heads/main".into();
    v["changes"][0]["ref"]["id"] = "refs/heads/main".into();
    v["changes"][0]["toHash"] = SHA.into();
    let body = v.to_string();
    out.push(Case {
        name: "bitbucket-server",
        provider: Provider::Bitbucket,
        headers: headers(&[
            ("x-event-key", "repo:refs_changed".into()),
            ("x-hub-signature", hmac(&body)),
            ("x-request-id", DELIVERY.into()),
        ]),
        body: body.into_bytes(),
        now,
    });

    let body =
        serde_json::json!({"type": "push", "ref": "refs/heads/main", "sha": SHA, "actor": "ci-job-4711"})
            .to_string();
    out.push(Case {
        name: "standard",
        provider: Provider::Standard,
        headers: headers(&[
            ("webhook-id", id.clone()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                intake::sign_standard(secret.as_bytes(), &id, now, body.as_bytes()),
            ),
        ]),
        body: body.into_bytes(),
        now,
    });
    out
}

fn bench_intake(c: &mut Criterion) {
    let app = app();
    let secrets = vec![SECRET.as_bytes().to_vec()];

    let mut group = c.benchmark_group("accept");
    for case in cases(SECRET) {
        // The benchmark must time the real accept path: check it once, outside the timing.
        match intake::evaluate(&app, case.provider, &secrets, &case.headers, &case.body, case.now) {
            Ok(Accepted::Deploy(req)) => assert_eq!(req.sha.as_deref(), Some(SHA), "{}", case.name),
            other => panic!("{}: expected a deploy, got {other:?}", case.name),
        }
        time_evaluate(&mut group, "verify+parse", &case, &app, &secrets);
    }
    group.finish();

    // Signed with another secret: refused after the signature check, before any JSON is parsed.
    let mut group = c.benchmark_group("reject");
    for case in cases("a forged secret that is also long enough") {
        match intake::evaluate(&app, case.provider, &secrets, &case.headers, &case.body, case.now) {
            Err(Rejected::BadSignature) => {}
            other => panic!("{}: expected a bad signature, got {other:?}", case.name),
        }
        time_evaluate(&mut group, "forged", &case, &app, &secrets);
    }
    group.finish();
}

/// Times `intake::evaluate` on one case, under `label`, with its body size as the throughput.
fn time_evaluate(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    label: &str,
    case: &Case,
    app: &AppConfig,
    secrets: &[Vec<u8>],
) {
    group.throughput(Throughput::Bytes(case.body.len() as u64));
    group.bench_with_input(
        BenchmarkId::new(label, format!("{} ({} B)", case.name, case.body.len())),
        case,
        |b, case| {
            b.iter(|| {
                intake::evaluate(
                    black_box(app),
                    case.provider,
                    black_box(secrets),
                    black_box(&case.headers),
                    black_box(&case.body),
                    case.now,
                )
            })
        },
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = bench_intake
}
criterion_main!(benches);
