//! The queue: the only place that knows about concurrency. Per app, at most one deploy runs and at most one
//! waits; a newer request replaces the waiting one (newest wins; the replaced one is recorded superseded).
//! Apps are independent.
//!
//! The pending slot lives in the store (a row in state `queued`), so a restart loses nothing: each app's
//! worker first marks what was running as interrupted and cleans its half-built release, then resumes. Every
//! deploy runs under the app's file lock, which an in-process `haul deploy` takes too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{watch, Notify};
use tracing::Instrument;

use crate::config::{AppConfig, Config};
use crate::deploy::pipeline::{Candidate, Job, Pipeline, Previous};
use crate::deploy::release;
use crate::infra::deploylog::DeployLog;
use crate::infra::lock;
use crate::infra::state_dir::StateDir;
use crate::model::{self, DeployRequest, Outcome, State, Trigger};
use crate::store::{self, DeployRow, Enqueued, Store, StoreError};

/// Everything a deploy needs from its surroundings.
#[derive(Clone)]
pub struct Env {
    pub store: Store,
    pub apps: Arc<HashMap<String, Arc<AppConfig>>>,
    /// Where logs, mirrors, downloads, locks and recorded process groups go.
    pub dirs: StateDir,
    /// Where finished deploys are told (the daemon's notifier; none for an in-process deploy).
    pub notifier: Option<crate::model::event::Notifier>,
    /// When this process started: `on_restart = "hold"` holds only what was queued before.
    pub started_ms: i64,
    /// How long deploy logs are kept (`log_retention`).
    pub log_retention: Option<Duration>,
    /// With `[fleet]`: where a fleet app's triggers are handed over (its worker deploys only assignments).
    pub fleet: Option<Arc<dyn super::fleet::FleetLink>>,
    /// The top level's `[allow]` (each app's own lists are in its config).
    pub allow: Arc<crate::config::Allow>,
}

impl Env {
    pub fn app_map(cfg: &Config) -> HashMap<String, Arc<AppConfig>> {
        cfg.apps
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect()
    }

    pub fn new(cfg: &Config, store: Store) -> Env {
        Env {
            store,
            apps: Arc::new(Env::app_map(cfg)),
            dirs: StateDir::new(&cfg.state_dir),
            notifier: None,
            started_ms: model::now_ms(),
            log_retention: cfg.log_retention,
            fleet: None,
            allow: Arc::new(cfg.allow.clone()),
        }
    }
}

/// The daemon's queue: records requests and wakes the app's worker.
pub struct Queue {
    env: Env,
    wake: HashMap<String, Arc<Notify>>,
    pruned_at: std::sync::atomic::AtomicI64,
    logs_pruned_at: std::sync::atomic::AtomicI64,
    /// Per app, while it is idle (nothing queued or running), the (sha, digest) live now: a trigger for exactly
    /// that is recorded as ignored at once, instead of queued, claimed and skipped (a redelivery storm costs one
    /// insert per request, and the worker never wakes for it).
    live: std::sync::Mutex<HashMap<String, LiveCache>>,
}

/// One app's entry. `live` is what is live (refreshed after every deploy); `idle` says nothing else is queued
/// or running. A request for anything but the live sha bumps `generation` and clears `idle`, and the worker
/// sets `idle` again only if no such request came while it found the queue empty. (Requests for the live sha
/// itself, a redelivery storm during the deploy that made it live, do not keep the app busy.)
#[derive(Default)]
struct LiveCache {
    generation: u64,
    live: Option<LiveFacts>,
    idle: bool,
}

impl LiveCache {
    fn is_live(&self, req: &DeployRequest) -> bool {
        match (&self.live, &req.sha) {
            (Some((live_sha, live_digest)), Some(sha)) => {
                live_sha.as_ref() == Some(sha) && (req.digest.is_none() || req.digest == *live_digest)
            }
            _ => false,
        }
    }
}

/// Has an hour passed since `last` (which it then moves to `now`)? One caller wins a race.
fn due_hourly(last: &std::sync::atomic::AtomicI64, now: i64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let then = last.load(Relaxed);
    now - then >= 3600 * 1000 && last.compare_exchange(then, now, Relaxed, Relaxed).is_ok()
}

/// What is live for an app: its sha and (an artifact) its digest.
type LiveFacts = (Option<String>, Option<String>);

