//! Detached signature verification for artifacts: a minisign public key, or an ssh `allowed_signers` file
//! checked by `ssh-keygen -Y verify` for one identity and namespace. An artifact is accepted only when its
//! signature verifies over the exact bytes on disk; anything else (missing, malformed, another key, a legacy
//! minisign signature, a failed or hung `ssh-keygen`) is an error, never a pass. The data is streamed, so a
//! multi-GB artifact is not read into memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use minisign_verify::{PublicKey, Signature};

use crate::infra::runner::{self, Cmd, RunError};

pub use crate::config::Verifier;

#[derive(Debug, thiserror::Error)]
pub enum SigError {
    /// No signature (empty), or the signed file cannot be read.
    #[error("signature missing: {0}")]
    Missing(String),
    /// The signature does not verify: wrong data, another key, malformed or unsupported signature.
    #[error("signature invalid: {0}")]
    Invalid(String),
    /// The verifier itself is unusable: unreadable or malformed key file, `ssh-keygen` not installed.
    #[error("signature verifier misconfigured: {0}")]
    Config(String),
}

/// How long `ssh-keygen -Y verify` may run before it is killed.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);

impl Verifier {
    /// The suffix of the detached signature beside an artifact: ".minisig" or ".sig".
    pub fn suffix(&self) -> &'static str {
        match self {
            Verifier::Minisign { .. } => ".minisig",
            Verifier::Ssh { .. } => ".sig",
        }
    }

    /// A short description for the audit: `minisign key DD8EFC0DB6E4485E (/etc/haul/keys/api.pub)` (the key
    /// id as `minisign` prints it) or `ssh signers /path (identity ci@acme, namespace haul)`.
    pub fn describe(&self) -> String {
        match self {
            Verifier::Minisign { key_file } => match MinisignKey::load(key_file) {
                Ok(key) => format!("minisign key {} ({})", key.id, key_file.display()),
                Err(_) => format!("minisign key ? ({}, unreadable)", key_file.display()),
            },
            Verifier::Ssh {
                allowed_signers,
                identity,
                namespace,
            } => format!(
                "ssh signers {} (identity {identity}, namespace {namespace})",
                allowed_signers.display()
            ),
        }
    }

    /// Verifies the detached signature `sig` (the bytes of the .minisig or .sig file) over the file at `data`.
    pub async fn verify_file(&self, data: &Path, sig: &[u8]) -> Result<(), SigError> {
        self.verify_file_named(data, sig, None).await
    }

    /// Like [`Verifier::verify_file`], and a minisign signature whose (signed) trusted comment names the file
    /// (`file:<name>`, as `minisign -S` writes it) must name `name`: a signature copied to another artifact's
    /// name (an old, validly signed build under a new version's key) is refused.
    pub async fn verify_file_named(
        &self,
        data: &Path,
        sig: &[u8],
        name: Option<&str>,
    ) -> Result<(), SigError> {
        match self {
            Verifier::Minisign { key_file } => {
                // Hashing a large artifact is blocking work: off the async workers.
                let (key_file, data, sig) = (key_file.clone(), data.to_path_buf(), sig.to_vec());
                let name = name.map(String::from);
                tokio::task::spawn_blocking(move || verify_minisign(&key_file, &data, &sig, name.as_deref()))
                    .await
                    .unwrap_or_else(|e| Err(SigError::Config(format!("minisign check did not finish: {e}"))))
            }
            Verifier::Ssh {
                allowed_signers,
                identity,
                namespace,
            } => {
                verify_ssh(
                    "ssh-keygen",
                    allowed_signers,
                    identity,
                    namespace,
                    data,
                    sig,
                    SSH_TIMEOUT,
                )
                .await
            }
        }
    }
}

struct MinisignKey {
    key: PublicKey,
    /// As minisign prints it: the 8 key id bytes as a little-endian number, in upper-case hex.
    id: String,
}

impl MinisignKey {
    /// Reads a minisign public key: the `.pub` file form (an `untrusted comment:` line, then base64) or a
    /// file holding just the base64 line.
    fn load(path: &Path) -> Result<Self, SigError> {
        let text = fs::read_to_string(path)
            .map_err(|e| SigError::Config(format!("minisign key file {}: {e}", path.display())))?;
        let bad = |why: &str| SigError::Config(format!("minisign key file {}: {why}", path.display()));
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| bad("no key in it"))?;
        let key =
            PublicKey::from_base64(line).map_err(|e| bad(&format!("not a minisign public key: {e}")))?;
        let raw = base64_decode(line).ok_or_else(|| bad("not base64"))?;
        let id = raw.get(2..10).map(key_id).ok_or_else(|| bad("too short"))?;
        Ok(MinisignKey { key, id })
    }
}

