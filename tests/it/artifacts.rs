//! Artifacts built in CI, pulled by production with a read-only credential: a real registry
//! (`docker-registry` with htpasswd, pushed to with `skopeo`), a real S3-compatible server (`moto` with IAM
//! enforced and a read-only user), and a real HTTP server. Each trigger deploys; a changed digest redeploys; an
//! unchanged one does not download; every bad artifact (tampered, wrong digest, unsigned, wrongly signed,
//! path traversal) is refused with `current` untouched; revoked credentials are one attempt; 429 opens the
//! circuit.

use std::path::Path;
use std::process::Command;

use haul::model::State;
use serde_json::{json, Value};

use crate::artifact_servers::*;
use crate::support::*;

/// A Standard Webhooks delivery, as a CI job sends it after the upload.
fn ci_hook(h: &Haul, app: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let id = format!("msg_{}", delivery());
    let ts = haul::model::now_ms() / 1000;
    let sig = haul::intake::sign_standard(SECRET.as_bytes(), &id, ts, body.as_bytes());
    let headers = vec![
        ("webhook-id", id),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sig),
    ];
    h.post(&format!("/hooks/{app}"), &headers, body.as_bytes())
}

fn deploy_id(reply: &(u16, Value)) -> String {
    assert!(reply.0 == 202 || reply.0 == 200, "webhook answered {reply:?}");
    reply.1["deploy_id"].as_str().expect("deploy id").to_string()
}

fn read(h: &Haul, file: &str) -> Option<String> {
    std::fs::read_to_string(h.app_path.join("current").join(file)).ok()
}

fn log_of(h: &Haul, id: &str) -> String {
    std::fs::read_to_string(h.state_dir.join("logs").join(format!("{id}.log"))).unwrap_or_default()
}

/// The release directories on disk, and whether anything escaped beside them.
fn assert_untouched(h: &Haul, live: Option<&str>, releases: usize) {
    assert_eq!(h.current().as_deref(), live, "current moved");
    assert_eq!(
        h.releases().len(),
        releases,
        "a release directory was left: {:?}",
        h.releases()
    );
    let srv = h.app_path.parent().expect("srv");
    for evil in ["evil", "outside", "escaped"] {
        assert!(
            !srv.join(evil).exists() && !h.app_path.join(evil).exists(),
            "{evil} escaped"
        );
    }
}

fn minisign_keys(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (pub_key, sec_key) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.key")));
    sh(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pub_key)
        .arg("-s")
        .arg(&sec_key));
    (pub_key, sec_key)
}

fn minisign_sign(sec_key: &Path, file: &Path) {
    sh(Command::new("minisign")
        .args(["-S", "-W", "-s"])
        .arg(sec_key)
        .arg("-m")
        .arg(file));
}

/// A URL app: the artifact is a tarball on a plain HTTP server, named by the commit CI built.
fn url_app(t: &TempDir, server: &FileServer, extra: &str) -> Haul {
    Haul::configure_raw(
        t.path(),
        "web",
        &format!(
            "[apps.web]\nurl = \"{}/builds/web-{{sha}}.tar.gz\"\npath = \"{{SRV}}/web\"\nkeep_releases = 3\nfetch_attempts = 3\n{extra}\n\
             [apps.web.webhook]\nprovider = \"standard\"\nsecret_file = \"{{SECRET}}\"\n",
            server.url
        ),
    )
}

fn publish(root: &Path, sha: &str, files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
    let bytes = tar_gz(files);
    std::fs::create_dir_all(root.join("builds")).expect("mkdir");
    std::fs::write(root.join(format!("builds/web-{sha}.tar.gz")), &bytes).expect("publish");
    let hex = sha256_hex(&bytes);
    (bytes, hex)
}

