//! The configuration contract: `haul.toml` parsed into typed, validated settings.
//!
//! Everything a person can get wrong is caught here, before the daemon starts, with a message that names the
//! key and says how to fix it. Secrets are never inline: they are read from files whose mode is checked, or
//! from systemd's `$CREDENTIALS_DIRECTORY`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model;

mod files;
mod health;
mod notify;
mod raw;
mod server;
mod source;
mod track;
mod units;
mod verify;
mod webhook;

pub use files::check_private_file;
use files::ConfigDir;
pub use health::{Health, HealthCheck};
pub use notify::{NotifyKind, NotifyTarget};
use raw::RawConfig;
pub use source::{ImageKind, ImageSource, ObjectSource, Source, UrlSource};
pub use track::{glob_match, Track};
use units::{parse_duration, parse_size};
pub use verify::Verifier;
pub use webhook::{Provider, WebhookConfig};

pub const DEFAULT_CONFIG: &str = "/etc/haul/haul.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: String,
    pub state_dir: PathBuf,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    /// How long a client may take to send its request headers.
    pub header_timeout: Duration,
    /// On SIGTERM, how long a running deploy may go on before its process group is killed.
    pub stop_grace: Duration,
    /// Deploy logs older than this are deleted (on the back of a deploy, at most once an hour); `None`: kept.
    pub log_retention: Option<Duration>,
    /// Webhook requests per minute from one client address (0: unlimited).
    pub rate_limit_per_minute: u32,
    /// When set, only these networks may call the webhook endpoints.
    pub allow_ips: Vec<ipnet::IpNet>,
    /// A header set by the reverse proxy in front of haul that carries the client address.
    pub client_ip_header: Option<String>,
    pub notify: Vec<NotifyTarget>,
    /// Serve the status page at `/`.
    pub status_page: bool,
    pub apps: BTreeMap<String, AppConfig>,
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub repo: String,
    pub branch: String,
    pub track: Track,
    pub poll: Option<Duration>,
    pub deploy_key: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub path: PathBuf,
    pub keep_releases: usize,
    pub build: Vec<String>,
    pub activate: Vec<String>,
    pub step_timeout: Duration,
    pub fetch_timeout: Duration,
    pub fetch_attempts: u32,
    pub webhook: Option<WebhookConfig>,
    pub health: Option<Health>,
    /// Extra attempts for a failing build step (0: fail at once).
    pub build_retries: u32,
    pub on_restart: OnRestart,
    /// Fetches per minute to this app's upstream host, shared by every app that uses it.
    pub max_fetches_per_minute: u32,
    /// The dead-man's switch: alert when no deploy succeeded for this long.
    pub alert_if_no_success_within: Option<Duration>,
    pub realert_every: Duration,
    /// Other places to fetch the same repository from (a cache, a mirror).
    pub mirrors: Vec<String>,
    pub mirror_mode: MirrorMode,
    /// Where releases come from: git (`repo`), or an artifact built in CI (`image`, `object`, `url`).
    pub source: Source,
    /// When set, an artifact must carry a valid detached signature by this key.
    pub verify: Option<Verifier>,
    /// The most an artifact may unpack to.
    pub max_artifact_bytes: u64,
}

impl AppConfig {
    /// The artifact credential files this app reads (each must be private): (config key, path).
    pub fn credential_files(&self) -> Vec<(&'static str, &Path)> {
        let mut out: Vec<(&'static str, &Path)> = Vec::new();
        match &self.source {
            Source::Image(i) => {
                out.extend(i.password_file.as_deref().map(|p| ("registry_password_file", p)));
                out.extend(i.token_file.as_deref().map(|p| ("registry_token_file", p)));
            }
            Source::Object(o) => {
                out.extend(
                    o.access_key_id_file
                        .as_deref()
                        .map(|p| ("s3_access_key_id_file", p)),
                );
                out.extend(
                    o.secret_access_key_file
                        .as_deref()
                        .map(|p| ("s3_secret_access_key_file", p)),
                );
            }
            Source::Url(u) => out.extend(u.token_file.as_deref().map(|p| ("url_token_file", p))),
            Source::Git => {}
        }
        out
    }

    /// The upstream host this app's fetches count against (budget and rate-limit circuit).
    pub fn upstream(&self) -> String {
        match &self.source {
            Source::Git => crate::model::url::upstream_key(&self.repo),
            Source::Image(i) => i.registry.clone(),
            Source::Object(o) => match &o.endpoint {
                Some(e) => crate::model::url::upstream_key(e),
                None => format!("s3.{}.amazonaws.com", o.region),
            },
            Source::Url(u) => crate::model::url::upstream_key(&u.url),
        }
    }
}

/// When the mirrors are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorMode {
    /// Mirrors first; the primary only when they fail.
    Prefer,
    /// The primary first; mirrors when it is down or rate-limiting.
    Fallback,
}