impl Queue {
    pub fn new(env: Env) -> Arc<Queue> {
        let wake = env
            .apps
            .keys()
            .map(|a| (a.clone(), Arc::new(Notify::new())))
            .collect();
        Arc::new(Queue {
            env,
            wake,
            pruned_at: std::sync::atomic::AtomicI64::new(model::now_ms()),
            logs_pruned_at: std::sync::atomic::AtomicI64::new(0),
            live: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    pub(super) fn wake_of(&self, app: &str) -> Option<Arc<Notify>> {
        self.wake.get(app).cloned()
    }

    /// Is `req` an automatic trigger for exactly what is live? Then it needs nothing but a record; the reason
    /// says why.
    pub fn already_live(&self, req: &DeployRequest) -> Option<String> {
        if !matches!(req.trigger, Trigger::Webhook | Trigger::Poll) {
            return None;
        }
        let sha = req.sha.as_ref()?;
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let c = live.get(&req.app)?;
        (c.idle && c.is_live(req))
            .then(|| format!("{} is already live; nothing fetched", model::short_sha(sha)))
    }

    fn live_generation(&self, app: &str) -> u64 {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(app).map_or(0, |c| c.generation)
    }

    /// A request for something other than the live sha is being accepted: until the worker finds the queue
    /// empty again, nothing is ignored at intake (a trigger for the live sha may supersede it, or be a rewind).
    fn app_busy(&self, req: &DeployRequest) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let c = live.entry(req.app.clone()).or_default();
        if !c.is_live(req) {
            c.generation += 1;
            c.idle = false;
        }
    }

    /// After the worker ran (or found nothing to run) as of `generation`: remember what is live, and that the
    /// app is idle unless a request for something else came in since. (The worker runs the newest request and
    /// older ones are superseded, so what can still be queued then is only the live sha itself.)
    async fn refresh_live(&self, app: &str, generation: u64) {
        let Some(cfg) = self.env.apps.get(app) else {
            return;
        };
        let p = previous_release(&self.env, cfg).await;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let c = live.entry(app.to_string()).or_default();
        let facts = Some((p.sha, p.digest));
        // What went live just now may not be what a request queued during the deploy was "already live" for
        // (a rewind to the old sha): the worker looks at the queue once more before calling the app idle.
        let changed = c.live.is_some() && c.live != facts;
        c.live = facts;
        if c.generation == generation && !changed {
            c.idle = true;
        }
    }

    /// Durably records `req` as pending (superseding the app's older pending one) and wakes the worker.
    pub async fn submit(&self, req: DeployRequest) -> Result<Enqueued, StoreError> {
        let app = req.app.clone();
        let now = model::now_ms();
        self.prune_deliveries_hourly(now).await;
        // Busy before the row exists: no trigger can be ignored at intake while this one is pending.
        self.app_busy(&req);
        let gate = self.gate(&req, now);
        let sha = req.sha.clone();
        let result = self
            .env
            .store
            .call(move |c| store::enqueue_held(c, &req, now, &gate))
            .await?;
        if let Enqueued::Recorded { id, superseded, held } = &result {
            for s in superseded {
                tracing::debug!(deploy_id = %s, app = %app, superseded_by = %id, "superseded before it started");
            }
            match held {
                Some((State::AwaitingApproval, why)) => {
                    self.tell_waiting(&app, id.as_str(), sha.as_deref(), why)
                }
                // CI had already failed on this commit: told like a verdict that came after its push.
                Some((State::CiFailed, why)) => self.tell_ci_failed(&app, id.as_str(), sha.as_deref(), why),
                _ => {}
            }
        }
        // Woken either way: a duplicate queued nothing, and the worker, finding the queue empty, marks the app
        // idle again.
        if let Some(n) = self.wake.get(&app) {
            n.notify_one();
        }
        Ok(result)
    }

    /// Deploy logs older than `log_retention` go, at most once an hour, on the back of a deploy (a daemon
    /// that deploys nothing writes no logs and never wakes for this).
    async fn prune_logs_hourly(&self) {
        let Some(keep) = self.env.log_retention else {
            return;
        };
        if !due_hourly(&self.logs_pruned_at, model::now_ms()) {
            return;
        }
        let dir = self.env.dirs.logs();
        let Some(cutoff) = std::time::SystemTime::now().checked_sub(keep) else {
            return;
        };
        if let Ok(n) = tokio::task::spawn_blocking(move || crate::infra::deploylog::prune(&dir, cutoff)).await
        {
            if n > 0 {
                tracing::info!(
                    "deleted {n} deploy log(s) older than log_retention ({}d)",
                    keep.as_secs() / 86400
                );
            }
        }
    }

    /// Delivery ids are kept 8 days for replay protection; older ones are dropped at most once an hour, on the
    /// back of a request (never on an idle timer).
    async fn prune_deliveries_hourly(&self, now: i64) {
        if !due_hourly(&self.pruned_at, now) {
            return;
        }
        let result = self
            .env
            .store
            .call(move |c| store::prune_deliveries(c, now, store::REPLAY_MEMORY_MS))
            .await;
        if let Ok(n) = result {
            if n > 0 {
                tracing::info!("forgot {n} delivery id(s) older than 8 days");
            }
        }
    }

    /// Records a request that will never run, with the reason.
    pub async fn ignore(&self, req: DeployRequest, reason: String) -> Result<Enqueued, StoreError> {
        self.record_final(req, State::Ignored, reason).await
    }

    /// Records a request refused before it could run (failed, with why), without queueing it.
    pub async fn refuse(&self, req: DeployRequest, reason: String) -> Result<Enqueued, StoreError> {
        self.record_final(req, State::Failed, reason).await
    }

    async fn record_final(
        &self,
        req: DeployRequest,
        state: State,
        reason: String,
    ) -> Result<Enqueued, StoreError> {
        let now = model::now_ms();
        self.env
            .store
            .call_one_write(move |c| store::record_final(c, &req, state, &reason, now))
            .await
    }

    /// One worker per app, until `shutdown` turns true.
    pub fn spawn_workers(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        self.env
            .apps
            .keys()
            .map(|app| {
                let q = self.clone();
                let app = app.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move { q.worker(app, shutdown).await })
            })
            .collect()
    }

    async fn worker(self: Arc<Self>, app: String, mut shutdown: watch::Receiver<bool>) {
        let fleet_app = self.env.apps.get(&app).is_some_and(|a| a.fleet.is_some());
        if let (true, Some(link)) = (fleet_app, self.env.fleet.clone()) {
            return super::fleet::worker(self, link, app, shutdown).await;
        }
        let Some(wake) = self.wake.get(&app).cloned() else {
            return;
        };
        if let Err(e) = recover(&self.env, &app).await {
            tracing::error!(app = %app, "start-up recovery failed: {e}");
        }
        loop {
            if *shutdown.borrow() {
                return;
            }
            let reopens = self.settle(&app).await;
            let generation = self.live_generation(&app);
            match run_next(&self.env, &app).await {
                Ok(Some(_)) => {
                    self.refresh_live(&app, generation).await;
                    self.prune_logs_hourly().await;
                    continue;
                }
                Ok(None) => self.refresh_live(&app, generation).await,
                Err(e) => {
                    tracing::error!(app = %app, "cannot take the next deploy: {e}; retrying in 5s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            }
            // A closed window wakes the worker when it may open (and at least hourly, to look again).
            let window = async {
                match reopens {
                    Some(d) => tokio::time::sleep(d + Duration::from_millis(50)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = window => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Start-up reconciliation for one app, under its lock: a deploy still marked running was cut short by a
/// crash; its half-built release is removed unless it is live.
pub async fn recover(env: &Env, app: &str) -> Result<(), String> {
    let Some(cfg) = env.apps.get(app).cloned() else {
        return Ok(());
    };
    let _lock = lock::lock(&env.dirs.app_lock(app))
        .await
        .map_err(|e| format!("cannot lock {app}: {e}"))?;
    // A step a killed haul left running is ended first: nothing of the old deploy may race the next one.
    if let Some(pgid) = crate::infra::runner::kill_recorded_group(&env.dirs.pgid_of(app)) {
        tracing::warn!(app = %app, "ended process group {pgid}, left running by a haul that was killed");
    }
    let now = model::now_ms();
    let a = app.to_string();
    let interrupted = env
        .store
        .call(move |c| store::interrupt_running(c, &a, now))
        .await
        .map_err(|e| e.to_string())?;
    let live = release::current(&cfg.path);
    for row in &interrupted {
        let kept_live = row.release_id.is_some() && row.release_id == live;
        if let Some(rid) = &row.release_id {
            if !kept_live {
                let _ = release::remove(&cfg.path, rid);
            }
        }
        let reason = if kept_live {
            // Killed after the switch: the new release is complete and live, but activate or the health
            // check may not have finished. Say so where people look: the audit, the log, the notification.
            let reason = format!(
                "haul stopped after switching to {}; its activate steps or health check may not have finished: check the app, or `haul rollback {app}`",
                live.as_deref().unwrap_or("")
            );
            let (id, o) = (row.id.clone(), Outcome::new(State::Interrupted, reason.clone()));
            let _ = env.store.call(move |c| store::finish(c, &id, &o, now)).await;
            reason
        } else {
            row.reason.clone().unwrap_or_else(|| "haul stopped".into())
        };
        if let Ok(log) = DeployLog::create(&env.dirs.logs(), &row.id) {
            log.stage(&format!("interrupted: {reason}"));
        }
        tell(env, row, &Outcome::new(State::Interrupted, reason));
        tracing::warn!(
            deploy_id = %row.id, app = %app,
            "deploy was interrupted by a stop of haul; live release is {}",
            live.as_deref().unwrap_or("none")
        );
    }
    // Stray temporaries (index files, temp symlinks, downloads) a crash left behind.
    release::clean_temporaries(&cfg.path);
    let _ = std::fs::remove_dir_all(env.dirs.downloads_of(app));
    if cfg.on_restart == crate::config::OnRestart::Hold {
        let (a, started) = (app.to_string(), env.started_ms);
        let held = env
            .store
            .call(move |c| store::hold_queued(c, &a, started, now))
            .await
            .map_err(|e| e.to_string())?;
        if held > 0 {
            tracing::warn!(app = %app, "on_restart = hold: {held} queued request(s) not run; deploy with `haul deploy {app}`");
        }
    }
    Ok(())
}

/// Takes the app's lock and runs its pending deploy, if there is one.
pub async fn run_next(env: &Env, app: &str) -> Result<Option<(DeployRow, Outcome)>, String> {
    run_next_in(env, app, false).await
}

/// [`run_next`]; for a fleet app's worker (`fleet`), only a rollout's assignment or a rollback is taken.
pub(super) async fn run_next_in(
    env: &Env,
    app: &str,
    fleet: bool,
) -> Result<Option<(DeployRow, Outcome)>, String> {
    let _lock = lock::lock(&env.dirs.app_lock(app))
        .await
        .map_err(|e| format!("cannot lock {app}: {e}"))?;
    let now = model::now_ms();
    let a = app.to_string();
    let Some(row) = env
        .store
        .call(move |c| {
            if fleet {
                store::claim_next_fleet(c, &a, now)
            } else {
                store::claim_next(c, &a, now)
            }
        })
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let span = tracing::info_span!("deploy", id = %row.id, app = %row.app);
    // A bug that panics must not leave the deploy `running` forever and the app's worker dead: it is
    // recorded as a failure like any other, and the worker goes on.
    let outcome = match std::panic::AssertUnwindSafe(execute(env, &row).instrument(span))
        .catch_unwind()
        .await
    {
        Ok(o) => o,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(deploy_id = %row.id, "haul hit a bug during this deploy: {what}");
            // What recovery would do after a crash: a release it recorded but did not put live goes, and so
            // do its downloads.
            let id = row.id.clone();
            if let (Ok(Some(r)), Some(cfg)) = (
                env.store.call(move |c| store::get(c, &id)).await,
                env.apps.get(app),
            ) {
                if let Some(rid) = r
                    .release_id
                    .filter(|rid| release::current(&cfg.path).as_ref() != Some(rid))
                {
                    let _ = release::remove(&cfg.path, &rid);
                }
                let _ = std::fs::remove_dir_all(env.dirs.downloads_of(app).join(row.id.as_str()));
            }
            let o = Outcome::new(
                State::Failed,
                format!(
                    "haul hit a bug during this deploy ({what}) and stopped it there; check `haul status {}` and please report the bug",
                    row.app
                ),
            );
            record(env, &row, o).await
        }
    };
    Ok(Some((row, outcome)))
}

/// Runs one claimed deploy (the caller holds the app's lock) and records its outcome.
async fn execute(env: &Env, row: &DeployRow) -> Outcome {
    let Some(app) = env.apps.get(&row.app).cloned() else {
        let o = Outcome::new(State::Failed, format!("app {} is no longer configured", row.app));
        return record(env, row, o).await;
    };
    let previous = previous_release(env, &app).await;
    if let Some(reason) = nothing_to_do(env, &app, row, &previous).await {
        tracing::info!("{reason}");
        let (id, r, now) = (row.id.clone(), reason.clone(), model::now_ms());
        if let Err(e) = env.store.call(move |c| store::skip(c, &id, &r, now)).await {
            tracing::error!(deploy_id = %row.id, "cannot record the skip: {e}");
        }
        return Outcome::new(State::Ignored, reason);
    }
    // URL credentials are masked wherever a URL is logged (`model::url::redact`); credential files are not
    // URLs, so their contents are named here.
    let secrets = crate::sources::artifact::secrets(&app);
    let log = match DeployLog::create(&env.dirs.logs(), &row.id) {
        Ok(l) => Arc::new(l.with_redactions(secrets)),
        Err(e) => {
            let o = Outcome::new(
                State::Failed,
                format!(
                    "cannot create the deploy log in {}: {e}",
                    env.dirs.logs().display()
                ),
            );
            return record(env, row, o).await;
        }
    };
    tracing::info!(trigger = row.trigger.as_str(), actor = %row.actor, sha = row.sha.as_deref().unwrap_or("branch tip"), "deploy started");
    log.line(&format!(
        "deploy {} of {} ({} by {}, {})",
        row.id,
        row.app,
        row.trigger.as_str(),
        row.actor,
        row.sha.as_deref().unwrap_or("branch tip")
    ));
    if let Some(who) = &row.approved_by {
        log.line(&format!("approved by {who}"));
    }
    let started = std::time::Instant::now();
    let outcome = run_pipeline(env, &app, row, log.clone(), &previous).await;
    let secs = started.elapsed().as_secs_f64();
    log.stage(&format!("{}: {} ({secs:.1}s)", outcome.state, outcome.reason));
    match outcome.state {
        State::Succeeded => {
            tracing::info!(elapsed_s = secs, "deploy succeeded: {}", outcome.reason)
        }
        _ => tracing::warn!(elapsed_s = secs, "deploy {}: {}", outcome.state, outcome.reason),
    }
    record(env, row, outcome).await
}

/// Why an automatic trigger needs no fetch, no log and no steps at all, if it does not: it names what is
/// already live, or (an artifact named by version, which has no history to ask, where git has ancestry) a
/// version that went live before and was replaced, which is an old delivery, replayed or out of order.
async fn nothing_to_do(env: &Env, app: &AppConfig, row: &DeployRow, previous: &Previous) -> Option<String> {
    if !matches!(row.trigger, Trigger::Webhook | Trigger::Poll | Trigger::Fleet) {
        return None;
    }
    if row.sha.is_some() && row.sha == previous.sha && (row.digest.is_none() || row.digest == previous.digest)
    {
        return Some(format!(
            "{} is already live as {}; nothing fetched",
            model::short_sha(row.sha.as_deref().unwrap_or("")),
            previous.release_id.as_deref().unwrap_or("")
        ));
    }
    if row.trigger == Trigger::Fleet {
        return None;
    }
    let sha = row.sha.clone().filter(|s| Some(s) != previous.sha.as_ref())?;
    // A rollback is sticky: what it took away (or anything that went live before) comes back only on purpose.
    let (name, probe) = (app.name.clone(), sha.clone());
    if let Ok(Some(rollback)) = env
        .store
        .call(move |c| store::rollback_pin(c, &name, &probe))
        .await
    {
        return Some(format!(
            "{} went live before, and the rollback {rollback} has put {} back since: after a rollback, automatic triggers deploy only a commit haul has never deployed; nothing deployed (`haul deploy {} --sha {}` deploys it on purpose)",
            model::short_sha(&sha),
            previous.release_id.as_deref().unwrap_or("an earlier release"),
            app.name,
            model::short_sha(&sha)
        ));
    }
    if !app.source.is_templated() {
        return None;
    }
    let (name, probe) = (app.name.clone(), sha.clone());
    let went_live = env
        .store
        .call(move |c| store::sha_succeeded(c, &name, &probe))
        .await;
    matches!(went_live, Ok(true)).then(|| {
        format!(
            "{} went live before and {} has replaced it: a replayed or out-of-order trigger; nothing deployed (`haul rollback {}` goes back on purpose)",
            model::short_sha(&sha),
            previous.release_id.as_deref().unwrap_or("another release"),
            app.name
        )
    })
}

/// Requests whose order history could not tell at intake were queued side by side; with the mirror fetched,
/// git can. This one steps aside if a pending request is newer on the branch (that one deploys next); the
/// pending requests it is newer than are superseded by it.
async fn order_after_fetch(env: &Env, pipeline: &Pipeline, row: &DeployRow, sha: &str) -> Option<Outcome> {
    let (name, me) = (row.app.clone(), row.id.clone());
    let others = env
        .store
        .call(move |c| store::queued_pushes(c, &name, &me))
        .await
        .ok()?;
    let mut older = Vec::new();
    for (id, other) in others {
        if other != sha && pipeline.is_ancestor(sha, &other).await {
            return Some(Outcome::new(
                State::Ignored,
                format!(
                    "{} is older on the branch than {}, pending as {id}: that one deploys instead; nothing deployed",
                    model::short_sha(sha),
                    model::short_sha(&other)
                ),
            ));
        }
        if pipeline.is_ancestor(&other, sha).await {
            older.push(id);
        }
    }
    if !older.is_empty() {
        let (name, me, now) = (row.app.clone(), row.id.clone(), model::now_ms());
        if let Err(e) = env
            .store
            .call(move |c| store::supersede(c, &name, &me, &older, now))
            .await
        {
            tracing::warn!("cannot supersede the older pending requests: {e}");
        }
    }
    None
}

/// The pipeline for one claimed row: a rollback to an earlier release, or prepare then release (with the
/// release id recorded in between).
async fn run_pipeline(
    env: &Env,
    app: &Arc<AppConfig>,
    row: &DeployRow,
    log: Arc<DeployLog>,
    previous: &Previous,
) -> Outcome {
    let job = Job {
        id: row.id.clone(),
        trigger: row.trigger,
        git_ref: row.git_ref.clone(),
        sha: if row.trigger == Trigger::Rollback {
            row.target.clone()
        } else {
            row.sha.clone()
        },
        actor: row.actor.clone(),
        digest: row.digest.clone(),
    };
    let pipeline = Pipeline {
        app: app.clone(),
        dirs: env.dirs.clone(),
        log,
        pgid_file: Some(env.dirs.pgid_of(&app.name)),
    };
    if row.trigger == Trigger::Rollback {
        let name = app.name.clone();
        let on_disk = release::list(&app.path);
        let candidates: Vec<Candidate> = env
            .store
            .call(move |c| store::successful_releases(c, &name))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(rid, _)| on_disk.contains(rid))
            .map(|(release_id, sha)| Candidate { release_id, sha })
            .collect();
        return pipeline.rollback(&job, &candidates, previous).await;
    }
    let target = match pipeline.prepare(&job, previous).await {
        Err(o) => return o,
        Ok(target) => target,
    };
    if matches!(row.trigger, Trigger::Webhook | Trigger::Poll) && !app.source.is_artifact() {
        if let Some(o) = order_after_fetch(env, &pipeline, row, &target.sha).await {
            return o;
        }
    }
    // Recorded before anything is written under `path`, so recovery knows what to clean.
    let (id, sha, rid, prev) = (
        row.id.clone(),
        target.sha.clone(),
        target.release_id.clone(),
        previous.sha.clone(),
    );
    let digest = target.artifact.as_ref().map(|a| a.digest.clone());
    match env
        .store
        .call(move |c| store::set_release(c, &id, &sha, &rid, prev.as_deref(), digest.as_deref()))
        .await
    {
        Ok(()) => pipeline.release(&job, &target, previous).await,
        Err(e) => Outcome::new(
            State::Failed,
            format!("cannot record the release in the audit log: {e}"),
        ),
    }
}

/// Tells the notifier how a deploy ended (it decides who hears of it).
fn tell(env: &Env, row: &DeployRow, outcome: &Outcome) {
    // A live release whose `after` step failed is told as such (on by default), beside its success.
    if let (Some(n), Some(why)) = (&env.notifier, &outcome.after_failed) {
        let mut e = crate::model::event::Event::new(
            crate::model::event::EventKind::AfterFailed,
            &row.app,
            why.clone(),
        );
        e.deploy_id = Some(row.id.to_string());
        e.sha = outcome.sha.clone().or_else(|| row.sha.clone());
        e.actor = Some(row.actor.clone());
        n.send(e);
    }
    let (Some(n), Some(kind)) = (
        &env.notifier,
        crate::model::event::EventKind::from_state(outcome.state),
    ) else {
        return;
    };
    let mut e = crate::model::event::Event::new(kind, &row.app, outcome.reason.clone());
    e.deploy_id = Some(row.id.to_string());
    e.sha = outcome.sha.clone().or_else(|| row.sha.clone());
    e.actor = Some(row.actor.clone());
    n.send(e);
}

async fn record(env: &Env, row: &DeployRow, outcome: Outcome) -> Outcome {
    let took = row
        .started_at
        .map(|s| std::time::Duration::from_millis((model::now_ms() - s).max(0) as u64));
    crate::infra::metrics::deploy_finished(&row.app, outcome.state.as_str(), took);
    tell(env, row, &outcome);
    let id = row.id.clone();
    let o = outcome.clone();
    let now = model::now_ms();
    if let Err(e) = env.store.call(move |c| store::finish(c, &id, &o, now)).await {
        // The deploy happened; only its record failed. Say so loudly: the audit is how people find out.
        tracing::error!(deploy_id = %row.id, "cannot record the outcome ({}) in the audit log: {e}", outcome.state);
    }
    outcome
}

async fn previous_release(env: &Env, app: &AppConfig) -> Previous {
    let Some(release_id) = release::current(&app.path) else {
        return Previous::default();
    };
    let (a, r) = (app.name.clone(), release_id.clone());
    let facts = env
        .store
        .call(move |c| store::release_sha(c, &a, &r))
        .await
        .unwrap_or_default();
    Previous {
        release_id: Some(release_id),
        sha: facts.sha,
        digest: facts.digest,
        git_ref: facts.git_ref,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::testkit::{sha, wait_for, webhook, Fixture, Repo};
    use crate::model::DeployId;

    const APPS: &str = r#"
[apps.blog]
repo = "repo.git"
path = "srv/blog"
max_fetches_per_minute = 10000

[apps.shop]
repo = "repo.git"
path = "srv/shop"
max_fetches_per_minute = 10000
"#;

    fn recorded(e: Enqueued) -> (DeployId, Vec<DeployId>) {
        match e {
            Enqueued::Recorded { id, superseded, .. } => (id, superseded),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn request(app: &str, trigger: Trigger) -> DeployRequest {
        match trigger {
            Trigger::Webhook => webhook(app, &sha('a')),
            Trigger::Poll => DeployRequest::new(app, Trigger::Poll, "poll").with_sha(Some(sha('b'))),
            Trigger::Manual => DeployRequest::new(app, Trigger::Manual, "alice"),
            Trigger::Rollback => DeployRequest::new(app, Trigger::Rollback, "alice"),
            Trigger::Fleet => DeployRequest::new(app, Trigger::Fleet, "fleet").with_sha(Some(sha('f'))),
            Trigger::Local => DeployRequest::new(app, Trigger::Local, "alice").with_sha(Some(sha('c'))),
        }
    }

    /// A fleet app's triggers (handed to the fleet) and its rollout assignments (deployed here) are two
    /// lanes: neither ever supersedes the other, and the fleet worker claims only assignments (and
    /// `haul deploy --local`, which goes past the fleet).
    #[tokio::test]
    async fn fleet_assignments_and_triggers_never_supersede_each_other() {
        for (pending, newer) in [
            (Trigger::Webhook, Trigger::Fleet),
            (Trigger::Fleet, Trigger::Webhook),
            (Trigger::Manual, Trigger::Fleet),
            (Trigger::Manual, Trigger::Local),
            (Trigger::Webhook, Trigger::Local),
        ] {
            let fx = Fixture::new(APPS);
            let q = fx.queue();
            let (old, _) = recorded(q.submit(request("blog", pending)).await.expect("submit"));
            let (new, superseded) = recorded(q.submit(request("blog", newer)).await.expect("submit"));
            assert!(
                superseded.is_empty(),
                "{pending:?} then {newer:?}: {superseded:?}"
            );
            assert_eq!(fx.row(&old).await.state, State::Queued);
            let fleet_row = if pending == Trigger::Fleet {
                old.clone()
            } else {
                new.clone()
            };
            let claimed = fx
                .store
                .call(|c| store::claim_next_fleet(c, "blog", model::now_ms()))
                .await
                .expect("claim")
                .expect("an assignment");
            assert_eq!(claimed.id, fleet_row, "only the assignment is claimed");
            let left = fx
                .store
                .call(|c| store::to_forward(c, "blog"))
                .await
                .expect("read");
            assert_eq!(left.len(), 1, "the trigger waits to be handed over");
            assert!(fx
                .store
                .call(|c| store::claim_next_fleet(c, "blog", 0))
                .await
                .expect("claim")
                .is_none());
        }
        let fx = Fixture::new(APPS);
        let q = fx.queue();
        let (a, _) = recorded(q.submit(request("blog", Trigger::Fleet)).await.expect("submit"));
        let (_, superseded) = recorded(q.submit(request("blog", Trigger::Fleet)).await.expect("submit"));
        assert_eq!(superseded, vec![a], "a newer assignment replaces a pending one");
    }

    #[tokio::test]
    async fn newest_pending_wins_and_the_reply_names_the_superseded() {
        let fx = Fixture::new(APPS);
        let q = fx.queue();
        let (first, none) = recorded(q.submit(webhook("blog", &sha('1'))).await.expect("submit"));
        assert!(none.is_empty(), "nothing was pending: {none:?}");
        let (other_app, _) = recorded(q.submit(webhook("shop", &sha('2'))).await.expect("submit"));
        let (second, superseded) = recorded(q.submit(webhook("blog", &sha('3'))).await.expect("submit"));
        assert_eq!(
            superseded,
            vec![first.clone()],
            "the reply names what it replaced"
        );

        let old = fx.row(&first).await;
        assert_eq!(old.state, State::Superseded);
        assert_eq!(old.superseded_by.as_ref(), Some(&second));
        assert!(
            old.reason.as_deref().is_some_and(|r| r.contains(second.as_str())),
            "{:?}",
            old.reason
        );
        assert!(old.finished_at.is_some());
        assert_eq!(fx.row(&second).await.state, State::Queued);
        assert_eq!(fx.row(&second).await.sha, Some(sha('3')));
        assert_eq!(
            fx.row(&other_app).await.state,
            State::Queued,
            "apps are independent"
        );
    }

    /// A pending `haul rollback` is what a person asked for: webhooks and polls queue beside it, and a person
    /// asking again replaces it.
    #[tokio::test]
    async fn automatic_triggers_never_supersede_a_pending_rollback() {
        use Trigger::*;
        async fn check(pending: Trigger, newer: Trigger, supersedes: bool) {
            let fx = Fixture::new(APPS);
            let q = fx.queue();
            let (old, _) = recorded(q.submit(request("blog", pending)).await.expect("submit"));
            let (new, superseded) = recorded(q.submit(request("blog", newer)).await.expect("submit"));
            let case = format!("{pending:?} pending, then {newer:?}");
            assert_eq!(superseded.contains(&old), supersedes, "{case}: {superseded:?}");
            let want = if supersedes {
                State::Superseded
            } else {
                State::Queued
            };
            assert_eq!(fx.row(&old).await.state, want, "{case}");
            assert_eq!(fx.row(&new).await.state, State::Queued, "{case}");
            if !supersedes {
                // The rollback runs first.
                let claimed = fx
                    .store
                    .call(|c| store::claim_next(c, "blog", model::now_ms()))
                    .await
                    .expect("claim")
                    .expect("something is queued");
                assert_eq!(claimed.id, old, "{case}: the rollback is claimed first");
            }
        }
        check(Rollback, Webhook, false).await;
        check(Rollback, Poll, false).await;
        check(Rollback, Manual, true).await;
        check(Rollback, Rollback, true).await;
        check(Webhook, Webhook, true).await;
        check(Webhook, Poll, true).await;
        check(Manual, Webhook, true).await;
        check(Poll, Rollback, true).await;
    }

    #[tokio::test]
    async fn already_live_answers_only_automatic_triggers_for_the_live_sha_while_idle() {
        let fx = Fixture::new(APPS);
        let live = sha('c');
        fx.make_live("blog", "20260101T000000-ccccccc");
        fx.record_success("blog", &live, "20260101T000000-ccccccc").await;
        let q = fx.queue();
        let probe = webhook("blog", &live);
        assert_eq!(
            q.already_live(&probe),
            None,
            "nothing is known before the worker looked"
        );

        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = q.spawn_workers(stop_rx);
        let (queue, wanted) = (&q, &probe);
        let reason = wait_for("the worker to find the app idle", || async move {
            queue.already_live(wanted)
        })
        .await;
        assert!(reason.contains("ccccccc is already live"), "{reason}");

        let check = |req: DeployRequest, want: bool| {
            let got = q.already_live(&req);
            assert_eq!(got.is_some(), want, "{req:?}: {got:?}");
        };
        check(webhook("blog", &live), true);
        check(
            DeployRequest::new("blog", Trigger::Poll, "poll").with_sha(Some(live.clone())),
            true,
        );
        check(webhook("blog", &sha('d')), false);
        check(webhook("shop", &live), false);
        // A person asking for the live sha again gets a deploy.
        check(
            DeployRequest::new("blog", Trigger::Manual, "alice").with_sha(Some(live.clone())),
            false,
        );
        check(DeployRequest::new("blog", Trigger::Rollback, "alice"), false);
        check(webhook("blog", &live).with_sha(None), false);

        // Once something else is pending, a trigger for the live sha is queued (it may be a rewind): with no
        // worker left to run the pending one, that stays so.
        let _ = stop_tx.send(true);
        for w in workers {
            w.await.expect("the worker stops");
        }
        q.submit(webhook("blog", &sha('d'))).await.expect("submit");
        check(webhook("blog", &live), false);
        assert_eq!(
            fx.rows().await.iter().filter(|r| r.app == "blog").count(),
            2,
            "already_live records nothing by itself"
        );
    }

    /// A running row left by a crash, with `release_id` set (as `set_release` does before the directory is
    /// written).
    async fn crashed_while_running(fx: &Fixture, release_id: &str) -> DeployId {
        let (id, _) = recorded(
            fx.queue()
                .submit(webhook("blog", &sha('e')))
                .await
                .expect("submit"),
        );
        let (rid, claim_id) = (release_id.to_string(), id.clone());
        fx.store
            .call(move |c| {
                store::claim_next(c, "blog", model::now_ms())?;
                store::set_release(c, &claim_id, &"e".repeat(40), &rid, None, None)
            })
            .await
            .expect("claim and record the release");
        assert_eq!(fx.row(&id).await.state, State::Running);
        id
    }

    #[tokio::test]
    async fn recover_interrupts_a_running_deploy_and_removes_its_half_built_release() {
        let fx = Fixture::new(APPS);
        let path = fx.app_path("blog");
        fx.make_live("blog", "20260101T000000-aaaaaaa");
        let id = crashed_while_running(&fx, "20260102T000000-eeeeeee").await;
        let half = release::release_dir(&path, "20260102T000000-eeeeeee");
        std::fs::create_dir_all(half.join("node_modules")).expect("mkdir");
        // Not recorded by any deploy: not haul's to remove.
        let foreign = release::release_dir(&path, "hand-made");
        std::fs::create_dir_all(&foreign).expect("mkdir");
        // What a crash leaves beside them.
        let index = release::releases_dir(&path).join("20260102T000000-eeeeeee.index");
        std::fs::write(&index, "").expect("write");
        let tmp_link = path.join(".current.tmp-1-2");
        std::fs::write(&tmp_link, "").expect("write");
        // Another app's running deploy is not this app's recovery's business.
        let (shop, _) = recorded(
            fx.queue()
                .submit(webhook("shop", &sha('f')))
                .await
                .expect("submit"),
        );
        fx.store
            .call(|c| store::claim_next(c, "shop", model::now_ms()))
            .await
            .expect("claim");

        let env = fx.env();
        recover(&env, "blog").await.expect("recover");

        let row = fx.row(&id).await;
        assert_eq!(row.state, State::Interrupted);
        assert!(
            row.reason
                .as_deref()
                .is_some_and(|r| r.contains("the previous release stayed live")),
            "{:?}",
            row.reason
        );
        assert!(!half.exists(), "the half-built release is removed");
        assert!(foreign.is_dir(), "a directory haul did not record stays");
        assert!(!index.exists() && !tmp_link.exists(), "temporaries are cleaned");
        assert_eq!(
            release::current(&path).as_deref(),
            Some("20260101T000000-aaaaaaa")
        );
        let log = std::fs::read_to_string(env.dirs.log_of(&id)).expect("the deploy's log");
        assert!(log.contains("interrupted"), "{log}");
        assert_eq!(fx.row(&shop).await.state, State::Running);

        // Twice is the same as once.
        recover(&env, "blog").await.expect("recover again");
        assert_eq!(fx.row(&id).await.state, State::Interrupted);
        assert_eq!(
            release::current(&path).as_deref(),
            Some("20260101T000000-aaaaaaa")
        );
    }

    /// Killed after the switch: the release is complete and live, so it stays, and the reason says what may
    /// not have finished.
    #[tokio::test]
    async fn recover_keeps_a_recorded_release_that_is_already_live() {
        let fx = Fixture::new(APPS);
        let path = fx.app_path("blog");
        let id = crashed_while_running(&fx, "20260102T000000-eeeeeee").await;
        fx.make_live("blog", "20260102T000000-eeeeeee");

        recover(&fx.env(), "blog").await.expect("recover");

        let row = fx.row(&id).await;
        assert_eq!(row.state, State::Interrupted);
        let reason = row.reason.unwrap_or_default();
        assert!(
            reason.contains("haul stopped after switching to 20260102T000000-eeeeeee"),
            "{reason}"
        );
        assert_eq!(
            release::current(&path).as_deref(),
            Some("20260102T000000-eeeeeee")
        );
    }

    #[tokio::test]
    async fn on_restart_hold_holds_only_what_was_queued_before_the_start() {
        async fn check(on_restart: &str, queued_ms_before_start: i64, want: State) {
            let fx = Fixture::new(&format!(
                "[apps.blog]\nrepo = \"repo.git\"\npath = \"srv/blog\"\non_restart = \"{on_restart}\"\n"
            ));
            let mut env = fx.env();
            env.started_ms = model::now_ms();
            let at = env.started_ms - queued_ms_before_start;
            let req = webhook("blog", &sha('a'));
            let (id, _) = recorded(
                fx.store
                    .call(move |c| store::enqueue(c, &req, at))
                    .await
                    .expect("enqueue"),
            );
            recover(&env, "blog").await.expect("recover");
            let row = fx.row(&id).await;
            let case =
                format!("on_restart = {on_restart}, queued {queued_ms_before_start}ms before the start");
            assert_eq!(row.state, want, "{case}");
            if want == State::Interrupted {
                assert!(
                    row.reason.as_deref().is_some_and(|r| r.contains("on_restart")),
                    "{case}: {:?}",
                    row.reason
                );
            }
        }
        check("hold", 1000, State::Interrupted).await;
        check("hold", -1000, State::Queued).await;
        check("hold", 0, State::Queued).await;
        check("resume", 1000, State::Queued).await;
    }

    /// The queue and the pipeline together, on a real repository: the pending request is claimed, its
    /// release recorded and put live; a later trigger for the live sha is closed as ignored, never fetched.
    #[tokio::test]
    async fn run_next_deploys_the_pending_request_then_skips_the_live_sha() {
        let fx = Fixture::new(APPS);
        let repo = Repo::new(fx.root()).await;
        let head = repo.commit(&[("index.html", "v1")], "v1").await;
        let env = fx.env();
        let q = fx.queue();
        assert!(
            run_next(&env, "blog").await.expect("run").is_none(),
            "nothing queued"
        );

        let (id, _) = recorded(
            q.submit(DeployRequest::new("blog", Trigger::Manual, "alice"))
                .await
                .expect("submit"),
        );
        let (row, outcome) = run_next(&env, "blog").await.expect("run").expect("a deploy ran");
        assert_eq!(row.id, id);
        assert_eq!(outcome.state, State::Succeeded, "{}", outcome.reason);
        let done = fx.row(&id).await;
        assert_eq!(done.state, State::Succeeded);
        assert_eq!(done.sha.as_deref(), Some(head.as_str()));
        let live = release::current(&fx.app_path("blog")).expect("something is live");
        assert_eq!(done.release_id.as_deref(), Some(live.as_str()));

        let (again, _) = recorded(q.submit(webhook("blog", &head)).await.expect("submit"));
        let (_, skipped) = run_next(&env, "blog").await.expect("run").expect("claimed");
        assert_eq!(skipped.state, State::Ignored, "{}", skipped.reason);
        let row = fx.row(&again).await;
        assert_eq!(row.state, State::Ignored);
        assert_eq!(row.started_at, None, "nothing was fetched or run for it");
        assert_eq!(release::current(&fx.app_path("blog")), Some(live));
        assert!(!env.dirs.log_of(&again).exists(), "no log for a skip");
    }

    /// A rollback is sticky, for git and artifacts alike: after it, an automatic trigger for what went live
    /// before (or what the rollback took away) is ignored before any fetch, until a commit (or digest) haul
    /// has never deployed arrives; a person's `haul deploy --sha` is not held back.
    #[tokio::test]
    async fn a_rollback_is_sticky_for_git_and_image_apps() {
        let fx = Fixture::new(
            r#"
[apps.blog]
repo = "repo.git"
path = "srv/blog"

[apps.shop]
image = "registry.example/acme/shop"
tag = "main"
path = "srv/shop"
"#,
        );
        let env = fx.env();
        for (app, len) in [("blog", 40), ("shop", 64)] {
            let v = |d: char| d.to_string().repeat(len);
            fx.record_success(app, &v('1'), "r1").await;
            fx.record_success(app, &v('2'), "r2").await;
            // `haul rollback`: c1 is live again.
            let (a, one) = (app.to_string(), v('1'));
            fx.store
                .call(move |c| {
                    store::enqueue(c, &DeployRequest::new(&a, Trigger::Rollback, "alice"), 0)?;
                    let row = store::claim_next(c, &a, 0)?.expect("the rollback");
                    let mut o = Outcome::new(State::Succeeded, "rolled back");
                    o.sha = Some(one);
                    store::finish(c, &row.id, &o, 0)
                })
                .await
                .expect("record the rollback");
            let cfg = env.apps[app].clone();
            let previous = Previous {
                release_id: Some("r1".into()),
                sha: Some(v('1')),
                ..Previous::default()
            };
            let row_for = |trigger: Trigger, sha: String| {
                let (store, app) = (fx.store.clone(), app.to_string());
                async move {
                    let req = match trigger {
                        Trigger::Webhook => webhook(&app, &sha),
                        t => DeployRequest::new(&app, t, "alice").with_sha(Some(sha)),
                    };
                    let id = store
                        .call(move |c| Ok(store::enqueue(c, &req, 0)?.id().clone()))
                        .await
                        .expect("enqueue");
                    store
                        .call(move |c| store::get(c, &id))
                        .await
                        .expect("read")
                        .expect("row")
                }
            };
            let taken_away = row_for(Trigger::Webhook, v('2')).await;
            let why = nothing_to_do(&env, &cfg, &taken_away, &previous).await;
            assert!(
                why.as_deref().is_some_and(|w| w.contains("rollback")),
                "{app}: {why:?}"
            );
            let on_purpose = row_for(Trigger::Manual, v('2')).await;
            assert_eq!(
                nothing_to_do(&env, &cfg, &on_purpose, &previous).await,
                None,
                "{app}"
            );
            let never_deployed = row_for(Trigger::Webhook, v('3')).await;
            assert_eq!(
                nothing_to_do(&env, &cfg, &never_deployed, &previous).await,
                None,
                "{app}"
            );
        }
    }
}
