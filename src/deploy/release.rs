//! The on-disk contract of an app's `path`: `releases/<id>/` holds one release each and `current` is a relative
//! symlink to one of them. `current` is only ever replaced by `rename(2)` of a fresh temporary symlink followed
//! by an fsync of the directory, so at every instant it points at a complete release: the old one or the new.

use std::io;
use std::path::{Path, PathBuf};

use crate::model;

pub(crate) fn releases_dir(app_path: &Path) -> PathBuf {
    app_path.join("releases")
}

pub(crate) fn current_link(app_path: &Path) -> PathBuf {
    app_path.join("current")
}

/// `<path>/shared/`: what `shared` links into every release, kept across releases, prunes and rollbacks.
pub(crate) fn shared_dir(app_path: &Path) -> PathBuf {
    app_path.join("shared")
}

/// Links each `shared` entry (`.env`, `storage/`: a trailing `/` is a directory) from `<path>/shared/` into
/// the release at `dir`, replacing what the release has there. A missing directory is created once; a
/// missing file is an error naming what to create. A release path that passes through a symlink is refused,
/// so a link can never land outside the release.
pub(crate) fn link_shared(app_path: &Path, dir: &Path, shared: &[String]) -> Result<(), String> {
    let base = shared_dir(app_path);
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    for entry in shared {
        let rel = entry.trim_end_matches('/');
        let is_dir = entry.ends_with('/');
        let target = base.join(rel);
        if is_dir {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("cannot create the shared directory {}: {e}", target.display()))?;
        } else if !target.is_file() {
            return Err(format!(
                "the shared file {entry} is missing: create {} (haul links it into every release; it is never inside one)",
                target.display()
            ));
        }
        let link = dir.join(rel);
        let mut at = dir.to_path_buf();
        if let Some(parent) = Path::new(rel).parent() {
            for part in parent.components() {
                at.push(part);
                match std::fs::symlink_metadata(&at) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(format!(
                            "shared {entry}: {} in the release is a symlink; haul links shared paths only through real directories",
                            at.display()
                        ))
                    }
                    Ok(_) => {}
                    Err(_) => std::fs::create_dir_all(&at)
                        .map_err(|e| format!("cannot create {}: {e}", at.display()))?,
                }
            }
        }
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link),
            Ok(_) => std::fs::remove_file(&link),
            Err(_) => Ok(()),
        }
        .map_err(|e| format!("cannot replace {} with the shared {entry}: {e}", link.display()))?;
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| format!("cannot link {} -> {}: {e}", link.display(), target.display()))?;
    }
    Ok(())
}

pub(crate) fn release_dir(app_path: &Path, id: &str) -> PathBuf {
    releases_dir(app_path).join(id)
}

/// The release `current` points at, if any.
pub fn current(app_path: &Path) -> Option<String> {
    let target = std::fs::read_link(current_link(app_path)).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    release_dir(app_path, &name).is_dir().then_some(name)
}

