//! The embedded [`RouterStore`]: SQLite in WAL mode with `synchronous=FULL`, one writer
//! thread doing group commits and one read connection.
//!
//! Storage faults. An error SQLite reports as the disk's (`SQLITE_FULL`, `SQLITE_IOERR_*`,
//! the fsync ones included) makes the store *degraded* ([`StorageHealth`]): every caller of the
//! failed batch gets [`StoreError::Unavailable`] (nothing of the batch is stored: SQLite rolls
//! back a transaction whose commit failed), new patches are refused at once with the reason
//! instead of queueing behind a failing disk, and the callers of every other write retry it
//! with backoff (see `routing`). A batch still running after [`STALL_AFTER`] (a flush that
//! hangs) degrades the store too. The store heals by itself: the router probes it
//! ([`SqliteStore::probe`] writes one row through the writer), and the first probe that
//! commits ends the degraded state.
//!
//! After a failed write or fsync the store does not trust what it wrote: the writer thread
//! drops its connection and opens a new one (and so does the read side) before the next batch.
//! We re-open rather than refuse writes until restart because SQLite never reports a commit
//! as done unless its fsync returned success: the failed transaction was rolled back and its
//! callers told so, the WAL frames it left past the last committed frame are not part of the
//! database and are overwritten by the next commit, and a fresh connection re-reads the
//! WAL index and pages from the files instead of trusting a page cache filled by a write the
//! kernel may have dropped (the PostgreSQL fsync lesson: never retry the same fsync and
//! assume the earlier writes reached the disk). So nothing the router acts on rests on a write
//! whose flush failed. After a crash, SQLite's recovery could replay such a transaction if
//! all its frames did reach the disk after all; every write the router retries is idempotent
//! (a patch id, a fencing token), so the replay changes nothing a caller relies on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ghost_core::{ApplyReport, Patch, Status};
use ghost_runtime::storage::{FaultKind, StorageHealth};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::api_keys::{
    self as keys, ApiKeyRow, KeyCreated, KeyRevoked, KeysImported, NewApiKey, Revoker,
};
use super::schema::migrate;
use super::{
    AlertRow, Completed, Delivery, EventRow, Inserted, LeaseEnded, NewAlert, NewToken, Outbox,
    OutboxBacklog, OutboxRow, PatchRecord, Revoked, RouterStore, StatsRows, StoreError, TargetRow,
    TokenRow, now_ms, now_us, rule_ms,
};

/// At most this many requests share one commit.
const MAX_BATCH: usize = 256;

const COLUMNS: &str = "id, patch_json, content_hash, status, attempt, traceparent, error, \
                       report_json, fencing_token, leased_to, created_ms, updated_ms, \
                       warnings_json, key_name";

const IN_FLIGHT: &str = "('leased', 'applying', 'validating')";

/// A request for the writer thread: runs inside the batch's transaction (in its own savepoint)
/// and returns whether it succeeded, the storage fault it met (if any), plus what to do once the
/// batch commit is known. Given no connection (none could be opened), it runs nothing and
/// leaves the answer to the batch's failure.
type Job =
    Box<dyn FnOnce(Option<&Connection>) -> (bool, Option<(FaultKind, String)>, Finish) + Send>;
/// Answers the caller; gets the batch's commit failure, if any.
type Finish = Box<dyn FnOnce(Option<&CommitFailure>) + Send>;

/// Why a batch was not committed.
#[derive(Debug, Clone)]
enum CommitFailure {
    /// The disk failed: the store is degraded.
    Storage(FaultKind, String),
    /// Anything else.
    Other(String),
}

/// A batch committing for longer than this degrades the store (a flush that hangs).
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// The storage fault behind an SQLite error, if it is one.
fn storage_fault(err: &rusqlite::Error) -> Option<FaultKind> {
    match err {
        rusqlite::Error::SqliteFailure(failure, _) => {
            FaultKind::from_sqlite_code(failure.extended_code)
        }
        _ => None,
    }
}

/// Degraded-state classification of a job's own error: a storage fault becomes
/// [`StoreError::Unavailable`], reported to the writer loop.
fn classify<T>(
    result: Result<T, StoreError>,
    health: &StorageHealth,
) -> (Result<T, StoreError>, Option<(FaultKind, String)>) {
    match result {
        Err(StoreError::Sqlite(err)) => match storage_fault(&err) {
            Some(kind) => {
                let detail = err.to_string();
                (
                    Err(StoreError::Unavailable {
                        kind,
                        reason: unavailable_reason(health, kind),
                    }),
                    Some((kind, detail)),
                )
            }
            None => (Err(StoreError::Sqlite(err)), None),
        },
        other => (other, None),
    }
}

/// What a caller is told when the disk failed (for people: no paths, no SQL).
fn unavailable_reason(health: &StorageHealth, kind: FaultKind) -> String {
    kind.sentence(health.service())
}

/// Prepared statements kept per connection (the store uses about 50 distinct ones).
const STATEMENT_CACHE: usize = 128;

/// The router's SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    health: StorageHealth,
    /// When the batch being committed started (ms since `epoch`, plus one; 0: none).
    committing_since: Arc<AtomicU64>,
    epoch: Instant,
}

/// What the writer thread owns besides its jobs.
struct Writer {
    path: PathBuf,
    conn: Option<Connection>,
    reader: Arc<Mutex<Connection>>,
    health: StorageHealth,
    committing_since: Arc<AtomicU64>,
    epoch: Instant,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// `execute` through the connection's statement cache: under load, parsing the SQL of every
/// statement again cost more CPU than running it.
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the connection's statement cache.
fn row<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, read)
}

