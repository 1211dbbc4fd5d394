//! The configuration contract: `haul.toml` parsed into typed, validated settings.
//!
//! Everything a person can get wrong is caught here, before the daemon starts, with a message that names the
//! key and says how to fix it. Secrets are never inline: they are read from files whose mode is checked, or
//! from systemd's `$CREDENTIALS_DIRECTORY`.
//!
//! # Layout
//!
//! Raw, then validated: `raw` is the file exactly as serde reads it, and each section turns its part of that
//! into the types below. [`Config::parse`] only calls the sections, in order.
//!
//! - `raw`: the serde structs, with `deny_unknown_fields`.
//! - `server`: the top-level settings (`listen`, `state_dir`, the webhook endpoint's limits).
//! - `app`: `[apps.NAME]` into an [`AppConfig`], and the rules between its parts, which have their own files:
//!   `source` (git, image, object, url), `track` (branch, tags, image tag), `verify`, `health`, `webhook`.
//! - `notify`: the `[[notify]]` targets.
//! - `fleet`: `[fleet]` (the NATS engine, this host's name) and each app's `fleet = true` and `[rollout]`.
//! - `units`: durations and sizes. `files`: paths beside the config, private files, secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod allow;
mod app;
mod files;
mod fleet;
mod health;
mod notify;
mod preflight;
mod raw;
mod report;
mod server;
mod source;
mod track;
mod units;
mod verify;
mod webhook;
mod windows;

pub use allow::{Action, Allow, Peer};
pub(crate) use app::is_valid_app_name;
pub use app::{AppConfig, CommitSigners, MirrorMode, OnRestart};
pub(crate) use files::check_private_file;
use files::ConfigDir;
pub use fleet::{FleetConfig, Rollout};
pub use health::{Health, HealthCheck};
pub use notify::{NotifyKind, NotifyTarget};
pub(crate) use preflight::preflight;
pub use preflight::Secrets;
use raw::RawConfig;
pub use report::{ReportConfig, StatusApi};
pub use source::{ImageKind, ImageSource, ObjectSource, Source, UrlSource};
pub(crate) use track::glob_match;
pub use track::{paths_match, Track};
pub use verify::Verifier;
pub(crate) use webhook::check_repository;
pub use webhook::{Provider, WebhookConfig};
pub use windows::{shown as shown_instant, WindowState, Windows};

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
    /// `public_url`: where people reach the status page (commit statuses link to `<public_url>/deploys/<id>`).
    pub public_url: Option<String>,
    pub apps: BTreeMap<String, AppConfig>,
    /// `[fleet]`: this host is one of many, through NATS JetStream (`None`: haul never touches NATS).
    pub fleet: Option<FleetConfig>,
    /// `[allow]`: who may do what over the control socket, for every app that does not say.
    pub allow: Allow,
}

impl Config {
    pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
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
        // Notify targets come last: they may name apps, which must exist by then.
        let server = server::parse(&raw, &dir).map_err(invalid)?;
        let apps = app::parse_all(raw.apps, &dir, &raw.windows, raw.timezone.as_deref()).map_err(invalid)?;
        let notify = notify::parse(raw.notify, &dir, &apps).map_err(invalid)?;
        let allow = allow::parse(raw.allow, "[allow]").map_err(invalid)?;
        let fleet = raw
            .fleet
            .map(|f| fleet::parse(f, &dir))
            .transpose()
            .map_err(invalid)?;
        if let Some(app) = apps.values().find(|a| {
            a.report.as_ref().is_some_and(|r| r.api == StatusApi::Bitbucket) && server.public_url.is_none()
        }) {
            return Err(invalid(format!(
                "[apps.{}.report] bitbucket's build statuses must link somewhere: set public_url at the top level (where people reach haul's status page)",
                app.name
            )));
        }
        if fleet.is_none() {
            if let Some(app) = apps.values().find(|a| a.fleet.is_some()) {
                return Err(invalid(format!(
                    "[apps.{}] fleet = true needs a [fleet] section (the engine's nats servers and this host's name)",
                    app.name
                )));
            }
        }
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
            public_url: server.public_url,
            apps,
            fleet,
            allow,
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
        let w = blog.windows.as_ref().expect("the example's deploy windows");
        assert_eq!(w.timezone, "Europe/Berlin");
        assert_eq!(blog.approve_within, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(blog.step_timeout, Duration::from_secs(600));
        assert_eq!(blog.build, ["npm ci", "npm run build"]);
        assert_eq!(blog.webhook.as_ref().map(|w| w.provider), Some(Provider::Github));
        assert_eq!(
            blog.webhook.as_ref().and_then(|w| w.repository.as_deref()),
            Some("acme/blog")
        );
        let artifacts =
            parse(include_str!("../../examples/artifacts.toml")).expect("examples/artifacts.toml must parse");
        assert!(matches!(&artifacts.apps["shop"].source, Source::Image(i) if i.kind == ImageKind::Container));
        assert!(artifacts.apps["worker"].source.is_templated());
        assert!(artifacts.apps["api"].verify.is_some());
        let fleet = parse(include_str!("../../examples/fleet.toml")).expect("examples/fleet.toml must parse");
        let f = fleet.fleet.as_ref().expect("[fleet]");
        assert_eq!((f.host.as_str(), f.servers.len(), f.replicas), ("web-3", 3, 3));
        let r = fleet.apps["blog"].fleet.as_ref().expect("a fleet app");
        assert_eq!(
            (r.canary, r.max_parallel, r.soak, r.max_failures),
            (1, 5, Duration::from_secs(30), 0)
        );
        assert!(
            cfg.fleet.is_none() && blog.fleet.is_none(),
            "no fleet unless asked"
        );
    }

    #[test]
    fn a_fleet_app_needs_a_fleet() {
        let text = "state_dir = \"/s\"\n[apps.a]\nrepo = \"/r\"\npath = \"/p\"\nfleet = true\n";
        let err = parse(text).expect_err("no [fleet]").to_string();
        assert!(
            err.contains("[apps.a] fleet = true needs a [fleet] section"),
            "{err}"
        );
        let text =
            "state_dir = \"/s\"\n[apps.a]\nrepo = \"/r\"\npath = \"/p\"\n[apps.a.rollout]\ncanary = 2\n";
        let err = parse(text).expect_err("rollout without fleet").to_string();
        assert!(
            err.contains("[apps.a] a rollout section needs fleet = true"),
            "{err}"
        );
        let text =
            "state_dir = \"/s\"\n[fleet]\nnats = [\"nats://127.0.0.1:4222\"]\nhost = \"h\"\nnope = 1\n";
        let err = parse(text).expect_err("typo").to_string();
        assert!(err.contains("nope"), "{err}");
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
