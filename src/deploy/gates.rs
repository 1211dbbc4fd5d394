//! The gates an app's automatic triggers (webhooks, polls) pass before they run: CI (`gate = "ci"`), a
//! pause (`haul pause`), its deploy windows, and approvals (`approve = true`). Held requests are rows like any other
//! (`deferred`, `awaiting_approval`), coalesced to the newest; the worker settles them before each claim
//! (`Queue::settle`) and wakes when a window opens or an approval expires. A person's `haul deploy` passes
//! every gate but the window, which `--override-window` opens.

use std::time::Duration;

use super::queue::Queue;
use crate::model::{self, event::EventKind, DeployRequest, Trigger};
use crate::store::{self, StoreError};

impl Queue {
    /// The gate `req` meets now: a closed window (why, and when it opens) or a wait for an approval.
    pub(super) fn gate(&self, req: &DeployRequest, now: i64) -> store::Gate {
        if !matches!(req.trigger, Trigger::Webhook | Trigger::Poll) {
            return store::Gate::default();
        }
        store::Gate {
            closed: self.window_closed(&req.app, now).map(|(why, _)| why),
            approval: self.approval_wait(&req.app, now),
            ci: self.ci_wait(&req.app),
        }
    }

    /// For an app with `gate = "ci"`: why a request waits for CI.
    fn ci_wait(&self, app: &str) -> Option<String> {
        let workflow = self.env().apps.get(app)?.ci_gate.clone()?;
        Some(if workflow.is_empty() {
            "waiting for CI: a pipeline of the branch to pass on this commit (GitLab's Pipeline Hook to this app's hook)".to_string()
        } else {
            format!(
                "waiting for CI: the workflow {workflow:?} to pass on this commit (the forge's signed workflow_run or Pipeline Hook to this app's hook)"
            )
        })
    }

    /// The forge's signed word on CI for `sha`: what waited on it runs (passed) or is recorded `ci_failed`.
    /// The requests it decided; `None` when this body (`digest`, its sha256) was recorded before: a replay.
    pub async fn ci_result(
        &self,
        app: &str,
        sha: &str,
        passed: bool,
        what: &str,
        digest: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let (name, sha2, what2, digest2, now) = (
            app.to_string(),
            sha.to_string(),
            what.to_string(),
            digest.to_string(),
            model::now_ms(),
        );
        let Some(ids) = self
            .env()
            .store
            .call(move |c| store::record_ci(c, &name, &sha2, passed, &what2, &digest2, now))
            .await?
        else {
            tracing::info!(app = %app, "CI on {}: {what}, a body recorded before: a duplicate, nothing changed", model::short_sha(sha));
            return Ok(None);
        };
        tracing::info!(app = %app, "CI on {}: {what}; {} request(s) {}", model::short_sha(sha), ids.len(), if passed { "released" } else { "failed" });
        if !passed {
            let why = format!("CI failed on this commit ({what}); nothing deployed");
            for id in &ids {
                self.tell_ci_failed(app, id, Some(sha), &why);
            }
        }
        if let Some(n) = self.wake_of(app) {
            n.notify_one();
        }
        Ok(Some(ids))
    }

    /// For an app with `approve = true`: why a request waits, and until when.
    fn approval_wait(&self, app: &str, now: i64) -> Option<String> {
        let within = self.env().apps.get(app)?.approve_within?;
        Some(format!(
            "waiting for approval: `haul approve {app}` deploys it, `haul reject {app}` drops it; it expires at {} UTC",
            model::compact_utc(now + within.as_millis() as i64)
        ))
    }

