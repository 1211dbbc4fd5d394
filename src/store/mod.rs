//! The store: the only module that speaks SQL. It holds the audit log (one row per deploy request, updated at
//! every transition), the delivery ids seen (replay protection) and, implicitly, the queue: a deploy in state
//! `queued` is a pending request, so nothing queued is lost by a restart.
//!
//! Writes go through one writer thread that owns the connection and commits in groups: every write that
//! arrives while a commit is in flight joins the next transaction, so a flood of webhooks costs one fsync per
//! batch instead of one per request, and a reply is only sent once its write is durable (`synchronous=FULL`).
//! Beside the connection the writer keeps the replay memory (`memory`: the delivery ids and body digests of
//! the last 8 days, rebuilt from the audit at open), which changes only with the transaction.
//! Reads from the CLI open their own read-only connection; WAL lets them run beside the daemon.

use std::cell::RefCell;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{Connection, OpenFlags};

mod alerts;
mod deploys;
mod holds;
mod lineage;
mod memory;
mod reports;
mod schema;

pub(crate) use alerts::*;
pub use deploys::*;
pub(crate) use holds::{
    approve, await_approval, await_ci, defer_queued, expire_approvals, oldest_awaiting, pause, record_ci,
    reject, release_deferred, resume,
};
pub use holds::{holds, Hold};
pub(crate) use lineage::{queued_pushes, rollback_pin, supersede};
pub(crate) use reports::{mark_reported, report_floor, report_open, report_rows, report_rows_at, ReportRow};
use schema::{configure, migrate};

/// Replay protection keeps delivery ids and body digests at least 7 days; 8 to be safe.
pub const REPLAY_MEMORY_MS: i64 = 8 * 24 * 3600 * 1000;

/// What a [`Store::call`] closure is given: the connection (callers name this, never the SQL library) and,
/// beside it, the replay memory and the deploy id minter.
pub struct Conn {
    db: Connection,
    memory: RefCell<memory::Memory>,
    /// A job's savepoint could not be rolled back: its group must not commit.
    poisoned: std::cell::Cell<bool>,
}

impl Deref for Conn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.db
    }
}

