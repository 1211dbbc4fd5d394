//! What `ops::report` has told the forges: per deploy, the state its commit status was last set for.

use rusqlite::{params, Connection, OptionalExtension};

use super::StoreError;
use crate::model::State;

/// A deploy as the reporter sees it.
#[derive(Debug, Clone)]
pub(crate) struct ReportRow {
    pub(crate) seq: i64,
    pub(crate) id: String,
    pub(crate) app: String,
    pub(crate) sha: Option<String>,
    pub(crate) state: State,
    pub(crate) reason: Option<String>,
    /// The state last told (none: nothing yet).
    pub(crate) reported: Option<State>,
    /// It ran (a pipeline started), whatever its state now.
    pub(crate) started: bool,
}

/// Where a reporter starting now begins: after the newest deploy requested before `before` (a restart
/// tells what changed while it was down, not the whole history).
pub(crate) fn report_floor(conn: &Connection, before: i64) -> Result<i64, StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq FROM deploys WHERE requested_at < ?1 ORDER BY seq DESC LIMIT 1",
            params![before],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0))
}

/// Up to `limit` of `app`'s deploys after `floor`, oldest first, with what was last told of each.
pub(crate) fn report_rows(
    conn: &Connection,
    app: &str,
    floor: i64,
    limit: usize,
) -> Result<Vec<ReportRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT} WHERE d.app = ?1 AND d.seq > ?2 ORDER BY d.seq LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![app, floor, limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const SELECT: &str = "SELECT d.seq, d.id, d.app, d.sha, d.state, d.reason, r.state, d.started_at IS NOT NULL
     FROM deploys d LEFT JOIN reports r ON r.deploy_id = d.id";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
        seq: r.get(0)?,
        id: r.get(1)?,
        app: r.get(2)?,
        sha: r.get(3)?,
        state: State::parse(&r.get::<_, String>(4)?).unwrap_or(State::Interrupted),
        reason: r.get(5)?,
        reported: r.get::<_, Option<String>>(6)?.as_deref().and_then(State::parse),
        started: r.get(7)?,
    })
}

/// The given deploys (by `seq`), with what was last told of each.
pub(crate) fn report_rows_at(conn: &Connection, seqs: &[i64]) -> Result<Vec<ReportRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} WHERE d.seq = ?1"))?;
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        out.extend(
            stmt.query_map(params![seq], row)?
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    Ok(out)
}

/// The deploys of `apps` that may still change (waiting, queued, running), oldest first.
pub(crate) fn report_open(conn: &Connection, apps: &[String]) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM deploys WHERE app = ?1 AND state IN
         ('queued', 'running', 'deferred', 'awaiting_approval', 'awaiting_ci') ORDER BY seq",
    )?;
    let mut out = Vec::new();
    for app in apps {
        out.extend(
            stmt.query_map(params![app], |r| r.get::<_, i64>(0))?
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    Ok(out)
}

/// Records that deploy `id`'s status was told (or given up on) for `state`.
pub(crate) fn mark_reported(conn: &Connection, id: &str, state: State, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO reports (deploy_id, state, at) VALUES (?1, ?2, ?3)
         ON CONFLICT (deploy_id) DO UPDATE SET state = excluded.state, at = excluded.at",
        params![id, state.as_str(), now],
    )?;
    Ok(())
}
