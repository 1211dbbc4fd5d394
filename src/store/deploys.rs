//! The audit log's queries: a deploy row at every transition, the delivery ids seen (replay protection), and
//! the queue itself (a `queued` row is the pending slot, a `running` row the running deploy).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::memory::Kind;
use super::{Conn, StoreError};
use crate::model::{DeployId, DeployRequest, Outcome, State, Trigger};

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRow {
    pub id: DeployId,
    pub app: String,
    pub trigger: Trigger,
    pub provider: Option<String>,
    pub delivery_id: Option<String>,
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    pub actor: String,
    pub state: State,
    pub reason: Option<String>,
    pub release_id: Option<String>,
    pub previous_sha: Option<String>,
    pub superseded_by: Option<DeployId>,
    /// For a rollback: what was asked for.
    pub target: Option<String>,
    /// For an artifact: the digest pinned by the trigger, then the one downloaded and verified.
    pub digest: Option<String>,
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// `approve = true`: who approved it (`haul approve`).
    pub approved_by: Option<String>,
}

/// What became of a request handed to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Recorded (as queued, or ignored; or held, as `deferred` or `awaiting_approval`, with why);
    /// `superseded` are the pending requests it replaced.
    Recorded {
        id: DeployId,
        superseded: Vec<DeployId>,
        held: Option<(State, String)>,
    },
    /// The delivery id was seen before: nothing recorded.
    Duplicate { first: DeployId },
    /// The same verified body was received before under another delivery id (a replay): nothing recorded.
    Replay { first: DeployId },
    /// Recorded, and final at once: older on the branch than what is pending, running or live (`superseded`
    /// or `ignored`, with the reason). Nothing was queued.
    Passed {
        id: DeployId,
        state: State,
        reason: String,
    },
}

impl Enqueued {
    /// The deploy this answer is about: the one recorded, or the earlier one it repeats.
    pub fn id(&self) -> &DeployId {
        match self {
            Enqueued::Recorded { id, .. } | Enqueued::Passed { id, .. } => id,
            Enqueued::Duplicate { first } | Enqueued::Replay { first } => first,
        }
    }
}

const COLUMNS: &str =
    "id, app, trigger, provider, delivery_id, git_ref, sha, actor, state, reason, release_id, \
                       previous_sha, superseded_by, requested_at, started_at, finished_at, target, digest, approved_by";

fn row_to_deploy(r: &Row<'_>) -> rusqlite::Result<DeployRow> {
    let bad = |i: usize, what: &str, v: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("{what} {v:?}").into(),
        )
    };
    let id: String = r.get(0)?;
    let trigger: String = r.get(2)?;
    let state: String = r.get(8)?;
    let superseded_by: Option<String> = r.get(12)?;
    Ok(DeployRow {
        id: DeployId::parse(&id).ok_or_else(|| bad(0, "deploy id", id.clone()))?,
        app: r.get(1)?,
        trigger: Trigger::parse(&trigger).ok_or_else(|| bad(2, "trigger", trigger.clone()))?,
        provider: r.get(3)?,
        delivery_id: r.get(4)?,
        git_ref: r.get(5)?,
        sha: r.get(6)?,
        actor: r.get(7)?,
        state: State::parse(&state).ok_or_else(|| bad(8, "state", state.clone()))?,
        reason: r.get(9)?,
        release_id: r.get(10)?,
        previous_sha: r.get(11)?,
        superseded_by: superseded_by.as_deref().and_then(DeployId::parse),
        requested_at: r.get(13)?,
        started_at: r.get(14)?,
        finished_at: r.get(15)?,
        target: r.get(16)?,
        digest: r.get(17)?,
        approved_by: r.get(18)?,
    })
}