#[test]
fn a_url_artifact_deploys_pinned_and_a_wrong_digest_or_unsafe_tarball_changes_nothing() {
    let t = TempDir::new("url");
    let root = t.path().join("www");
    std::fs::create_dir_all(&root).expect("mkdir");
    let server = FileServer::start(&root, 0, 1, None);
    let mut h = url_app(&t, &server, "build = [\"test -x bin/run\"]");
    h.start();

    let sha1 = "1".repeat(40);
    std::fs::create_dir_all(root.join("builds")).expect("mkdir");
    // The exec bit travels in the tarball: the build step sees it.
    let bytes = {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data, mode) in [
            ("index.html", &b"v1"[..], 0o644),
            ("bin/run", &b"#!/bin/sh\n"[..], 0o755),
        ] {
            let mut hd = tar::Header::new_gnu();
            hd.set_size(data.len() as u64);
            hd.set_mode(mode);
            hd.set_cksum();
            b.append_data(&mut hd, name, data).expect("tar");
        }
        gzip(&b.into_inner().expect("tar"))
    };
    std::fs::write(root.join(format!("builds/web-{sha1}.tar.gz")), &bytes).expect("publish");
    let hex1 = sha256_hex(&bytes);
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha1, "sha256": hex1}),
    ));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Succeeded, "{row:?}\n{}", log_of(&h, &id));
    assert_eq!(row.sha.as_deref(), Some(sha1.as_str()));
    assert_eq!(row.digest.as_deref(), Some(format!("sha256:{hex1}").as_str()));
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));
    let live = h.current();

    // The same version again: already live, nothing downloaded.
    let before = server.requests().len();
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha1, "sha256": hex1}),
    ));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Ignored, "{row:?}");
    assert_eq!(
        server.requests().len(),
        before,
        "an unchanged artifact was downloaded"
    );

    // A tampered upload: the bytes do not match the digest the trigger pinned.
    let sha2 = "2".repeat(40);
    let (_, hex2) = publish(&root, &sha2, &[("index.html", b"v2")]);
    publish(&root, &sha2, &[("index.html", b"v2 with a backdoor")]);
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha2, "sha256": hex2}),
    ));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("pinned") && reason.contains(&hex2) && reason.contains("permanent"),
        "{reason}"
    );
    assert_untouched(&h, live.as_deref(), 1);
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));

    // Hostile tarballs: each refused while unpacking, nothing written outside, no release left behind.
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("dot-dot", raw_tar(&[RawEntry::File("../evil", b"x")])),
        (
            "absolute",
            raw_tar(&[RawEntry::File("/tmp/haul-it-escaped", b"x")]),
        ),
        (
            "symlink out",
            raw_tar(&[RawEntry::Symlink("link", "../../outside")]),
        ),
        (
            "symlink then write",
            raw_tar(&[RawEntry::Symlink("d", ".."), RawEntry::File("d/evil", b"x")]),
        ),
        ("hardlink out", raw_tar(&[RawEntry::Hardlink("h", "/etc/passwd")])),
    ];
    for (i, (what, tarball)) in hostile.iter().enumerate() {
        let sha = format!("{:x}", 3 + i).repeat(40);
        std::fs::write(root.join(format!("builds/web-{sha}.tar.gz")), tarball).expect("publish");
        let id = deploy_id(&ci_hook(
            &h,
            "web",
            &json!({"ref": "refs/heads/main", "sha": sha}),
        ));
        let row = h.wait_final(&id);
        assert_eq!(row.state, State::Failed, "{what}");
        assert!(
            row.reason
                .as_deref()
                .unwrap_or("")
                .contains("refused while unpacking"),
            "{what}: {row:?}"
        );
        assert_untouched(&h, live.as_deref(), 1);
    }
    assert!(!Path::new("/tmp/haul-it-escaped").exists());
    // Nothing of the downloads stays behind.
    let downloads = h.state_dir.join("downloads/web");
    let left: Vec<_> = std::fs::read_dir(&downloads)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "downloads left: {left:?}");
}

