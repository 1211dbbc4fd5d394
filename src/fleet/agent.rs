//! The daemon's side of the fleet: one task that keeps this host's heartbeat in the engine, campaigns for
//! each fleet app's conductor lease, and knows whether the engine is reachable.
//!
//! Losing the engine changes nothing that is live: the host keeps serving its releases, `/healthz` stays
//! 200 and says the engine is unreachable, and `haul_fleet_engine_up` drops to 0. Connecting again is
//! bounded and jittered (the client's own reconnects after a first connection; this loop's before one).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::engine::{Engine, FleetError};
pub use super::hosts::AppReport;
use super::hosts::{HostRecord, HEARTBEAT};
use super::lease::Lease;
use super::rollout::{Conductor, Proposal, Submitter, Verifier};
use crate::config::{AppConfig, FleetConfig};
use crate::infra::metrics::{self, AppLabel, HostLabel};
use crate::infra::state_dir::StateDir;

/// How often the loop looks at the engine (assignments, and for a conductor its proposals and wave): each
/// step of a rollout waits for at most one tick on each side. (Watches instead of polling are the lever to
/// cut that wait further; see BENCHMARKS.md, fleet.)
const TICK: Duration = Duration::from_millis(500);

/// What this host has live, per fleet app: asked for before every heartbeat.
pub type Reporter = Arc<dyn Fn() -> BoxFuture<'static, BTreeMap<String, AppReport>> + Send + Sync>;

/// The running agent: its view of the engine, and how to stop it.
#[derive(Clone)]
pub struct AgentHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
}

struct Shared {
    host: String,
    up: AtomicBool,
    /// Since when the engine has been up or down (ms).
    since_ms: AtomicI64,
    last_error: Mutex<String>,
    /// The apps this host conducts, with their epochs.
    conducting: Mutex<BTreeMap<String, u64>>,
    /// The engine, once connected (the client reconnects on its own after that).
    engine: Mutex<Option<Engine>>,
    /// Wakes the loop before its tick (a deploy of this host's ended: report it now).
    poke: tokio::sync::Notify,
}

impl Shared {
    /// Records whether the engine answered; true when it just came back (after having been away).
    fn set(&self, up: bool, error: Option<&FleetError>) -> bool {
        let changed = self.up.swap(up, Ordering::SeqCst) != up;
        if changed {
            self.since_ms.store(crate::model::now_ms(), Ordering::SeqCst);
            match error {
                Some(e) => {
                    tracing::warn!(host = %self.host, "fleet: {e}; serving the live releases, trying again")
                }
                None => tracing::info!(host = %self.host, "fleet: the engine is reachable"),
            }
        }
        if let Some(e) = error {
            if let Ok(mut l) = self.last_error.lock() {
                *l = e.to_string();
            }
        }
        metrics::get()
            .fleet_engine_up
            .get_or_create(&HostLabel {
                host: self.host.clone(),
            })
            .set(i64::from(up));
        changed && up
    }

    fn conduct(&self, app: &str, epoch: Option<u64>) {
        let Ok(mut c) = self.conducting.lock() else {
            return;
        };
        let before = c.get(app).copied();
        match epoch {
            Some(e) => {
                c.insert(app.to_string(), e);
            }
            None => {
                c.remove(app);
            }
        }
        if before != epoch {
            match epoch {
                Some(e) => {
                    tracing::info!(app = %app, host = %self.host, "fleet: this host is the conductor (epoch {e})")
                }
                None if before.is_some() => {
                    tracing::info!(app = %app, host = %self.host, "fleet: this host is no longer the conductor")
                }
                None => {}
            }
        }
        metrics::get()
            .fleet_conductor
            .get_or_create(&AppLabel { app: app.to_string() })
            .set(i64::from(epoch.is_some()));
    }
}

impl AgentHandle {
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    pub fn engine_up(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// The epoch under which this host conducts `app`, if it does.
    pub fn conducting(&self, app: &str) -> Option<u64> {
        self.shared.conducting.lock().ok()?.get(app).copied()
    }

    /// One line for `/healthz`: the engine's state as this host sees it.
    pub fn health_line(&self) -> String {
        let for_s = (crate::model::now_ms() - self.shared.since_ms.load(Ordering::SeqCst)).max(0) / 1000;
        if self.engine_up() {
            format!("fleet: host {}, engine up", self.shared.host)
        } else {
            let why = self
                .shared
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            format!(
                "fleet: host {}, engine unreachable for {for_s}s ({why}); serving the live releases",
                self.shared.host
            )
        }
    }

    /// Wakes the loop now: what this host reports has changed (one of its deploys ended).
    pub fn poke(&self) {
        self.shared.poke.notify_one();
    }

    /// The fleet as the engine knows it (for the status page), within 2 s.
    pub async fn status(&self) -> Result<super::FleetStatus, FleetError> {
        let engine = self.shared.engine.lock().ok().and_then(|e| e.clone());
        let Some(e) = engine else {
            return Err(FleetError::Unreachable("not connected yet".into()));
        };
        match tokio::time::timeout(Duration::from_secs(2), e.status(None)).await {
            Ok(r) => r,
            Err(_) => Err(FleetError::Unreachable("no answer within 2 s".into())),
        }
    }

    /// Hands a trigger to the fleet (durably, or an error: then it stays queued on this host).
    pub async fn propose(&self, p: Proposal) -> Result<(), FleetError> {
        let engine = self.shared.engine.lock().ok().and_then(|e| e.clone());
        match engine {
            Some(e) => e.propose(&p).await,
            None => Err(FleetError::Unreachable("not connected yet".into())),
        }
    }

    /// Stops the loop: gives up the leases this host holds (so another host takes over at once) and
    /// closes the connection. Bounded: an engine that does not answer is not waited for.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), done.wait_for(|d| *d)).await;
    }
}

