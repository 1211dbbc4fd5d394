//! Advisory file locks (`flock(2)`): one per app, so the daemon and an in-process `haul deploy` can never
//! deploy the same app at once, and one per state dir, so two daemons never share it. The kernel drops a lock
//! when its holder dies, so a SIGKILL never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct FileLock {
    _file: File,
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

fn flock(file: &File, op: i32) -> io::Result<bool> {
    // SAFETY: flock(2) on a file descriptor we own for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Takes the lock if nobody holds it.
pub fn try_lock(path: &Path) -> io::Result<Option<FileLock>> {
    let file = open(path)?;
    Ok(flock(&file, libc::LOCK_EX | libc::LOCK_NB)?.then(|| FileLock { _file: file }))
}

/// Waits for the lock. It polls rather than blocking a thread in `flock`, so the wait can be cancelled (a
/// daemon asked to stop while an in-process `haul deploy` holds the app stops at once).
pub async fn lock(path: &Path) -> io::Result<FileLock> {
    loop {
        if let Some(l) = try_lock(path)? {
            return Ok(l);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
