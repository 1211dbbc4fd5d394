//! `[apps.X.webhook]`: which forge (or registry) signs the requests that trigger a deploy, and with what.
//!
//! The secrets are files, never config text. Several are accepted at once so a secret can be rotated: the new
//! one and the old one both verify until the forge has switched. They are read at start-up and by `haul check`,
//! not while parsing, so parsing a config never touches its secrets.

use std::path::PathBuf;

use super::files::{self, ConfigDir};
use super::raw::RawWebhook;
use super::Source;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Github,
    Gitlab,
    Gitea,
    Forgejo,
    Bitbucket,
    Standard,
    /// A registry's own notifications (Docker Distribution), for image apps.
    Distribution,
}

impl Provider {
    pub const ALL: [Provider; 7] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Forgejo,
        Provider::Bitbucket,
        Provider::Standard,
        Provider::Distribution,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Forgejo => "forgejo",
            Provider::Bitbucket => "bitbucket",
            Provider::Standard => "standard",
            Provider::Distribution => "distribution",
        }
    }
    pub fn parse(s: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub provider: Provider,
    /// Where the secrets come from; read by [`WebhookConfig::load_secrets`].
    pub secret_files: Vec<PathBuf>,
    /// The config file's directory: a relative secret file is found here (or in systemd's credentials).
    pub base_dir: PathBuf,
}

impl WebhookConfig {
    /// Reads every configured secret (current first, then the previous one during a rotation). A relative path
    /// is looked up in `$CREDENTIALS_DIRECTORY` when systemd provides one.
    pub(crate) fn load_secrets(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut out = Vec::new();
        for f in &self.secret_files {
            let path = files::credential_path(f, &self.base_dir);
            let secret = files::read_secret(&path)?;
            if secret.len() < 16 {
                return Err(format!(
                    "secret in {} is shorter than 16 bytes; generate one with `openssl rand -hex 32 > {}`",
                    path.display(),
                    path.display()
                ));
            }
            out.push(secret);
        }
        Ok(out)
    }
}

/// `provider` first (the rest depends on it), then the secret files, current first.
pub(crate) fn parse(w: RawWebhook, source: &Source, dir: &ConfigDir) -> Result<WebhookConfig, String> {
    let Some(provider) = Provider::parse(&w.provider) else {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        return Err(format!(
            "webhook.provider {:?} is not supported (supported: {})",
            w.provider,
            known.join(", ")
        ));
    };
    if provider == Provider::Distribution && !matches!(source, Source::Image(_)) {
        return Err(
            "webhook.provider \"distribution\" (a registry's notifications) is for image apps".into(),
        );
    }
    let mut secret_files: Vec<PathBuf> = w.secret_file.into_iter().collect();
    secret_files.extend(w.previous_secret_file);
    secret_files.extend(w.secret_files);
    if secret_files.is_empty() {
        return Err("webhook needs `secret_file` (secrets are never written in the config itself)".into());
    }
    if secret_files.len() > 4 {
        return Err("webhook accepts at most 4 secrets at once (for a rotation, 2 is enough)".into());
    }
    Ok(WebhookConfig {
        provider,
        secret_files,
        base_dir: dir.path().to_path_buf(),
    })
}
