//! The pipeline: one deploy of one app, from fetch to a live release. A plain async function of (app config,
//! job) to outcome: it knows nothing of HTTP, queues or SQL, and it never fails half-way in a way that leaves
//! `current` pointing at anything but a complete release.
//!
//! fetch -> resolve (the sha must be on the configured branch) -> checkout into `releases/<id>` -> build steps
//! -> switch `current` -> activate steps (rolled back to the previous release if they fail) -> prune.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{AppConfig, HealthCheck, Source, Track};
use crate::deploy::release;
use crate::infra::deploylog::DeployLog;
use crate::infra::httpc;
use crate::infra::runner::{self, Cmd};
use crate::model::failure::Failure;
use crate::model::{self, DeployId, Outcome, State, Trigger};
use crate::sources::git::Git;

/// Where an app's downloads go, under the state directory (next to the mirrors).
pub fn downloads_dir(mirrors_dir: &Path, app: &str) -> PathBuf {
    mirrors_dir.with_file_name("downloads").join(app)
}

/// What the queue hands the pipeline.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: DeployId,
    pub trigger: Trigger,
    pub git_ref: Option<String>,
    /// A full sha (webhook), a prefix (`--sha`), or none for the branch tip.
    pub sha: Option<String>,
    pub actor: String,
    /// An artifact's content digest the trigger pinned.
    pub digest: Option<String>,
}

/// What a deploy will put live.
#[derive(Debug, Clone)]
pub struct Target {
    /// The full ref deployed: the branch, or the tag.
    pub git_ref: String,
    pub sha: String,
    pub release_id: String,
    /// Something about the fetch the audit should say (a rate limit that was waited out).
    pub fetch_note: Option<String>,
    /// An artifact downloaded and verified, to unpack instead of a checkout.
    pub artifact: Option<crate::sources::artifact::Fetched>,
}

/// The live release before this deploy, and the sha it was built from.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    pub release_id: Option<String>,
    pub sha: Option<String>,
    /// An artifact's digest.
    pub digest: Option<String>,
    /// The ref (an image's `refs/tags/<tag>`) it was deployed as.
    pub git_ref: Option<String>,
}

pub struct Pipeline {
    pub app: Arc<AppConfig>,
    pub mirrors_dir: PathBuf,
    pub log: Arc<DeployLog>,
    /// Where a running step's process group id is kept, so a restart can end what a crash left running.
    pub pgid_file: Option<PathBuf>,
}

/// A release on disk that a rollback may go back to, newest first.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub release_id: String,
    pub sha: String,
}

fn fail(kind_prefix: &str, f: &Failure) -> Outcome {
    Outcome::new(State::Failed, format!("{kind_prefix}: {f}"))
}

/// The shell a step runs in: bash with `-euo pipefail` where there is one, so a step fails fast.
fn step_cmd(label: String, step: &str) -> Cmd {
    if Path::new("/bin/bash").exists() {
        Cmd::new(label, "/bin/bash").args(["--noprofile", "--norc", "-euo", "pipefail", "-c", step])
    } else {
        Cmd::new(label, "/bin/sh").args(["-eu", "-c", step])
    }
}

impl Pipeline {
    fn step_env(
        &self,
        job: &Job,
        git_ref: &str,
        sha: &str,
        release_dir: &Path,
        previous: &Previous,
        digest: Option<&str>,
    ) -> Vec<(String, OsString)> {
        let mut env: Vec<(String, OsString)> = vec![
            ("HAUL_APP".into(), self.app.name.clone().into()),
            ("HAUL_DEPLOY_ID".into(), job.id.to_string().into()),
            ("HAUL_SHA".into(), sha.into()),
            ("HAUL_REF".into(), git_ref.into()),
            ("HAUL_ACTOR".into(), job.actor.clone().into()),
            ("HAUL_TRIGGER".into(), job.trigger.as_str().into()),
            ("HAUL_RELEASE_DIR".into(), release_dir.as_os_str().to_owned()),
            (
                "HAUL_PREVIOUS_SHA".into(),
                previous.sha.clone().unwrap_or_default().into(),
            ),
        ];
        if let Source::Image(img) = &self.app.source {
            env.push((
                "HAUL_IMAGE".into(),
                crate::sources::artifact::pinned_image(img, sha).into(),
            ));
            env.push(("HAUL_DIGEST".into(), format!("sha256:{sha}").into()));
        } else if let Some(d) = digest {
            env.push(("HAUL_DIGEST".into(), d.into()));
        }
        env
    }