/// A delivery id or a body seen before: the answer is that, and nothing is recorded. The replay memory says
/// which rows may hold it; a row confirms it (so a hash collision is never taken for a replay). A body seen
/// before under the same delivery id is a forge's redelivery (`Duplicate`), under another one a replay; a
/// delivery id seen before on a row remembered by its id (one without a body digest) is a `Duplicate`.
fn seen_before(conn: &Conn, req: &DeployRequest) -> Result<Option<Enqueued>, StoreError> {
    let body = req.body_digest.as_ref().map(|b| b.as_slice());
    let memory = conn.memory.borrow();
    if let Some(b) = body {
        for seq in memory.candidates(Kind::Body, &req.app, b) {
            let row: Option<(String, Option<String>)> = conn
                .prepare_cached(
                    "SELECT id, delivery_id FROM deploys WHERE seq = ?1 AND app = ?2 AND body_digest = ?3",
                )?
                .query_row(params![seq, req.app, b], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some(first) = row.as_ref().and_then(|(id, _)| DeployId::parse(id)) {
                let same_id = row.is_some_and(|(_, d)| d.is_some() && d == req.delivery_id);
                return Ok(Some(if same_id {
                    Enqueued::Duplicate { first }
                } else {
                    Enqueued::Replay { first }
                }));
            }
        }
    }
    if let Some(d) = &req.delivery_id {
        for seq in memory.candidates(Kind::Delivery, &req.app, d.as_bytes()) {
            let id: Option<String> = conn
                .prepare_cached("SELECT id FROM deploys WHERE seq = ?1 AND app = ?2 AND delivery_id = ?3")?
                .query_row(params![seq, req.app, d], |r| r.get(0))
                .optional()?;
            if let Some(first) = id.as_deref().and_then(DeployId::parse) {
                return Ok(Some(Enqueued::Duplicate { first }));
            }
        }
    }
    Ok(None)
}

fn insert(
    conn: &Conn,
    req: &DeployRequest,
    state: State,
    reason: Option<&str>,
    now: i64,
) -> Result<DeployId, StoreError> {
    let mut memory = conn.memory.borrow_mut();
    let mut stmt = conn.prepare_cached(
        "INSERT INTO deploys (id, app, trigger, provider, delivery_id, git_ref, sha, actor, state, reason, requested_at, finished_at, target, digest, parent, body_digest, signed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?;
    // Strings only: serialising cannot fail; were it to, the empty record is refused by every host.
    let signed = req
        .signed
        .as_ref()
        .map(|d| serde_json::to_vec(d).unwrap_or_default());
    let mut tries = 0;
    let id = loop {
        let id = memory.mint(now);
        let inserted = stmt.execute(params![
            id.as_str(),
            req.app,
            req.trigger.as_str(),
            req.provider,
            req.delivery_id,
            req.git_ref,
            req.sha,
            req.actor,
            state.as_str(),
            reason,
            now,
            state.is_final().then_some(now),
            req.target,
            req.digest,
            req.parent,
            req.body_digest.as_ref().map(|b| b.as_slice()),
            signed,
        ]);
        match inserted {
            // Another writer (a daemon restarted within the second) minted this id: try from elsewhere.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE && tries < 3 =>
            {
                tries += 1;
                memory.reseed(now.div_euclid(1000));
            }
            other => {
                other?;
                break id;
            }
        }
    };
    let body = req.body_digest.as_ref().map(|b| b.as_slice());
    memory.remember(
        &req.app,
        req.delivery_id.as_deref(),
        body,
        conn.last_insert_rowid(),
    );
    Ok(id)
}

/// Records a request as pending, newest wins: by history where the forge tells it, else by arrival.
///
/// A push that names its parent (the sha it moved the branch from) is ordered against what is pending,
/// running and live without a fetch (`lineage`): older than one of them, it is recorded `superseded` or
/// `ignored` at once and the newer one keeps its slot; it supersedes only pending requests it descends from.
/// Where history cannot tell (no link among the requests haul has seen), it is queued beside the pending one
/// and the worker orders them with its mirror after the fetch. Other requests (`haul deploy`, a poll, which
/// sees the tip, a trigger without a parent) supersede the pending one. One exception: a webhook or a poll
/// never supersedes a pending `haul rollback` (a person asked for it, and a redelivered trigger for the very
/// release being rolled back from must not cancel it); the rollback runs first.
pub(crate) fn enqueue(conn: &Conn, req: &DeployRequest, now: i64) -> Result<Enqueued, StoreError> {
    enqueue_held(conn, req, now, &Gate::default())
}

/// What may hold an app's automatic triggers besides a pause (which the store knows itself).
#[derive(Debug, Clone, Default)]
pub struct Gate {
    /// The deploy window is closed now: why, and when it opens.
    pub closed: Option<String>,
    /// `approve = true`: why it waits (how to approve, when it expires).
    pub approval: Option<String>,
    /// `gate = "ci"`: why it waits for CI (which workflow).
    pub ci: Option<String>,
}

/// As `enqueue`, with the app's gate: an automatic trigger of a paused app, or of one whose window is
/// closed, is recorded `deferred`; one of an app with `approve = true`, `awaiting_approval`.
pub(crate) fn enqueue_held(
    conn: &Conn,
    req: &DeployRequest,
    now: i64,
    gate: &Gate,
) -> Result<Enqueued, StoreError> {
    if let Some(seen) = seen_before(conn, req)? {
        return Ok(seen);
    }
    let order = super::lineage::order(conn, req)?;
    if let super::lineage::Order::Older { newer, state, reason } = order {
        let id = insert(conn, req, state, Some(&reason), now)?;
        if let Some(newer) = newer {
            conn.prepare_cached("UPDATE deploys SET superseded_by = ?2 WHERE id = ?1")?
                .execute(params![id.as_str(), newer.as_str()])?;
        }
        return Ok(Enqueued::Passed { id, state, reason });
    }
    // A paused app (or a closed window) holds automatic triggers: pending all the same (and coalesced),
    // but deferred; an app with approvals has them wait for a person.
    let held = match req.trigger {
        Trigger::Webhook | Trigger::Poll => match super::holds::hold_of(conn, &req.app)? {
            Some(h) => Some((State::Deferred, h.why())),
            None => match super::holds::ci_verdict(conn, &req.app, req.sha.as_deref(), gate.ci.as_deref())? {
                Some(held) => Some(held),
                None => match (&gate.closed, &gate.approval) {
                    (Some(why), _) => Some((State::Deferred, why.clone())),
                    (None, Some(why)) => Some((State::AwaitingApproval, why.clone())),
                    (None, None) => None,
                },
            },
        },
        _ => None,
    };
    let state = held.as_ref().map_or(State::Queued, |h| h.0);
    let id = insert(conn, req, state, held.as_ref().map(|h| h.1.as_str()), now)?;
    if let super::lineage::Order::Descends { from } = order {
        let superseded = super::lineage::supersede(conn, &req.app, &id, &from, now)?;
        return Ok(Enqueued::Recorded { id, superseded, held });
    }
    let mut stmt = conn.prepare_cached(
        "UPDATE deploys SET state = 'superseded', superseded_by = ?1, finished_at = ?2,
                reason = 'superseded by ' || ?1 || ' before it started'
         WHERE app = ?3 AND id != ?1
           AND (state = 'queued' OR (state IN ('deferred', 'awaiting_approval', 'awaiting_ci') AND ?4 IN ('webhook', 'poll')))
           AND NOT (trigger = 'rollback' AND ?4 IN ('webhook', 'poll'))
           AND (trigger = 'fleet') = (?4 = 'fleet') AND (trigger = 'local') = (?4 = 'local') RETURNING id",
    )?;
    let superseded = stmt
        .query_map(params![id.as_str(), now, req.app, req.trigger.as_str()], |r| {
            r.get::<_, String>(0)
        })?
        .filter_map(|r| r.ok().as_deref().and_then(DeployId::parse))
        .collect();
    Ok(Enqueued::Recorded { id, superseded, held })
}

/// Records a request final at once, never queued (`ignored`: another branch, a tag, a deletion; `failed` for a fleet assignment whose trigger
/// does not verify on this host), with why; a delivery seen before is answered as such. Its one write is
/// the insert, so it may run without a savepoint (`Store::call_one_write`).
pub(crate) fn record_final(
    conn: &Conn,
    req: &DeployRequest,
    state: State,
    reason: &str,
    now: i64,
) -> Result<Enqueued, StoreError> {
    if let Some(seen) = seen_before(conn, req)? {
        return Ok(seen);
    }
    let id = insert(conn, req, state, Some(reason), now)?;
    Ok(Enqueued::Recorded {
        id,
        superseded: vec![],
        held: None,
    })
}

/// Takes the app's pending request, if any, and marks it running.
pub(crate) fn claim_next(conn: &Connection, app: &str, now: i64) -> Result<Option<DeployRow>, StoreError> {
    let sql = format!(
        "UPDATE deploys SET state = 'running', started_at = ?2
         WHERE seq = (SELECT seq FROM deploys WHERE app = ?1 AND state = 'queued'
                      ORDER BY trigger = 'rollback' DESC, seq DESC LIMIT 1)
         RETURNING {COLUMNS}"
    );
    Ok(conn
        .query_row(&sql, params![app, now], row_to_deploy)
        .optional()?)
}

/// A fleet app's worker: takes the pending rollout assignment (or a `haul rollback`), never a trigger that
/// is still to be handed to the fleet.
pub(crate) fn claim_next_fleet(
    conn: &Connection,
    app: &str,
    now: i64,
) -> Result<Option<DeployRow>, StoreError> {
    let sql = format!(
        "UPDATE deploys SET state = 'running', started_at = ?2
         WHERE seq = (SELECT seq FROM deploys WHERE app = ?1 AND state = 'queued' AND trigger IN ('fleet', 'rollback', 'local')
                      ORDER BY trigger = 'rollback' DESC, seq DESC LIMIT 1)
         RETURNING {COLUMNS}"
    );
    Ok(conn
        .query_row(&sql, params![app, now], row_to_deploy)
        .optional()?)
}

/// A fleet app's triggers still to be handed to the fleet (webhooks, polls, `haul deploy`), oldest first,
/// each with the signed delivery it came in, if it kept one.
pub(crate) fn to_forward(
    conn: &Connection,
    app: &str,
) -> Result<Vec<(DeployRow, Option<crate::model::SignedDelivery>)>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, signed FROM deploys WHERE app = ?1 AND state = 'queued' AND trigger IN ('webhook', 'poll', 'manual')
         ORDER BY seq"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params![app], |r| {
        // The column after COLUMNS (counted, so that a column added to COLUMNS cannot shift it).
        let signed: Option<Vec<u8>> = r.get(COLUMNS.split(',').count())?;
        Ok((row_to_deploy(r)?, signed))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (row, signed) = row?;
        // A record that no longer parses is handed over without it: every host then refuses the claim of a
        // signed webhook, which is what a damaged record deserves.
        let signed = signed.and_then(|b| serde_json::from_slice(&b).ok());
        out.push((row, signed));
    }
    Ok(out)
}

