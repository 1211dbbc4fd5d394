//! People steering an app's rollout: `haul fleet abort` (stop where it is), `haul fleet resume` (continue a
//! halted one) and `haul fleet rollback` (the fleet's release before, rolled out like any other, and
//! sticky: what it took away comes back only on purpose).
//!
//! Abort and resume write the rollout directly (by compare-and-set, never over a newer conductor's). A
//! rollback is handed to the conductor as a proposal, so that one place decides what the fleet rolls out:
//! it fetches nothing (its mirror has every release it rolled out), and refuses a rollback asked for a
//! rollout that is no longer the fleet's.

use super::engine::{Engine, FleetError};
use super::rollout::{refused_key, Conductor, Proposal, Refusal, RolloutState};
use crate::model;
use crate::sources::git::Git;

/// How many earlier fleet releases a rollout remembers (how far `haul fleet rollback` can walk back), and
/// how many shas taken away by rollbacks.
const HISTORY: usize = 10;
const TAKEN_AWAY: usize = 16;

impl RolloutState {
    /// The history and the taken-away shas a rollout of `sha` that follows this one carries: this one
    /// joins the history if the whole fleet got it; `sha`, rolled out again, is no longer taken away.
    pub(super) fn carried(&self, sha: &str) -> (Vec<String>, Vec<String>) {
        let mut history = self.history.clone();
        if self.phase == "done" && !self.sha.is_empty() && history.last() != Some(&self.sha) {
            history.push(self.sha.clone());
        }
        history.retain(|h| h != sha);
        let drop = history.len().saturating_sub(HISTORY);
        history.drain(..drop);
        let mut taken = self.taken_away.clone();
        taken.retain(|t| t != sha);
        (history, taken)
    }

    /// What a rollback of this rollout rolls out: the release before it, and the history and taken-away
    /// shas its rollout carries (this one's sha taken away). None if the fleet had no release before.
    pub(super) fn rolled_back(&self) -> Option<(String, Vec<String>, Vec<String>)> {
        let mut history = self.history.clone();
        let to = history.pop()?;
        let mut taken = self.taken_away.clone();
        if !self.sha.is_empty() && self.sha != to && !taken.contains(&self.sha) {
            taken.push(self.sha.clone());
        }
        taken.retain(|t| *t != to);
        let drop = taken.len().saturating_sub(TAKEN_AWAY);
        taken.drain(..drop);
        Some((to, history, taken))
    }
}

/// Where a rollback goes: the rollout it takes back and the release it puts back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPlan {
    /// The proposal's id (a refusal in `haul fleet status` names it).
    pub proposal: String,
    pub rollout: String,
    pub from_sha: String,
    pub to_sha: String,
}

impl Engine {
    /// Stops an app's rollout where it is (`haul fleet abort`): no further wave is assigned; a host already
    /// deploying finishes; what is live stays. The rollout's id.
    pub async fn abort(&self, app: &str, who: &str) -> Result<String, FleetError> {
        let Some(mut r) = self.rollout(app).await? else {
            return Err(FleetError::Refused(format!("app {app} has no rollout to abort")));
        };
        if !matches!(r.phase.as_str(), "canary" | "waves" | "reverting") {
            return Err(FleetError::Refused(format!(
                "rollout {} of {app} is {}, not in progress; nothing to abort",
                r.id, r.phase
            )));
        }
        r.phase = "halted".into();
        r.finished_ms = Some(model::now_ms());
        r.failures
            .push(("-".into(), format!("aborted by {}", model::clean_actor(who))));
        self.write_rollout(app, &r).await?;
        Ok(r.id)
    }

    /// Continues a halted rollout (`haul fleet resume`) from the wave it halted in, its failures cleared:
    /// that wave's hosts are assigned it again (a fresh assignment id each time), the waves after follow.
    /// The rollout's id.
    pub async fn resume(&self, app: &str, who: &str) -> Result<String, FleetError> {
        let Some(mut r) = self.rollout(app).await? else {
            return Err(FleetError::Refused(format!("app {app} has no rollout to resume")));
        };
        if r.phase != "halted" {
            return Err(FleetError::Refused(format!(
                "rollout {} of {app} is {}, not halted; nothing to resume",
                r.id, r.phase
            )));
        }
        tracing::info!(app = %app, rollout = %r.id, "fleet: resumed by {}", model::clean_actor(who));
        r.phase = if r.wave == 0 && r.waves.first().is_some_and(|w| w.len() == 1) && r.waves.len() > 1 {
            "canary"
        } else {
            "waves"
        }
        .into();
        r.failures.clear();
        r.finished_ms = None;
        r.soaking_since_ms = None;
        r.attempt += 1;
        self.write_rollout(app, &r).await?;
        Ok(r.id)
    }

