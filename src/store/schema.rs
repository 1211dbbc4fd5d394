//! The schema and its migrations: one entry per `user_version`, applied in order inside one transaction at
//! open. Every table haul keeps is created here (the `alerts` table too); nothing else runs DDL. The schema
//! is not part of haul's contract on disk: read the audit with `haul history --json`, not with SQL.

use rusqlite::Connection;

pub(super) const SCHEMA: &[&str] = &[
    // v1
    "CREATE TABLE deploys (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        app TEXT NOT NULL,
        trigger TEXT NOT NULL,
        provider TEXT,
        delivery_id TEXT,
        git_ref TEXT,
        sha TEXT,
        actor TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        release_id TEXT,
        previous_sha TEXT,
        superseded_by TEXT,
        requested_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER
    );
    CREATE INDEX deploys_app_seq ON deploys(app, seq);
    CREATE INDEX deploys_state ON deploys(state) WHERE state IN ('queued', 'running');
    CREATE TABLE deliveries (
        app TEXT NOT NULL,
        delivery_id TEXT NOT NULL,
        deploy_id TEXT NOT NULL,
        seen_at INTEGER NOT NULL,
        PRIMARY KEY (app, delivery_id)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_seen ON deliveries(seen_at);",
    // v2: rollbacks name their target.
    "ALTER TABLE deploys ADD COLUMN target TEXT;",
    // v3: per-app state lookups (the queue's supersede and claim, `haul status`) stay index seeks at 100,000
    // rows instead of scans of the app's whole history; release lookups likewise.
    "CREATE INDEX deploys_app_state_seq ON deploys(app, state, seq);
     CREATE INDEX deploys_app_release ON deploys(app, release_id);",
    // v4: (app, state, seq) serves every state lookup; the partial state index was only extra writes.
    "DROP INDEX IF EXISTS deploys_state;",
    // v5: artifacts (images, objects) record the content digest pinned and verified.
    "ALTER TABLE deploys ADD COLUMN digest TEXT;",
    // v6: fewer index writes on the hot path (every webhook inserts a row and a delivery id): release lookups
    // only ever ask for a release id, so rows without one (ignored, superseded, queued) stay out of that
    // index; delivery ids are pruned by a scan once an hour instead of keeping a second index for it.
    "DROP INDEX IF EXISTS deploys_app_release;
     CREATE INDEX deploys_app_release ON deploys(app, release_id) WHERE release_id IS NOT NULL;
     DROP INDEX IF EXISTS deliveries_seen;",
    // v7: the notifier's alert state (the failure being told, the dead-man's switch), which `ops::notify`
    // used to create on first use; IF NOT EXISTS because databases from then already have it.
    "CREATE TABLE IF NOT EXISTS alerts (
        app TEXT NOT NULL, kind TEXT NOT NULL, signature TEXT NOT NULL,
        first_at INTEGER NOT NULL, sent_at INTEGER NOT NULL, suppressed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (app, kind)) WITHOUT ROWID;",
    // v8: order by history, not arrival (a push names the sha it moved the branch from), and replay memory by
    // content (forges that sign the body, not the delivery id: the same body under a fresh id is a replay).
    "ALTER TABLE deploys ADD COLUMN parent TEXT;
     CREATE TABLE bodies (
        app TEXT NOT NULL,
        digest TEXT NOT NULL,
        deploy_id TEXT NOT NULL,
        seen_at INTEGER NOT NULL,
        PRIMARY KEY (app, digest)
     ) WITHOUT ROWID;",
    // v9: the replay memory lives in the writer, rebuilt at open from the audit rows of the last 8 days: a
    // row keeps its body digest, and the two tables keyed by random values (two more B-tree pages written
    // per webhook) go. Their last 8 days are in the rows already (delivery ids) or moved there (digests): a
    // join that walks `bodies` once and finds each row by its unique id.
    "ALTER TABLE deploys ADD COLUMN body_digest BLOB;
     UPDATE deploys SET body_digest = unhex(b.digest) FROM bodies AS b WHERE deploys.id = b.deploy_id;
     DROP TABLE bodies;
     DROP TABLE deliveries;",
    // v10: `seq` without AUTOINCREMENT. No audit row is ever deleted, so the largest `seq` plus one (what a
    // plain INTEGER PRIMARY KEY takes) is what AUTOINCREMENT gave, and every insert no longer reads and
    // rewrites `sqlite_sequence` (one more page in the WAL per commit: the flood's profile). SQLite cannot
    // drop the keyword in place: the table is rebuilt, rows and `seq` values kept, and its indexes made again.
    "CREATE TABLE deploys_v10 (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        app TEXT NOT NULL,
        trigger TEXT NOT NULL,
        provider TEXT,
        delivery_id TEXT,
        git_ref TEXT,
        sha TEXT,
        actor TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        release_id TEXT,
        previous_sha TEXT,
        superseded_by TEXT,
        requested_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        target TEXT,
        digest TEXT,
        parent TEXT,
        body_digest BLOB
     );
     INSERT INTO deploys_v10 (seq, id, app, trigger, provider, delivery_id, git_ref, sha, actor, state, reason,
            release_id, previous_sha, superseded_by, requested_at, started_at, finished_at, target, digest,
            parent, body_digest)
        SELECT seq, id, app, trigger, provider, delivery_id, git_ref, sha, actor, state, reason, release_id,
            previous_sha, superseded_by, requested_at, started_at, finished_at, target, digest, parent,
            body_digest
        FROM deploys ORDER BY seq;
     DROP TABLE deploys;
     ALTER TABLE deploys_v10 RENAME TO deploys;
     CREATE INDEX deploys_app_seq ON deploys(app, seq);
     CREATE INDEX deploys_app_state_seq ON deploys(app, state, seq);
     CREATE INDEX deploys_app_release ON deploys(app, release_id) WHERE release_id IS NOT NULL;",
    // v11: a fleet app's webhook keeps its signed delivery (body and signature headers, JSON) with its row,
    // written in the same transaction, so the trigger handed to the fleet later (the engine away when it
    // came) still carries what every host re-verifies. NULL for every other row.
    "ALTER TABLE deploys ADD COLUMN signed BLOB;",
    // v12: `haul pause` (an app, or `*` for all): automatic triggers are recorded `deferred` while held.
    "CREATE TABLE holds (
        app TEXT PRIMARY KEY,
        actor TEXT NOT NULL,
        reason TEXT,
        since INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // v13: `approve = true`: who approved a request (`haul approve`), so a window or a pause that holds it
    // afterwards does not ask again.
    "ALTER TABLE deploys ADD COLUMN approved_by TEXT;",
    // v14: `gate = "ci"`: what the forge said of CI on each commit, so a push that arrives after its run
    // finished is decided at once.
    "CREATE TABLE ci_results (
        app TEXT NOT NULL,
        sha TEXT NOT NULL,
        passed INTEGER NOT NULL,
        what TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (app, sha)
     ) WITHOUT ROWID;",
    // v15: `[apps.NAME.report]`: the state each deploy was last told to the forge in, so a restart neither
    // repeats a commit status nor loses one.
    "CREATE TABLE reports (
        deploy_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        at INTEGER NOT NULL
     ) WITHOUT ROWID;",
    // v16: `gate = "ci"`: the digests of the CI verdicts' bodies of the last 8 days, so a replayed verdict
    // (the same signed body, under any delivery id) is a duplicate and changes nothing.
    "CREATE TABLE ci_seen (
        app TEXT NOT NULL,
        digest TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (app, digest)
     ) WITHOUT ROWID;",
];

pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk before we answer; "acknowledged" must mean "durably recorded".
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The per-job savepoints' statement journals stay in memory instead of spilling to temp files (the
    // benchmark's profile showed them as the largest cost of a webhook flood).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Checkpoint every 8,192 WAL pages (8 MiB with a new database's 1 KiB pages) instead of 1,000: the hot leaf pages a flood rewrites on every
    // commit are copied into the database once per checkpoint, not once per thousand pages.
    conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
    // A page cache of 1 MiB instead of SQLite's 2 MiB: the interior pages of the indexes a webhook touches
    // fit in it, and the daemon's peak RSS (20 MB at most) does not carry a second megabyte of leaves the OS
    // page cache holds anyway.
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(())
}

pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (i, sql) in SCHEMA.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
    }
    tx.commit()
}