/// The writer thread: takes every waiting request, runs each in a savepoint of one
/// transaction, commits once, then answers them all. After a storage fault it re-opens its
/// connection (and the read one) before the next batch: see the module doc.
fn write_loop(mut writer: Writer, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        let mut finishes = Vec::with_capacity(size);
        let mut faults = Vec::new();
        let started = writer.epoch.elapsed().as_millis() as u64 + 1;
        writer.committing_since.store(started, Ordering::SeqCst);
        let committed =
            match writer.connection() {
                Ok(conn) => run_batch(conn, batch, &mut finishes, &mut faults).map_err(|err| {
                    match storage_fault(&err) {
                        Some(kind) => CommitFailure::Storage(kind, err.to_string()),
                        None => CommitFailure::Other(err.to_string()),
                    }
                }),
                Err(failure) => {
                    // Every caller is answered with the reason, none left without an answer.
                    for job in batch {
                        let (_, _, finish) = job(None);
                        finishes.push(finish);
                    }
                    Err(failure)
                }
            };
        writer.committing_since.store(0, Ordering::SeqCst);
        metrics::histogram!("ghost_router_commit_batch_size").record(size as f64);
        let failure = committed.err();
        match &failure {
            Some(CommitFailure::Storage(kind, detail)) => faults.push((*kind, detail.clone())),
            Some(CommitFailure::Other(error)) => {
                tracing::error!(error = %error, size, "group commit failed");
            }
            None => {}
        }
        if let Some((kind, detail)) = faults.first() {
            writer.health.fault(*kind, detail.clone());
            // Never go on with a connection whose write or flush failed.
            writer.conn = None;
        }
        let answer = match &failure {
            Some(CommitFailure::Storage(kind, _)) => Some(CommitFailure::Storage(
                *kind,
                unavailable_reason(&writer.health, *kind),
            )),
            other => other.clone(),
        };
        for finish in finishes {
            finish(answer.as_ref());
        }
    }
}

impl Writer {
    /// The write connection, re-opened (with the read one) after a storage fault.
    fn connection(&mut self) -> Result<&mut Connection, CommitFailure> {
        if self.conn.is_none() {
            let fresh = open_connection(&self.path).and_then(|conn| {
                conn.pragma_update(None, "foreign_keys", "ON")?;
                Ok(conn)
            });
            let conn = fresh.map_err(|err| match &err {
                StoreError::Sqlite(sqlite) => match storage_fault(sqlite) {
                    Some(kind) => CommitFailure::Storage(kind, err.to_string()),
                    None => CommitFailure::Other(err.to_string()),
                },
                _ => CommitFailure::Other(err.to_string()),
            })?;
            match open_connection(&self.path) {
                Ok(reader) => {
                    *self
                        .reader
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = reader;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot re-open the read connection; keeping the old one");
                }
            }
            tracing::info!("store connections re-opened after a storage fault");
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| CommitFailure::Other("no write connection".to_owned()))
    }
}

fn run_batch(
    conn: &mut Connection,
    batch: Vec<Job>,
    finishes: &mut Vec<Finish>,
    faults: &mut Vec<(FaultKind, String)>,
) -> rusqlite::Result<()> {
    let mut tx = conn.transaction()?;
    for job in batch {
        let savepoint = tx.savepoint()?;
        let (ok, fault, finish) = job(Some(&savepoint));
        if ok {
            savepoint.commit()?;
        } else {
            savepoint.finish()?;
        }
        finishes.push(finish);
        faults.extend(fault);
    }
    tx.commit()
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
        warnings_json: row.get(12)?,
        key_name: row.get(13)?,
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
    warnings_json: String,
    key_name: String,
}

fn parse_status(id: &str, raw: &str) -> Result<Status, StoreError> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|source| {
        StoreError::Corrupt {
            what: "status",
            id: id.to_owned(),
            source,
        }
    })
}

fn parse_report(id: &str, json: &str) -> Result<ApplyReport, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        what: "report",
        id: id.to_owned(),
        source,
    })
}

fn report_json(id: &str, report: &ApplyReport) -> Result<String, StoreError> {
    serde_json::to_string(report).map_err(|source| StoreError::Corrupt {
        what: "report",
        id: id.to_owned(),
        source,
    })
}

impl RawRecord {
    fn decode(self) -> Result<PatchRecord, StoreError> {
        let patch: Patch =
            serde_json::from_str(&self.patch_json).map_err(|source| StoreError::Corrupt {
                what: "patch",
                id: self.id.clone(),
                source,
            })?;
        let status = parse_status(&self.id, &self.status)?;
        let report = match &self.report_json {
            Some(json) => Some(parse_report(&self.id, json)?),
            None => None,
        };
        let warnings: Vec<String> =
            serde_json::from_str(&self.warnings_json).map_err(|source| StoreError::Corrupt {
                what: "warnings",
                id: self.id.clone(),
                source,
            })?;
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
            warnings,
            key_name: self.key_name,
        })
    }
}

fn get_tx(conn: &Connection, id: &str) -> Result<Option<PatchRecord>, StoreError> {
    let raw = row(
        conn,
        &format!("SELECT {COLUMNS} FROM patches WHERE id = ?1"),
        params![id],
        read_record,
    )
    .optional()?;
    raw.map(RawRecord::decode).transpose()
}

fn must_get(conn: &Connection, id: &str) -> Result<PatchRecord, StoreError> {
    get_tx(conn, id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
}

fn event_tx(
    conn: &Connection,
    id: &str,
    status: Status,
    actor: &str,
    attempt: u32,
    detail: &str,
) -> rusqlite::Result<()> {
    let at_us = now_us();
    exec(
        conn,
        "INSERT INTO events (patch_id, at_ms, at_us, status, actor, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            at_us.div_euclid(1000),
            at_us,
            status.as_str(),
            actor,
            attempt,
            detail
        ],
    )?;
    Ok(())
}

/// Queues one attempt's outcome for the summarizer (once per (patch, attempt)).
fn outbox_tx(
    conn: &Connection,
    id: &str,
    attempt: u32,
    report: &ApplyReport,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT OR IGNORE INTO outbox (patch_id, attempt, next_at_ms, report_json, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, attempt, rule_ms(), report_json(id, report)?, now_ms()],
    )?;
    Ok(())
}

fn outcome_sent(conn: &Connection, id: &str, attempt: u32) -> rusqlite::Result<bool> {
    row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE patch_id = ?1 AND attempt = ?2)",
        params![id, attempt],
        |row| row.get(0),
    )
}

