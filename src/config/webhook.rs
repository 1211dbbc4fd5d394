//! `[apps.X.webhook]`: which forge (or registry) signs the requests that trigger a deploy, and with what.
//!
//! The secrets are files, never config text. Several are accepted at once so a secret can be rotated: the new
//! one and the old one both verify until the forge has switched. They are read at start-up and by `haul check`,
//! not while parsing, so parsing a config never touches its secrets.
//!
//! A secret proves who sent a request, not which repository it is about: a secret reused by several
//! repositories' hooks would let a push to any of them deploy this app. `repository` closes that gap for the
//! forges whose payloads name their repository.

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
    /// Whether this forge's push payloads name the repository they are about (what `repository` is compared
    /// with). Standard Webhooks payloads name none; a registry's notifications name the image's repository,
    /// which `image` already fixes.
    pub(crate) fn names_repository(self) -> bool {
        !matches!(self, Provider::Standard | Provider::Distribution)
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub provider: Provider,
    /// Where the secrets come from; read by [`WebhookConfig::load_secrets`].
    pub secret_files: Vec<PathBuf>,
    /// The config file's directory: a relative secret file is found here (or in systemd's credentials).
    pub base_dir: PathBuf,
    /// When set, the only repository (`owner/name`, `group/subgroup/name`) whose signed payloads this app
    /// accepts; compared without regard to ASCII case, as forges compare names.
    pub repository: Option<String>,
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

/// `provider` first (the rest depends on it), then the secret files, current first, then `repository`.
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
    if let Some(r) = &w.repository {
        check_repository_for(provider, r)?;
    }
    Ok(WebhookConfig {
        provider,
        secret_files,
        base_dir: dir.path().to_path_buf(),
        repository: w.repository,
    })
}

/// `repository` only where the payload names one to compare it with: a key that could never match would
/// refuse every delivery, and one that is silently ignored would protect nothing.
fn check_repository_for(provider: Provider, r: &str) -> Result<(), String> {
    if provider.names_repository() {
        return check_repository(r);
    }
    Err(match provider {
        Provider::Standard => {
            "webhook.repository: Standard Webhooks payloads name no repository to compare it with; remove it \
             (a secret of this app's own is what keeps other senders out)"
        }
        _ => {
            "webhook.repository: a registry's notifications are already matched against the repository in \
             `image`; remove it"
        }
    }
    .into())
}

/// The shape of `repository`: the path of the repository as its URLs show it, `owner/name` (GitLab:
/// `group/subgroup/name`; Bitbucket Data Center: `PROJECTKEY/slug`), without host, scheme or `.git`.
pub(crate) fn check_repository(r: &str) -> Result<(), String> {
    let example = "write it like \"acme/blog\" (GitLab: \"group/subgroup/blog\")";
    if r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "webhook.repository {r:?} contains whitespace or control characters; {example}"
        ));
    }
    if r.contains(':') {
        return Err(format!(
            "webhook.repository {r:?} looks like a URL; give only the repository's path, {example}"
        ));
    }
    if r.ends_with(".git") {
        return Err(format!(
            "webhook.repository {r:?} ends in .git; forges name a repository without it, {example}"
        ));
    }
    if r.split('/').count() < 2 || r.split('/').any(str::is_empty) {
        return Err(format!(
            "webhook.repository {r:?} is not owner/name (no empty parts, no leading or trailing '/'); {example}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// `repository` in one app's webhook section: the value kept, or the error, which names the key.
    fn check(provider: &str, repository: &str) -> Result<Option<String>, String> {
        let source = if provider == "distribution" {
            "image = \"127.0.0.1:5000/acme/api\""
        } else {
            "repo = \"/r\""
        };
        let text = format!(
            "state_dir = \"/s\"\n[apps.a]\n{source}\npath = \"/p\"\n\
             [apps.a.webhook]\nprovider = \"{provider}\"\nsecret_file = \"/s\"\nrepository = {repository}\n"
        );
        Config::parse(std::path::Path::new("/x/haul.toml"), &text)
            .map(|c| c.apps["a"].webhook.as_ref().and_then(|w| w.repository.clone()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn repository_is_a_path_and_only_where_payloads_name_one() {
        let ok = [
            ("github", "\"acme/blog\""),
            ("github", "\"Acme/Blog.site\""),
            ("gitlab", "\"group/sub/deeper/blog\""),
            ("gitea", "\"acme/blog\""),
            ("forgejo", "\"acme/blog\""),
            ("bitbucket", "\"PROJ/blog\""),
            ("bitbucket", "\"~admin/blog\""),
        ];
        for (provider, value) in ok {
            let want = value.trim_matches('"').to_string();
            assert_eq!(check(provider, value), Ok(Some(want)), "{provider} {value}");
        }
        let refused = [
            ("github", "\"blog\"", "is not owner/name"),
            ("github", "\"acme/\"", "is not owner/name"),
            ("github", "\"/acme/blog\"", "is not owner/name"),
            ("gitlab", "\"group//blog\"", "is not owner/name"),
            ("github", "\"\"", "is not owner/name"),
            ("github", "\"acme/blog.git\"", "ends in .git"),
            ("github", "\"git@github.com:acme/blog\"", "looks like a URL"),
            ("github", "\"https://github.com/acme/blog\"", "looks like a URL"),
            ("github", "\"acme/my blog\"", "whitespace or control"),
            ("github", "\"acme/blog\\n\"", "whitespace or control"),
            ("github", "\"acme/\\u0000blog\"", "whitespace or control"),
            ("github", "7", "invalid type"),
            (
                "standard",
                "\"acme/blog\"",
                "Standard Webhooks payloads name no repository",
            ),
            (
                "distribution",
                "\"acme/api\"",
                "already matched against the repository in `image`",
            ),
        ];
        for (provider, value, needle) in refused {
            match check(provider, value) {
                Err(e) => {
                    assert!(e.contains(needle), "{provider} {value}: {e}");
                    assert!(
                        e.contains("repository"),
                        "{provider} {value}: {e} does not name the key"
                    );
                }
                Ok(kept) => panic!("{provider} {value} was accepted as {kept:?}"),
            }
        }
    }
}
