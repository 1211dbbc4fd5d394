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

/// Up to `limit` deploys after `floor`, oldest first, with what was last told of each.
pub(crate) fn report_rows(conn: &Connection, floor: i64, limit: usize) -> Result<Vec<ReportRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.seq, d.id, d.app, d.sha, d.state, d.reason, r.state, d.started_at IS NOT NULL FROM deploys d
         LEFT JOIN reports r ON r.deploy_id = d.id
         WHERE d.seq > ?1 ORDER BY d.seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![floor, limit as i64], |r| {
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
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
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
