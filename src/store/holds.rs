//! Holds: `haul pause APP` (or `--all`, kept as `*`) and `haul resume`. While an app is held, an automatic
//! trigger (a webhook, a poll) is recorded `deferred` instead of `queued`: durable, coalesced with newer
//! ones like any pending request, and queued when the hold is lifted. A person's `haul deploy` is never held.

use rusqlite::{params, Connection, OptionalExtension};

use super::{Conn, StoreError};

/// Who paused what, when and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Hold {
    /// The app, or `*` for every app (`haul pause --all`).
    pub app: String,
    pub actor: String,
    pub reason: Option<String>,
    pub since_ms: i64,
}

impl Hold {
    /// Why a trigger held by this is deferred, for its row and the webhook's reply.
    pub fn why(&self) -> String {
        let what = if self.app == "*" {
            "every app is"
        } else {
            "the app is"
        };
        let since = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.since_ms.max(0) as u64),
        );
        let resume = if self.app == "*" {
            "haul resume --all".to_string()
        } else {
            format!("haul resume {}", self.app)
        };
        match &self.reason {
            Some(r) => format!(
                "{what} paused by {} since {since}: {r}; runs on `{resume}`",
                self.actor
            ),
            None => format!(
                "{what} paused by {} since {since}; runs on `{resume}`",
                self.actor
            ),
        }
    }
}

/// One `holds` row, selected as `app, actor, reason, since`.
fn hold_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Hold> {
    Ok(Hold {
        app: r.get(0)?,
        actor: r.get(1)?,
        reason: r.get(2)?,
        since_ms: r.get(3)?,
    })
}

/// The hold on `app`, if any: its own, else the one on every app. (A database a daemon of before v12 still
/// has open, read by a newer `haul status`, has no holds.)
pub(crate) fn hold_of(conn: &Connection, app: &str) -> Result<Option<Hold>, StoreError> {
    let stmt = conn.prepare_cached(
        "SELECT app, actor, reason, since FROM holds WHERE app IN (?1, '*') ORDER BY app = '*' LIMIT 1",
    );
    let mut stmt = match stmt {
        Err(e) if e.to_string().contains("no such table") => return Ok(None),
        other => other?,
    };
    Ok(stmt.query_row(params![app], hold_row).optional()?)
}

/// Every hold, `*` first.
pub fn holds(conn: &Connection) -> Result<Vec<Hold>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT app, actor, reason, since FROM holds ORDER BY app != '*', app")?;
    let rows = stmt.query_map([], hold_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Holds `app` (or `*`); pausing what is paused already keeps the first pause (who and since). The hold.
pub(crate) fn pause(
    conn: &Conn,
    app: &str,
    actor: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<(Hold, bool), StoreError> {
    if let Some(h) = conn
        .prepare_cached("SELECT app, actor, reason, since FROM holds WHERE app = ?1")?
        .query_row(params![app], hold_row)
        .optional()?
    {
        return Ok((h, false));
    }
    conn.prepare_cached("INSERT INTO holds (app, actor, reason, since) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![app, actor, reason, now])?;
    let hold = Hold {
        app: app.to_string(),
        actor: actor.to_string(),
        reason: reason.map(str::to_string),
        since_ms: now,
    };
    Ok((hold, true))
}

/// The app's deploy window is closed: its queued automatic requests wait as `deferred` (with why) until it
/// opens. How many.
pub(crate) fn defer_queued(conn: &Conn, app: &str, why: &str) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE deploys SET state = 'deferred', reason = ?2
             WHERE app = ?1 AND state = 'queued' AND trigger IN ('webhook', 'poll')",
        )?
        .execute(params![app, why])?)
}

/// The app's deploy window is open: what it deferred is queued, unless a pause holds the app. How many.
pub(crate) fn release_deferred(conn: &Conn, app: &str) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE deploys SET state = 'queued', reason = NULL
             WHERE app = ?1 AND state = 'deferred'
               AND NOT EXISTS (SELECT 1 FROM holds WHERE holds.app IN (?1, '*'))",
        )?
        .execute(params![app])?)
}

/// Lifts the hold on `app` (or `*`): the deferred requests of every app no longer held are queued again.
/// The hold lifted (none: there was none), and the apps whose requests were queued.
pub(crate) fn resume(conn: &Conn, app: &str) -> Result<(Option<Hold>, Vec<String>), StoreError> {
    let lifted = conn
        .prepare_cached("DELETE FROM holds WHERE app = ?1 RETURNING app, actor, reason, since")?
        .query_row(params![app], hold_row)
        .optional()?;
    let mut stmt = conn.prepare_cached(
        "UPDATE deploys SET state = 'queued', reason = NULL
         WHERE state = 'deferred' AND (?1 = '*' OR app = ?1)
           AND NOT EXISTS (SELECT 1 FROM holds WHERE holds.app IN (deploys.app, '*'))
         RETURNING app",
    )?;
    let mut apps: Vec<String> = stmt
        .query_map(params![app], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    apps.sort();
    apps.dedup();
    Ok((lifted, apps))
}

/// `approve = true`: requests the worker found queued but never approved (a window or a pause released
/// them) wait for a person again, with why. How many.
pub(crate) fn await_approval(conn: &Conn, app: &str, why: &str) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE deploys SET state = 'awaiting_approval', reason = ?2
             WHERE app = ?1 AND state = 'queued' AND trigger IN ('webhook', 'poll') AND approved_by IS NULL",
        )?
        .execute(params![app, why])?)
}

