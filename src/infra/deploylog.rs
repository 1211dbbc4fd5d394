//! One deploy's log file: `<state_dir>/logs/<deploy-id>.log`. Every stage line and every line a command prints
//! goes here, so `haul logs <id>` tells the whole story of one deploy and nothing else.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::model::DeployId;

pub struct DeployLog {
    file: Mutex<File>,
    /// Secrets never written beyond URL credentials, which `model::url::redact` masks anyway (the
    /// contents of an artifact's credential files).
    redact: Vec<String>,
}

pub fn path_for(logs_dir: &Path, id: &DeployId) -> PathBuf {
    logs_dir.join(format!("{id}.log"))
}

/// Deletes the deploy logs last written before `cutoff` (only `<deploy-id>.log` files: nothing else in the
/// directory is touched). Returns how many went. The audit rows stay; `haul logs` says the log is gone.
pub fn prune(logs_dir: &Path, cutoff: std::time::SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(logs_dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let is_log = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .is_some_and(|id| {
                // `20261126T183647-k3x9mq`: the shape haul mints, nothing a person put there.
                let b = id.as_bytes();
                b.len() == 22 && b[8] == b'T' && b[15] == b'-' && DeployId::parse(id).is_some()
            });
        let old = e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
        if is_log && old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

impl DeployLog {
    pub fn create(logs_dir: &Path, id: &DeployId) -> std::io::Result<DeployLog> {
        std::fs::create_dir_all(logs_dir)?;
        let path = path_for(logs_dir, id);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&path)?;
        Ok(DeployLog {
            file: Mutex::new(file),
            redact: Vec::new(),
        })
    }

    /// Appends one line, stamped with the time. A failure to write the log never fails the deploy.
    /// Every later line has these strings replaced by `***`.
    pub fn with_redactions(mut self, secrets: Vec<String>) -> DeployLog {
        self.redact = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        self
    }

    pub fn line(&self, text: &str) {
        let text = crate::model::url::redact(text, &self.redact);
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        let mut f = match self.file.lock() {
            Ok(f) => f,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = writeln!(f, "{stamp} {text}");
    }

    /// A stage header: `==> fetch`.
    pub fn stage(&self, text: &str) {
        self.line(&format!("==> {text}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the fetch stage line carried a token from an https repo URL into the log.
    #[test]
    fn regression_credentials_never_reach_the_log() {
        let dir = std::env::temp_dir().join(format!("haul-log-{}-{}", std::process::id(), fastrand::u32(..)));
        let id = DeployId::new(0);
        let log = DeployLog::create(&dir, &id)
            .expect("log")
            .with_redactions(vec!["ghp_SECRET".into()]);
        log.stage("fetch https://deploy:ghp_SECRET@example.com/x.git (branch main)");
        let text = std::fs::read_to_string(path_for(&dir, &id)).expect("read");
        assert!(
            !text.contains("ghp_SECRET") && text.contains("deploy:***@example.com"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod prune_tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn old_logs_go_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!(
            "haul-logprune-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let (old, new) = (DeployId::new(1_700_000_000_000), DeployId::new(1_800_000_000_000));
        let week_ago = SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
        for (name, when) in [
            (format!("{old}.log"), week_ago),
            (format!("{new}.log"), SystemTime::now()),
            ("notes.txt".to_string(), week_ago),
            ("not-a-deploy.log".to_string(), week_ago),
        ] {
            let f = File::create(dir.join(&name)).expect("create");
            f.set_modified(when).expect("mtime");
        }
        let removed = prune(&dir, SystemTime::now() - Duration::from_secs(24 * 3600));
        assert_eq!(removed, 1);
        assert!(!dir.join(format!("{old}.log")).exists());
        for kept in [
            format!("{new}.log"),
            "notes.txt".into(),
            "not-a-deploy.log".into(),
        ] {
            assert!(dir.join(&kept).exists(), "{kept} was removed");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
