//! Each host's heartbeat (`<host>` in the hosts bucket: what it has live, per fleet app) and the fleet's
//! status assembled from the heartbeats and the leases, as `haul fleet status` prints it.
//!
//! Only a host writes its own record, so a plain put is enough; the age of a record is measured against
//! the engine's own timestamp of the write, so one host's clock cannot make another look alive or lost.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::engine::{chain, Engine, FleetError};
use super::lease::{Lease, LeaseState};

/// How often a host rewrites its record.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(5);
/// A host whose record is older than this is *lost*: skipped by rollouts, shown as such.
pub(super) const LOST_AFTER: Duration = Duration::from_secs(20);

/// What one host says about one fleet app.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppReport {
    pub live_release: Option<String>,
    pub live_sha: Option<String>,
    /// `idle`, `deploying`, or `diverged` (what is live came past the fleet: `haul deploy --local`).
    pub phase: String,
    /// How its last deploy ended (`succeeded`, `failed`, ...), if it had one.
    pub outcome: Option<String>,
    /// The newest rollout this host was assigned, and the state of its deploy of it.
    #[serde(default)]
    pub rollout: Option<String>,
    #[serde(default)]
    pub rollout_state: Option<String>,
    /// Why that deploy ended as it did, when it did not succeed (a refusal names what did not verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_reason: Option<String>,
}

/// A host's heartbeat record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct HostRecord {
    pub(super) host: String,
    pub(super) instance: String,
    pub(super) version: String,
    pub(super) at_ms: i64,
    pub(super) apps: BTreeMap<String, AppReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FleetStatus {
    pub apps: Vec<AppStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppStatus {
    pub app: String,
    pub rollout: RolloutStatus,
    pub hosts: Vec<HostStatus>,
}

/// The app's rollout. Until a release has been rolled out, only the conductor and its epoch are known.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RolloutStatus {
    pub id: Option<String>,
    pub release: Option<String>,
    pub sha: Option<String>,
    pub digest: Option<String>,
    /// `canary`, `waves`, `halted`, `reverting` or `done`; none before the first rollout.
    pub phase: Option<String>,
    pub epoch: Option<u64>,
    pub conductor: Option<String>,
    /// How many waves the rollout has, and the one it is on.
    #[serde(default)]
    pub waves: usize,
    #[serde(default)]
    pub wave: usize,
    /// `host: why` for each host whose deploy of the rollout failed.
    #[serde(default)]
    pub failures: Vec<String>,
    /// What started the rollout (`webhook`, `poll`, `manual`, `rollback`), by whom, from which host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The release `haul fleet rollback` would put back now (none: the fleet had none before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<String>,
    /// Shas fleet rollbacks took away: automatic triggers do not roll them out again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taken_away: Vec<String>,
    /// The last trigger the conductor refused (its claim did not verify): which, from where, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostStatus {
    pub host: String,
    pub live_release: Option<String>,
    pub live_sha: Option<String>,
    /// The host's own phase (`idle`, `deploying`), or `lost` when its heartbeat is older than 20 s.
    pub phase: String,
    pub outcome: Option<String>,
    pub heartbeat_age_s: u64,
    /// The newest rollout assigned to this host, and how its deploy of it stands.
    #[serde(default)]
    pub rollout: Option<String>,
    #[serde(default)]
    pub rollout_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_reason: Option<String>,
}

impl Engine {
    /// Writes this host's heartbeat record.
    pub(super) async fn heartbeat(&self, record: &HostRecord) -> Result<(), FleetError> {
        let value = serde_json::to_vec(record).map_err(|e| FleetError::Refused(e.to_string()))?;
        self.hosts
            .put(&record.host, value.into())
            .await
            .map(|_| ())
            .map_err(|e| {
                let msg = chain(&e);
                match e.kind() {
                    async_nats::jetstream::kv::PutErrorKind::InvalidKey => FleetError::Refused(msg),
                    _ => FleetError::Unreachable(msg),
                }
            })
    }

