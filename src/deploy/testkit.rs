//! Fixtures for the unit tests of the layers that deploy and serve (the queue, the pipeline, the HTTP door, the
//! control socket): a temp dir holding a configuration parsed from TOML (its relative paths resolve inside the
//! dir), the real audit database with its writer thread, and a real bare git repository made by the real
//! `git` (through the one runner, like every process haul starts). Everything lives in the temp dir and goes
//! with it on drop. Compiled only for tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::deploy::queue::{Env, Queue};
use crate::infra::runner::{self, Cmd};
use crate::infra::scratch::TestDir;
use crate::infra::state_dir::StateDir;
use crate::model::{DeployId, DeployRequest, State, Trigger};
use crate::store::{self, DeployRow, Store};

/// A 40-hex sha made of one repeated digit, for requests that are never fetched.
pub fn sha(digit: char) -> String {
    digit.to_string().repeat(40)
}

/// A webhook request for `app` at `sha` on `main`.
pub fn webhook(app: &str, sha: &str) -> DeployRequest {
    DeployRequest::new(app, Trigger::Webhook, "octocat")
        .sent_by("github", None)
        .at_ref(Some("refs/heads/main".into()))
        .with_sha(Some(sha.into()))
}

/// One test's world: `haul.toml` parsed from the given text (with `state_dir = "state"` put first), the state
/// directory's folders, and the audit database open.
pub struct Fixture {
    pub cfg: Config,
    pub store: Store,
    // Last, so it is removed after everything that points into it is dropped.
    dir: TestDir,
}

impl Fixture {
    pub fn new(toml: &str) -> Fixture {
        let dir = TestDir::new("haul-unit");
        let cfg = parse_in(&dir.0, toml);
        let dirs = StateDir::new(&cfg.state_dir);
        dirs.create().expect("create the state dir");
        let store = Store::open(&dirs.db()).expect("open the audit database");
        Fixture { cfg, store, dir }
    }

    pub fn root(&self) -> &Path {
        &self.dir.0
    }

    /// The queue's environment, with no notifier (as an in-process deploy has).
    pub fn env(&self) -> Env {
        Env::new(&self.cfg, self.store.clone())
    }

    pub fn queue(&self) -> Arc<Queue> {
        Queue::new(self.env())
    }

    /// The configured `path` of `app`.
    pub fn app_path(&self, app: &str) -> PathBuf {
        self.cfg.apps[app].path.clone()
    }

    pub async fn row(&self, id: &DeployId) -> DeployRow {
        let id = id.clone();
        self.store
            .call(move |c| store::get(c, &id))
            .await
            .expect("read the audit")
            .expect("the row exists")
    }

    /// Every row, oldest first.
    pub async fn rows(&self) -> Vec<DeployRow> {
        let mut rows = self
            .store
            .call(|c| store::history(c, None, 1000))
            .await
            .expect("read the audit");
        rows.reverse();
        rows
    }

    /// Records what a successful deploy of `sha` as `release_id` leaves in the audit, the way the queue does
    /// (enqueue, claim, set_release, finish), without running anything.
    pub async fn record_success(&self, app: &str, sha: &str, release_id: &str) -> DeployId {
        let (req, rid, app) = (webhook(app, sha), release_id.to_string(), app.to_string());
        self.store
            .call(move |c| {
                let now = crate::model::now_ms();
                // No delivery id, so never a duplicate. (Nothing here may panic: it runs on the writer thread.)
                let id = store::enqueue(c, &req, now)?.id().clone();
                store::claim_next(c, &app, now)?;
                store::set_release(c, &id, &req.sha.clone().unwrap_or_default(), &rid, None, None)?;
                let mut o = crate::model::Outcome::new(State::Succeeded, "test");
                o.release_id = Some(rid.clone());
                store::finish(c, &id, &o, now)?;
                Ok(id)
            })
            .await
            .expect("record a success")
    }

    /// Makes `releases/<id>/` under the app's path (with one file) and points `current` at it.
    pub fn make_live(&self, app: &str, release_id: &str) {
        let path = self.app_path(app);
        let dir = crate::deploy::release::release_dir(&path, release_id);
        std::fs::create_dir_all(&dir).expect("mkdir release");
        std::fs::write(dir.join("index.html"), "live").expect("write");
        crate::deploy::release::switch(&path, release_id).expect("switch");
    }
}

/// `toml` as the `haul.toml` of `dir` (`state_dir = "state"` first), validated like the real thing.
pub fn parse_in(dir: &Path, toml: &str) -> Config {
    let text = format!("state_dir = \"state\"\n{toml}");
    Config::parse(&dir.join("haul.toml"), &text)
        .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{text}"))
}

/// Polls `probe` until it returns something (tests wait for states, not for durations); panics naming `what`
/// after a minute.
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bare repository (`repo.git`, what an app's `repo` names) and a work tree that pushes to it.
pub struct Repo {
    pub bare: PathBuf,
    work: PathBuf,
    home: PathBuf,
}

impl Repo {
    /// `<dir>/repo.git`, empty, with `main` as its default branch.
    pub async fn new(dir: &Path) -> Repo {
        let repo = Repo {
            bare: dir.join("repo.git"),
            work: dir.join("work"),
            home: dir.to_path_buf(),
        };
        std::fs::create_dir_all(&repo.work).expect("mkdir work");
        repo.git(
            dir,
            &["init", "--quiet", "--bare", "--initial-branch=main", "repo.git"],
        )
        .await;
        repo.git(&repo.work, &["init", "--quiet", "--initial-branch=main"])
            .await;
        let bare = repo.bare.to_string_lossy().into_owned();
        repo.git(&repo.work, &["remote", "add", "origin", &bare]).await;
        repo
    }

    /// Writes `files`, commits them on `main` and pushes; the new commit's sha.
    pub async fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            std::fs::write(self.work.join(name), content).expect("write a file to commit");
        }
        self.git(&self.work, &["add", "--all"]).await;
        self.git(&self.work, &["commit", "--quiet", "--allow-empty", "-m", message])
            .await;
        self.git(
            &self.work,
            &["push", "--quiet", "--force", "origin", "HEAD:refs/heads/main"],
        )
        .await;
        self.git(&self.work, &["rev-parse", "HEAD"]).await
    }

    /// Moves `main` back to `sha` (locally; the next [`Repo::commit`] force-pushes it): the commits after it
    /// are then on no branch.
    pub async fn rewind(&self, sha: &str) {
        self.git(&self.work, &["reset", "--quiet", "--hard", sha]).await;
    }

    /// Removes `name` from the work tree (the next commit drops it).
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.work.join(name)).expect("remove a file");
    }

    async fn git(&self, cwd: &Path, args: &[&str]) -> String {
        let cmd = Cmd::new(format!("test git {}", args[0]), "git")
            .cwd(cwd)
            .env("GIT_AUTHOR_NAME", "Test Dev")
            .env("GIT_AUTHOR_EMAIL", "dev@example.com")
            .env("GIT_COMMITTER_NAME", "Test Dev")
            .env("GIT_COMMITTER_EMAIL", "dev@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.home.as_os_str())
            .args(args.iter().copied())
            .timeout(Duration::from_secs(60))
            .capture();
        match runner::run(&cmd, None).await {
            Ok(out) => out.stdout_str(),
            Err(e) => panic!("git {args:?} in {}: {e}", cwd.display()),
        }
    }
}
