//! Rollouts: a trigger any host handed over becomes, through the app's conductor, one release that moves
//! across the hosts in waves.
//!
//! 1. A host hands a trigger over as `proposal.<app>.<deploy-id>` (a create: handing the same one over twice
//!    changes nothing).
//! 2. The conductor fetches the forge **once**, into its own mirror, and picks the newest proposal on the
//!    branch: older than the fleet's desired release (and not the branch tip, which a real rewind makes it)
//!    changes nothing. It writes the release's bundle into the object store, then `desired.<app>` and
//!    `rollout.<app>` (the waves: the canary, then groups of at most `max_parallel`), and only then deletes
//!    the proposals it has decided on, so a conductor that dies half-way leaves them to the next one.
//! 3. The conductor assigns each wave's hosts (`assign.<app>.<host>`), waits until each has reported the
//!    assignment's outcome in its heartbeat, lets the wave soak, and moves on; more failures than
//!    `max_failures` halt the rollout. A host found lost is skipped, not counted as a failure.
//! 4. Each host downloads the bundle and deploys it through its own queue and pipeline (trigger `fleet`,
//!    the rollout id as the delivery id), refusing any assignment older than the highest epoch it has seen.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::engine::{chain, Engine, FleetError};
use super::hosts::{AppReport, HostRecord, LOST_AFTER};
use crate::config::{AppConfig, Rollout as RolloutConfig};
use crate::infra::state_dir::StateDir;
use crate::model;
use crate::sources::git::Git;

/// A trigger a host handed to the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proposal {
    pub app: String,
    /// The host that received it.
    pub origin: String,
    pub deploy_id: String,
    pub trigger: String,
    pub git_ref: Option<String>,
    /// A full sha, a prefix (`haul deploy --sha`), or none for the branch tip.
    pub sha: Option<String>,
    /// An artifact's digest the trigger pinned (`sha256:<hex>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub actor: String,
    pub provider: Option<String>,
    pub delivery_id: Option<String>,
    pub requested_ms: i64,
    /// A forge's webhook: the signed delivery, which every host verifies again with its own secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<model::SignedDelivery>,
    /// `haul fleet rollback`: the rollout it takes back (the conductor refuses it if another has started
    /// since); `sha` is then the fleet's release before that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolls_back: Option<String>,
}

/// Triggers nobody chose the sha of: a rollback's stickiness holds against them.
pub(super) fn automatic(trigger: &str) -> bool {
    trigger == model::Trigger::Webhook.as_str() || trigger == model::Trigger::Poll.as_str()
}

/// One release moving across the fleet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct RolloutState {
    pub(super) id: String,
    pub(super) sha: String,
    pub(super) git_ref: String,
    /// The release bundle's object name (an artifact: its package's descriptor).
    pub(super) bundle: String,
    /// An artifact's digest (`sha256:<hex>`), which every host checks its package against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) digest: Option<String>,
    pub(super) epoch: u64,
    pub(super) conductor: String,
    /// `canary`, `waves`, `halted` or `done`.
    pub(super) phase: String,
    pub(super) waves: Vec<Vec<String>>,
    pub(super) wave: usize,
    pub(super) soaking_since_ms: Option<i64>,
    /// (host, why) for each host whose deploy failed.
    pub(super) failures: Vec<(String, String)>,
    /// What asked for it.
    pub(super) from: Proposal,
    pub(super) started_ms: i64,
    pub(super) finished_ms: Option<i64>,
    /// How many times `haul fleet resume` continued it after a halt (each gives its hosts a fresh assignment).
    #[serde(default)]
    pub(super) attempt: u32,
    /// The fleet's releases before this one (each a rollout that reached `done`), oldest first: where
    /// `haul fleet rollback` goes back to.
    #[serde(default)]
    pub(super) history: Vec<String>,
    /// What fleet rollbacks took away: an automatic trigger (a webhook, a poll) for one of these deploys
    /// nothing until a commit the fleet never had arrives; `haul fleet deploy --sha` still can, on purpose.
    #[serde(default)]
    pub(super) taken_away: Vec<String>,
}

impl RolloutState {
    /// The delivery id a host deploys this rollout under: the rollout's id, or after a resume
    /// `<id>-resume<n>` (a host that put its previous release back deploys it again, not a duplicate).
    pub(super) fn assignment_id(&self) -> String {
        match self.attempt {
            0 => self.id.clone(),
            n => format!("{}-resume{n}", self.id),
        }
    }
}

