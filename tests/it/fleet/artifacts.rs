//! Artifact apps in a fleet: one download from the upstream per release, whatever the number of hosts; each
//! host checks the package the conductor put in the engine again (digest, its own signature key) and refuses
//! one that does not hold; a fleet rollback rolls the package out again with no download.

use serde_json::json;

use super::*;
use crate::artifact_servers::{push_artifact, sha256_digest, tar_gz, Registry, DEPLOYER};
use crate::artifacts::{ci_hook, minisign_keys, minisign_sign, publish, read};

/// Host `host` of a fleet whose app `web` is a signed tarball on `server`, named by the commit CI built.
fn url_host(
    dir: &std::path::Path,
    cluster: &NatsCluster,
    server: &FileServer,
    host: &str,
    key: &std::path::Path,
) -> Haul {
    let text = format!(
        "[fleet]\nnats = {}\nhost = \"{host}\"\nlease_ttl = \"10s\"\n\n\
         [apps.web]\nurl = \"{}/builds/web-{{sha}}.tar.gz\"\npath = \"{{SRV}}/web\"\nfleet = true\nfetch_attempts = 2\n\
         verify = {{ minisign_key = \"{}\" }}\n\n\
         [apps.web.webhook]\nprovider = \"standard\"\nsecret_file = \"{{SECRET}}\"\n\n\
         [apps.web.rollout]\ncanary = 1\nmax_parallel = 2\n",
        cluster.toml_list(),
        server.url,
        key.display()
    );
    let mut h = Haul::configure_raw(&dir.join(host), "web", &text);
    h.start();
    h
}

/// How many times the upstream served a file whose path contains `what`.
fn gets(server: &FileServer, what: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|l| l.starts_with("GET ") && l.contains(what))
        .count()
}

fn signed(root: &std::path::Path, key: &std::path::Path, sha: &str, html: &str) -> String {
    let (_, hex) = publish(root, sha, &[("index.html", html.as_bytes())]);
    minisign_sign(key, &root.join(format!("builds/web-{sha}.tar.gz")));
    hex
}

/// Puts a package into the engine by hand, as someone holding NATS credentials could.
fn forge_package(
    rt: &tokio::runtime::Runtime,
    cluster: &NatsCluster,
    sha: &str,
    digest: &str,
    files: &[(&str, Vec<u8>)],
) {
    rt.block_on(async {
        let client = async_nats::connect(cluster.urls()[0].as_str())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        let store = js
            .get_object_store(haul::fleet::RELEASES_STORE)
            .await
            .expect("store");
        for (name, bytes) in files {
            store
                .put(format!("web/{sha}/{name}").as_str(), &mut bytes.as_slice())
                .await
                .expect("put");
        }
        let listed: Vec<(String, u64)> = files
            .iter()
            .map(|(n, b)| (n.to_string(), b.len() as u64))
            .collect();
        let descriptor = serde_json::to_vec(&json!({"digest": digest, "files": listed})).expect("json");
        store
            .put(
                format!("web/{sha}.package.json").as_str(),
                &mut descriptor.as_slice(),
            )
            .await
            .expect("put");
    });
}

