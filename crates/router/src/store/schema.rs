//! The router's schema and its migrations.

use ghost_core::Patch;
use rusqlite::{Connection, params};

use super::StoreError;

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran. A database
/// created before migrations existed has version 0 and the first migration's tables already:
/// every statement of the first migration is therefore `IF NOT EXISTS`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE IF NOT EXISTS patches (
        id            TEXT PRIMARY KEY,
        target        TEXT NOT NULL,
        priority      INTEGER NOT NULL,
        content_hash  TEXT NOT NULL,
        patch_json    TEXT NOT NULL,
        status        TEXT NOT NULL,
        attempt       INTEGER NOT NULL DEFAULT 0,
        traceparent   TEXT NOT NULL DEFAULT '',
        error         TEXT NOT NULL DEFAULT '',
        report_json   TEXT,
        fencing_token INTEGER NOT NULL DEFAULT 0,
        leased_to     TEXT NOT NULL DEFAULT '',
        lease_deadline_ms INTEGER NOT NULL DEFAULT 0,
        created_ms    INTEGER NOT NULL,
        updated_ms    INTEGER NOT NULL,
        seq           INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS patches_queue ON patches (target, status, priority DESC, seq);
    CREATE TABLE IF NOT EXISTS events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        patch_id TEXT NOT NULL,
        at_ms    INTEGER NOT NULL,
        status   TEXT NOT NULL,
        actor    TEXT NOT NULL,
        attempt  INTEGER NOT NULL,
        detail   TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX IF NOT EXISTS events_patch ON events (patch_id, id);
    CREATE TABLE IF NOT EXISTS outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        patch_id     TEXT NOT NULL,
        attempt      INTEGER NOT NULL,
        tries        INTEGER NOT NULL DEFAULT 0,
        next_at_ms   INTEGER NOT NULL,
        delivered_ms INTEGER,
        UNIQUE (patch_id, attempt)
    );
    CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO meta (key, value) VALUES ('fencing_token', 0), ('seq', 0);
    ",
    "
    ALTER TABLE patches ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX patches_status ON patches (status, target);
    CREATE TABLE deps (
        patch_id   TEXT NOT NULL,
        depends_on TEXT NOT NULL,
        PRIMARY KEY (patch_id, depends_on)
    );
    CREATE INDEX deps_reverse ON deps (depends_on);
    CREATE TABLE attempts (
        patch_id    TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        status      TEXT NOT NULL,
        executor    TEXT NOT NULL,
        started_ms  INTEGER NOT NULL,
        finished_ms INTEGER,
        report_json TEXT,
        PRIMARY KEY (patch_id, attempt)
    );
    ALTER TABLE outbox ADD COLUMN report_json TEXT;
    ALTER TABLE outbox ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE alert_state (
        key      TEXT PRIMARY KEY,
        since_ms INTEGER NOT NULL
    );
    CREATE TABLE alert_outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        key          TEXT NOT NULL,
        resolved     INTEGER NOT NULL,
        severity     TEXT NOT NULL,
        summary      TEXT NOT NULL,
        labels_json  TEXT NOT NULL,
        at_ms        INTEGER NOT NULL,
        tries        INTEGER NOT NULL DEFAULT 0,
        next_at_ms   INTEGER NOT NULL,
        delivered_ms INTEGER
    );
    ",
    // Event times to the microsecond (whole ms hid the stages of a patch that takes a few
    // ms end to end); rows from before keep 0 and are read as `at_ms` × 1000.
    "
    ALTER TABLE events ADD COLUMN at_us INTEGER NOT NULL DEFAULT 0;
    ",
    // What the gateway forgave while reading the document (JSON list of strings), for the
    // summary; rows from before have none.
    "
    ALTER TABLE patches ADD COLUMN warnings_json TEXT NOT NULL DEFAULT '[]';
    ",
    // Per-executor tokens (only their SHA-256 is kept) scoped to targets, and the audit trail
    // of what was done with them. A name is unique among live tokens; a revoked name may be
    // issued again.
    "
    CREATE TABLE executor_tokens (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT NOT NULL,
        hash         TEXT NOT NULL UNIQUE,
        targets_json TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        created_by   TEXT NOT NULL,
        revoked_ms   INTEGER NOT NULL DEFAULT 0,
        last_used_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX executor_tokens_live_name ON executor_tokens (name) WHERE revoked_ms = 0;
    CREATE TABLE token_audit (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms  INTEGER NOT NULL,
        action TEXT NOT NULL,
        name   TEXT NOT NULL,
        actor  TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    ",
    // The token an audit row is about, by id: a name may be issued again after a revocation.
    // Rows from before have 0.
    "
    ALTER TABLE token_audit ADD COLUMN token_id INTEGER NOT NULL DEFAULT 0;
    ",
    // API keys made at run time (only their SHA-256 is kept), shared by every gateway; the
    // set's version (in `meta`, `api_keys_version`) is bumped by every change. Changes are
    // audited in `token_audit` (actions `api_key.*`).
    "
    CREATE TABLE api_keys (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT NOT NULL UNIQUE,
        sha256       TEXT NOT NULL UNIQUE,
        scopes_json  TEXT NOT NULL,
        targets_json TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        created_by   TEXT NOT NULL
    );
    INSERT OR IGNORE INTO meta (key, value) VALUES ('api_keys_version', 0);
    ",
    // The hashes of revoked runtime keys (the last 10,000), so an import never brings one
    // back; and which keys were imported rather than created (rows from before: created).
    "
    CREATE TABLE api_keys_revoked (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        sha256     TEXT NOT NULL UNIQUE,
        revoked_ms INTEGER NOT NULL
    );
    ALTER TABLE api_keys ADD COLUMN imported INTEGER NOT NULL DEFAULT 0;
    ",
    // The name of the credential that submitted a patch (the gateway's API key), for the
    // alerter's `routing.notify_users`; rows from before have none.
    "
    ALTER TABLE patches ADD COLUMN key_name TEXT NOT NULL DEFAULT '';
    ",
    // State the gateway replicas share: dashboard sessions (by the SHA-256 of their id, with
    // the SHA-256 of the key that logged in) and Standard Webhooks deliveries per sender (in
    // progress under a lease until `until_ms`, or committed with their answer until then).
    "
    CREATE TABLE gateway_sessions (
        id_sha256         BLOB PRIMARY KEY,
        credential_sha256 BLOB NOT NULL,
        csrf              TEXT NOT NULL,
        created_ms        INTEGER NOT NULL,
        expires_ms        INTEGER NOT NULL
    );
    CREATE INDEX gateway_sessions_expiry ON gateway_sessions (expires_ms);
    CREATE TABLE gateway_deliveries (
        sender       TEXT NOT NULL,
        id           TEXT NOT NULL,
        body_sha256  BLOB NOT NULL,
        committed    INTEGER NOT NULL,
        lease        TEXT NOT NULL,
        until_ms     INTEGER NOT NULL,
        at_ms        INTEGER NOT NULL,
        status       INTEGER NOT NULL,
        content_type TEXT NOT NULL,
        location     TEXT NOT NULL,
        answer       BLOB NOT NULL,
        PRIMARY KEY (sender, id)
    );
    CREATE INDEX gateway_deliveries_until ON gateway_deliveries (until_ms);
    CREATE INDEX gateway_deliveries_age ON gateway_deliveries (committed, at_ms);
    ",
    // The undelivered rows of each outbox, for its depth and oldest-row gauges (delivered rows
    // are kept, so without these the oldest undelivered row is found by a scan).
    "
    CREATE INDEX outbox_undelivered ON outbox (id) WHERE delivered_ms IS NULL;
    CREATE INDEX alert_outbox_undelivered ON alert_outbox (id) WHERE delivered_ms IS NULL;
    ",
];

/// Applies the migrations not yet recorded in `PRAGMA user_version`.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let applied = usize::try_from(applied).unwrap_or(0);
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(migration)?;
        if index == 1 {
            backfill_deps(&tx)?;
        }
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
        tracing::info!(version = index + 1, "router schema migrated");
    }
    Ok(())
}

