//! Notifications and the dead-man's switch. A deployer that dies quietly is worse than none, so haul says
//! when something went wrong (a deploy failed, was rolled back or interrupted), when an app has gone too long
//! without a successful deploy (`alert_if_no_success_within`), and when it recovered.
//!
//! Delivery never blocks or fails a deploy: events go through a channel to one task, which sends each to the
//! matching `[[notify]]` targets with a few bounded retries and logs what it could not deliver. HTTP targets
//! are reached with the system `curl` (through the one subprocess runner: haul carries no TLS stack of its
//! own), email with the local `sendmail`. Repeated identical failures are told once per `realert_every`, and
//! the alert state lives in the audit database, so a restart neither forgets nor repeats an alert.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{Config, NotifyKind, NotifyTarget};
use crate::infra::runner::{self, Cmd};
use crate::model;
use crate::model::event::{Event, EventKind, Notifier};
use crate::store::{self, Conn, Store, StoreError};

/// A failure's identity for de-duplication: its kind and reason with shas, ids and numbers masked.
fn signature(kind: EventKind, reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().any(|c| c.is_ascii_digit()) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    format!("{}:{out}", kind.as_str())
}

/// Decides whether a problem event is told now. A success clears the app's failure alert.
fn admit(c: &Conn, e: &mut Event, realert_ms: i64) -> Result<bool, StoreError> {
    let kind = e.kind;
    if kind == EventKind::Succeeded {
        store::clear_failure(c, &e.app)?;
        return Ok(true);
    }
    if !kind.is_problem() {
        return Ok(true);
    }
    let sig = signature(kind, &e.reason);
    match store::failure_alert(c, &e.app)? {
        Some((s, sent_at, _)) if s == sig && e.at - sent_at < realert_ms => {
            store::suppress_failure(c, &e.app)?;
            Ok(false)
        }
        last => {
            e.suppressed = last.filter(|(s, _, _)| *s == sig).map_or(0, |(_, _, n)| n);
            store::told_failure(c, &e.app, &sig, e.at)?;
            Ok(true)
        }
    }
}

/// Starts the delivery task and the dead-man's switch.
pub fn spawn(
    cfg: &Config,
    store: Store,
    notifier: Notifier,
    rx: mpsc::UnboundedReceiver<Event>,
    stop: watch::Receiver<bool>,
    workers_done: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![spawn_delivery(cfg, store.clone(), rx, workers_done)];
    let watched: Vec<(String, i64, i64)> = cfg
        .apps
        .values()
        .filter_map(|a| {
            a.alert_if_no_success_within.map(|w| {
                (
                    a.name.clone(),
                    w.as_millis() as i64,
                    a.realert_every.as_millis() as i64,
                )
            })
        })
        .collect();
    if !watched.is_empty() {
        tasks.push(tokio::spawn(dead_mans_switch(watched, store, notifier, stop)));
    }
    tasks
}

/// Starts only the delivery task: what an in-process `haul deploy` needs to tell how its deploy ended. It
/// delivers what it is sent until `done` turns true, then what is queued, within a few seconds.
pub fn spawn_delivery(
    cfg: &Config,
    store: Store,
    rx: mpsc::UnboundedReceiver<Event>,
    done: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let targets: Arc<Vec<NotifyTarget>> = Arc::new(cfg.notify.clone());
    let realert: std::collections::HashMap<String, i64> = cfg
        .apps
        .values()
        .map(|a| (a.name.clone(), a.realert_every.as_millis() as i64))
        .collect();
    tokio::spawn(deliver_loop(rx, targets, store, realert, done))
}

async fn deliver_loop(
    mut rx: mpsc::UnboundedReceiver<Event>,
    targets: Arc<Vec<NotifyTarget>>,
    store: Store,
    realert: std::collections::HashMap<String, i64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            _ = stop.changed() => break,
        };
        handle(event, &targets, &store, &realert, &mut deliveries).await;
        while deliveries.try_join_next().is_some() {}
    }
    // Stopping: what is already queued (a deploy interrupted by this very stop) still goes out, briefly.
    while let Ok(event) = rx.try_recv() {
        handle(event, &targets, &store, &realert, &mut deliveries).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while deliveries.join_next().await.is_some() {}
    })
    .await;
}

async fn handle(
    mut event: Event,
    targets: &[NotifyTarget],
    store: &Store,
    realert: &std::collections::HashMap<String, i64>,
    deliveries: &mut tokio::task::JoinSet<()>,
) {
    let window = realert.get(&event.app).copied().unwrap_or(24 * 3600 * 1000);
    let mut probe = event.clone();
    let admitted = store
        .call(move |c| admit(c, &mut probe, window).map(|ok| (ok, probe.suppressed)))
        .await;
    match admitted {
        Ok((false, _)) => {
            tracing::info!(app = %event.app, "notification suppressed: the same failure was told less than realert_every ago");
            return;
        }
        Ok((true, suppressed)) => event.suppressed = suppressed,
        Err(e) => tracing::warn!("notification state unavailable ({e}); sending anyway"),
    }
    for t in targets.iter().filter(|t| t.wants(&event.app, event.kind)) {
        let (t, e) = (t.clone(), event.clone());
        // Each delivery on its own: a slow target holds up nobody.
        deliveries.spawn(async move { deliver_with_retries(&t, &e).await });
    }
}