    /// Asks the app's conductor to roll the fleet back (`haul fleet rollback`): the release before the
    /// current rollout's, in waves like any release, whatever phase the current one is in.
    pub async fn rollback(&self, app: &str, who: &str, origin: &str) -> Result<RollbackPlan, FleetError> {
        let Some(r) = self.rollout(app).await?.filter(|r| !r.sha.is_empty()) else {
            return Err(FleetError::Refused(format!(
                "the fleet has rolled nothing out of {app} yet; nothing to roll back"
            )));
        };
        let Some((to, _, _)) = r.rolled_back() else {
            return Err(FleetError::Refused(format!(
                "the fleet had no release of {app} before rollout {} ({}); nothing to roll back to (`haul fleet deploy {app} --sha SHA` rolls out a commit you choose)",
                r.id,
                model::short_sha(&r.sha)
            )));
        };
        let now = model::now_ms();
        let p = Proposal {
            app: app.to_string(),
            origin: origin.to_string(),
            deploy_id: format!("rollback-{}", model::DeployId::new(now)),
            trigger: model::Trigger::Rollback.as_str().into(),
            git_ref: Some(r.git_ref.clone()),
            sha: Some(to.clone()),
            digest: None,
            actor: model::clean_actor(who),
            provider: None,
            delivery_id: None,
            requested_ms: now,
            signed: None,
            rolls_back: Some(r.id.clone()),
        };
        self.propose(&p).await?;
        Ok(RollbackPlan {
            proposal: p.deploy_id,
            rollout: r.id,
            from_sha: r.sha,
            to_sha: to,
        })
    }
}

impl Conductor {
    /// Rolls the fleet back as `p` asks, if the rollout it takes back is still the fleet's: the release
    /// before it becomes a new rollout (its sha in the mirror already; fetched only if not), and the sha
    /// it takes away is remembered against automatic triggers.
    pub(super) async fn roll_back(
        &self,
        engine: &Engine,
        epoch: u64,
        git: &Git,
        p: &Proposal,
        current: Option<&RolloutState>,
    ) -> Result<(), FleetError> {
        let name = &self.app.name;
        let (c, (to, history, taken_away)) = match self.rollback_plan(p, current) {
            Ok(plan) => plan,
            Err(why) => return self.note_refused(engine, p, why).await,
        };
        if !matches!(git.resolve_commit(&to).await, Ok(Some(_))) {
            let fetched = match git.ensure_mirror().await {
                Ok(()) => git.fetch().await.map(|_| ()),
                Err(f) => Err(f),
            };
            if let Err(f) = fetched {
                return Err(FleetError::Unreachable(format!(
                    "the rollback to {} needs a fetch, which failed: {f}",
                    model::short_sha(&to)
                )));
            }
            if !matches!(git.resolve_commit(&to).await, Ok(Some(_))) {
                let why = format!(
                    "the rollback to {} asked by {}: the commit is no longer in the repository; nothing rolled back",
                    model::short_sha(&to),
                    p.actor
                );
                return self.note_refused(engine, p, why).await;
            }
        }
        self.publish(engine, git, &to).await?;
        let mut state = self.fresh_state(epoch, Some(p.clone()), &to, &c.git_ref);
        state.history = history;
        state.taken_away = taken_away;
        tracing::warn!(app = %name, rollout = %state.id, "fleet: rolling back from {} (rollout {}) to {}, asked by {} on {}", model::short_sha(&c.sha), c.id, model::short_sha(&to), p.actor, p.origin);
        engine.write_rollout(name, &state).await
    }