/// Fills `deps` from the stored patches (databases from before the table existed).
fn backfill_deps(conn: &Connection) -> Result<(), StoreError> {
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT id, patch_json FROM patches")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, json) in rows {
        let patch: Patch = serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
            what: "patch",
            id: id.clone(),
            source,
        })?;
        for dependency in &patch.depends_on {
            conn.execute(
                "INSERT OR IGNORE INTO deps (patch_id, depends_on) VALUES (?1, ?2)",
                params![id, dependency.as_str()],
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migrations that add a column, each by the column it adds: a test of old rows applies
    /// only those before it, however many migrations come later.
    fn migrations_before(column: &str) -> usize {
        MIGRATIONS
            .iter()
            .position(|migration| migration.contains(&format!("ADD COLUMN {column} ")))
            .unwrap_or_else(|| panic!("no migration adds {column}"))
    }

    /// A database as the router left it before the migration adding `column`.
    fn database_before(path: &std::path::Path, column: &str) -> Connection {
        let conn = Connection::open(path).unwrap();
        let count = migrations_before(column);
        for (index, migration) in MIGRATIONS.iter().enumerate().take(count) {
            conn.execute_batch(migration).unwrap();
            conn.pragma_update(None, "user_version", index as i64 + 1)
                .unwrap();
        }
        conn
    }

    #[test]
    fn old_row_tests_apply_the_migrations_before_their_column_only() {
        assert_eq!(migrations_before("at_us"), 2);
        assert_eq!(migrations_before("warnings_json"), 3);
    }

    #[test]
    fn events_stored_before_microseconds_read_as_their_milliseconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.db");
        {
            let conn = database_before(&path, "at_us");
            conn.execute(
                "INSERT INTO events (patch_id, at_ms, status, actor, attempt) VALUES ('old', 1700000000123, 'queued', 'router', 0)",
                [],
            )
            .unwrap();
        }
        let store = crate::store::SqliteStore::open(&path).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let events = runtime
            .block_on(crate::store::RouterStore::events(&store, "old".to_owned()))
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].at_ms, 1_700_000_000_123);
        assert_eq!(events[0].at_us, 1_700_000_000_123_000);
    }

    #[test]
    fn patches_stored_before_warnings_read_back_with_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.db");
        let patch = ghost_core::parse_json(
            br#"{"id":"old-patch","target":"MAIN","commands":["make test"]}"#,
        )
        .unwrap();
        {
            let conn = database_before(&path, "warnings_json");
            conn.execute(
                "INSERT INTO patches (id, target, priority, content_hash, patch_json, status, traceparent, created_ms, updated_ms, seq)
                 VALUES ('old-patch', 'MAIN', 0, ?1, ?2, 'queued', '', 1700000000000, 1700000000000, 1)",
                params![patch.content_hash(), serde_json::to_string(&patch).unwrap()],
            )
            .unwrap();
        }
        let store = crate::store::SqliteStore::open(&path).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let record = runtime
            .block_on(crate::store::RouterStore::get(
                &store,
                "old-patch".to_owned(),
            ))
            .unwrap()
            .expect("the old row is still there");
        assert_eq!(record.patch, patch);
        assert!(record.warnings.is_empty(), "{:?}", record.warnings);
    }
}