#[test]
fn a_url_artifact_must_carry_a_valid_minisign_signature_when_a_key_is_configured() {
    let t = TempDir::new("url-sig");
    let root = t.path().join("www");
    std::fs::create_dir_all(&root).expect("mkdir");
    let (pub_key, sec_key) = minisign_keys(t.path(), "ci");
    let (_, other_key) = minisign_keys(t.path(), "other");
    let server = FileServer::start(&root, 0, 1, None);
    let mut h = url_app(
        &t,
        &server,
        &format!("verify = {{ minisign_key = \"{}\" }}", pub_key.display()),
    );
    h.start();
    let hook = |sha: &str| {
        deploy_id(&ci_hook(
            &h,
            "web",
            &json!({"ref": "refs/heads/main", "sha": sha}),
        ))
    };

    // Unsigned: refused, and the audit says which key it wanted.
    let sha1 = "a".repeat(40);
    publish(&root, &sha1, &[("index.html", b"unsigned")]);
    let row = h.wait_final(&hook(&sha1));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("not signed") && reason.contains("minisign key"),
        "{reason}"
    );
    assert_eq!(h.current(), None);

    // Signed by another key: refused, naming the key and the digest.
    let sha2 = "b".repeat(40);
    let (_, hex2) = publish(&root, &sha2, &[("index.html", b"wrong key")]);
    minisign_sign(&other_key, &root.join(format!("builds/web-{sha2}.tar.gz")));
    let row = h.wait_final(&hook(&sha2));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("not valid") && reason.contains(&hex2) && reason.contains("minisign key"),
        "{reason}"
    );
    assert_eq!(h.current(), None);

    // A garbage signature: refused.
    let sha3 = "c".repeat(40);
    publish(&root, &sha3, &[("index.html", b"garbage sig")]);
    std::fs::write(
        root.join(format!("builds/web-{sha3}.tar.gz.minisig")),
        "untrusted comment: x\nnot base64!\n",
    )
    .expect("sig");
    assert_eq!(h.wait_final(&hook(&sha3)).state, State::Failed);

    // Signed by the configured key: deployed, and the log says so.
    let sha4 = "d".repeat(40);
    publish(&root, &sha4, &[("index.html", b"signed")]);
    minisign_sign(&sec_key, &root.join(format!("builds/web-{sha4}.tar.gz")));
    let id = hook(&sha4);
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Succeeded, "{row:?}\n{}", log_of(&h, &id));
    assert_eq!(read(&h, "index.html").as_deref(), Some("signed"));
    assert!(log_of(&h, &id).contains("verified"), "{}", log_of(&h, &id));

    // The signed file, tampered with after signing: refused; the signed release stays live.
    let live = h.current();
    let sha5 = "e".repeat(40);
    let file5 = root.join(format!("builds/web-{sha5}.tar.gz"));
    publish(&root, &sha5, &[("index.html", b"good")]);
    minisign_sign(&sec_key, &file5);
    publish(&root, &sha5, &[("index.html", b"evil")]);
    assert_eq!(h.wait_final(&hook(&sha5)).state, State::Failed);
    assert_untouched(&h, live.as_deref(), 1);
}

#[test]
fn a_revoked_token_is_one_attempt_and_a_429_is_waited_out_never_hammered() {
    let t = TempDir::new("url-faults");
    let root = t.path().join("www");
    std::fs::create_dir_all(&root).expect("mkdir");
    let token_file = t.path().join("token");
    write_private(&token_file, "the-right-token");
    // The server wants another token: haul's is refused (a revoked token).
    let server = FileServer::start(&root, 0, 1, Some("a-rotated-token"));
    let mut h = url_app(
        &t,
        &server,
        &format!(
            "url_token_file = \"{}\"\nfetch_attempts = 5",
            token_file.display()
        ),
    );
    // fetch_attempts appears twice otherwise: keep the last.
    let text = std::fs::read_to_string(&h.config)
        .expect("config")
        .replacen("fetch_attempts = 3\n", "", 1);
    std::fs::write(&h.config, text).expect("config");
    h.start();
    let sha = "f".repeat(40);
    publish(&root, &sha, &[("index.html", b"x")]);
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha}),
    ));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("401") && reason.contains("permanent") && reason.contains("not retried"),
        "{reason}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "exactly one request with fetch_attempts = 5: {:?}",
        server.requests()
    );
    assert!(
        !log_of(&h, &id).contains("the-right-token"),
        "the token reached the log"
    );
    drop(h);

    // Always 429 with Retry-After: 1: three attempts in all, each after the circuit closed, then it fails.
    let t2 = TempDir::new("url-429");
    let root2 = t2.path().join("www");
    std::fs::create_dir_all(&root2).expect("mkdir");
    publish(&root2, &sha, &[("index.html", b"x")]);
    let limited = FileServer::start(&root2, -1, 1, None);
    let mut h = url_app(&t2, &limited, "");
    h.start();
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha}),
    ));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("429") && reason.contains("after 3 attempts") && reason.contains("circuit open"),
        "{reason}"
    );
    assert_eq!(
        limited.requests().len(),
        3,
        "one request per attempt: {:?}",
        limited.requests()
    );
    assert!(log_of(&h, &id).contains("circuit open"), "{}", log_of(&h, &id));
}