/// What one host is to deploy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Assignment {
    pub rollout: String,
    pub sha: String,
    pub git_ref: String,
    pub bundle: String,
    /// An artifact's digest (`sha256:<hex>`): the host checks the package against it, and its signature
    /// against its own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub epoch: u64,
    pub actor: String,
    /// Put the release from before this rollout back (the hosts of a halted rollout's failing wave).
    #[serde(default)]
    pub revert: bool,
    /// The trigger the rollout came from, as the host it reached handed it over: what this host checks
    /// (a forge's signature, again, with its own secret) before it deploys the sha.
    #[serde(default)]
    pub from: Option<Proposal>,
}

/// Deploys an assignment on this host (the server queues it), or, given why, records it in this host's
/// audit as refused (failed, never run): the local deploy id.
pub type Submitter = Arc<
    dyn Fn(String, Assignment, Option<String>) -> BoxFuture<'static, Result<String, String>> + Send + Sync,
>;

/// Checks a trigger handed to the fleet before anything is fetched or deployed for it: one that claims a
/// forge's webhook must carry a signed delivery that verifies with this host's own secret and asks for the
/// sha given. Why not, if it is refused.
pub type Verifier = Arc<dyn Fn(&Proposal, &str) -> Result<(), String> + Send + Sync>;

pub(super) fn proposal_key(app: &str, deploy_id: &str) -> String {
    format!("proposal.{app}.{deploy_id}")
}
fn rollout_key(app: &str) -> String {
    format!("rollout.{app}")
}
pub(super) fn assign_key(app: &str, host: &str) -> String {
    format!("assign.{app}.{host}")
}
pub(super) fn refused_key(app: &str) -> String {
    format!("refused.{app}")
}

/// The last trigger the conductor refused for an app, as `haul fleet status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) deploy_id: String,
    pub(super) origin: String,
    pub(super) why: String,
    pub(super) at_ms: i64,
}

pub(super) fn refused(e: impl std::fmt::Display) -> FleetError {
    FleetError::Refused(e.to_string())
}
fn away(e: &(dyn std::error::Error + 'static)) -> FleetError {
    FleetError::Unreachable(chain(e))
}

impl Engine {
    /// Hands a trigger over. Idempotent: one already there is left as it is.
    pub async fn propose(&self, p: &Proposal) -> Result<(), FleetError> {
        let value = serde_json::to_vec(p).map_err(refused)?;
        match self
            .fleet
            .create(proposal_key(&p.app, &p.deploy_id), value.into())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(away(&e)),
        }
    }

    pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, FleetError> {
        match self.fleet.get(key).await {
            Ok(Some(v)) => Ok(serde_json::from_slice(&v).ok()),
            Ok(None) => Ok(None),
            Err(e) => Err(away(&e)),
        }
    }

    pub(super) async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), FleetError> {
        let bytes = serde_json::to_vec(value).map_err(refused)?;
        self.fleet
            .put(key, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| away(&e))
    }

    pub(super) async fn rollout(&self, app: &str) -> Result<Option<RolloutState>, FleetError> {
        self.get_json(&rollout_key(app)).await
    }

    /// Writes an app's rollout as the conductor of `epoch`: by compare-and-set on the revision last read,
    /// and never over a rollout written by a newer conductor (a conductor that was paused past its lease
    /// and woke up is refused here, whatever it believed).
    pub(super) async fn write_rollout(&self, app: &str, state: &RolloutState) -> Result<(), FleetError> {
        let key = rollout_key(app);
        let entry = self.fleet.entry(key.clone()).await.map_err(|e| away(&e))?;
        let revision = match &entry {
            Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
                if let Ok(current) = serde_json::from_slice::<RolloutState>(&e.value) {
                    if current.epoch > state.epoch {
                        return Err(FleetError::Refused(format!(
                            "a newer conductor (epoch {}) owns rollout {}; this one (epoch {}) stands down",
                            current.epoch, current.id, state.epoch
                        )));
                    }
                }
                e.revision
            }
            Some(e) => e.revision,
            None => 0,
        };
        let value = serde_json::to_vec(state).map_err(refused)?;
        match self.fleet.update(&key, value.into(), revision).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                Err(FleetError::Conflict)
            }
            Err(e) if super::engine::js_code(&e) == Some(10164) => Err(FleetError::Conflict),
            Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::TimedOut => {
                Err(FleetError::Unknown(chain(&e)))
            }
            Err(e) => Err(away(&e)),
        }
    }

    async fn proposals(&self, app: &str) -> Result<Vec<Proposal>, FleetError> {
        let prefix = format!("proposal.{app}.");
        let mut keys = self.fleet.keys().await.map_err(|e| away(&e))?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| away(&e))?;
            if k.starts_with(&prefix) {
                if let Some(p) = self.get_json::<Proposal>(&k).await? {
                    out.push(p);
                }
            }
        }
        out.sort_by_key(|p| p.requested_ms);
        Ok(out)
    }

    pub(super) async fn heartbeats(&self) -> Result<BTreeMap<String, (Duration, HostRecord)>, FleetError> {
        let mut keys = self.hosts.keys().await.map_err(|e| away(&e))?;
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            names.push(k.map_err(|e| away(&e))?);
        }
        let now_ms = model::now_ms();
        let mut out = BTreeMap::new();
        for name in names {
            let Some(entry) = self.hosts.entry(name).await.map_err(|e| away(&e))? else {
                continue;
            };
            if let Ok(rec) = serde_json::from_slice::<HostRecord>(&entry.value) {
                let written_ms = (entry.created.unix_timestamp_nanos() / 1_000_000) as i64;
                let age = Duration::from_millis(now_ms.saturating_sub(written_ms).max(0) as u64);
                out.insert(rec.host.clone(), (age, rec));
            }
        }
        Ok(out)
    }
}

