//! Git, through the one subprocess runner: the per-app bare mirror, the incremental fetch over SSH with the
//! app's own read-only deploy key and pinned host keys, the checks that a sha is on the configured branch, and
//! the checkout of one commit into a release directory.
//!
//! git is never allowed to prompt (`GIT_TERMINAL_PROMPT=0`, `BatchMode=yes`), never reads the operator's ssh
//! config or agent, and never trusts a host key it has not been given. Every failure is classified here, from
//! git's exit status and stderr, into permanent, transient or rate-limited.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{AppConfig, MirrorMode, Track};
use crate::infra::deploylog::DeployLog;
use crate::infra::runner::{self, Cmd, LineUse, RunError};
use crate::infra::upstream;
use crate::model::failure::{Failure, Kind};

const LOCAL_TIMEOUT: Duration = Duration::from_secs(600);

/// Quotes a path for the shell that git uses to run `GIT_SSH_COMMAND`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The ssh command git runs: only the deploy key, only the pinned host keys, no prompts, no agent, no config.
pub fn ssh_command(app: &AppConfig) -> Option<String> {
    let key = app.deploy_key.as_ref()?;
    let known_hosts = app.known_hosts.as_ref()?;
    Some(format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o IdentityAgent=none -o StrictHostKeyChecking=yes \
         -o UserKnownHostsFile={} -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20 \
         -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR",
        sh_quote(&key.to_string_lossy()),
        sh_quote(&known_hosts.to_string_lossy())
    ))
}

/// Over HTTP, git is asked for a trace of the response headers (`GIT_TRACE_CURL`), so a rate limit's
/// `Retry-After` can be honoured. Trace lines never reach the deploy log; the few that matter are kept for
/// classifying a failure.
fn http_trace_filter(line: &str) -> LineUse {
    let b = line.as_bytes();
    let is_trace = b.len() > 16
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b'.'
        && (line.contains(" http.c:") || line.contains(" trace.c:"));
    if !is_trace {
        return LineUse::Log;
    }
    let lower = line.to_ascii_lowercase();
    if lower.contains("recv header: http/") || lower.contains("retry-after") || lower.contains("x-ratelimit")
    {
        LineUse::Keep
    } else {
        LineUse::Drop
    }
}

/// Decides what a failed git command means, from what git printed.
pub fn classify(stderr: &[String]) -> Kind {
    let text = stderr.join("\n").to_lowercase();
    const RATE: &[&str] = &[
        "x-ratelimit-remaining: 0",
        "recv header: http/1.1 429",
        "recv header: http/2 429",
        "rate limit",
        "abuse",
        "too many requests",
        "error: 429",
        "returned error: 429",
        "http 429",
    ];
    const PERMANENT: &[&str] = &[
        "permission denied",
        "host key verification failed",
        "remote host identification has changed",
        "no such identity",
        "couldn't find remote ref",
        "repository not found",
        "does not appear to be a git repository",
        "not our ref",
        "unadvertised object",
        "authentication failed",
        "could not read username",
        "could not read password",
        "invalid username or password",
        "returned error: 401",
        "returned error: 403",
        "returned error: 404",
        "bad configuration option",
        "no space left on device",
        "disk quota exceeded",
        "bad object",
        "not a valid object name",
    ];
    if RATE.iter().any(|p| text.contains(p)) {
        Kind::RateLimited
    } else if PERMANENT.iter().any(|p| text.contains(p)) {
        Kind::Permanent
    } else {
        Kind::Transient
    }
}

fn hint(kind: Kind, stderr: &[String]) -> &'static str {
    let text = stderr.join("\n").to_lowercase();
    if text.contains("host key verification failed") || text.contains("identification has changed") {
        " (the server's host key is not the pinned one in known_hosts: if the forge really rotated its key, verify the new fingerprint and update known_hosts)"
    } else if text.contains("unprotected private key") || text.contains("bad permissions") {
        " (ssh refused the deploy key file because other users can read it: `chmod 600` it)"
    } else if text.contains("permission denied") {
        " (the deploy key was refused: check it is added to the repository as a read-only deploy key)"
    } else if text.contains("couldn't find remote ref") {
        " (the configured branch does not exist on the remote: check `branch`)"
    } else if kind == Kind::RateLimited {
        " (the forge is rate-limiting this deploy key: haul will not hammer it)"
    } else {
        ""
    }
}