/// A trigger the fleet's engine acknowledged: final here, deployed by the rollout it starts.
pub(crate) fn forwarded(conn: &Connection, id: &DeployId, reason: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE deploys SET state = 'forwarded', reason = ?2, finished_at = ?3 WHERE id = ?1 AND state = 'queued'",
        params![id.as_str(), reason, now],
    )?;
    Ok(())
}

pub fn finish(conn: &Connection, id: &DeployId, o: &Outcome, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE deploys SET state = ?2, reason = ?3, finished_at = ?4,
                sha = COALESCE(?5, sha), release_id = COALESCE(?6, release_id), previous_sha = COALESCE(?7, previous_sha),
                digest = COALESCE(?8, digest)
         WHERE id = ?1",
        params![id.as_str(), o.state.as_str(), o.reason, now, o.sha, o.release_id, o.previous_sha, o.digest],
    )?;
    Ok(())
}

/// A claimed request that turned out to need nothing (its sha is already live): closed as ignored, and marked
/// as never started, because nothing was fetched or run for it.
pub fn skip(conn: &Connection, id: &DeployId, reason: &str, now: i64) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE deploys SET state = 'ignored', reason = ?2, started_at = NULL, finished_at = ?3 WHERE id = ?1",
        params![id.as_str(), reason, now],
    )?;
    Ok(())
}

