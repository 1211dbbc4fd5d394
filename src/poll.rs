//! Polling: for apps with `poll = "5m"`, a timer that asks the remote with one `git ls-remote` (never a fetch)
//! whether the branch (or the newest matching tag) moved (for an artifact: one `HEAD`), and if so enqueues a deploy with trigger `poll`,
//! through the same queue and coalescing as a webhook. It catches the webhook that was lost, or arrives late.
//!
//! It never loops: a sha that was already tried (even if it failed) is not asked for again, the interval has
//! jitter so many servers do not poll a forge in step, and a failing `ls-remote` backs off.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{AppConfig, Source};
use crate::failure::{Failure, Kind};
use crate::git::Git;
use crate::model::{DeployRequest, Trigger};
use crate::queue::Queue;
use crate::store;

/// `interval` with ±10% jitter.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

pub fn spawn(queue: Arc<Queue>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
    queue
        .env()
        .apps
        .values()
        .filter(|a| a.poll.is_some())
        .map(|app| tokio::spawn(poller(queue.clone(), app.clone(), shutdown.clone())))
        .collect()
}

async fn poller(queue: Arc<Queue>, app: Arc<AppConfig>, mut shutdown: watch::Receiver<bool>) {
    let Some(interval) = app.poll else {
        return;
    };
    let git = Git::new(app.clone(), &queue.env().mirrors_dir, None);
    let mut last_etag: Option<String> = None;
    let mut failures: u32 = 0;
    loop {
        // After failures, wait longer (up to 16 intervals, at most an hour more): never hammer a forge.
        let backoff = interval
            .saturating_mul(1 << failures.min(4))
            .min(interval + Duration::from_secs(3600));
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = shutdown.changed() => return,
        }
        let span = tracing::info_span!("poll", app = %app.name);
        let polled = match &app.source {
            Source::Git => poll_once(&queue, &app, &git).instrument(span).await,
            _ => poll_artifact(&queue, &app, &mut last_etag).instrument(span).await,
        };
        match polled {
            Ok(()) => failures = 0,
            Err(f) => {
                failures += 1;
                match f.kind {
                    Kind::Permanent => {
                        tracing::error!(app = %app.name, "poll: ls-remote failed (permanent; fix it and haul picks it up): {f}")
                    }
                    _ => {
                        tracing::warn!(app = %app.name, "poll: ls-remote failed ({}), backing off: {f}", f.kind.as_str())
                    }
                }
            }
        }
    }
}

/// One cheap look at an artifact: an image tag's digest by `HEAD` (registries rate-limit pulls, not HEADs),
/// an object's or URL's ETag. Only a change enqueues a deploy; the download happens in the deploy.
async fn poll_artifact(
    queue: &Queue,
    app: &AppConfig,
    last_etag: &mut Option<String>,
) -> Result<(), Failure> {
    let (git_ref, sha, digest) = match &app.source {
        Source::Image(_) => {
            let r = crate::artifact::resolve(app, &crate::artifact::Wanted::default()).await?;
            let digest = r.digest.unwrap_or_default();
            let hex = digest.trim_start_matches("sha256:").to_string();
            (Some(format!("refs/tags/{}", r.name)), Some(hex), Some(digest))
        }
        Source::Object(_) | Source::Url(_) => {
            let etag = match &app.source {
                Source::Object(o) => crate::artifact::object_etag(app, o).await?,
                Source::Url(u) => crate::artifact::url_etag(app, u).await?,
                _ => return Ok(()),
            };
            if last_etag.as_deref() == Some(etag.as_str()) {
                tracing::debug!("poll: {} is unchanged", app.repo);
                return Ok(());
            }
            *last_etag = Some(etag);
            (None, None, None)
        }
        Source::Git => return Ok(()),
    };
    if let Some(hex) = &sha {
        let (name, probe) = (app.name.clone(), hex.clone());
        match queue
            .env()
            .store
            .call(move |c| store::sha_attempted(c, &name, &probe))
            .await
        {
            Ok(true) => {
                tracing::debug!("poll: {} is still at {hex}; nothing to do", app.repo);
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!("poll: cannot read the audit log: {e}");
                return Ok(());
            }
        }
    }
    tracing::info!("poll: {} changed; queueing a deploy", app.repo);
    let req = DeployRequest {
        app: app.name.clone(),
        trigger: Trigger::Poll,
        provider: None,
        delivery_id: None,
        git_ref,
        sha,
        actor: "poll".into(),
        target: None,
        digest,
    };
    if let Err(e) = queue.submit(req).await {
        tracing::error!("poll: cannot record the deploy request: {e}");
    }
    Ok(())
}

/// One look at the remote; enqueues a deploy if it moved.
async fn poll_once(queue: &Queue, app: &AppConfig, git: &Git) -> Result<(), Failure> {
    match git.remote_head().await? {
        None => tracing::warn!("poll: the remote has no {}", app.track.describe()),
        Some((git_ref, sha)) => {
            let (name, probe) = (app.name.clone(), sha.clone());
            let known = queue
                .env()
                .store
                .call(move |c| store::sha_attempted(c, &name, &probe))
                .await;
            match known {
                Ok(true) => {
                    tracing::debug!("poll: {git_ref} is still at {sha}; nothing to do")
                }
                Ok(_) => {
                    tracing::info!("poll: {git_ref} moved to {sha}; queueing a deploy");
                    let req = DeployRequest {
                        app: app.name.clone(),
                        trigger: Trigger::Poll,
                        provider: None,
                        delivery_id: None,
                        git_ref: Some(git_ref),
                        sha: Some(sha),
                        actor: "poll".into(),
                        target: None,
                        digest: None,
                    };
                    if let Err(e) = queue.submit(req).await {
                        tracing::error!("poll: cannot record the deploy request: {e}");
                    }
                }
                Err(e) => tracing::error!("poll: cannot read the audit log: {e}"),
            }
        }
    }
    Ok(())
}