/// Ends a patch that never (again) reaches an executor: terminal status, report, event and
/// outbox row in one go.
fn end_tx(
    conn: &Connection,
    id: &str,
    status: Status,
    actor: &str,
    error: &str,
) -> Result<(), StoreError> {
    let record = must_get(conn, id)?;
    // An outcome for this attempt number was already recorded (an interrupted attempt, or
    // the attempt before a retry): this ending is an attempt of its own that never started.
    let attempt = if record.attempt > 0 && outcome_sent(conn, id, record.attempt)? {
        record.attempt + 1
    } else {
        record.attempt
    };
    let report = ApplyReport::ended(status, error);
    exec(
        conn,
        "UPDATE patches SET status = ?2, error = ?3, report_json = ?4, updated_ms = ?5,
                fencing_token = 0, leased_to = '', lease_deadline_ms = 0, attempt = ?6
         WHERE id = ?1",
        params![
            id,
            status.as_str(),
            error,
            report_json(id, &report)?,
            now_ms(),
            attempt
        ],
    )?;
    event_tx(conn, id, status, actor, attempt, error)?;
    outbox_tx(conn, id, attempt, &report)?;
    if status != Status::Succeeded {
        fail_dependents_tx(conn, id, status)?;
    }
    Ok(())
}

/// Patches waiting on `id`, which ended `status` without success, fail at once (and so on
/// down the chain): a dependency that will never succeed must not leave them queued forever.
fn fail_dependents_tx(conn: &Connection, id: &str, status: Status) -> Result<(), StoreError> {
    let dependents: Vec<String> = conn
        .prepare_cached(
            "SELECT p.id FROM deps d JOIN patches p ON p.id = d.patch_id
             WHERE d.depends_on = ?1 AND p.status = 'queued'",
        )?
        .query_map(params![id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for dependent in dependents {
        end_tx(
            conn,
            &dependent,
            Status::Failed,
            "router",
            &format!("dependency {id} ended {status}; not run"),
        )?;
    }
    Ok(())
}

/// Ends the in-flight attempt of a patch whose lease is gone: the attempt is recorded as
/// `interrupted` (with an outcome for the summarizer), then the patch is requeued, or ends
/// `lost` when it has used `max_attempts` attempts since it was last (re)submitted.
fn interrupt_tx(
    conn: &Connection,
    id: &str,
    reason: &str,
    max_attempts: u32,
) -> Result<LeaseEnded, StoreError> {
    let record = must_get(conn, id)?;
    let base: u32 = row(
        conn,
        "SELECT attempt_base FROM patches WHERE id = ?1",
        params![id],
        |row| row.get(0),
    )?;
    let now = now_ms();
    let report = ApplyReport::ended(Status::Interrupted, reason);
    exec(
        conn,
        "UPDATE attempts SET status = 'interrupted', finished_ms = ?3, report_json = ?4
         WHERE patch_id = ?1 AND attempt = ?2 AND finished_ms IS NULL",
        params![id, record.attempt, now, report_json(id, &report)?],
    )?;
    event_tx(
        conn,
        id,
        Status::Interrupted,
        "router",
        record.attempt,
        reason,
    )?;
    let ended = LeaseEnded {
        id: id.to_owned(),
        target: record.patch.target.to_string(),
        attempt: record.attempt,
        fencing_token: record.fencing_token,
        owner: record.leased_to.clone(),
        lost: record.attempt.saturating_sub(base) >= max_attempts,
    };
    if ended.lost {
        let error = format!(
            "{reason}; gave up after {} attempts",
            record.attempt.saturating_sub(base)
        );
        let lost = ApplyReport::ended(Status::Lost, error.clone());
        exec(
            conn,
            "UPDATE patches SET status = 'lost', error = ?2, report_json = ?3, updated_ms = ?4,
                    fencing_token = 0, leased_to = '', lease_deadline_ms = 0
             WHERE id = ?1",
            params![id, error, report_json(id, &lost)?, now],
        )?;
        event_tx(conn, id, Status::Lost, "router", record.attempt, &error)?;
        outbox_tx(conn, id, record.attempt, &lost)?;
        fail_dependents_tx(conn, id, Status::Lost)?;
        return Ok(ended);
    }
    outbox_tx(conn, id, record.attempt, &report)?;
    exec(
        conn,
        "UPDATE patches SET status = 'queued', fencing_token = 0, leased_to = '',
                lease_deadline_ms = 0, updated_ms = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    event_tx(
        conn,
        id,
        Status::Queued,
        "router",
        record.attempt,
        "requeued for another attempt",
    )?;
    Ok(ended)
}

fn raise_tx(conn: &Connection, alert: &NewAlert) -> Result<bool, StoreError> {
    let now = now_ms();
    let inserted = exec(
        conn,
        "INSERT OR IGNORE INTO alert_state (key, since_ms) VALUES (?1, ?2)",
        params![alert.key, now],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    let labels = serde_json::to_string(&alert.labels).map_err(|source| StoreError::Corrupt {
        what: "alert labels",
        id: alert.key.clone(),
        source,
    })?;
    exec(conn,
        "INSERT INTO alert_outbox (key, resolved, severity, summary, labels_json, at_ms, next_at_ms)
         VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6)",
        params![alert.key, alert.severity, alert.summary, labels, now, rule_ms()],
    )?;
    Ok(true)
}

fn resolve_tx(conn: &Connection, key: &str, summary: &str) -> Result<bool, StoreError> {
    let removed = exec(conn, "DELETE FROM alert_state WHERE key = ?1", params![key])?;
    if removed == 0 {
        return Ok(false);
    }
    let now = now_ms();
    exec(conn,
        "INSERT INTO alert_outbox (key, resolved, severity, summary, labels_json, at_ms, next_at_ms)
         VALUES (?1, 1, 'info', ?2, '[]', ?3, ?4)",
        params![key, summary, now, rule_ms()],
    )?;
    Ok(true)
}

const TOKEN_COLUMNS: &str =
    "id, name, targets_json, created_ms, created_by, revoked_ms, last_used_ms";

fn read_token(row: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRow, String)> {
    Ok((
        TokenRow {
            id: row.get(0)?,
            name: row.get(1)?,
            targets: Vec::new(),
            created_ms: row.get(3)?,
            created_by: row.get(4)?,
            revoked_ms: row.get(5)?,
            last_used_ms: row.get(6)?,
        },
        row.get(2)?,
    ))
}

fn decode_token((mut token, targets_json): (TokenRow, String)) -> Result<TokenRow, StoreError> {
    token.targets = serde_json::from_str(&targets_json).map_err(|source| StoreError::Corrupt {
        what: "token targets",
        id: token.name.clone(),
        source,
    })?;
    Ok(token)
}

/// `owner` holds the live lease `token` of `record`: a queued patch's token is 0 and its
/// owner empty, so neither a guessed token nor 0 moves a patch someone else holds or nobody does.
fn holds_lease(record: &PatchRecord, owner: &str, token: u64) -> bool {
    token != 0
        && record.fencing_token == token
        && !owner.is_empty()
        && record.leased_to == owner
        && matches!(
            record.status,
            Status::Leased | Status::Applying | Status::Validating
        )
}

/// Audit rows kept of each kind (refusals; everything else): older ones of the same kind are
/// deleted as new ones arrive, so a flood of refusals never pushes out the record of what was
/// created, revoked or imported.
pub const AUDIT_KEEP_ROWS: i64 = 10_000;
/// Audit rows older than this (90 days, in ms) are deleted as new ones arrive.
pub(super) const AUDIT_KEEP_MS: i64 = 90 * 24 * 3600 * 1000;

pub(super) fn audit_tx(
    conn: &Connection,
    action: &str,
    token_id: i64,
    name: &str,
    actor: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let now = now_ms();
    let id: i64 = row(
        conn,
        "INSERT INTO token_audit (at_ms, action, token_id, name, actor, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        params![now, action, token_id, name, actor, detail],
        |row| row.get(0),
    )?;
    // Bounded retention: the last AUDIT_KEEP_ROWS rows of the same kind (refusals or not),
    // none older than AUDIT_KEEP_MS.
    let refusal = action.ends_with("refused");
    exec(
        conn,
        "DELETE FROM token_audit WHERE at_ms < ?1 OR id IN (
             SELECT id FROM token_audit WHERE id < ?2 AND (action LIKE '%refused') = ?3
             ORDER BY id DESC LIMIT -1 OFFSET ?4)",
        params![now - AUDIT_KEEP_MS, id, refusal, AUDIT_KEEP_ROWS - 1],
    )?;
    Ok(())
}

fn token_where(conn: &Connection, clause: &str, key: &str) -> Result<Option<TokenRow>, StoreError> {
    let found = row(
        conn,
        &format!("SELECT {TOKEN_COLUMNS} FROM executor_tokens WHERE {clause}"),
        params![key],
        read_token,
    )
    .optional()?;
    found.map(decode_token).transpose()
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates its schema and starts the
    /// writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = open_connection(path)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        let reader = Arc::new(Mutex::new(open_connection(path)?));
        let health = StorageHealth::new(crate::SERVICE);
        let committing_since = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let state = Writer {
            path: path.to_path_buf(),
            conn: Some(conn),
            reader: Arc::clone(&reader),
            health: health.clone(),
            committing_since: Arc::clone(&committing_since),
            epoch,
        };
        let (writer, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("router-store-writer".to_owned())
            .spawn(move || write_loop(state, jobs))
            .map_err(|err| StoreError::Commit(format!("cannot start the writer: {err}")))?;
        Ok(Self {
            writer,
            reader,
            health,
            committing_since,
            epoch,
        })
    }

    /// The health of the disk under this store.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Refused at once while degraded: new work must not queue behind a failing disk.
    fn refuse_if_degraded(&self) -> Result<(), StoreError> {
        match self.health.fault_now() {
            Some(fault) => Err(StoreError::Unavailable {
                kind: fault.kind,
                reason: unavailable_reason(&self.health, fault.kind),
            }),
            None => Ok(()),
        }
    }

    /// How long the batch being committed has been at it, if one is.
    pub fn committing_for(&self) -> Option<Duration> {
        match self.committing_since.load(Ordering::SeqCst) {
            0 => None,
            since => Some(
                self.epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since - 1)),
            ),
        }
    }

    /// One real write through the writer (a row of `meta`, committed and flushed like any
    /// batch). The caller heals the store ([`StorageHealth::healed`]) once it succeeded.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            exec(
                conn,
                "INSERT INTO meta (key, value) VALUES ('storage_probe_ms', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Runs `work` in the next group commit; answers once the batch is durable.
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let health = self.health.clone();
        let job: Job = Box::new(move |conn: Option<&Connection>| {
            let (result, fault) = match conn {
                Some(conn) => classify(work(conn), &health),
                None => (
                    Err(StoreError::Commit("no write connection".to_owned())),
                    None,
                ),
            };
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |failure: Option<&CommitFailure>| {
                let outcome = match (result, failure) {
                    // Nothing of the batch was stored, whatever this job did: retrying is safe.
                    (_, Some(CommitFailure::Storage(kind, reason))) => {
                        Err(StoreError::Unavailable {
                            kind: *kind,
                            reason: reason.clone(),
                        })
                    }
                    (Ok(_), Some(CommitFailure::Other(error))) => {
                        Err(StoreError::Commit(error.clone()))
                    }
                    (result, _) => result,
                };
                let _ = answer.send(outcome);
            });
            (ok, fault, finish)
        });
        self.writer.send(job).map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on the read connection, off the async threads. A read the disk fails
    /// degrades the store like a write.
    pub(super) async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        let health = self.health.clone();
        tokio::task::spawn_blocking(move || {
            let guard = reader
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (result, fault) = classify(work(&guard), &health);
            if let Some((kind, detail)) = fault {
                health.fault(kind, detail);
            }
            result
        })
        .await?
    }
}