/// What to do, at start-up, with a request that was queued when haul stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRestart {
    Resume,
    Hold,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let dir = ConfigDir::of(path);

        let server = server::parse(&raw, &dir).map_err(invalid)?;
        let mut apps = BTreeMap::new();
        for (name, a) in raw.apps {
            let ctx = |m: &str| invalid(format!("[apps.{name}] {m}"));
            if !is_valid_app_name(&name) {
                return Err(ctx("app names use letters, digits, '-', '_' and '.', start with a letter or digit, and are at most 64 characters"));
            }
            let track = track::git_track(&a).map_err(|m| ctx(&m))?;
            let poll = match &a.poll {
                None => None,
                Some(s) => {
                    let d = parse_duration(s).map_err(|e| ctx(&format!("poll: {e}")))?;
                    if d < Duration::from_secs(1) {
                        return Err(ctx(
                            "poll must be at least 1s (and a minute or more is kinder to your forge)",
                        ));
                    }
                    Some(d)
                }
            };
            let source = source::parse(&a, &dir).map_err(|m| ctx(&m))?;
            let track = track::for_source(&a, &source, track).map_err(|m| ctx(&m))?;
            if source.is_templated() && poll.is_some() {
                return Err(ctx("poll cannot watch a location with {sha} in it (which sha?); poll a fixed key or URL, or send a webhook after the upload"));
            }
            if !source.is_artifact()
                && (a.repo.is_empty() || a.repo.starts_with('-') || a.repo.chars().any(char::is_control))
            {
                return Err(ctx(&format!("repo {:?} is not a git URL or path", a.repo)));
            }
            if source.is_artifact() && !a.mirrors.is_empty() {
                return Err(ctx("mirrors are for git apps"));
            }
            let verify = verify::parse(a.verify.as_ref(), &source, &dir).map_err(|m| ctx(&m))?;
            let max_artifact_bytes = match &a.max_artifact_size {
                Some(s) => parse_size(s).map_err(|e| ctx(&format!("max_artifact_size: {e}")))? as u64,
                None => 4 * 1024 * 1024 * 1024,
            };
            if model::url::is_ssh_url(&a.repo) && (a.deploy_key.is_none() || a.known_hosts.is_none()) {
                return Err(ctx("an SSH repo needs `deploy_key` (the private half of a read-only deploy key) and `known_hosts` (the pinned host keys)"));
            }
            if a.keep_releases < 2 {
                return Err(ctx("keep_releases must be at least 2 (the live release and the one before it are always kept)"));
            }
            let step_timeout = match &a.step_timeout {
                Some(s) => parse_duration(s).map_err(|e| ctx(&format!("step_timeout: {e}")))?,
                None => Duration::from_secs(600),
            };
            let fetch_timeout = match &a.fetch_timeout {
                Some(s) => parse_duration(s).map_err(|e| ctx(&format!("fetch_timeout: {e}")))?,
                None => Duration::from_secs(300),
            };
            let health = a.health.map(health::parse).transpose().map_err(|m| ctx(&m))?;
            let on_restart = match a.on_restart.as_deref() {
                None | Some("resume") => OnRestart::Resume,
                Some("hold") => OnRestart::Hold,
                Some(other) => {
                    return Err(ctx(&format!(
                        "on_restart {other:?} must be \"resume\" or \"hold\""
                    )))
                }
            };
            let build_retries = a.build_retries.unwrap_or(0);
            if build_retries > 5 {
                return Err(ctx("build_retries must be at most 5"));
            }
            let max_fetches_per_minute = a.max_fetches_per_minute.unwrap_or(30);
            if max_fetches_per_minute == 0 {
                return Err(ctx("max_fetches_per_minute must be at least 1"));
            }
            for m in &a.mirrors {
                if m.is_empty() || m.starts_with('-') || m.chars().any(char::is_control) {
                    return Err(ctx(&format!("mirrors: {m:?} is not a git URL or path")));
                }
                if model::url::is_ssh_url(m) && (a.deploy_key.is_none() || a.known_hosts.is_none()) {
                    return Err(ctx(
                        "an SSH mirror needs `deploy_key` and `known_hosts`, like an SSH repo",
                    ));
                }
            }
            let mirror_mode = match a.mirror_mode.as_deref() {
                None | Some("fallback") => MirrorMode::Fallback,
                Some("prefer") => MirrorMode::Prefer,
                Some(other) => {
                    return Err(ctx(&format!(
                        "mirror_mode {other:?} must be \"prefer\" or \"fallback\""
                    )))
                }
            };
            let alert_if_no_success_within = match &a.alert_if_no_success_within {
                Some(s) => {
                    Some(parse_duration(s).map_err(|e| ctx(&format!("alert_if_no_success_within: {e}")))?)
                }
                None => None,
            };
            let realert_every = match &a.realert_every {
                Some(s) => parse_duration(s).map_err(|e| ctx(&format!("realert_every: {e}")))?,
                None => Duration::from_secs(24 * 3600),
            };
            if realert_every < Duration::from_secs(60) {
                return Err(ctx("realert_every must be at least 1m"));
            }
            let fetch_attempts = a.fetch_attempts.unwrap_or(3);
            if !(1..=10).contains(&fetch_attempts) {
                return Err(ctx("fetch_attempts must be between 1 and 10"));
            }
            for (key, steps) in [("build", &a.build), ("activate", &a.activate)] {
                if steps.iter().any(|s| s.trim().is_empty()) {
                    return Err(ctx(&format!("{key} has an empty step")));
                }
            }
            let webhook = a
                .webhook
                .map(|w| webhook::parse(w, &source, &dir))
                .transpose()
                .map_err(|m| ctx(&m))?;
            let app = AppConfig {
                repo: if let Some(display) = source::source_display(&source) {
                    display
                } else if a.repo.contains("://") || model::url::is_ssh_url(&a.repo) {
                    a.repo
                } else {
                    dir.resolve(Path::new(&a.repo)).to_string_lossy().into_owned()
                },
                branch: a.branch,
                track,
                poll,
                deploy_key: a.deploy_key.as_deref().map(|p| dir.resolve(p)),
                known_hosts: a.known_hosts.as_deref().map(|p| dir.resolve(p)),
                path: dir.resolve(&a.path),
                keep_releases: a.keep_releases,
                build: a.build,
                activate: a.activate,
                step_timeout,
                fetch_timeout,
                fetch_attempts,
                webhook,
                health,
                build_retries,
                on_restart,
                max_fetches_per_minute,
                alert_if_no_success_within,
                realert_every,
                mirrors: a.mirrors.clone(),
                mirror_mode,
                name: name.clone(),
                source,
                verify,
                max_artifact_bytes,
            };
            apps.insert(name, app);
        }
        let notify = notify::parse(raw.notify, &dir, &apps).map_err(invalid)?;
        Ok(Config {
            path: path.to_path_buf(),
            listen: server.listen,
            state_dir: server.state_dir,
            max_body_bytes: server.max_body_bytes,
            body_timeout: server.body_timeout,
            header_timeout: server.header_timeout,
            stop_grace: server.stop_grace,
            log_retention: server.log_retention,
            rate_limit_per_minute: server.rate_limit_per_minute,
            allow_ips: server.allow_ips,
            client_ip_header: server.client_ip_header,
            notify,
            status_page: server.status_page,
            apps,
        })
    }

    pub fn app(&self, name: &str) -> Result<&AppConfig, String> {
        self.apps.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.apps.keys().map(String::as_str).collect();
            format!(
                "no app named {name:?} in {} (configured: {})",
                self.path.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("haul.db")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("haul.sock")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.state_dir.join("logs")
    }
    pub fn mirrors_dir(&self) -> PathBuf {
        self.state_dir.join("mirrors")
    }
    pub fn locks_dir(&self) -> PathBuf {
        self.state_dir.join("locks")
    }
}

