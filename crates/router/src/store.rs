//! Durable state of the router in SQLite (WAL, `synchronous=FULL`): patches, their event
//! trail, leases (columns of the patch row) and the outbox towards the summarizer.
//!
//! Every method runs one transaction on a blocking thread; a method returns only after its
//! transaction is committed, so "stored" means "survives kill -9".

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ghost_core::{ApplyReport, Patch, Status};
use rusqlite::{Connection, OptionalExtension, params};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column could not be read back.
    #[error("corrupt stored {what} for patch {id}: {source}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// Which patch.
        id: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The blocking task running the transaction died.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One patch as stored.
#[derive(Debug, Clone)]
pub struct PatchRecord {
    /// The patch itself.
    pub patch: Patch,
    /// SHA-256 of its canonical form.
    pub content_hash: String,
    /// Current state.
    pub status: Status,
    /// Attempts started so far.
    pub attempt: u32,
    /// W3C traceparent of the span that accepted it.
    pub traceparent: String,
    /// Why it did not succeed (empty otherwise).
    pub error: String,
    /// The last attempt's report, once one arrived.
    pub report: Option<ApplyReport>,
    /// Fencing token of the current lease (0: none).
    pub fencing_token: u64,
    /// Executor holding the current lease.
    pub leased_to: String,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
}

/// The result of storing a submitted patch.
#[derive(Debug)]
pub enum Inserted {
    /// A new patch was stored.
    Created(PatchRecord),
    /// The same id with the same content was already stored: the stored record.
    Existing(PatchRecord),
    /// The same id was stored with other content.
    Conflict,
}

/// A pending delivery of a terminal outcome to the summarizer.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The patch.
    pub patch_id: String,
    /// Which attempt's outcome.
    pub attempt: u32,
    /// Deliveries tried so far.
    pub tries: u32,
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const SCHEMA: &str = "
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
";

const COLUMNS: &str = "id, patch_json, content_hash, status, attempt, traceparent, error, \
                       report_json, fencing_token, leased_to, created_ms, updated_ms";

/// The router's SQLite database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

fn priority_rank(patch: &Patch) -> i64 {
    match patch.priority {
        ghost_core::Priority::Low => 0,
        ghost_core::Priority::Normal => 1,
        ghost_core::Priority::High => 2,
    }
}

fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: row.get(0)?,
        patch_json: row.get(1)?,
        content_hash: row.get(2)?,
        status: row.get(3)?,
        attempt: row.get(4)?,
        traceparent: row.get(5)?,
        error: row.get(6)?,
        report_json: row.get(7)?,
        fencing_token: row.get(8)?,
        leased_to: row.get(9)?,
        created_ms: row.get(10)?,
        updated_ms: row.get(11)?,
    })
}

struct RawRecord {
    id: String,
    patch_json: String,
    content_hash: String,
    status: String,
    attempt: u32,
    traceparent: String,
    error: String,
    report_json: Option<String>,
    fencing_token: i64,
    leased_to: String,
    created_ms: i64,
    updated_ms: i64,
}

impl RawRecord {
    fn decode(self) -> Result<PatchRecord, StoreError> {
        let corrupt = |what, source| StoreError::Corrupt {
            what,
            id: self.id.clone(),
            source,
        };
        let patch: Patch =
            serde_json::from_str(&self.patch_json).map_err(|e| corrupt("patch", e))?;
        let status: Status = serde_json::from_value(serde_json::Value::String(self.status.clone()))
            .map_err(|e| corrupt("status", e))?;
        let report = match &self.report_json {
            Some(json) => Some(serde_json::from_str(json).map_err(|e| corrupt("report", e))?),
            None => None,
        };
        Ok(PatchRecord {
            patch,
            content_hash: self.content_hash,
            status,
            attempt: self.attempt,
            traceparent: self.traceparent,
            error: self.error,
            report,
            fencing_token: u64::try_from(self.fencing_token).unwrap_or(0),
            leased_to: self.leased_to,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        })
    }
}

fn get_tx(conn: &Connection, id: &str) -> Result<Option<PatchRecord>, StoreError> {
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM patches WHERE id = ?1"),
            params![id],
            read_record,
        )
        .optional()?;
    raw.map(RawRecord::decode).transpose()
}

