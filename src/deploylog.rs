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
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line, stamped with the time. A failure to write the log never fails the deploy.
    pub fn line(&self, text: &str) {
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
