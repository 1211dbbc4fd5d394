//! `haul init`: the first ten minutes on a new server, done safely. It writes what only this machine should
//! hold (a deploy key, a webhook secret, a commented config) with private modes, refuses to replace anything
//! that exists (a key a forge already trusts, a secret a forge already signs with, an operator's config),
//! contacts nobody, and prints exactly what a person must paste where. Trusting a host key is left to that
//! person on purpose: it is the one step that needs a human comparing fingerprints.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::config::{self, Config, Provider};
use crate::infra::runner::{self, Cmd, RunError};
use crate::model;

/// What `haul init` is asked to set up (the CLI's arguments, defaults applied).
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub config: PathBuf,
    pub app: String,
    /// A git repository, or (with `artifact`) none.
    pub repo: Option<String>,
    /// `--image`, `--object`, `--url` and their settings.
    pub artifact: super::init_source::ArtifactArgs,
    pub branch: String,
    pub path: PathBuf,
    pub keys_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub state_dir: PathBuf,
    pub public_url: String,
    /// Default: github for a repository, standard (CI tells haul) for an artifact.
    pub provider: Option<String>,
}

impl InitOptions {
    /// The CLI's arguments with their defaults: the app under /srv, keys and secrets beside the config.
    pub fn from_args(a: super::args::InitArgs, config: PathBuf) -> InitOptions {
        let cfg_dir = config
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        InitOptions {
            path: a.path.unwrap_or_else(|| PathBuf::from("/srv").join(&a.app)),
            keys_dir: a.keys_dir.unwrap_or_else(|| cfg_dir.join("keys")),
            secrets_dir: a.secrets_dir.unwrap_or_else(|| cfg_dir.join("secrets")),
            config,
            app: a.app,
            repo: a.repo,
            artifact: a.artifact,
            branch: a.branch,
            state_dir: a.state_dir,
            public_url: a.public_url,
            provider: a.provider,
        }
    }
}

/// Sets up one app and prints the manual steps. Nothing is left half-done: if a step fails, the files this run
/// created are removed again, so running it a second time starts clean.
pub async fn run(opts: InitOptions) -> anyhow::Result<()> {
    let done = init(&opts).await?;
    std::io::stdout()
        .lock()
        .write_all(done.instructions().as_bytes())
        .context(
            "cannot write the instructions to stdout (the files were created; run `haul check` to see them)",
        )
}

/// What a run did, for [`run`] to print and for tests to inspect.
#[derive(Debug)]
struct Done {
    plan: Plan,
    /// The public half of the deploy key, as a forge wants it pasted.
    key_line: Option<String>,
    /// When the config already existed: the section for the operator to append.
    section_to_append: Option<String>,
}

/// Validated inputs, with absolute paths (the config's relative paths would be relative to the config file, not
/// to where `haul init` ran).
#[derive(Debug)]
struct Plan {
    app: String,
    repo: String,
    branch: String,
    provider: Provider,
    /// `webhook.repository`, when the repo URL shows it.
    repository: Option<String>,
    config: PathBuf,
    state_dir: PathBuf,
    path: PathBuf,
    /// The deploy key and the pinned host keys, for an SSH repo only.
    ssh: Option<SshPlan>,
    /// An app built in CI: its source, credentials' places, signature key.
    artifact: Option<super::init_source::ArtifactPlan>,
    secret: PathBuf,
    hook_url: String,
}

#[derive(Debug)]
struct SshPlan {
    key: PathBuf,
    known_hosts: PathBuf,
    host: String,
    port: Option<u16>,
}

impl SshPlan {
    fn public_key(&self) -> PathBuf {
        let mut p = self.key.clone().into_os_string();
        p.push(".pub");
        p.into()
    }
}

async fn init(opts: &InitOptions) -> anyhow::Result<Done> {
    let plan = plan(opts)?;

    // Everything that could make this run stop half-way is checked before anything is written.
    let existing_config = match std::fs::read_to_string(&plan.config) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("cannot read {}: {e}", plan.config.display()),
    };
    if let Some(text) = &existing_config {
        let has_app = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("apps")?.get(&plan.app).cloned())
            .is_some();
        if has_app {
            bail!(
                "{} already has an app named {:?}; choose another app name, or edit that section by hand",
                plan.config.display(),
                plan.app
            );
        }
    }
    let mut ours: Vec<&Path> = vec![&plan.secret];
    let public_key = plan.ssh.as_ref().map(SshPlan::public_key);
    if let (Some(ssh), Some(public)) = (&plan.ssh, &public_key) {
        ours.extend([ssh.key.as_path(), public.as_path()]);
    }
    for p in ours {
        if std::fs::symlink_metadata(p).is_ok() {
            bail!(
                "{} already exists and haul init never replaces a key or a secret (a forge may already trust it). \
                 To use it, write the app's config by hand; to start over, remove it first (and the old deploy key \
                 or webhook on the forge)",
                p.display()
            );
        }
    }
    let (header, section) = config_text(&plan)?;
    // The text is generated, but the contract is `Config::parse`: a config haul init writes always loads.
    Config::parse(&plan.config, &format!("{header}{section}")).map_err(|e| {
        anyhow!(
            "haul init built a config that does not load ({e}); this is a bug in haul init, please report it"
        )
    })?;

    let mut created = Created(Vec::new());
    let key_line = match (&plan.ssh, &public_key) {
        (Some(ssh), Some(public)) => {
            make_private_dir(parent(&ssh.key))?;
            generate_key(&plan.app, &ssh.key).await?;
            created.0.extend([ssh.key.clone(), public.clone()]);
            let line = std::fs::read_to_string(public)
                .with_context(|| format!("ssh-keygen ran but {} cannot be read", public.display()))?;
            Some(line.trim().to_string())
        }
        _ => None,
    };

    make_private_dir(parent(&plan.secret))?;
    write_secret(&plan.secret)?;
    created.0.push(plan.secret.clone());

    let section_to_append = match existing_config {
        Some(_) => Some(section),
        None => {
            if let Some(dir) = plan.config.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            write_new(&plan.config, 0o644, format!("{header}{section}").as_bytes())?;
            created.0.push(plan.config.clone());
            None
        }
    };
    created.keep();
    Ok(Done {
        plan,
        key_line,
        section_to_append,
    })
}

