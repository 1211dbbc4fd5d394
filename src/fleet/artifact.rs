//! A fleet's artifact releases (an image, an object, a URL). The conductor resolves what the newest trigger
//! names (for an image one `HEAD`), downloads and verifies it **once** for the whole fleet, and puts the
//! files it verified (the manifest and layers, or the file, and the detached signature) into the object
//! store as a *package*: `<app>/<sha>/<file>` and a descriptor `<app>/<sha>.package.json`. Each host
//! downloads the package and its deploy checks it again as if it came from the upstream (digest, layers,
//! its own `verify` key): what the conductor says it checked counts for nothing there.
//!
//! The rules that keep an old trigger from changing what is live are a single host's, from
//! `sources::artifact` (an image never goes back on an automatic trigger), judged against the fleet's
//! release instead of one host's; the rollout's `taken_away` holds as for git. Packages of releases the
//! fleet can no longer roll back to are removed from the object store.

use std::cmp::Reverse;
use std::path::Path;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::engine::{chain, Engine, FleetError};
use super::rollout::{automatic, refused, upload, Conductor, Proposal, RolloutState};
use crate::config::{AppConfig, Source};
use crate::model;
use crate::model::failure::{Failure, Kind};
use crate::sources::artifact::{self, Resolved, Wanted};

/// What a package holds: the digest it was verified against, and its files (name, bytes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Package {
    digest: String,
    files: Vec<(String, u64)>,
}

/// How many files a package may have (an image's layers, the manifest, the signature).
const MAX_FILES: usize = 1024;

fn descriptor(app: &str, sha: &str) -> String {
    format!("{app}/{sha}.package.json")
}