async fn deliver_with_retries(t: &NotifyTarget, e: &Event) {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match deliver(t, e).await {
            Ok(()) => {
                tracing::info!(app = %e.app, target = %t.describe(), "notified: {}", e.kind);
                return;
            }
            Err(err) if attempt < ATTEMPTS => {
                let wait =
                    crate::model::failure::backoff(attempt, Duration::from_secs(1), Duration::from_secs(20));
                tracing::warn!(target = %t.describe(), "notification attempt {attempt}/{ATTEMPTS} failed: {err}; retrying in {:.1}s", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            Err(err) => {
                tracing::error!(target = %t.describe(), "could not notify ({} for {}): {err}", e.kind, e.app)
            }
        }
    }
}

fn curl(url: &str, headers: &[(String, String)], body: Vec<u8>) -> Cmd {
    let mut c = Cmd::new("notify", "curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "--proto",
            "=http,https",
            "--no-progress-meter",
            "-X",
            "POST",
        ])
        .timeout(Duration::from_secs(15));
    for (k, v) in headers {
        c = c.arg("-H").arg(format!("{k}: {v}"));
    }
    c = c.args(["--data-binary", "@-", "--"]).arg(url);
    c.stdin = Some(body);
    c.redact = vec![url.to_string()];
    c
}

async fn deliver(t: &NotifyTarget, e: &Event) -> Result<(), String> {
    let text = e.text();
    let cmd = match &t.kind {
        NotifyKind::Webhook { url, secret_file } => {
            let body = serde_json::to_vec(e).map_err(|err| err.to_string())?;
            let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
            if let Some(f) = secret_file {
                crate::config::check_private_file(f)?;
                let secret = std::fs::read_to_string(f)
                    .map_err(|err| format!("cannot read {}: {err}", f.display()))?;
                let secret = secret.trim().as_bytes();
                let id = format!("msg_{}_{}", e.at, fastrand::u32(..));
                let ts = model::now_ms() / 1000;
                headers.push(("webhook-id".into(), id.clone()));
                headers.push(("webhook-timestamp".into(), ts.to_string()));
                headers.push((
                    "webhook-signature".into(),
                    crate::intake::sign_standard(secret, &id, ts, &body),
                ));
            }
            curl(url, &headers, body)
        }
        NotifyKind::Slack { url } => {
            let body = serde_json::json!({ "text": text }).to_string().into_bytes();
            curl(url, &[("content-type".into(), "application/json".into())], body)
        }
        NotifyKind::Ntfy { url } => {
            let problem = e.kind.is_problem() || matches!(e.kind, EventKind::Stale | EventKind::Halted);
            let headers = vec![
                ("Title".to_string(), format!("haul: {} {}", e.app, e.kind)),
                (
                    "Priority".to_string(),
                    if problem { "high" } else { "default" }.to_string(),
                ),
                (
                    "Tags".to_string(),
                    if problem { "warning" } else { "white_check_mark" }.to_string(),
                ),
            ];
            curl(url, &headers, text.clone().into_bytes())
        }
        NotifyKind::Email { to, from, sendmail } => {
            let subject = format!("haul: {} {}", e.app, e.kind);
            let msg = format!(
                "From: {from}\nTo: {}\nSubject: {subject}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n",
                to.join(", ")
            );
            let mut c = Cmd::new("notify", sendmail.as_str())
                .args(["-t", "-i"])
                .timeout(Duration::from_secs(30));
            c.stdin = Some(msg.into_bytes());
            c
        }
    };
    runner::run(&cmd, None)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}