/// As minisign prints it in a key's comment: upper-case hex, without leading zeros.
fn key_id(bytes: &[u8]) -> String {
    let full: String = bytes.iter().rev().map(|b| format!("{b:02X}")).collect();
    match full.trim_start_matches('0') {
        "" => "0".to_string(),
        trimmed => trimmed.to_string(),
    }
}

fn verify_minisign(key_file: &Path, data: &Path, sig: &[u8], name: Option<&str>) -> Result<(), SigError> {
    let key = MinisignKey::load(key_file)?;
    if sig.iter().all(u8::is_ascii_whitespace) {
        return Err(SigError::Missing("empty minisign signature".into()));
    }
    let text =
        std::str::from_utf8(sig).map_err(|_| SigError::Invalid("minisign signature is not text".into()))?;
    let signature = Signature::decode(text)
        .map_err(|e| SigError::Invalid(format!("malformed minisign signature: {e}")))?;
    // The line after the untrusted comment: algorithm (2 bytes), key id (8), signature (64).
    let raw = text
        .lines()
        .nth(1)
        .and_then(|l| base64_decode(l.trim()))
        .unwrap_or_default();
    if let Some(id) = raw.get(2..10).map(key_id) {
        if id != key.id {
            return Err(SigError::Invalid(format!(
                "signed by minisign key {id}, but the trusted key is {} ({})",
                key.id,
                key_file.display()
            )));
        }
    }
    if raw.get(..2) == Some(b"Ed") {
        return Err(SigError::Invalid(
            "legacy (not prehashed) minisign signature; sign with `minisign -S` without -l".into(),
        ));
    }
    let mut verifier = key
        .key
        .verify_stream(&signature)
        .map_err(|e| SigError::Invalid(e.to_string()))?;
    let mut file = open_data(data)?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => verifier.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SigError::Missing(format!("reading {}: {e}", data.display()))),
        }
    }
    verifier.finalize().map_err(|e| match e {
        minisign_verify::Error::InvalidSignature => SigError::Invalid(format!(
            "minisign signature by key {} does not match {}",
            key.id,
            data.display()
        )),
        other => SigError::Invalid(other.to_string()),
    })?;
    let signed_name = signature
        .trusted_comment()
        .split('\t')
        .find_map(|f| f.strip_prefix("file:"));
    // minisign writes the file's name, rsign2 the path as typed: the last component is what is compared.
    let base = |p: &str| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string();
    match (name, signed_name) {
        (Some(want), Some(got)) if base(got) != base(want) => Err(SigError::Invalid(format!(
            "the signature was made for {got:?}, not {want:?} (its signed comment names the file): a signature moved to another artifact"
        ))),
        _ => Ok(()),
    }
}

