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
pub(crate) fn ci_hook(h: &Haul, app: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    h.post(
        &format!("/hooks/{app}"),
        &standard_headers(&body),
        body.as_bytes(),
    )
}

fn deploy_id(reply: &(u16, Value)) -> String {
    assert!(reply.0 == 202 || reply.0 == 200, "webhook answered {reply:?}");
    reply.1["deploy_id"].as_str().expect("deploy id").to_string()
}

pub(crate) fn read(h: &Haul, file: &str) -> Option<String> {
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

pub(crate) fn minisign_keys(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (pub_key, sec_key) = (dir.join(format!("{name}.pub")), dir.join(format!("{name}.key")));
    sh(Command::new("minisign")
        .args(["-G", "-W", "-p"])
        .arg(&pub_key)
        .arg("-s")
        .arg(&sec_key));
    (pub_key, sec_key)
}

pub(crate) fn minisign_sign(sec_key: &Path, file: &Path) {
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

/// A CI webhook for `sha` to the URL app `web`, whose deploy must fail: its id and reason.
fn web_deploy_fails(h: &Haul, sha: &str) -> (String, String) {
    let id = deploy_id(&ci_hook(h, "web", &json!({"ref": "refs/heads/main", "sha": sha})));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed, "{row:?}");
    (id, row.reason.unwrap_or_default())
}

pub(crate) fn publish(root: &Path, sha: &str, files: &[(&str, &[u8])]) -> (Vec<u8>, String) {
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

    // An old, validly signed build copied under a new version's name: the signature's signed comment names
    // the file it was made for, so it is refused.
    let sha6 = "6".repeat(40);
    let old_build = root.join(format!("builds/web-{sha4}.tar.gz"));
    std::fs::copy(&old_build, root.join(format!("builds/web-{sha6}.tar.gz"))).expect("copy");
    std::fs::copy(
        old_build.with_extension("gz.minisig"),
        root.join(format!("builds/web-{sha6}.tar.gz.minisig")),
    )
    .expect("copy sig");
    let row = h.wait_final(&hook(&sha6));
    assert_eq!(row.state, State::Failed);
    assert!(row
        .reason
        .unwrap_or_default()
        .contains("moved to another artifact"));
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
    let (id, reason) = web_deploy_fails(&h, &sha);
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
    let (id, reason) = web_deploy_fails(&h, &sha);
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

#[test]
fn sigkill_during_a_download_leaves_the_last_release_live_and_nothing_behind() {
    let t = TempDir::new("url-kill");
    let root = t.path().join("www");
    std::fs::create_dir_all(&root).expect("mkdir");
    let server = FileServer::start_slow(&root, 80);
    let mut h = url_app(&t, &server, "");
    h.start();
    let sha1 = "1".repeat(40);
    publish(&root, &sha1, &[("index.html", b"v1")]);
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha1}),
    ));
    assert_eq!(h.wait_final(&id).state, State::Succeeded);
    let live = h.current();

    // About 1 MiB that does not compress: some 60 pieces, 80 ms apart.
    let sha2 = "2".repeat(40);
    let noise: Vec<u8> = (0..1024 * 1024).map(|_| fastrand::u8(..)).collect();
    publish(&root, &sha2, &[("index.html", b"v2"), ("big.bin", &noise)]);
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha2}),
    ));
    let downloads = h.state_dir.join("downloads/web").join(&id);
    wait_until("the download is under way", || {
        std::fs::metadata(downloads.join("download")).is_ok_and(|m| m.len() > 64 * 1024)
    });
    h.kill();
    assert_eq!(h.current(), live, "a kill never moves current");
    h.start();
    let row = h.wait_state(&id, State::Interrupted);
    assert!(
        row.release_id.is_none(),
        "killed before a release was chosen: {row:?}"
    );
    assert_untouched(&h, live.as_deref(), 1);
    assert!(!downloads.exists(), "the partial download was left behind");
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));
    // And the next trigger deploys.
    let id = deploy_id(&ci_hook(
        &h,
        "web",
        &json!({"ref": "refs/heads/main", "sha": sha2}),
    ));
    assert_eq!(h.wait_final(&id).state, State::Succeeded);
    assert_eq!(read(&h, "index.html").as_deref(), Some("v2"));
}