/// What the conductor of one app remembers between ticks.
pub(super) struct Conductor {
    pub(super) app: Arc<AppConfig>,
    pub(super) rollout: RolloutConfig,
    pub(super) host: String,
    pub(super) dirs: StateDir,
    /// After a fetch that failed transiently: not before then.
    retry_at: Option<Instant>,
    /// Failures in a row of the forge (a fetch), and of the engine (an upload, a write).
    failures: u32,
    engine_failures: u32,
    notifier: Option<model::event::Notifier>,
    verify: Verifier,
}

impl Conductor {
    pub(super) fn new(
        app: Arc<AppConfig>,
        rollout: RolloutConfig,
        host: &str,
        dirs: StateDir,
        notifier: Option<model::event::Notifier>,
        verify: Verifier,
    ) -> Conductor {
        Conductor {
            verify,
            notifier,
            app,
            rollout,
            host: host.to_string(),
            dirs,
            retry_at: None,
            failures: 0,
            engine_failures: 0,
        }
    }

    /// One tick as the conductor under `epoch`: decide on the proposals, then move the rollout along.
    pub(super) async fn tick(&mut self, engine: &Engine, epoch: u64) -> Result<(), FleetError> {
        self.decide(engine, epoch).await?;
        self.drive(engine, epoch).await
    }

