//! Real artifact servers on loopback for haul's artifact-source tests: a `docker-registry` (distribution
//! 2.8) with htpasswd auth and webhook notifications, pushed to with `skopeo`, and a `moto_server` S3 with
//! IAM enforced. Each listens on 127.0.0.1 on a free port, keeps its files and logs (`*.log`, appended across
//! restarts) in a directory the caller owns, and is SIGKILLed and reaped when dropped. Nothing here sends
//! traffic anywhere but 127.0.0.1. Needs: docker-registry, skopeo, apache2-utils (htpasswd), `python3` with
//! `moto[server]` (boto3 comes with it); `HAUL_TEST_PYTHON` overrides the interpreter.
//!
//! Facts these fixtures rely on (checked with docker-registry 2.8.2, skopeo 1.9.3, moto 5.2.1):
//! - The registry accepts htpasswd (bcrypt) Basic auth over plain HTTP and logs no warning about it.
//!   `GET /v2/` answers 401 + `WWW-Authenticate: Basic realm="haul-test"` without (or with wrong)
//!   credentials, 200 `{}` with them. There is no per-user ACL: every htpasswd user can push and pull, so the
//!   "read-only deployer" is a convention; revoking it means restarting without it
//!   ([`Registry::restart_with_users`]), after which its requests get 401 `UNAUTHORIZED`.
//! - `skopeo copy --preserve-digests` pushes the hand-built OCI layout byte for byte (the manifest digest is
//!   the sha256 of the manifest in the layout; [`push_artifact`] asserts it). Without the flag skopeo keeps
//!   gzip layers but gzips uncompressed (or non-gzip) layers and rewrites the manifest: new digest.
//! - Notifications: one POST per event, `Content-Type: application/vnd.docker.distribution.events.v1+json`,
//!   the configured `Authorization` header, body `{"events":[{id, timestamp, action, target{mediaType, size,
//!   digest, length, repository, url, tag}, request{id, addr, host, method, useragent}, actor{name},
//!   source{addr, instanceID}}]}`. A manifest PUT gives `action: push`; every manifest GET (haul's own
//!   fetches included) gives `action: pull` (no `tag` when fetched by digest). A refused or failed delivery
//!   (connection refused, any non-2xx/3xx) is retried every backoff (1 s) until accepted, in order, kept
//!   in memory only.
//! - moto enforces SigV4 signatures and IAM policies once auth is switched on; see [`S3`] for the codes.

#![allow(dead_code)] // a fixture module: not every test uses every helper

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a server may take to become ready before the test fails.
const READY: Duration = Duration::from_secs(60);

/// The registry user that pushes (passwords contain no `:`).
pub const PUSHER: (&str, &str) = ("pusher", "pusher-pass-7d1c0e");
/// The registry user haul is given. The registry cannot make it read-only: see the module docs.
pub const DEPLOYER: (&str, &str) = ("deployer", "deployer-pass-92fa4b");

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

// In the test crate this is `use super::support::free_port;`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>`, the form OCI descriptors and registries use.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// An uncompressed tarball of `files` (mode 0644, uid/gid 0, mtime 0, no directory entries): deterministic,
/// so the same files always give the same digest. Paths may hold `/`; `..` and absolute paths are refused
/// by the `tar` crate (use [`raw_tar`] for those).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_path(path)
            .unwrap_or_else(|e| panic!("tar path {path}: {e}"));
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).expect("tar append");
    }
    b.into_inner().expect("tar finish")
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// `gzip(tar(files))`, deterministic: the layer digest of [`push_artifact`] is
/// `sha256_digest(&tar_gz(files))`.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    gzip(&tar(files))
}

/// One entry of a hostile tarball; names are written verbatim (`../evil`, `/etc/x`, ...), at most 100 bytes.
pub enum RawEntry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// An uncompressed tarball with unchecked names and link targets, for path-traversal and link tests.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        let (name, kind, target, data): (&str, _, &str, &[u8]) = match entry {
            RawEntry::File(n, d) => (n, tar::EntryType::Regular, "", d),
            RawEntry::Dir(n) => (n, tar::EntryType::Directory, "", &[]),
            RawEntry::Symlink(n, t) => (n, tar::EntryType::Symlink, t, &[]),
            RawEntry::Hardlink(n, t) => (n, tar::EntryType::Link, t, &[]),
        };
        let mut h = tar::Header::new_ustar();
        let old = h.as_old_mut();
        assert!(
            name.len() <= 100 && target.len() <= 100,
            "raw_tar names are at most 100 bytes"
        );
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if matches!(kind, tar::EntryType::Directory) {
            0o755
        } else {
            0o644
        });
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, data).expect("tar append");
    }
    b.into_inner().expect("tar finish")
}