/// An image app on a real registry, reading with the `deployer` account; `extra` is added to the app.
fn image_app(t: &TempDir, reg: &Registry, extra: &str, provider: &str) -> Haul {
    let pw = t.path().join("registry.pw");
    write_private(&pw, DEPLOYER.1);
    Haul::configure_raw(
        t.path(),
        "site",
        &format!(
            "[apps.site]\nimage = \"{}/acme/site\"\ntag = \"main\"\nregistry_username = \"{}\"\n\
             registry_password_file = \"{}\"\nplain_http = true\npath = \"{{SRV}}/site\"\nkeep_releases = 3\n{extra}\n\
             [apps.site.webhook]\nprovider = \"{provider}\"\nsecret_file = \"{{SECRET}}\"\n",
            reg.addr(),
            DEPLOYER.0,
            pw.display()
        ),
    )
}

fn blob_gets(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains("GET /v2/acme/site/blobs/"))
        .count()
}

fn layer_digest(reg: &Registry, tag: &str) -> String {
    let m: Value = serde_json::from_slice(&manifest_bytes(reg, "acme/site", tag)).expect("manifest");
    m["layers"][0]["digest"]
        .as_str()
        .expect("layer digest")
        .to_string()
}

#[test]
fn an_image_deploys_by_digest_a_changed_digest_redeploys_and_an_unchanged_one_is_not_pulled() {
    let t = TempDir::new("image");
    let reg = Registry::start(t.path());
    let mut h = image_app(
        &t,
        &reg,
        "poll = \"1s\"\nbuild = [\"test -f index.html\"]",
        "standard",
    );
    let digest1 = push_artifact(
        &reg,
        "acme/site",
        "main",
        &[("index.html", b"v1"), ("assets/app.js", b"js")],
    );
    h.start();
    // CI's webhook names the tag and the digest it pushed. (The poller may get there first: either way one
    // deploy of digest1.)
    let id = deploy_id(&ci_hook(&h, "site", &json!({"tag": "main", "digest": digest1})));
    // Recorded, not only switched: the audit row is final after activate.
    wait_until("digest1 is live and recorded", || {
        h.rows()
            .iter()
            .any(|r| r.state == State::Succeeded && r.digest.as_deref() == Some(digest1.as_str()))
    });
    let rows = h.rows();
    let done: Vec<_> = rows.iter().filter(|r| r.state == State::Succeeded).collect();
    assert_eq!(done.len(), 1, "{rows:#?}");
    assert_eq!(
        done[0].sha.as_deref(),
        Some(digest1.trim_start_matches("sha256:"))
    );
    assert_eq!(done[0].digest.as_deref(), Some(digest1.as_str()));
    assert_eq!(read(&h, "assets/app.js").as_deref(), Some("js"));
    let _ = h.wait_final(&id);

    // Nothing changed: polls (one HEAD each) and a redelivered webhook pull nothing and deploy nothing.
    let (pulled, deploys) = (blob_gets(&reg), h.rows().len());
    std::thread::sleep(std::time::Duration::from_secs(4));
    let id = deploy_id(&ci_hook(&h, "site", &json!({"tag": "main", "digest": digest1})));
    assert_eq!(h.wait_final(&id).state, State::Ignored);
    assert_eq!(blob_gets(&reg), pulled, "an unchanged digest was pulled");
    assert_eq!(
        h.rows().len(),
        deploys + 1,
        "only the redelivered webhook was recorded"
    );
    assert!(
        reg.log().contains("HEAD /v2/acme/site/manifests/main"),
        "polls ask with HEAD"
    );

    // A new push: the poll sees the new digest and deploys it, without any webhook.
    let digest2 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"v2")]);
    wait_until("digest2 is live and recorded", || {
        h.rows()
            .iter()
            .any(|r| r.state == State::Succeeded && r.digest.as_deref() == Some(digest2.as_str()))
    });
    assert_eq!(read(&h, "index.html").as_deref(), Some("v2"));
    let rows = h.rows();
    let newest = rows
        .iter()
        .find(|r| r.state == State::Succeeded)
        .expect("a success");
    assert_eq!(newest.digest.as_deref(), Some(digest2.as_str()));
    assert_eq!(newest.trigger, haul::model::Trigger::Poll);
    assert!(
        !h.app_path.join("current/assets").exists(),
        "a release is the artifact, not a merge"
    );

    // An old delivery replayed with a fresh id: the tag has moved on, so it is ignored, not rolled back to.
    let id = deploy_id(&ci_hook(&h, "site", &json!({"tag": "main", "digest": digest1})));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Ignored, "{row:?}");
    assert!(row.reason.unwrap_or_default().contains("now points at"));
    assert_eq!(read(&h, "index.html").as_deref(), Some("v2"));

    // A person may still roll back, by release.
    let out = h.cli(&["rollback", "site"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));

    // The rollback is sticky (issue 12): a trigger for the digest it took away, though the tag still points at
    // it, is ignored before anything is pulled.
    let id = deploy_id(&ci_hook(&h, "site", &json!({"tag": "main", "digest": digest2})));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Ignored, "{row:?}");
    assert!(row.reason.unwrap_or_default().contains("rollback"));
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));
}

