//! Fuzzing the trust boundary: for every provider, [`haul::intake::evaluate`] must never panic, whatever the
//! headers and body, and whatever it accepts must already be safe to use (a valid ref, a full sha, a full
//! non-zero parent, a clean actor). Inputs are mutated real payloads (the fixtures and `tests/fuzz-corpus/`),
//! signed correctly so the parser behind the signature check is reached, and raw noise. `FUZZ_CASES` sets the
//! number of cases per provider (default 2000); proptest records any failing case in
//! `tests/it/fuzz.proptest-regressions`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use haul::config::{Config, Provider};
use haul::intake::{self, Accepted};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, FileFailurePersistence, TestRunner};

use crate::support::SECRET;

fn seeds() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut out = Vec::new();
    for dir in [
        "fixtures/github",
        "fixtures/gitlab",
        "fixtures/gitea",
        "fixtures/forgejo",
        "fixtures/bitbucket-cloud",
        "fixtures/bitbucket-server",
        "fixtures/distribution",
        "fuzz-corpus",
    ] {
        if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
            for e in rd.filter_map(Result::ok) {
                if e.path().extension().is_some_and(|x| x == "json") {
                    out.push(std::fs::read(e.path()).expect("seed"));
                }
            }
        }
    }
    assert!(out.len() >= 8, "fuzz seeds missing");
    out
}

/// A seed, mutated: bytes flipped, spliced, truncated, or a JSON value replaced by something hostile.
fn body_strategy(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let hostile = prop_oneof![
        Just("\"refs/heads/main\"".to_string()),
        Just("\"refs/heads/--upload-pack=touch /tmp/pwned\"".to_string()),
        Just(format!("\"{}\"", "0".repeat(40))),
        Just(format!("\"{}\"", "a".repeat(64))),
        Just("null".to_string()),
        Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_string()),
        Just("1e999999".to_string()),
        Just("\"\\u0000\\u001b[31m\"".to_string()),
        "\"[^\"\\\\]{0,40}\"".prop_map(|s| s),
    ];
    let n = seeds.len();
    prop_oneof![
        3 => (0..n, proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), any::<Option<usize>>()).prop_map({
            let seeds = seeds.clone();
            move |(i, flips, cut)| {
                let mut b = seeds[i].clone();
                for (at, byte) in flips {
                    if !b.is_empty() {
                        let at = at % b.len();
                        b[at] = byte;
                    }
                }
                if let Some(c) = cut {
                    if !b.is_empty() {
                        b.truncate(c % b.len());
                    }
                }
                b
            }
        }),
        3 => (0..n, any::<usize>(), hostile).prop_map({
            let seeds = seeds.clone();
            move |(i, at, value)| {
                // Replace one JSON string value (after a colon) with a hostile one.
                let text = String::from_utf8_lossy(&seeds[i]).into_owned();
                let colons: Vec<usize> = text.match_indices(": \"").map(|(p, _)| p).collect();
                if colons.is_empty() {
                    return text.into_bytes();
                }
                let start = colons[at % colons.len()] + 2;
                let end = text[start + 1..].find('"').map_or(text.len(), |e| start + 1 + e + 1);
                format!("{}{}{}", &text[..start], value, &text[end.min(text.len())..]).into_bytes()
            }
        }),
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

fn headers_for(
    provider: Provider,
    body: &[u8],
    noise: &[(u8, String)],
    sign: bool,
    event_pick: u8,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &str, v: &str| {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    };
    let hmac = intake::sign_github(SECRET.as_bytes(), body);
    let events: &[&str] = match provider {
        Provider::Github => &["push", "ping", "issues", ""],
        Provider::Gitlab => &["Push Hook", "Tag Push Hook", "Note Hook", ""],
        Provider::Gitea | Provider::Forgejo => &["push", "create", "delete", ""],
        Provider::Bitbucket => &["repo:push", "repo:refs_changed", "diagnostics:ping", ""],
        Provider::Standard | Provider::Distribution => &[""],
    };
    let event = events[event_pick as usize % events.len()];
    match provider {
        Provider::Github => {
            put("x-github-event", event);
            put("x-github-delivery", "f00d-1");
            if sign {
                put("x-hub-signature-256", &hmac);
            }
        }
        Provider::Gitlab => {
            put("x-gitlab-event", event);
            put("x-gitlab-webhook-uuid", "f00d-2");
            if sign {
                put("x-gitlab-token", SECRET);
            }
        }
        Provider::Gitea | Provider::Forgejo => {
            put("x-gitea-event", event);
            put("x-forgejo-event", event);
            put("x-gitea-delivery", "f00d-4");
            put("x-forgejo-delivery", "f00d-5");
            if sign {
                put("x-gitea-signature", hmac.trim_start_matches("sha256="));
                put("x-forgejo-signature", hmac.trim_start_matches("sha256="));
            }
        }
        Provider::Bitbucket => {
            put("x-event-key", event);
            put("x-request-uuid", "f00d-3");
            if sign {
                put("x-hub-signature", &hmac);
            }
        }
        Provider::Distribution => {
            if sign {
                put("authorization", &format!("Bearer {SECRET}"));
            }
        }
        Provider::Standard => {
            put("webhook-id", "msg_f00d");
            put("webhook-timestamp", "1800000000");
            if sign {
                put(
                    "webhook-signature",
                    &intake::sign_standard(SECRET.as_bytes(), "msg_f00d", 1_800_000_000, body),
                );
            }
        }
    }
    const NAMES: &[&str] = &[
        "x-hub-signature-256",
        "x-github-event",
        "x-github-delivery",
        "x-gitlab-token",
        "x-gitlab-event",
        "x-gitea-signature",
        "x-event-key",
        "webhook-signature",
        "webhook-timestamp",
        "webhook-id",
        "content-length",
    ];
    for (k, v) in noise {
        put(NAMES[*k as usize % NAMES.len()], v);
    }
    h
}

