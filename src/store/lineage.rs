//! Ordering pushes by the branch's history instead of by their arrival, without a fetch.
//!
//! Every push a forge sends names the sha it moved the branch from (`before`), and haul records it beside the
//! request (`deploys.parent`). The requests haul has seen are then a chain: a push whose parent is a pending
//! request's sha is newer than it; a push whose sha appears among the ancestors that chain gives a pending,
//! running or live request is older than it, however late it arrives. A late or replayed delivery is therefore
//! told apart from a new push at once, in the same transaction that records it, and the newer request keeps
//! its slot. A real rewind (a force-push back) names the current sha as its parent, so it stays a move forward.
//! Where the chain has a gap, nothing is guessed: the request is queued beside the pending one and the worker
//! orders them with its mirror once it has fetched.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection};

use super::StoreError;
use crate::model::{short_sha, DeployId, DeployRequest, State, Trigger};

/// How far back the chain is followed: the recent requests of the app that name a parent.
const WALK: usize = 512;

pub(super) enum Order {
    /// Older than a pending, running or live request (or the same commit as a pending or running one): recorded
    /// final at once with this state and reason; `newer` is the request that supersedes it, if one is pending
    /// or running.
    Older {
        newer: Option<DeployId>,
        state: State,
        reason: String,
    },
    /// A push that history orders: it supersedes exactly these pending requests (its ancestors); any other
    /// pending request stays queued beside it.
    Descends { from: Vec<DeployId> },
    /// Not a push that names a parent: newest by arrival, as ever.
    Arrival,
}

struct Current {
    id: DeployId,
    sha: String,
    state: State,
}

pub(super) fn order(conn: &Connection, req: &DeployRequest) -> Result<Order, StoreError> {
    let (Trigger::Webhook, Some(sha), Some(parent)) = (req.trigger, &req.sha, &req.parent) else {
        return Ok(Order::Arrival);
    };
    let current = current(conn, &req.app)?;
    if let Some(same) = current
        .iter()
        .find(|c| c.state != State::Succeeded && c.sha == *sha)
    {
        return Ok(Order::Older {
            newer: Some(same.id.clone()),
            state: State::Superseded,
            reason: format!(
                "the same commit is already {} as {}",
                describe(same.state),
                same.id
            ),
        });
    }
    let mut chain = Chain::new(conn, &req.app);
    for c in current.iter().filter(|c| c.sha != *parent) {
        if chain.has_ancestor(&c.sha, sha)? {
            return Ok(Order::Older {
                newer: (c.state != State::Succeeded).then(|| c.id.clone()),
                state: if c.state == State::Succeeded { State::Ignored } else { State::Superseded },
                reason: format!(
                    "{} is older on the branch than {}, {} as {}: a late or replayed delivery; nothing fetched",
                    short_sha(sha),
                    short_sha(&c.sha),
                    describe(c.state),
                    c.id
                ),
            });
        }
    }
    let mut from = Vec::new();
    for c in current.iter().filter(|c| c.state == State::Queued) {
        if c.sha == *parent || chain.has_ancestor(parent, &c.sha)? {
            from.push(c.id.clone());
        }
    }
    Ok(Order::Descends { from })
}

fn describe(state: State) -> &'static str {
    match state {
        State::Queued => "pending",
        State::Running => "running",
        _ => "live",
    }
}

/// The app's pending and running pushes (a pending rollback is not a push), and the last successful deploy.
fn current(conn: &Connection, app: &str) -> Result<Vec<Current>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT id, sha, state FROM deploys WHERE app = ?1 AND state IN ('queued', 'running')
           AND sha IS NOT NULL AND trigger != 'rollback'",
    )?;
    let rows = stmt.query_map(params![app], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for r in rows {
        let (id, sha, state) = r?;
        if let (Some(id), Some(state)) = (DeployId::parse(&id), State::parse(&state)) {
            out.push(Current { id, sha, state });
        }
    }
    let live: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT id, sha FROM deploys WHERE app = ?1 AND state = 'succeeded' AND sha IS NOT NULL
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![app], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    if let Some((id, sha)) = live {
        if let Some(id) = DeployId::parse(&id) {
            out.push(Current {
                id,
                sha,
                state: State::Succeeded,
            });
        }
    }
    Ok(out)
}

/// The recent pushes' sha -> parent links, read once, and only when a walk is needed.
struct Chain<'a> {
    conn: &'a Connection,
    app: &'a str,
    links: Option<HashMap<String, String>>,
}

impl<'a> Chain<'a> {
    fn new(conn: &'a Connection, app: &'a str) -> Chain<'a> {
        Chain {
            conn,
            app,
            links: None,
        }
    }

    fn links(&mut self) -> Result<&HashMap<String, String>, StoreError> {
        if self.links.is_none() {
            let mut stmt = self.conn.prepare_cached(
                "SELECT sha, parent FROM deploys WHERE app = ?1 AND parent IS NOT NULL AND sha IS NOT NULL
                 ORDER BY seq DESC LIMIT ?2",
            )?;
            let mut links = HashMap::new();
            for r in stmt.query_map(params![self.app, WALK as i64], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })? {
                let (sha, parent) = r?;
                // The newest link for a sha wins: after a rewind, a sha's recorded parent may have changed.
                links.entry(sha).or_insert(parent);
            }
            self.links = Some(links);
        }
        Ok(self.links.get_or_insert_with(HashMap::new))
    }

    /// Is `ancestor` among the ancestors of `sha` that the recorded pushes chain together (`sha` excluded)?
    fn has_ancestor(&mut self, sha: &str, ancestor: &str) -> Result<bool, StoreError> {
        let links = self.links()?;
        let mut seen = HashSet::new();
        let mut at = sha;
        while let Some(parent) = links.get(at) {
            if parent == ancestor {
                return Ok(true);
            }
            if !seen.insert(parent.as_str()) || seen.len() > WALK {
                return Ok(false);
            }
            at = parent;
        }
        Ok(false)
    }
}

/// Supersedes the pending requests `from` by `id` (the push that descends from them).
pub(super) fn supersede(
    conn: &Connection,
    req: &DeployRequest,
    id: &DeployId,
    from: &[DeployId],
    now: i64,
) -> Result<Vec<DeployId>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deploys SET state = 'superseded', superseded_by = ?1, finished_at = ?2,
                reason = 'superseded by ' || ?1 || ' before it started'
         WHERE id = ?3 AND app = ?4 AND state = 'queued'",
    )?;
    let mut done = Vec::new();
    for f in from {
        if stmt.execute(params![id.as_str(), now, f.as_str(), req.app])? == 1 {
            done.push(f.clone());
        }
    }
    Ok(done)
}
