//! The layout of `state_dir`, spelled once. Every path haul keeps under it (the audit database, the control
//! socket, the instance lock, deploy logs, mirrors, downloads, per-app locks, recorded process groups) comes
//! from [`StateDir`], so a reader finds the whole layout on one screen and no two files can disagree on it.
//!
//! Of this, the README's "contract on disk" promises only `haul.db`'s existence (read it through
//! `haul history --json`, not SQL), `haul.sock` and `logs/<deploy-id>.log`; `mirrors/`, `downloads/`,
//! `locks/` and `run/` are haul's own business and may change.

use std::path::{Path, PathBuf};

use crate::model::DeployId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The audit database (SQLite, WAL).
    pub fn db(&self) -> PathBuf {
        self.root.join("haul.db")
    }

    /// The control socket `haul deploy` talks to the daemon through.
    pub fn socket(&self) -> PathBuf {
        self.root.join("haul.sock")
    }

    /// One daemon per state directory.
    pub fn instance_lock(&self) -> PathBuf {
        self.root.join("haul.lock")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// One deploy's full log.
    pub fn log_of(&self, id: &DeployId) -> PathBuf {
        crate::infra::deploylog::path_for(&self.logs(), id)
    }

    /// An app's bare mirror.
    pub fn mirror_of(&self, app: &str) -> PathBuf {
        self.root.join("mirrors").join(format!("{app}.git"))
    }

    /// An app's artifact downloads, one directory per deploy, removed when the deploy ends.
    pub fn downloads_of(&self, app: &str) -> PathBuf {
        self.root.join("downloads").join(app)
    }

    /// A fleet app's conductor mirror (fetched from the forge once per release, apart from the host's own).
    pub fn conductor_mirror_of(&self, app: &str) -> PathBuf {
        self.root.join("fleet").join(app).join("conductor.git")
    }

    /// The bundle of `sha` a fleet host downloaded from the engine, fetched into its mirror by the deploy.
    pub fn fleet_bundle(&self, app: &str, sha: &str) -> PathBuf {
        self.root.join("fleet").join(app).join(format!("{sha}.bundle"))
    }

    /// The artifact package of `sha` a fleet host downloaded from the engine (a directory of the files the
    /// conductor downloaded and verified), checked again and unpacked by the deploy.
    pub fn fleet_package(&self, app: &str, sha: &str) -> PathBuf {
        self.root.join("fleet").join(app).join(format!("{sha}.package"))
    }

    /// What this host last applied of a fleet app's rollouts (the highest epoch seen, the rollout id).
    pub fn fleet_applied(&self, app: &str) -> PathBuf {
        self.root.join("fleet").join(app).join("applied.json")
    }

    /// The lock every deploy of `app` runs under, across processes.
    pub fn app_lock(&self, app: &str) -> PathBuf {
        self.root.join("locks").join(format!("{app}.lock"))
    }

    /// The process group of `app`'s running step, so a restart can end what a killed haul left.
    pub fn pgid_of(&self, app: &str) -> PathBuf {
        self.root.join("run").join(format!("{app}.pgid"))
    }

    /// Creates the directories a daemon or an in-process deploy writes into.
    pub fn create(&self) -> Result<(), String> {
        for dir in [
            self.root.clone(),
            self.logs(),
            self.root.join("mirrors"),
            self.root.join("locks"),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the README documents, and the one earlier versions left on disk: it must not drift.
    #[test]
    fn the_layout_is_what_earlier_versions_wrote() {
        let s = StateDir::new("/var/lib/haul");
        assert_eq!(s.db(), Path::new("/var/lib/haul/haul.db"));
        assert_eq!(s.socket(), Path::new("/var/lib/haul/haul.sock"));
        assert_eq!(s.instance_lock(), Path::new("/var/lib/haul/haul.lock"));
        assert_eq!(s.mirror_of("blog"), Path::new("/var/lib/haul/mirrors/blog.git"));
        assert_eq!(s.downloads_of("blog"), Path::new("/var/lib/haul/downloads/blog"));
        assert_eq!(s.app_lock("blog"), Path::new("/var/lib/haul/locks/blog.lock"));
        assert_eq!(s.pgid_of("blog"), Path::new("/var/lib/haul/run/blog.pgid"));
        let id = DeployId::new(0);
        assert_eq!(
            s.log_of(&id),
            Path::new("/var/lib/haul/logs").join(format!("{id}.log"))
        );
    }
}