/// A file a package may hold: what `sources::artifact::download` writes, nothing else (no path, no dots).
fn allowed_file(name: &str) -> bool {
    matches!(
        name,
        "manifest.json" | "object" | "download" | artifact::SIGNATURE_FILE
    ) || name
        .strip_prefix("layer-")
        .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Conductor {
    /// The conductor's decision for an artifact app: the newest trigger that moves the fleet forward is
    /// downloaded, verified, packaged and rolled out; the others are closed.
    pub(super) async fn decide_artifact(
        &mut self,
        engine: &Engine,
        epoch: u64,
        proposals: Vec<Proposal>,
        current: Option<&RolloutState>,
    ) -> Result<(), FleetError> {
        let (rollbacks, proposals): (Vec<Proposal>, Vec<Proposal>) =
            proposals.into_iter().partition(|p| p.rolls_back.is_some());
        if let Some(p) = rollbacks.last() {
            let result = self.roll_back_artifact(engine, epoch, p, current).await;
            if !matches!(result, Err(FleetError::Unreachable(_) | FleetError::Unknown(_))) {
                self.close_proposals(engine, &rollbacks).await;
            }
            return result;
        }
        let name = self.app.name.clone();
        let live = current.map(|r| r.sha.as_str()).filter(|s| !s.is_empty());
        let taken_away = current.map(|r| r.taken_away.as_slice()).unwrap_or_default();
        let history = current.map(|r| r.history.as_slice()).unwrap_or_default();
        // A replay of the fleet's release, of one it had before and replaced, or of one a rollback took
        // away costs no upstream request (a person's `--sha` may go back, on purpose).
        let mut fresh: Vec<Proposal> = proposals
            .iter()
            .filter(|p| {
                let old = match p.sha.as_deref() {
                    Some(s) if Some(s) == live => true,
                    Some(s) => {
                        automatic(&p.trigger) && taken_away.iter().chain(history).any(|t| t == s)
                    }
                    None => false,
                };
                if old {
                    tracing::info!(app = %name, deploy_id = %p.deploy_id, "fleet: {} is the fleet's release, one it had before, or one a rollback took away; nothing resolved, downloaded or rolled out", model::short_sha(p.sha.as_deref().unwrap_or("")));
                }
                !old
            })
            .cloned()
            .collect();
        fresh.sort_by_key(|p| Reverse(p.requested_ms));
        let mut chosen = None;
        for p in &fresh {
            match self.pick(p, current).await {
                Ok(Some(x)) => {
                    chosen = Some((p.clone(), x));
                    break;
                }
                Ok(None) => {}
                Err(f) if f.kind == Kind::Permanent => {
                    let why = format!("{}'s artifact cannot be resolved: {f}; nothing rolled out", name);
                    self.note_refused(engine, p, why).await?;
                }
                Err(f) => {
                    self.back_off(&format!("the conductor's resolve failed ({f})"), false);
                    return Ok(());
                }
            }
        }
        let Some((p, (resolved, wanted))) = chosen else {
            self.close_proposals(engine, &proposals).await;
            return Ok(());
        };
        let result = self
            .download_and_roll_out(engine, epoch, &p, &resolved, &wanted, current)
            .await;
        match result {
            Ok(false) => Ok(()),
            Ok(true) => self.settled(engine, &proposals, Ok(())).await,
            Err(e) => self.settled(engine, &proposals, Err(e)).await,
        }
    }

    /// What `p` names, if it moves the fleet forward (an image: one `HEAD` for its tag's digest); `None` if
    /// it does not (logged).
    async fn pick(
        &self,
        p: &Proposal,
        current: Option<&RolloutState>,
    ) -> Result<Option<(Resolved, Wanted)>, Failure> {
        let wanted = artifact::wanted(
            &self.app,
            p.sha.as_deref(),
            p.git_ref.as_deref(),
            p.digest.as_deref(),
        )
        .map_err(Failure::permanent)?;
        let (resolved, _) = self
            .guarded("resolving", || artifact::resolve(&self.app, &wanted))
            .await;
        let mut resolved = resolved?;
        if matches!(self.app.source, Source::Image(_)) {
            let live = artifact::Live {
                git_ref: current.map(|r| r.git_ref.as_str()),
                sha: current.map(|r| r.sha.as_str()).filter(|s| !s.is_empty()),
                what: current.map_or("", |r| r.id.as_str()),
            };
            if let Err(why) =
                artifact::image_moves_forward(&self.app, automatic(&p.trigger), &live, &wanted, &mut resolved)
            {
                tracing::info!(app = %self.app.name, deploy_id = %p.deploy_id, "fleet: {why}");
                return Ok(None);
            }
        }
        Ok(Some((resolved, wanted)))
    }

    /// Downloads and verifies what `p` asked for, once for the fleet, packages it and writes the rollout.
    /// False if it is to be tried again later (a backoff is set), true if the proposals are decided.
    async fn download_and_roll_out(
        &mut self,
        engine: &Engine,
        epoch: u64,
        p: &Proposal,
        resolved: &Resolved,
        wanted: &Wanted,
        current: Option<&RolloutState>,
    ) -> Result<bool, FleetError> {
        let name = self.app.name.clone();
        let dir = self.dirs.root().join("fleet").join(&name).join("out-artifact");
        let _ = std::fs::remove_dir_all(&dir);
        let (fetched, _) = self
            .guarded("the download", || {
                artifact::download(&self.app, resolved, wanted, &dir)
            })
            .await;
        let fetched = match fetched {
            Ok(f) => f,
            Err(f) => {
                let _ = std::fs::remove_dir_all(&dir);
                if f.kind != Kind::Permanent {
                    self.back_off(&format!("the conductor's download failed ({f})"), false);
                    return Ok(false);
                }
                // Never retried (a bad signature, a digest mismatch, refused credentials): the people told.
                let why = format!(
                    "the conductor ({}) refused {}'s artifact {}: {f}; nothing was rolled out",
                    self.host, name, resolved.location
                );
                self.tell_halted(&why, p.sha.as_deref(), None);
                self.note_refused(engine, p, why).await?;
                return Ok(true);
            }
        };
        let sha = artifact::audit_sha(&self.app, wanted, &fetched);
        let live = current.filter(|r| r.sha == sha && r.digest.as_deref() == Some(fetched.digest.as_str()));
        let taken = current.is_some_and(|r| r.taken_away.contains(&sha));
        if automatic(&p.trigger) && (live.is_some() || taken) {
            let _ = std::fs::remove_dir_all(&dir);
            tracing::info!(app = %name, deploy_id = %p.deploy_id, "fleet: {} ({}) is the fleet's release or taken away by a rollback; nothing rolled out", resolved.location, fetched.digest);
            return Ok(true);
        }
        for n in &fetched.notes {
            tracing::info!(app = %name, "fleet: {n}");
        }
        let put = self.put_package(engine, &sha, &fetched.digest, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        let bundle = put?;
        let git_ref = match (&p.git_ref, &self.app.source) {
            (Some(r), _) => r.clone(),
            (None, Source::Image(_)) => format!("refs/tags/{}", resolved.name),
            (None, _) => String::new(),
        };
        let mut state = self.fresh_state(epoch, Some(p.clone()), &sha, &git_ref);
        state.bundle = bundle;
        state.digest = Some(fetched.digest.clone());
        if let Some(c) = current {
            (state.history, state.taken_away) = c.carried(&sha);
        }
        tracing::info!(app = %name, rollout = %state.id, "fleet: rolling out {} ({})", resolved.location, fetched.digest);
        engine.write_rollout(&name, &state).await?;
        self.prune_packages(engine, &state).await;
        Ok(true)
    }

    /// `haul fleet rollback` of an artifact app: the release before is rolled out again from the package
    /// the engine still holds (no upstream request), its sha joining `taken_away`.
    async fn roll_back_artifact(
        &self,
        engine: &Engine,
        epoch: u64,
        p: &Proposal,
        current: Option<&RolloutState>,
    ) -> Result<(), FleetError> {
        let name = &self.app.name;
        let (c, (to, history, taken_away)) = match self.rollback_plan(p, current) {
            Ok(plan) => plan,
            Err(why) => return self.note_refused(engine, p, why).await,
        };
        let Some(package) = read_package(engine, &descriptor(name, &to)).await? else {
            let why = format!(
                "the rollback to {} asked by {}: its package is no longer in the fleet's engine; nothing rolled back (`haul fleet deploy {name} --sha {to}` downloads it again)",
                model::short_sha(&to),
                p.actor
            );
            return self.note_refused(engine, p, why).await;
        };
        let mut state = self.fresh_state(epoch, Some(p.clone()), &to, &c.git_ref);
        state.bundle = descriptor(name, &to);
        state.digest = Some(package.digest);
        state.history = history;
        state.taken_away = taken_away;
        tracing::warn!(app = %name, rollout = %state.id, "fleet: rolling back from {} (rollout {}) to {}, asked by {} on {}", model::short_sha(&c.sha), c.id, model::short_sha(&to), p.actor, p.origin);
        engine.write_rollout(name, &state).await
    }

    /// Puts the files `download` verified into the object store, then their descriptor (last: a package
    /// whose descriptor is there is whole). Its name.
    async fn put_package(
        &self,
        engine: &Engine,
        sha: &str,
        digest: &str,
        dir: &Path,
    ) -> Result<String, FleetError> {
        let name = &self.app.name;
        let mut files = Vec::new();
        let entries =
            std::fs::read_dir(dir).map_err(|e| refused(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().to_string();
            let meta = entry.metadata().map_err(refused)?;
            if meta.is_file() && allowed_file(&file) {
                files.push((file, meta.len()));
            }
        }
        files.sort();
        for (file, _) in &files {
            upload(engine, &format!("{name}/{sha}/{file}"), &dir.join(file)).await?;
        }
        let package = Package {
            digest: digest.to_string(),
            files,
        };
        let bytes = serde_json::to_vec(&package).map_err(refused)?;
        let key = descriptor(name, sha);
        engine
            .releases
            .put(key.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| FleetError::Unreachable(format!("cannot store the package {key}: {}", chain(&e))))?;
        Ok(key)
    }

    /// Removes the packages of this app's releases that the fleet can no longer roll out again: all but the
    /// rollout's own and its history's. A failure is only logged (the next rollout tries again).
    async fn prune_packages(&self, engine: &Engine, state: &RolloutState) {
        let prefix = format!("{}/", self.app.name);
        let keep = |sha: &str| sha == state.sha || state.history.iter().any(|h| h == sha);
        let mut list = match engine.releases.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!("fleet: cannot list the object store: {e}");
                return;
            }
        };
        let mut doomed = Vec::new();
        while let Some(Ok(info)) = list.next().await {
            let Some(rest) = info.name.strip_prefix(&prefix) else {
                continue;
            };
            let sha = rest
                .strip_suffix(".package.json")
                .or_else(|| rest.split_once('/').map(|(s, _)| s));
            if let Some(sha) = sha.filter(|s| !keep(s)) {
                if !sha.ends_with(".bundle") {
                    doomed.push(info.name.clone());
                }
            }
        }
        // Descriptors first: a package without its descriptor is never deployed.
        doomed.sort_by_key(|n| !n.ends_with(".package.json"));
        for n in doomed {
            if let Err(e) = engine.releases.delete(n.as_str()).await {
                tracing::debug!("fleet: cannot remove {n} from the object store: {e}");
            }
        }
    }

    /// One network operation of this app's artifact source, as a deploy runs it, its waits logged.
    async fn guarded<T, Fut>(
        &self,
        what: &str,
        op: impl Fn() -> Fut,
    ) -> (Result<T, Failure>, crate::infra::upstream::Report)
    where
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let name = &self.app.name;
        let note = |m: &str| tracing::info!(app = %name, "fleet: {}", m.trim());
        artifact::guarded(&self.app, what, &note, op).await
    }
}