/// How a fetch went, for the log and the audit.
#[derive(Debug, Default, Clone)]
pub struct FetchReport {
    pub attempts: u32,
    /// Time spent waiting: backoff, budget, circuit.
    pub waited: Duration,
    /// Set if the forge rate-limited a fetch: how long it asked us to stay away.
    pub rate_limited: Option<Duration>,
    /// The mirror the objects came from, if not the primary.
    pub mirror: Option<String>,
}

/// Signs that the local mirror, not the remote, is the problem.
pub fn is_local_damage(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "bad object",
        "is corrupt",
        "unable to read",
        "missing blob",
        "missing tree",
        "missing commit",
        "did not send all necessary objects",
        "not a git repository",
        "bad packed object",
        "unpack-objects failed",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// One app's view of git: its mirror, its credentials, its log.
pub struct Git {
    app: Arc<AppConfig>,
    mirror: PathBuf,
    log: Option<Arc<DeployLog>>,
}

impl Git {
    pub fn new(app: Arc<AppConfig>, mirror: PathBuf, log: Option<Arc<DeployLog>>) -> Git {
        Git { app, mirror, log }
    }

    fn git(&self, label: &str) -> Cmd {
        let mut c = Cmd::new(label, "git")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_ASKPASS", "/bin/false")
            .env("SSH_ASKPASS", "/bin/false")
            .env("LC_ALL", "C")
            .arg("--git-dir")
            .arg(self.mirror.as_os_str())
            .timeout(LOCAL_TIMEOUT);
        if let Some(ssh) = ssh_command(&self.app) {
            c = c.env("GIT_SSH_COMMAND", ssh);
        }
        c
    }

    /// A git command that talks to `url`.
    fn net(&self, label: &str, url: &str) -> Cmd {
        let mut c = self.git(label).timeout(self.app.fetch_timeout);
        if url.starts_with("http://") || url.starts_with("https://") {
            c = c
                .env("GIT_TRACE_CURL", "1")
                .env("GIT_TRACE_CURL_NO_DATA", "1")
                .env("GIT_TRACE_REDACT", "1");
            c.stderr_filter = Some(http_trace_filter);
        }
        c
    }

    fn remote_failure(&self, e: RunError) -> Failure {
        let kind = match &e {
            RunError::TimedOut { .. } => Kind::Transient,
            RunError::Spawn { .. } => Kind::Permanent,
            _ => classify(e.stderr_tail()),
        };
        let retry_after = (kind == Kind::RateLimited)
            .then(|| upstream::retry_after(e.stderr_tail()))
            .flatten();
        Failure {
            kind,
            message: format!("{e}{}", hint(kind, e.stderr_tail())),
            retry_after,
        }
    }

    fn local_failure(&self, e: RunError) -> Failure {
        Failure::permanent(format!("{e} (mirror {})", self.mirror.display()))
    }

    fn note(&self, line: &str) {
        if let Some(l) = &self.log {
            l.line(line);
        }
    }

    /// The refspec of what this app deploys: its branch, or the tags matching its glob.
    fn refspec(&self) -> String {
        match &self.app.track {
            Track::Branch(b) => format!("+refs/heads/{b}:refs/heads/{b}"),
            Track::Tags(g) => format!("+refs/tags/{g}:refs/tags/{g}"),
        }
    }

    /// Creates the bare mirror if it is missing. Built under a temporary name and renamed, so a crash never
    /// leaves a half-initialised mirror.
    pub async fn ensure_mirror(&self) -> Result<(), Failure> {
        if self.mirror.join("HEAD").exists() {
            return Ok(());
        }
        let parent = self.mirror.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| Failure::permanent(format!("cannot create {}: {e}", parent.display())))?;
        let tmp = parent.join(format!(".{}.git.tmp-{}", self.app.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let init = Cmd::new("git init", "git")
            .env("LC_ALL", "C")
            .args([
                OsString::from("init"),
                "--bare".into(),
                "--quiet".into(),
                tmp.clone().into(),
            ])
            .timeout(LOCAL_TIMEOUT);
        runner::run(&init, self.log.as_ref())
            .await
            .map_err(|e| self.local_failure(e))?;
        std::fs::rename(&tmp, &self.mirror).map_err(|e| {
            Failure::permanent(format!("cannot create mirror {}: {e}", self.mirror.display()))
        })?;
        Ok(())
    }

    /// One incremental fetch of what the app deploys, from `url`, into the mirror.
    pub async fn fetch_once(&self, url: &str) -> Result<(), Failure> {
        let cmd = self
            .net("git fetch", url)
            .args([
                "fetch",
                "--no-tags",
                "--no-recurse-submodules",
                "--no-write-fetch-head",
                "--",
            ])
            .arg(url)
            .arg(self.refspec());
        let result = runner::run(&cmd, self.log.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| self.remote_failure(e));
        let label = match &result {
            Ok(()) => "ok",
            Err(f) => f.kind.as_str(),
        };
        crate::infra::metrics::fetch(&crate::model::url::upstream_key(url), label);
        result
    }

    /// Where to fetch from, in order: (url, is the primary).
    fn sources(&self) -> Vec<(&str, bool)> {
        let primary = std::iter::once((self.app.repo.as_str(), true));
        let mirrors = self.app.mirrors.iter().map(|m| (m.as_str(), false));
        match self.app.mirror_mode {
            MirrorMode::Prefer => mirrors.chain(primary).collect(),
            MirrorMode::Fallback => primary.chain(mirrors).collect(),
        }
    }

    /// Fetches from the primary and the mirrors in `mirror_mode` order. A permanent failure of the primary
    /// (key refused, branch gone) ends it: a mirror must never stand in for a primary that says no.
    pub async fn fetch(&self) -> Result<FetchReport, Failure> {
        let mut last = None;
        for (url, primary) in self.sources() {
            match self.fetch_from(url).await {
                Ok(mut report) => {
                    report.mirror = (!primary).then(|| url.to_string());
                    return Ok(report);
                }
                Err(f) if primary && f.kind == Kind::Permanent => return Err(f),
                Err(f) => {
                    if !self.app.mirrors.is_empty() {
                        self.note(&format!(
                            "  ! fetching from {} failed ({}): {f}",
                            crate::model::url::shown(url),
                            f.kind.as_str()
                        ));
                    }
                    last = Some(f);
                }
            }
        }
        Err(last.unwrap_or_else(|| Failure::permanent("nothing to fetch from")))
    }

    /// Is the mirror damaged? If so, it is removed and created anew (the next fetch fills it), and true is
    /// returned. An interrupted fetch never damages it (git writes refs last), but a disk can.
    pub async fn repair_if_broken(&self) -> bool {
        let fsck = self
            .git("git fsck")
            .args(["fsck", "--connectivity-only", "--no-progress"]);
        if runner::run(&fsck, self.log.as_ref()).await.is_ok() {
            return false;
        }
        self.note(&format!(
            "  ! the mirror {} is damaged: re-creating it",
            self.mirror.display()
        ));
        tracing::warn!(app = %self.app.name, "mirror {} failed git fsck; re-creating it", self.mirror.display());
        let _ = std::fs::remove_dir_all(&self.mirror);
        self.ensure_mirror().await.is_ok()
    }

    /// Fetches from one source within its upstream's budget and circuit ([`upstream::guarded`]: bounded,
    /// jittered, rate-limit aware). A damaged local mirror is repaired once without counting as an attempt.
    async fn fetch_from(&self, url: &str) -> Result<FetchReport, Failure> {
        let repaired = std::sync::atomic::AtomicBool::new(false);
        let note = |m: &str| self.note(m);
        let (result, r) = upstream::guarded(
            &crate::model::url::upstream_key(url),
            self.app.max_fetches_per_minute,
            self.app.fetch_attempts,
            &note,
            || async {
                match self.fetch_once(url).await {
                    Err(f)
                        if !repaired.load(std::sync::atomic::Ordering::Relaxed)
                            && is_local_damage(&f.message)
                            && self.repair_if_broken().await =>
                    {
                        repaired.store(true, std::sync::atomic::Ordering::Relaxed);
                        self.note("  ! the fetch failed on a damaged mirror; repaired, fetching again");
                        self.fetch_once(url).await
                    }
                    other => other,
                }
            },
        )
        .await;
        result.map(|()| FetchReport {
            attempts: r.attempts,
            waited: r.waited,
            rate_limited: r.rate_limited,
            mirror: None,
        })
    }

    /// Writes a bundle of `sha` and its history into `out` (a fleet's release, for hosts that never talk to
    /// the forge), under the ref `refs/haul/release`.
    pub async fn bundle(&self, sha: &str, out: &Path) -> Result<(), Failure> {
        let update = self
            .git("git update-ref")
            .args(["update-ref", "--no-deref", "refs/haul/release", sha]);
        runner::run(&update, self.log.as_ref())
            .await
            .map_err(|e| self.local_failure(e))?;
        let create = self
            .git("git bundle create")
            .args(["bundle", "create", "--quiet"])
            .arg(out.as_os_str())
            .arg("refs/haul/release");
        runner::run(&create, self.log.as_ref())
            .await
            .map(|_| ())
            .map_err(|e| self.local_failure(e))
    }

    /// Fetches a release bundle into the mirror and checks that it holds exactly `sha` (git checks every
    /// object it receives against its id, so the tree deployed is the one the sha names).
    pub async fn fetch_bundle(&self, bundle: &Path, sha: &str) -> Result<(), Failure> {
        let dest = format!("refs/haul/fleet/{sha}");
        let fetch = self
            .git("git fetch (bundle)")
            .args(["fetch", "--no-tags", "--no-write-fetch-head", "--"])
            .arg(bundle.as_os_str())
            .arg(format!("+refs/haul/release:{dest}"));
        runner::run(&fetch, self.log.as_ref()).await.map_err(|e| {
            Failure::permanent(format!(
                "the release bundle {} does not fetch: {e}",
                bundle.display()
            ))
        })?;
        match self.resolve_commit(&dest).await? {
            Some(got) if got == sha => Ok(()),
            got => Err(Failure::permanent(format!(
                "the release bundle {} holds {}, not {sha}",
                bundle.display(),
                got.as_deref().unwrap_or("no commit")
            ))),
        }
    }

    /// The full sha of `rev` if it names a commit in the mirror.
    pub async fn resolve_commit(&self, rev: &str) -> Result<Option<String>, Failure> {
        let cmd = self
            .git("git rev-parse")
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"))
            .capture();
        match runner::run(&cmd, self.log.as_ref()).await {
            Ok(out) => Ok(Some(out.stdout_str())),
            Err(RunError::Failed { code: Some(1), .. }) => Ok(None),
            Err(e) => Err(self.local_failure(e)),
        }
    }

    /// `verify_commits`: the signature on `sha` (or, for a tag app, on the annotated tag `tag`), checked by
    /// `git verify-commit` / `verify-tag` against the configured signers only (an SSH allowed-signers file,
    /// or a keyring imported into a private GNUPGHOME under `scratch`); the other kind of signature can
    /// never verify. The signer as git names it, or why not (a permanent failure: never retried).
    pub async fn verify_signature(
        &self,
        signers: &crate::config::CommitSigners,
        sha: &str,
        tag: Option<&str>,
        scratch: &Path,
    ) -> Result<String, Failure> {
        use crate::config::CommitSigners;
        let home = scratch.join("gnupg");
        let _ = std::fs::remove_dir_all(&home);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&home)
                .map_err(|e| Failure::permanent(format!("cannot create {}: {e}", home.display())))?;
        }
        let what = match tag {
            Some(t) => format!("tag {t}"),
            None => format!("commit {}", &sha[..sha.len().min(12)]),
        };
        let mut cmd = self.git(&format!(
            "git verify-{}",
            if tag.is_some() { "tag" } else { "commit" }
        ));
        cmd = cmd.env("GNUPGHOME", home.as_os_str());
        cmd = match signers {
            CommitSigners::Ssh(file) => cmd
                .arg("-c")
                .arg("gpg.program=false")
                .arg("-c")
                .arg("gpg.x509.program=false")
                .arg("-c")
                .arg("gpg.ssh.program=ssh-keygen")
                .arg("-c")
                .arg(format!("gpg.ssh.allowedSignersFile={}", file.display())),
            CommitSigners::Gpg(keyring) => {
                let import = Cmd::new("gpg --import", "gpg")
                    .args(["--batch", "--quiet", "--no-tty", "--no-autostart", "--homedir"])
                    .arg(home.as_os_str())
                    .arg("--import")
                    .arg(keyring.as_os_str())
                    .timeout(LOCAL_TIMEOUT);
                runner::run(&import, None).await.map_err(|e| {
                    Failure::permanent(format!(
                        "cannot import verify_commits.gpg_keyring {}: {e}",
                        keyring.display()
                    ))
                })?;
                cmd.arg("-c")
                    .arg("gpg.program=gpg")
                    .arg("-c")
                    .arg("gpg.ssh.program=false")
                    .arg("-c")
                    .arg("gpg.ssh.allowedSignersFile=/dev/null")
            }
        };
        cmd = match tag {
            Some(t) => cmd.args(["verify-tag", "--end-of-options", t]),
            None => cmd.args(["verify-commit", "--end-of-options", sha]),
        };
        let result = runner::run(&cmd, None).await;
        let _ = std::fs::remove_dir_all(&home);
        let said = |tail: &[String]| {
            tail.iter()
                .map(|l| l.trim())
                .filter(|l| !l.is_empty() && !l.starts_with("gpg: using") && !l.contains("WARNING"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        match result {
            Ok(out) => {
                let who = said(&out.stderr_tail);
                Ok(if who.is_empty() {
                    format!("{what}: good signature")
                } else {
                    who
                })
            }
            Err(e) => {
                let why = said(e.stderr_tail());
                Err(Failure::permanent(format!(
                    "{what} is not signed by a key verify_commits allows: {}; nothing was built (sign it with an allowed key, or add the signer)",
                    // `verify-commit` says nothing of a missing signature; `verify-tag` says "no signature found".
                    if why.is_empty() || why.contains("no signature found") {
                        "it carries no signature".to_string()
                    } else {
                        why
                    }
                )))
            }
        }
    }

    /// The files that differ between `from` and `to` (both in the mirror): `git diff --name-only`.
    pub async fn changed_files(&self, from: &str, to: &str) -> Result<Vec<String>, Failure> {
        let cmd = self
            .git("git diff --name-only")
            .args([
                "diff",
                "--name-only",
                "-z",
                "--no-renames",
                "--end-of-options",
                from,
                to,
            ])
            .capture();
        let out = runner::run(&cmd, self.log.as_ref())
            .await
            .map_err(|e| self.local_failure(e))?;
        Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect())
    }

    /// Is `ancestor` reachable from `descendant` (both in the mirror)?
    pub async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool, Failure> {
        let cmd = self
            .git("git merge-base")
            .args(["merge-base", "--is-ancestor", ancestor, descendant]);
        match runner::run(&cmd, self.log.as_ref()).await {
            Ok(_) => Ok(true),
            Err(RunError::Failed { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(self.local_failure(e)),
        }
    }

    /// Is `sha` reachable from the configured branch (as fetched)?
    pub async fn is_on_branch(&self, sha: &str) -> Result<bool, Failure> {
        let cmd = self
            .git("git merge-base")
            .args(["merge-base", "--is-ancestor", sha])
            .arg(format!("refs/heads/{}", self.app.branch));
        match runner::run(&cmd, self.log.as_ref()).await {
            Ok(_) => Ok(true),
            Err(RunError::Failed { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(self.local_failure(e)),
        }
    }

    /// Writes the tree of `sha` into `dir` (which must not exist yet), without touching the mirror's HEAD.
    pub async fn checkout(&self, sha: &str, dir: &Path) -> Result<(), Failure> {
        let index = dir.with_extension("index");
        let _ = std::fs::remove_file(&index);
        let read_tree = self
            .git("git read-tree")
            .env("GIT_INDEX_FILE", index.as_os_str())
            .args(["read-tree", sha]);
        let mut work_tree = OsString::from("--work-tree=");
        work_tree.push(dir.as_os_str());
        // Parallel checkout (git >= 2.32): one worker per core writes the files; older gits ignore the key.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let checkout = self
            .git("git checkout-index")
            .env("GIT_INDEX_FILE", index.as_os_str())
            .arg("-c")
            .arg(format!("checkout.workers={workers}"))
            .arg(work_tree)
            .args(["checkout-index", "--all", "--force"]);
        if let Err(e) = std::fs::create_dir(dir) {
            return Err(Failure::permanent(format!(
                "cannot create {}: {e}",
                dir.display()
            )));
        }
        let result = async {
            runner::run(&read_tree, self.log.as_ref()).await?;
            match runner::run(&checkout, self.log.as_ref()).await {
                // A parallel checkout's workers report "unable to write file" without the reason (a full
                // disk, a permission): once more on one worker, for git's exact words.
                Err(runner::RunError::Failed { .. }) if workers > 1 => {
                    let mut once = checkout.clone();
                    if let Some(w) = once
                        .args
                        .iter_mut()
                        .find(|a| a.to_string_lossy().starts_with("checkout.workers="))
                    {
                        *w = "checkout.workers=1".into();
                    }
                    runner::run(&once, self.log.as_ref()).await
                }
                other => other,
            }
        }
        .await;
        let _ = std::fs::remove_file(&index);
        // git says "unable to write file"; say why, while the partial release still fills the disk.
        let disk_full = result.is_err() && disk_free(dir).is_some_and(|free| free < 256 * 1024);
        result.map(|_| ()).map_err(|e| {
            if disk_full {
                return Failure::permanent(format!(
                    "checkout of {sha} failed: No space left on device in {} ({} KiB free); free some space (fewer keep_releases?) and deploy again",
                    dir.parent().unwrap_or(dir).display(),
                    disk_free(dir).unwrap_or(0) / 1024
                ));
            }
            let kind = classify(e.stderr_tail());
            Failure {
                kind: if kind == Kind::RateLimited {
                    Kind::Permanent
                } else {
                    kind
                },
                message: format!("checkout of {sha} into {} failed: {e}", dir.display()),
                retry_after: None,
            }
        })
    }

    /// What the remote would deploy now, without fetching anything: (full ref, sha) of the branch tip or of
    /// the newest matching tag (peeled to its commit). One `git ls-remote`.
    pub async fn remote_head(&self) -> Result<Option<(String, String)>, Failure> {
        let pattern = match &self.app.track {
            Track::Branch(b) => format!("refs/heads/{b}"),
            Track::Tags(g) => format!("refs/tags/{g}"),
        };
        let cmd = self
            .net("git ls-remote", &self.app.repo)
            .args(["ls-remote", "--"])
            .arg(self.app.repo.as_str())
            .arg(pattern)
            .capture();
        let out = runner::run(&cmd, self.log.as_ref())
            .await
            .map_err(|e| self.remote_failure(e))?;
        let mut refs: Vec<(String, String)> = Vec::new();
        for line in out.stdout_str().lines() {
            let mut parts = line.split_whitespace();
            let (Some(sha), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            if !crate::model::is_full_sha(sha) {
                continue;
            }
            match name.strip_suffix("^{}") {
                // The peeled commit of an annotated tag replaces the tag object.
                Some(tag) => {
                    if let Some(e) = refs.iter_mut().find(|(n, _)| n == tag) {
                        e.1 = sha.to_string();
                    }
                }
                None if self.app.track.wants(name) => refs.push((name.to_string(), sha.to_string())),
                None => {}
            }
        }
        Ok(refs.into_iter().max_by(|a, b| version_cmp(&a.0, &b.0)))
    }

    /// The newest tag (by version order) matching the app's glob, in the mirror: (full ref, commit).
    pub async fn newest_tag(&self, glob: &str) -> Result<Option<(String, String)>, Failure> {
        let cmd = self
            .git("git for-each-ref")
            .args(["for-each-ref", "--sort=-v:refname", "--format=%(refname)"])
            .arg(format!("refs/tags/{glob}"))
            .capture();
        let out = runner::run(&cmd, self.log.as_ref())
            .await
            .map_err(|e| self.local_failure(e))?;
        for name in out.stdout_str().lines() {
            if !self.app.track.wants(name) {
                continue;
            }
            if let Some(sha) = self.resolve_commit(name).await? {
                return Ok(Some((name.to_string(), sha)));
            }
        }
        Ok(None)
    }

    /// Matching tags that point at `sha` (directly, or through an annotated tag).
    pub async fn tags_at(&self, sha: &str, glob: &str) -> Result<Vec<String>, Failure> {
        let cmd = self
            .git("git for-each-ref")
            .args(["for-each-ref", "--sort=-v:refname", "--format=%(refname)"])
            .arg(format!("--points-at={sha}"))
            .arg(format!("refs/tags/{glob}"))
            .capture();
        let out = runner::run(&cmd, self.log.as_ref())
            .await
            .map_err(|e| self.local_failure(e))?;
        Ok(out
            .stdout_str()
            .lines()
            .filter(|n| self.app.track.wants(n))
            .map(str::to_string)
            .collect())
    }
}

/// Version order for ref names, like `git --sort=v:refname`: runs of digits compare as numbers.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, nx), (true, ny)) => {
                let (nx, ny) = (nx.trim_start_matches('0'), ny.trim_start_matches('0'));
                nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny))
            }
            ((_, sx), (_, sy)) => sx.cmp(sy),
        };
        if ord != std::cmp::Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs(3) writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Used by `haul check`: is the repo reachable with these credentials?
pub fn describe_transport(app: &AppConfig) -> &'static str {
    if crate::model::url::is_ssh_url(&app.repo) {
        "ssh (deploy key, pinned host keys)"
    } else if app.repo.starts_with("https://") || app.repo.starts_with("http://") {
        "http(s)"
    } else {
        "local path"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let cases: &[(&str, Kind)] = &[
            ("git@127.0.0.1: Permission denied (publickey).\nfatal: Could not read from remote repository.", Kind::Permanent),
            ("Host key verification failed.\nfatal: Could not read from remote repository.", Kind::Permanent),
            ("fatal: couldn't find remote ref refs/heads/nope", Kind::Permanent),
            ("ssh: connect to host 127.0.0.1 port 2222: Connection refused\nfatal: Could not read from remote repository.", Kind::Transient),
            ("fatal: the remote end hung up unexpectedly", Kind::Transient),
            ("error: RPC failed; HTTP 429 curl 22 The requested URL returned error: 429", Kind::RateLimited),
            ("remote: You have exceeded a secondary rate limit", Kind::RateLimited),
        ];
        for (stderr, want) in cases {
            let lines: Vec<String> = stderr.lines().map(String::from).collect();
            assert_eq!(classify(&lines), *want, "{stderr}");
        }
    }

    #[test]
    fn version_order() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("refs/tags/v1.10.0", "refs/tags/v1.9.3"), Greater);
        assert_eq!(version_cmp("refs/tags/v2", "refs/tags/v10"), Less);
        assert_eq!(version_cmp("refs/tags/v1.0", "refs/tags/v1.0"), Equal);
    }

    #[test]
    fn ssh_command_quotes_paths() {
        assert_eq!(sh_quote("/etc/it's"), r"'/etc/it'\''s'");
    }
}