    async fn decide(&mut self, engine: &Engine, epoch: u64) -> Result<(), FleetError> {
        let name = self.app.name.clone();
        let proposals = engine.proposals(&name).await?;
        if proposals.is_empty() || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(());
        }
        // A trigger whose claim does not hold (a forge's webhook that does not verify here, or asks for
        // another sha) costs no fetch and moves nothing: closed, and shown in `haul fleet status`.
        let (proposals, forged): (Vec<Proposal>, Vec<Proposal>) = proposals
            .into_iter()
            .partition(|p| (self.verify)(p, p.sha.as_deref().unwrap_or("")).is_ok());
        for p in &forged {
            let why = (self.verify)(p, p.sha.as_deref().unwrap_or(""))
                .err()
                .unwrap_or_default();
            self.note_refused(engine, p, format!("{why}; nothing fetched or rolled out"))
                .await?;
        }
        self.close_proposals(engine, &forged).await;
        if proposals.is_empty() {
            return Ok(());
        }
        let current = engine.rollout(&name).await?;
        if !matches!(self.app.source, crate::config::Source::Git) {
            return self
                .decide_artifact(engine, epoch, proposals, current.as_ref())
                .await;
        }
        let git = Git::new(self.app.clone(), self.dirs.conductor_mirror_of(&name), None);
        // A rollback goes first, alone: the others wait for the next tick, judged against what it put back.
        let (rollbacks, proposals): (Vec<Proposal>, Vec<Proposal>) =
            proposals.into_iter().partition(|p| p.rolls_back.is_some());
        if let Some(p) = rollbacks.last() {
            let result = self.roll_back(engine, epoch, &git, p, current.as_ref()).await;
            if !matches!(result, Err(FleetError::Unreachable(_) | FleetError::Unknown(_))) {
                self.close_proposals(engine, &rollbacks).await;
            }
            return result;
        }
        // A replay of the fleet's release, an older commit this mirror already has or one a rollback took
        // away costs no forge request: it is closed here.
        let live = current.as_ref().map(|r| r.sha.clone()).filter(|s| !s.is_empty());
        let taken_away = current.as_ref().map(|r| r.taken_away.clone()).unwrap_or_default();
        let mut fresh = Vec::new();
        for p in &proposals {
            let auto = automatic(&p.trigger);
            let known_old = match (&live, &p.sha) {
                (Some(l), Some(s)) if s == l => true,
                (_, Some(s)) if auto && taken_away.contains(s) => true,
                (Some(l), Some(s)) if auto && model::is_full_sha(s) => {
                    matches!(git.is_ancestor(s, l).await, Ok(true))
                }
                _ => false,
            };
            if known_old {
                tracing::info!(app = %name, deploy_id = %p.deploy_id, "fleet: {} is the fleet's release, older, or taken away by a rollback; nothing fetched or rolled out", model::short_sha(p.sha.as_deref().unwrap_or("")));
            } else {
                fresh.push(p.clone());
            }
        }
        if fresh.is_empty() {
            self.close_proposals(engine, &proposals).await;
            return Ok(());
        }
        // Fetch only what the mirror does not have yet (a retry after a failed upload fetches nothing).
        let mut need_fetch = false;
        for p in &fresh {
            let known = match &p.sha {
                Some(s) if model::is_full_sha(s) => matches!(git.resolve_commit(s).await, Ok(Some(_))),
                _ => false,
            };
            need_fetch |= !known;
        }
        if need_fetch {
            let fetched = match git.ensure_mirror().await {
                Ok(()) => git.fetch().await.map(|_| ()),
                Err(f) => Err(f),
            };
            if let Err(f) = fetched {
                if f.kind == model::failure::Kind::Permanent {
                    // Never retried: the proposals are closed, and the people told; what is live stays.
                    tracing::warn!(app = %name, "fleet: the conductor's fetch failed for good: {f}; the handed-over triggers are closed");
                    self.close_proposals(engine, &proposals).await;
                    // Never the repository's location: this reaches every host's status page.
                    let why = format!(
                        "the conductor ({}) cannot fetch {}'s repository: {f}; nothing was rolled out",
                        self.host, self.app.name
                    );
                    self.tell_halted(&why, None, None);
                    // Shown under `refused:` in `haul fleet status`, for the newest trigger it closed.
                    if let Some(p) = proposals.last() {
                        self.note_refused(engine, p, why).await?;
                    }
                    return Ok(());
                }
                self.back_off(&format!("the conductor's fetch failed ({f})"), false);
                return Ok(());
            }
        }
        let result = self.roll_out(engine, epoch, &git, &fresh, current.as_ref()).await;
        self.settled(engine, &proposals, result).await
    }

    /// After a decision on `proposals`: done (the backoffs reset, the proposals closed), or not (a backoff
    /// set; they stay for the next try).
    pub(super) async fn settled(
        &mut self,
        engine: &Engine,
        proposals: &[Proposal],
        result: Result<(), FleetError>,
    ) -> Result<(), FleetError> {
        match result {
            Ok(()) => {
                (self.failures, self.engine_failures) = (0, 0);
                self.retry_at = None;
                self.close_proposals(engine, proposals).await;
                Ok(())
            }
            Err(e) => {
                let engine = matches!(e, FleetError::Unreachable(_) | FleetError::Unknown(_));
                self.back_off(&format!("cannot start the rollout ({e})"), engine);
                Err(e)
            }
        }
    }

    /// After a failure: not again before a backoff, jittered: 5 s doubling to 5 min when the forge failed
    /// (its rate limits are the deploy key's), 1 s doubling to 15 s when the engine did (it costs the forge
    /// nothing, and the engine's own recovery takes seconds).
    pub(super) fn back_off(&mut self, what: &str, engine: bool) {
        let wait = if engine {
            self.engine_failures += 1;
            model::failure::backoff(
                self.engine_failures,
                Duration::from_secs(1),
                Duration::from_secs(15),
            )
            .max(Duration::from_secs(1))
        } else {
            self.failures += 1;
            model::failure::backoff(self.failures, Duration::from_secs(5), Duration::from_secs(300))
                .max(Duration::from_secs(5))
        };
        tracing::warn!(app = %self.app.name, "fleet: {what}; trying again in {:.0}s", wait.as_secs_f64());
        self.retry_at = Some(Instant::now() + wait);
    }

    /// The engine is back after an outage: a rollout that waited on it is tried at once. A forge backoff
    /// stands.
    pub(super) fn engine_back(&mut self) {
        if self.engine_failures > 0 {
            self.engine_failures = 0;
            if self.failures == 0 {
                self.retry_at = None;
            }
        }
    }

    /// Picks the newest proposal and, if there is one, puts its bundle in the object store and writes the
    /// rollout.
    async fn roll_out(
        &self,
        engine: &Engine,
        epoch: u64,
        git: &Git,
        fresh: &[Proposal],
        current: Option<&RolloutState>,
    ) -> Result<(), FleetError> {
        let live = current.map(|r| r.sha.as_str()).filter(|s| !s.is_empty());
        let taken_away = current.map(|r| r.taken_away.as_slice()).unwrap_or_default();
        let Some((p, sha, git_ref)) = self.choose(git, fresh, live, taken_away).await else {
            return Ok(());
        };
        self.publish(engine, git, &sha).await?;
        let mut state = self.fresh_state(epoch, Some(p), &sha, &git_ref);
        if let Some(c) = current {
            (state.history, state.taken_away) = c.carried(&sha);
        }
        tracing::info!(app = %self.app.name, rollout = %state.id, "fleet: rolling out {}", model::short_sha(&sha));
        engine.write_rollout(&self.app.name, &state).await
    }

    /// Puts the release bundle of `sha` (what the hosts' mirrors need of it) into the object store.
    pub(super) async fn publish(&self, engine: &Engine, git: &Git, sha: &str) -> Result<(), FleetError> {
        let name = &self.app.name;
        let bundle = format!("{name}/{sha}.bundle");
        let file = self
            .dirs
            .root()
            .join("fleet")
            .join(name)
            .join(format!("out-{sha}.bundle"));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(refused)?;
        }
        git.bundle(sha, &file)
            .await
            .map_err(|f| refused(format!("cannot bundle {sha}: {f}")))?;
        let put = upload(engine, &bundle, &file).await;
        let _ = std::fs::remove_file(&file);
        put
    }

    pub(super) fn tell_halted(&self, reason: &str, sha: Option<&str>, rollout: Option<&str>) {
        if let Some(n) = &self.notifier {
            let mut e = model::event::Event::new(model::event::EventKind::Halted, &self.app.name, reason);
            e.sha = sha.map(str::to_string);
            e.deploy_id = rollout.map(str::to_string);
            n.send(e);
        }
    }

    /// The newest proposal on the branch, if it is newer than `live` (the fleet's current release) and,
    /// for an automatic trigger, not taken away by a rollback (a sha chosen by a person may be older): its
    /// proposal, sha and ref.
    async fn choose(
        &self,
        git: &Git,
        proposals: &[Proposal],
        live: Option<&str>,
        taken_away: &[String],
    ) -> Option<(Proposal, String, String)> {
        let branch_ref = format!("refs/heads/{}", self.app.branch);
        let tip = git.resolve_commit(&branch_ref).await.ok().flatten()?;
        let mut newer: Vec<(Proposal, String)> = Vec::new();
        for p in proposals {
            let wanted = p.sha.clone().unwrap_or_else(|| tip.clone());
            let Ok(Some(sha)) = git.resolve_commit(&wanted).await else {
                tracing::info!(app = %p.app, deploy_id = %p.deploy_id, "fleet: {wanted} is not in the repository; not rolled out");
                continue;
            };
            if !matches!(git.is_on_branch(&sha).await, Ok(true)) {
                tracing::info!(app = %p.app, deploy_id = %p.deploy_id, "fleet: {sha} is not on {branch_ref}; not rolled out");
                continue;
            }
            let auto = automatic(&p.trigger);
            let older = match live {
                Some(l) if l == sha => true,
                Some(l) if auto => matches!(git.is_ancestor(&sha, l).await, Ok(true)) && sha != tip,
                _ => false,
            };
            if older {
                tracing::info!(app = %p.app, deploy_id = %p.deploy_id, "fleet: {} is not newer than the fleet's release; nothing rolled out", model::short_sha(&sha));
                continue;
            }
            if auto && taken_away.contains(&sha) {
                tracing::info!(app = %p.app, deploy_id = %p.deploy_id, "fleet: a rollback took {} away: automatic triggers roll out only a commit the fleet never had; nothing rolled out (`haul fleet deploy {} --sha {}` does, on purpose)", model::short_sha(&sha), p.app, model::short_sha(&sha));
                continue;
            }
            newer.push((p.clone(), sha));
        }
        // The one every other is an ancestor of; where history cannot say (a force-push), the branch tip,
        // else the last to arrive.
        let mut best: Option<(Proposal, String)> = None;
        for (p, sha) in &newer {
            let mut all = true;
            for (_, other) in &newer {
                if other != sha && !matches!(git.is_ancestor(other, sha).await, Ok(true)) {
                    all = false;
                    break;
                }
            }
            if all {
                best = Some((p.clone(), sha.clone()));
            }
        }
        let best = best
            .or_else(|| newer.iter().find(|(_, s)| *s == tip).cloned())
            .or_else(|| newer.last().cloned())?;
        let git_ref = best.0.git_ref.clone().unwrap_or(branch_ref);
        Some((best.0, best.1, git_ref))
    }

    pub(super) fn fresh_state(
        &self,
        epoch: u64,
        from: Option<Proposal>,
        sha: &str,
        git_ref: &str,
    ) -> RolloutState {
        let now = model::now_ms();
        let from = from.unwrap_or(Proposal {
            app: self.app.name.clone(),
            origin: self.host.clone(),
            deploy_id: String::new(),
            trigger: String::new(),
            git_ref: None,
            sha: None,
            digest: None,
            actor: String::new(),
            provider: None,
            delivery_id: None,
            requested_ms: now,
            signed: None,
            rolls_back: None,
        });
        RolloutState {
            id: format!("{}-{}", model::compact_utc(now), model::short_sha(sha)),
            sha: sha.to_string(),
            git_ref: git_ref.to_string(),
            bundle: format!("{}/{sha}.bundle", self.app.name),
            digest: None,
            epoch,
            conductor: self.host.clone(),
            phase: if self.rollout.canary > 0 {
                "canary"
            } else {
                "waves"
            }
            .into(),
            waves: Vec::new(),
            wave: 0,
            soaking_since_ms: None,
            failures: Vec::new(),
            from,
            started_ms: now,
            finished_ms: None,
            attempt: 0,
            history: Vec::new(),
            taken_away: Vec::new(),
        }
    }

    pub(super) async fn close_proposals(&self, engine: &Engine, proposals: &[Proposal]) {
        for p in proposals {
            if let Err(e) = engine.fleet.purge(proposal_key(&p.app, &p.deploy_id)).await {
                tracing::debug!("fleet: cannot remove proposal {}: {e}", p.deploy_id);
            }
        }
    }

    /// Moves the rollout along: plans its waves from the hosts alive when it starts, assigns the current
    /// wave, and waits for its outcomes and its soak.
    async fn drive(&mut self, engine: &Engine, epoch: u64) -> Result<(), FleetError> {
        let name = self.app.name.clone();
        let Some(mut r) = engine.rollout(&name).await? else {
            return Ok(());
        };
        if r.sha.is_empty() || matches!(r.phase.as_str(), "halted") || r.epoch > epoch {
            return Ok(());
        }
        let beats = engine.heartbeats().await?;
        let report = |h: &str| -> Option<(Duration, AppReport)> {
            beats
                .get(h)
                .and_then(|(age, rec)| rec.apps.get(&name).map(|a| (*age, a.clone())))
        };
        let alive: Vec<String> = beats
            .iter()
            .filter(|(_, (age, rec))| *age <= LOST_AFTER && rec.apps.contains_key(&name))
            .map(|(h, _)| h.clone())
            .collect();
        let before = r.clone();
        if r.waves.is_empty() && r.phase != "done" {
            r.waves = plan(&alive, &self.rollout);
        }
        if r.phase == "reverting" {
            self.revert_wave(engine, &mut r, &report).await?;
        } else if r.phase == "done" {
            // A host that joined (or came back) after the rollout gets its release too; one that reports it
            // needs no write (nor a read: fifty hosts cost nothing per tick).
            for h in &alive {
                let has_it = report(h).is_some_and(|(_, rep)| {
                    rep.rollout
                        .as_deref()
                        .is_some_and(|x| x == r.id || x.starts_with(&format!("{}-", r.id)))
                });
                if !has_it {
                    self.assign(engine, &r, h).await?;
                }
            }
        } else if let Some(wave) = r.waves.get(r.wave).cloned() {
            let mut pending = false;
            for h in &wave {
                let Some((age, rep)) = report(h) else { continue };
                if age > LOST_AFTER {
                    continue;
                }
                self.assign(engine, &r, h).await?;
                if rep.rollout.as_deref() != Some(r.assignment_id().as_str()) {
                    pending = true;
                    continue;
                }
                match rep.rollout_state.as_deref() {
                    Some("succeeded") => {}
                    // Nothing to do is a success only if the host does have the release live.
                    Some("ignored") if rep.live_sha.as_deref() == Some(r.sha.as_str()) => {}
                    Some("ignored") => {
                        if !r.failures.iter().any(|(fh, _)| fh == h) {
                            r.failures.push((
                                h.clone(),
                                format!(
                                    "the deploy on {h} did nothing and {} is not live there",
                                    model::short_sha(&r.sha)
                                ),
                            ));
                        }
                    }
                    Some("failed") | Some("rolled_back") | Some("interrupted") => {
                        if !r.failures.iter().any(|(fh, _)| fh == h) {
                            let why = format!("{} on {h}", rep.rollout_state.as_deref().unwrap_or("failed"));
                            r.failures.push((h.clone(), why));
                        }
                    }
                    _ => pending = true,
                }
            }
            if r.failures.len() > self.rollout.max_failures {
                // The failing wave's other hosts go back to what they had; later waves are never touched.
                r.phase = "reverting".into();
                tracing::warn!(app = %name, rollout = %r.id, "fleet: halting the rollout: {}", r.failures.iter().map(|f| f.1.clone()).collect::<Vec<_>>().join(", "));
                self.revert_wave(engine, &mut r, &report).await?;
            } else if !pending {
                let now = model::now_ms();
                let since = *r.soaking_since_ms.get_or_insert(now);
                if now - since >= self.rollout.soak.as_millis() as i64 {
                    r.wave += 1;
                    r.soaking_since_ms = None;
                    if r.wave >= r.waves.len() {
                        r.phase = "done".into();
                        r.finished_ms = Some(now);
                        tracing::info!(app = %name, rollout = %r.id, "fleet: rollout done");
                    } else {
                        r.phase = "waves".into();
                    }
                }
            }
        } else {
            r.phase = "done".into();
            r.finished_ms = Some(model::now_ms());
        }
        r.epoch = epoch;
        if r != before {
            engine.write_rollout(&name, &r).await?;
        }
        super::hosts::rollout_metrics(&name, &r, &beats);
        Ok(())
    }

    /// A halted rollout's failing wave: each host whose deploy of it succeeded is told to put its previous
    /// release back; once every such host has, the rollout is `halted` and the people are told.
    async fn revert_wave(
        &self,
        engine: &Engine,
        r: &mut RolloutState,
        report: &impl Fn(&str) -> Option<(Duration, AppReport)>,
    ) -> Result<(), FleetError> {
        let assigned = r.assignment_id();
        let revert_id = format!("{assigned}-revert");
        let finished = |s: &str| {
            matches!(
                s,
                "succeeded" | "failed" | "rolled_back" | "interrupted" | "ignored" | "superseded"
            )
        };
        let wave = r.waves.get(r.wave).cloned().unwrap_or_default();
        let mut waiting = false;
        for h in &wave {
            if r.failures.iter().any(|(fh, _)| fh == h) {
                continue;
            }
            let Some((age, rep)) = report(h) else { continue };
            if age > LOST_AFTER {
                continue;
            }
            match (rep.rollout.as_deref(), rep.rollout_state.as_deref()) {
                (Some(x), Some(st)) if x == revert_id => waiting |= !finished(st),
                (Some(x), Some("succeeded")) if x == assigned => {
                    self.assign_as(engine, r, h, &revert_id, true).await?;
                    waiting = true;
                }
                (Some(x), Some(st)) if x == assigned && finished(st) => {}
                _ => waiting = true,
            }
        }
        if !waiting {
            r.phase = "halted".into();
            r.finished_ms = Some(model::now_ms());
            let why = r
                .failures
                .iter()
                .map(|f| f.1.clone())
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(app = %self.app.name, rollout = %r.id, "fleet: rollout halted: {why}");
            self.tell_halted(
                &format!(
                    "the fleet rollout {} of {} halted: {why}; the failing wave is back on its previous release and later waves were not touched (`haul fleet status {}`)",
                    r.id,
                    model::short_sha(&r.sha),
                    self.app.name
                ),
                Some(&r.sha),
                Some(&r.id),
            );
        }
        Ok(())
    }

    async fn assign(&self, engine: &Engine, r: &RolloutState, host: &str) -> Result<(), FleetError> {
        self.assign_as(engine, r, host, &r.assignment_id(), false).await
    }

    async fn assign_as(
        &self,
        engine: &Engine,
        r: &RolloutState,
        host: &str,
        id: &str,
        revert: bool,
    ) -> Result<(), FleetError> {
        let key = assign_key(&self.app.name, host);
        if let Some(a) = engine.get_json::<Assignment>(&key).await? {
            if a.rollout == id {
                return Ok(());
            }
        }
        let a = Assignment {
            revert,
            rollout: id.to_string(),
            sha: r.sha.clone(),
            git_ref: r.git_ref.clone(),
            bundle: r.bundle.clone(),
            digest: r.digest.clone(),
            epoch: r.epoch,
            from: Some(r.from.clone()),
            actor: format!(
                "fleet rollout {} ({} via {})",
                r.id,
                model::clean_actor(&r.from.actor),
                r.from.origin
            ),
        };
        engine.put_json(&key, &a).await
    }
}

