//! What a deploy tells the people watching: the notification events, and the handle the queue sends them
//! through. Vocabulary only: delivery (targets, retries, de-duplication) is `ops::notify`'s, and the queue
//! never needs to know it exists.

use serde::Serialize;
use tokio::sync::mpsc;

use super::{now_ms, State};

/// What happened, for a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Succeeded,
    Failed,
    RolledBack,
    Interrupted,
    /// No successful deploy within `alert_if_no_success_within`.
    Stale,
    /// A successful deploy after a `Stale` alert.
    Recovered,
    /// A fleet rollout stopped: more hosts failed than `max_failures` allows (sent by the conductor).
    Halted,
    /// `haul pause`: automatic triggers are held (deferred) until `haul resume`; who, when and why.
    Paused,
    /// `haul resume`: what was held runs (the newest of it).
    Resumed,
    /// A deploy waits for `haul approve` (an app with `approve = true`).
    AwaitingApproval,
    /// A deploy waited longer than `approve_within` for an approval and will never run.
    Expired,
    /// `gate = "ci"`: CI failed on a commit a push asked for; it will never run.
    CiFailed,
    /// A deploy succeeded, but one of its `after` steps failed (the release stays live).
    AfterFailed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
            EventKind::RolledBack => "rolled_back",
            EventKind::Interrupted => "interrupted",
            EventKind::Stale => "stale",
            EventKind::Recovered => "recovered",
            EventKind::Halted => "halted",
            EventKind::Paused => "paused",
            EventKind::Resumed => "resumed",
            EventKind::AwaitingApproval => "awaiting_approval",
            EventKind::Expired => "expired",
            EventKind::CiFailed => "ci_failed",
            EventKind::AfterFailed => "after_failed",
        }
    }
    /// Every event, in the order the configuration reference lists them.
    pub const ALL: [EventKind; 13] = [
        EventKind::Failed,
        EventKind::CiFailed,
        EventKind::AfterFailed,
        EventKind::Halted,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::AwaitingApproval,
        EventKind::Expired,
        EventKind::RolledBack,
        EventKind::Interrupted,
        EventKind::Stale,
        EventKind::Recovered,
        EventKind::Succeeded,
    ];
    /// What a `[[notify]]` target without `events` is told: every problem and the recovery, not successes.
    pub const DEFAULT: [EventKind; 12] = [
        EventKind::Failed,
        EventKind::CiFailed,
        EventKind::AfterFailed,
        EventKind::Halted,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::AwaitingApproval,
        EventKind::Expired,
        EventKind::RolledBack,
        EventKind::Interrupted,
        EventKind::Stale,
        EventKind::Recovered,
    ];
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
    pub(crate) fn from_state(s: State) -> Option<EventKind> {
        Some(match s {
            State::Succeeded => EventKind::Succeeded,
            State::Failed => EventKind::Failed,
            State::RolledBack => EventKind::RolledBack,
            State::Interrupted => EventKind::Interrupted,
            _ => return None,
        })
    }
    pub(crate) fn is_problem(self) -> bool {
        matches!(
            self,
            EventKind::Failed | EventKind::RolledBack | EventKind::Interrupted
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One notification: the wire type of the `webhook` target.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub app: String,
    pub deploy_id: Option<String>,
    pub sha: Option<String>,
    pub actor: Option<String>,
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
    /// How many identical failures were not told since the last notification.
    pub suppressed: u32,
}

impl Event {
    pub fn new(kind: EventKind, app: &str, reason: impl Into<String>) -> Event {
        Event {
            kind,
            app: app.to_string(),
            deploy_id: None,
            sha: None,
            actor: None,
            reason: reason.into(),
            at: now_ms(),
            suppressed: 0,
        }
    }

    /// One line for a person.
    pub fn text(&self) -> String {
        let what = match self.kind {
            EventKind::Succeeded => "deployed",
            EventKind::Failed => "deploy FAILED",
            EventKind::RolledBack => "deploy ROLLED BACK",
            EventKind::Interrupted => "deploy INTERRUPTED",
            EventKind::Stale => "no successful deploy",
            EventKind::Recovered => "recovered",
            EventKind::Halted => "fleet rollout HALTED",
            EventKind::Paused => "PAUSED",
            EventKind::Resumed => "resumed",
            EventKind::AwaitingApproval => "deploy AWAITING APPROVAL",
            EventKind::Expired => "approval EXPIRED",
            EventKind::CiFailed => "CI FAILED, not deployed",
            EventKind::AfterFailed => "deployed, but an AFTER STEP FAILED",
        };
        let mut t = format!("haul: {} {what}: {}", self.app, self.reason);
        let mut extra = Vec::new();
        if let Some(sha) = &self.sha {
            extra.push(format!("sha {}", &sha[..sha.len().min(7)]));
        }
        if let Some(a) = &self.actor {
            extra.push(format!("by {a}"));
        }
        if let Some(id) = &self.deploy_id {
            extra.push(format!("deploy {id}"));
        }
        if self.suppressed > 0 {
            extra.push(format!(
                "{} identical failure(s) not told since the last alert",
                self.suppressed
            ));
        }
        if !extra.is_empty() {
            t.push_str(&format!(" ({})", extra.join(", ")));
        }
        t
    }
}

/// The handle deploys use: sending never blocks and never fails the sender.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::UnboundedSender<Event>,
}

impl Notifier {
    pub fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }
}

/// The handle deploys send through, and the receiving end for `ops::notify::spawn`.
pub(crate) fn channel() -> (Notifier, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Notifier { tx }, rx)
}
