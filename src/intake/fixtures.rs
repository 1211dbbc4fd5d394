//! The forges' own example payloads (`tests/fixtures/<provider>/`, each with its SOURCE.md), signed and
//! evaluated. Where a forge names its repository (for `webhook.repository`) and the sha a push moved the ref
//! from is checked here against what the forges document they send, not against payloads written for the
//! tests; `tests/fixtures/PROVIDERS.md` lists the same paths.

use serde_json::{json, Value};

use super::test_support::{signed, SECRET};
use super::{evaluate, Accepted, Rejected};
use crate::config::{AppConfig, Config, Provider};
use crate::model::DeployRequest;

/// One forge's example push, and what it says.
struct Fixture {
    name: &'static str,
    provider: Provider,
    event: &'static str,
    body: String,
    /// The app's source lines: a git app that deploys the pushed branch, or an image app.
    app: &'static str,
    /// The repository as the payload names it, as a person writes it.
    repository: &'static str,
    /// JSON pointers to what names it: without any one of them, the payload names no repository.
    names_it: &'static [&'static str],
    /// Where the parent sha is (a JSON pointer), and what the request carries once it is validated.
    parent_at: Option<&'static str>,
    parent: Option<&'static str>,
    /// A tag's request carries no parent, whatever the payload says.
    tag: bool,
}

fn fixtures() -> Vec<Fixture> {
    vec![
        Fixture {
            name: "github/push.json",
            provider: Provider::Github,
            event: "push",
            body: include_str!("../../tests/fixtures/github/push.json").into(),
            app: "repo = \"/r\"\nbranch = \"master\"",
            repository: "Codertocat/Hello-World",
            names_it: &["/repository/full_name", "/repository"],
            parent_at: Some("/before"),
            // A branch creation: `before` is all zeros.
            parent: None,
            tag: false,
        },
        Fixture {
            name: "github/push-tag.json",
            provider: Provider::Github,
            event: "push",
            body: include_str!("../../tests/fixtures/github/push-tag.json").into(),
            app: "repo = \"/r\"\nbranch = \"master\"",
            repository: "Codertocat/Hello-World",
            names_it: &["/repository/full_name", "/repository"],
            parent_at: Some("/before"),
            parent: None,
            tag: true,
        },
        Fixture {
            name: "github/package-published.json",
            provider: Provider::Github,
            event: "package",
            body: github_package(),
            app: "image = \"ghcr.io/codertocat/hello-world-npm\"\ntag = \"main\"",
            repository: "Codertocat/hello-world-npm",
            names_it: &["/repository/full_name", "/repository"],
            parent_at: None,
            parent: None,
            tag: true,
        },
        Fixture {
            name: "gitlab/push.json",
            provider: Provider::Gitlab,
            event: "Push Hook",
            body: include_str!("../../tests/fixtures/gitlab/push.json").into(),
            app: "repo = \"/r\"\nbranch = \"master\"",
            repository: "mike/diaspora",
            names_it: &["/project/path_with_namespace", "/project"],
            parent_at: Some("/before"),
            parent: Some("95790bf891e76fee5e1747ab589903a6a1f80f22"),
            tag: false,
        },
        Fixture {
            name: "gitlab/tag_push.json",
            provider: Provider::Gitlab,
            event: "Tag Push Hook",
            body: include_str!("../../tests/fixtures/gitlab/tag_push.json").into(),
            app: "repo = \"/r\"\nbranch = \"master\"",
            repository: "jsmith/example",
            names_it: &["/project/path_with_namespace", "/project"],
            parent_at: Some("/before"),
            parent: None,
            tag: true,
        },
        Fixture {
            name: "gitea/push.json",
            provider: Provider::Gitea,
            event: "push",
            body: include_str!("../../tests/fixtures/gitea/push.json").into(),
            app: "repo = \"/r\"\nbranch = \"develop\"",
            repository: "gitea/webhooks",
            names_it: &["/repository/full_name", "/repository"],
            parent_at: Some("/before"),
            parent: Some("28e1879d029cb852e4844d9c718537df08844e03"),
            tag: false,
        },
        Fixture {
            name: "forgejo/push.json",
            provider: Provider::Forgejo,
            event: "push",
            body: include_str!("../../tests/fixtures/forgejo/push.json").into(),
            app: "repo = \"/r\"\nbranch = \"develop\"",
            repository: "forgejo/webhooks",
            names_it: &["/repository/full_name", "/repository"],
            parent_at: Some("/before"),
            parent: Some("28e1879d029cb852e4844d9c718537df08844e03"),
            tag: false,
        },
        Fixture {
            name: "bitbucket-cloud/push.json",
            provider: Provider::Bitbucket,
            event: "repo:push",
            body: include_str!("../../tests/fixtures/bitbucket-cloud/push.json").into(),
            app: "repo = \"/r\"\nbranch = \"name-of-branch\"",
            repository: "team_name/repo_name",
            names_it: &["/repository/full_name", "/repository"],
            parent_at: Some("/push/changes/0/old/target/hash"),
            parent: Some("1e65c05c1d5171631d92438a13901ca7dae9618c"),
            tag: false,
        },
        Fixture {
            name: "bitbucket-server/push.json",
            provider: Provider::Bitbucket,
            event: "repo:refs_changed",
            body: include_str!("../../tests/fixtures/bitbucket-server/push.json").into(),
            app: "repo = \"/r\"\nbranch = \"master\"",
            // `repository.project.key` + `/` + `repository.slug`, as in the clone URL `.../scm/proj/repository.git`.
            repository: "PROJ/repository",
            names_it: &[
                "/repository/project/key",
                "/repository/slug",
                "/repository/project",
                "/repository",
            ],
            parent_at: Some("/changes/0/fromHash"),
            parent: Some("ecddabb624f6f5ba43816f5926e580a5f680a932"),
            tag: false,
        },
    ]
}