/// Records the release a running deploy is about to build, before anything is written, so recovery knows
/// exactly which directory a crash left half-built.
pub(crate) fn set_release(
    conn: &Connection,
    id: &DeployId,
    sha: &str,
    release_id: &str,
    previous_sha: Option<&str>,
    digest: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE deploys SET sha = ?2, release_id = ?3, previous_sha = ?4, digest = COALESCE(?5, digest) WHERE id = ?1",
        params![id.as_str(), sha, release_id, previous_sha, digest],
    )?;
    Ok(())
}

/// At start-up (under the app's lock, so nobody is running it): a deploy still `running` was cut short.
pub(crate) fn interrupt_running(
    conn: &Connection,
    app: &str,
    now: i64,
) -> Result<Vec<DeployRow>, StoreError> {
    let sql = format!(
        "UPDATE deploys SET state = 'interrupted', finished_at = ?2,
                reason = 'haul stopped while this deploy was running; the previous release stayed live'
         WHERE app = ?1 AND state = 'running' RETURNING {COLUMNS}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params![app, now], row_to_deploy)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn get(conn: &Connection, id: &DeployId) -> Result<Option<DeployRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM deploys WHERE id = ?1");
    Ok(conn
        .query_row(&sql, params![id.as_str()], row_to_deploy)
        .optional()?)
}