/// `20261126T153215-1a2b3c4`: sortable, and carries the short sha. Unique within `releases/`.
pub(crate) fn new_release_id(app_path: &Path, now_ms: i64, sha: &str) -> String {
    let short = &sha[..sha.len().min(7)];
    let base = format!("{}-{short}", model::compact_utc(now_ms));
    let mut id = base.clone();
    let mut n = 2;
    while release_dir(app_path, &id).exists() {
        id = format!("{base}.{n}");
        n += 1;
    }
    id
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Flushes the filesystem holding `dir` to disk, so a release is durable before `current` points at it (a
/// power cut must not leave `current` durable and the files it names empty).
pub(crate) fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir)?;
    // SAFETY: syncfs(2) on a descriptor we own for the duration of the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Points `current` at `releases/<id>` atomically and durably.
pub fn switch(app_path: &Path, id: &str) -> io::Result<()> {
    let target = Path::new("releases").join(id);
    if !app_path.join(&target).is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("release {id} does not exist"),
        ));
    }
    let link = current_link(app_path);
    if let Ok(meta) = std::fs::symlink_metadata(&link) {
        if !meta.file_type().is_symlink() {
            return Err(io::Error::other(format!(
                "{} exists and is not a symlink; move it away so haul can manage it",
                link.display()
            )));
        }
    }
    let tmp = app_path.join(format!(
        ".current.tmp-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::os::unix::fs::symlink(&target, &tmp)?;
    if let Err(e) = std::fs::rename(&tmp, &link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(app_path)
}

/// Release ids present on disk, oldest first.
pub fn list(app_path: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(releases_dir(app_path))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

pub fn remove(app_path: &Path, id: &str) -> io::Result<()> {
    let dir = release_dir(app_path, id);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Keeps the newest `keep` releases, and always the ones in `protect` (the live one and the one before it).
pub fn prune(app_path: &Path, keep: usize, protect: &[&str]) -> Vec<String> {
    let ids = list(app_path);
    let excess = ids.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for id in ids.into_iter().take(excess) {
        if protect.contains(&id.as_str()) {
            continue;
        }
        if remove(app_path, &id).is_ok() {
            removed.push(id);
        }
    }
    removed
}

/// Removes the temporaries a crash can leave: index files beside releases and a temp symlink beside `current`.
pub(crate) fn clean_temporaries(app_path: &Path) {
    let stray = |dir: &Path, pred: &dyn Fn(&str) -> bool| {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.filter_map(Result::ok) {
                let is_file = e.file_type().map(|t| !t.is_dir()).unwrap_or(false);
                if is_file && pred(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    };
    stray(&releases_dir(app_path), &|n| n.ends_with(".index"));
    stray(app_path, &|n| n.starts_with(".current.tmp-"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shared_path_through_a_symlink_in_the_release_is_refused() {
        let t = crate::infra::scratch::TestDir::new("shared-link");
        let app = t.0.join("app");
        let release = app.join("releases/r1");
        std::fs::create_dir_all(&release).expect("mkdir");
        let outside = t.0.join("outside");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, release.join("public")).expect("symlink");
        let err = link_shared(&app, &release, &["public/uploads/".to_string()]).expect_err("refused");
        assert!(err.contains("is a symlink"), "{err}");
        assert!(
            std::fs::read_dir(&outside).expect("read").next().is_none(),
            "nothing was made outside"
        );
        link_shared(&app, &release, &["storage/".to_string()]).expect("a plain directory links");
        assert!(release.join("storage").is_symlink());
        assert!(app.join("shared/storage").is_dir());
    }

    use super::*;

    #[test]
    fn switch_prune_and_clean() {
        let dir = std::env::temp_dir().join(format!(
            "haul-release-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let ids: Vec<String> = (1..=4).map(|i| format!("2026010{i}T000000-abc{i}")).collect();
        for id in &ids {
            std::fs::create_dir_all(release_dir(&dir, id)).expect("mkdir");
        }
        assert_eq!(current(&dir), None);
        switch(&dir, &ids[0]).expect("switch");
        assert_eq!(current(&dir).as_deref(), Some(ids[0].as_str()));
        switch(&dir, &ids[3]).expect("switch again");
        assert_eq!(current(&dir).as_deref(), Some(ids[3].as_str()));
        assert_eq!(
            std::fs::read_link(current_link(&dir)).expect("link"),
            Path::new("releases").join(&ids[3]),
            "the link is relative, so the tree can move"
        );
        assert!(switch(&dir, "missing").is_err());
        let removed = prune(&dir, 2, &[&ids[3], &ids[0]]);
        assert_eq!(removed, vec![ids[1].clone()], "protected releases survive");
        std::fs::write(releases_dir(&dir).join("x.index"), "").expect("index");
        clean_temporaries(&dir);
        assert!(!releases_dir(&dir).join("x.index").exists());
        assert_eq!(list(&dir), vec![ids[0].clone(), ids[2].clone(), ids[3].clone()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_real_directory_named_current_is_not_clobbered() {
        let dir = std::env::temp_dir().join(format!(
            "haul-release-dir-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(release_dir(&dir, "r1")).expect("mkdir");
        std::fs::create_dir_all(current_link(&dir)).expect("mkdir");
        let err = switch(&dir, "r1").expect_err("refuses");
        assert!(err.to_string().contains("not a symlink"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