#[test]
fn the_registrys_own_notification_deploys_and_a_container_image_is_pinned_by_digest() {
    let t = TempDir::new("image-notify");
    let port = free_port();
    let reg = Registry::start_with_notify(t.path(), &format!("http://127.0.0.1:{port}/hooks/site"), SECRET);
    let mut h = image_app(
        &t,
        &reg,
        "image_kind = \"container\"\nactivate = [\"printf '%s' \\\"$HAUL_IMAGE\\\" > ../../pinned\"]",
        "distribution",
    );
    let text = std::fs::read_to_string(&h.config).expect("config");
    let text = text.replace(&format!("127.0.0.1:{}", h.port), &format!("127.0.0.1:{port}"));
    std::fs::write(&h.config, text).expect("config");
    h.port = port;
    h.start();
    let digest = push_artifact(&reg, "acme/site", "main", &[("index.html", b"container")]);
    wait_until("the notified push is live", || {
        h.rows().iter().any(|r| r.state == State::Succeeded)
    });
    let rows = h.rows();
    let row = rows
        .iter()
        .find(|r| r.state == State::Succeeded)
        .expect("success");
    assert_eq!(row.provider.as_deref(), Some("distribution"));
    assert_eq!(row.actor, PUSHER.0);
    assert_eq!(row.digest.as_deref(), Some(digest.as_str()));
    let pinned = std::fs::read_to_string(h.app_path.join("pinned")).expect("activate ran");
    assert_eq!(pinned, format!("{}/acme/site@{digest}", reg.addr()));
    // A container image's layers are the container runtime's business: haul pulled none.
    assert_eq!(blob_gets(&reg), 0, "{}", reg.log());
    // haul's own manifest fetches make the registry notify `pull` events: answered, never recorded.
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        h.rows()
            .iter()
            .all(|r| r.provider.as_deref() == Some("distribution")),
        "{:#?}",
        h.rows()
    );
    assert_eq!(h.rows().len(), 1, "{:#?}", h.rows());
}