/// Newest first.
pub fn history(conn: &Connection, app: Option<&str>, limit: usize) -> Result<Vec<DeployRow>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = match app {
        Some(a) => {
            let sql = format!("SELECT {COLUMNS} FROM deploys WHERE app = ?1 ORDER BY seq DESC LIMIT ?2");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt
                .query_map(params![a, limit], row_to_deploy)?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        }
        None => {
            let sql = format!("SELECT {COLUMNS} FROM deploys ORDER BY seq DESC LIMIT ?1");
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt
                .query_map(params![limit], row_to_deploy)?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        }
    };
    Ok(rows)
}

/// What `haul status` shows for one app.
#[derive(Debug, Clone, Default)]
pub struct AppSummary {
    /// The newest deploy that ran (not ignored or superseded).
    pub last: Option<DeployRow>,
    pub last_success: Option<DeployRow>,
    pub running: Option<DeployRow>,
    pub queued: usize,
    /// Held by a pause: pending, to run when it is lifted.
    pub deferred: usize,
    /// Waiting for `haul approve`.
    pub awaiting_approval: usize,
    /// Waiting for CI (`gate = "ci"`).
    pub awaiting_ci: usize,
    /// The pause holding the app's automatic triggers (its own, or `haul pause --all`).
    pub hold: Option<super::Hold>,
}

pub(crate) fn summary(conn: &Connection, app: &str) -> Result<AppSummary, StoreError> {
    let one = |cond: &str| -> Result<Option<DeployRow>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM deploys WHERE app = ?1 AND {cond} ORDER BY seq DESC LIMIT 1");
        Ok(conn.query_row(&sql, params![app], row_to_deploy).optional()?)
    };
    Ok(AppSummary {
        last: one("state IN ('succeeded', 'failed', 'rolled_back', 'interrupted')")?,
        last_success: one("state = 'succeeded'")?,
        running: one("state = 'running'")?,
        queued: conn.query_row(
            "SELECT count(*) FROM deploys WHERE app = ?1 AND state = 'queued'",
            params![app],
            |r| r.get::<_, i64>(0),
        )? as usize,
        deferred: conn.query_row(
            "SELECT count(*) FROM deploys WHERE app = ?1 AND state = 'deferred'",
            params![app],
            |r| r.get::<_, i64>(0),
        )? as usize,
        awaiting_approval: conn.query_row(
            "SELECT count(*) FROM deploys WHERE app = ?1 AND state = 'awaiting_approval'",
            params![app],
            |r| r.get::<_, i64>(0),
        )? as usize,
        awaiting_ci: conn.query_row(
            "SELECT count(*) FROM deploys WHERE app = ?1 AND state = 'awaiting_ci'",
            params![app],
            |r| r.get::<_, i64>(0),
        )? as usize,
        hold: super::holds::hold_of(conn, app)?,
    })
}

/// A fleet host's newest rollout assignment for an app: a `fleet` deploy, or a revert (a rollback that
/// names the rollout as its delivery).
pub fn last_fleet_row(conn: &Connection, app: &str) -> Result<Option<DeployRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM deploys WHERE app = ?1
           AND (trigger = 'fleet' OR (trigger = 'rollback' AND delivery_id IS NOT NULL))
         ORDER BY seq DESC LIMIT 1"
    );
    Ok(conn.query_row(&sql, params![app], row_to_deploy).optional()?)
}

