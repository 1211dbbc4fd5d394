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
    /// A fleet host's other lanes (`fleet` assignments, `local` deploys): a webhook never supersedes them.
    other_lane: bool,
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
    // A push that moves on from something pending, running or live is not older than it, and what is pending or
    // running is not older than what is live: the walk is needed only when the push names none of them (a
    // late, out-of-order or replayed delivery), which keeps the common case to two indexed reads.
    let moves_on = current.iter().any(|c| c.sha == *parent);
    for c in current.iter().filter(|_| !moves_on) {
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
    for c in current.iter().filter(|c| {
        !c.other_lane
            && matches!(
                c.state,
                State::Queued | State::Deferred | State::AwaitingApproval | State::AwaitingCi
            )
    }) {
        if c.sha == *parent || chain.has_ancestor(parent, &c.sha)? {
            from.push(c.id.clone());
        }
    }
    Ok(Order::Descends { from })
}

fn describe(state: State) -> &'static str {
    match state {
        State::Queued => "pending",
        State::Deferred => "deferred (the app is paused, or outside its deploy windows)",
        State::AwaitingApproval => "awaiting approval",
        State::AwaitingCi => "awaiting CI",
        State::Running => "running",
        _ => "live",
    }
}

/// The automatic requests of `app` still queued beside `except` (the one running), with their shas: what the
/// worker orders with its mirror once it has fetched.
pub(crate) fn queued_pushes(
    conn: &Connection,
    app: &str,
    except: &DeployId,
) -> Result<Vec<(DeployId, String)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sha FROM deploys WHERE app = ?1 AND state = 'queued' AND trigger IN ('webhook', 'poll')
           AND sha IS NOT NULL AND id != ?2",
    )?;
    let rows = stmt.query_map(params![app, except.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for r in rows {
        let (id, sha) = r?;
        if let Some(id) = DeployId::parse(&id) {
            out.push((id, sha));
        }
    }
    Ok(out)
}

/// After a rollback (`haul rollback`, or a health gate that put the previous release back), automatic triggers
/// may take the app only to a commit haul has never deployed: if `sha` went live before (or was the one a
/// rollback took away) and the app's live release came from a rollback since, the rollback's deploy id.
pub(crate) fn rollback_pin(conn: &Connection, app: &str, sha: &str) -> Result<Option<DeployId>, StoreError> {
    let last: Option<(String, String, String)> = conn
        .prepare_cached(
            "SELECT id, trigger, state FROM deploys WHERE app = ?1 AND state IN ('succeeded', 'rolled_back')
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![app], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    let Some((id, trigger, state)) = last else {
        return Ok(None);
    };
    if !(state == "rolled_back" || (trigger == "rollback" && state == "succeeded")) {
        return Ok(None);
    }
    let deployed: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deploys WHERE app = ?1 AND sha = ?2 AND state IN ('succeeded', 'rolled_back'))",
        )?
        .query_row(params![app, sha], |r| r.get(0))?;
    Ok(deployed.then(|| DeployId::parse(&id)).flatten())
}