fn plan(opts: &InitOptions) -> anyhow::Result<Plan> {
    let app = opts.app.clone();
    if !config::is_valid_app_name(&app) {
        bail!(
            "{app:?} is not a valid app name: use letters, digits, '-', '_' and '.', start with a letter or digit, \
             at most 64 characters (it becomes the webhook URL /hooks/NAME)"
        );
    }
    let artifact = match (&opts.repo, opts.artifact.is_set()) {
        (Some(_), true) => bail!("give one source: --repo, --image, --object or --url"),
        (None, false) => bail!(
            "give the app's source: --repo git@github.com:acme/{app}.git, or one built in CI: --image, --object or --url"
        ),
        (_, true) => Some(super::init_source::plan(&opts.artifact, &app, &opts.keys_dir)?),
        (Some(_), false) => None,
    };
    let repo = match &artifact {
        Some(a) => a.location.clone(),
        None => opts.repo.clone().unwrap_or_default(),
    };
    // The same rule `Config::parse` applies: nothing git could read as an option.
    if artifact.is_none() && (repo.is_empty() || repo.starts_with('-') || repo.chars().any(char::is_control))
    {
        bail!("repo {repo:?} is not a git URL or path; give one like git@github.com:acme/{app}.git");
    }
    if !model::is_valid_branch(&opts.branch) {
        bail!("branch {:?} is not a valid branch name", opts.branch);
    }
    let asked = opts
        .provider
        .clone()
        .unwrap_or_else(|| if artifact.is_some() { "standard" } else { "github" }.into());
    let provider = Provider::parse(&asked).ok_or_else(|| {
        let known: Vec<&str> = Provider::ALL.iter().map(|p| p.as_str()).collect();
        anyhow!(
            "provider {asked:?} is not supported; use one of: {}",
            known.join(", ")
        )
    })?;
    match (&artifact, provider) {
        (Some(a), Provider::Distribution) if a.kind == super::init_source::ArtifactKind::Image => {}
        (Some(_), Provider::Standard) => {}
        (Some(_), p) => bail!(
            "an app built in CI is told of new builds by CI (--provider standard) or, for --image, by the registry (--provider distribution), not {}",
            p.as_str()
        ),
        (None, Provider::Distribution) => bail!("--provider distribution is for --image apps"),
        (None, _) => {}
    }
    let base = opts.public_url.trim_end_matches('/');
    let authority = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    let valid_url = authority.is_some_and(|a| !a.is_empty() && !a.starts_with('/'))
        && !base.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid_url {
        bail!(
            "public URL {:?} is not an http(s) URL; give the address your forge reaches haul at, \
             like https://deploy.example.com (haul adds /hooks/{app})",
            opts.public_url
        );
    }
    let absolute =
        |p: &Path| std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()));
    let config = absolute(&opts.config)?;
    let ssh = if artifact.is_none() && crate::model::url::is_ssh_url(&repo) {
        let (host, port) = ssh_host(&repo).ok_or_else(|| {
            anyhow!("cannot tell the SSH host in repo {repo:?}; give it as git@HOST:OWNER/REPO.git or ssh://git@HOST[:PORT]/PATH")
        })?;
        Some(SshPlan {
            key: absolute(&opts.keys_dir)?.join(&app),
            // One file for every app: a forge's host keys are the same whichever repository is fetched.
            known_hosts: parent(&config).join("known_hosts"),
            host,
            port,
        })
    } else {
        None
    };
    Ok(Plan {
        hook_url: format!("{base}/hooks/{app}"),
        secret: absolute(&opts.secrets_dir)?.join(&app),
        state_dir: absolute(&opts.state_dir)?,
        path: absolute(&opts.path)?,
        branch: opts.branch.clone(),
        repository: if artifact.is_none() {
            repository_of(&repo, provider)
        } else {
            None
        },
        artifact,
        app,
        repo,
        provider,
        config,
        ssh,
    })
}