impl Conn {
    fn open(db: Connection, now: i64) -> rusqlite::Result<Conn> {
        let memory = memory::Memory::load(&db, now, REPLAY_MEMORY_MS)?;
        Ok(Conn {
            db,
            memory: RefCell::new(memory),
            poisoned: std::cell::Cell::new(false),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the audit database writer has stopped")]
    Closed,
    #[error("the audit database could not start a transaction (full disk? I/O error?); nothing was written")]
    NotRun,
    #[error("audit database {path}: {message}")]
    Open { path: PathBuf, message: String },
}

type Completer = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: run inside the group transaction, or (`None`) not run at all because there is no transaction.
type Job = Box<dyn FnOnce(Option<&Conn>) -> Completer + Send>;

/// The daemon's handle on the database: cheap to clone, safe to use from any task.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating and migrating) the database and starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // Small pages for a new database: every commit appends each page it touched to the WAL, and a webhook
        // touches a few B-tree leaves; 1 KiB pages write a quarter of the bytes per commit that 4 KiB pages do.
        // (An existing database keeps its page size.)
        conn.pragma_update(None, "page_size", 1024).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        migrate(&mut conn).map_err(open_err)?;
        let conn = Conn::open(conn, crate::model::now_ms()).map_err(open_err)?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("haul-store".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                message: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Store {
            tx,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside the next group transaction, in a savepoint of its own (an error takes back everything
    /// `f` wrote, and nothing of the other jobs in the group); resolves once that transaction is committed.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, in_savepoint).await
    }

    /// [`Store::call`] for a job that writes at most one statement, which changes nothing when it fails: it
    /// needs no savepoint of its own, and skips the copies of every page it touches that a savepoint makes
    /// (the ignored-at-intake path of a webhook flood). The replay memory is still taken back on an error.
    pub async fn call_one_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(f, without_savepoint).await
    }

    async fn submit<T, F>(&self, f: F, run: fn(&Conn, F) -> Result<T, StoreError>) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Conn) -> Result<T, StoreError> + Send + 'static,
    {
        let (otx, orx) = tokio::sync::oneshot::channel::<Result<T, StoreError>>();
        let job: Job = Box::new(move |conn: Option<&Conn>| {
            let result = match conn {
                Some(conn) => run(conn, f),
                None => Err(StoreError::NotRun),
            };
            Box::new(move |committed: Result<(), String>| {
                let out = match committed {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Sql(rusqlite::Error::ToSqlConversionFailure(e.into()))),
                };
                let _ = otx.send(out);
            })
        });
        self.tx.send(job).map_err(|_| StoreError::Closed)?;
        orx.await.map_err(|_| StoreError::Closed)?
    }
}

fn without_savepoint<T>(
    conn: &Conn,
    f: impl FnOnce(&Conn) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mark = conn.memory.borrow().mark();
    let result = f(conn);
    if result.is_err() {
        conn.memory.borrow_mut().undo_to(mark);
    }
    result
}

fn in_savepoint<T>(conn: &Conn, f: impl FnOnce(&Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    let mark = conn.memory.borrow().mark();
    let result = f(conn).and_then(|v| {
        conn.prepare_cached("RELEASE job")?.execute([])?;
        Ok(v)
    });
    if result.is_err() {
        conn.memory.borrow_mut().undo_to(mark);
        // If the savepoint cannot be taken back, the job's writes would commit with the group while the
        // memory has forgotten them: the whole group is rolled back instead.
        if conn.execute_batch("ROLLBACK TO job; RELEASE job").is_err() && !conn.is_autocommit() {
            conn.poisoned.set(true);
        }
    }
    result
}

/// Group commit: take every job that is waiting, run them in one transaction, commit once, then answer all.
fn writer(conn: Conn, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 512 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        conn.memory.borrow_mut().settle();
        let began = conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| e.to_string());
        if let Err(e) = began {
            tracing::error!("audit database: cannot begin a transaction: {e}");
            for job in jobs {
                job(None)(Err(e.clone()));
            }
            continue;
        }
        // SQLite may roll the whole transaction back by itself (a full disk, an I/O error): then the jobs after
        // it must not run in autocommit mode, each committing on its own while the batch reports failure.
        let completers: Vec<Completer> = jobs
            .into_iter()
            .map(|job| {
                if conn.is_autocommit() {
                    job(None)
                } else {
                    job(Some(&conn))
                }
            })
            .collect();
        let committed = if conn.is_autocommit() {
            Err("the transaction was rolled back by SQLite (a full disk or an I/O error)".to_string())
        } else if conn.poisoned.replace(false) {
            Err("a failed write could not be taken back, so its whole group was rolled back".to_string())
        } else {
            conn.execute_batch("COMMIT").map_err(|e| e.to_string())
        };
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
            conn.memory.borrow_mut().undo_to(0);
        }
        for c in completers {
            c(committed.clone());
        }
    }
}

/// Does the database answer? (The liveness check's question.)
pub fn ping(c: &Conn) -> Result<(), StoreError> {
    c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}

/// A migrated in-memory database, for other layers' unit tests.
#[cfg(test)]
pub(crate) fn memory() -> Conn {
    let mut c = Connection::open_in_memory().expect("in-memory database");
    migrate(&mut c).expect("migrate");
    Conn::open(c, 0).expect("replay memory")
}