#[test]
fn tampered_unsigned_or_wrongly_signed_images_are_refused_and_a_revoked_account_is_one_attempt() {
    let t = TempDir::new("image-bad");
    let mut reg = Registry::start(t.path());
    let (pub_key, sec_key) = minisign_keys(t.path(), "ci");
    let (_, other_key) = minisign_keys(t.path(), "other");
    let mut h = image_app(
        &t,
        &reg,
        &format!(
            "fetch_attempts = 5\nverify = {{ minisign_key = \"{}\" }}",
            pub_key.display()
        ),
        "standard",
    );
    h.start();
    let hook = |d: &str| deploy_id(&ci_hook(&h, "site", &json!({"tag": "main", "digest": d})));
    let sign_and_push = |digest: &str, key: &Path| {
        let manifest = t.path().join("manifest.json");
        std::fs::write(&manifest, manifest_bytes(&reg, "acme/site", digest)).expect("manifest");
        minisign_sign(key, &manifest);
        let sig = std::fs::read(t.path().join("manifest.json.minisig")).expect("sig");
        let tag = format!("sha256-{}.minisig", digest.trim_start_matches("sha256:"));
        push_raw_layer(
            &reg,
            "acme/site",
            &tag,
            &sig,
            "application/vnd.haul.minisign.signature",
        );
    };

    // Unsigned: refused, naming the key wanted.
    let d1 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"unsigned")]);
    let row = h.wait_final(&hook(&d1));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("not signed") && reason.contains("minisign key"),
        "{reason}"
    );

    // Signed by another key: refused, naming key and digest.
    sign_and_push(&d1, &other_key);
    let row = h.wait_final(&hook(&d1));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(reason.contains("not valid") && reason.contains(&d1), "{reason}");
    assert_eq!(h.current(), None);

    // Signed properly: deployed.
    let d2 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"signed")]);
    sign_and_push(&d2, &sec_key);
    let id = hook(&d2);
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Succeeded, "{row:?}\n{}", log_of(&h, &id));
    assert!(log_of(&h, &id).contains("verified"));
    let live = h.current();

    // Signed, then its layer tampered with in the registry's storage: the bytes do not match the manifest.
    let d3 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"to be tampered")]);
    sign_and_push(&d3, &sec_key);
    tamper_blob(&reg, &layer_digest(&reg, "main"));
    let row = h.wait_final(&hook(&d3));
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("digest") && reason.contains("permanent"),
        "{reason}"
    );
    assert_untouched(&h, live.as_deref(), 1);

    // A path-traversal layer, signed by the right key: the signature vouches for the bytes, not their safety.
    let evil = gzip(&raw_tar(&[RawEntry::File("../../evil", b"x")]));
    let d4 = push_raw_layer(&reg, "acme/site", "main", &evil, OCI_LAYER_GZIP);
    sign_and_push(&d4, &sec_key);
    let row = h.wait_final(&hook(&d4));
    assert_eq!(row.state, State::Failed);
    assert!(row.reason.unwrap_or_default().contains("refused while unpacking"));
    assert_untouched(&h, live.as_deref(), 1);

    // The deployer account revoked: refused once, never retried (fetch_attempts = 5).
    reg.restart_with_users(&[PUSHER]);
    let d5 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"after revocation")]);
    let before = reg
        .log()
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 - -") && l.contains("/v2/acme/site/manifests/main"))
        .count();
    let id = hook(&d5);
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("refused haul's credentials") && reason.contains("not retried"),
        "{reason}"
    );
    let asked = reg
        .log()
        .lines()
        .filter(|l| l.starts_with("127.0.0.1 - -") && l.contains("/v2/acme/site/manifests/main"))
        .count()
        - before;
    assert!(
        asked <= 2,
        "one attempt (a HEAD, and the client's retry with credentials): {asked}"
    );
    assert!(!log_of(&h, &id).contains("attempt 2"), "{}", log_of(&h, &id));
    assert!(
        !log_of(&h, &id).contains(DEPLOYER.1),
        "the password reached the log"
    );
    assert_untouched(&h, live.as_deref(), 1);
}