fn event_tx(
    conn: &Connection,
    id: &str,
    status: Status,
    actor: &str,
    attempt: u32,
    detail: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO events (patch_id, at_ms, status, actor, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, now_ms(), status.as_str(), actor, attempt, detail],
    )?;
    Ok(())
}

fn set_status_tx(
    conn: &Connection,
    id: &str,
    status: Status,
    actor: &str,
    detail: &str,
) -> Result<Option<PatchRecord>, StoreError> {
    conn.execute(
        "UPDATE patches SET status = ?2, updated_ms = ?3 WHERE id = ?1",
        params![id, status.as_str(), now_ms()],
    )?;
    let record = get_tx(conn, id)?;
    if let Some(record) = &record {
        event_tx(conn, id, status, actor, record.attempt, detail)?;
    }
    Ok(record)
}

/// Drops a patch's lease and puts it back in the queue, with an event saying why.
fn requeue_tx(conn: &Connection, id: &str, reason: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE patches SET status = 'queued', fencing_token = 0, leased_to = '',
                lease_deadline_ms = 0, updated_ms = ?2 WHERE id = ?1",
        params![id, now_ms()],
    )?;
    let attempt: u32 = conn.query_row(
        "SELECT attempt FROM patches WHERE id = ?1",
        params![id],
        |row| row.get(0),
    )?;
    event_tx(conn, id, Status::Queued, "router", attempt, reason)
}

