//! A fleet app's worker. Its triggers (webhooks, polls, `haul deploy`) are not deployed here: each is handed
//! to the fleet's engine (a [`FleetLink`], which the server wires to the fleet agent), where the conductor
//! turns the newest into a rollout, and only then recorded `forwarded`. What this host deploys is what a
//! rollout assigns it (trigger `fleet`), through the same queue, lock, pipeline and audit as any deploy.
//!
//! Acknowledged means durable in a fleet too: a trigger that cannot be handed over (the engine away, no
//! quorum) stays `queued` in this host's audit and is handed over when the engine answers again, retried
//! with a backoff that doubles to a minute, jittered.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::queue::{recover, run_next_in, Queue};
use crate::model;
use crate::store::{self, DeployRow};

/// The way to the fleet's engine.
pub trait FleetLink: Send + Sync {
    /// Hands a trigger to the fleet (durably, or not at all), with the signed delivery it came in if it kept
    /// one; what to record as the reason.
    fn forward(
        &self,
        row: DeployRow,
        signed: Option<model::SignedDelivery>,
    ) -> BoxFuture<'static, Result<String, String>>;
}

pub(super) async fn worker(
    q: Arc<Queue>,
    link: Arc<dyn FleetLink>,
    app: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(wake) = q.wake_of(&app) else {
        return;
    };
    let env = q.env().clone();
    if let Err(e) = recover(&env, &app).await {
        tracing::error!(app = %app, "start-up recovery failed: {e}");
    }
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let handed = forward_all(&env, link.as_ref(), &app).await;
        failures = if handed { 0 } else { failures.saturating_add(1) };
        match run_next_in(&env, &app, true).await {
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => tracing::error!(app = %app, "cannot take the next fleet deploy: {e}"),
        }
        // Nothing to do: wait for a trigger or an assignment; after a failed hand-over, not longer than the
        // backoff before trying again.
        let wait = if failures == 0 {
            Duration::from_secs(3600)
        } else {
            model::failure::backoff(failures, Duration::from_secs(1), Duration::from_secs(60))
                .max(Duration::from_secs(1))
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Hands every waiting trigger to the fleet, oldest first; false if one could not be (it stays queued).
async fn forward_all(env: &super::queue::Env, link: &dyn FleetLink, app: &str) -> bool {
    let a = app.to_string();
    let rows = match env.store.call(move |c| store::to_forward(c, &a)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(app = %app, "cannot read the triggers to hand to the fleet: {e}");
            return false;
        }
    };
    for (row, signed) in rows {
        let id = row.id.clone();
        match link.forward(row, signed).await {
            Ok(reason) => {
                tracing::info!(deploy_id = %id, app = %app, "{reason}");
                let now = model::now_ms();
                let (i, r) = (id.clone(), reason.clone());
                if let Err(e) = env.store.call(move |c| store::forwarded(c, &i, &r, now)).await {
                    tracing::error!(deploy_id = %id, "cannot record the hand-over: {e}");
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(deploy_id = %id, app = %app, "cannot hand this trigger to the fleet yet: {e}; it stays queued here and is handed over when the engine answers");
                return false;
            }
        }
    }
    true
}
