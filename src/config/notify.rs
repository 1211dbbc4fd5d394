//! `[[notify]]`: where haul tells people that a deploy failed, rolled back, went stale or recovered.
//!
//! Only the targets are configured here; sending is `ops::notify`'s. A table array has no names, so errors
//! number the targets from 1 in file order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::files::ConfigDir;
use super::raw::RawNotify;
use super::AppConfig;
use crate::model::event::EventKind;

/// One `[[notify]]` target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    pub kind: NotifyKind,
    /// Only these apps (empty: all).
    pub apps: Vec<String>,
    /// Only these events (`failed`, `rolled_back`, `interrupted`, `stale`, `recovered`, `succeeded`).
    pub events: Vec<EventKind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyKind {
    /// A JSON POST, signed with Standard Webhooks when a secret is given.
    Webhook {
        url: String,
        secret_file: Option<PathBuf>,
    },
    /// A Slack-compatible incoming webhook.
    Slack { url: String },
    /// An ntfy topic URL.
    Ntfy { url: String },
    /// Mail through the local sendmail.
    Email {
        to: Vec<String>,
        from: String,
        sendmail: String,
    },
}

impl NotifyTarget {
    pub fn wants(&self, app: &str, event: EventKind) -> bool {
        (self.apps.is_empty() || self.apps.iter().any(|a| a == app)) && self.events.contains(&event)
    }
    pub(crate) fn describe(&self) -> String {
        match &self.kind {
            // Host only: paths and topics are often the secret.
            NotifyKind::Webhook { url, .. } => format!("webhook to {}", url_host(url)),
            NotifyKind::Slack { .. } => "slack".to_string(),
            NotifyKind::Ntfy { url } => format!("ntfy at {}", url_host(url)),
            NotifyKind::Email { to, .. } => format!("email {}", to.join(", ")),
        }
    }
}

fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// Every target, then the apps they filter on: those must be configured, or the filter matches nothing.
pub(crate) fn parse(
    raw: Vec<RawNotify>,
    dir: &ConfigDir,
    apps: &BTreeMap<String, AppConfig>,
) -> Result<Vec<NotifyTarget>, String> {
    let mut notify = Vec::new();
    for (i, n) in raw.into_iter().enumerate() {
        notify.push(parse_target(n, dir).map_err(|m| format!("[[notify]] #{}: {m}", i + 1))?);
    }
    for t in &notify {
        if let Some(bad) = t.apps.iter().find(|a| !apps.contains_key(*a)) {
            return Err(format!("[[notify]] names app {bad:?}, which is not configured"));
        }
    }
    Ok(notify)
}

fn parse_target(n: RawNotify, dir: &ConfigDir) -> Result<NotifyTarget, String> {
    let kind = parse_kind(&n, dir)?;
    let events = match n.events {
        Some(ev) => parse_events(&ev)?,
        None => EventKind::DEFAULT.to_vec(),
    };
    Ok(NotifyTarget {
        kind,
        apps: n.apps,
        events,
    })
}

fn parse_kind(n: &RawNotify, dir: &ConfigDir) -> Result<NotifyKind, String> {
    // Only the kinds that post somewhere need a URL; an email target's stray `url` is ignored.
    let url = || match &n.url {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(u.clone()),
        Some(u) => Err(format!("url {u:?} must be http:// or https://")),
        None => Err("needs `url`".to_string()),
    };
    Ok(match n.kind.as_str() {
        "webhook" => NotifyKind::Webhook {
            url: url()?,
            secret_file: n.secret_file.as_deref().map(|p| dir.resolve(p)),
        },
        "slack" => NotifyKind::Slack { url: url()? },
        "ntfy" => NotifyKind::Ntfy { url: url()? },
        "email" => parse_email(n)?,
        other => return Err(format!("kind {other:?} must be webhook, slack, ntfy or email")),
    })
}

/// The addresses become the mail's `To:` header, which `sendmail -t` takes its recipients from: a comma would
/// add a recipient, a control character a header.
fn parse_email(n: &RawNotify) -> Result<NotifyKind, String> {
    if n.to.is_empty()
        || n.to
            .iter()
            .any(|t| !t.contains('@') || t.chars().any(|c| c.is_control() || c == ','))
    {
        return Err("email needs `to`, a list of addresses".into());
    }
    let from = n.from.clone().unwrap_or_else(|| "haul".to_string());
    if from.chars().any(char::is_control) {
        return Err("`from` has control characters".into());
    }
    Ok(NotifyKind::Email {
        to: n.to.clone(),
        from,
        sendmail: n
            .sendmail
            .clone()
            .unwrap_or_else(|| "/usr/sbin/sendmail".to_string()),
    })
}

fn parse_events(names: &[String]) -> Result<Vec<EventKind>, String> {
    let mut kinds = Vec::with_capacity(names.len());
    for e in names {
        let Some(k) = EventKind::parse(e) else {
            let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err(format!("event {e:?} is not one of {}", all.join(", ")));
        };
        kinds.push(k);
    }
    Ok(kinds)
}
