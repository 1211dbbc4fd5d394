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
    path: PathBuf,
    /// Strings never written (credentials in repository and mirror URLs).
    redact: Vec<String>,
}

pub fn path_for(logs_dir: &Path, id: &DeployId) -> PathBuf {
    logs_dir.join(format!("{id}.log"))
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
            path,
            redact: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line, stamped with the time. A failure to write the log never fails the deploy.
    /// Every later line has these strings replaced by `***`.
    pub fn with_redactions(mut self, secrets: Vec<String>) -> DeployLog {
        self.redact = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        self
    }

    pub fn line(&self, text: &str) {
        let mut text = text.to_string();
        for s in &self.redact {
            text = text.replace(s.as_str(), "***");
        }
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
        let text = std::fs::read_to_string(log.path()).expect("read");
        assert!(
            !text.contains("ghp_SECRET") && text.contains("deploy:***@example.com"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