/// The app's pending and running pushes (a pending rollback is not a push), and the last successful deploy.
fn current(conn: &Connection, app: &str) -> Result<Vec<Current>, StoreError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT id, sha, state, trigger IN ('fleet', 'local') FROM deploys
         WHERE app = ?1 AND state IN ('queued', 'deferred', 'awaiting_approval', 'awaiting_ci', 'running')
           AND sha IS NOT NULL AND trigger != 'rollback'",
    )?;
    let rows = stmt.query_map(params![app], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, bool>(3)?,
        ))
    })?;
    for r in rows {
        let (id, sha, state, other_lane) = r?;
        if let (Some(id), Some(state)) = (DeployId::parse(&id), State::parse(&state)) {
            out.push(Current {
                id,
                sha,
                state,
                other_lane,
            });
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
                other_lane: false,
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

/// Supersedes the pending requests `from` of `app` by `id` (newer on the branch than each of them).
pub(crate) fn supersede(
    conn: &Connection,
    app: &str,
    id: &DeployId,
    from: &[DeployId],
    now: i64,
) -> Result<Vec<DeployId>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deploys SET state = 'superseded', superseded_by = ?1, finished_at = ?2,
                reason = 'superseded by ' || ?1 || ' before it started'
         WHERE id = ?3 AND app = ?4 AND state IN ('queued', 'deferred', 'awaiting_approval', 'awaiting_ci')",
    )?;
    let mut done = Vec::new();
    for f in from {
        if stmt.execute(params![id.as_str(), now, f.as_str(), app])? == 1 {
            done.push(f.clone());
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::super::{claim_next, enqueue, finish, memory, Enqueued};
    use crate::model::{DeployRequest, Outcome, State, Trigger};
    use rusqlite::Connection;

    fn sha(n: u32) -> String {
        format!("{n:040x}")
    }

    /// A push of `after` on top of `before`, as every forge that sends `before` describes it.
    fn push(after: u32, before: u32) -> DeployRequest {
        DeployRequest::new("blog", Trigger::Webhook, "octocat")
            .sent_by("github", None)
            .at_ref(Some("refs/heads/main".into()))
            .with_sha(Some(sha(after)))
            .after_parent(Some(sha(before)))
    }

    fn state_of(c: &Connection, s: u32) -> Vec<String> {
        let mut stmt = c
            .prepare("SELECT state FROM deploys WHERE sha = ?1 ORDER BY seq")
            .expect("prepare");
        stmt.query_map([sha(s)], |r| r.get(0))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    }

    /// Claims the newest pending request and ends it `succeeded` (it is the live one from then on).
    fn goes_live(c: &Connection) {
        let row = claim_next(c, "blog", 0)
            .expect("claim")
            .expect("something pending");
        finish(c, &row.id, &Outcome::new(State::Succeeded, "live"), 0).expect("finish");
    }

    /// A fleet host's lanes: a webhook that descends from a queued `fleet` assignment (or `local` deploy)
    /// leaves it queued; only pushes of its own lane are superseded by history.
    #[test]
    fn a_push_never_supersedes_another_lane_by_history() {
        let c = memory();
        let mut assignment = push(1, 0);
        assignment.trigger = Trigger::Fleet;
        assignment.parent = None;
        enqueue(&c, &assignment, 0).expect("the assignment");
        let webhook = enqueue(&c, &push(2, 1), 0).expect("the push");
        let Enqueued::Recorded { superseded, .. } = webhook else {
            panic!("{webhook:?}")
        };
        assert!(superseded.is_empty(), "{superseded:?}");
        assert_eq!(state_of(&c, 1), ["queued"]);
    }

    #[test]
    fn in_order_pushes_supersede_what_they_descend_from() {
        let c = memory();
        let first = enqueue(&c, &push(1, 0), 0).expect("enqueue");
        let second = enqueue(&c, &push(2, 1), 0).expect("enqueue");
        let Enqueued::Recorded { superseded, .. } = second else {
            panic!("{second:?}")
        };
        assert_eq!(superseded, [first.id().clone()]);
        assert_eq!(state_of(&c, 1), ["superseded"]);
        assert_eq!(state_of(&c, 2), ["queued"]);
    }

    /// Regression (issue 12, hole 2): c3 building, c4 acknowledged, then a late delivery of c1 superseded c4,
    /// and c4 never deployed.
    #[test]
    fn regression_a_late_delivery_during_a_build_never_takes_a_newer_pushs_slot() {
        let c = memory();
        enqueue(&c, &push(1, 0), 0).expect("c1");
        goes_live(&c);
        enqueue(&c, &push(2, 1), 0).expect("c2");
        enqueue(&c, &push(3, 2), 0).expect("c3");
        let running = claim_next(&c, "blog", 0).expect("claim").expect("c3");
        assert_eq!(running.sha.as_deref(), Some(sha(3).as_str()));
        enqueue(&c, &push(4, 3), 0).expect("c4");
        // The late one: the very push of c1 (parent c0), under a body the store has not seen.
        let late = enqueue(&c, &push(1, 0).sent_by("github", Some("late".into())), 0).expect("late");
        let Enqueued::Passed { state, reason, .. } = &late else {
            panic!("{late:?}")
        };
        assert_eq!(*state, State::Superseded, "{reason}");
        assert!(reason.contains("older on the branch"), "{reason}");
        assert_eq!(state_of(&c, 4), ["queued"], "c4 keeps its slot");
    }

    #[test]
    fn a_late_delivery_during_a_pending_slot_is_older_than_it() {
        let c = memory();
        enqueue(&c, &push(2, 1), 0).expect("c2");
        let late = enqueue(&c, &push(1, 0), 0).expect("c1");
        let Enqueued::Passed { state, .. } = &late else {
            panic!("{late:?}")
        };
        assert_eq!(*state, State::Superseded);
        assert_eq!(state_of(&c, 2), ["queued"]);
    }

    #[test]
    fn older_than_the_live_release_is_ignored_without_a_fetch() {
        let c = memory();
        enqueue(&c, &push(1, 0), 0).expect("c1");
        enqueue(&c, &push(2, 1), 0).expect("c2");
        goes_live(&c);
        let late = enqueue(&c, &push(1, 0).sent_by("github", Some("x".into())), 0).expect("late");
        let Enqueued::Passed { state, reason, .. } = &late else {
            panic!("{late:?}")
        };
        assert_eq!(*state, State::Ignored, "{reason}");
        assert!(reason.contains("live"), "{reason}");
    }

    #[test]
    fn a_real_rewind_moves_forward() {
        let c = memory();
        enqueue(&c, &push(1, 0), 0).expect("c1");
        enqueue(&c, &push(2, 1), 0).expect("c2");
        goes_live(&c);
        // A force-push from c2 back to c1: the forge names c2 as the push's parent.
        let rewind = enqueue(&c, &push(1, 2), 0).expect("rewind");
        assert!(matches!(rewind, Enqueued::Recorded { .. }), "{rewind:?}");
        assert_eq!(state_of(&c, 1).last().map(String::as_str), Some("queued"));
    }

    #[test]
    fn the_same_commit_again_keeps_the_first_request() {
        let c = memory();
        let first = enqueue(&c, &push(2, 1), 0).expect("c2");
        let again = enqueue(&c, &push(2, 1).sent_by("gitea", Some("other".into())), 0).expect("again");
        let Enqueued::Passed { state, reason, .. } = &again else {
            panic!("{again:?}")
        };
        assert_eq!(*state, State::Superseded);
        assert!(reason.contains(first.id().as_str()), "{reason}");
    }

    #[test]
    fn unknown_order_queues_both_and_supersedes_nothing() {
        let c = memory();
        enqueue(&c, &push(5, 4), 0).expect("c5");
        let other = enqueue(&c, &push(9, 8), 0).expect("c9");
        let Enqueued::Recorded { superseded, .. } = other else {
            panic!("{other:?}")
        };
        assert!(superseded.is_empty());
        assert_eq!(state_of(&c, 5), ["queued"]);
        assert_eq!(state_of(&c, 9), ["queued"]);
    }

    #[test]
    fn triggers_without_history_still_supersede_by_arrival() {
        let c = memory();
        enqueue(&c, &push(5, 4), 0).expect("c5");
        let poll = DeployRequest::new("blog", Trigger::Poll, "poll").with_sha(Some(sha(6)));
        let Enqueued::Recorded { superseded, .. } = enqueue(&c, &poll, 0).expect("poll") else {
            panic!("not recorded")
        };
        assert_eq!(superseded.len(), 1);
        assert_eq!(state_of(&c, 5), ["superseded"]);
    }
}