/// Every minute: for each watched app, has a deploy succeeded within its window? The clock is the audit log,
/// so the switch survives restarts; the alert state is in the database, so it neither repeats nor is lost.
async fn dead_mans_switch(
    apps: Vec<(String, i64, i64)>,
    store: Store,
    notifier: Notifier,
    mut stop: watch::Receiver<bool>,
) {
    let every = std::env::var("HAUL_DEADMAN_CHECK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_millis);
    loop {
        for (app, within, realert) in &apps {
            let (a, within, realert) = (app.clone(), *within, *realert);
            let verdict = store
                .call(move |c| stale_check(c, &a, within, realert, model::now_ms()))
                .await;
            match verdict {
                Ok(Some(e)) => notifier.send(e),
                Ok(None) => {}
                Err(e) => tracing::warn!(app = %app, "dead-man's switch cannot read the audit log: {e}"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The dead-man's switch for one app at `now`: the event to send, if any, with the alert state updated.
pub fn stale_check(
    c: &Conn,
    app: &str,
    within: i64,
    realert: i64,
    now: i64,
) -> Result<Option<Event>, StoreError> {
    let alert = store::stale_alert(c, app)?;
    let Some(since) = store::stale_since(c, app)? else {
        return Ok(None);
    };
    let overdue = now - since > within;
    let human =
        |ms: i64| humantime::format_duration(Duration::from_secs((ms / 1000).max(0) as u64)).to_string();
    match (overdue, alert) {
        (true, None) => {
            store::told_stale(c, app, now)?;
            Ok(Some(Event::new(
                EventKind::Stale,
                app,
                format!(
                    "the last successful deploy was {} ago (alert_if_no_success_within)",
                    human(now - since)
                ),
            )))
        }
        (true, Some((_, sent_at))) if now - sent_at >= realert => {
            store::told_stale(c, app, now)?;
            Ok(Some(Event::new(
                EventKind::Stale,
                app,
                format!(
                    "still no successful deploy: the last was {} ago",
                    human(now - since)
                ),
            )))
        }
        (false, Some((first_at, _))) => {
            store::clear_stale(c, app)?;
            Ok(Some(Event::new(
                EventKind::Recovered,
                app,
                format!(
                    "a deploy succeeded again, {} after the first alert",
                    human(now - first_at)
                ),
            )))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Conn {
        store::memory()
    }

    /// A deploy of `app` requested at 0 that succeeded at `at`.
    fn succeeded(c: &Conn, app: &str, at: i64) {
        use crate::model::{DeployRequest, Outcome, State, Trigger};
        store::enqueue(c, &DeployRequest::new(app, Trigger::Manual, "test"), 0).expect("enqueue");
        let row = store::claim_next(c, app, 0).expect("claim").expect("queued");
        store::finish(c, &row.id, &Outcome::new(State::Succeeded, "live"), at).expect("finish");
    }

    #[test]
    fn identical_failures_are_told_once_per_window() {
        let c = db();
        let mut e = Event::new(
            EventKind::Failed,
            "blog",
            "build step 1/1 exited with status 1 (deploy 20261126T101010-abc123, sha 1a2b3c4d)",
        );
        assert!(admit(&c, &mut e, 1000).expect("admit"));
        for i in 0..5 {
            let mut again = Event::new(
                EventKind::Failed,
                "blog",
                format!(
                    "build step 1/1 exited with status 1 (deploy 20261126T1010{i}0-zzz999, sha 9f8e7d6c)"
                ),
            );
            again.at = e.at + 10;
            assert!(
                !admit(&c, &mut again, 1000).expect("admit"),
                "the same failure again is suppressed"
            );
        }
        let mut other = Event::new(
            EventKind::Failed,
            "blog",
            "fetch failed (permanent): the deploy key was refused",
        );
        other.at = e.at + 20;
        assert!(
            admit(&c, &mut other, 1000).expect("admit"),
            "a different failure is told"
        );
        let mut late = Event::new(
            EventKind::Failed,
            "blog",
            "fetch failed (permanent): the deploy key was refused",
        );
        late.at = e.at + 2000;
        assert!(
            admit(&c, &mut late, 1000).expect("admit"),
            "re-told after the window"
        );
        let mut ok = Event::new(EventKind::Succeeded, "blog", "live");
        assert!(admit(&c, &mut ok, 1000).expect("admit"));
        let mut after = Event::new(
            EventKind::Failed,
            "blog",
            "fetch failed (permanent): the deploy key was refused",
        );
        after.at = late.at + 1;
        assert!(admit(&c, &mut after, 1000).expect("admit"), "a success resets it");
    }

    #[test]
    fn dead_mans_switch_alerts_realerts_and_recovers() {
        let c = db();
        succeeded(&c, "blog", 1000);
        let h = 3_600_000;
        assert!(stale_check(&c, "blog", 24 * h, 24 * h, 1000 + 23 * h)
            .expect("check")
            .is_none());
        let first = stale_check(&c, "blog", 24 * h, 24 * h, 1000 + 25 * h)
            .expect("check")
            .expect("alert");
        assert_eq!(first.kind, EventKind::Stale);
        assert!(
            stale_check(&c, "blog", 24 * h, 24 * h, 1000 + 30 * h)
                .expect("check")
                .is_none(),
            "not again yet"
        );
        let again = stale_check(&c, "blog", 24 * h, 24 * h, 1000 + 49 * h)
            .expect("check")
            .expect("re-alert");
        assert_eq!(again.kind, EventKind::Stale);
        succeeded(&c, "blog", 1000 + 50 * h);
        let rec = stale_check(&c, "blog", 24 * h, 24 * h, 1000 + 50 * h + 5)
            .expect("check")
            .expect("recovered");
        assert_eq!(rec.kind, EventKind::Recovered);
        assert!(stale_check(&c, "blog", 24 * h, 24 * h, 1000 + 50 * h + 10)
            .expect("check")
            .is_none());
    }

    #[test]
    fn signatures_mask_what_changes() {
        assert_eq!(
            signature(EventKind::Failed, "step 1 exited 2 at abc1234f"),
            signature(EventKind::Failed, "step 3 exited 9 at 99ffee00")
        );
        assert_ne!(
            signature(EventKind::Failed, "fetch"),
            signature(EventKind::RolledBack, "fetch")
        );
    }
}