fn open_data(data: &Path) -> Result<File, SigError> {
    File::open(data).map_err(|e| SigError::Missing(format!("{}: {e}", data.display())))
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn create(contents: &[u8]) -> io::Result<Self> {
        let path = crate::infra::scratch::unique_temp_path("haul-sig", ".sig");
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let guard = TempFile(path);
        file.write_all(contents)?;
        file.sync_all()?;
        Ok(guard)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Runs `<program> -Y verify -f <allowed_signers> -I <identity> -n <namespace> -s <sigfile>` with the data on
/// stdin, through the one subprocess runner (killed after `timeout`, output captured and bounded).
async fn verify_ssh(
    program: &str,
    allowed_signers: &Path,
    identity: &str,
    namespace: &str,
    data: &Path,
    sig: &[u8],
    timeout: Duration,
) -> Result<(), SigError> {
    if identity.is_empty() || namespace.is_empty() {
        return Err(SigError::Config(
            "ssh verification needs an identity and a namespace".into(),
        ));
    }
    if let Err(e) = fs::metadata(allowed_signers) {
        return Err(SigError::Config(format!(
            "ssh allowed signers file {}: {e}",
            allowed_signers.display()
        )));
    }
    if sig.iter().all(u8::is_ascii_whitespace) {
        return Err(SigError::Missing("empty ssh signature".into()));
    }
    // Opened here, not by the runner, so a missing artifact is "missing", not a failure of ssh-keygen.
    drop(open_data(data)?);
    let sig_file = TempFile::create(sig)
        .map_err(|e| SigError::Config(format!("writing the signature to a temporary file: {e}")))?;
    let cmd = Cmd::new(format!("{program} -Y verify"), program)
        .args(["-Y", "verify", "-f"])
        .arg(allowed_signers)
        .args(["-I", identity, "-n", namespace, "-s"])
        .arg(&sig_file.0)
        .stdin_file(data)
        .timeout(timeout)
        .capture();
    let out = match runner::run(&cmd, None).await {
        Ok(_) => return Ok(()),
        Err(RunError::Spawn { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(SigError::Config(format!("{program} not found: {source}")))
        }
        Err(RunError::Spawn { source, .. }) => {
            return Err(SigError::Config(format!("running {program}: {source}")))
        }
        Err(RunError::TimedOut { after, .. }) => {
            return Err(SigError::Invalid(format!(
                "{program} -Y verify: killed after {} s",
                after.as_secs_f32()
            )))
        }
        Err(e) => e,
    };
    let why = out
        .stderr_tail()
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map_or_else(|| "no output".to_string(), str::to_owned);
    Err(SigError::Invalid(format!(
        "ssh signature for {identity} (namespace {namespace}) does not verify: {why}"
    )))
}

/// Standard base64 (with or without padding); None on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text.trim_end_matches('=').as_bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    /// A scratch directory, removed on drop.
    struct TempDir(crate::infra::scratch::TestDir);

    impl TempDir {
        fn new() -> Self {
            TempDir(crate::infra::scratch::TestDir::new("haul-sigtest"))
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.path(name)
        }
    }

    fn run(dir: &TempDir, program: &str, args: &[&str]) {
        let out = Command::new(program)
            .args(args)
            .current_dir(&dir.0 .0)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Data big enough to cross the 64 KiB read chunks.
    fn artifact(dir: &TempDir) -> PathBuf {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let path = dir.path("app.tar.gz");
        fs::write(&path, data).expect("artifact");
        path
    }

    fn minisign_keys(dir: &TempDir, name: &str) {
        run(
            dir,
            "minisign",
            &[
                "-G",
                "-W",
                "-p",
                &format!("{name}.pub"),
                "-s",
                &format!("{name}.key"),
            ],
        );
    }

    fn minisign_sign(dir: &TempDir, key: &str, file: &Path, legacy: bool) -> Vec<u8> {
        let sig = format!("{}.minisig", file.display());
        let file = file.to_str().expect("utf-8 path");
        let mut args = vec!["-S", "-W", "-s", key, "-x", &sig, "-m", file];
        if legacy {
            args.push("-l");
        }
        run(dir, "minisign", &args);
        fs::read(&sig).expect("sig")
    }

    fn minisign(dir: &TempDir, name: &str) -> Verifier {
        Verifier::Minisign {
            key_file: dir.path(&format!("{name}.pub")),
        }
    }

    fn expect_invalid(result: Result<(), SigError>, needle: &str) {
        match result {
            Err(SigError::Invalid(m)) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn minisign_good_signature_verifies_with_either_key_file_form() {
        let dir = TempDir::new();
        minisign_keys(&dir, "k");
        let data = artifact(&dir);
        let sig = minisign_sign(&dir, "k.key", &data, false);
        let v = minisign(&dir, "k");
        assert_eq!(v.suffix(), ".minisig");
        v.verify_file(&data, &sig).await.expect("verifies");

        let pub_file = fs::read_to_string(dir.path("k.pub")).expect("pub");
        let bare = pub_file.lines().nth(1).expect("base64 line");
        fs::write(dir.path("bare.pub"), format!("{bare}\n")).expect("bare");
        minisign(&dir, "bare")
            .verify_file(&data, &sig)
            .await
            .expect("bare key verifies");
        fs::write(dir.path("crlf.pub"), pub_file.replace('\n', "\r\n")).expect("crlf");
        minisign(&dir, "crlf")
            .verify_file(&data, &sig)
            .await
            .expect("CRLF key verifies");
    }

    #[tokio::test]
    async fn minisign_describe_names_the_key_id_as_minisign_does() {
        let dir = TempDir::new();
        minisign_keys(&dir, "k");
        let pub_file = fs::read_to_string(dir.path("k.pub")).expect("pub");
        let id = pub_file
            .lines()
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .expect("id in comment");
        let expected = format!("minisign key {id} ({})", dir.path("k.pub").display());
        assert_eq!(minisign(&dir, "k").describe(), expected);
        assert!(minisign(&dir, "missing").describe().contains("unreadable"));
    }

    #[tokio::test]
    async fn minisign_tampered_data_is_invalid() {
        let dir = TempDir::new();
        minisign_keys(&dir, "k");
        let data = artifact(&dir);
        let sig = minisign_sign(&dir, "k.key", &data, false);
        let mut bytes = fs::read(&data).expect("read");
        bytes[150_000] ^= 1;
        fs::write(&data, bytes).expect("tamper");
        expect_invalid(
            minisign(&dir, "k").verify_file(&data, &sig).await,
            "does not match",
        );
    }

    #[tokio::test]
    async fn minisign_signature_by_another_key_is_invalid_naming_both_ids() {
        let dir = TempDir::new();
        minisign_keys(&dir, "trusted");
        minisign_keys(&dir, "other");
        let data = artifact(&dir);
        let sig = minisign_sign(&dir, "other.key", &data, false);
        let id = |name: &str| {
            let text = fs::read_to_string(dir.path(&format!("{name}.pub"))).expect("pub");
            text.lines()
                .next()
                .and_then(|l| l.rsplit(' ').next())
                .expect("id")
                .to_string()
        };
        let err = minisign(&dir, "trusted").verify_file(&data, &sig).await;
        expect_invalid(
            err,
            &format!(
                "signed by minisign key {}, but the trusted key is {}",
                id("other"),
                id("trusted")
            ),
        );
    }

    #[tokio::test]
    async fn minisign_garbage_empty_and_legacy_signatures_are_refused() {
        let dir = TempDir::new();
        minisign_keys(&dir, "k");
        let data = artifact(&dir);
        let v = minisign(&dir, "k");
        expect_invalid(
            v.verify_file(&data, b"not a signature\nat all\n").await,
            "malformed",
        );
        expect_invalid(v.verify_file(&data, &[0xff, 0xfe, 0x00]).await, "not text");
        assert!(matches!(
            v.verify_file(&data, b" \n").await,
            Err(SigError::Missing(_))
        ));
        let legacy = minisign_sign(&dir, "k.key", &data, true);
        expect_invalid(v.verify_file(&data, &legacy).await, "legacy");
        // A good signature whose trusted comment was altered: the global signature covers it.
        let good = String::from_utf8(minisign_sign(&dir, "k.key", &data, false)).expect("text");
        let forged = good.replacen("\ntrusted comment: ", "\ntrusted comment: x", 1);
        expect_invalid(v.verify_file(&data, forged.as_bytes()).await, "does not match");
    }

    #[tokio::test]
    async fn minisign_missing_or_bad_key_file_is_config_and_missing_data_is_missing() {
        let dir = TempDir::new();
        minisign_keys(&dir, "k");
        let data = artifact(&dir);
        let sig = minisign_sign(&dir, "k.key", &data, false);
        let err = minisign(&dir, "nope").verify_file(&data, &sig).await;
        assert!(
            matches!(err, Err(SigError::Config(ref m)) if m.contains("nope.pub")),
            "{err:?}"
        );
        fs::write(dir.path("bad.pub"), "untrusted comment: x\nnot-base64!\n").expect("bad");
        assert!(matches!(
            minisign(&dir, "bad").verify_file(&data, &sig).await,
            Err(SigError::Config(_))
        ));
        let err = minisign(&dir, "k")
            .verify_file(&dir.path("gone.tar.gz"), &sig)
            .await;
        assert!(matches!(err, Err(SigError::Missing(_))), "{err:?}");
    }

    /// An ed25519 key `name` and an allowed_signers file `name.allowed` trusting it for ci@acme in "haul".
    fn ssh_key(dir: &TempDir, name: &str) {
        run(
            dir,
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-C", "", "-f", name],
        );
        let public = fs::read_to_string(dir.path(&format!("{name}.pub"))).expect("pub");
        let line = format!("ci@acme namespaces=\"haul\" {}", public.trim());
        fs::write(dir.path(&format!("{name}.allowed")), line + "\n").expect("allowed");
    }

    fn ssh_sign(dir: &TempDir, key: &str, namespace: &str, file: &Path) -> Vec<u8> {
        let sig = PathBuf::from(format!("{}.sig", file.display()));
        let _ = fs::remove_file(&sig);
        run(
            dir,
            "ssh-keygen",
            &[
                "-Y",
                "sign",
                "-f",
                key,
                "-n",
                namespace,
                file.to_str().expect("utf-8"),
            ],
        );
        fs::read(&sig).expect("sig")
    }

    fn ssh(dir: &TempDir, name: &str, identity: &str, namespace: &str) -> Verifier {
        Verifier::Ssh {
            allowed_signers: dir.path(&format!("{name}.allowed")),
            identity: identity.into(),
            namespace: namespace.into(),
        }
    }

    #[tokio::test]
    async fn ssh_good_signature_verifies() {
        let dir = TempDir::new();
        ssh_key(&dir, "k");
        let data = artifact(&dir);
        let sig = ssh_sign(&dir, "k", "haul", &data);
        let v = ssh(&dir, "k", "ci@acme", "haul");
        assert_eq!(v.suffix(), ".sig");
        let expected = format!(
            "ssh signers {} (identity ci@acme, namespace haul)",
            dir.path("k.allowed").display()
        );
        assert_eq!(v.describe(), expected);
        v.verify_file(&data, &sig).await.expect("verifies");
    }

    #[tokio::test]
    async fn ssh_tampered_other_key_and_garbage_are_invalid() {
        let dir = TempDir::new();
        ssh_key(&dir, "k");
        ssh_key(&dir, "other");
        let data = artifact(&dir);
        let good = ssh_sign(&dir, "k", "haul", &data);
        let by_other = ssh_sign(&dir, "other", "haul", &data);
        let v = ssh(&dir, "k", "ci@acme", "haul");
        expect_invalid(v.verify_file(&data, &by_other).await, "does not verify");
        expect_invalid(
            v.verify_file(&data, b"-----BEGIN SSH SIGNATURE-----\ngarbage\n")
                .await,
            "does not verify",
        );
        assert!(matches!(
            v.verify_file(&data, b"").await,
            Err(SigError::Missing(_))
        ));
        let mut bytes = fs::read(&data).expect("read");
        bytes[7] ^= 1;
        fs::write(&data, bytes).expect("tamper");
        expect_invalid(v.verify_file(&data, &good).await, "incorrect signature");
    }

    #[tokio::test]
    async fn ssh_wrong_namespace_or_identity_is_invalid() {
        let dir = TempDir::new();
        ssh_key(&dir, "k");
        let data = artifact(&dir);
        let sig = ssh_sign(&dir, "k", "haul", &data);
        expect_invalid(
            ssh(&dir, "k", "ci@acme", "other").verify_file(&data, &sig).await,
            "namespace other",
        );
        expect_invalid(
            ssh(&dir, "k", "bob@acme", "haul").verify_file(&data, &sig).await,
            "bob@acme",
        );
        // Signed for another namespace than the verifier (and the allowed_signers line) accept.
        let elsewhere = ssh_sign(&dir, "k", "git", &data);
        expect_invalid(
            ssh(&dir, "k", "ci@acme", "haul")
                .verify_file(&data, &elsewhere)
                .await,
            "namespace",
        );
    }

    #[tokio::test]
    async fn ssh_missing_signers_file_or_tool_is_config() {
        let dir = TempDir::new();
        ssh_key(&dir, "k");
        let data = artifact(&dir);
        let sig = ssh_sign(&dir, "k", "haul", &data);
        let err = ssh(&dir, "missing", "ci@acme", "haul")
            .verify_file(&data, &sig)
            .await;
        assert!(
            matches!(err, Err(SigError::Config(ref m)) if m.contains("missing.allowed")),
            "{err:?}"
        );
        let signers = dir.path("k.allowed");
        let err = verify_ssh(
            "/nonexistent/ssh-keygen",
            &signers,
            "ci@acme",
            "haul",
            &data,
            &sig,
            SSH_TIMEOUT,
        )
        .await;
        assert!(
            matches!(err, Err(SigError::Config(ref m)) if m.contains("not found")),
            "{err:?}"
        );
        let err = ssh(&dir, "k", "ci@acme", "").verify_file(&data, &sig).await;
        assert!(matches!(err, Err(SigError::Config(_))), "{err:?}");
    }

    #[tokio::test]
    async fn a_hung_ssh_keygen_is_killed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        ssh_key(&dir, "k");
        let data = artifact(&dir);
        let hang = dir.path("hang.sh");
        fs::write(&hang, "#!/bin/sh\nexec sleep 30\n").expect("script");
        fs::set_permissions(&hang, fs::Permissions::from_mode(0o755)).expect("chmod");
        let started = Instant::now();
        let program = hang.to_str().expect("utf-8");
        let timeout = Duration::from_millis(300);
        let err = verify_ssh(
            program,
            &dir.path("k.allowed"),
            "ci@acme",
            "haul",
            &data,
            b"sig",
            timeout,
        )
        .await;
        expect_invalid(err, "killed after");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_temporary_signature_file_is_removed() {
        let file = TempFile::create(b"sig").expect("create");
        let path = file.0.clone();
        assert_eq!(fs::read(&path).expect("read"), b"sig");
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn base64_decodes_like_the_standard() {
        assert_eq!(base64_decode("aGF1bA==").as_deref(), Some(&b"haul"[..]));
        assert_eq!(base64_decode("aGF1bGVk").as_deref(), Some(&b"hauled"[..]));
        assert_eq!(base64_decode("a-b"), None);
    }
}