/// What the agent works with besides the engine.
pub struct AgentParts {
    /// This host's fleet apps.
    pub apps: Vec<Arc<AppConfig>>,
    pub dirs: StateDir,
    pub reporter: Reporter,
    pub submitter: Submitter,
    /// Checks each trigger's claim (a forge's signature, with this host's own secret) before anything is
    /// fetched or deployed for it.
    pub verifier: Verifier,
    /// Where the conductor's `halted` goes (the daemon's notifier).
    pub notifier: Option<crate::model::event::Notifier>,
}

/// Starts the agent.
pub fn spawn(cfg: FleetConfig, parts: AgentParts) -> AgentHandle {
    let shared = Arc::new(Shared {
        host: cfg.host.clone(),
        up: AtomicBool::new(false),
        since_ms: AtomicI64::new(crate::model::now_ms()),
        last_error: Mutex::new("not connected yet".into()),
        conducting: Mutex::new(BTreeMap::new()),
        engine: Mutex::new(None),
        poke: tokio::sync::Notify::new(),
    });
    let _ = shared.set(false, None);
    let (stop, stop_rx) = watch::channel(false);
    let (done_tx, done) = watch::channel(false);
    let s = shared.clone();
    tokio::spawn(async move {
        run(cfg, parts, s, stop_rx).await;
        let _ = done_tx.send(true);
    });
    AgentHandle { shared, stop, done }
}

async fn run(cfg: FleetConfig, parts: AgentParts, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let instance = format!("{:016x}", fastrand::u64(..));
    let Some(engine) = connect_until_up(&cfg, &shared, &mut stop).await else {
        return;
    };
    if let Ok(mut e) = shared.engine.lock() {
        *e = Some(engine.clone());
    }
    let mut leases: Vec<Lease> = parts
        .apps
        .iter()
        .map(|a| Lease::new(&a.name, &cfg.host, &instance, cfg.lease_ttl))
        .collect();
    let mut conductors: Vec<Conductor> = parts
        .apps
        .iter()
        .map(|a| {
            Conductor::new(
                a.clone(),
                a.fleet.clone().unwrap_or_default(),
                &cfg.host,
                parts.dirs.clone(),
                parts.notifier.clone(),
                parts.verifier.clone(),
            )
        })
        .collect();
    let campaign_every = HEARTBEAT.min(cfg.lease_ttl / 3);
    let (mut last_beat, mut last_campaign) = (None::<std::time::Instant>, None::<std::time::Instant>);
    // Changes in the engine wake the loop at once: any write to the rollouts' bucket (a hand-over, a
    // rollout, an assignment) wakes every host; a heartbeat wakes only a conductor. The conductor's reads
    // (proposals, heartbeats) otherwise happen every 5 s, so an idle fleet costs the engine little.
    let events = Arc::new(tokio::sync::Notify::new());
    let hosts_events = Arc::new(tokio::sync::Notify::new());
    let watchers = [
        tokio::spawn(watch_bucket(engine.fleet.clone(), events.clone(), stop.clone())),
        tokio::spawn(watch_bucket(
            engine.hosts.clone(),
            hosts_events.clone(),
            stop.clone(),
        )),
    ];
    let mut last_conduct = None::<std::time::Instant>;
    let mut woke_by: Option<Wake> = None;
    let mut last_report = BTreeMap::new();
    let mut apply_retry = Retries::default();
    loop {
        // The heartbeat: every 5 s, and at once when what this host reports changed (a deploy ended), so a
        // conductor waiting on a wave hears of it within a tick.
        let apps = (parts.reporter)().await;
        if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) || apps != last_report {
            let record = HostRecord {
                host: cfg.host.clone(),
                instance: instance.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
                at_ms: crate::model::now_ms(),
                apps: apps.clone(),
            };
            match engine.heartbeat(&record).await {
                Ok(()) => {
                    // Back from an outage: what waited on the engine is tried at once, not after the
                    // backoff it grew while the engine was away.
                    if shared.set(true, None) {
                        apply_retry.clear();
                        conductors.iter_mut().for_each(Conductor::engine_back);
                    }
                    last_beat = Some(std::time::Instant::now());
                    last_report = apps;
                }
                Err(e) => {
                    shared.set(false, Some(&e));
                }
            }
        }
        if last_campaign.is_none_or(|t| t.elapsed() >= campaign_every) {
            last_campaign = Some(std::time::Instant::now());
            for lease in &mut leases {
                if let Err(e) = lease.campaign(&engine).await {
                    tracing::debug!(app = %lease.app(), "fleet: conductor lease: {e}");
                }
                shared.conduct(lease.app(), lease.epoch());
            }
        }
        let conduct_now = woke_by.is_some() || last_conduct.is_none_or(|t| t.elapsed() >= HEARTBEAT);
        if conduct_now {
            last_conduct = Some(std::time::Instant::now());
        }
        for (lease, conductor) in leases.iter().zip(conductors.iter_mut()) {
            // Only while the lease still counts: a conductor past its deadline does nothing.
            if let (Some(epoch), true) = (lease.epoch(), conduct_now) {
                if let Err(e) = conductor.tick(&engine, epoch).await {
                    tracing::warn!(app = %lease.app(), "fleet: conducting: {e}");
                }
            }
        }
        apply_all(&engine, &cfg.host, &parts, &mut apply_retry).await;
        let conducting = leases.iter().any(|l| l.epoch().is_some());
        woke_by = tokio::select! {
            _ = tokio::time::sleep(TICK) => None,
            _ = events.notified() => Some(Wake::Fleet),
            _ = shared.poke.notified() => Some(Wake::Local),
            _ = hosts_events.notified(), if conducting => Some(Wake::Hosts),
            _ = stop.changed() => break,
        };
        if *stop.borrow() {
            break;
        }
    }
    for w in watchers {
        w.abort();
    }
    for lease in &mut leases {
        if let Err(e) = lease.release(&engine).await {
            tracing::debug!("fleet: giving up a lease: {e}");
        }
    }
    engine.close().await;
}