#[test]
fn a_registry_answering_429_opens_the_circuit_and_nothing_hammers_it() {
    let t = TempDir::new("image-429");
    let root = t.path().join("empty");
    std::fs::create_dir_all(&root).expect("mkdir");
    let limited = FileServer::start(&root, -1, 30, None);
    let addr = limited.url.trim_start_matches("http://").to_string();
    let mut h = Haul::configure_raw(
        t.path(),
        "site",
        &format!(
            "[apps.site]\nimage = \"{addr}/acme/site\"\ntag = \"main\"\nplain_http = true\npath = \"{{SRV}}/site\"\nfetch_attempts = 1\n\
             [apps.site.webhook]\nprovider = \"standard\"\nsecret_file = \"{{SECRET}}\"\n"
        ),
    );
    h.start();
    let id = deploy_id(&ci_hook(&h, "site", &json!({"tag": "main"})));
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("429") && reason.contains("rate-limited"),
        "{reason}"
    );
    let asked = limited.requests().len();
    assert!((1..=2).contains(&asked), "one attempt: {:?}", limited.requests());
    // The next trigger waits for the circuit instead of asking again.
    let id = deploy_id(&ci_hook(&h, "site", &json!({"tag": "main"})));
    wait_until("the second deploy waits on the circuit", || {
        log_of(&h, &id).contains("circuit open")
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        limited.requests().len(),
        asked,
        "asked again while the circuit was open"
    );
}

/// An object app on a real S3-compatible server, with the read-only `deployer` keys.
fn object_app(t: &TempDir, s3: &S3, key: &str, extra: &str) -> Haul {
    let (id, secret) = s3.deployer_keys();
    let (id_file, secret_file) = (t.path().join("s3.id"), t.path().join("s3.secret"));
    write_private(&id_file, &id);
    write_private(&secret_file, &secret);
    Haul::configure_raw(
        t.path(),
        "api",
        &format!(
            "[apps.api]\nobject = \"s3://{}/{key}\"\ns3_endpoint = \"{}\"\ns3_region = \"{}\"\n\
             s3_access_key_id_file = \"{}\"\ns3_secret_access_key_file = \"{}\"\npath = \"{{SRV}}/api\"\nkeep_releases = 3\n{extra}\n\
             [apps.api.webhook]\nprovider = \"standard\"\nsecret_file = \"{{SECRET}}\"\n",
            s3.bucket(),
            s3.endpoint(),
            s3.region(),
            id_file.display(),
            secret_file.display()
        ),
    )
}

fn object_gets(s3: &S3, key: &str) -> usize {
    s3.log()
        .lines()
        .filter(|l| l.contains("GET") && l.contains(key))
        .count()
}

#[test]
fn an_object_deploys_with_read_only_keys_only_a_changed_digest_redeploys_and_revoked_keys_are_one_attempt() {
    let t = TempDir::new("s3");
    let s3 = S3::start(t.path());
    let mut h = object_app(&t, &s3, "builds/api-{sha}.tar.gz", "fetch_attempts = 5");
    h.start();
    let (sha1, sha2) = ("1".repeat(40), "2".repeat(40));
    let v1 = tar_gz(&[("index.html", b"v1")]);
    let v2 = tar_gz(&[("index.html", b"v2")]);
    s3.put_all(&[
        (&format!("builds/api-{sha1}.tar.gz"), &v1),
        (&format!("builds/api-{sha2}.tar.gz"), &v2),
    ]);
    let hook = |sha: &str, bytes: &[u8]| {
        deploy_id(&ci_hook(
            &h,
            "api",
            &json!({"ref": "refs/heads/main", "sha": sha, "sha256": sha256_hex(bytes)}),
        ))
    };

    let id = hook(&sha1, &v1);
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Succeeded, "{row:?}\n{}", log_of(&h, &id));
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));
    assert_eq!(row.digest, Some(sha256_digest(&v1)));

    // The same version and digest again: nothing downloaded.
    let before = object_gets(&s3, &sha1);
    assert_eq!(h.wait_final(&hook(&sha1, &v1)).state, State::Ignored);
    assert_eq!(
        object_gets(&s3, &sha1),
        before,
        "an unchanged object was downloaded"
    );

    // The next version deploys; a digest the object does not have is refused.
    assert_eq!(h.wait_final(&hook(&sha2, &v2)).state, State::Succeeded);
    assert_eq!(read(&h, "index.html").as_deref(), Some("v2"));
    let live = h.current();
    // The first version's trigger again (a replay with a fresh id, or a late delivery): not taken back to.
    let row = h.wait_final(&hook(&sha1, &v1));
    assert_eq!(row.state, State::Ignored);
    assert!(row.reason.unwrap_or_default().contains("went live before"));
    // A digest the object does not have: refused.
    let sha5 = "5".repeat(40);
    s3.put(&format!("builds/api-{sha5}.tar.gz"), &v2);
    let row = h.wait_final(&hook(&sha5, &v1));
    assert_eq!(row.state, State::Failed);
    assert!(row.reason.unwrap_or_default().contains("pinned"));
    // A version that was never uploaded: permanent, one request.
    let missing = "3".repeat(40);
    let row = h.wait_final(&hook(&missing, &v2));
    assert_eq!(row.state, State::Failed);
    assert!(row.reason.unwrap_or_default().contains("does not exist"));
    assert_untouched(&h, live.as_deref(), 2);

    // The deployer's key revoked: refused at once, never retried.
    s3.revoke_deployer();
    let sha4 = "4".repeat(40);
    s3.put(&format!("builds/api-{sha4}.tar.gz"), &v1);
    let id = hook(&sha4, &v1);
    let row = h.wait_final(&id);
    assert_eq!(row.state, State::Failed);
    let reason = row.reason.unwrap_or_default();
    assert!(
        reason.contains("refused haul's keys") && reason.contains("not retried"),
        "{reason}"
    );
    assert_eq!(
        object_gets(&s3, &sha4),
        1,
        "exactly one request with fetch_attempts = 5"
    );
    let (_, secret) = s3.deployer_keys();
    assert!(
        !log_of(&h, &id).contains(&secret),
        "the secret key reached the log"
    );
    assert_untouched(&h, live.as_deref(), 2);
}

