//! The notifier's memory, so that a restart neither forgets nor repeats an alert: per app, the failure last
//! told (its de-duplication signature, when it was sent, how many identical ones were held back since) and
//! the dead-man's switch's open alert. The policy (what is told when) is `ops::notify`'s; this is only its
//! storage.

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;

/// The failure alert last told for `app`: (signature, sent_at, suppressed since).
pub(crate) fn failure_alert(c: &Connection, app: &str) -> Result<Option<(String, i64, u32)>, StoreError> {
    Ok(c.query_row(
        "SELECT signature, sent_at, suppressed FROM alerts WHERE app = ?1 AND kind = 'failure'",
        params![app],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?)
}

/// One more identical failure held back.
pub(crate) fn suppress_failure(c: &Connection, app: &str) -> Result<(), StoreError> {
    c.execute(
        "UPDATE alerts SET suppressed = suppressed + 1 WHERE app = ?1 AND kind = 'failure'",
        params![app],
    )?;
    Ok(())
}

/// A failure told now: it becomes the one later failures are compared with.
pub(crate) fn told_failure(c: &Connection, app: &str, signature: &str, at: i64) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO alerts (app, kind, signature, first_at, sent_at, suppressed) VALUES (?1, 'failure', ?2, ?3, ?3, 0)
         ON CONFLICT (app, kind) DO UPDATE SET signature = ?2, sent_at = ?3, suppressed = 0",
        params![app, signature, at],
    )?;
    Ok(())
}

/// A success: the next failure is told whatever it is.
pub(crate) fn clear_failure(c: &Connection, app: &str) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM alerts WHERE app = ?1 AND kind = 'failure'",
        params![app],
    )?;
    Ok(())
}

/// When the dead-man's switch measures from: the last successful deploy, or for an app that never
/// succeeded, the first request haul saw for it.
pub(crate) fn stale_since(c: &Connection, app: &str) -> Result<Option<i64>, StoreError> {
    let last_success: Option<i64> = c.query_row(
        "SELECT max(finished_at) FROM deploys WHERE app = ?1 AND state = 'succeeded'",
        params![app],
        |r| r.get(0),
    )?;
    match last_success {
        Some(t) => Ok(Some(t)),
        None => Ok(c.query_row(
            "SELECT min(requested_at) FROM deploys WHERE app = ?1",
            params![app],
            |r| r.get(0),
        )?),
    }
}

/// The dead-man's switch's open alert for `app`: (first_at, sent_at).
pub(crate) fn stale_alert(c: &Connection, app: &str) -> Result<Option<(i64, i64)>, StoreError> {
    Ok(c.query_row(
        "SELECT first_at, sent_at FROM alerts WHERE app = ?1 AND kind = 'stale'",
        params![app],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// The dead-man's switch told `app` is stale, first (a new alert) or again.
pub(crate) fn told_stale(c: &Connection, app: &str, now: i64) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO alerts (app, kind, signature, first_at, sent_at) VALUES (?1, 'stale', '', ?2, ?2)
         ON CONFLICT (app, kind) DO UPDATE SET sent_at = ?2",
        params![app, now],
    )?;
    Ok(())
}

/// `app` deployed successfully again: its stale alert is over.
pub(crate) fn clear_stale(c: &Connection, app: &str) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM alerts WHERE app = ?1 AND kind = 'stale'",
        params![app],
    )?;
    Ok(())
}