/// The descriptor `key`, or `None` if the engine has none. A replica may lag the write the conductor made
/// before its rollout: not there is asked again twice, a second apart, before it counts.
async fn read_package(engine: &Engine, key: &str) -> Result<Option<Package>, FleetError> {
    let mut tries = 0;
    let mut obj = loop {
        match engine.releases.get(key).await {
            Ok(o) => break o,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                tries += 1;
                if tries > 2 {
                    return Ok(None);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(FleetError::Unreachable(format!(
                    "cannot get the package {key}: {}",
                    chain(&e)
                )))
            }
        }
    };
    let mut bytes = Vec::new();
    let mut capped = tokio::io::AsyncReadExt::take(&mut obj, 64 * 1024);
    tokio::io::AsyncReadExt::read_to_end(&mut capped, &mut bytes)
        .await
        .map_err(|e| FleetError::Unreachable(format!("cannot read the package {key}: {e}")))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| refused(format!("the package {key} is not a package descriptor: {e}")))
}

/// A host's side: the package of an assignment downloaded into `dir` (replacing what was there), each file
/// no larger than its descriptor says and the whole within the app's `max_artifact_size`. Nothing here is
/// trusted: the deploy checks the files against the digest and this host's own key.
pub(super) async fn download_package(
    engine: &Engine,
    app: &AppConfig,
    key: &str,
    dir: &Path,
) -> Result<(), FleetError> {
    let package = read_package(engine, key)
        .await?
        .ok_or_else(|| refused(format!("the package {key} is not in the fleet's engine")))?;
    let total = package.files.iter().fold(0u64, |t, (_, n)| t.saturating_add(*n));
    if package.files.len() > MAX_FILES
        || package.files.iter().any(|(f, _)| !allowed_file(f))
        || total > app.max_artifact_bytes.saturating_add(8 * 1024 * 1024)
    {
        return Err(refused(format!(
            "the package {key} lists files haul never writes, or more than the app's max_artifact_size; refusing it"
        )));
    }
    let prefix = key.strip_suffix(".package.json").unwrap_or(key);
    let tmp = dir.with_extension("part");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(refused)?;
    for (file, size) in &package.files {
        let name = format!("{prefix}/{file}");
        let mut obj = engine
            .releases
            .get(name.as_str())
            .await
            .map_err(|e| FleetError::Unreachable(format!("cannot get {name}: {}", chain(&e))))?;
        let mut out = tokio::fs::File::create(tmp.join(file)).await.map_err(refused)?;
        // One byte more than declared is enough to see a lie; the object store checks its own digest.
        let mut capped = tokio::io::AsyncReadExt::take(&mut obj, size.saturating_add(1));
        let n = tokio::io::copy(&mut capped, &mut out)
            .await
            .map_err(|e| FleetError::Unreachable(format!("cannot read {name}: {e}")))?;
        if n != *size {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(refused(format!(
                "{name} is not the {size} bytes its package says; refusing it"
            )));
        }
        out.sync_all().await.map_err(refused)?;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_holds_only_the_files_a_download_writes() {
        for ok in [
            "manifest.json",
            "object",
            "download",
            "signature",
            "layer-0",
            "layer-12",
        ] {
            assert!(allowed_file(ok), "{ok}");
        }
        for bad in [
            "../x",
            "layer-",
            "layer-1/..",
            "layer-x",
            ".haul-image",
            "a/b",
            "",
            "layer-99999",
        ] {
            assert!(!allowed_file(bad), "{bad}");
        }
        assert_eq!(descriptor("api", "ab12"), "api/ab12.package.json");
    }
}
