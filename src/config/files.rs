//! The files `haul.toml` names: where a relative path points, and whether a file that holds a secret is safe.
//!
//! Secrets are never written in the config itself, so every secret is a file, and a file anyone on the machine
//! can read is no secret: its mode is checked before it is used, at `haul check` and at start-up. Under systemd,
//! a relative secret path is a credential (`LoadCredential=`) in `$CREDENTIALS_DIRECTORY`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{AppConfig, Config, Verifier};

/// The directory of the config file. A relative path in `haul.toml` means a path beside the config, not beside
/// wherever the daemon happened to be started.
pub(crate) struct ConfigDir(PathBuf);

impl ConfigDir {
    pub(crate) fn of(config: &Path) -> ConfigDir {
        ConfigDir(config.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// A file holding a secret or a private key must exist and be readable by its owner only.
pub fn check_private_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Where a secret file is: as written when absolute; a relative one in `$CREDENTIALS_DIRECTORY` when systemd
/// provides one, else beside the config. Read at each use, so a credential directory set later is honoured.
pub(crate) fn credential_path(file: &Path, config_dir: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        _ if file.is_absolute() => file.to_path_buf(),
        Some(dir) => Path::new(&dir).join(file),
        None => config_dir.join(file),
    }
}

/// The secret in a private file. Surrounding whitespace (the newline `echo` leaves) is not part of it.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    check_private_file(path)?;
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim_ascii().to_vec())
}

impl Config {
    /// Everything `haul check` verifies beyond parsing: key and secret files exist with safe modes.
    pub fn check_files(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for app in self.apps.values() {
            check_app_files(app, &mut problems);
        }
        problems
    }
}

fn check_app_files(app: &AppConfig, problems: &mut Vec<String>) {
    if let Some(k) = &app.deploy_key {
        if let Err(e) = check_private_file(k) {
            problems.push(format!("[apps.{}] deploy_key: {e}", app.name));
        }
    }
    if let Some(kh) = &app.known_hosts {
        match std::fs::read_to_string(kh) {
            Ok(t) if t.lines().any(|l| !l.trim().is_empty() && !l.starts_with('#')) => {}
            Ok(_) => problems.push(format!(
                "[apps.{}] known_hosts {} has no host keys; add them with `ssh-keyscan HOST >> {}` and compare the fingerprint with your forge's published one",
                app.name,
                kh.display(),
                kh.display()
            )),
            Err(e) => problems.push(format!("[apps.{}] known_hosts {}: {e}", app.name, kh.display())),
        }
    }
    if let Some(w) = &app.webhook {
        if let Err(e) = w.load_secrets() {
            problems.push(format!("[apps.{}] webhook: {e}", app.name));
        }
    }
    for (key, file) in app.credential_files() {
        if let Err(e) = check_private_file(file) {
            problems.push(format!("[apps.{}] {key}: {e}", app.name));
        }
    }
    // A public key need not be private, only present.
    let verify_file = match &app.verify {
        Some(Verifier::Minisign { key_file }) => Some(("verify.minisign_key", key_file)),
        Some(Verifier::Ssh { allowed_signers, .. }) => Some(("verify.ssh_allowed_signers", allowed_signers)),
        None => None,
    };
    if let Some((key, file)) = verify_file {
        if let Err(e) = std::fs::metadata(file) {
            problems.push(format!("[apps.{}] {key} {}: {e}", app.name, file.display()));
        }
    }
}
