//! `[apps.NAME]`: one deployable thing, validated into an [`AppConfig`].
//!
//! The sections an app is made of (source, track, verify, health, webhook) each have their own file; this one
//! checks the rest and the rules between them, in a fixed order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::files::ConfigDir;
use super::raw::RawApp;
use super::units::{duration_or, optional_duration, parse_duration, parse_size};
use super::{fleet, health, source, track, verify, webhook};
use super::{Health, Rollout, Source, Track, Verifier, WebhookConfig};
use crate::model;

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
    /// Run once the health gate passed (a cache purge, a smoke test); a failure does not roll back.
    pub after: Vec<String>,
    /// `shared`: files and directories (a trailing `/`) linked from `<path>/shared/` into every release.
    pub shared: Vec<String>,
    /// A monorepo app: the globs (`services/blog/**`) of the files it is built from; a push that changes
    /// none of them since the live release is ignored.
    pub paths: Vec<String>,
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
    /// `fleet = true`: deployed across the fleet's hosts, this way (`None`: this host alone).
    pub fleet: Option<Rollout>,
    /// When automatic triggers may deploy (its own `windows`, else the top level's; none: always).
    pub windows: Option<std::sync::Arc<super::windows::Windows>>,
    /// `approve = true`: every automatic trigger waits for `haul approve` (none: they deploy on their own),
    /// at most this long before it is recorded `expired`.
    pub approve_within: Option<Duration>,
    /// `[apps.NAME.allow]`: who may do what to this app (over the top level's `[allow]`).
    pub allow: super::allow::Allow,
    /// `verify_commits`: a git app deploys only commits (tag apps: tags) signed by one of these keys.
    pub verify_commits: Option<CommitSigners>,
    /// `gate = "ci"`: automatic triggers wait for the forge's signed word that this workflow passed on the
    /// commit (GitHub `workflow_run`).
    pub ci_gate: Option<String>,
    /// `[apps.NAME.report]`: deploys told back to the forge as commit statuses.
    pub report: Option<super::ReportConfig>,
}

/// Who may sign what a git app deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitSigners {
    /// An SSH `allowed_signers` file (`gpg.ssh.allowedSignersFile`).
    Ssh(PathBuf),
    /// A GPG keyring (exported public keys), imported into a private GNUPGHOME for each check.
    Gpg(PathBuf),
}