/// The waves: the canary alone, then groups of at most `max_parallel`, in host-name order.
pub(super) fn plan(hosts: &[String], cfg: &RolloutConfig) -> Vec<Vec<String>> {
    let mut hosts = hosts.to_vec();
    hosts.sort();
    let canary = cfg.canary.min(hosts.len());
    let mut waves = Vec::new();
    if canary > 0 {
        waves.push(hosts[..canary].to_vec());
    }
    for chunk in hosts[canary..].chunks(cfg.max_parallel.max(1)) {
        waves.push(chunk.to_vec());
    }
    waves
}

pub(super) async fn upload(engine: &Engine, name: &str, file: &Path) -> Result<(), FleetError> {
    let mut f = tokio::fs::File::open(file).await.map_err(refused)?;
    engine.releases.put(name, &mut f).await.map(|_| ()).map_err(|e| {
        FleetError::Unreachable(format!("cannot store the release bundle {name}: {}", chain(&e)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("h{i:02}")).collect()
    }

    #[test]
    fn waves_start_with_the_canary_and_never_exceed_max_parallel() {
        let cfg = |canary, max_parallel| RolloutConfig {
            canary,
            max_parallel,
            soak: Duration::ZERO,
            max_failures: 0,
        };
        let w = plan(&hosts(20), &cfg(1, 5));
        assert_eq!(w[0], vec!["h01"]);
        assert_eq!(w.len(), 1 + 4);
        assert!(w.iter().all(|x| x.len() <= 5));
        assert_eq!(w.iter().map(Vec::len).sum::<usize>(), 20);
        assert_eq!(plan(&hosts(20), &cfg(1, 20)).len(), 2);
        assert_eq!(
            plan(&hosts(3), &cfg(0, 1)),
            vec![vec!["h01"], vec!["h02"], vec!["h03"]]
        );
        assert_eq!(plan(&hosts(2), &cfg(5, 1)), vec![vec!["h01", "h02"]]);
        assert!(plan(&[], &cfg(1, 5)).is_empty());
    }
}