    /// Runs `steps` in order in `dir`; the first failure stops them.
    async fn run_steps(
        &self,
        kind: &str,
        steps: &[String],
        dir: &Path,
        env: &[(String, OsString)],
    ) -> Result<(), String> {
        // Only build steps may be retried, and only if the operator opted in (`build_retries`).
        let retries = if kind == "build" {
            self.app.build_retries
        } else {
            0
        };
        let n = steps.len();
        for (i, step) in steps.iter().enumerate() {
            let label = format!("{kind} step {}/{n} `{step}`", i + 1);
            let mut attempt = 0;
            loop {
                self.log.stage(&label);
                let started = Instant::now();
                let mut cmd = step_cmd(label.clone(), step)
                    .cwd(dir)
                    .timeout(self.app.step_timeout);
                cmd.env = env.to_vec();
                cmd.pgid_file = self.pgid_file.clone();
                match runner::run(&cmd, Some(&self.log)).await {
                    Ok(_) => {
                        self.log
                            .line(&format!("    ok in {:.1}s", started.elapsed().as_secs_f64()));
                        break;
                    }
                    Err(e) if attempt < retries => {
                        attempt += 1;
                        let wait = crate::model::failure::backoff(
                            attempt,
                            Duration::from_secs(1),
                            Duration::from_secs(30),
                        );
                        self.log.line(&format!(
                            "  ! {e}; retry {attempt}/{retries} in {:.1}s (build_retries)",
                            wait.as_secs_f64()
                        ));
                        tokio::time::sleep(wait).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(())
    }

    /// The health gate: passes when one of `retries` attempts succeeds.
    async fn health(&self, dir: &Path, env: &[(String, OsString)]) -> Result<(), String> {
        let Some(h) = &self.app.health else {
            return Ok(());
        };
        let mut last = String::new();
        for attempt in 1..=h.retries {
            self.log.stage(&format!("health check {attempt}/{}", h.retries));
            let result = match &h.check {
                HealthCheck::Url { host, port, path } => {
                    match httpc::get_status(host, *port, path, h.timeout).await {
                        Ok(status) if (200..300).contains(&status) => Ok(()),
                        Ok(status) => Err(format!("GET http://{host}:{port}{path} answered {status}")),
                        Err(e) => Err(format!("GET http://{host}:{port}{path}: {e}")),
                    }
                }
                HealthCheck::Command(c) => {
                    let mut cmd = step_cmd(format!("health command `{c}`"), c)
                        .cwd(dir)
                        .timeout(h.timeout);
                    cmd.env = env.to_vec();
                    cmd.pgid_file = self.pgid_file.clone();
                    runner::run(&cmd, Some(&self.log))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            };
            match result {
                Ok(()) => {
                    self.log.line("    healthy");
                    return Ok(());
                }
                Err(e) => {
                    self.log.line(&format!("  ! {e}"));
                    last = e;
                }
            }
            if attempt < h.retries {
                tokio::time::sleep(h.interval).await;
            }
        }
        Err(format!("health check failed {} time(s): {last}", h.retries))
    }

    /// Fetches and decides what to deploy: the sha (which must be on the configured branch) and the id of the
    /// release directory it will become. Nothing on the app's `path` is touched yet.
    pub async fn prepare(&self, job: &Job, previous: &Previous) -> Result<Target, Outcome> {
        if self.app.source.is_artifact() {
            return self.prepare_artifact(job, previous).await;
        }
        let started = Instant::now();
        let git = self.git();
        self.log.stage(&format!(
            "fetch {} ({})",
            crate::model::url::shown(&self.app.repo),
            self.app.track.describe()
        ));
        git.ensure_mirror().await.map_err(|f| fail("fetch failed", &f))?;
        let report = git
            .fetch()
            .await
            .map_err(|f| fail(&format!("fetch failed ({})", f.kind.as_str()), &f))?;
        self.log.line(&format!(
            "    fetched in {:.1}s ({} attempt{})",
            started.elapsed().as_secs_f64(),
            report.attempts,
            if report.attempts == 1 { "" } else { "s" }
        ));
        // The audit says why a deploy took longer than it should have.
        let fetch_note = report.rate_limited.map(|open| {
            format!(
                "the forge rate-limited the fetch (Retry-After {}s); haul waited {:.0}s and fetched {} time(s)",
                open.as_secs(),
                report.waited.as_secs_f64(),
                report.attempts
            )
        });
        self.timed("fetch", started);
        let (git_ref, sha) = self.resolve(&git, job).await?;
        self.refuse_going_back(&git, job, previous, &git_ref, &sha)
            .await?;
        if let Some(mirror) = &report.mirror {
            self.vouch_for_mirror(&git, job, mirror, &git_ref, &sha).await?;
        }
        self.log.line(&format!("    deploying {sha} ({git_ref})"));
        let release_id = release::new_release_id(&self.app.path, model::now_ms(), &sha);
        Ok(Target {
            git_ref,
            sha,
            release_id,
            fetch_note,
            artifact: None,
        })
    }

    /// Where this deploy's downloads go: private to haul, removed when the deploy ends (and at start-up).
    pub fn downloads_dir(&self, job: &Job) -> PathBuf {
        downloads_dir(&self.mirrors_dir, &self.app.name).join(job.id.as_str())
    }

    /// An artifact: decide what to deploy (for an image, one `HEAD` for the tag's digest), skip it if it is
    /// already live, else download and verify it. Nothing on the app's `path` is touched yet.
    async fn prepare_artifact(&self, job: &Job, previous: &Previous) -> Result<Target, Outcome> {
        use crate::sources::artifact::{self, Wanted};
        let started = Instant::now();
        let failed = |what: &str, f: Failure| fail(&format!("{what} ({})", f.kind.as_str()), &f);
        let is_image = matches!(self.app.source, Source::Image(_));
        let automatic = matches!(job.trigger, Trigger::Webhook | Trigger::Poll);
        let wanted = Wanted {
            tag: job
                .git_ref
                .as_deref()
                .and_then(|r| r.strip_prefix("refs/tags/"))
                .map(String::from),
            version: if is_image { None } else { job.sha.clone() },
            digest: match (is_image, &job.sha, &job.digest) {
                (true, Some(sha), _) if model::is_full_sha(sha) && sha.len() == 64 => {
                    Some(format!("sha256:{sha}"))
                }
                (_, _, d) => d.clone(),
            },
        };
        if let (true, Some(s)) = (is_image, &job.sha) {
            if wanted.digest.is_none() {
                return Err(Outcome::new(
                    State::Failed,
                    format!("{s:?} is not a manifest digest: an image is deployed by its full sha256 (64 hex digits), or by its tag"),
                ));
            }
        }
        self.log.stage(&format!("resolve {}", self.app.repo));
        let (resolved, report) = self
            .guarded("resolving", || artifact::resolve(&self.app, &wanted))
            .await;
        let mut resolved = resolved.map_err(|f| failed("resolve failed", f))?;
        // A tag glob: an automatic trigger never takes the app to an older tag than the live one.
        let live_tag = previous
            .git_ref
            .as_deref()
            .and_then(|r| r.strip_prefix("refs/tags/"));
        if let (true, true, Some(live)) = (is_image && automatic, self.app.track.is_glob(), live_tag) {
            if crate::sources::git::version_cmp(&resolved.name, live).is_lt() {
                return Err(Outcome::new(
                    State::Ignored,
                    format!(
                        "tag {} is older than the live {live}: a replayed or out-of-order trigger; nothing deployed",
                        resolved.name
                    ),
                ));
            }
        }
        if is_image {
            let current = resolved.digest.clone().unwrap_or_default();
            match &wanted.digest {
                // A trigger's digest must still be what the tag points at: an old delivery never rolls back.
                Some(pinned) if *pinned != current && automatic => {
                    return Err(Outcome::new(
                        State::Ignored,
                        format!(
                            "the trigger named {pinned}, but tag {} now points at {current}: a replayed or out-of-order trigger; nothing deployed",
                            resolved.name
                        ),
                    ))
                }
                // A person may deploy any digest of the repository.
                Some(pinned) => resolved.digest = Some(pinned.clone()),
                None => {}
            }
            let hex = resolved
                .digest
                .as_deref()
                .map(|d| d.trim_start_matches("sha256:").to_string());
            if automatic && hex.is_some() && hex == previous.sha {
                return Err(Outcome::new(
                    State::Ignored,
                    format!(
                        "{} is already live as {}; nothing downloaded",
                        resolved.location,
                        previous.release_id.as_deref().unwrap_or("")
                    ),
                ));
            }
        }
        self.log.line(&format!("    {}", resolved.location));
        let dir = self.downloads_dir(job);
        self.log.stage("download and verify");
        let (fetched, report2) = self
            .guarded("the download", || {
                artifact::download(&self.app, &resolved, &wanted, &dir)
            })
            .await;
        let fetched = fetched.map_err(|f| {
            let _ = std::fs::remove_dir_all(&dir);
            failed("download failed", f)
        })?;
        for n in &fetched.notes {
            self.log.line(&format!("    {n}"));
        }
        self.timed("fetch", started);
        let hex = fetched.digest.trim_start_matches("sha256:").to_string();
        // What the audit calls the sha: the digest, unless a templated location is named by a version.
        let sha = if !is_image && self.app.source.is_templated() {
            wanted
                .version
                .clone()
                .map(|v| v.to_ascii_lowercase())
                .unwrap_or(hex)
        } else {
            hex
        };
        if automatic
            && Some(&sha) == previous.sha.as_ref()
            && Some(&fetched.digest) == previous.digest.as_ref()
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Outcome::new(
                State::Ignored,
                format!(
                    "{} ({}) is already live as {}; nothing changed",
                    resolved.location,
                    fetched.digest,
                    previous.release_id.as_deref().unwrap_or("")
                ),
            ));
        }
        let attempts = report.attempts + report2.attempts;
        let fetch_note = report.rate_limited.or(report2.rate_limited).map(|open| {
            format!(
                "the upstream rate-limited haul (circuit open {}s); haul waited {:.0}s and tried {attempts} time(s)",
                open.as_secs(),
                (report.waited + report2.waited).as_secs_f64(),
            )
        });
        let git_ref = match &job.git_ref {
            Some(r) => r.clone(),
            None if is_image => format!("refs/tags/{}", resolved.name),
            None => String::new(),
        };
        self.log.line(&format!(
            "    deploying {} ({})",
            fetched.digest, resolved.location
        ));
        let release_id = release::new_release_id(&self.app.path, model::now_ms(), &sha);
        Ok(Target {
            git_ref,
            sha,
            release_id,
            fetch_note,
            artifact: Some(fetched),
        })
    }

    /// One network operation of this app's artifact source: within its upstream's circuit and budget, with
    /// `fetch_attempts` bounded retries, each attempt within `fetch_timeout`.
    async fn guarded<T, Fut>(
        &self,
        what: &str,
        op: impl Fn() -> Fut,
    ) -> (Result<T, Failure>, crate::sources::upstream::Report)
    where
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let note = |m: &str| self.log.line(m);
        crate::sources::upstream::guarded(
            &self.app.upstream(),
            self.app.max_fetches_per_minute,
            self.app.fetch_attempts,
            &note,
            || crate::sources::artifact::within(self.app.fetch_timeout, what, op()),
        )
        .await
    }

    /// Puts a verified artifact into `dir`: its tarballs unpacked safely, or (a container image) a note of
    /// the pinned image for the activate steps.
    async fn materialise(&self, target: &Target, dir: &Path) -> Result<(), Failure> {
        let Some(art) = &target.artifact else {
            return Err(Failure::permanent("no artifact to unpack"));
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::permanent(format!("cannot create {}: {e}", dir.display())))?;
        if let Source::Image(img) = &self.app.source {
            if img.kind == crate::config::ImageKind::Container {
                let pinned = crate::sources::artifact::pinned_image(img, &target.sha);
                return std::fs::write(dir.join(".haul-image"), format!("{pinned}\n"))
                    .map_err(|e| Failure::permanent(format!("cannot write {}: {e}", dir.display())));
            }
        }
        // One budget for all the layers together: max_artifact_size is what the release may become.
        let mut limits = crate::sources::unpack::Limits {
            max_bytes: self.app.max_artifact_bytes,
            ..crate::sources::unpack::Limits::default()
        };
        for f in &art.files {
            let (f, dir2, limits2) = (f.clone(), dir.to_path_buf(), limits.clone());
            let unpacked = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&f)
                    .map_err(|e| crate::sources::unpack::UnpackError::Io(format!("{}: {e}", f.display())))?;
                crate::sources::unpack::unpack(std::io::BufReader::new(file), &dir2, &limits2)
            })
            .await
            .map_err(|e| Failure::permanent(format!("unpacking did not finish: {e}")))?
            .map_err(|e| {
                Failure::permanent(format!(
                    "the artifact {} was refused while unpacking: {e}",
                    art.digest
                ))
            })?;
            self.log.line(&format!(
                "    unpacked {} file(s), {} dir(s), {} link(s), {} bytes",
                unpacked.files, unpacked.dirs, unpacked.links, unpacked.bytes
            ));
            limits.max_bytes = limits.max_bytes.saturating_sub(unpacked.bytes);
            limits.max_entries = limits
                .max_entries
                .saturating_sub(unpacked.files + unpacked.dirs + unpacked.links);
        }
        Ok(())
    }

    /// A webhook or a poll never takes the app back in time: a sha that is an ancestor of the live one, and is
    /// not what the remote's ref points at now, is a replayed or out-of-order trigger. (A real rewind, a
    /// force-push of the branch to an older commit, makes that commit the tip, and deploys.)
    async fn refuse_going_back(
        &self,
        git: &Git,
        job: &Job,
        previous: &Previous,
        git_ref: &str,
        sha: &str,
    ) -> Result<(), Outcome> {
        if !matches!(job.trigger, Trigger::Webhook | Trigger::Poll) {
            return Ok(());
        }
        let Some(live) = previous.sha.as_deref().filter(|l| *l != sha) else {
            return Ok(());
        };
        if !matches!(git.is_ancestor(sha, live).await, Ok(true)) {
            return Ok(());
        }
        let tip = git.resolve_commit(git_ref).await.ok().flatten();
        if tip.as_deref() == Some(sha) {
            return Ok(());
        }
        Err(Outcome::new(
            State::Ignored,
            format!(
                "{} is older than the live {} and is not the tip of {git_ref}: a replayed or out-of-order trigger; nothing deployed",
                &sha[..sha.len().min(7)],
                &live[..live.len().min(7)]
            ),
        ))
    }

    /// The objects came from a mirror: deploy the sha only if the primary published it. A signed webhook from
    /// the primary forge naming exactly this sha is its word; otherwise one cheap `ls-remote` of the primary
    /// must show this sha, or a descendant of it that the mirror also has.
    async fn vouch_for_mirror(
        &self,
        git: &Git,
        job: &Job,
        mirror: &str,
        git_ref: &str,
        sha: &str,
    ) -> Result<(), Outcome> {
        let failed = |m: String| Outcome::new(State::Failed, m);
        let mirror = crate::model::url::shown(mirror);
        if job.trigger == Trigger::Webhook && job.sha.as_deref() == Some(sha) {
            self.log.line(&format!(
                "    fetched from mirror {mirror}; {sha} is the sha the primary's signed webhook named"
            ));
            return Ok(());
        }
        let head = git.remote_head().await.map_err(|f| {
            failed(format!(
                "fetched {sha} from mirror {mirror}, but cannot check it with the primary ({f}); haul never deploys a mirror's word alone"
            ))
        })?;
        let Some((primary_ref, tip)) = head else {
            return Err(failed(format!(
                "the primary has no {}",
                self.app.track.describe()
            )));
        };
        let published = tip == sha
            || (primary_ref == git_ref
                && matches!(git.resolve_commit(&tip).await, Ok(Some(_)))
                && matches!(git.is_ancestor(sha, &tip).await, Ok(true)));
        if !published {
            return Err(failed(format!(
                "mirror {mirror} offers {sha} for {git_ref}, but the primary has {primary_ref} at {tip} and does not contain it; not deploying"
            )));
        }
        self.log.line(&format!(
            "    fetched from mirror {mirror}; the primary has {sha} on {primary_ref}"
        ));
        Ok(())
    }

    /// Checks out, builds, switches and activates `target`. Every path ends in an outcome; `current` only
    /// ever moves to a release whose build finished.
    pub async fn release(&self, job: &Job, target: &Target, previous: &Previous) -> Outcome {
        let git = self.git();
        let Target {
            git_ref,
            sha,
            release_id,
            fetch_note,
            ..
        } = target;
        let short = &sha[..sha.len().min(7)];
        let dir = release::release_dir(&self.app.path, release_id);
        let mut outcome = Outcome {
            state: State::Failed,
            reason: String::new(),
            sha: Some(sha.clone()),
            release_id: Some(release_id.clone()),
            previous_sha: previous.sha.clone(),
            digest: target.artifact.as_ref().map(|a| a.digest.clone()),
        };
        let live = previous.release_id.as_deref().unwrap_or("nothing");

        let t = Instant::now();
        self.log
            .stage(&format!("checkout {short} into {}", dir.display()));
        if let Err(e) = std::fs::create_dir_all(release::releases_dir(&self.app.path)) {
            outcome.release_id = None;
            outcome.reason = format!(
                "cannot create {}: {e}",
                release::releases_dir(&self.app.path).display()
            );
            return outcome;
        }
        let artifact = target.artifact.as_ref();
        let mut checked_out = if artifact.is_some() {
            let r = self.materialise(target, &dir).await;
            let _ = std::fs::remove_dir_all(self.downloads_dir(job));
            r
        } else {
            git.checkout(sha, &dir).await
        };
        if let (Err(f), None) = (&checked_out, artifact) {
            // Objects the mirror should have are gone (a bad disk): repair it, fetch again, try once more.
            if crate::sources::git::is_local_damage(&f.message) && git.repair_if_broken().await {
                let _ = release::remove(&self.app.path, release_id);
                self.log.stage("fetch again into the repaired mirror");
                checked_out = match git.fetch().await {
                    Ok(_) => git.checkout(sha, &dir).await,
                    Err(f) => Err(f),
                };
            }
        }
        if let Err(f) = checked_out {
            let _ = release::remove(&self.app.path, release_id);
            outcome.release_id = None;
            outcome.reason = format!("{f}; current still points at {live}");
            return outcome;
        }

        self.timed("checkout", t);
        let t = Instant::now();
        let digest = artifact.as_ref().map(|a| a.digest.as_str());
        let env = self.step_env(job, git_ref, sha, &dir, previous, digest);
        if let Err(e) = self.run_steps("build", &self.app.build, &dir, &env).await {
            outcome.reason = format!("{e}; current still points at {live}");
            return outcome;
        }
        self.timed("build", t);
        let t = Instant::now();

        self.log
            .stage(&format!("switch current -> releases/{release_id}"));
        if let Err(e) =
            release::sync_filesystem(&dir).and_then(|()| release::switch(&self.app.path, release_id))
        {
            outcome.reason = format!(
                "cannot switch {}: {e}; current still points at {live}",
                release::current_link(&self.app.path).display()
            );
            return outcome;
        }

        self.timed("switch", t);
        let t = Instant::now();
        if let Err(e) = self.run_steps("activate", &self.app.activate, &dir, &env).await {
            return self.roll_back(job, previous, outcome, &e).await;
        }
        self.timed("activate", t);
        let t = Instant::now();
        if let Err(e) = self.health(&dir, &env).await {
            return self.roll_back(job, previous, outcome, &e).await;
        }
        if self.app.health.is_some() {
            self.timed("health", t);
        }

        let protect: Vec<&str> = [Some(release_id.as_str()), previous.release_id.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let pruned = release::prune(&self.app.path, self.app.keep_releases, &protect);
        if !pruned.is_empty() {
            self.log.line(&format!(
                "    pruned {} old release(s): {}",
                pruned.len(),
                pruned.join(", ")
            ));
        }
        outcome.state = State::Succeeded;
        outcome.reason = match fetch_note {
            Some(note) => format!("{short} is live as {release_id}; {note}"),
            None => format!("{short} is live as {release_id}"),
        };
        outcome
    }

    fn timed(&self, stage: &str, since: Instant) {
        crate::infra::metrics::stage(&self.app.name, stage, since.elapsed());
    }

    fn git(&self) -> Git {
        Git::new(self.app.clone(), &self.mirrors_dir, Some(self.log.clone()))
    }

    /// Decides the (ref, commit) to deploy. A branch app deploys a commit reachable from its branch (the tip
    /// by default); a tag app deploys the commit of a matching tag (the newest by default).
    async fn resolve(&self, git: &Git, job: &Job) -> Result<(String, String), Outcome> {
        let failed = |m: String| Outcome::new(State::Failed, m);
        let wanted = match &job.sha {
            None => None,
            Some(w) if model::is_sha_prefix(w) => Some(w.to_ascii_lowercase()),
            Some(w) => return Err(failed(format!("{w:?} is not a commit sha"))),
        };
        let sha = match &wanted {
            None => None,
            Some(w) => match git.resolve_commit(w).await {
                Ok(Some(sha)) => Some(sha),
                Ok(None) => {
                    return Err(failed(format!(
                    "commit {w} is not in the repository after fetching {} (not pushed yet, or not on it)",
                    self.app.track.describe()
                )))
                }
                Err(f) => return Err(fail(&format!("cannot resolve {w}"), &f)),
            },
        };
        match (&self.app.track, sha) {
            (Track::Branch(branch), None) => {
                let r = format!("refs/heads/{branch}");
                match git.resolve_commit(&r).await {
                    Ok(Some(sha)) => Ok((r, sha)),
                    Ok(None) => Err(failed(format!("branch {branch} has no commit after the fetch"))),
                    Err(f) => Err(fail("cannot resolve the branch tip", &f)),
                }
            }
            (Track::Branch(branch), Some(sha)) => match git.is_on_branch(&sha).await {
                Ok(true) => Ok((format!("refs/heads/{branch}"), sha)),
                Ok(false) => Err(failed(format!(
                    "commit {sha} is not on branch {branch}; haul only deploys commits reachable from the configured branch"
                ))),
                Err(f) => Err(fail(&format!("cannot check that {sha} is on {branch}"), &f)),
            },
            (Track::Tags(glob), None) => match git.newest_tag(glob).await {
                Ok(Some(found)) => Ok(found),
                Ok(None) => Err(failed(format!("no tag matching {glob} after the fetch"))),
                Err(f) => Err(fail("cannot list tags", &f)),
            },
            (Track::Tags(glob), Some(sha)) => {
                let tags = git.tags_at(&sha, glob).await.map_err(|f| fail("cannot list tags", &f))?;
                // A webhook names its tag: it must still point at that commit. A person gets any matching tag.
                let named = job.git_ref.as_deref().filter(|r| r.starts_with("refs/tags/"));
                let chosen = match named {
                    Some(r) => tags.iter().find(|t| t.as_str() == r),
                    None => tags.first(),
                };
                match chosen {
                    Some(t) => Ok((t.clone(), sha)),
                    None => Err(failed(format!(
                        "commit {sha} is not the commit of {}; haul only deploys commits of tags matching {glob}",
                        named.unwrap_or("any tag")
                    ))),
                }
            }
        }
    }

    /// `haul rollback`: put an earlier release back, with the same activate steps and health gate. If that
    /// fails, the release that was live is put back again.
    pub async fn rollback(&self, job: &Job, candidates: &[Candidate], previous: &Previous) -> Outcome {
        let live = previous.release_id.as_deref();
        let wanted = job.sha.as_deref();
        let chosen = match wanted {
            // "The one before the live one": the successful release built just before it, so a second
            // rollback goes further back, not forward again.
            None => match live.and_then(|l| candidates.iter().position(|c| c.release_id == l)) {
                Some(i) => candidates.get(i + 1),
                None => candidates.iter().find(|c| Some(c.release_id.as_str()) != live),
            },
            // A release id exactly; else a sha prefix, in either case.
            Some(w) => candidates.iter().find(|c| c.release_id == w).or_else(|| {
                let w = w.to_ascii_lowercase();
                candidates
                    .iter()
                    .find(|c| model::is_sha_prefix(&w) && c.sha.starts_with(&w))
            }),
        };
        let Some(target) = chosen else {
            let on_disk: Vec<&str> = candidates.iter().map(|c| c.release_id.as_str()).collect();
            return Outcome::new(
                State::Failed,
                match wanted {
                    None => "there is no earlier successful release on disk to roll back to".to_string(),
                    Some(w) => format!(
                        "no successful release {w:?} on disk (releases you can roll back to: {})",
                        if on_disk.is_empty() {
                            "none".to_string()
                        } else {
                            on_disk.join(", ")
                        }
                    ),
                },
            );
        };
        let mut o = Outcome {
            state: State::Failed,
            reason: String::new(),
            sha: Some(target.sha.clone()),
            release_id: Some(target.release_id.clone()),
            previous_sha: previous.sha.clone(),
            digest: None,
        };
        if Some(target.release_id.as_str()) == live {
            o.state = State::Succeeded;
            o.reason = format!("{} is already live; nothing to do", target.release_id);
            return o;
        }
        let dir = release::release_dir(&self.app.path, &target.release_id);
        self.log.stage(&format!(
            "rollback: switch current -> releases/{}",
            target.release_id
        ));
        if let Err(e) = release::switch(&self.app.path, &target.release_id) {
            o.reason = format!(
                "cannot switch to {}: {e}; {} is still live",
                target.release_id,
                live.unwrap_or("nothing")
            );
            return o;
        }
        let git_ref = job.git_ref.clone().unwrap_or_default();
        let mut env = self.step_env(job, &git_ref, &target.sha, &dir, previous, None);
        env.push(("HAUL_ROLLBACK".into(), "1".into()));
        let activated = match self.run_steps("activate", &self.app.activate, &dir, &env).await {
            Ok(()) => self.health(&dir, &env).await,
            Err(e) => Err(e),
        };
        match activated {
            Ok(()) => {
                o.state = State::Succeeded;
                o.reason = format!(
                    "rolled back to {} ({})",
                    target.release_id,
                    &target.sha[..target.sha.len().min(7)]
                );
                o
            }
            Err(e) => {
                let mut back = self
                    .roll_back(
                        job,
                        previous,
                        o,
                        &format!("rollback to {} failed: {e}", target.release_id),
                    )
                    .await;
                back.state = State::Failed;
                back
            }
        }
    }

    /// Activate failed with the new release live: put the previous one back and re-activate it.
    async fn roll_back(&self, job: &Job, previous: &Previous, mut o: Outcome, why: &str) -> Outcome {
        let Some(prev_id) = previous.release_id.as_deref() else {
            o.reason =
                format!("{why}; there is no previous release to roll back to, so the new release stays live");
            return o;
        };
        self.log
            .stage(&format!("roll back: switch current -> releases/{prev_id}"));
        if let Err(e) = release::switch(&self.app.path, prev_id) {
            o.reason = format!("{why}; rolling back to {prev_id} failed too: {e}");
            return o;
        }
        let prev_dir = release::release_dir(&self.app.path, prev_id);
        let prev_sha = previous.sha.clone().unwrap_or_default();
        let prev_ref = job.git_ref.clone().unwrap_or_default();
        let mut env = self.step_env(
            job,
            &prev_ref,
            &prev_sha,
            &prev_dir,
            previous,
            previous.digest.as_deref(),
        );
        env.push(("HAUL_ROLLBACK".into(), "1".into()));
        let reactivated = self
            .run_steps("re-activate", &self.app.activate, &prev_dir, &env)
            .await;
        o.state = State::RolledBack;
        o.reason = match reactivated {
            Ok(()) => format!("{why}; rolled back to {prev_id}"),
            Err(e) => format!("{why}; rolled back to {prev_id}, but re-activating it failed: {e}"),
        };
        o
    }
}