// ---------------------------------------------------------------------------------------------------------
// Processes, logs, a minimal HTTP client

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = out.try_clone().expect("clone log");
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (see INSTALL in the test docs)"))
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `ready` every 50 ms until it holds; panics with the log's tail if the child exits or time runs out.
fn wait_until(child: &mut Child, what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + READY;
    loop {
        if ready() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before it was ready; {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what} not ready after {READY:?}; {}:\n{}",
                log.display(),
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            let c = if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            };
            out.push(c as char);
        }
    }
    out
}

/// A response from [`http`]: status, headers (names lowercased) and body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.0 request to a loopback `addr` (`127.0.0.1:PORT`), read to EOF (no chunking, no redirects).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// OCI registry

/// A real `docker-registry serve` on 127.0.0.1 with filesystem storage under `<dir>/registry/storage` and
/// htpasswd (bcrypt) auth over plain HTTP, users [`PUSHER`] and [`DEPLOYER`].
pub struct Registry {
    pub dir: PathBuf,
    pub port: u16,
    storage: PathBuf,
    notify: Option<(String, String)>,
    users: Vec<(String, String)>,
    child: Option<Child>,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        Registry::launch(dir, None)
    }

    /// Like [`Registry::start`], also POSTing events to `url` with `Authorization: Bearer <token>` (timeout
    /// 1s, threshold 3, backoff 1s; blob events, media type `application/octet-stream`, are ignored, so a
    /// push sends one `push` event for the manifest, and a manifest GET sends a `pull` event).
    pub fn start_with_notify(dir: &Path, url: &str, token: &str) -> Registry {
        Registry::launch(dir, Some((url.to_string(), token.to_string())))
    }

    fn launch(dir: &Path, notify: Option<(String, String)>) -> Registry {
        let dir = dir.join("registry");
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).expect("mkdir registry storage");
        let users = [PUSHER, DEPLOYER]
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        let mut reg = Registry {
            dir,
            port: free_port(),
            storage,
            notify,
            users,
            child: None,
        };
        reg.spawn();
        reg
    }

    /// `127.0.0.1:PORT`, the registry host as image references spell it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn storage(&self) -> &Path {
        &self.storage
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    fn spawn(&mut self) {
        let mut htpasswd = String::new();
        for (user, pass) in &self.users {
            let line = run(Command::new("htpasswd").args(["-Bbn", user, pass]));
            htpasswd.push_str(line.trim());
            htpasswd.push('\n');
        }
        std::fs::write(self.dir.join("htpasswd"), htpasswd).expect("write htpasswd");
        let notifications = match &self.notify {
            None => String::new(),
            Some((url, token)) => format!(
                "notifications:\n  endpoints:\n    - name: haul\n      url: {url}\n      headers:\n        \
                 Authorization: [\"Bearer {token}\"]\n      timeout: 1s\n      threshold: 3\n      \
                 backoff: 1s\n      ignoredmediatypes:\n        - application/octet-stream\n"
            ),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  \
             delete:\n    enabled: true\n  \
             maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: haul-test-registry-secret\n\
             auth:\n  htpasswd:\n    realm: haul-test\n    path: {htpasswd}\n{notifications}",
            root = self.storage.display(),
            port = self.port,
            htpasswd = self.dir.join("htpasswd").display(),
        );
        std::fs::write(self.dir.join("config.yml"), config).expect("write registry config");
        let log = self.dir.join("registry.log");
        let child = spawn_logged(
            Command::new("docker-registry")
                .arg("serve")
                .arg(self.dir.join("config.yml")),
            &log,
        );
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until `GET /v2/` answers 401 with a `WWW-Authenticate: Basic` challenge.
    pub fn wait_ready(&mut self) {
        let addr = self.addr();
        let log = self.dir.join("registry.log");
        let child = self.child.as_mut().expect("registry is not running");
        wait_until(child, "docker-registry", &log, || {
            http(&addr, "GET", "/v2/", &[]).is_ok_and(|r| {
                r.status == 401
                    && r.header("www-authenticate")
                        .is_some_and(|v| v.starts_with("Basic "))
            })
        });
    }

    /// SIGKILLs the registry and reaps it; storage stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts it again on the same port, storage and users.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills, rewrites htpasswd with exactly `users`, and starts again on the same port and storage: how a
    /// test revokes the deployer (`restart_with_users(&[PUSHER])`).
    pub fn restart_with_users(&mut self, users: &[(&str, &str)]) {
        self.users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        self.restart();
    }

    /// `Authorization` header value for `user`.
    pub fn basic_auth((user, pass): (&str, &str)) -> String {
        format!("Basic {}", base64(format!("{user}:{pass}").as_bytes()))
    }

    /// GET `path` as [`PUSHER`].
    pub fn get(&self, path: &str, accept: &str) -> HttpResponse {
        let auth = Registry::basic_auth(PUSHER);
        http(
            &self.addr(),
            "GET",
            path,
            &[("Authorization", &auth), ("Accept", accept)],
        )
        .unwrap_or_else(|e| panic!("GET {path} from the registry: {e}"))
    }

    /// Where the registry keeps the blob `sha256:<hex>`.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256: digest");
        self.storage.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Pushes `files` as a one-layer OCI artifact (gzip tar layer, minimal image config) to `<repo>:<tag>` as
/// [`PUSHER`]; returns the manifest digest `sha256:<hex>`. The layer digest is
/// `sha256_digest(&tar_gz(files))`.
pub fn push_artifact(reg: &Registry, repo: &str, tag: &str, files: &[(&str, &[u8])]) -> String {
    let tar = tar(files);
    push_layer(reg, repo, tag, &gzip(&tar), OCI_LAYER_GZIP, &sha256_digest(&tar))
}

/// Pushes `layer` byte for byte (say a [`raw_tar`] holding `../evil`, gzipped or not, or junk) as the single
/// layer, of `media_type`. The config's diff_id is the sha256 of the gunzipped layer when that works.
pub fn push_raw_layer(reg: &Registry, repo: &str, tag: &str, layer: &[u8], media_type: &str) -> String {
    let mut tar = Vec::new();
    let gunzipped =
        media_type.ends_with("gzip") && flate2::read::GzDecoder::new(layer).read_to_end(&mut tar).is_ok();
    let diff_id = sha256_digest(if gunzipped { &tar } else { layer });
    push_layer(reg, repo, tag, layer, media_type, &diff_id)
}

fn push_layer(
    reg: &Registry,
    repo: &str,
    tag: &str,
    layer: &[u8],
    media_type: &str,
    diff_id: &str,
) -> String {
    let layout = reg.dir.join(format!(
        "layout-{}-{tag}-{:08x}",
        repo.replace('/', "_"),
        fastrand::u32(..)
    ));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir layout");
    let put_blob = |bytes: &[u8]| {
        let digest = sha256_digest(bytes);
        std::fs::write(blobs.join(&digest[7..]), bytes).expect("write blob");
        serde_json::json!({"digest": digest, "size": bytes.len()})
    };
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let mut config_desc = put_blob(&serde_json::to_vec(&config).unwrap());
    config_desc["mediaType"] = OCI_CONFIG.into();
    let mut layer_desc = put_blob(layer);
    layer_desc["mediaType"] = media_type.into();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut manifest_desc = put_blob(&manifest);
    manifest_desc["mediaType"] = OCI_MANIFEST.into();
    manifest_desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).expect("index.json");
    std::fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");

    let digest_file = layout.join("pushed-digest");
    run(Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("--dest-creds={}:{}", PUSHER.0, PUSHER.1))
        .arg("--digestfile")
        .arg(&digest_file)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{repo}:{tag}", reg.addr())));
    let digest = sha256_digest(&manifest);
    let pushed = std::fs::read_to_string(&digest_file).expect("skopeo digest file");
    assert_eq!(pushed.trim(), digest, "skopeo rewrote the manifest");
    assert_eq!(
        manifest_bytes(reg, repo, tag),
        manifest,
        "the registry serves another manifest"
    );
    digest
}

