//! A host's side of a rollout: its assignment checked (the trigger's claim, verified again with this host's
//! own secret; an epoch never older than one it has seen), its bundle downloaded, and its deploy submitted
//! to this host's own queue, or its refusal recorded in this host's audit.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::engine::{chain, Engine, FleetError};
use super::rollout::{assign_key, refused, Assignment, Submitter, Verifier};
use crate::config::AppConfig;
use crate::infra::state_dir::StateDir;
use crate::model;

/// What this host last applied of an app's rollouts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    rollout: String,
    max_epoch: u64,
}

/// The host's side: deploys a new assignment (once), unless a newer conductor has been seen.
pub(super) async fn apply(
    engine: &Engine,
    config: &AppConfig,
    host: &str,
    dirs: &StateDir,
    submit: &Submitter,
    verify: &Verifier,
) -> Result<(), FleetError> {
    let app = config.name.as_str();
    let Some(a) = engine.get_json::<Assignment>(&assign_key(app, host)).await? else {
        return Ok(());
    };
    let path = dirs.fleet_applied(app);
    let applied: Applied = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if a.rollout == applied.rollout {
        return Ok(());
    }
    if a.epoch < applied.max_epoch {
        tracing::warn!(app = %app, "fleet: refusing rollout {} from epoch {} (a conductor of epoch {} has been seen)", a.rollout, a.epoch, applied.max_epoch);
        return Ok(());
    }
    let artifact = !matches!(config.source, crate::config::Source::Git);
    let sha_ok = if artifact {
        model::is_sha_prefix(&a.sha) && a.digest.as_deref().is_some_and(model::is_sha256_digest)
    } else {
        model::is_full_sha(&a.sha)
    };
    if !sha_ok {
        return Err(refused(format!(
            "assignment {} names no full sha{}",
            a.rollout,
            if artifact { " and sha256 digest" } else { "" }
        )));
    }
    // A host deploys only what it can check itself: the trigger's claim (a forge's signature, verified again
    // here with this host's own secret, over a body that names this very sha). A revert puts back a
    // release this host had; it needs no trigger.
    let claim = match &a.from {
        _ if a.revert => Ok(()),
        Some(p) if p.app == app => verify(p, &a.sha),
        Some(p) => Err(format!("it carries a trigger for another app ({})", p.app)),
        None => Err("it names no trigger (who asked, and from which host)".into()),
    };
    // A refused assignment is recorded as applied (so it is not tried again) but does not raise the epoch
    // this host has seen: a forged one of a huge epoch must not fence the real conductor out.
    // A bundle or package the engine refuses to give (missing, or a descriptor haul never writes) is refused
    // like a claim, once: never fetched again in a loop.
    let (claim, fetched) = match claim {
        Ok(()) => match fetch_release(engine, config, dirs, &a, artifact).await {
            Ok(()) => (Ok(()), true),
            Err(FleetError::Refused(why)) => (Err(why), true),
            Err(e) => return Err(e),
        },
        Err(why) => (Err(why), false),
    };
    let max_epoch = match claim {
        Ok(()) => {
            let id = submit(app.to_string(), a.clone(), None).await.map_err(refused)?;
            tracing::info!(app = %app, deploy_id = %id, "fleet: deploying rollout {} ({})", a.rollout, model::short_sha(&a.sha));
            a.epoch.max(applied.max_epoch)
        }
        Err(why) => {
            let why = format!(
                "refused rollout {} of {} (epoch {}): {why}; nothing was {}, and what is live stays",
                a.rollout,
                model::short_sha(&a.sha),
                a.epoch,
                if fetched {
                    "deployed"
                } else {
                    "downloaded or deployed"
                }
            );
            tracing::warn!(app = %app, "fleet: {why}");
            submit(app.to_string(), a.clone(), Some(why))
                .await
                .map_err(refused)?;
            applied.max_epoch
        }
    };
    let next = Applied {
        rollout: a.rollout.clone(),
        max_epoch,
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&next).map_err(refused)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            refused(format!(
                "cannot record rollout {} in {}: {e}",
                a.rollout,
                path.display()
            ))
        })
}

/// What the deploy of `a` needs from the engine, downloaded: a git bundle, or an artifact's package (a
/// revert needs nothing: the previous release is on this host's disk).
async fn fetch_release(
    engine: &Engine,
    config: &AppConfig,
    dirs: &StateDir,
    a: &Assignment,
    artifact: bool,
) -> Result<(), FleetError> {
    let app = config.name.as_str();
    // What earlier assignments left here and no deploy took (a duplicate, a refused one) goes once it is
    // old: one still queued behind a long deploy keeps its own.
    forget_downloads(dirs, app, std::time::Duration::from_secs(6 * 3600));
    if a.revert {
        Ok(())
    } else if artifact {
        super::artifact::download_package(engine, config, &a.bundle, &dirs.fleet_package(app, &a.sha)).await
    } else {
        download(engine, &a.bundle, &dirs.fleet_bundle(app, &a.sha)).await
    }
}

fn forget_downloads(dirs: &StateDir, app: &str, older_than: std::time::Duration) {
    let Some(dir) = dirs.fleet_applied(app).parent().map(Path::to_path_buf) else {
        return;
    };
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if !old {
            continue;
        }
        if name.ends_with(".package") || name.ends_with(".package.part") {
            let _ = std::fs::remove_dir_all(&path);
        } else if (name.ends_with(".bundle") && !name.starts_with("out-")) || name.ends_with(".part") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

pub(super) async fn download(engine: &Engine, name: &str, to: &Path) -> Result<(), FleetError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(refused)?;
    }
    let mut obj = engine.releases.get(name).await.map_err(|e| {
        FleetError::Unreachable(format!("cannot get the release bundle {name}: {}", chain(&e)))
    })?;
    let tmp = to.with_extension("part");
    let mut f = tokio::fs::File::create(&tmp).await.map_err(refused)?;
    // The object store checks the bundle's digest as it reads the last chunk.
    tokio::io::copy(&mut obj, &mut f)
        .await
        .map_err(|e| FleetError::Unreachable(format!("cannot read the release bundle {name}: {e}")))?;
    f.sync_all().await.map_err(refused)?;
    std::fs::rename(&tmp, to).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_leftover_bundles_and_packages_go_and_the_conductors_files_stay() {
        let root = std::env::temp_dir().join(format!("haul-forget-{}", std::process::id()));
        let dirs = StateDir::new(&root);
        let dir = dirs
            .fleet_applied("web")
            .parent()
            .map(Path::to_path_buf)
            .expect("dir");
        std::fs::create_dir_all(dir.join("aa.package")).expect("mkdir");
        std::fs::create_dir_all(dir.join("bb.package.part")).expect("mkdir");
        std::fs::create_dir_all(dir.join("conductor.git")).expect("mkdir");
        std::fs::create_dir_all(dir.join("out-artifact")).expect("mkdir");
        for f in ["cc.bundle", "dd.part", "out-ee.bundle", "applied.json"] {
            std::fs::write(dir.join(f), b"x").expect("write");
        }
        let names = || {
            let mut n: Vec<String> = std::fs::read_dir(&dir)
                .expect("read")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect();
            n.sort();
            n
        };
        // Young: everything stays (a deploy still queued keeps its own).
        forget_downloads(&dirs, "web", std::time::Duration::from_secs(3600));
        assert_eq!(names().len(), 8);
        forget_downloads(&dirs, "web", std::time::Duration::ZERO);
        assert_eq!(
            names(),
            vec!["applied.json", "conductor.git", "out-artifact", "out-ee.bundle"]
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