/// What every host said when it refused the forged `rollout`. The assignment is written again until each
/// host has recorded it: the real conductor puts its own back over it whenever it looks.
fn refused_everywhere(
    rt: &tokio::runtime::Runtime,
    cluster: &NatsCluster,
    hosts: &[Haul],
    rollout: &str,
    sha: &str,
    digest: &str,
    epoch: u64,
) -> Vec<String> {
    let a = haul::fleet::Assignment {
        rollout: rollout.into(),
        sha: sha.into(),
        git_ref: String::new(),
        bundle: format!("web/{sha}.package.json"),
        digest: Some(digest.into()),
        epoch,
        actor: "mallory".into(),
        revert: false,
        from: Some(haul::fleet::Proposal {
            app: "web".into(),
            origin: "mallory".into(),
            deploy_id: rollout.into(),
            trigger: "manual".into(),
            git_ref: None,
            sha: Some(sha.into()),
            digest: None,
            actor: "mallory".into(),
            provider: None,
            delivery_id: None,
            requested_ms: haul::model::now_ms(),
            signed: None,
            rolls_back: None,
        }),
    };
    let bytes = serde_json::to_vec(&a).expect("json");
    let kv = rt.block_on(async {
        let client = async_nats::connect(cluster.urls()[0].as_str())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        js.get_key_value(haul::fleet::FLEET_BUCKET).await.expect("kv")
    });
    let mut why = vec![String::new(); hosts.len()];
    wait_until("every host refused the package", || {
        let mut all = true;
        for (i, h) in hosts.iter().enumerate() {
            if !why[i].is_empty() {
                continue;
            }
            let row = h
                .rows()
                .into_iter()
                .find(|r| r.delivery_id.as_deref() == Some(rollout) && r.state.is_final());
            match row {
                Some(r) => {
                    assert_eq!(r.state, haul::model::State::Failed, "{r:?}");
                    why[i] = r.reason.clone().unwrap_or_else(|| "-".into());
                }
                None => {
                    all = false;
                    let key = format!("assign.web.h{}", i + 1);
                    rt.block_on(kv.put(key, bytes.clone().into())).expect("put");
                }
            }
        }
        if !all {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        all
    });
    why
}

#[test]
fn a_signed_tarball_rolls_out_from_one_download_and_every_host_checks_the_package_itself() {
    let dir = TempDir::new("fleet-url");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).expect("mkdir");
    let server = FileServer::start(&root, 0, 1, None);
    let (pub_key, sec_key) = minisign_keys(dir.path(), "ci");
    let (_, other_key) = minisign_keys(dir.path(), "other");
    let hosts: Vec<Haul> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| url_host(dir.path(), &cluster, &server, h, &pub_key))
        .collect();
    wait_reporting(&hosts[0], 3);

    // One signed CI webhook to one host: every host live on it, from one download of the tarball and its
    // signature.
    let (sha1, sha2) = ("1".repeat(40), "2".repeat(40));
    let hex1 = signed(&root, &sec_key, &sha1, "v1");
    let hook1 = json!({"ref": "refs/heads/main", "sha": sha1});
    let (code, reply) = ci_hook(&hosts[1], "web", &hook1);
    assert_eq!(code, 202, "{reply}");
    wait_until("v1 on every host", || {
        all_live(&fleet_status(&hosts[0]), 3, &sha1, "done")
    });
    let status = fleet_status(&hosts[0]);
    assert_eq!(
        status["apps"][0]["rollout"]["digest"],
        format!("sha256:{hex1}"),
        "{status}"
    );
    let text = String::from_utf8_lossy(&hosts[2].cli(&["fleet", "status"]).stdout).to_string();
    assert!(text.contains(&format!("artifact: sha256:{hex1}")), "{text}");
    for h in &hosts {
        assert_eq!(read(h, "index.html").as_deref(), Some("v1"));
    }
    assert_eq!(
        gets(&server, &format!("web-{sha1}.tar.gz ")),
        1,
        "{:?}",
        server.requests()
    );
    assert_eq!(
        gets(&server, &format!("web-{sha1}.tar.gz.minisig")),
        1,
        "{:?}",
        server.requests()
    );
    for h in &hosts {
        let row = h
            .rows()
            .into_iter()
            .find(|r| r.trigger == haul::model::Trigger::Fleet)
            .expect("row");
        assert_eq!(row.digest.as_deref(), Some(format!("sha256:{hex1}").as_str()));
        let log = String::from_utf8_lossy(&h.cli(&["logs", row.id.as_str()]).stdout).to_string();
        assert!(
            log.contains("signature by minisign key") && log.contains("verified"),
            "{log}"
        );
    }

    // The same webhook again (a fresh delivery id): nothing downloaded, nothing rolled out.
    let rollout = fleet_status(&hosts[0])["apps"][0]["rollout"]["id"].clone();
    let (code, reply) = ci_hook(&hosts[2], "web", &hook1);
    assert!(code == 200 || code == 202, "{code} {reply}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(fleet_status(&hosts[0])["apps"][0]["rollout"]["id"], rollout);
    assert_eq!(
        gets(&server, "web-"),
        2,
        "a replay downloads nothing: {:?}",
        server.requests()
    );

    // Packages written into the engine by hand: a tarball signed by another key, and a tarball whose bytes
    // are not the digest the assignment names. Every host refuses both; v1 stays live everywhere.
    let epoch = fleet_status(&hosts[0])["apps"][0]["rollout"]["epoch"]
        .as_u64()
        .expect("epoch");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let evil = tar_gz(&[("index.html", b"evil")]);
    let evil_file = dir.path().join("evil.tar.gz");
    std::fs::write(&evil_file, &evil).expect("write");
    minisign_sign(&other_key, &evil_file);
    let evil_sig = std::fs::read(dir.path().join("evil.tar.gz.minisig")).expect("sig");
    let evil_digest = sha256_digest(&evil);
    let sha3 = "3".repeat(40);
    forge_package(
        &rt,
        &cluster,
        &sha3,
        &evil_digest,
        &[("download", evil.clone()), ("signature", evil_sig)],
    );
    for why in refused_everywhere(&rt, &cluster, &hosts, "forged-1", &sha3, &evil_digest, epoch) {
        assert!(
            why.contains("package was refused") && why.contains("not valid"),
            "{why}"
        );
    }
    let real_sig = std::fs::read(root.join(format!("builds/web-{sha1}.tar.gz.minisig"))).expect("sig");
    let sha4 = "4".repeat(40);
    let digest1 = format!("sha256:{hex1}");
    forge_package(
        &rt,
        &cluster,
        &sha4,
        &digest1,
        &[("download", evil), ("signature", real_sig)],
    );
    for why in refused_everywhere(&rt, &cluster, &hosts, "forged-2", &sha4, &digest1, epoch) {
        assert!(why.contains("hashes to") && why.contains("tampered"), "{why}");
    }
    // An assignment naming a package the engine does not have: refused once, never fetched in a loop.
    let sha6 = "6".repeat(40);
    for why in refused_everywhere(&rt, &cluster, &hosts, "forged-3", &sha6, &digest1, epoch) {
        assert!(why.contains("not in the fleet's engine"), "{why}");
    }
    for h in &hosts {
        assert_eq!(read(h, "index.html").as_deref(), Some("v1"), "v1 stays live");
    }
    assert_eq!(
        gets(&server, "web-"),
        2,
        "nothing downloaded for a forged package"
    );

    // A real release, then `haul fleet rollback`: v1 comes back from the package the engine kept, with no
    // download.
    signed(&root, &sec_key, &sha2, "v2");
    let (code, reply) = ci_hook(&hosts[0], "web", &json!({"ref": "refs/heads/main", "sha": sha2}));
    assert_eq!(code, 202, "{reply}");
    wait_until("v2 on every host", || {
        all_live(&fleet_status(&hosts[0]), 3, &sha2, "done")
    });
    assert_eq!(gets(&server, "web-"), 4);
    let out = hosts[2].cli(&["fleet", "rollback", "web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("v1 back on every host", || {
        all_live(&fleet_status(&hosts[0]), 3, &sha1, "done")
    });
    for h in &hosts {
        assert_eq!(read(h, "index.html").as_deref(), Some("v1"));
    }
    assert_eq!(
        gets(&server, "web-"),
        4,
        "a rollback downloads nothing: {:?}",
        server.requests()
    );
    // Sticky: the v2 webhook again does not undo the rollback.
    let (code, reply) = ci_hook(&hosts[1], "web", &json!({"ref": "refs/heads/main", "sha": sha2}));
    assert!(code == 200 || code == 202, "{code} {reply}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(all_live(&fleet_status(&hosts[0]), 3, &sha1, "done"));
    assert_eq!(gets(&server, "web-"), 4);

    // An unsigned build: the conductor refuses it after its one download (never retried), says why in the
    // status, and no host is touched.
    let sha5 = "5".repeat(40);
    publish(&root, &sha5, &[("index.html", b"unsigned")]);
    let (code, reply) = ci_hook(&hosts[0], "web", &json!({"ref": "refs/heads/main", "sha": sha5}));
    assert_eq!(code, 202, "{reply}");
    let mut status = serde_json::Value::Null;
    wait_until("the conductor refused the unsigned build", || {
        status = fleet_status(&hosts[1]);
        status["apps"][0]["rollout"]["refused"]
            .as_str()
            .is_some_and(|r| r.contains("not signed"))
    });
    assert!(all_live(&status, 3, &sha1, "done"), "{status}");
    assert_eq!(
        gets(&server, &format!("web-{sha5}.tar.gz ")),
        1,
        "{:?}",
        server.requests()
    );
    for h in &hosts {
        assert_eq!(read(h, "index.html").as_deref(), Some("v1"));
    }
}

/// Host `host` of a fleet whose app `site` is an OCI artifact tagged `main`, told of pushes by the
/// registry's own notifications (a bearer token, which signs nothing and never leaves the host it reached).
fn image_host(
    dir: &std::path::Path,
    cluster: &NatsCluster,
    reg: &Registry,
    host: &str,
    port: Option<u16>,
) -> Haul {
    let pw = dir.join("registry.pw");
    write_private(&pw, DEPLOYER.1);
    let text = format!(
        "[fleet]\nnats = {}\nhost = \"{host}\"\nlease_ttl = \"10s\"\n\n\
         [apps.site]\nimage = \"{}/acme/site\"\ntag = \"main\"\nregistry_username = \"{}\"\n\
         registry_password_file = \"{}\"\nplain_http = true\npath = \"{{SRV}}/site\"\nfleet = true\n\n\
         [apps.site.webhook]\nprovider = \"distribution\"\nsecret_file = \"{{SECRET}}\"\n\n\
         [apps.site.rollout]\ncanary = 1\nmax_parallel = 2\n",
        cluster.toml_list(),
        reg.addr(),
        DEPLOYER.0,
        pw.display()
    );
    let mut h = Haul::configure_raw(&dir.join(host), "site", &text);
    if let Some(port) = port {
        let text = std::fs::read_to_string(&h.config).expect("config");
        let text = text.replace(&format!("127.0.0.1:{}", h.port), &format!("127.0.0.1:{port}"));
        std::fs::write(&h.config, text).expect("config");
        h.port = port;
    }
    h.start();
    h
}

fn blob_gets(reg: &Registry) -> usize {
    reg.log()
        .lines()
        .filter(|l| l.contains("GET /v2/acme/site/blobs/"))
        .count()
}

/// A registry's push notification for `digest` of tag `main`, as the registry sends it.
fn notification(digest: &str) -> String {
    json!({"events": [{
        "id": format!("replayed-{}", delivery()),
        "action": "push",
        "target": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "repository": "acme/site",
            "tag": "main"
        },
        "actor": {"name": "ci"}
    }]})
    .to_string()
}