/// Connects, retrying with a backoff until the engine answers; `None` if a stop came first.
async fn connect_until_up(
    cfg: &FleetConfig,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> Option<Engine> {
    let mut attempt: u32 = 0;
    loop {
        match Engine::connect(cfg).await {
            Ok(e) => return Some(e),
            Err(e) => {
                shared.set(false, Some(&e));
                attempt = attempt.saturating_add(1);
                if sleep_or_stop(connect_delay(attempt), stop).await {
                    return None;
                }
            }
        }
    }
}

type Retries = std::collections::HashMap<String, (u32, Option<std::time::Instant>)>;

/// This host's side of every fleet app's rollout; a failed download or hand-over is tried again after a
/// backoff (1 s doubling to 30 s; at once when the engine comes back).
async fn apply_all(engine: &Engine, host: &str, parts: &AgentParts, retry: &mut Retries) {
    for app in &parts.apps {
        let (tries, not_before) = retry.get(&app.name).copied().unwrap_or((0, None));
        if not_before.is_some_and(|t: std::time::Instant| std::time::Instant::now() < t) {
            continue;
        }
        match super::assigned::apply(engine, app, host, &parts.dirs, &parts.submitter, &parts.verifier).await
        {
            Ok(()) => {
                retry.remove(&app.name);
            }
            Err(e) => {
                let tries = tries + 1;
                let wait =
                    crate::model::failure::backoff(tries, Duration::from_secs(1), Duration::from_secs(30))
                        .max(Duration::from_secs(1));
                tracing::warn!(app = %app.name, "fleet: applying the rollout: {e}; trying again in {:.0}s", wait.as_secs_f64());
                retry.insert(app.name.clone(), (tries, Some(std::time::Instant::now() + wait)));
            }
        }
    }
}

/// What woke the loop before its tick.
#[derive(Debug, Clone, Copy)]
enum Wake {
    Fleet,
    Hosts,
    Local,
}

/// Wakes `notify` on every change in `bucket` until a stop; a watch that fails or ends is made again
/// after a second (the engine's own consumer recovery takes up to ~20 s after a node dies).
async fn watch_bucket(
    bucket: async_nats::jetstream::kv::Store,
    notify: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    use futures_util::StreamExt;
    loop {
        if let Ok(mut w) = bucket.watch_all().await {
            loop {
                tokio::select! {
                    item = w.next() => match item {
                        Some(Ok(_)) => notify.notify_one(),
                        Some(Err(_)) => {}
                        None => break,
                    },
                    _ = stop.changed() => return,
                }
            }
        }
        if sleep_or_stop(Duration::from_secs(1), &mut stop).await {
            return;
        }
    }
}

/// Before a first connection: 1 s doubling to 30 s, jittered to between half and all of it.
fn connect_delay(attempt: u32) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(Duration::from_secs(30));
    base.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Sleeps, or returns true at once when a stop is asked for.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_connections_back_off_to_30s_with_jitter() {
        for attempt in 1..50 {
            let d = connect_delay(attempt);
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(30),
                "{attempt}: {d:?}"
            );
        }
        assert!(connect_delay(20) >= Duration::from_secs(15));
    }
}