/// One row of a patch's audit trail.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Unix ms.
    pub at_ms: i64,
    /// The state entered.
    pub status: String,
    /// Who caused it (`gateway`, `executor:<id>`, `router`, a Slack user).
    pub actor: String,
    /// Attempt number at the time.
    pub attempt: u32,
    /// Free text.
    pub detail: String,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with_tx<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tx = guard.transaction()?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await?
    }

    /// Stores a submitted patch as `queued` unless its id is already taken.
    pub async fn insert(&self, patch: Patch, traceparent: String) -> Result<Inserted, StoreError> {
        self.with_tx(move |conn| {
            let id = patch.id.to_string();
            let hash = patch.content_hash();
            if let Some(existing) = get_tx(conn, &id)? {
                return Ok(if existing.content_hash == hash {
                    Inserted::Existing(existing)
                } else {
                    Inserted::Conflict
                });
            }
            let seq: i64 = conn.query_row(
                "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
                [],
                |row| row.get(0),
            )?;
            let now = now_ms();
            conn.execute(
                "INSERT INTO patches (id, target, priority, content_hash, patch_json, status, traceparent, created_ms, updated_ms, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
                params![
                    id,
                    patch.target.as_str(),
                    priority_rank(&patch),
                    hash,
                    patch.canonical_json(),
                    Status::Queued.as_str(),
                    traceparent,
                    now,
                    seq
                ],
            )?;
            event_tx(conn, &id, Status::Received, "gateway", 0, "")?;
            event_tx(conn, &id, Status::Queued, "router", 0, "")?;
            let record = get_tx(conn, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            Ok(Inserted::Created(record))
        })
        .await
    }

    /// One patch.
    pub async fn get(&self, id: String) -> Result<Option<PatchRecord>, StoreError> {
        self.with_tx(move |conn| get_tx(conn, &id)).await
    }

    /// Patches newest first, filtered by target and status when given.
    pub async fn list(
        &self,
        target: Option<String>,
        status: Option<Status>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<PatchRecord>, StoreError> {
        self.with_tx(move |conn| {
            let mut statement = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM patches
                 WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR status = ?2)
                 ORDER BY seq DESC LIMIT ?3 OFFSET ?4"
            ))?;
            let rows = statement.query_map(
                params![
                    target,
                    status.map(Status::as_str),
                    limit,
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                read_record,
            )?;
            let mut records = Vec::new();
            for raw in rows {
                records.push(raw?.decode()?);
            }
            Ok(records)
        })
        .await
    }

    /// The audit trail of one patch, oldest first.
    pub async fn events(&self, id: String) -> Result<Vec<EventRow>, StoreError> {
        self.with_tx(move |conn| {
            let mut statement = conn.prepare(
                "SELECT at_ms, status, actor, attempt, detail FROM events WHERE patch_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![id], |row| {
                Ok(EventRow {
                    at_ms: row.get(0)?,
                    status: row.get(1)?,
                    actor: row.get(2)?,
                    attempt: row.get(3)?,
                    detail: row.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Leases the next queued patch of `target` to `executor`: highest priority, then oldest.
    /// Returns the leased record (attempt incremented, fresh fencing token) or `None`.
    pub async fn lease_next(
        &self,
        target: String,
        executor: String,
        lease_ms: i64,
    ) -> Result<Option<PatchRecord>, StoreError> {
        self.with_tx(move |conn| {
            let paused: bool = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = ?1",
                    params![format!("paused:{target}")],
                    |row| row.get::<_, i64>(0),
                )
                .optional()?
                .is_some_and(|value| value != 0);
            if paused {
                return Ok(None);
            }
            let next: Option<String> = conn
                .query_row(
                    "SELECT id FROM patches WHERE target = ?1 AND status = 'queued'
                     ORDER BY priority DESC, seq LIMIT 1",
                    params![target],
                    |row| row.get(0),
                )
                .optional()?;
            let Some(id) = next else {
                return Ok(None);
            };
            let token: i64 = conn.query_row(
                "UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value",
                [],
                |row| row.get(0),
            )?;
            let now = now_ms();
            conn.execute(
                "UPDATE patches SET status = 'leased', attempt = attempt + 1, fencing_token = ?2,
                        leased_to = ?3, lease_deadline_ms = ?4, updated_ms = ?5, error = ''
                 WHERE id = ?1",
                params![id, token, executor, now + lease_ms, now],
            )?;
            let record = get_tx(conn, &id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
            event_tx(
                conn,
                &id,
                Status::Leased,
                &format!("executor:{executor}"),
                record.attempt,
                &format!("fencing token {token}"),
            )?;
            Ok(Some(record))
        })
        .await
    }

    /// Extends the leases named by `tokens` held by `executor`.
    pub async fn renew(
        &self,
        executor: String,
        tokens: Vec<u64>,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        self.with_tx(move |conn| {
            let deadline = now_ms() + lease_ms;
            for token in tokens {
                conn.execute(
                    "UPDATE patches SET lease_deadline_ms = ?3
                     WHERE fencing_token = ?1 AND leased_to = ?2
                       AND status IN ('leased', 'applying', 'validating')",
                    params![i64::try_from(token).unwrap_or(-1), executor, deadline],
                )?;
            }
            Ok(())
        })
        .await
    }

    /// Records progress (`applying`, `validating`) under a live lease; false if the lease is stale.
    pub async fn progress(
        &self,
        id: String,
        token: u64,
        status: Status,
        detail: String,
    ) -> Result<bool, StoreError> {
        self.with_tx(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(false);
            };
            if record.fencing_token != token || record.status.is_terminal() {
                return Ok(false);
            }
            set_status_tx(
                conn,
                &id,
                status,
                &format!("executor:{}", record.leased_to),
                &detail,
            )?;
            Ok(true)
        })
        .await
    }

    /// Stores an attempt's report if `token` is the live lease, queueing the outcome for the
    /// summarizer in the same transaction. `None` when the token is stale.
    pub async fn complete(
        &self,
        id: String,
        token: u64,
        report: ApplyReport,
    ) -> Result<Option<PatchRecord>, StoreError> {
        self.with_tx(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(None);
            };
            if record.fencing_token != token || record.status.is_terminal() {
                return Ok(None);
            }
            let report_json =
                serde_json::to_string(&report).map_err(|source| StoreError::Corrupt {
                    what: "report",
                    id: id.clone(),
                    source,
                })?;
            let now = now_ms();
            conn.execute(
                "UPDATE patches SET status = ?2, error = ?3, report_json = ?4, updated_ms = ?5,
                        lease_deadline_ms = 0
                 WHERE id = ?1",
                params![id, report.status.as_str(), report.error, report_json, now],
            )?;
            event_tx(
                conn,
                &id,
                report.status,
                &format!("executor:{}", record.leased_to),
                record.attempt,
                &report.error,
            )?;
            conn.execute(
                "INSERT OR IGNORE INTO outbox (patch_id, attempt, next_at_ms) VALUES (?1, ?2, ?3)",
                params![id, record.attempt, now],
            )?;
            get_tx(conn, &id)
        })
        .await
    }

    /// Puts patches back in the queue: those leased to `executor` (when given) or whose lease
    /// expired. Returns the requeued ids with their targets.
    pub async fn requeue(
        &self,
        executor: Option<String>,
        reason: String,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.with_tx(move |conn| {
            let now = now_ms();
            let mut statement = conn.prepare(
                "SELECT id, target FROM patches
                 WHERE status IN ('leased', 'applying', 'validating')
                   AND ((?1 IS NOT NULL AND leased_to = ?1) OR (?1 IS NULL AND lease_deadline_ms < ?2))",
            )?;
            let stale: Vec<(String, String)> = statement
                .query_map(params![executor, now], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, _) in &stale {
                requeue_tx(conn, id, &reason)?;
            }
            Ok(stale)
        })
        .await
    }

    /// Every patch that was in flight when the router stopped goes back to the queue.
    pub async fn requeue_in_flight(&self) -> Result<usize, StoreError> {
        self.with_tx(|conn| {
            let ids: Vec<String> = conn
                .prepare(
                    "SELECT id FROM patches WHERE status IN ('leased', 'applying', 'validating')",
                )?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for id in &ids {
                requeue_tx(conn, id, "router restarted")?;
            }
            Ok(ids.len())
        })
        .await
    }

    /// Cancels a queued patch (running ones are cancelled through their executor).
    pub async fn cancel_queued(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<PatchRecord>, StoreError> {
        self.with_tx(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(None);
            };
            if record.status != Status::Queued {
                return Ok(Some(record));
            }
            let report =
                ApplyReport::ended(Status::Cancelled, format!("cancelled by {actor} while queued"));
            let report_json = serde_json::to_string(&report).unwrap_or_default();
            conn.execute(
                "UPDATE patches SET status = 'cancelled', error = ?2, report_json = ?3, updated_ms = ?4 WHERE id = ?1",
                params![id, report.error, report_json, now_ms()],
            )?;
            event_tx(conn, &id, Status::Cancelled, &actor, record.attempt, "")?;
            conn.execute(
                "INSERT OR IGNORE INTO outbox (patch_id, attempt, next_at_ms) VALUES (?1, ?2, ?3)",
                params![id, record.attempt, now_ms()],
            )?;
            get_tx(conn, &id)
        })
        .await
    }

    /// Queues a finished patch for another attempt.
    pub async fn retry(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<PatchRecord>, StoreError> {
        self.with_tx(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(None);
            };
            if !record.status.is_terminal() || record.status == Status::Succeeded {
                return Ok(Some(record));
            }
            set_status_tx(conn, &id, Status::Queued, &actor, "retry requested")
        })
        .await
    }

    /// Pauses or resumes handing out work for a target.
    pub async fn set_paused(&self, target: String, paused: bool) -> Result<(), StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![format!("paused:{target}"), i64::from(paused)],
            )?;
            Ok(())
        })
        .await
    }

    /// Outcomes due for delivery to the summarizer.
    pub async fn outbox_due(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.with_tx(move |conn| {
            let mut statement = conn.prepare(
                "SELECT id, patch_id, attempt, tries FROM outbox
                 WHERE delivered_ms IS NULL AND next_at_ms <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![now_ms(), limit], |row| {
                Ok(OutboxRow {
                    id: row.get(0)?,
                    patch_id: row.get(1)?,
                    attempt: row.get(2)?,
                    tries: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Marks an outbox row delivered.
    pub async fn outbox_delivered(&self, row_id: i64) -> Result<(), StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "UPDATE outbox SET delivered_ms = ?2 WHERE id = ?1",
                params![row_id, now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Schedules another delivery try after `delay_ms`.
    pub async fn outbox_retry_later(&self, row_id: i64, delay_ms: i64) -> Result<(), StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "UPDATE outbox SET tries = tries + 1, next_at_ms = ?2 WHERE id = ?1",
                params![row_id, now_ms() + delay_ms],
            )?;
            Ok(())
        })
        .await
    }
}