/// A read-only connection for the CLI's read commands.
pub fn open_read(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            message: "no audit database yet: nothing has been deployed with this state_dir (run `haul serve` or `haul deploy APP` first)".into(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // A database an older haul still has open (the binary upgraded, the daemon not yet restarted) lacks
    // what this one reads: said as such, not as a missing column.
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version < schema::SCHEMA.len() {
        return Err(StoreError::Open {
            path: path.to_path_buf(),
            message: format!(
                "the audit database is at schema v{version} and this haul reads v{}: restart the daemon (`systemctl restart haul`) or run `haul serve` once, which migrates it",
                schema::SCHEMA.len()
            ),
        });
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeployRequest, Trigger};

    fn push(delivery: &str, body: u8) -> DeployRequest {
        DeployRequest::new("blog", Trigger::Webhook, "octocat")
            .sent_by("github", Some(delivery.into()))
            .at_ref(Some("refs/heads/main".into()))
            .with_sha(Some("a".repeat(40)))
            .with_body_digest(Some([body; 32]))
    }

    async fn enqueue(store: &Store, req: DeployRequest, now: i64) -> Enqueued {
        store
            .call(move |c| enqueue_at(c, &req, now))
            .await
            .expect("enqueue")
    }

    fn enqueue_at(c: &Conn, req: &DeployRequest, now: i64) -> Result<Enqueued, StoreError> {
        deploys::enqueue(c, req, now)
    }

    /// The replay memory is rebuilt from the audit when the store opens: a body or a delivery id seen before
    /// a restart is still a replay after it, for 8 days and not longer.
    #[tokio::test]
    async fn the_replay_memory_survives_a_restart_and_forgets_after_8_days() {
        let dir = crate::infra::scratch::TestDir::new("store-memory");
        let path = dir.path("haul.db");
        let now = model_now();
        let store = Store::open(&path).expect("open");
        let first = enqueue(&store, push("d-1", 1), now).await;
        drop(store);

        let store = Store::open(&path).expect("reopen");
        let Enqueued::Recorded { id, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            enqueue(&store, push("d-2", 1), now + 1).await,
            Enqueued::Replay { first: id.clone() },
            "the same body under a fresh id"
        );
        assert_eq!(
            enqueue(&store, push("d-1", 1), now + 1).await,
            Enqueued::Duplicate { first: id.clone() },
            "the same delivery again"
        );
        let later = now + REPLAY_MEMORY_MS + 1;
        let forgot = store
            .call(move |c| prune_deliveries(c, later, REPLAY_MEMORY_MS))
            .await
            .expect("prune");
        assert_eq!(forgot, 1);
        assert!(matches!(
            enqueue(&store, push("d-3", 1), later).await,
            Enqueued::Recorded { .. }
        ));
    }

    fn model_now() -> i64 {
        crate::model::now_ms()
    }

    /// A row from before body digests were kept has only its delivery id: a redelivery under that id, now
    /// with a body digest, is still a duplicate.
    #[test]
    fn a_row_without_a_body_digest_is_found_by_its_delivery_id() {
        let c = memory();
        c.execute_batch(
            "INSERT INTO deploys (id, app, trigger, provider, delivery_id, actor, state, requested_at)
               VALUES ('20261201T000000-aaaaaa', 'blog', 'webhook', 'github', 'd-1', 'x', 'ignored', 0)",
        )
        .expect("an old row");
        let c = Conn::open(c.db, 0).expect("reopen");
        let first = crate::model::DeployId::parse("20261201T000000-aaaaaa").expect("id");
        assert_eq!(
            deploys::enqueue(&c, &push("d-1", 3), 1).expect("enqueue"),
            Enqueued::Duplicate { first }
        );
    }

    /// A job that fails after it recorded a request takes its memory back with its savepoint.
    #[tokio::test]
    async fn a_failed_job_leaves_no_memory_behind() {
        let dir = crate::infra::scratch::TestDir::new("store-undo");
        let store = Store::open(&dir.path("haul.db")).expect("open");
        let req = push("d-1", 7);
        let failed = store
            .call(move |c| {
                deploys::enqueue(c, &req, 1)?;
                Err::<(), _>(StoreError::NotRun)
            })
            .await;
        assert!(failed.is_err());
        assert!(
            matches!(
                enqueue(&store, push("d-1", 7), 2).await,
                Enqueued::Recorded { .. }
            ),
            "nothing of the failed job is remembered"
        );
    }

    /// v10 rebuilds the audit table without AUTOINCREMENT: every row and its `seq` stay, the indexes are made
    /// again, and the next row takes the largest `seq` plus one, as before.
    #[test]
    fn v10_keeps_every_row_and_its_seq() {
        let mut c = Connection::open_in_memory().expect("db");
        let tx = c.transaction().expect("tx");
        for sql in &schema::SCHEMA[..9] {
            tx.execute_batch(sql).expect("v9");
        }
        tx.pragma_update(None, "user_version", 9).expect("version");
        tx.commit().expect("commit");
        c.execute_batch(
            "INSERT INTO deploys (seq, id, app, trigger, provider, delivery_id, actor, state, requested_at, release_id, body_digest, parent)
               VALUES (3, '20261201T000000-aaaaaa', 'blog', 'webhook', 'github', 'd-1', 'x', 'succeeded', 5, 'r1', x'0909', 'p');
             INSERT INTO deploys (seq, id, app, trigger, actor, state, requested_at)
               VALUES (40, '20261201T000000-aaaaab', 'blog', 'manual', 'y', 'ignored', 6);",
        )
        .expect("v9 rows");
        let before: Vec<Row> = rows(&c);
        migrate(&mut c).expect("migrate");
        assert_eq!(rows(&c), before);
        let sql: String = c
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'deploys'", [], |r| {
                r.get(0)
            })
            .expect("table");
        assert!(!sql.contains("AUTOINCREMENT"), "{sql}");
        let indexes: Vec<String> = {
            let mut stmt = c
                .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'deploys' ORDER BY name")
                .expect("indexes");
            let names = stmt.query_map([], |r| r.get(0)).expect("rows");
            names.map(|n| n.expect("name")).collect()
        };
        assert_eq!(
            indexes,
            [
                "deploys_app_release",
                "deploys_app_seq",
                "deploys_app_state_seq",
                "sqlite_autoindex_deploys_1"
            ]
        );
        c.execute_batch(
            "INSERT INTO deploys (id, app, trigger, actor, state, requested_at)
               VALUES ('20261201T000001-aaaaaa', 'blog', 'manual', 'z', 'ignored', 7)",
        )
        .expect("a new row");
        let seq: i64 = c
            .query_row("SELECT max(seq) FROM deploys", [], |r| r.get(0))
            .expect("seq");
        assert_eq!(seq, 41);
        let mut dup = c.prepare("INSERT INTO deploys (id, app, trigger, actor, state, requested_at) VALUES ('20261201T000001-aaaaaa', 'blog', 'manual', 'z', 'ignored', 8)").expect("dup");
        assert!(dup.execute([]).is_err(), "ids stay unique");

        type Row = (i64, String, Option<Vec<u8>>, Option<String>, Option<String>);
        fn rows(c: &Connection) -> Vec<Row> {
            let mut stmt = c
                .prepare("SELECT seq, id, body_digest, release_id, parent FROM deploys ORDER BY seq")
                .expect("select");
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .expect("rows");
            rows.map(|r| r.expect("row")).collect()
        }
    }

    /// A database of schema v8 keeps its replay memory across the upgrade: the body digests move into the
    /// rows, the two tables go.
    #[test]
    fn v9_moves_the_body_digests_into_the_rows() {
        let mut c = Connection::open_in_memory().expect("db");
        let tx = c.transaction().expect("tx");
        for sql in &schema::SCHEMA[..8] {
            tx.execute_batch(sql).expect("v8");
        }
        tx.pragma_update(None, "user_version", 8).expect("version");
        tx.commit().expect("commit");
        let now = model_now();
        c.execute_batch(&format!(
            "INSERT INTO deploys (id, app, trigger, provider, delivery_id, actor, state, requested_at)
               VALUES ('20261201T000000-aaaaaa', 'blog', 'webhook', 'github', 'd-1', 'x', 'ignored', {now});
             INSERT INTO deliveries VALUES ('blog', 'd-1', '20261201T000000-aaaaaa', {now});
             INSERT INTO bodies VALUES ('blog', '{}', '20261201T000000-aaaaaa', {now});",
            hex::encode([9u8; 32])
        ))
        .expect("v8 rows");
        // The upgrade walks `bodies` once and finds each row by its id (8 days of a flood can be a million
        // bodies: a correlated subquery per row would be quadratic).
        let plan: Vec<String> = {
            let tx = c.transaction().expect("tx");
            let mut parts = schema::SCHEMA[8].split(';');
            tx.execute_batch(parts.next().expect("the v9 column"))
                .expect("column");
            let sql = parts.next().expect("the v9 update");
            let mut stmt = tx.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("plan");
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).expect("rows");
            let plan = rows.map(|r| r.expect("row")).collect();
            drop(stmt);
            tx.rollback().expect("rollback");
            plan
        };
        assert!(
            plan.iter().any(|p| p.contains("sqlite_autoindex_deploys")),
            "{plan:?}"
        );
        migrate(&mut c).expect("migrate");
        let digest: Vec<u8> = c
            .query_row("SELECT body_digest FROM deploys", [], |r| r.get(0))
            .expect("digest");
        assert_eq!(digest, vec![9u8; 32]);
        let tables: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('deliveries', 'bodies')",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        assert_eq!(tables, 0);
        let c = Conn::open(c, now).expect("memory");
        let first = crate::model::DeployId::parse("20261201T000000-aaaaaa").expect("id");
        assert_eq!(
            deploys::enqueue(&c, &push("d-2", 9), now).expect("enqueue"),
            Enqueued::Replay { first }
        );
    }
}