#[tonic::async_trait]
impl RouterStore for SqliteStore {
    async fn insert(
        &self,
        patch: Patch,
        actor: String,
        traceparent: String,
        warnings: Vec<String>,
        key_name: String,
    ) -> Result<Inserted, StoreError> {
        self.refuse_if_degraded()?;
        self.write(move |conn| {
            let id = patch.id.to_string();
            let hash = patch.content_hash();
            if let Some(existing) = get_tx(conn, &id)? {
                return Ok(if existing.content_hash == hash {
                    Inserted::Existing(existing)
                } else {
                    Inserted::Conflict
                });
            }
            let seq: i64 = row(conn,
                "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
                [],
                |row| row.get(0),
            )?;
            let now = now_ms();
            exec(conn,
                "INSERT INTO patches (id, target, priority, content_hash, patch_json, status, traceparent, created_ms, updated_ms, seq, warnings_json, key_name)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11)",
                params![
                    id,
                    patch.target.as_str(),
                    priority_rank(&patch),
                    hash,
                    patch.canonical_json(),
                    Status::Queued.as_str(),
                    traceparent,
                    now,
                    seq,
                    serde_json::to_string(&warnings).unwrap_or_else(|_| "[]".to_owned()),
                    key_name
                ],
            )?;
            event_tx(conn, &id, Status::Received, &actor, 0, "")?;
            event_tx(conn, &id, Status::Queued, "router", 0, "")?;
            let mut failed_dependency = None;
            for dependency in &patch.depends_on {
                exec(conn,
                    "INSERT OR IGNORE INTO deps (patch_id, depends_on) VALUES (?1, ?2)",
                    params![id, dependency.as_str()],
                )?;
                let status: Option<String> = row(conn,
                        "SELECT status FROM patches WHERE id = ?1",
                        params![dependency.as_str()],
                        |row| row.get(0),
                    )
                    .optional()?;
                if let Some(status) = status {
                    let status = parse_status(dependency.as_str(), &status)?;
                    if status.is_terminal() && status != Status::Succeeded {
                        failed_dependency = Some((dependency.to_string(), status));
                    }
                }
            }
            if let Some((dependency, status)) = failed_dependency {
                end_tx(
                    conn,
                    &id,
                    Status::Failed,
                    "router",
                    &format!("dependency {dependency} ended {status}; not run"),
                )?;
            }
            Ok(Inserted::Created(must_get(conn, &id)?))
        })
        .await
    }