/// GitHub's package example names no tag (see its SOURCE.md); with one, it is a version an image app deploys.
fn github_package() -> String {
    let mut v: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/github/package-published.json"))
            .expect("json");
    let version = &mut v["package"]["package_version"];
    version["version"] = format!("sha256:{}", "d".repeat(64)).into();
    version["container_metadata"]["tag"]["name"] = "main".into();
    v.to_string()
}

/// The fixture's app, with `repository` in its webhook section when given.
fn app(f: &Fixture, repository: Option<&str>) -> AppConfig {
    let line = repository.map_or(String::new(), |r| format!("repository = {r:?}\n"));
    let text = format!(
        "state_dir = \"/s\"\n[apps.blog]\n{}\npath = \"/p\"\n[apps.blog.webhook]\nprovider = \"{}\"\nsecret_file = \"/s\"\n{line}",
        f.app,
        f.provider.as_str()
    );
    Config::parse(std::path::Path::new("/x/haul.toml"), &text)
        .expect("config")
        .apps
        .remove("blog")
        .expect("blog")
}

/// `body` signed as the fixture's forge signs it, and evaluated: the request recorded, or the refusal.
fn eval(f: &Fixture, app: &AppConfig, body: &str) -> Result<DeployRequest, Rejected> {
    let now = 1_800_000_000;
    let h = signed(f.provider, f.event, body, now);
    match evaluate(app, f.provider, &[SECRET.to_vec()], &h, body.as_bytes(), now)? {
        Accepted::Deploy(r) | Accepted::Ignore(r, _) => Ok(r),
        other => panic!("{}: recorded nothing: {other:?}", f.name),
    }
}

/// The fixture with the value at `pointer` removed (`None`) or replaced.
fn edited(f: &Fixture, pointer: &str, value: Option<Value>) -> String {
    let mut v: Value = serde_json::from_str(&f.body).expect("json");
    match value {
        Some(value) => *v.pointer_mut(pointer).expect(pointer) = value,
        None => {
            let (parent, key) = pointer.rsplit_once('/').expect(pointer);
            let removed = v
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .and_then(|o| o.remove(key));
            assert!(removed.is_some(), "{}: nothing at {pointer}", f.name);
        }
    }
    v.to_string()
}