    /// The fleet as the engine knows it: every app any host reports (or `only` that one), its conductor,
    /// and its hosts with the age of their heartbeats.
    pub async fn status(&self, only: Option<&str>) -> Result<FleetStatus, FleetError> {
        let mut by_app: BTreeMap<String, Vec<HostStatus>> = BTreeMap::new();
        for (age, rec) in self.heartbeats().await?.into_values() {
            for (app, r) in rec.apps {
                if only.is_some_and(|o| o != app) {
                    continue;
                }
                by_app.entry(app).or_default().push(HostStatus {
                    host: rec.host.clone(),
                    live_release: r.live_release,
                    live_sha: r.live_sha,
                    phase: if age > LOST_AFTER { "lost".into() } else { r.phase },
                    outcome: r.outcome,
                    heartbeat_age_s: age.as_secs(),
                    rollout: r.rollout,
                    rollout_state: r.rollout_state,
                    rollout_reason: r.rollout_reason,
                });
            }
        }
        if let Some(o) = only {
            by_app.entry(o.to_string()).or_default();
        }
        let mut apps = Vec::new();
        for (app, mut hosts) in by_app {
            hosts.sort_by(|a, b| a.host.cmp(&b.host));
            let mut rollout = RolloutStatus::default();
            if let Some(r) = self.rollout(&app).await? {
                rollout.id = Some(r.id).filter(|_| !r.sha.is_empty());
                rollout.release = Some(r.bundle).filter(|_| !r.sha.is_empty());
                rollout.digest = r.digest.clone().filter(|_| !r.sha.is_empty());
                rollout.sha = Some(r.sha).filter(|s| !s.is_empty());
                rollout.phase = Some(r.phase);
                rollout.failures = r
                    .failures
                    .into_iter()
                    .map(|(h, why)| format!("{h}: {why}"))
                    .collect();
                rollout.waves = r.waves.len();
                rollout.wave = r.wave;
                rollout.rollback_to = r.history.last().cloned();
                rollout.taken_away = r.taken_away.clone();
                rollout.trigger = Some(match r.from.rolls_back.as_deref() {
                    Some(back) => format!("rollback of {back} by {} on {}", r.from.actor, r.from.origin),
                    None if r.from.trigger.is_empty() => "the conductor".to_string(),
                    None => format!("{} by {} via {}", r.from.trigger, r.from.actor, r.from.origin),
                })
                .filter(|_| rollout.sha.is_some());
            }
            if let Some(n) = self
                .get_json::<super::rollout::Refusal>(&super::rollout::refused_key(&app))
                .await?
            {
                rollout.refused = Some(format!(
                    "trigger {} handed over by {} ({}): {}",
                    n.deploy_id,
                    n.origin,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_millis(n.at_ms.max(0) as u64)
                    ),
                    n.why
                ));
            }
            if let LeaseState::Held { holder, epoch, .. } = Lease::read(self, &app).await? {
                rollout.conductor = Some(holder);
                rollout.epoch = Some(epoch);
            }
            apps.push(AppStatus { app, rollout, hosts });
        }
        Ok(FleetStatus { apps })
    }
}

impl FleetStatus {
    /// The table `haul fleet status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.apps.is_empty() {
            out.push_str(
                "no fleet app has reported yet (a host reports within 5 s of starting `haul serve`)\n",
            );
        }
        for a in &self.apps {
            let conductor = match (&a.rollout.conductor, a.rollout.epoch) {
                (Some(c), Some(e)) => format!("conductor {c} (epoch {e})"),
                _ => "no conductor".to_string(),
            };
            let phase = a.rollout.phase.as_deref().unwrap_or("no rollout yet");
            let what = match (&a.rollout.id, &a.rollout.sha) {
                (Some(id), Some(sha)) => format!(
                    " rollout {id} of {} (wave {}/{}),",
                    &sha[..sha.len().min(12)],
                    (a.rollout.wave + 1).min(a.rollout.waves),
                    a.rollout.waves
                ),
                _ => String::new(),
            };
            out.push_str(&format!("{}: {phase},{what} {conductor}\n", a.app));
            if let Some(t) = &a.rollout.trigger {
                out.push_str(&format!("  from: {t}\n"));
            }
            if let Some(d) = &a.rollout.digest {
                out.push_str(&format!(
                    "  artifact: {d} (every host checks its package against it)\n"
                ));
            }
            if !a.rollout.taken_away.is_empty() {
                let shas: Vec<&str> = a
                    .rollout
                    .taken_away
                    .iter()
                    .map(|s| &s[..s.len().min(12)])
                    .collect();
                out.push_str(&format!(
                    "  taken away by a rollback: {} (webhooks and polls skip them; `haul fleet deploy --sha` does not)\n",
                    shas.join(", ")
                ));
            }
            for f in &a.rollout.failures {
                out.push_str(&format!("  failed: {f}\n"));
            }
            if let Some(r) = &a.rollout.refused {
                out.push_str(&format!("  refused: {r}\n"));
            }
            for h in &a.hosts {
                let sha = h.live_sha.as_deref().map_or("-", |s| &s[..s.len().min(12)]);
                out.push_str(&format!(
                    "  {:<20} {:<10} live {:<12} {:<28} last {:<12} heartbeat {}s ago\n",
                    h.host,
                    h.phase,
                    sha,
                    h.live_release.as_deref().unwrap_or("-"),
                    h.outcome.as_deref().unwrap_or("-"),
                    h.heartbeat_age_s
                ));
                if let (Some("failed"), Some(why)) = (h.rollout_state.as_deref(), &h.rollout_reason) {
                    out.push_str(&format!("  {:<20} {why}\n", ""));
                }
            }
        }
        out
    }
}

/// The rollout's phase and how many of the app's hosts are live on it, deploying, lost or elsewhere.
pub(super) fn rollout_metrics(
    name: &str,
    r: &super::rollout::RolloutState,
    beats: &BTreeMap<String, (Duration, HostRecord)>,
) {
    let (mut live, mut deploying, mut lost, mut other) = (0, 0, 0, 0);
    for (age, rec) in beats.values() {
        let Some(a) = rec.apps.get(name) else { continue };
        if *age > LOST_AFTER {
            lost += 1;
        } else if a.live_sha.as_deref() == Some(r.sha.as_str()) {
            live += 1;
        } else if a.phase == "deploying" {
            deploying += 1;
        } else {
            other += 1;
        }
    }
    crate::infra::metrics::fleet_rollout(
        name,
        &r.phase,
        &[
            ("live", live),
            ("deploying", deploying),
            ("lost", lost),
            ("other", other),
        ],
    );
}