/// The deploy that put `release_id` live most recently (a deploy or a rollback).
pub(crate) fn live_deploy(
    conn: &Connection,
    app: &str,
    release_id: &str,
) -> Result<Option<DeployRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM deploys WHERE app = ?1 AND release_id = ?2 AND state = 'succeeded' ORDER BY seq DESC LIMIT 1"
    );
    Ok(conn
        .query_row(&sql, params![app, release_id], row_to_deploy)
        .optional()?)
}

/// What a release directory was built from: its sha, (an artifact) the digest it was unpacked from, and the
/// ref it was deployed as. A rollback row names the release but not its digest: the row that built it does.
pub(crate) fn release_sha(
    conn: &Connection,
    app: &str,
    release_id: &str,
) -> Result<ReleaseFacts, StoreError> {
    Ok(conn
        .query_row(
            "SELECT sha, digest, git_ref FROM deploys WHERE app = ?1 AND release_id = ?2
             ORDER BY (trigger != 'rollback') DESC, seq DESC LIMIT 1",
            params![app, release_id],
            |r| {
                Ok(ReleaseFacts {
                    sha: r.get(0)?,
                    digest: r.get(1)?,
                    git_ref: r.get(2)?,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReleaseFacts {
    pub sha: Option<String>,
    pub digest: Option<String>,
    pub git_ref: Option<String>,
}

/// Did `sha` go live for `app` before (a deploy that succeeded)? For an artifact named by version, a trigger
/// for such a version that is not live now is a replay or arrived out of order: it is not deployed again.
pub(crate) fn sha_succeeded(conn: &Connection, app: &str, sha: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM deploys WHERE app = ?1 AND sha = ?2 AND state = 'succeeded' AND trigger != 'rollback')",
        params![app, sha],
        |r| r.get(0),
    )?)
}

/// Releases that went live successfully (a deploy or a rollback that succeeded), newest built first (by audit
/// order, not by id: two releases can be built within one second), with their sha:
/// what `haul rollback` may go back to.
pub(crate) fn successful_releases(conn: &Connection, app: &str) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT release_id, sha, min(seq) AS built FROM deploys
         WHERE app = ?1 AND state = 'succeeded' AND release_id IS NOT NULL AND sha IS NOT NULL
         GROUP BY release_id ORDER BY built DESC",
    )?;
    let rows = stmt
        .query_map(params![app], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// `on_restart = "hold"`: requests still queued at start-up are not run; they are closed with a reason.
pub(crate) fn hold_queued(conn: &Connection, app: &str, before: i64, now: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE deploys SET state = 'interrupted', finished_at = ?2,
                reason = 'queued when haul stopped, and held at start-up (on_restart = \"hold\"); deploy it with `haul deploy`'
         WHERE app = ?1 AND state = 'queued' AND requested_at < ?3",
        params![app, now, before],
    )?)
}

/// Was `sha` ever requested for `app` and tried (or is it waiting)? A poll never asks for such a sha again: not
/// after it failed, and not after someone rolled it back.
pub(crate) fn sha_attempted(conn: &Connection, app: &str, sha: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM deploys WHERE app = ?1 AND sha = ?2 AND state NOT IN ('ignored', 'superseded'))",
        params![app, sha],
        |r| r.get(0),
    )?)
}

