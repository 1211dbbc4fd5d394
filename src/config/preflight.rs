//! The one pre-flight: everything about the files a configuration names that can be checked before anything
//! runs. Keys and secrets exist and are private (mode 0600 or stricter), `known_hosts` holds host keys, the
//! `verify` key files exist, the webhook secrets load. `haul check` prints what this finds; the daemon refuses
//! to start on exactly the same list (they once differed: the daemon checked neither `known_hosts` nor the
//! `verify` files, and a missing one failed the first deploy instead of the start).

use std::collections::HashMap;

use super::files::check_private_file;
use super::{AppConfig, Config, Verifier};

/// Per app with a webhook: its secrets, the current one first.
pub type Secrets = HashMap<String, Vec<Vec<u8>>>;

/// The webhook secrets, loaded; or every problem found, one line each, naming the app and the key.
pub(crate) fn preflight(cfg: &Config) -> Result<Secrets, Vec<String>> {
    let mut problems = Vec::new();
    let mut secrets = Secrets::new();
    for app in cfg.apps.values() {
        check_app(app, &mut problems, &mut secrets);
    }
    if let Some(f) = &cfg.fleet {
        if let Some(c) = &f.credentials_file {
            if let Err(e) = check_private_file(c) {
                problems.push(format!("[fleet] credentials_file: {e}"));
            }
        }
        if let Some((_, p)) = &f.user_password {
            if let Err(e) = check_private_file(p) {
                problems.push(format!("[fleet] password_file: {e}"));
            }
        }
        if let Some((_, key)) = &f.tls_client {
            if let Err(e) = check_private_file(key) {
                problems.push(format!("[fleet] tls_key_file: {e}"));
            }
        }
        let cert = f.tls_client.as_ref().map(|(c, _)| ("tls_cert_file", c));
        for (key, file) in f
            .tls_ca_file
            .as_ref()
            .map(|c| ("tls_ca_file", c))
            .into_iter()
            .chain(cert)
        {
            if let Err(e) = std::fs::metadata(file) {
                problems.push(format!("[fleet] {key} {}: {e}", file.display()));
            }
        }
    }
    if problems.is_empty() {
        Ok(secrets)
    } else {
        Err(problems)
    }
}

fn check_app(app: &AppConfig, problems: &mut Vec<String>, secrets: &mut Secrets) {
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
        match w.load_secrets() {
            Ok(s) => {
                secrets.insert(app.name.clone(), s);
            }
            Err(e) => problems.push(format!("[apps.{}] webhook: {e}", app.name)),
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
    let signers = match &app.verify_commits {
        Some(super::CommitSigners::Ssh(f)) => Some(("verify_commits.ssh_allowed_signers", f)),
        Some(super::CommitSigners::Gpg(f)) => Some(("verify_commits.gpg_keyring", f)),
        None => None,
    };
    for (key, file) in verify_file.into_iter().chain(signers) {
        if let Err(e) = std::fs::metadata(file) {
            problems.push(format!("[apps.{}] {key} {}: {e}", app.name, file.display()));
        }
    }
}
