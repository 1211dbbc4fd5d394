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

mod artifact;
mod git;
mod rollback;

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
    /// Something about the fetch the audit should say (a rate limit that was waited out, who signed it).
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
    pub dirs: crate::infra::state_dir::StateDir,
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

    /// Checks out, builds, switches and activates `target`. Every path ends in an outcome; `current` only
    /// ever moves to a release whose build finished.
    pub async fn release(&self, job: &Job, target: &Target, previous: &Previous) -> Outcome {
        let git = self.git();
        let Target {
            git_ref,
            sha,
            release_id,
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
            after_failed: None,
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
        if !self.app.shared.is_empty() {
            self.log
                .stage(&format!("link shared {}", self.app.shared.join(", ")));
            if let Err(e) = release::link_shared(&self.app.path, &dir, &self.app.shared) {
                let _ = release::remove(&self.app.path, release_id);
                outcome.release_id = None;
                outcome.reason = format!("{e}; current still points at {live}");
                return outcome;
            }
        }
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

        self.live_now(outcome, target, previous, &dir, &env).await
    }

    /// The release is live and healthy: old releases pruned, the outcome `succeeded`, then the `after`
    /// steps, whose failure is said in the reason (and told) but never rolls back.
    async fn live_now(
        &self,
        mut outcome: Outcome,
        target: &Target,
        previous: &Previous,
        dir: &Path,
        env: &[(String, OsString)],
    ) -> Outcome {
        let (release_id, fetch_note) = (&target.release_id, &target.fetch_note);
        let short = &target.sha[..target.sha.len().min(7)];
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
        // After the health gate: a failure here never rolls back; the deploy stays succeeded and says so.
        if !self.app.after.is_empty() {
            let t = Instant::now();
            if let Err(e) = self.run_steps("after", &self.app.after, dir, env).await {
                let why =
                    format!("{e} (after the health gate: the release stays live, nothing was rolled back)");
                outcome.reason = format!("{}; {why}", outcome.reason);
                outcome.after_failed = Some(why);
            }
            self.timed("after", t);
        }
        outcome
    }

    /// Fetches and decides what to deploy: the sha (which must be on the configured branch) and the id of the
    /// release directory it will become. Nothing on the app's `path` is touched yet.
    pub async fn prepare(&self, job: &Job, previous: &Previous) -> Result<Target, Outcome> {
        if self.app.source.is_artifact() {
            self.prepare_artifact(job, previous).await
        } else {
            self.prepare_git(job, previous).await
        }
    }

    pub(super) fn timed(&self, stage: &str, since: Instant) {
        crate::infra::metrics::stage(&self.app.name, stage, since.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::testkit::{Fixture, Repo};

    /// A build that leaves evidence of where and with what it ran, and fails if the commit says so; an activate
    /// step that fails if the commit says so.
    const APP: &str = r#"
[apps.blog]
repo = "repo.git"
path = "srv/blog"
max_fetches_per_minute = 10000
build = ["echo hi > built", "printf %s \"$HAUL_SHA\" > built-sha", "test ! -e fail-build"]
activate = ["test ! -e fail-activate"]
"#;

    struct World {
        fx: Fixture,
        repo: Repo,
    }

    impl World {
        async fn new(toml: &str) -> World {
            let fx = Fixture::new(toml);
            let repo = Repo::new(fx.root()).await;
            World { fx, repo }
        }

        fn path(&self) -> PathBuf {
            self.fx.app_path("blog")
        }

        fn pipeline(&self, job: &Job) -> Pipeline {
            let dirs = crate::infra::state_dir::StateDir::new(&self.fx.cfg.state_dir);
            let log = DeployLog::create(&dirs.logs(), &job.id).expect("deploy log");
            Pipeline {
                app: Arc::new(self.fx.cfg.apps["blog"].clone()),
                dirs,
                log: Arc::new(log),
                pgid_file: None,
            }
        }

        /// What is live now, as the queue would tell the pipeline.
        fn previous(&self, sha: Option<&str>) -> Previous {
            Previous {
                release_id: release::current(&self.path()),
                sha: sha.map(String::from),
                ..Previous::default()
            }
        }

        /// `prepare`, then (if that chose a target) `release`, as the queue runs them.
        async fn deploy(&self, sha: Option<&str>, previous: &Previous) -> Outcome {
            let job = job(sha);
            let p = self.pipeline(&job);
            match p.prepare(&job, previous).await {
                Ok(target) => p.release(&job, &target, previous).await,
                Err(refused) => refused,
            }
        }

        fn live(&self) -> Option<String> {
            release::current(&self.path())
        }
    }

    fn job(sha: Option<&str>) -> Job {
        Job {
            id: DeployId::new(model::now_ms()),
            trigger: Trigger::Manual,
            git_ref: Some("refs/heads/main".into()),
            sha: sha.map(String::from),
            actor: "alice".into(),
            digest: None,
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()))
    }

    #[tokio::test]
    async fn a_commit_becomes_the_live_release_with_its_build_run_in_it() {
        let w = World::new(APP).await;
        let v1 = w.repo.commit(&[("index.html", "v1")], "v1").await;
        let o = w.deploy(Some(&v1[..7]), &w.previous(None)).await;
        assert_eq!(o.state, State::Succeeded, "{}", o.reason);
        let rid = o.release_id.clone().expect("a release id");
        assert_eq!(
            o.sha.as_deref(),
            Some(v1.as_str()),
            "the prefix resolved to the full sha"
        );
        assert!(o.reason.contains(&format!("is live as {rid}")), "{}", o.reason);
        assert_eq!(w.live().as_deref(), Some(rid.as_str()));
        let dir = release::release_dir(&w.path(), &rid);
        assert_eq!(read(&dir, "index.html"), "v1");
        assert_eq!(read(&dir, "built"), "hi\n", "the build ran in the release dir");
        assert_eq!(read(&dir, "built-sha"), v1, "the build was told the sha");

        // The branch tip, by default; the previous release stays for a rollback.
        let v2 = w.repo.commit(&[("index.html", "v2")], "v2").await;
        let o2 = w.deploy(None, &w.previous(Some(&v1))).await;
        assert_eq!(o2.state, State::Succeeded, "{}", o2.reason);
        assert_eq!(o2.sha.as_deref(), Some(v2.as_str()));
        assert_eq!(o2.previous_sha.as_deref(), Some(v1.as_str()));
        assert_eq!(w.live(), o2.release_id);
        assert!(dir.is_dir());
    }

    #[tokio::test]
    async fn a_failing_build_step_leaves_current_untouched() {
        let w = World::new(APP).await;
        let v1 = w.repo.commit(&[("index.html", "v1")], "v1").await;
        let first = w.deploy(Some(&v1), &w.previous(None)).await;
        assert_eq!(first.state, State::Succeeded, "{}", first.reason);
        let live = w.live().expect("v1 is live");

        let bad = w.repo.commit(&[("fail-build", "")], "breaks the build").await;
        let o = w.deploy(Some(&bad), &w.previous(Some(&v1))).await;
        assert_eq!(o.state, State::Failed, "{}", o.reason);
        assert!(
            o.reason.contains("build step 3/3"),
            "names the step: {}",
            o.reason
        );
        assert!(
            o.reason.contains(&format!("current still points at {live}")),
            "{}",
            o.reason
        );
        assert_eq!(w.live().as_deref(), Some(live.as_str()), "nothing switched");
        assert_eq!(read(&release::release_dir(&w.path(), &live), "index.html"), "v1");
    }

    #[tokio::test]
    async fn an_activate_failure_rolls_back_to_the_previous_release() {
        let w = World::new(APP).await;
        let v1 = w.repo.commit(&[("index.html", "v1")], "v1").await;
        let first = w.deploy(Some(&v1), &w.previous(None)).await;
        assert_eq!(first.state, State::Succeeded, "{}", first.reason);
        let live = w.live().expect("v1 is live");

        let bad = w.repo.commit(&[("fail-activate", "")], "breaks activate").await;
        let o = w.deploy(Some(&bad), &w.previous(Some(&v1))).await;
        assert_eq!(o.state, State::RolledBack, "{}", o.reason);
        assert!(o.reason.contains("activate step 1/1"), "{}", o.reason);
        assert!(
            o.reason.contains(&format!("rolled back to {live}")),
            "{}",
            o.reason
        );
        assert_eq!(w.live().as_deref(), Some(live.as_str()), "current is back");
        let failed = o.release_id.expect("the failed release is named");
        assert!(
            release::release_dir(&w.path(), &failed).is_dir(),
            "the failed release stays on disk for inspection"
        );
    }

    /// With nothing to go back to, the new release is what there is: it stays live, and the audit says so.
    #[tokio::test]
    async fn an_activate_failure_with_no_previous_release_stays_live() {
        let w = World::new(APP).await;
        let bad = w.repo.commit(&[("fail-activate", "")], "breaks activate").await;
        let o = w.deploy(Some(&bad), &w.previous(None)).await;
        assert_eq!(o.state, State::Failed, "{}", o.reason);
        assert!(
            o.reason.contains("no previous release to roll back to"),
            "{}",
            o.reason
        );
        assert_eq!(w.live(), o.release_id);
    }

    /// Every refusal happens before anything is written under the app's path.
    #[tokio::test]
    async fn a_sha_that_is_not_on_the_branch_is_refused() {
        let w = World::new(APP).await;
        let v1 = w.repo.commit(&[("index.html", "v1")], "v1").await;
        let v2 = w.repo.commit(&[("index.html", "v2")], "v2").await;
        let first = w.deploy(Some(&v2), &w.previous(None)).await;
        assert_eq!(first.state, State::Succeeded, "{}", first.reason);
        let live = w.live().expect("v2 is live");
        // A force-push takes main back: v2 stays in the mirror, on no branch.
        w.repo.rewind(&v1).await;
        w.repo.remove("index.html");
        let v3 = w.repo.commit(&[("other.html", "v3")], "v3").await;
        assert_ne!(v3, v2);

        async fn check(w: &World, live_sha: &str, sha: &str, wanted: &str) {
            let (releases, live) = (release::list(&w.path()), w.live());
            let job = job(Some(sha));
            let p = w.pipeline(&job);
            let refused = p
                .prepare(&job, &w.previous(Some(live_sha)))
                .await
                .err()
                .unwrap_or_else(|| panic!("{sha:?} was accepted"));
            assert_eq!(refused.state, State::Failed, "{sha:?}: {}", refused.reason);
            assert!(
                refused.reason.contains(wanted),
                "{sha:?}: {:?} does not say {wanted:?}",
                refused.reason
            );
            assert_eq!(w.live(), live, "{sha:?}: nothing switched");
            assert_eq!(release::list(&w.path()), releases, "{sha:?}: nothing written");
        }
        check(&w, &v2, &v2, "is not on branch main").await;
        check(
            &w,
            &v2,
            &"deadbeef".repeat(5),
            "is not in the repository after fetching",
        )
        .await;
        check(&w, &v2, "main", "is not a commit sha").await;
        check(&w, &v2, "HEAD~1", "is not a commit sha").await;
        check(&w, &v2, "--upload-pack=x", "is not a commit sha").await;
        assert_eq!(w.live(), Some(live));
    }
}