/// Forgets delivery ids and body digests first seen more than `keep_ms` ago (replay protection keeps them
/// at least 7 days); returns how many went.
pub(crate) fn prune_deliveries(conn: &Conn, now: i64, keep_ms: i64) -> Result<usize, StoreError> {
    conn.prepare_cached("DELETE FROM ci_seen WHERE at < ?1")?
        .execute(rusqlite::params![now - keep_ms])?;
    Ok(conn.memory.borrow_mut().forget(conn, now, keep_ms)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(app: &str, delivery: Option<&str>) -> DeployRequest {
        DeployRequest::new(app, Trigger::Webhook, "octocat")
            .sent_by("github", delivery.map(Into::into))
            .at_ref(Some("refs/heads/main".into()))
            .with_sha(Some("a".repeat(40)))
    }

    /// The hot-path indexes are partial or gone; the lookups that need them still seek instead of scanning.
    #[test]
    fn lookups_use_their_indexes() {
        let c = mem();
        let plan = |sql: &str| -> String {
            let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("plan");
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).expect("rows");
            rows.map(|r| r.expect("row")).collect::<Vec<_>>().join("; ")
        };
        let release = plan(
            "SELECT sha, digest, git_ref FROM deploys WHERE app = 'a' AND release_id = 'r'
             ORDER BY (trigger != 'rollback') DESC, seq DESC LIMIT 1",
        );
        assert!(release.contains("deploys_app_release"), "{release}");
        let live = plan("SELECT id FROM deploys WHERE app = 'a' AND release_id = 'r' AND state = 'succeeded' ORDER BY seq DESC LIMIT 1");
        assert!(live.contains("USING INDEX"), "{live}");
        let queued = plan("SELECT count(*) FROM deploys WHERE app = 'a' AND state = 'queued'");
        assert!(queued.contains("deploys_app_state_seq"), "{queued}");
    }

    fn mem() -> Conn {
        super::super::memory()
    }

    fn id_of(e: Enqueued) -> DeployId {
        match e {
            Enqueued::Recorded { id, .. } => id,
            other => panic!("not recorded: {other:?}"),
        }
    }

    #[test]
    fn newest_pending_wins() {
        let c = mem();
        let a = id_of(enqueue(&c, &req("blog", None), 1).expect("a"));
        let b = enqueue(&c, &req("blog", None), 2).expect("b");
        let other = id_of(enqueue(&c, &req("shop", None), 3).expect("other"));
        let Enqueued::Recorded {
            id: b, superseded, ..
        } = b
        else {
            panic!()
        };
        assert_eq!(superseded, vec![a.clone()]);
        let row = get(&c, &a).expect("get").expect("row");
        assert_eq!(row.state, State::Superseded);
        assert_eq!(row.superseded_by, Some(b.clone()));
        let claimed = claim_next(&c, "blog", 4).expect("claim").expect("some");
        assert_eq!(claimed.id, b);
        assert_eq!(claimed.state, State::Running);
        assert!(claim_next(&c, "blog", 5).expect("claim").is_none());
        assert_eq!(
            get(&c, &other).expect("get").map(|r| r.state),
            Some(State::Queued)
        );
    }

    #[test]
    fn replayed_delivery_is_a_duplicate() {
        let c = mem();
        let first = id_of(enqueue(&c, &req("blog", Some("d-1")), 1).expect("first"));
        assert_eq!(
            enqueue(&c, &req("blog", Some("d-1")), 2).expect("again"),
            Enqueued::Duplicate { first: first.clone() }
        );
        assert_eq!(
            record_final(&c, &req("blog", Some("d-1")), State::Ignored, "x", 2).expect("again"),
            Enqueued::Duplicate { first }
        );
        assert_eq!(history(&c, None, 10).expect("history").len(), 1);
        assert_eq!(prune_deliveries(&c, 10, 5).expect("prune"), 1);
    }

    /// Another writer (a daemon restarted within the second) took the id this one mints next: the insert
    /// mints another instead of failing the request.
    #[test]
    fn a_taken_id_is_minted_again() {
        let c = mem();
        let now = 1_800_000_000_000;
        let taken = c.memory.borrow_mut().mint(now);
        c.execute(
            "INSERT INTO deploys (id, app, trigger, actor, state, requested_at) VALUES (?1, 'blog', 'webhook', 'x', 'ignored', ?2)",
            params![taken.as_str(), now],
        )
        .expect("the other writer's row");
        c.memory.borrow_mut().step_back();
        let got =
            id_of(record_final(&c, &req("blog", Some("d-1")), State::Ignored, "x", now).expect("recorded"));
        assert_ne!(got, taken);
        assert_eq!(history(&c, None, 10).expect("history").len(), 2);
    }

    #[test]
    fn running_becomes_interrupted() {
        let c = mem();
        id_of(enqueue(&c, &req("blog", None), 1).expect("a"));
        let running = claim_next(&c, "blog", 2).expect("claim").expect("row");
        let interrupted = interrupt_running(&c, "blog", 3).expect("interrupt");
        assert_eq!(interrupted.len(), 1);
        assert_eq!(interrupted[0].id, running.id);
        assert_eq!(interrupted[0].state, State::Interrupted);
    }
}