impl AppConfig {
    /// The artifact credential files this app reads (each must be private): (config key, path).
    pub(crate) fn credential_files(&self) -> Vec<(&'static str, &Path)> {
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
        out.extend(
            self.report
                .as_ref()
                .map(|r| ("report.token_file", r.token_file.as_path())),
        );
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

    /// Every configured place this app's releases come from, as written (a URL may carry a credential, and
    /// a location may hold `{sha}`): `repo` and `mirrors`; for an image its `oci://` form, `registry/repo`
    /// and the registry API's `registry/v2/repo`; for an object `s3://bucket/key`, `bucket/key` and the
    /// endpoint; for a download its URL. What the status page replaces with a marker.
    pub(crate) fn source_locations(&self) -> Vec<String> {
        let mut out = vec![self.repo.clone()];
        out.extend(self.mirrors.iter().cloned());
        match &self.source {
            Source::Git => {}
            Source::Image(i) => {
                out.push(format!("{}/{}", i.registry, i.repository));
                out.push(format!("{}/v2/{}", i.registry, i.repository));
            }
            Source::Object(o) => {
                out.push(format!("s3://{}/{}", o.bucket, o.key));
                out.push(format!("{}/{}", o.bucket, o.key));
                out.extend(o.endpoint.iter().cloned());
            }
            Source::Url(u) => out.push(u.url.clone()),
        }
        out.retain(|l| !l.is_empty());
        out
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

/// An app name is a file name (its lock under `state_dir`) and a URL path segment (`/hooks/NAME`), so it keeps
/// to letters, digits and `-_.`, and starts with a letter or digit.
pub(crate) fn is_valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Every `[apps.NAME]`, in name order; an error is prefixed with the app's table so it can be found.
/// Every app; `windows` (the top level's, in `timezone`) goes to each app that sets none of its own.
pub(crate) fn parse_all(
    raw: BTreeMap<String, RawApp>,
    dir: &ConfigDir,
    windows: &[super::raw::RawWindow],
    timezone: Option<&str>,
) -> Result<BTreeMap<String, AppConfig>, String> {
    let top = super::windows::parse(windows, timezone)
        .map_err(|m| format!("windows: {m}"))?
        .map(std::sync::Arc::new);
    let mut apps = BTreeMap::new();
    for (name, mut a) in raw {
        let own = match a.windows.take() {
            Some(w) => super::windows::parse(&w, a.timezone.as_deref().or(timezone))
                .map_err(|m| format!("[apps.{name}] windows: {m}"))?
                .map(std::sync::Arc::new),
            None if a.timezone.is_some() && !windows.is_empty() => {
                super::windows::parse(windows, a.timezone.as_deref())
                    .map_err(|m| format!("[apps.{name}] timezone: {m}"))?
                    .map(std::sync::Arc::new)
            }
            None => top.clone(),
        };
        let mut app = parse_app(&name, a, dir).map_err(|m| format!("[apps.{name}] {m}"))?;
        // A fleet's rollouts are the conductor's to time: windows there are not built yet.
        if app.fleet.is_some() && own.is_some() && own != top {
            return Err(format!("[apps.{name}] windows are for apps that deploy on this host alone (not fleet = true) for now"));
        }
        app.windows = own.filter(|_| app.fleet.is_none());
        apps.insert(name, app);
    }
    Ok(apps)
}

/// One app, checked in a fixed order (what it deploys and from where, then how), so that a config with
/// several mistakes always reports the same one first.
fn parse_app(name: &str, a: RawApp, dir: &ConfigDir) -> Result<AppConfig, String> {
    if !is_valid_app_name(name) {
        return Err("app names use letters, digits, '-', '_' and '.', start with a letter or digit, and are at most 64 characters".into());
    }
    let origin = parse_origin(&a, dir)?;
    let Controls {
        verify_commits,
        ci_gate,
        approve_within,
    } = controls(&a, &origin, dir)?;
    if a.keep_releases < 2 {
        return Err(
            "keep_releases must be at least 2 (the live release and the one before it are always kept)"
                .into(),
        );
    }
    let or_secs = |key: &str, value: &Option<String>, default: u64| {
        duration_or(key, value.as_deref(), Duration::from_secs(default))
    };
    let step_timeout = or_secs("step_timeout", &a.step_timeout, 600)?;
    let fetch_timeout = or_secs("fetch_timeout", &a.fetch_timeout, 300)?;
    let health = a.health.map(health::parse).transpose()?;
    let on_restart = parse_on_restart(a.on_restart.as_deref())?;
    let build_retries = a.build_retries.unwrap_or(0);
    if build_retries > 5 {
        return Err("build_retries must be at most 5".into());
    }
    let max_fetches_per_minute = a.max_fetches_per_minute.unwrap_or(30);
    if max_fetches_per_minute == 0 {
        return Err("max_fetches_per_minute must be at least 1".into());
    }
    check_mirrors(&a.mirrors, a.deploy_key.is_some() && a.known_hosts.is_some())?;
    let mirror_mode = parse_mirror_mode(a.mirror_mode.as_deref())?;
    let alert_if_no_success_within = optional_duration(
        "alert_if_no_success_within",
        a.alert_if_no_success_within.as_deref(),
    )?;
    let realert_every = or_secs("realert_every", &a.realert_every, 24 * 3600)?;
    if realert_every < Duration::from_secs(60) {
        return Err("realert_every must be at least 1m".into());
    }
    let fetch_attempts = a.fetch_attempts.unwrap_or(3);
    if !(1..=10).contains(&fetch_attempts) {
        return Err("fetch_attempts must be between 1 and 10".into());
    }
    check_shared(&a.shared)?;
    if a.paths.iter().any(|p| p.trim().is_empty() || p.starts_with('/')) {
        return Err("paths are globs relative to the repository root, like \"services/blog/**\"".into());
    }
    if !a.paths.is_empty() && (a.image.is_some() || a.object.is_some() || a.url.is_some()) {
        return Err("paths is for git apps (monorepos)".into());
    }
    for (key, steps) in [
        ("build", &a.build),
        ("activate", &a.activate),
        ("after", &a.after),
    ] {
        if steps.iter().any(|s| s.trim().is_empty()) {
            return Err(format!("{key} has an empty step"));
        }
    }
    let webhook = a
        .webhook
        .map(|w| webhook::parse(w, &origin.source, dir))
        .transpose()?;
    let fleet = fleet::parse_app(name, a.fleet, a.rollout)?;
    let allow = super::allow::parse(a.allow.clone(), "allow")?;
    let report = match a.report.clone() {
        Some(_) if origin.source.is_artifact() => {
            return Err(
                "report is for git apps (a commit status goes on the commit that was deployed)".into(),
            )
        }
        Some(r) => Some(super::report::parse(r, name, dir)?),
        None => None,
    };
    Ok(AppConfig {
        repo: shown_repo(&origin.source, a.repo, dir),
        branch: a.branch,
        track: origin.track,
        poll: origin.poll,
        deploy_key: a.deploy_key.as_deref().map(|p| dir.resolve(p)),
        known_hosts: a.known_hosts.as_deref().map(|p| dir.resolve(p)),
        path: dir.resolve(&a.path),
        keep_releases: a.keep_releases,
        build: a.build,
        activate: a.activate,
        after: a.after,
        shared: a.shared,
        paths: a.paths,
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
        mirrors: a.mirrors,
        mirror_mode,
        name: name.to_string(),
        source: origin.source,
        verify: origin.verify,
        max_artifact_bytes: origin.max_artifact_bytes,
        fleet,
        windows: None,
        approve_within,
        allow,
        verify_commits,
        ci_gate,
        report,
    })
}

/// `shared` entries: paths inside the release (no leading `/`, no `.` or `..`).
fn check_shared(shared: &[String]) -> Result<(), String> {
    for entry in shared {
        let rel = entry.trim_end_matches('/');
        let path = Path::new(rel);
        let bad = rel.is_empty()
            || path.is_absolute()
            || path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad {
            return Err(format!(
                "shared {entry:?} must be a path inside the release, like \".env\" or \"storage/\" (no leading /, no . or ..)"
            ));
        }
    }
    Ok(())
}

/// What a team controls of an app beyond how it deploys (issue 14): signed commits, the CI gate, approvals.
struct Controls {
    verify_commits: Option<CommitSigners>,
    ci_gate: Option<String>,
    approve_within: Option<Duration>,
}

fn controls(a: &RawApp, origin: &Origin, dir: &ConfigDir) -> Result<Controls, String> {
    let fleet = a.fleet;
    let verify_commits =
        match &a.verify_commits {
            None => None,
            Some(_) if origin.source.is_artifact() => {
                return Err("verify_commits is for git apps (an artifact's signature is `verify`)".into())
            }
            Some(v) => Some(match (&v.ssh_allowed_signers, &v.gpg_keyring) {
                (Some(f), None) => CommitSigners::Ssh(dir.resolve(f)),
                (None, Some(f)) => CommitSigners::Gpg(dir.resolve(f)),
                _ => return Err(
                    "verify_commits is either { ssh_allowed_signers = \"...\" } or { gpg_keyring = \"...\" }"
                        .into(),
                ),
            }),
        };
    let ci_gate = match (a.gate.as_deref(), &a.gate_workflow) {
        (None, None) => None,
        (None, Some(_)) => return Err("gate_workflow needs gate = \"ci\"".into()),
        (Some("ci"), _) if origin.source.is_artifact() => {
            return Err(
                "gate = \"ci\" is for git apps (a registry or bucket says when CI is done by publishing)"
                    .into(),
            )
        }
        (Some("ci"), w) => {
            let provider = a.webhook.as_ref().map(|w| w.provider.as_str()).unwrap_or("");
            match (provider, w.as_deref().map(str::trim)) {
                ("github", Some(name)) if !name.is_empty() => Some(name.to_string()),
                ("github", _) => {
                    return Err(
                        "gate = \"ci\" needs gate_workflow, the workflow's name as GitHub shows it (\"CI\")"
                            .into(),
                    )
                }
                // GitLab: any pipeline of the branch, or only the one named so (`workflow:name`).
                ("gitlab", name) => Some(name.unwrap_or_default().to_string()),
                ("gitea" | "forgejo", Some(name)) if !name.is_empty() => Some(name.to_string()),
                ("gitea" | "forgejo", _) => {
                    return Err(
                        "gate = \"ci\" needs gate_workflow: the workflow's file (\"ci.yml\", or its path \".forgejo/workflows/ci.yml\"; Gitea also takes its name)"
                            .into(),
                    )
                }
                _ => {
                    return Err(format!(
                        "gate = \"ci\" needs a github, gitlab, gitea or forgejo webhook (workflow_run, Pipeline Hook, action_run_*; see PROVIDERS.md), not {:?}",
                        if provider.is_empty() { "none" } else { provider }
                    ))
                }
            }
        }
        (Some(other), _) => return Err(format!("gate = {other:?}: the only gate is \"ci\"")),
    };
    let approve_within = match (a.approve, a.approve_within.as_deref()) {
        (false, Some(_)) => return Err("approve_within needs approve = true".into()),
        (false, None) => None,
        (true, w) => Some(duration_or("approve_within", w, Duration::from_secs(24 * 3600))?),
    };
    if approve_within.is_some() && fleet {
        return Err(
            "approve = true is for apps that deploy on this host alone (not fleet = true) for now".into(),
        );
    }
    if approve_within.is_some_and(|d| d < Duration::from_secs(60)) {
        return Err("approve_within is at least 1m (a person has to read the notification)".into());
    }
    Ok(Controls {
        verify_commits,
        ci_gate,
        approve_within,
    })
}

/// What an app deploys and where it comes from: checked before how it deploys, and in this order.
struct Origin {
    track: Track,
    poll: Option<Duration>,
    source: Source,
    verify: Option<Verifier>,
    max_artifact_bytes: u64,
}

fn parse_origin(a: &RawApp, dir: &ConfigDir) -> Result<Origin, String> {
    let track = track::git_track(a)?;
    let poll = parse_poll(a.poll.as_deref())?;
    let source = source::parse(a, dir)?;
    let track = track::for_source(a, &source, track)?;
    check_fits_source(a, &source, poll.is_some())?;
    let verify = verify::parse(a.verify.as_ref(), &source, dir)?;
    let max_artifact_bytes = match a.max_artifact_size.as_deref() {
        Some(s) => parse_size(s).map_err(|e| format!("max_artifact_size: {e}"))? as u64,
        None => 4 * 1024 * 1024 * 1024,
    };
    // haul's ssh uses the app's own key and pinned host keys only (no agent, no `~/.ssh`).
    if model::url::is_ssh_url(&a.repo) && (a.deploy_key.is_none() || a.known_hosts.is_none()) {
        return Err("an SSH repo needs `deploy_key` (the private half of a read-only deploy key) and `known_hosts` (the pinned host keys)".into());
    }
    Ok(Origin {
        track,
        poll,
        source,
        verify,
        max_artifact_bytes,
    })
}

fn parse_poll(value: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(s) = value else {
        return Ok(None);
    };
    let d = parse_duration(s).map_err(|e| format!("poll: {e}"))?;
    if d < Duration::from_secs(1) {
        return Err("poll must be at least 1s (and a minute or more is kinder to your forge)".into());
    }
    Ok(Some(d))
}

/// The keys that only make sense for one kind of source.
fn check_fits_source(a: &RawApp, source: &Source, polls: bool) -> Result<(), String> {
    if source.is_templated() && polls {
        return Err("poll cannot watch a location with {sha} in it (which sha?); poll a fixed key or URL, or send a webhook after the upload".into());
    }
    if !source.is_artifact()
        && (a.repo.is_empty() || a.repo.starts_with('-') || a.repo.chars().any(char::is_control))
    {
        return Err(format!("repo {:?} is not a git URL or path", a.repo));
    }
    if source.is_artifact() && !a.mirrors.is_empty() {
        return Err("mirrors are for git apps".into());
    }
    Ok(())
}

/// A mirror is fetched like the repo, with the same key and pinned host keys.
fn check_mirrors(mirrors: &[String], has_ssh_keys: bool) -> Result<(), String> {
    for m in mirrors {
        if m.is_empty() || m.starts_with('-') || m.chars().any(char::is_control) {
            return Err(format!("mirrors: {m:?} is not a git URL or path"));
        }
        if model::url::is_ssh_url(m) && !has_ssh_keys {
            return Err("an SSH mirror needs `deploy_key` and `known_hosts`, like an SSH repo".into());
        }
    }
    Ok(())
}

fn parse_on_restart(value: Option<&str>) -> Result<OnRestart, String> {
    match value {
        None | Some("resume") => Ok(OnRestart::Resume),
        Some("hold") => Ok(OnRestart::Hold),
        Some(other) => Err(format!("on_restart {other:?} must be \"resume\" or \"hold\"")),
    }
}

fn parse_mirror_mode(value: Option<&str>) -> Result<MirrorMode, String> {
    match value {
        None | Some("fallback") => Ok(MirrorMode::Fallback),
        Some("prefer") => Ok(MirrorMode::Prefer),
        Some(other) => Err(format!(
            "mirror_mode {other:?} must be \"prefer\" or \"fallback\""
        )),
    }
}

/// What `repo` holds once parsed: where an artifact comes from (without credentials), a git URL as written,
/// or a local repository's path made absolute.
fn shown_repo(source: &Source, repo: String, dir: &ConfigDir) -> String {
    if let Some(display) = source::source_display(source) {
        display
    } else if repo.contains("://") || model::url::is_ssh_url(&repo) {
        repo
    } else {
        dir.resolve(Path::new(&repo)).to_string_lossy().into_owned()
    }
}