/// The raw manifest the registry serves for `<repo>:<reference>` (a tag or `sha256:` digest).
pub fn manifest_bytes(reg: &Registry, repo: &str, reference: &str) -> Vec<u8> {
    let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let r = reg.get(&format!("/v2/{repo}/manifests/{reference}"), accept);
    assert_eq!(
        r.status,
        200,
        "manifest {repo}:{reference}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.body
}

/// The bytes the registry serves for blob `digest` of `repo` (unverified, as a client would receive them).
pub fn blob_bytes(reg: &Registry, repo: &str, digest: &str) -> Vec<u8> {
    let r = reg.get(&format!("/v2/{repo}/blobs/{digest}"), "*/*");
    assert_eq!(
        r.status,
        200,
        "blob {repo}@{digest}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.body
}

/// Flips one byte in the middle of the stored blob `digest`: same length, so the registry keeps serving it
/// (with its old digest in `Docker-Content-Digest`); only a client that hashes what it gets notices.
pub fn tamper_blob(reg: &Registry, digest: &str) {
    let path = reg.blob_path(digest);
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("blob {}: {e}", path.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).expect("tamper blob");
}

// ---------------------------------------------------------------------------------------------------------
// S3 (moto)

/// A real `moto_server` (`python3 -m moto.server`) on 127.0.0.1 with one bucket, an `admin` IAM user (all
/// actions) and a `deployer` user allowed only `s3:GetObject` (GET and HEAD) and `s3:ListBucket` on it.
///
/// Bootstrap: moto starts with auth off; `s3_admin.py setup` creates the bucket, users, inline policies and
/// access keys unsigned, then POSTs `0` to `/moto-api/reset-auth` (the same switch as the env var
/// `INITIAL_NO_AUTH_ACTION_COUNT`, without counting requests). From then on every S3/IAM call is checked:
/// - deployer GET/HEAD/ListObjectsV2: 200; missing key: 404 `NoSuchKey`.
/// - deployer PUT or DELETE, or any other bucket: 403 `AccessDenied`.
/// - after [`S3::revoke_deployer`]: 403 `InvalidAccessKeyId` (HEAD: 403, empty body).
/// - wrong secret: 403 `SignatureDoesNotMatch`; SigV4 must include `x-amz-content-sha256`.
/// - unsigned GET of an object: 403 with an empty body; unsigned PUT or LIST: 500 (a moto crash; still
///   refused).
///
/// `/moto-api/*` is never authenticated (anyone on loopback could turn auth off or reset the server).
pub struct S3 {
    pub dir: PathBuf,
    pub port: u16,
    bucket: String,
    admin: (String, String),
    deployer: (String, String),
    child: Option<Child>,
}

/// The admin side, run with the same `python3` as moto (boto3 comes with moto).
const S3_ADMIN_PY: &str = r#""""Admin side of haul's moto S3 fixture: boto3 calls to a local moto_server."""
import json
import sys

import boto3
import requests
from botocore.config import Config


def client(svc, ep, ak="bootstrap", sk="bootstrap"):
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    return boto3.client(svc, endpoint_url=ep, region_name="us-east-1", config=cfg,
                        aws_access_key_id=ak, aws_secret_access_key=sk)


def setup(ep, bucket):
    s3, iam = client("s3", ep), client("iam", ep)
    s3.create_bucket(Bucket=bucket)
    read_only = [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"]},
    ]
    admin = [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
    out = {}
    for user, statements in [("admin", admin), ("deployer", read_only)]:
        iam.create_user(UserName=user)
        doc = json.dumps({"Version": "2012-10-17", "Statement": statements})
        iam.put_user_policy(UserName=user, PolicyName=user + "-policy", PolicyDocument=doc)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        out[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
    requests.post(ep + "/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    print(json.dumps(out))


def main(argv):
    cmd, ep = argv[1], argv[2]
    if cmd == "setup":
        setup(ep, argv[3])
        return
    ak, sk, bucket, rest = argv[3], argv[4], argv[5], argv[6:]
    if cmd == "put":
        s3 = client("s3", ep, ak, sk)
        for key, path in zip(rest[::2], rest[1::2]):
            with open(path, "rb") as f:
                s3.put_object(Bucket=bucket, Key=key, Body=f.read())
    elif cmd == "delete":
        s3 = client("s3", ep, ak, sk)
        for key in rest:
            s3.delete_object(Bucket=bucket, Key=key)
    elif cmd == "delete-key":
        client("iam", ep, ak, sk).delete_access_key(UserName=rest[0], AccessKeyId=rest[1])
    else:
        sys.exit("usage: s3_admin.py setup|put|delete|delete-key ENDPOINT ...")


if __name__ == "__main__":
    main(sys.argv)
"#;

fn python() -> String {
    std::env::var("HAUL_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

impl S3 {
    pub fn start(dir: &Path) -> S3 {
        let dir = dir.join("s3");
        std::fs::create_dir_all(&dir).expect("mkdir s3");
        std::fs::write(dir.join("s3_admin.py"), S3_ADMIN_PY).expect("write s3_admin.py");
        let port = free_port();
        let log = dir.join("moto.log");
        let mut child = spawn_logged(
            Command::new(python())
                .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                .env_remove("INITIAL_NO_AUTH_ACTION_COUNT")
                .env("PYTHONUNBUFFERED", "1"),
            &log,
        );
        let addr = format!("127.0.0.1:{port}");
        wait_until(&mut child, "moto_server", &log, || {
            http(&addr, "GET", "/moto-api/", &[]).is_ok_and(|r| r.status == 200)
        });
        let mut s3 = S3 {
            dir,
            port,
            bucket: "haul-artifacts".to_string(),
            admin: Default::default(),
            deployer: Default::default(),
            child: Some(child),
        };
        let out = s3.admin_cmd("setup", &[&s3.bucket]);
        let keys: serde_json::Value = serde_json::from_str(&out).expect("s3_admin.py setup output");
        let pair = |user: &str| {
            (
                keys[user][0].as_str().unwrap().into(),
                keys[user][1].as_str().unwrap().into(),
            )
        };
        s3.admin = pair("admin");
        s3.deployer = pair("deployer");
        s3
    }

    fn admin_cmd(&self, cmd: &str, args: &[&str]) -> String {
        let mut c = Command::new(python());
        c.arg(self.dir.join("s3_admin.py")).arg(cmd).arg(self.endpoint());
        if cmd != "setup" {
            c.args([&self.admin.0, &self.admin.1, &self.bucket]);
        }
        // Python's HTTP stack would send loopback requests to a proxy from the environment.
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            c.env_remove(var);
        }
        run(c
            .args(args)
            .env("NO_PROXY", "127.0.0.1")
            .env_remove("AWS_PROFILE"))
    }

    /// `http://127.0.0.1:PORT` (path-style addressing, region `us-east-1`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn region(&self) -> &str {
        "us-east-1"
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// (access key id, secret) of the read-only `deployer`.
    pub fn deployer_keys(&self) -> (String, String) {
        self.deployer.clone()
    }

    /// (access key id, secret) of `admin`, allowed everything.
    pub fn admin_keys(&self) -> (String, String) {
        self.admin.clone()
    }

    /// Uploads one object as admin.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        self.put_all(&[(key, bytes)]);
    }

    /// Uploads several objects as admin in one helper run (each run costs about 0.9 s of Python start-up).
    pub fn put_all(&self, objects: &[(&str, &[u8])]) {
        let mut args = Vec::new();
        for (i, (key, bytes)) in objects.iter().enumerate() {
            let file = self.dir.join(format!("upload-{i}-{:08x}", fastrand::u32(..)));
            std::fs::write(&file, bytes).expect("write upload");
            args.push(key.to_string());
            args.push(file.display().to_string());
        }
        self.admin_cmd("put", &args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    pub fn delete(&self, key: &str) {
        self.admin_cmd("delete", &[key]);
    }

    /// Deletes the deployer's access key: its requests are refused from now on (403 `InvalidAccessKeyId`).
    pub fn revoke_deployer(&self) {
        self.admin_cmd("delete-key", &["deployer", &self.deployer.0]);
    }

    /// SIGKILLs moto and reaps it (all its state is in memory and lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.kill();
    }
}