/// `haul approve APP`: the newest request awaiting approval is queued, approved by `actor`; the older ones
/// it coalesced are superseded by it. Its id.
pub(crate) fn approve(conn: &Conn, app: &str, actor: &str, now: i64) -> Result<Option<String>, StoreError> {
    let id: Option<String> = conn
        .prepare_cached(
            "UPDATE deploys SET state = 'queued', approved_by = ?2, reason = NULL
             WHERE seq = (SELECT seq FROM deploys WHERE app = ?1 AND state = 'awaiting_approval'
                          ORDER BY seq DESC LIMIT 1)
             RETURNING id",
        )?
        .query_row(params![app, actor], |r| r.get(0))
        .optional()?;
    if let Some(id) = &id {
        conn.prepare_cached(
            "UPDATE deploys SET state = 'superseded', superseded_by = ?2, finished_at = ?3,
                    reason = 'superseded by ' || ?2 || ', approved by ' || ?4
             WHERE app = ?1 AND state = 'awaiting_approval'",
        )?
        .execute(params![app, id, now, actor])?;
    }
    Ok(id)
}

/// `haul reject APP`: every request awaiting approval is recorded `ignored`, rejected by `actor`. Their ids.
pub(crate) fn reject(conn: &Conn, app: &str, actor: &str, now: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deploys SET state = 'ignored', finished_at = ?3,
                reason = 'rejected by ' || ?2 || '; nothing deployed'
         WHERE app = ?1 AND state = 'awaiting_approval' RETURNING id",
    )?;
    let ids = stmt
        .query_map(params![app, actor, now], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(ids)
}

/// Requests that waited for an approval since before `before` are recorded `expired`, with why. Their ids
/// and shas.
pub(crate) fn expire_approvals(
    conn: &Conn,
    app: &str,
    before: i64,
    why: &str,
    now: i64,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deploys SET state = 'expired', finished_at = ?4, reason = ?3
         WHERE app = ?1 AND state = 'awaiting_approval' AND requested_at < ?2 RETURNING id, sha",
    )?;
    let rows = stmt
        .query_map(params![app, before, why, now], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// When the oldest request still awaiting approval was made (Unix ms).
pub(crate) fn oldest_awaiting(conn: &Connection, app: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT min(requested_at) FROM deploys WHERE app = ?1 AND state = 'awaiting_approval'",
        )?
        .query_row(params![app], |r| r.get(0))?)
}

/// `gate = "ci"` (`why`: which workflow it waits for): what a new automatic request for `sha` is recorded as.
/// CI already passed on it: nothing holds it here. CI failed on it: `ci_failed` at once. Not heard of yet:
/// `awaiting_ci`.
pub(crate) fn ci_verdict(
    conn: &Connection,
    app: &str,
    sha: Option<&str>,
    why: Option<&str>,
) -> Result<Option<(crate::model::State, String)>, StoreError> {
    use crate::model::State;
    let Some(why) = why else {
        return Ok(None);
    };
    let Some(sha) = sha else {
        return Ok(Some((State::AwaitingCi, why.to_string())));
    };
    let known: Option<(bool, String)> = conn
        .prepare_cached("SELECT passed, what FROM ci_results WHERE app = ?1 AND sha = ?2")?
        .query_row(params![app, sha], |r| Ok((r.get::<_, i64>(0)? == 1, r.get(1)?)))
        .optional()?;
    Ok(match known {
        Some((true, _)) => None,
        Some((false, what)) => Some((
            State::CiFailed,
            format!("CI failed on this commit ({what}); nothing deployed"),
        )),
        None => Some((State::AwaitingCi, why.to_string())),
    })
}

/// The forge's word on CI for `sha`: kept, and the requests waiting on it are queued (passed) or recorded
/// `ci_failed`. Their ids.
/// `None`: this very body was recorded before (a replay, or the forge's redelivery), and nothing changed.
pub(crate) fn record_ci(
    conn: &Conn,
    app: &str,
    sha: &str,
    passed: bool,
    what: &str,
    digest: &str,
    now: i64,
) -> Result<Option<Vec<String>>, StoreError> {
    let fresh = conn
        .prepare_cached("INSERT OR IGNORE INTO ci_seen (app, digest, at) VALUES (?1, ?2, ?3)")?
        .execute(params![app, digest, now])?;
    if fresh == 0 {
        return Ok(None);
    }
    conn.prepare_cached(
        "INSERT INTO ci_results (app, sha, passed, what, at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (app, sha) DO UPDATE SET passed = excluded.passed, what = excluded.what, at = excluded.at",
    )?
    .execute(params![app, sha, i64::from(passed), what, now])?;
    let ids = if passed {
        let mut stmt = conn.prepare_cached(
            "UPDATE deploys SET state = 'queued', reason = NULL
             WHERE app = ?1 AND sha = ?2 AND state = 'awaiting_ci' RETURNING id",
        )?;
        let ids = stmt
            .query_map(params![app, sha], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        ids
    } else {
        let mut stmt = conn.prepare_cached(
            "UPDATE deploys SET state = 'ci_failed', finished_at = ?4,
                    reason = 'CI failed on this commit (' || ?3 || '); nothing deployed'
             WHERE app = ?1 AND sha = ?2 AND state = 'awaiting_ci' RETURNING id",
        )?;
        let ids = stmt
            .query_map(params![app, sha, what, now], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        ids
    };
    Ok(Some(ids))
}

/// `gate = "ci"`: queued automatic requests whose commit CI has not passed (a pause or a window released
/// them) wait for it again. How many.
pub(crate) fn await_ci(conn: &Conn, app: &str, why: &str) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE deploys SET state = 'awaiting_ci', reason = ?2
             WHERE app = ?1 AND state = 'queued' AND trigger IN ('webhook', 'poll')
               AND NOT EXISTS (SELECT 1 FROM ci_results r
                               WHERE r.app = deploys.app AND r.sha = deploys.sha AND r.passed = 1)",
        )?
        .execute(params![app, why])?)
}