/// The global settings (for a new file) and the app's section, each key with a comment saying what it does.
fn config_text(plan: &Plan) -> anyhow::Result<(String, String)> {
    let q = |p: &Path| -> anyhow::Result<String> {
        let s = p.to_str().ok_or_else(|| {
            anyhow!(
                "{} is not valid UTF-8, which a TOML config cannot hold",
                p.display()
            )
        })?;
        Ok(toml_str(s))
    };
    let header = format!(
        r#"# haul.toml, written by `haul init`. Every key is explained in the README's configuration reference.
# Relative paths are relative to this file; durations are like "90s", "10m", "24h".

# Address of the webhook HTTP server. Keep it on loopback, behind a reverse proxy that terminates TLS.
listen = "127.0.0.1:9000"
# haul's own files: the audit database, git mirrors, deploy logs, the control socket. One daemon per state_dir.
state_dir = {}
"#,
        q(&plan.state_dir)?
    );
    let ssh = match &plan.ssh {
        Some(ssh) => format!(
            r#"# Private half of a read-only deploy key (mode 0600), used alone: no agent, no ~/.ssh/config.
deploy_key = {}
# The forge's pinned host keys: an unknown or changed host key fails the fetch.
known_hosts = {}
"#,
            q(&ssh.key)?,
            q(&ssh.known_hosts)?
        ),
        None => String::new(),
    };
    let app = &plan.app;
    // A dot in a bare key would make a nested table.
    let key = if app.contains('.') {
        toml_str(app)
    } else {
        app.clone()
    };
    let repository = match &plan.repository {
        Some(r) => format!(
            "# Only this repository's pushes deploy (read from `repo`; change it if the repository is renamed or\n\
             # moved): a push to another repository whose hook shares this secret is refused.\nrepository = {}\n",
            toml_str(r)
        ),
        None if plan.provider.names_repository() => {
            "# The repository on the forge, as in its URLs (\"acme/blog\"; GitLab: \"group/subgroup/blog\"). Set it,\n\
             # and a push to another repository whose hook shares this secret is refused.\n\
             # repository = \"owner/name\"\n"
                .to_string()
        }
        None => String::new(),
    };
    let source = match &plan.artifact {
        Some(a) => a.section(&|s: &str| toml_str(s)),
        None => format!(
            "# The repository haul fetches from. haul only ever reads it.\nrepo = {}\n\
             # The only branch deployed. Pushes to other branches, tags and deletions are recorded as ignored.\n\
             branch = {}\n{ssh}",
            toml_str(&plan.repo),
            toml_str(&plan.branch)
        ),
    };
    let section = format!(
        r#"
# The webhook URL of this app is /hooks/{app}.
[apps.{key}]
{source}# The app's directory: releases/<id>/ and the `current` symlink. Point your web server or unit at current.
path = {path}
# Releases kept on disk (at least 2); the live one and the one before it are never removed.
keep_releases = 5
# Commands run in order in the new release directory before the switch, each as `bash -euo pipefail -c`.
# The first failure fails the deploy and leaves `current` alone. For example: ["npm ci", "npm run build"]
build = []
# Commands run in the release directory after the switch. If one fails, the previous release is put back.
# For example: ["systemctl reload {app}"]
activate = []
# Limit for each build or activate command; on timeout its whole process group is killed.
step_timeout = "10m"

# Enables POST /hooks/{app}. Without this table the app deploys only by `haul deploy`.
[apps.{key}.webhook]
# How deliveries are verified: github, gitlab, gitea, forgejo, bitbucket, or standard (CI and scripts).
provider = "{provider}"
# The file holding the shared secret (mode 0600). The secret itself never goes in this file.
secret_file = {secret}
{repository}"#,
        path = q(&plan.path)?,
        provider = plan.provider.as_str(),
        secret = q(&plan.secret)?,
    );
    Ok((header, section))
}