    /// Before each claim, the app's held requests against its gates: a closed window keeps them deferred,
    /// an open one queues them (unless paused), approvals wait or expire. How long until something here may
    /// change (none: nothing to wake for).
    pub(super) async fn settle(&self, app: &str) -> Option<Duration> {
        if let Some(why) = self.ci_wait(app) {
            let name = app.to_string();
            let _ = self
                .env()
                .store
                .call(move |c| store::await_ci(c, &name, &why))
                .await;
        }
        let window = self.settle_window(app).await;
        let approvals = self.settle_approvals(app).await;
        match (window, approvals) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Queued but never approved (a window or a pause released it): waits for a person again. Waited past
    /// `approve_within`: expired, and told. How long until the oldest still waiting expires.
    async fn settle_approvals(&self, app: &str) -> Option<Duration> {
        let within = self.env().apps.get(app)?.approve_within?;
        let (name, now) = (app.to_string(), model::now_ms());
        let why = self.approval_wait(app, now).unwrap_or_default();
        let before = now - within.as_millis() as i64;
        let expired_why = format!(
            "no approval within approve_within ({}); nothing deployed",
            humantime::format_duration(within)
        );
        let (why2, n2) = (expired_why.clone(), name.clone());
        let settled = self
            .env()
            .store
            .call(move |c| {
                store::await_approval(c, &n2, &why)?;
                let expired = store::expire_approvals(c, &n2, before, &why2, now)?;
                Ok((expired, store::oldest_awaiting(c, &n2)?))
            })
            .await;
        let Ok((expired, oldest)) = settled else {
            return Some(Duration::from_secs(60));
        };
        for (id, sha) in expired {
            tracing::warn!(app = %app, deploy_id = %id, "{expired_why}");
            crate::infra::metrics::deploy_finished(app, "expired", None);
            if let Some(n) = &self.env().notifier {
                let mut e = model::event::Event::new(EventKind::Expired, app, expired_why.clone());
                e.deploy_id = Some(id);
                e.sha = sha;
                n.send(e);
            }
        }
        oldest.map(|t| {
            Duration::from_millis((t + within.as_millis() as i64 - now).max(0) as u64)
                .clamp(Duration::from_secs(1), Duration::from_secs(3600))
        })
    }

    /// `haul approve APP`: the newest request awaiting approval runs (approved by `actor`, which its row
    /// keeps). Its id.
    pub async fn approve(&self, app: &str, actor: &str) -> Result<Option<String>, StoreError> {
        let (name, who, now) = (app.to_string(), model::clean_actor(actor), model::now_ms());
        let id = self
            .env()
            .store
            .call(move |c| store::approve(c, &name, &who, now))
            .await?;
        if let Some(id) = &id {
            tracing::info!(app = %app, deploy_id = %id, "approved by {}", model::clean_actor(actor));
            if let Some(n) = self.wake_of(app) {
                n.notify_one();
            }
        }
        Ok(id)
    }

    /// `haul reject APP`: every request awaiting approval is recorded `ignored`, rejected by `actor`.
    pub async fn reject(&self, app: &str, actor: &str) -> Result<Vec<String>, StoreError> {
        let (name, who, now) = (app.to_string(), model::clean_actor(actor), model::now_ms());
        let ids = self
            .env()
            .store
            .call(move |c| store::reject(c, &name, &who, now))
            .await?;
        if !ids.is_empty() {
            tracing::info!(app = %app, "{} request(s) rejected by {}", ids.len(), model::clean_actor(actor));
        }
        Ok(ids)
    }

    /// A request CI failed on: counted, and the people told; it will never run.
    pub(super) fn tell_ci_failed(&self, app: &str, id: &str, sha: Option<&str>, why: &str) {
        crate::infra::metrics::deploy_finished(app, "ci_failed", None);
        if let Some(n) = &self.env().notifier {
            let mut e = model::event::Event::new(EventKind::CiFailed, app, why);
            e.deploy_id = Some(id.to_string());
            e.sha = sha.map(str::to_string);
            n.send(e);
        }
    }

    /// A request that now waits for an approval: the people who can give it are told.
    pub(super) fn tell_waiting(&self, app: &str, id: &str, sha: Option<&str>, why: &str) {
        if let Some(n) = &self.env().notifier {
            let mut e = model::event::Event::new(EventKind::AwaitingApproval, app, why);
            e.deploy_id = Some(id.to_string());
            e.sha = sha.map(str::to_string);
            n.send(e);
        }
    }

    /// Why the app's deploy window is closed at `now` (and when it opens), if it is: what a deferred row
    /// says, and how long until it may change.
    pub(super) fn window_closed(&self, app: &str, now: i64) -> Option<(String, Option<Duration>)> {
        let w = self.env().apps.get(app)?.windows.clone()?;
        match w.state(now) {
            crate::config::WindowState::Open => None,
            crate::config::WindowState::Closed { until, why } => Some(match until {
                Some(t) => (
                    format!(
                        "{why}; runs when it opens at {}",
                        crate::config::shown_instant(t, &w)
                    ),
                    Some(Duration::from_millis((t.as_millisecond() - now).max(0) as u64)),
                ),
                None => (format!("{why}; no window opens within a year"), None),
            }),
        }
    }

    /// Before each claim: an app whose window is closed keeps its automatic requests deferred; one whose
    /// window is open (and that no pause holds) queues what it deferred. How long until the window may
    /// change (none: no window, or open).
    async fn settle_window(&self, app: &str) -> Option<Duration> {
        self.env().apps.get(app)?.windows.as_ref()?;
        let (name, now) = (app.to_string(), model::now_ms());
        match self.window_closed(app, now) {
            Some((why, wait)) => {
                let moved = self
                    .env()
                    .store
                    .call(move |c| store::defer_queued(c, &name, &why))
                    .await;
                if let Ok(n @ 1..) = moved {
                    tracing::info!(app = %app, "{n} request(s) deferred: the deploy window is closed");
                }
                Some(
                    wait.unwrap_or(Duration::from_secs(3600))
                        .clamp(Duration::from_secs(1), Duration::from_secs(3600)),
                )
            }
            None => {
                let moved = self
                    .env()
                    .store
                    .call(move |c| store::release_deferred(c, &name))
                    .await;
                if let Ok(n @ 1..) = moved {
                    tracing::info!(app = %app, "the deploy window is open: {n} deferred request(s) queued");
                }
                None
            }
        }
    }

    /// `haul pause`: holds `app` (none: every app) for automatic triggers, which are recorded `deferred`
    /// until `resume`; the people are told. The hold, and whether it is new (pausing twice keeps the first).
    pub async fn pause(
        &self,
        app: Option<&str>,
        actor: &str,
        reason: Option<String>,
    ) -> Result<(store::Hold, bool), StoreError> {
        let key = app.unwrap_or("*").to_string();
        let (actor, now) = (model::clean_actor(actor), model::now_ms());
        let reason = reason.map(|r| model::clean_actor(&r)).filter(|r| !r.is_empty());
        let (hold, new) = self
            .env()
            .store
            .call(move |c| store::pause(c, &key, &actor, reason.as_deref(), now))
            .await?;
        if new {
            tracing::warn!(app = %hold.app, "paused by {}: automatic triggers are deferred until `haul resume`", hold.actor);
            self.tell_hold(EventKind::Paused, &hold.app, &hold.actor, hold.why());
        }
        Ok((hold, new))
    }

    /// `haul resume`: lifts the hold on `app` (none: the one on every app); what it deferred is queued, and
    /// the newest of it runs. The hold lifted (none: there was none) and the apps whose requests now run.
    pub async fn resume(
        &self,
        app: Option<&str>,
        actor: &str,
    ) -> Result<(Option<store::Hold>, Vec<String>), StoreError> {
        let key = app.unwrap_or("*").to_string();
        let (lifted, released) = self.env().store.call(move |c| store::resume(c, &key)).await?;
        for a in &released {
            if let Some(n) = self.wake_of(a) {
                n.notify_one();
            }
        }
        if let Some(h) = &lifted {
            let actor = model::clean_actor(actor);
            tracing::info!(app = %h.app, "resumed by {actor}; {} app(s) have deferred requests to run", released.len());
            let why = format!(
                "resumed by {actor} (paused by {} since {}); deferred requests run now",
                h.actor,
                model::compact_utc(h.since_ms)
            );
            self.tell_hold(EventKind::Resumed, &h.app, &actor, why);
        }
        Ok((lifted, released))
    }

    fn tell_hold(&self, kind: EventKind, app: &str, actor: &str, why: String) {
        if let Some(n) = &self.env().notifier {
            let mut e = crate::model::event::Event::new(kind, app, why);
            e.actor = Some(actor.to_string());
            n.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::deploy::testkit::{sha, webhook, Fixture};
    use crate::model::State;
    use crate::store::{self, Enqueued};

    const APP: &str = r#"
[apps.blog]
repo = "repo.git"
path = "srv/blog"
approve = true
approve_within = "1m"
"#;

    /// Waiting for an approval: coalesced to the newest, approved (by whom) or rejected, and expired after
    /// `approve_within` with nothing run.
    #[tokio::test]
    async fn approvals_wait_coalesce_run_on_approve_and_expire() {
        let fx = Fixture::new(APP);
        let q = fx.queue();
        let first = q.submit(webhook("blog", &sha('1'))).await.expect("submit");
        let Enqueued::Recorded {
            held: Some((State::AwaitingApproval, why)),
            ..
        } = &first
        else {
            panic!("{first:?}");
        };
        assert!(
            why.contains("haul approve blog") && why.contains("expires at"),
            "{why}"
        );
        let second = q.submit(webhook("blog", &sha('2'))).await.expect("submit");
        assert_eq!(
            fx.row(first.id()).await.state,
            State::Superseded,
            "coalesced to the newest"
        );
        assert_eq!(fx.row(second.id()).await.state, State::AwaitingApproval);
        // A person's deploy is not asked for an approval.
        let manual = crate::model::DeployRequest::new("blog", crate::model::Trigger::Manual, "alice");
        let m = q.submit(manual).await.expect("submit");
        assert_eq!(fx.row(m.id()).await.state, State::Queued);

        let approved = q.approve("blog", "bob").await.expect("approve");
        assert_eq!(approved.as_deref(), Some(second.id().as_str()));
        let row = fx.row(second.id()).await;
        assert_eq!(
            (row.state, row.approved_by.as_deref()),
            (State::Queued, Some("bob"))
        );
        assert_eq!(
            q.approve("blog", "bob").await.expect("approve"),
            None,
            "nothing left to approve"
        );

        let third = q.submit(webhook("blog", &sha('3'))).await.expect("submit");
        let rejected = q.reject("blog", "carol").await.expect("reject");
        assert_eq!(rejected, vec![third.id().to_string()]);
        let row = fx.row(third.id()).await;
        assert_eq!(row.state, State::Ignored);
        assert!(row.reason.unwrap_or_default().contains("rejected by carol"));

        // One that waited past approve_within (requested two minutes ago) is expired when the worker looks.
        let old = webhook("blog", &sha('4'));
        let gate = q.gate(&old, crate::model::now_ms());
        let then = crate::model::now_ms() - 120_000;
        let stale = fx
            .store
            .call(move |c| store::enqueue_held(c, &old, then, &gate))
            .await
            .expect("enqueue");
        assert_eq!(fx.row(stale.id()).await.state, State::AwaitingApproval);
        assert_eq!(q.settle("blog").await, None, "nothing else waits");
        let row = fx.row(stale.id()).await;
        assert_eq!(row.state, State::Expired);
        assert!(row.reason.unwrap_or_default().contains("no approval within"));
    }
}
