//! Names for scratch files and directories under the system temp dir: unique per process and call, so
//! concurrent deploys and tests never share one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// `<temp>/<prefix>-<pid>-<nanos>-<n><suffix>`; nothing is created.
pub fn unique_temp_path(prefix: &str, suffix: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}-{n}{suffix}", std::process::id()))
}

/// A directory for a unit test, removed on drop.
#[cfg(test)]
pub struct TestDir(pub PathBuf);

#[cfg(test)]
impl TestDir {
    pub fn new(prefix: &str) -> TestDir {
        let dir = unique_temp_path(prefix, "");
        std::fs::create_dir_all(&dir).expect("mkdir");
        TestDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