    async fn get(&self, id: String) -> Result<Option<PatchRecord>, StoreError> {
        self.read(move |conn| get_tx(conn, &id)).await
    }

    async fn list(
        &self,
        target: Option<String>,
        status: Option<Status>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<PatchRecord>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(&format!(
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

    async fn events(&self, id: String) -> Result<Vec<EventRow>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT at_ms, at_us, status, actor, attempt, detail FROM events WHERE patch_id = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![id], |row| {
                let at_ms: i64 = row.get(0)?;
                let at_us: i64 = row.get(1)?;
                Ok(EventRow {
                    at_ms,
                    at_us: if at_us > 0 { at_us } else { at_ms.saturating_mul(1000) },
                    status: row.get(2)?,
                    actor: row.get(3)?,
                    attempt: row.get(4)?,
                    detail: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn lease_next(
        &self,
        target: String,
        owner: String,
        lease_ms: i64,
        takes_reverts: bool,
    ) -> Result<Option<PatchRecord>, StoreError> {
        self.write(move |conn| {
            let paused: bool = row(
                conn,
                "SELECT value FROM meta WHERE key = ?1",
                params![format!("paused:{target}")],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|value| value != 0);
            if paused {
                return Ok(None);
            }
            let next: Option<String> = row(
                conn,
                "SELECT q.id FROM patches q
                     WHERE q.target = ?1 AND q.status = 'queued'
                       AND (?2 OR json_extract(q.patch_json, '$.revert') IS NULL)
                       AND NOT EXISTS (
                         SELECT 1 FROM deps d LEFT JOIN patches p ON p.id = d.depends_on
                         WHERE d.patch_id = q.id AND (p.status IS NULL OR p.status != 'succeeded'))
                     ORDER BY q.priority DESC, q.seq LIMIT 1",
                params![target, takes_reverts],
                |row| row.get(0),
            )
            .optional()?;
            let Some(id) = next else {
                return Ok(None);
            };
            let token: i64 = row(
                conn,
                "UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value",
                [],
                |row| row.get(0),
            )?;
            let now = now_ms();
            exec(
                conn,
                "UPDATE patches SET status = 'leased', attempt = attempt + 1, fencing_token = ?2,
                        leased_to = ?3, lease_deadline_ms = ?4, updated_ms = ?5, error = ''
                 WHERE id = ?1",
                params![id, token, owner, rule_ms() + lease_ms, now],
            )?;
            let record = must_get(conn, &id)?;
            exec(
                conn,
                "INSERT OR REPLACE INTO attempts (patch_id, attempt, status, executor, started_ms)
                 VALUES (?1, ?2, 'leased', ?3, ?4)",
                params![id, record.attempt, owner, now],
            )?;
            event_tx(
                conn,
                &id,
                Status::Leased,
                &format!("executor:{owner}"),
                record.attempt,
                &format!("fencing token {token}"),
            )?;
            Ok(Some(record))
        })
        .await
    }

    async fn renew(
        &self,
        owner: String,
        tokens: Vec<u64>,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            let deadline = rule_ms() + lease_ms;
            for token in tokens {
                exec(
                    conn,
                    &format!(
                        "UPDATE patches SET lease_deadline_ms = ?3
                         WHERE fencing_token = ?1 AND leased_to = ?2 AND status IN {IN_FLIGHT}"
                    ),
                    params![i64::try_from(token).unwrap_or(-1), owner, deadline],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn progress(
        &self,
        id: String,
        owner: String,
        token: u64,
        status: Status,
        detail: String,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(false);
            };
            if !holds_lease(&record, &owner, token) {
                return Ok(false);
            }
            exec(
                conn,
                "UPDATE patches SET status = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, status.as_str(), now_ms()],
            )?;
            event_tx(
                conn,
                &id,
                status,
                &format!("executor:{}", record.leased_to),
                record.attempt,
                &detail,
            )?;
            Ok(true)
        })
        .await
    }

    async fn complete(
        &self,
        id: String,
        owner: String,
        token: u64,
        report: ApplyReport,
    ) -> Result<Option<Completed>, StoreError> {
        self.write(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(None);
            };
            if !holds_lease(&record, &owner, token) {
                return Ok(None);
            }
            let json = report_json(&id, &report)?;
            let now = now_ms();
            exec(
                conn,
                "UPDATE patches SET status = ?2, error = ?3, report_json = ?4, updated_ms = ?5,
                        lease_deadline_ms = 0
                 WHERE id = ?1",
                params![id, report.status.as_str(), report.error, json, now],
            )?;
            exec(
                conn,
                "UPDATE attempts SET status = ?3, finished_ms = ?4, report_json = ?5
                 WHERE patch_id = ?1 AND attempt = ?2",
                params![id, record.attempt, report.status.as_str(), now, json],
            )?;
            event_tx(
                conn,
                &id,
                report.status,
                &format!("executor:{}", record.leased_to),
                record.attempt,
                &report.error,
            )?;
            outbox_tx(conn, &id, record.attempt, &report)?;
            let dependent_targets = if report.status == Status::Succeeded {
                let mut statement = conn.prepare_cached(
                    "SELECT DISTINCT p.target FROM deps d JOIN patches p ON p.id = d.patch_id
                     WHERE d.depends_on = ?1 AND p.status = 'queued' ORDER BY p.target",
                )?;
                statement
                    .query_map(params![id], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()?
            } else {
                fail_dependents_tx(conn, &id, report.status)?;
                Vec::new()
            };
            Ok(get_tx(conn, &id)?.map(|record| Completed {
                record,
                dependent_targets,
            }))
        })
        .await
    }

    async fn record_interrupted(
        &self,
        id: String,
        executor_id: String,
        targets: Vec<String>,
        attempt: u32,
        report: ApplyReport,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(false);
            };
            if !targets.contains(&record.patch.target.to_string()) {
                return Ok(false);
            }
            let former: Option<String> = row(
                conn,
                "SELECT executor FROM attempts
                 WHERE patch_id = ?1 AND attempt = ?2 AND status = 'interrupted'",
                params![id, attempt],
                |row| row.get(0),
            )
            .optional()?;
            // The owner is `<executor id>#<session>`: the executor may have reconnected since.
            let same_executor = former
                .as_deref()
                .and_then(|owner| owner.rsplit_once('#'))
                .is_some_and(|(former_id, _)| former_id == executor_id);
            if !same_executor {
                return Ok(false);
            }
            let json = report_json(&id, &report)?;
            let updated = exec(
                conn,
                "UPDATE attempts SET report_json = ?3
                 WHERE patch_id = ?1 AND attempt = ?2 AND status = 'interrupted'",
                params![id, attempt, json],
            )?;
            if updated == 1 {
                exec(
                    conn,
                    "UPDATE outbox SET report_json = ?3
                     WHERE patch_id = ?1 AND attempt = ?2 AND delivered_ms IS NULL",
                    params![id, attempt, json],
                )?;
                event_tx(
                    conn,
                    &id,
                    Status::Interrupted,
                    "executor",
                    attempt,
                    &report.error,
                )?;
            }
            Ok(updated == 1)
        })
        .await
    }

    async fn end_leases(
        &self,
        owner: Option<String>,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError> {
        self.write(move |conn| {
            let now = rule_ms();
            let ids: Vec<String> = conn
                .prepare_cached(&format!(
                    "SELECT id FROM patches
                     WHERE status IN {IN_FLIGHT}
                       AND ((?1 IS NOT NULL AND leased_to = ?1)
                         OR (?1 IS NULL AND lease_deadline_ms < ?2))"
                ))?
                .query_map(params![owner, now], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            ids.iter()
                .map(|id| interrupt_tx(conn, id, &reason, max_attempts))
                .collect()
        })
        .await
    }

    async fn end_all_leases(
        &self,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError> {
        self.write(move |conn| {
            let ids: Vec<String> = conn
                .prepare_cached(&format!(
                    "SELECT id FROM patches WHERE status IN {IN_FLIGHT}"
                ))?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            ids.iter()
                .map(|id| interrupt_tx(conn, id, &reason, max_attempts))
                .collect()
        })
        .await
    }

    async fn cancel_queued(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<PatchRecord>, StoreError> {
        self.write(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(None);
            };
            if record.status != Status::Queued {
                return Ok(Some(record));
            }
            end_tx(
                conn,
                &id,
                Status::Cancelled,
                &actor,
                &format!("cancelled by {actor} while queued"),
            )?;
            get_tx(conn, &id)
        })
        .await
    }

    async fn retry(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<(PatchRecord, bool)>, StoreError> {
        self.write(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(None);
            };
            if !record.status.is_terminal() || record.status == Status::Succeeded {
                return Ok(Some((record, false)));
            }
            exec(
                conn,
                "UPDATE patches SET status = 'queued', attempt_base = attempt, error = '',
                        updated_ms = ?2 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            event_tx(
                conn,
                &id,
                Status::Queued,
                &actor,
                record.attempt,
                "retry requested",
            )?;
            Ok(Some((must_get(conn, &id)?, true)))
        })
        .await
    }

    async fn note(&self, id: String, actor: String, detail: String) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let Some(record) = get_tx(conn, &id)? else {
                return Ok(false);
            };
            event_tx(conn, &id, record.status, &actor, record.attempt, &detail)?;
            Ok(true)
        })
        .await
    }

    async fn set_paused(&self, target: String, paused: bool) -> Result<(), StoreError> {
        self.write(move |conn| {
            exec(
                conn,
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![format!("paused:{target}"), i64::from(paused)],
            )?;
            Ok(())
        })
        .await
    }

    async fn targets(&self) -> Result<Vec<TargetRow>, StoreError> {
        self.read(|conn| {
            let mut rows: std::collections::BTreeMap<String, TargetRow> = Default::default();
            let mut counts = conn.prepare_cached(
                // The first queued by `seq` (no clock moves it) and, from that same row (SQLite
                // takes bare columns from the MIN row), its creation time.
                "SELECT target, status, COUNT(*), MIN(seq), created_ms FROM patches GROUP BY target, status",
            )?;
            let counted = counts.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, u32>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            for item in counted {
                let (target, status, count, seq, oldest) = item?;
                let row = rows.entry(target.clone()).or_insert_with(|| TargetRow {
                    target,
                    ..TargetRow::default()
                });
                let parsed = parse_status(&row.target, &status)?;
                if parsed == Status::Queued {
                    row.queued = count;
                    row.oldest_queued_ms = oldest;
                    row.oldest_queued_seq = seq;
                } else if parsed.is_terminal() {
                    row.finished.push((status, count));
                }
            }
            let mut reverts = conn.prepare_cached(
                "SELECT target, COUNT(*), MIN(seq), created_ms FROM patches
                 WHERE status = 'queued' AND json_extract(patch_json, '$.revert') IS NOT NULL
                 GROUP BY target",
            )?;
            for item in reverts.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, u32>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })? {
                let (target, count, seq, oldest) = item?;
                if let Some(row) = rows.get_mut(&target) {
                    row.queued_reverts = count;
                    row.oldest_queued_revert_ms = oldest;
                    row.oldest_queued_revert_seq = seq;
                }
            }
            let mut running = conn.prepare_cached(&format!(
                "SELECT target, id FROM patches WHERE status IN {IN_FLIGHT}"
            ))?;
            for item in running.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })? {
                let (target, id) = item?;
                if let Some(row) = rows.get_mut(&target) {
                    row.running = id;
                }
            }
            let mut paused = conn.prepare_cached("SELECT key, value FROM meta WHERE key LIKE 'paused:%'")?;
            for item in paused.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })? {
                let (key, value) = item?;
                let target = key.trim_start_matches("paused:").to_owned();
                let row = rows.entry(target.clone()).or_insert_with(|| TargetRow {
                    target,
                    ..TargetRow::default()
                });
                row.paused = value != 0;
            }
            Ok(rows.into_values().collect())
        })
        .await
    }

    async fn stats(&self, since_ms: i64, target: Option<String>) -> Result<StatsRows, StoreError> {
        self.read(move |conn| super::stats::read(conn, since_ms, target.as_deref()))
            .await
    }

    async fn outbox_backlog(&self) -> Result<Vec<OutboxBacklog>, StoreError> {
        self.read(|conn| {
            let mut backlog = Vec::with_capacity(2);
            for (outbox, count, oldest) in [
                (
                    Outbox::Outcomes,
                    "SELECT COUNT(*) FROM outbox WHERE delivered_ms IS NULL",
                    "SELECT id, created_ms FROM outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT 1",
                ),
                (
                    Outbox::Alerts,
                    "SELECT COUNT(*) FROM alert_outbox WHERE delivered_ms IS NULL",
                    "SELECT id, at_ms FROM alert_outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT 1",
                ),
            ] {
                let depth: i64 = conn.prepare_cached(count)?.query_row([], |row| row.get(0))?;
                let oldest = conn
                    .prepare_cached(oldest)?
                    .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                backlog.push(OutboxBacklog {
                    outbox,
                    depth: u64::try_from(depth).unwrap_or(0),
                    oldest,
                });
            }
            Ok(backlog)
        })
        .await
    }

    async fn outbox_due(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, patch_id, attempt, tries, report_json, created_ms FROM outbox
                 WHERE delivered_ms IS NULL AND next_at_ms <= ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![rule_ms(), limit], |row| {
                Ok((
                    OutboxRow {
                        id: row.get(0)?,
                        patch_id: row.get(1)?,
                        attempt: row.get(2)?,
                        tries: row.get(3)?,
                        report: None,
                        created_ms: row.get(5)?,
                    },
                    row.get::<_, Option<String>>(4)?,
                ))
            })?;
            let mut due = Vec::new();
            for row in rows {
                let (mut outbox, json) = row?;
                if let Some(json) = json {
                    outbox.report = Some(parse_report(&outbox.patch_id, &json)?);
                }
                due.push(outbox);
            }
            Ok(due)
        })
        .await
    }

    async fn create_token(&self, token: NewToken) -> Result<Option<TokenRow>, StoreError> {
        self.write(move |conn| {
            let targets =
                serde_json::to_string(&token.targets).map_err(|source| StoreError::Corrupt {
                    what: "token targets",
                    id: token.name.clone(),
                    source,
                })?;
            let inserted = exec(
                conn,
                "INSERT OR IGNORE INTO executor_tokens (name, hash, targets_json, created_ms, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token.name, token.hash, targets, now_ms(), token.actor],
            )?;
            if inserted == 0 {
                return Ok(None);
            }
            let created = token_where(conn, "hash = ?1", &token.hash)?;
            let token_id = created.as_ref().map_or(0, |row| row.id);
            audit_tx(
                conn,
                "create",
                token_id,
                &token.name,
                &token.actor,
                &token.targets.join(","),
            )?;
            Ok(created)
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM executor_tokens ORDER BY id"
            ))?
            .query_map([], read_token)?
            .map(|raw| decode_token(raw?))
            .collect()
        })
        .await
    }

    async fn token_by_hash(&self, hash: String) -> Result<Option<TokenRow>, StoreError> {
        self.read(move |conn| token_where(conn, "hash = ?1", &hash))
            .await
    }

    async fn any_token(&self) -> Result<bool, StoreError> {
        self.read(|conn| {
            Ok(row(
                conn,
                "SELECT EXISTS (SELECT 1 FROM executor_tokens)",
                [],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn revoke_token(&self, name: String, actor: String) -> Result<Revoked, StoreError> {
        self.write(move |conn| {
            let now = now_ms();
            let revoked = exec(
                conn,
                "UPDATE executor_tokens SET revoked_ms = ?2 WHERE name = ?1 AND revoked_ms = 0",
                params![name, now],
            )?;
            if revoked == 0 {
                return Ok(
                    match token_where(conn, "name = ?1 ORDER BY id DESC LIMIT 1", &name)? {
                        Some(_) => Revoked::Already,
                        None => Revoked::Unknown,
                    },
                );
            }
            let Some(token) = token_where(conn, "name = ?1 ORDER BY id DESC LIMIT 1", &name)?
            else {
                return Ok(Revoked::Unknown);
            };
            audit_tx(conn, "revoke", token.id, &name, &actor, "")?;
            Ok(Revoked::Now(token))
        })
        .await
    }

    async fn token_used(&self, id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            exec(
                conn,
                "UPDATE executor_tokens SET last_used_ms = ?2 WHERE id = ?1",
                params![id, at_ms],
            )?;
            Ok(())
        })
        .await
    }

    async fn audit_token(
        &self,
        action: String,
        token_id: i64,
        name: String,
        actor: String,
        detail: String,
    ) -> Result<(), StoreError> {
        self.write(move |conn| audit_tx(conn, &action, token_id, &name, &actor, &detail))
            .await
    }

    async fn create_api_key(&self, key: NewApiKey) -> Result<KeyCreated, StoreError> {
        self.write(move |conn| keys::create_tx(conn, &key)).await
    }

    async fn api_keys(&self) -> Result<(Vec<ApiKeyRow>, u64), StoreError> {
        self.read(keys::snapshot).await
    }

    async fn revoke_api_key(
        &self,
        name: String,
        revoker: Revoker,
    ) -> Result<KeyRevoked, StoreError> {
        self.write(move |conn| keys::revoke_tx(conn, &name, &revoker))
            .await
    }

    async fn import_api_keys(
        &self,
        imported: Vec<NewApiKey>,
        actor: String,
    ) -> Result<KeysImported, StoreError> {
        self.write(move |conn| keys::import_tx(conn, &imported, &actor))
            .await
    }

    async fn raise_alert(&self, alert: NewAlert) -> Result<bool, StoreError> {
        self.write(move |conn| raise_tx(conn, &alert)).await
    }

    async fn resolve_alert(&self, key: String, summary: String) -> Result<bool, StoreError> {
        self.write(move |conn| resolve_tx(conn, &key, &summary))
            .await
    }

    async fn firing_alerts(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached("SELECT key FROM alert_state ORDER BY key")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn alerts_due(&self, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, key, resolved, severity, summary, labels_json, at_ms, tries, next_at_ms
                 FROM alert_outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT ?1",
            )?;
            let now = rule_ms();
            let mut rows = statement.query(params![limit])?;
            let mut due = Vec::new();
            while let Some(row) = rows.next()? {
                let next_at: i64 = row.get(8)?;
                if next_at > now {
                    break;
                }
                let key: String = row.get(1)?;
                let labels: String = row.get(5)?;
                let labels =
                    serde_json::from_str(&labels).map_err(|source| StoreError::Corrupt {
                        what: "alert labels",
                        id: key.clone(),
                        source,
                    })?;
                due.push(AlertRow {
                    id: row.get(0)?,
                    key,
                    resolved: row.get::<_, i64>(2)? != 0,
                    severity: row.get(3)?,
                    summary: row.get(4)?,
                    labels,
                    at_ms: row.get(6)?,
                    tries: row.get(7)?,
                });
            }
            Ok(due)
        })
        .await
    }

    async fn settle(
        &self,
        outbox: Outbox,
        settled: Vec<(i64, Delivery)>,
    ) -> Result<(), StoreError> {
        let table = match outbox {
            Outbox::Outcomes => "outbox",
            Outbox::Alerts => "alert_outbox",
        };
        if settled.is_empty() {
            return Ok(());
        }
        self.write(move |conn| {
            let now = now_ms();
            let mut delivered = conn.prepare_cached(&format!(
                "UPDATE {table} SET delivered_ms = ?2 WHERE id = ?1"
            ))?;
            let mut retry = conn.prepare_cached(&format!(
                "UPDATE {table} SET tries = tries + 1, next_at_ms = ?2 WHERE id = ?1"
            ))?;
            for (row_id, delivery) in settled {
                match delivery {
                    Delivery::Delivered => delivered.execute(params![row_id, now])?,
                    Delivery::RetryIn(delay_ms) => {
                        retry.execute(params![row_id, rule_ms() + delay_ms])?
                    }
                };
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_audit_keeps_the_last_rows_and_none_older_than_90_days() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("router.db");
        let store = SqliteStore::open(&path).expect("store");
        {
            let mut conn = Connection::open(&path).expect("open");
            let tx = conn.transaction().expect("tx");
            let now = now_ms();
            // One row older than 90 days, then a full trail of recent ones.
            tx.execute(
                "INSERT INTO token_audit (at_ms, action, name, actor) VALUES (?1, 'refused', 'old', 'x')",
                params![now - AUDIT_KEEP_MS - 1],
            )
            .expect("old row");
            for _ in 0..AUDIT_KEEP_ROWS {
                tx.execute(
                    "INSERT INTO token_audit (at_ms, action, name, actor) VALUES (?1, 'refused', 'recent', 'x')",
                    params![now],
                )
                .expect("row");
            }
            tx.commit().expect("commit");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(store.audit_token(
                "refused".to_owned(),
                7,
                "newest".to_owned(),
                "x".to_owned(),
                String::new(),
            ))
            .expect("audit");
        let conn = Connection::open(&path).expect("open");
        let (count, old, newest): (i64, i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), SUM(name = 'old'), SUM(name = 'newest' AND token_id = 7)
                 FROM token_audit",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .expect("count");
        assert_eq!(count, AUDIT_KEEP_ROWS);
        assert_eq!(old, 0);
        assert_eq!(newest, 1);
    }

    #[test]
    fn a_flood_of_refusals_never_pushes_out_the_record_of_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("router.db");
        let store = SqliteStore::open(&path).expect("store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let audit = |action: &str, name: &str| {
            runtime
                .block_on(store.audit_token(
                    action.to_owned(),
                    0,
                    name.to_owned(),
                    "x".to_owned(),
                    String::new(),
                ))
                .expect("audit");
        };
        audit("api_key.create", "made");
        audit("issue", "token");
        {
            let mut conn = Connection::open(&path).expect("open");
            let tx = conn.transaction().expect("tx");
            for _ in 0..AUDIT_KEEP_ROWS {
                tx.execute(
                    "INSERT INTO token_audit (at_ms, action, name, actor) VALUES (?1, 'api_key.refused', 'flood', 'x')",
                    params![now_ms()],
                )
                .expect("row");
            }
            tx.commit().expect("commit");
        }
        audit("api_key.refused", "newest");
        audit("refused", "newest-token");
        let conn = Connection::open(&path).expect("open");
        let (refusals, changes, newest): (i64, i64, i64) = conn
            .query_row(
                "SELECT SUM(action LIKE '%refused'), SUM(name IN ('made', 'token')),
                        SUM(name LIKE 'newest%')
                 FROM token_audit",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .expect("count");
        assert_eq!(refusals, AUDIT_KEEP_ROWS);
        assert_eq!(changes, 2, "the changes are kept");
        assert_eq!(newest, 2);
    }
}