#[test]
fn a_polled_object_redeploys_only_when_it_changes_and_must_be_signed_when_a_key_is_set() {
    let t = TempDir::new("s3-poll");
    let s3 = S3::start(t.path());
    let (pub_key, sec_key) = minisign_keys(t.path(), "ci");
    let mut h = object_app(
        &t,
        &s3,
        "latest/api.tar.gz",
        &format!(
            "poll = \"1s\"\nverify = {{ minisign_key = \"{}\" }}",
            pub_key.display()
        ),
    );
    let signed = |content: &[u8]| {
        let bytes = tar_gz(&[("index.html", content)]);
        let file = t.path().join("api.tar.gz");
        std::fs::write(&file, &bytes).expect("write");
        minisign_sign(&sec_key, &file);
        let sig = std::fs::read(t.path().join("api.tar.gz.minisig")).expect("sig");
        (bytes, sig)
    };
    let (b1, s1) = signed(b"v1");
    s3.put_all(&[("latest/api.tar.gz", &b1), ("latest/api.tar.gz.minisig", &s1)]);
    h.start();
    wait_until("v1 is live", || read(&h, "index.html").as_deref() == Some("v1"));
    let deploys = h.rows().len();
    let gets = object_gets(&s3, "latest/api.tar.gz");
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(
        h.rows().len(),
        deploys,
        "an unchanged object was deployed again: {:#?}",
        h.rows()
    );
    assert_eq!(
        object_gets(&s3, "latest/api.tar.gz"),
        gets,
        "an unchanged object was downloaded"
    );

    // Replaced without a signature: the poll notices, the deploy refuses it.
    let unsigned = tar_gz(&[("index.html", b"unsigned")]);
    s3.put_all(&[("latest/api.tar.gz", &unsigned)]);
    s3.delete("latest/api.tar.gz.minisig");
    // (A poll between the two writes sees the old signature over new bytes: "not valid". Either way, refused.)
    wait_until("the unsigned object is refused", || {
        h.rows().iter().any(|r| {
            let reason = r.reason.as_deref().unwrap_or("");
            r.state == State::Failed && (reason.contains("not signed") || reason.contains("not valid"))
        })
    });
    assert_eq!(read(&h, "index.html").as_deref(), Some("v1"));

    // Signed again: deployed.
    let (b2, s2) = signed(b"v2");
    s3.put_all(&[("latest/api.tar.gz.minisig", &s2), ("latest/api.tar.gz", &b2)]);
    wait_until("v2 is live", || read(&h, "index.html").as_deref() == Some("v2"));
}