    /// What the rollback `p` asks for, if the rollout it takes back is still the fleet's: that rollout, and
    /// the sha, history and taken-away shas of the rollout that puts the release before back. Why not, if not.
    #[allow(clippy::type_complexity)]
    pub(super) fn rollback_plan<'c>(
        &self,
        p: &Proposal,
        current: Option<&'c RolloutState>,
    ) -> Result<(&'c RolloutState, (String, Vec<String>, Vec<String>)), String> {
        let plan = current
            .filter(|c| Some(&c.id) == p.rolls_back.as_ref())
            .and_then(|c| c.rolled_back().map(|plan| (c, plan)));
        plan.filter(|(_, (to, _, _))| Some(to) == p.sha.as_ref())
            .ok_or_else(|| {
                format!(
                    "the rollback asked by {} takes back rollout {}, which is no longer the fleet's (now {}); nothing rolled back: ask again (`haul fleet status {}`)",
                    p.actor,
                    p.rolls_back.as_deref().unwrap_or("-"),
                    current.map_or("none", |c| c.id.as_str()),
                    self.app.name
                )
            })
    }

    /// A trigger the conductor will not act on: logged, and shown in `haul fleet status`.
    pub(super) async fn note_refused(
        &self,
        engine: &Engine,
        p: &Proposal,
        why: String,
    ) -> Result<(), FleetError> {
        tracing::warn!(app = %self.app.name, deploy_id = %p.deploy_id, "fleet: refusing the trigger handed over by {}: {why}", p.origin);
        let note = Refusal {
            deploy_id: p.deploy_id.clone(),
            origin: p.origin.clone(),
            why,
            at_ms: model::now_ms(),
        };
        if let Err(e) = engine.put_json(&refused_key(&self.app.name), &note).await {
            tracing::debug!("fleet: cannot note the refusal of {}: {e}", p.deploy_id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(sha: &str, phase: &str, history: &[&str], taken: &[&str]) -> RolloutState {
        let json = serde_json::json!({
            "id": format!("r-{sha}"), "sha": sha, "git_ref": "refs/heads/main", "bundle": "b", "epoch": 1,
            "conductor": "h1", "phase": phase, "waves": [], "wave": 0, "soaking_since_ms": null,
            "failures": [], "started_ms": 0, "finished_ms": null,
            "from": {"app": "blog", "origin": "h1", "deploy_id": "d", "trigger": "webhook", "git_ref": null,
                     "sha": null, "actor": "a", "provider": null, "delivery_id": null, "requested_ms": 0},
            "history": history, "taken_away": taken,
        });
        serde_json::from_value(json).expect("a rollout state")
    }

    #[test]
    fn a_finished_release_joins_the_history_and_one_rolled_out_again_is_no_longer_taken_away() {
        let (h, t) = state("c3", "done", &["c1", "c2"], &["c9"]).carried("c4");
        assert_eq!(
            (h, t),
            (
                vec!["c1".into(), "c2".into(), "c3".into()],
                vec!["c9".to_string()]
            )
        );
        // A halted release never was the fleet's: the history skips it.
        let (h, _) = state("c3", "halted", &["c1", "c2"], &[]).carried("c4");
        assert_eq!(h, vec!["c1", "c2"]);
        let (h, t) = state("c2", "done", &["c1"], &["c3"]).carried("c3");
        assert_eq!((h, t), (vec!["c1".to_string(), "c2".into()], vec![]));
        let long: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let (h, _) = state("x", "done", &long, &[]).carried("y");
        assert_eq!(h.len(), HISTORY);
        assert_eq!(h.last().map(String::as_str), Some("x"));
    }

    #[test]
    fn a_rollback_walks_back_the_history_and_takes_the_current_sha_away() {
        assert_eq!(state("c1", "done", &[], &[]).rolled_back(), None);
        let (to, h, t) = state("c3", "done", &["c1", "c2"], &[])
            .rolled_back()
            .expect("a plan");
        assert_eq!(
            (to.as_str(), h, t),
            ("c2", vec!["c1".to_string()], vec!["c3".to_string()])
        );
        // Twice: further back, both taken away.
        let (to, h, t) = state("c2", "done", &["c1"], &["c3"])
            .rolled_back()
            .expect("a plan");
        assert_eq!(
            (to.as_str(), h, t),
            ("c1", vec![], vec!["c3".to_string(), "c2".into()])
        );
        // Back to one taken away before: it is no longer.
        let (_, _, t) = state("c3", "done", &["c2"], &["c2"])
            .rolled_back()
            .expect("a plan");
        assert_eq!(t, vec!["c3"]);
    }
}
