//! The shape of `haul.toml`, exactly as serde reads it, before anything is checked.
//!
//! Every struct denies unknown fields, so a typo is an error that names the key instead of a setting that is
//! silently ignored. Field order matters: serde lists the expected keys in this order when it rejects one.
//! Defaults that need no judgement live here too; everything else is decided by the section that validates it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    pub(crate) state_dir: PathBuf,
    #[serde(default)]
    pub(crate) max_body: Option<String>,
    pub(crate) body_timeout: Option<String>,
    pub(crate) header_timeout: Option<String>,
    pub(crate) stop_grace: Option<String>,
    pub(crate) log_retention: Option<String>,
    pub(crate) rate_limit_per_minute: Option<u32>,
    #[serde(default)]
    pub(crate) allow_ips: Vec<String>,
    pub(crate) client_ip_header: Option<String>,
    #[serde(default)]
    pub(crate) notify: Vec<RawNotify>,
    pub(crate) status_page: Option<bool>,
    /// Where people reach the status page (links in commit statuses).
    pub(crate) public_url: Option<String>,
    pub(crate) fleet: Option<RawFleet>,
    /// Deploy windows for every app that sets none of its own.
    #[serde(default)]
    pub(crate) windows: Vec<RawWindow>,
    pub(crate) timezone: Option<String>,
    /// Who may do what over the control socket, for every app that does not say.
    pub(crate) allow: Option<RawAllow>,
    #[serde(default)]
    pub(crate) apps: BTreeMap<String, RawApp>,
}

/// `[allow]` / `[apps.NAME.allow]`: per action, users and `@groups`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    pub(crate) deploy: Option<Vec<String>>,
    pub(crate) rollback: Option<Vec<String>>,
    pub(crate) pause: Option<Vec<String>>,
    pub(crate) approve: Option<Vec<String>>,
    pub(crate) r#override: Option<Vec<String>>,
}

/// `{ allow = "Mon-Fri 09:00-17:00" }` or `{ deny = "2026-12-24 - 2026-12-27" }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWindow {
    pub(crate) allow: Option<String>,
    pub(crate) deny: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    #[serde(default)]
    pub(crate) nats: Vec<String>,
    pub(crate) host: Option<String>,
    pub(crate) credentials_file: Option<PathBuf>,
    pub(crate) user: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    pub(crate) tls_ca_file: Option<PathBuf>,
    pub(crate) tls_cert_file: Option<PathBuf>,
    pub(crate) tls_key_file: Option<PathBuf>,
    pub(crate) replicas: Option<usize>,
    pub(crate) lease_ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollout {
    pub(crate) canary: Option<usize>,
    pub(crate) max_parallel: Option<usize>,
    pub(crate) soak: Option<String>,
    pub(crate) max_failures: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub(crate) kind: String,
    pub(crate) url: Option<String>,
    pub(crate) secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) to: Vec<String>,
    pub(crate) from: Option<String>,
    pub(crate) sendmail: Option<String>,
    #[serde(default)]
    pub(crate) apps: Vec<String>,
    pub(crate) events: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    #[serde(default)]
    pub(crate) repo: String,
    pub(crate) image: Option<String>,
    pub(crate) tag: Option<String>,
    pub(crate) image_kind: Option<String>,
    pub(crate) registry_username: Option<String>,
    pub(crate) registry_password_file: Option<PathBuf>,
    pub(crate) registry_token_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) plain_http: bool,
    pub(crate) object: Option<String>,
    pub(crate) s3_endpoint: Option<String>,
    pub(crate) s3_region: Option<String>,
    pub(crate) s3_access_key_id_file: Option<PathBuf>,
    pub(crate) s3_secret_access_key_file: Option<PathBuf>,
    pub(crate) url: Option<String>,
    pub(crate) url_token_file: Option<PathBuf>,
    pub(crate) verify: Option<RawVerify>,
    pub(crate) max_artifact_size: Option<String>,
    #[serde(default = "default_branch")]
    pub(crate) branch: String,
    pub(crate) tags: Option<String>,
    pub(crate) poll: Option<String>,
    pub(crate) deploy_key: Option<PathBuf>,
    pub(crate) known_hosts: Option<PathBuf>,
    pub(crate) path: PathBuf,
    #[serde(default = "default_keep")]
    pub(crate) keep_releases: usize,
    #[serde(default)]
    pub(crate) build: Vec<String>,
    #[serde(default)]
    pub(crate) activate: Vec<String>,
    /// Steps run once the health gate passed; a failure there does not roll back.
    #[serde(default)]
    pub(crate) after: Vec<String>,
    /// Files and directories (trailing `/`) linked from `<path>/shared/` into every release.
    #[serde(default)]
    pub(crate) shared: Vec<String>,
    /// A monorepo app: globs of the files it is built from.
    #[serde(default)]
    pub(crate) paths: Vec<String>,
    pub(crate) step_timeout: Option<String>,
    pub(crate) fetch_timeout: Option<String>,
    pub(crate) fetch_attempts: Option<u32>,
    pub(crate) webhook: Option<RawWebhook>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) build_retries: Option<u32>,
    pub(crate) on_restart: Option<String>,
    pub(crate) max_fetches_per_minute: Option<u32>,
    #[serde(default)]
    pub(crate) mirrors: Vec<String>,
    pub(crate) mirror_mode: Option<String>,
    pub(crate) alert_if_no_success_within: Option<String>,
    pub(crate) realert_every: Option<String>,
    #[serde(default)]
    pub(crate) fleet: bool,
    pub(crate) rollout: Option<RawRollout>,
    /// The app's own deploy windows (replacing the top level's) and their zone.
    pub(crate) windows: Option<Vec<RawWindow>>,
    pub(crate) timezone: Option<String>,
    #[serde(default)]
    pub(crate) approve: bool,
    pub(crate) approve_within: Option<String>,
    pub(crate) allow: Option<RawAllow>,
    pub(crate) verify_commits: Option<RawVerifyCommits>,
    pub(crate) gate: Option<String>,
    pub(crate) gate_workflow: Option<String>,
    pub(crate) report: Option<super::report::RawReport>,
}

/// `verify_commits = { ssh_allowed_signers = "..." }` or `{ gpg_keyring = "..." }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerifyCommits {
    pub(crate) ssh_allowed_signers: Option<PathBuf>,
    pub(crate) gpg_keyring: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerify {
    pub(crate) minisign_key: Option<PathBuf>,
    pub(crate) ssh_allowed_signers: Option<PathBuf>,
    pub(crate) ssh_identity: Option<String>,
    pub(crate) ssh_namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) url: Option<String>,
    pub(crate) command: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) retries: Option<u32>,
    pub(crate) interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebhook {
    pub(crate) provider: String,
    pub(crate) secret_file: Option<PathBuf>,
    pub(crate) previous_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) secret_files: Vec<PathBuf>,
    pub(crate) repository: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:9000".into()
}
fn default_branch() -> String {
    "main".into()
}
fn default_keep() -> usize {
    5
}