#[test]
fn webhook_repository_accepts_the_named_repository_in_any_case_and_refuses_others_and_none() {
    for f in fixtures() {
        let named = f.repository;
        for configured in [named.to_string(), named.to_lowercase(), named.to_uppercase()] {
            let got = eval(&f, &app(&f, Some(&configured)), &f.body);
            assert!(got.is_ok(), "{}: {configured:?} gave {got:?}", f.name);
        }
        let (owner, name) = named.split_once('/').expect("owner/name");
        for other in [
            "someone/else".to_string(),
            format!("{named}-2"),
            format!("{owner}/{name}/sub"),
            format!("x{named}"),
            format!("{owner}/x{name}"),
        ] {
            match eval(&f, &app(&f, Some(&other)), &f.body) {
                Err(Rejected::Malformed(m)) => assert!(
                    m.contains(&format!("{other:?}")) && m.contains(&format!("{named:?}")),
                    "{}: {other:?}: the refusal names both: {m}",
                    f.name
                ),
                got => panic!("{}: configured {other:?}, got {got:?}", f.name),
            }
        }
        for pointer in f.names_it {
            let body = edited(&f, pointer, None);
            match eval(&f, &app(&f, Some(named)), &body) {
                Err(Rejected::Malformed(m)) => assert!(m.contains("names no repository"), "{}: {m}", f.name),
                got => panic!("{} without {pointer}: {got:?}", f.name),
            }
            // Without `repository`, nothing is asked of the payload.
            let got = eval(&f, &app(&f, None), &body);
            assert!(got.is_ok(), "{} without {pointer}: {got:?}", f.name);
        }
        // An empty name is no name.
        if let Some(at) = f.names_it.first() {
            let body = edited(&f, at, Some(json!("")));
            let got = eval(&f, &app(&f, Some(named)), &body);
            assert!(
                matches!(got, Err(Rejected::Malformed(ref m)) if m.contains("names no repository")),
                "{}: {got:?}",
                f.name
            );
        }
    }
}

#[test]
fn each_forge_s_parent_sha_is_carried_validated_and_dropped_for_a_creation_or_a_tag() {
    for f in fixtures() {
        let r = eval(&f, &app(&f, None), &f.body).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!(r.parent.as_deref(), f.parent, "{}", f.name);
    }
    let a40 = "a".repeat(40);
    let b64 = "b".repeat(64);
    let cases: Vec<(Value, Result<Option<&str>, &str>)> = vec![
        (json!(a40), Ok(Some(&a40))),
        (json!(b64), Ok(Some(&b64))),
        (json!("0".repeat(40)), Ok(None)),
        (json!("0".repeat(64)), Ok(None)),
        (Value::Null, Ok(None)),
        (json!("abc"), Err("previous sha")),
        (json!("A".repeat(40)), Err("previous sha")),
        (json!("g".repeat(40)), Err("previous sha")),
        (json!("a".repeat(39)), Err("previous sha")),
        (json!("a".repeat(41)), Err("previous sha")),
        (json!(""), Err("previous sha")),
        (json!("--upload-pack=touch /tmp/pwned"), Err("previous sha")),
        (json!(7), Err("expected shape")),
    ];
    for f in fixtures() {
        let Some(at) = f.parent_at else { continue };
        for (value, want) in &cases {
            let body = edited(&f, at, Some(value.clone()));
            let got = eval(&f, &app(&f, None), &body);
            match (want, got) {
                (Ok(want), Ok(r)) => {
                    let want = if f.tag { None } else { *want };
                    assert_eq!(r.parent.as_deref(), want, "{} {value}", f.name);
                }
                (Err(needle), Err(Rejected::Malformed(m))) => {
                    assert!(m.contains(needle), "{} {value}: {m}", f.name);
                }
                (want, got) => panic!("{} {value}: wanted {want:?}, got {got:?}", f.name),
            }
        }
    }
}

/// Images, Standard Webhooks and registry notifications move no branch, so their requests name no parent.
#[test]
fn triggers_without_a_branch_carry_no_parent() {
    let now = 1_800_000_000;
    let sha = "c".repeat(40);
    let body = format!(
        r#"{{"ref":"refs/heads/main","sha":"{sha}","before":"{}"}}"#,
        "d".repeat(40)
    );
    let git = super::test_support::app_with("");
    let h = signed(Provider::Standard, "", &body, now);
    match evaluate(
        &git,
        Provider::Standard,
        &[SECRET.to_vec()],
        &h,
        body.as_bytes(),
        now,
    ) {
        Ok(Accepted::Deploy(r)) => assert_eq!((r.sha.as_deref(), r.parent), (Some(sha.as_str()), None)),
        other => panic!("standard: {other:?}"),
    }
    let image = super::test_support::image_app("");
    let digest = format!("sha256:{}", "a".repeat(64));
    let body = super::test_support::distribution_body("acme/api", "main", &digest);
    let h = signed(Provider::Distribution, "", &body, now);
    match evaluate(
        &image,
        Provider::Distribution,
        &[SECRET.to_vec()],
        &h,
        body.as_bytes(),
        now,
    ) {
        Ok(Accepted::Deploy(r)) => assert_eq!(r.parent, None),
        other => panic!("distribution: {other:?}"),
    }
}