/// The repository's path on its forge (`acme/blog`), for `webhook.repository`, when the repo URL shows it
/// beyond doubt: `git@host:owner/name.git`, `ssh://git@host[:port]/owner/name.git`,
/// `https://host/owner/name.git`. GitHub, Gitea, Forgejo and Bitbucket name a repository with exactly two
/// parts (Bitbucket Data Center's HTTP URLs put `scm/` before them), GitLab with two or more (subgroups);
/// anything else (a local path, a forge served under a sub-path) is left for the person to write.
fn repository_of(repo: &str, provider: Provider) -> Option<String> {
    if !provider.names_repository() {
        return None;
    }
    let url = ["ssh://", "git+ssh://", "https://", "http://"]
        .iter()
        .find_map(|scheme| Some((repo.strip_prefix(scheme)?, scheme.starts_with("http"))));
    let (path, http) = match url {
        Some((rest, http)) => (rest.split_once('/')?.1, http),
        None if model::url::is_ssh_url(repo) => (repo.split_once(':')?.1, false),
        None => return None,
    };
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let mut parts: Vec<&str> = path.split('/').collect();
    if provider == Provider::Bitbucket && http && parts.len() == 3 && parts[0] == "scm" {
        parts.remove(0);
    }
    let fits = match provider {
        Provider::Gitlab => parts.len() >= 2,
        _ => parts.len() == 2,
    };
    let plain = parts.iter().all(|p| {
        !matches!(*p, "" | "." | "..")
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    });
    let name = parts.join("/");
    (fits && plain && config::check_repository(&name).is_ok()).then_some(name)
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The host (and port, when not 22) an SSH repo URL connects to: `git@host:path`, `ssh://[user@]host[:port]/path`.
fn ssh_host(repo: &str) -> Option<(String, Option<u16>)> {
    let (authority, is_url) = match repo
        .strip_prefix("ssh://")
        .or_else(|| repo.strip_prefix("git+ssh://"))
    {
        Some(rest) => (rest.split('/').next()?, true),
        None => (repo.split_once(':')?.0, false),
    };
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        (h, rest.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if is_url => (h, Some(p)),
            _ => (hostport, None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?).filter(|p| *p != 22),
        None => None,
    };
    (!host.is_empty() && !host.starts_with('-')).then(|| (host.to_string(), port))
}

async fn generate_key(app: &str, key: &Path) -> anyhow::Result<()> {
    let cmd = Cmd::new("ssh-keygen", "ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("haul deploy key for {app}"))
        .arg("-f")
        .arg(key)
        .timeout(Duration::from_secs(30));
    match runner::run(&cmd, None).await {
        Ok(_) => {}
        Err(e @ RunError::Spawn { .. }) => bail!(
            "{e}; install the OpenSSH client (Debian/Ubuntu: apt install openssh-client) and run haul init again"
        ),
        Err(e) => bail!("{e}; fix that, remove any {} it left, and run haul init again", key.display()),
    }
    // ssh-keygen writes 0600 already; this states the contract `haul check` enforces rather than relying on it.
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", key.display()))
}

/// 32 bytes from the kernel's CSPRNG, as 64 hex digits (what `openssl rand -hex 32` gives).
fn write_secret(path: &Path) -> anyhow::Result<()> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read 32 random bytes from /dev/urandom")?;
    write_new(path, 0o600, format!("{}\n", hex::encode(bytes)).as_bytes())
}

/// Creates `path` with `mode`, failing if anything is already there (never a truncate, never a follow of a
/// symlink someone left in its place), and flushes it to disk. A file it created but could not fill is removed.
fn write_new(path: &Path, mode: u32, content: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(content).and_then(|()| f.sync_all()).map_err(|e| {
        let _ = std::fs::remove_file(path);
        anyhow!("cannot write {}: {e}", path.display())
    })
}

/// Creates `dir` (and missing parents) readable by its owner only. An existing directory is left as it is.
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn parent(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

/// Files this run created, removed again unless the run completes. A file is added only once this run has
/// made it, so a failure never removes something that was there before.
struct Created(Vec<PathBuf>);

impl Created {
    fn keep(&mut self) {
        self.0.clear();
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Quotes a path for a command line a person copies, only when it needs it.
pub(super) fn sh(p: &Path) -> String {
    let s = p.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where a forge keeps the settings a person must change.
struct Forge {
    name: &'static str,
    deploy_key: &'static str,
    webhook: &'static str,
    content_type: &'static str,
    events: &'static str,
}

const GITHUB: Forge = Forge {
    name: "GitHub",
    deploy_key:
        "the repository's Settings -> Deploy keys -> Add deploy key; leave \"Allow write access\" unticked",
    webhook: "the repository's Settings -> Webhooks -> Add webhook",
    content_type: "application/json",
    events: "Just the push event",
};
const GITLAB: Forge = Forge {
    name: "GitLab",
    deploy_key: "the project's Settings -> Repository -> Deploy keys -> Add new key; leave \"Grant write permissions to this key\" unticked",
    webhook: "the project's Settings -> Webhooks -> Add new webhook (the secret goes in \"Secret token\")",
    content_type: "application/json (GitLab always sends JSON)",
    events: "Push events only",
};
const GITEA: Forge = Forge {
    name: "Gitea/Forgejo",
    deploy_key:
        "the repository's Settings -> Deploy keys -> Add deploy key; leave \"Enable write access\" unticked",
    webhook: "the repository's Settings -> Webhooks -> Add webhook -> Gitea (or Forgejo), HTTP method POST",
    content_type: "application/json (\"POST content type\")",
    events: "Push events only",
};
const BITBUCKET: Forge = Forge {
    name: "Bitbucket",
    deploy_key: "Repository settings -> Access keys -> Add key (Cloud access keys are read-only; on Data Center choose the Read permission)",
    webhook: "Repository settings -> Webhooks -> Add webhook",
    content_type: "application/json (Bitbucket always sends JSON)",
    events: "Repository push (Cloud) or Repository: Push (Data Center) only",
};

fn forge(p: Provider) -> Option<&'static Forge> {
    match p {
        Provider::Github => Some(&GITHUB),
        Provider::Gitlab => Some(&GITLAB),
        Provider::Gitea | Provider::Forgejo => Some(&GITEA),
        Provider::Bitbucket => Some(&BITBUCKET),
        Provider::Standard | Provider::Distribution => None,
    }
}

/// Where a well-known forge publishes its SSH host key fingerprints.
fn published_fingerprints(host: &str) -> Option<&'static str> {
    match host {
        "github.com" => Some("https://docs.github.com/en/authentication/keeping-your-account-and-data-secure/githubs-ssh-key-fingerprints"),
        "gitlab.com" => Some("https://docs.gitlab.com/ee/user/gitlab_com/index.html#ssh-host-keys-fingerprints"),
        "bitbucket.org" => Some("https://support.atlassian.com/bitbucket-cloud/docs/configure-ssh-and-two-step-verification/"),
        "codeberg.org" => Some("https://docs.codeberg.org/security/ssh-fingerprint/"),
        _ => None,
    }
}

impl Done {
    /// What was created, then every manual step in order, with the exact text to paste.
    fn instructions(&self) -> String {
        let mut t = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_instructions(&mut t);
        t
    }

    /// The steps are numbered in this one place, so a step that only some setups need (the SSH ones) shifts
    /// the numbers of the rest.
    fn write_instructions(&self, t: &mut String) -> std::fmt::Result {
        self.write_created(t)?;
        writeln!(t, "\nNow, by hand:")?;
        let mut step = 0;
        if let (Some(ssh), Some(key_line)) = (&self.plan.ssh, &self.key_line) {
            step += 1;
            self.write_deploy_key_step(t, step, key_line)?;
            step += 1;
            write_host_key_step(t, step, ssh)?;
        }
        if let Some(a) = &self.plan.artifact {
            let ci_notifies = self.plan.provider == Provider::Standard;
            step = a.write_steps(
                t,
                step,
                &self.plan.app,
                &self.plan.hook_url,
                &self.plan.secret,
                ci_notifies,
            )?;
            if !ci_notifies {
                step += 1;
                self.write_registry_step(t, step)?;
            }
        } else {
            step += 1;
            self.write_webhook_step(t, step)?;
        }
        step += 1;
        self.write_start_step(t, step)
    }

    /// What this run wrote, and the section to append when the config was already there.
    fn write_created(&self, t: &mut String) -> std::fmt::Result {
        let plan = &self.plan;
        writeln!(t, "Created for app {:?}:", plan.app)?;
        if let Some(ssh) = &plan.ssh {
            let key = ssh.key.display();
            writeln!(t, "  deploy key  {key} (private, 0600) and {key}.pub")?;
        }
        writeln!(t, "  secret      {} (0600)", plan.secret.display())?;
        match &self.section_to_append {
            None => writeln!(t, "  config      {}", plan.config.display())?,
            Some(section) => writeln!(
                t,
                "\n{} already exists, so haul init left it alone. Append this section to it:\n{}",
                plan.config.display(),
                section.trim_end()
            )?,
        }
        if plan.ssh.is_none() && plan.artifact.is_none() {
            writeln!(
                t,
                "\n{} is not an SSH URL, so no deploy key or known_hosts was made. For a private repository on\n\
                 a forge, prefer an SSH URL with a read-only deploy key.",
                plan.repo
            )?;
        }
        Ok(())
    }

    /// Where to paste the public key: the chosen forge's settings, or every forge's when the provider is not a
    /// forge's (the repository is on one, but haul cannot tell which).
    fn write_deploy_key_step(&self, t: &mut String, step: u32, key_line: &str) -> std::fmt::Result {
        writeln!(
            t,
            "\n{step}. Add this public key to the repository as a READ-ONLY deploy key:\n\n     {key_line}\n"
        )?;
        let forges = match forge(self.plan.provider) {
            Some(f) => vec![f],
            None => vec![&GITHUB, &GITLAB, &GITEA, &BITBUCKET],
        };
        for f in forges {
            writeln!(t, "   {}: {}.", f.name, f.deploy_key)?;
        }
        Ok(())
    }

    /// The forge's webhook form, field by field; without a forge, the Standard Webhooks request a CI sends.
    fn write_webhook_step(&self, t: &mut String, step: u32) -> std::fmt::Result {
        let plan = &self.plan;
        let secret = sh(&plan.secret);
        match forge(plan.provider) {
            Some(f) => writeln!(
                t,
                "\n{}. Add the webhook in {}: {}.\n\n     \
                 URL           {}\n     \
                 Content type  {}\n     \
                 Secret        the contents of {secret} (print it with: cat {secret})\n     \
                 Events        {}",
                step,
                f.name,
                f.webhook,
                plan.hook_url,
                f.content_type,
                f.events
            )?,
            None => writeln!(
                t,
                "\n{}. Let your CI (or any script) announce a new commit with a Standard Webhooks request to\n\n     \
                 {}\n\n   \
                 signed with the secret in {secret} (print it with: cat {secret}; store it as a CI secret).\n   \
                 examples/notify-haul.sh does it: notify-haul.sh {} SECRET_FILE [SHA]",
                step,
                plan.hook_url,
                plan.hook_url
            )?,
        }
        if plan.hook_url.starts_with("http://") {
            writeln!(
                t,
                "   That URL is plain http: put a TLS reverse proxy in front of haul, or pushes cross the\n   \
                 network unencrypted."
            )?;
        }
        Ok(())
    }

    /// `--provider distribution`: the registry's own notifications, with the secret as their bearer token.
    fn write_registry_step(&self, t: &mut String, step: u32) -> std::fmt::Result {
        let secret = sh(&self.plan.secret);
        writeln!(
            t,
            "\n{step}. In the registry's config.yml (Docker Distribution), with the contents of {secret}:\n\n     \
             notifications:\n       endpoints:\n         - name: haul\n           url: {}\n           \
             headers: {{Authorization: [\"Bearer <the contents of {secret}>\"]}}\n           \
             timeout: 5s\n           threshold: 5\n           backoff: 10s\n           \
             ignoredmediatypes: [application/octet-stream]\n\n   \
             The registry cannot sign its body: keep haul's endpoint on a private network or behind allow_ips.",
            self.plan.hook_url
        )
    }

    /// `haul check`, then the daemon under a user that can read what this run wrote.
    fn write_start_step(&self, t: &mut String, step: u32) -> std::fmt::Result {
        let plan = &self.plan;
        let (config, secret) = (sh(&plan.config), sh(&plan.secret));
        let mut chown = match &plan.ssh {
            Some(ssh) => format!("{} {secret}", sh(&ssh.key)),
            None => secret.clone(),
        };
        for (_, file, _) in plan.artifact.iter().flat_map(|a| a.credentials.iter()) {
            chown.push(' ');
            chown.push_str(&sh(file));
        }
        writeln!(
            t,
            "\n{}. Check the configuration and files, then start the daemon:\n\n     \
             haul check --config {config}\n     \
             haul serve --config {config}\n\n   \
             Run haul serve under systemd (`haul systemd-unit` prints a unit) as a user that can read the keys\n   \
             and the secret and owns {} and {}; for a user named haul:\n\n     \
             chown haul: {chown}\n\n   \
             Then `haul deploy {} --config {config}` deploys now.",
            step,
            plan.state_dir.display(),
            plan.path.display(),
            plan.app
        )
    }
}

/// Pinning is left to a person on purpose: only a human comparing fingerprints with the forge's published ones
/// makes the pin worth anything.
fn write_host_key_step(t: &mut String, step: u32, ssh: &SshPlan) -> std::fmt::Result {
    let (host, kh) = (&ssh.host, sh(&ssh.known_hosts));
    let port = ssh.port.map(|p| format!("-p {p} ")).unwrap_or_default();
    writeln!(
        t,
        "\n{}. Pin {host}'s SSH host key (haul never accepts a host key that is not in {}):\n\n     \
         ssh-keyscan {port}{host} >> {kh}\n     \
         ssh-keygen -lf {kh}\n\n   \
         Every fingerprint the second command prints for {host} must match one the forge publishes",
        step,
        ssh.known_hosts.display()
    )?;
    match published_fingerprints(host) {
        Some(url) => writeln!(t, "   ({url}).")?,
        None => writeln!(
            t,
            "   (for a self-hosted forge, ask its administrator, who can run\n   \
             `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it)."
        )?,
    }
    writeln!(
        t,
        "   If one does not match, delete its line from {} and find out why before going on.",
        ssh.known_hosts.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "haul-init-{}-{:016x}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn options(root: &Path, app: &str) -> InitOptions {
        InitOptions {
            config: root.join("etc/haul.toml"),
            app: app.into(),
            repo: Some("git@github.com:acme/blog.git".into()),
            artifact: Default::default(),
            branch: "main".into(),
            path: root.join("srv").join(app),
            keys_dir: root.join("etc/keys"),
            secrets_dir: root.join("etc/secrets"),
            state_dir: root.join("state"),
            public_url: "https://deploy.example.com/".into(),
            provider: Some("github".into()),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn writes_a_config_that_loads_and_private_key_and_secret() {
        let tmp = TempDir::new();
        let root = &tmp.0;
        let done = init(&options(root, "blog")).await.expect("init");

        let cfg = Config::load(&root.join("etc/haul.toml")).expect("the written config loads");
        let app = cfg.app("blog").expect("app");
        assert_eq!(
            app.deploy_key.as_deref(),
            Some(root.join("etc/keys/blog").as_path())
        );
        assert_eq!(
            app.known_hosts.as_deref(),
            Some(root.join("etc/known_hosts").as_path())
        );
        assert_eq!(app.path, root.join("srv/blog"));
        assert_eq!(cfg.state_dir, root.join("state"));
        let webhook = app.webhook.as_ref().expect("webhook");
        assert_eq!(webhook.provider, Provider::Github);
        assert_eq!(webhook.repository.as_deref(), Some("acme/blog"));
        let secrets = webhook
            .load_secrets()
            .expect("the secret is private and long enough");
        assert_eq!(secrets[0].len(), 64);
        assert!(secrets[0].iter().all(u8::is_ascii_hexdigit));

        let key = root.join("etc/keys/blog");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&root.join("etc/secrets/blog")), 0o600);
        assert_eq!(mode(&root.join("etc/keys")), 0o700);
        assert_eq!(mode(&root.join("etc/secrets")), 0o700);
        let public = std::fs::read_to_string(root.join("etc/keys/blog.pub")).expect("public half");
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert!(
            public.trim_end().ends_with("haul deploy key for blog"),
            "{public}"
        );

        assert!(done.section_to_append.is_none());
        let text = done.instructions();
        for needle in [
            public.trim(),
            "READ-ONLY deploy key",
            "https://deploy.example.com/hooks/blog",
            "application/json",
            "Just the push event",
            &format!("cat {}", root.join("etc/secrets/blog").display()),
            "ssh-keyscan github.com >> ",
            "ssh-keygen -lf ",
            "githubs-ssh-key-fingerprints",
            &format!("haul check --config {}", root.join("etc/haul.toml").display()),
            "haul serve --config",
        ] {
            assert!(text.contains(needle), "no {needle:?} in:\n{text}");
        }
        let secret = String::from_utf8(secrets[0].clone()).expect("hex");
        assert!(!text.contains(&secret), "the secret itself is never printed");
    }

    #[tokio::test]
    async fn never_overwrites_a_key_a_secret_or_a_config() {
        let tmp = TempDir::new();
        let root = &tmp.0;
        init(&options(root, "blog")).await.expect("first run");
        let config = root.join("etc/haul.toml");
        let snapshot = |p: &str| std::fs::read(root.join(p)).expect("file");
        let (cfg, key, secret) = (
            snapshot("etc/haul.toml"),
            snapshot("etc/keys/blog"),
            snapshot("etc/secrets/blog"),
        );

        // The same app again: the key is there, so nothing is touched.
        let err = init(&options(root, "blog"))
            .await
            .expect_err("refuses")
            .to_string();
        assert!(err.contains("already has an app named \"blog\""), "{err}");
        assert_eq!(snapshot("etc/haul.toml"), cfg);
        assert_eq!(snapshot("etc/keys/blog"), key);
        assert_eq!(snapshot("etc/secrets/blog"), secret);

        // A key or a secret left from an earlier attempt is refused before anything is created.
        for leftover in ["etc/keys/api", "etc/keys/api.pub", "etc/secrets/api"] {
            std::fs::write(root.join(leftover), "keep me").expect("leftover");
            let err = init(&options(root, "api"))
                .await
                .expect_err("refuses")
                .to_string();
            assert!(err.contains(&root.join(leftover).display().to_string()), "{err}");
            assert!(err.contains("never replaces"), "{err}");
            assert_eq!(snapshot(leftover), b"keep me");
            std::fs::remove_file(root.join(leftover)).expect("cleanup");
            for other in ["etc/keys/api", "etc/keys/api.pub", "etc/secrets/api"] {
                assert!(!root.join(other).exists(), "{other} was created by a refused run");
            }
        }

        // A second app with an existing config: the config is left alone and the section printed appends cleanly.
        let done = init(&options(root, "api")).await.expect("second app");
        assert_eq!(snapshot("etc/haul.toml"), cfg);
        let section = done.section_to_append.clone().expect("a section to append");
        assert!(section.contains("[apps.api]"), "{section}");
        assert!(done.instructions().contains(&section), "the section is printed");
        let mut appended = String::from_utf8(cfg).expect("utf-8");
        appended.push_str(&section);
        let both = Config::parse(&config, &appended).expect("config + printed section loads");
        assert_eq!(both.apps.keys().collect::<Vec<_>>(), ["api", "blog"]);
        assert_eq!(mode(&root.join("etc/keys/api")), 0o600);
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_anything_is_written() {
        let tmp = TempDir::new();
        let root = &tmp.0;
        type Change = fn(&mut InitOptions);
        let cases: [(Change, &str); 7] = [
            (|o| o.app = "../x".into(), "not a valid app name"),
            (|o| o.repo = Some("--upload-pack=evil".into()), "not a git URL"),
            (|o| o.repo = Some(String::new()), "not a git URL"),
            (|o| o.branch = "-x".into(), "branch"),
            (|o| o.provider = Some("svn".into()), "github, gitlab"),
            (|o| o.public_url = "deploy.example.com".into(), "http(s) URL"),
            (|o| o.public_url = "https://".into(), "http(s) URL"),
        ];
        for (change, needle) in cases {
            let mut o = options(root, "blog");
            change(&mut o);
            let err = init(&o).await.expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(!root.join("etc").exists(), "a refused run wrote files ({needle})");
        }
    }

    #[tokio::test]
    async fn a_failed_run_takes_back_what_it_created() {
        let tmp = TempDir::new();
        let root = &tmp.0;
        std::fs::write(
            root.join("blocker"),
            "a file where the config's directory should be",
        )
        .expect("file");
        let mut o = options(root, "blog");
        o.config = root.join("blocker/haul.toml");
        let err = init(&o)
            .await
            .expect_err("the config cannot be written")
            .to_string();
        assert!(err.contains("blocker"), "{err}");
        for p in ["etc/keys/blog", "etc/keys/blog.pub", "etc/secrets/blog"] {
            assert!(
                !root.join(p).exists(),
                "{p} was left behind, so a retry would be refused"
            );
        }
        o.config = root.join("etc/haul.toml");
        init(&o).await.expect("a retry starts clean");
    }

    #[tokio::test]
    async fn a_local_repo_needs_no_key_and_a_dotted_name_is_quoted() {
        let tmp = TempDir::new();
        let root = &tmp.0;
        let mut o = options(root, "www.example");
        o.repo = Some(root.join("repo.git").display().to_string());
        o.provider = Some("standard".into());
        let text = init(&o).await.expect("init").instructions();
        let cfg = Config::load(&o.config).expect("loads");
        let app = cfg.app("www.example").expect("one app, not a nested table");
        assert_eq!(app.deploy_key, None);
        assert_eq!(app.webhook.as_ref().and_then(|w| w.repository.as_deref()), None);
        assert!(!root.join("etc/keys").exists(), "no key for a local repo");
        assert!(
            text.contains("notify-haul.sh https://deploy.example.com/hooks/www.example"),
            "{text}"
        );
        assert!(!text.contains("ssh-keyscan"), "{text}");
    }

    /// `--image`, `--object`, `--url`: a config that loads with the source, its credentials' places (not
    /// created: only the person has them) and the signature key; and the exact CI commands.
    #[tokio::test]
    async fn an_app_built_in_ci_gets_its_source_credentials_signature_and_ci_commands() {
        use super::super::init_source::ArtifactArgs;
        let cases: [(ArtifactArgs, Option<&str>, &[&str]); 4] = [
            (
                ArtifactArgs { image: Some("ghcr.io/acme/api".into()), tag: Some("v*".into()), ..Default::default() },
                None,
                &["oras push ghcr.io/acme/api:v*", "minisign -S -s ci.key -m manifest.json", "webhook-signature: v1,", "registry_token_file"],
            ),
            (
                ArtifactArgs { image: Some("registry.example.com/acme/api".into()), registry_username: Some("deploy".into()), ..Default::default() },
                Some("distribution"),
                &["notifications:", "Bearer <the contents of", "registry_password_file"],
            ),
            (
                ArtifactArgs {
                    object: Some("s3://builds/api/api-{sha}.tar.gz".into()),
                    s3_endpoint: Some("https://minio.internal:9000".into()),
                    ..Default::default()
                },
                None,
                &["aws s3 cp --endpoint-url https://minio.internal:9000 api-$GIT_SHA.tar.gz s3://builds/api/api-$GIT_SHA.tar.gz", "sha256sum api-$GIT_SHA.tar.gz", "s3-secret"],
            ),
            (
                ArtifactArgs { url: Some("https://artifacts.example.com/api-{sha}.tar.gz".into()), ..Default::default() },
                None,
                &["minisign -S -s ci.key -m api-$GIT_SHA.tar.gz", "api-$GIT_SHA.tar.gz.minisig", "https://deploy.example.com/hooks/api"],
            ),
        ];
        for (artifact, provider, says) in cases {
            let tmp = TempDir::new();
            let root = &tmp.0;
            let mut o = options(root, "api");
            o.repo = None;
            o.artifact = artifact;
            o.provider = provider.map(str::to_string);
            let text = init(&o).await.expect("init").instructions();
            let cfg = Config::load(&o.config).expect("the written config loads");
            let app = cfg.app("api").expect("app");
            assert!(app.source.is_artifact(), "{:?}", app.source);
            assert!(app.verify.is_some(), "signed by default");
            assert_eq!(app.deploy_key, None);
            let creds = app.credential_files();
            assert!(
                creds
                    .iter()
                    .all(|(_, p)| p.starts_with(root.join("etc/keys")) && !p.exists()),
                "{creds:?}"
            );
            assert_eq!(mode(&root.join("etc/secrets/api")), 0o600);
            assert!(text.contains("minisign -G -W -p ci.pub -s ci.key"), "{text}");
            for want in says {
                let in_config = std::fs::read_to_string(&o.config).unwrap_or_default();
                assert!(
                    text.contains(want) || in_config.contains(want),
                    "missing {want}:\n{text}\n{in_config}"
                );
            }
        }
        // Refused: two sources, none, and a provider an artifact cannot be told by.
        let tmp = TempDir::new();
        let mut o = options(&tmp.0, "api");
        o.artifact.url = Some("https://a.example/x.tgz".into());
        assert!(init(&o)
            .await
            .is_err_and(|e| e.to_string().contains("one source")));
        o.repo = None;
        o.provider = Some("github".into());
        assert!(init(&o)
            .await
            .is_err_and(|e| e.to_string().contains("--provider standard")));
        o.artifact.url = None;
        assert!(init(&o)
            .await
            .is_err_and(|e| e.to_string().contains("give the app's source")));
        assert!(!tmp.0.join("etc").exists(), "nothing written");
    }

    #[test]
    fn ssh_hosts() {
        for (repo, want) in [
            ("git@github.com:acme/blog.git", Some(("github.com", None))),
            ("github.com:acme/blog.git", Some(("github.com", None))),
            (
                "ssh://git@git.example.com:2222/acme/blog.git",
                Some(("git.example.com", Some(2222))),
            ),
            (
                "ssh://git@git.example.com:22/acme/blog.git",
                Some(("git.example.com", None)),
            ),
            (
                "git+ssh://git.example.com/acme/blog.git",
                Some(("git.example.com", None)),
            ),
            (
                "ssh://git@[2001:db8::1]:2222/x.git",
                Some(("2001:db8::1", Some(2222))),
            ),
            ("ssh://git@host:notaport/x.git", None),
            ("ssh:///x.git", None),
        ] {
            let got = ssh_host(repo);
            let want = want.map(|(h, p)| (h.to_string(), p));
            assert_eq!(got, want, "{repo}");
        }
    }

    #[tokio::test]
    async fn a_repository_it_cannot_read_is_left_for_the_person_to_write() {
        let tmp = TempDir::new();
        let root = &tmp.0;
        let mut o = options(root, "blog");
        o.repo = Some("https://git.example.com/gitea/acme/blog.git".into());
        o.provider = Some("gitea".into());
        init(&o).await.expect("init");
        let text = std::fs::read_to_string(&o.config).expect("config");
        assert!(text.contains("\n# repository = \"owner/name\"\n"), "{text}");
        let cfg = Config::load(&o.config).expect("loads");
        let webhook = cfg.app("blog").expect("app").webhook.clone().expect("webhook");
        assert_eq!(webhook.repository, None);
    }

    #[test]
    fn the_repository_is_read_from_the_repo_url_only_when_it_is_certain() {
        use Provider::*;
        for (repo, provider, want) in [
            ("git@github.com:acme/blog.git", Github, Some("acme/blog")),
            ("git@github.com:Acme/Blog", Github, Some("Acme/Blog")),
            ("github.com:acme/blog.git", Github, Some("acme/blog")),
            ("https://github.com/acme/blog.git", Github, Some("acme/blog")),
            ("https://github.com/acme/blog/", Github, Some("acme/blog")),
            (
                "https://token@github.com/acme/blog.git",
                Github,
                Some("acme/blog"),
            ),
            ("ssh://git@github.com/acme/blog.git", Github, Some("acme/blog")),
            (
                "ssh://git@git.example.com:2222/acme/blog.git",
                Gitea,
                Some("acme/blog"),
            ),
            ("https://codeberg.org/acme/blog.git", Forgejo, Some("acme/blog")),
            (
                "git@gitlab.com:group/sub/blog.git",
                Gitlab,
                Some("group/sub/blog"),
            ),
            (
                "https://gitlab.example.com/group/blog.git",
                Gitlab,
                Some("group/blog"),
            ),
            ("git@bitbucket.org:acme/blog.git", Bitbucket, Some("acme/blog")),
            (
                "https://bitbucket.example.com/scm/proj/blog.git",
                Bitbucket,
                Some("proj/blog"),
            ),
            (
                "ssh://git@bitbucket.example.com:7999/proj/blog.git",
                Bitbucket,
                Some("proj/blog"),
            ),
            (
                "ssh://git@bitbucket.example.com:7999/~admin/blog.git",
                Bitbucket,
                Some("~admin/blog"),
            ),
            // A forge under a sub-path, or a path that is not owner/name: not guessed.
            ("https://git.example.com/gitea/acme/blog.git", Gitea, None),
            ("https://github.com/blog.git", Github, None),
            ("https://github.com/", Github, None),
            ("git@github.com:acme/../blog.git", Gitlab, None),
            ("https://github.com/acme/blog%20x.git", Github, None),
            ("https://github.com/acme/blog.git?x=1", Github, None),
            ("/srv/git/blog.git", Github, None),
            ("file:///srv/git/acme/blog.git", Github, None),
            // Payloads that name no repository.
            ("git@github.com:acme/blog.git", Standard, None),
        ] {
            assert_eq!(
                repository_of(repo, provider).as_deref(),
                want,
                "{repo} ({provider:?})"
            );
        }
    }

    #[test]
    fn toml_strings_round_trip() {
        for s in [
            "plain",
            "with \"quotes\" and \\ backslash",
            "tab\there",
            "ünïcode",
        ] {
            let doc = format!("v = {}", toml_str(s));
            let table: toml::Table = doc.parse().expect(&doc);
            assert_eq!(table["v"].as_str(), Some(s));
        }
    }
}