#[test]
fn intake_never_panics_and_accepts_only_safe_requests() {
    let cases: u32 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    let seeds = seeds();
    // Git apps for every forge; image apps for the triggers that can name an image (registry notifications,
    // GitHub package events, Standard Webhooks from CI).
    const IMAGE: &str = "image = \"127.0.0.1:5000/apps/blog\"\n";
    let git = Provider::ALL
        .iter()
        .filter(|p| **p != Provider::Distribution)
        .flat_map(|p| {
            [
                (*p, "repo = \"/r\"\n".to_string()),
                (*p, "repo = \"/r\"\ntags = \"v*\"".to_string()),
            ]
        });
    let image = [Provider::Distribution, Provider::Github, Provider::Standard]
        .into_iter()
        .flat_map(|p| {
            [
                (p, format!("{IMAGE}tag = \"v1\"")),
                (p, format!("{IMAGE}tag = \"v*\"")),
            ]
        });
    // Apps that name their repository: each forge's own fixture names the one given here.
    let named = [
        (Provider::Github, "Codertocat/Hello-World"),
        (Provider::Gitlab, "mike/diaspora"),
        (Provider::Gitea, "gitea/webhooks"),
        (Provider::Forgejo, "forgejo/webhooks"),
        (Provider::Bitbucket, "PROJ/repository"),
    ]
    .into_iter()
    .map(|(p, r)| {
        let section = format!(
            "repo = \"/r\"\nbranch = \"master\"\n[apps.a.webhook]\nprovider = \"{}\"\nsecret_file = \"/s\"\nrepository = \"{r}\"",
            p.as_str()
        );
        (p, section)
    });
    for (provider, extra) in git.chain(image).chain(named) {
        let cfg = Config::parse(
            std::path::Path::new("/fuzz/haul.toml"),
            &format!("state_dir = \"/s\"\n[apps.a]\npath = \"/p\"\n{extra}\n"),
        )
        .expect("config");
        let app = cfg.apps["a"].clone();
        let mut runner = TestRunner::new(RunnerConfig {
            cases,
            failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
                "tests/it/fuzz.proptest-regressions",
            ))),
            ..RunnerConfig::default()
        });
        let strategy = (
            body_strategy(seeds.clone()),
            proptest::collection::vec((any::<u8>(), "[ -~]{0,80}"), 0..4),
            any::<bool>(),
            any::<u8>(),
        );
        let reached = std::sync::atomic::AtomicUsize::new(0);
        let result = runner.run(&strategy, |(body, noise, sign, event)| {
            let headers = headers_for(provider, &body, &noise, sign, event);
            let got = intake::evaluate(
                &app,
                provider,
                &[SECRET.as_bytes().to_vec()],
                &headers,
                &body,
                1_800_000_000,
            );
            match got {
                Ok(Accepted::Deploy(r)) | Ok(Accepted::Ignore(r, _)) => {
                    let r_ok = r.git_ref.as_deref().is_some_and(haul::model::is_valid_ref);
                    prop_assert!(r_ok, "accepted an invalid ref: {:?}", r.git_ref);
                    prop_assert!(
                        r.sha.as_deref().is_none_or(haul::model::is_full_sha),
                        "accepted a bad sha: {:?}",
                        r.sha
                    );
                    prop_assert!(
                        r.parent
                            .as_deref()
                            .is_none_or(|p| haul::model::is_full_sha(p) && p.bytes().any(|b| b != b'0')),
                        "accepted a bad or all-zero parent: {:?}",
                        r.parent
                    );
                    prop_assert!(
                        r.digest.as_deref().is_none_or(haul::model::is_sha256_digest),
                        "accepted a bad digest: {:?}",
                        r.digest
                    );
                    prop_assert!(
                        !r.actor.chars().any(char::is_control),
                        "actor with control characters"
                    );
                    prop_assert!(sign, "accepted an unsigned request");
                    reached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) | Err(_) => {}
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{provider:?} ({extra}): {e}");
        }
        // The fuzzer must get past the signature into the parser, or it tests nothing there.
        let reached = reached.into_inner();
        assert!(
            reached > 0 || cases < 200,
            "{provider:?} ({extra}): no input reached a decision"
        );
    }
}