#[test]
fn an_image_rolls_out_from_one_pull_and_an_old_notification_changes_nothing() {
    let dir = TempDir::new("fleet-image");
    let cluster = NatsCluster::start(&dir.path().join("nats"));
    let port = free_port();
    let reg = Registry::start_with_notify(dir.path(), &format!("http://127.0.0.1:{port}/hooks/site"), SECRET);
    let hosts: Vec<Haul> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| image_host(dir.path(), &cluster, &reg, h, (*h == "h2").then_some(port)))
        .collect();
    wait_reporting(&hosts[0], 3);

    // The registry tells h2; the conductor pulls the manifest and the layer once; every host checks the
    // package against the digest and the manifest's layer digest, and is live on it.
    let d1 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"one")]);
    let hex1 = d1.trim_start_matches("sha256:").to_string();
    wait_until("v1 on every host", || {
        all_live(&fleet_status(&hosts[0]), 3, &hex1, "done")
    });
    assert_eq!(
        blob_gets(&reg),
        1,
        "one layer pull for three hosts: {}",
        reg.log()
    );
    for h in &hosts {
        assert_eq!(read(h, "index.html").as_deref(), Some("one"));
        let row = h
            .rows()
            .into_iter()
            .find(|r| r.trigger == haul::model::Trigger::Fleet)
            .expect("row");
        assert_eq!(row.digest.as_deref(), Some(d1.as_str()));
        assert_eq!(row.git_ref.as_deref(), Some("refs/tags/main"));
        let log = String::from_utf8_lossy(&h.cli(&["logs", row.id.as_str()]).stdout).to_string();
        assert!(log.contains("1 layer(s) match the manifest"), "{log}");
    }

    let d2 = push_artifact(&reg, "acme/site", "main", &[("index.html", b"two")]);
    let hex2 = d2.trim_start_matches("sha256:").to_string();
    wait_until("v2 on every host", || {
        all_live(&fleet_status(&hosts[0]), 3, &hex2, "done")
    });
    assert_eq!(blob_gets(&reg), 2, "{}", reg.log());
    let rollout = fleet_status(&hosts[0])["apps"][0]["rollout"]["id"].clone();
    let manifests = reg.log().lines().filter(|l| l.contains("/manifests/")).count();

    // v1's notification again, with a fresh id, to another host: the tag no longer points at it. Nothing
    // pulled, nothing rolled out.
    let body = notification(&d1);
    let auth = format!("Bearer {SECRET}");
    let (code, reply) = hosts[0].post(
        "/hooks/site",
        &[("authorization", auth.as_str())],
        body.as_bytes(),
    );
    assert!(code == 200 || code == 202, "{code} {reply}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let status = fleet_status(&hosts[0]);
    assert_eq!(status["apps"][0]["rollout"]["id"], rollout, "{status}");
    assert!(all_live(&status, 3, &hex2, "done"), "{status}");
    assert_eq!(
        blob_gets(&reg),
        2,
        "an old notification pulls nothing: {}",
        reg.log()
    );
    let looks = reg.log().lines().filter(|l| l.contains("/manifests/")).count();
    assert_eq!(looks, manifests, "nor asks the registry anything: {}", reg.log());
}