pub fn is_valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/haul/haul.toml"), text)
    }

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("../../examples/haul.toml");
        let cfg = parse(text).expect("examples/haul.toml must parse");
        let blog = &cfg.apps["blog"];
        assert_eq!(blog.branch, "main");
        assert_eq!(blog.step_timeout, Duration::from_secs(600));
        assert_eq!(blog.build, ["npm ci", "npm run build"]);
        assert_eq!(blog.webhook.as_ref().map(|w| w.provider), Some(Provider::Github));
        let artifacts =
            parse(include_str!("../../examples/artifacts.toml")).expect("examples/artifacts.toml must parse");
        assert!(matches!(&artifacts.apps["shop"].source, Source::Image(i) if i.kind == ImageKind::Container));
        assert!(artifacts.apps["worker"].source.is_templated());
        assert!(artifacts.apps["api"].verify.is_some());
    }

    #[test]
    fn mistakes_are_named() {
        let base = "state_dir = \"/tmp/s\"\n[apps.a]\npath = \"/srv/a\"\n";
        let cases = [
            ("[apps.a]\nrepo='/r'\npath='/p'\n", "state_dir"),
            (&format!("{base}repo = \"git@h:x.git\"\n") as &str, "deploy_key"),
            (&format!("{base}repo = \"/r\"\nbranch = \"-x\"\n"), "branch"),
            (
                &format!("{base}repo = \"/r\"\nkeep_releases = 1\n"),
                "keep_releases",
            ),
            (
                &format!("{base}repo = \"/r\"\nstep_timeout = \"soon\"\n"),
                "step_timeout",
            ),
            (&format!("{base}repo = \"/r\"\nbuild = [\"\"]\n"), "empty step"),
            (&format!("{base}repo = \"/r\"\ntypo = 1\n"), "typo"),
            (
                &format!("{base}repo = \"/r\"\n[apps.a.webhook]\nprovider = \"x\"\nsecret_file = \"/s\"\n"),
                "provider",
            ),
            (
                "state_dir = \"/s\"\n[apps.\"../x\"]\nrepo = \"/r\"\npath = \"/p\"\n",
                "app names",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?} gave {err:?}, wanted {needle:?}");
        }
    }
}
