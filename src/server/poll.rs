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
use crate::deploy::queue::Queue;
use crate::model::failure::{Failure, Kind};
use crate::model::{DeployRequest, Trigger};
use crate::sources::git::Git;
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
    let git = Git::new(app.clone(), queue.env().dirs.mirror_of(&app.name), None);
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
    // An upstream that rate-limited us is left alone until it said we may come back; a 429 to a poll opens
    // the same circuit a deploy's would.
    let upstream = app.upstream();
    if let Some(open) = crate::infra::upstream::global().open_for(&upstream) {
        tracing::debug!(
            "poll: {upstream} is rate-limiting us; not asking for {}s",
            open.as_secs()
        );
        return Ok(());
    }
    match look(app).await {
        Err(f) if f.kind == Kind::RateLimited => {
            crate::infra::upstream::global().open(
                &upstream,
                f.retry_after.unwrap_or(crate::infra::upstream::DEFAULT_OPEN),
            );
            Err(f)
        }
        Err(f) => Err(f),
        Ok(seen) => {
            enqueue_if_new(queue, app, seen, last_etag).await;
            Ok(())
        }
    }
}

/// What an artifact poll saw: an image's tag and digest, or an object's (and its signature's) ETags.
enum Seen {
    Image { tag: String, digest: String },
    Etag(String),
}

async fn etag_of(app: &AppConfig, suffix: &str) -> Result<String, Failure> {
    match &app.source {
        Source::Object(o) => {
            let mut o = o.clone();
            o.key.push_str(suffix);
            crate::sources::artifact::object_etag(app, &o).await
        }
        Source::Url(u) => {
            let mut u = u.clone();
            u.url.push_str(suffix);
            crate::sources::artifact::url_etag(app, &u).await
        }
        Source::Git | Source::Image(_) => Ok(String::new()),
    }
}

async fn look(app: &AppConfig) -> Result<Seen, Failure> {
    if let Source::Image(_) = &app.source {
        let r = crate::sources::artifact::resolve(app, &crate::sources::artifact::Wanted::default()).await?;
        return Ok(Seen::Image {
            tag: r.name,
            digest: r.digest.unwrap_or_default(),
        });
    }
    let mut etag = etag_of(app, "").await?;
    // A signature uploaded after its artifact is a change too: what was refused as unsigned a moment ago
    // deploys once it is signed.
    if let Some(v) = &app.verify {
        match etag_of(app, v.suffix()).await {
            Ok(sig) => etag = format!("{etag} {sig}"),
            Err(f) if f.kind == Kind::Permanent => etag.push_str(" unsigned"),
            Err(f) => return Err(f),
        }
    }
    Ok(Seen::Etag(etag))
}

async fn enqueue_if_new(queue: &Queue, app: &AppConfig, seen: Seen, last_etag: &mut Option<String>) {
    let (git_ref, sha, digest) = match seen {
        Seen::Image { tag, digest } => {
            let hex = digest.trim_start_matches("sha256:").to_string();
            (Some(format!("refs/tags/{tag}")), Some(hex), Some(digest))
        }
        Seen::Etag(etag) => {
            if last_etag.as_deref() == Some(etag.as_str()) {
                tracing::debug!("poll: {} is unchanged", app.repo);
                return;
            }
            *last_etag = Some(etag);
            (None, None, None)
        }
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
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!("poll: cannot read the audit log: {e}");
                return;
            }
        }
    }
    tracing::info!("poll: {} changed; queueing a deploy", app.repo);
    let req = DeployRequest::new(&app.name, Trigger::Poll, "poll")
        .at_ref(git_ref)
        .with_sha(sha)
        .with_digest(digest);
    if let Err(e) = queue.submit(req).await {
        tracing::error!("poll: cannot record the deploy request: {e}");
    }
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
                    let req = DeployRequest::new(&app.name, Trigger::Poll, "poll")
                        .at_ref(Some(git_ref))
                        .with_sha(Some(sha));
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
