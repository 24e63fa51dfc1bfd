//! The writer thread of [`super::SqliteStore`]: group commits (each request in its own
//! savepoint, one fsync per batch), storage-fault classification and re-opening after a fault.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ghost_runtime::storage::{FaultKind, StorageHealth};
use rusqlite::Connection;

use crate::store::StoreError;

/// At most this many requests share one commit.
pub(super) const MAX_BATCH: usize = 256;

/// A request for the writer thread: runs inside the batch's transaction (in its own savepoint)
/// and returns whether it succeeded, the storage fault it met (if any), plus what to do once the
/// batch commit is known. Given no connection (none could be opened), it runs nothing and
/// leaves the answer to the batch's failure.
pub(super) type Job =
    Box<dyn FnOnce(Option<&Connection>) -> (bool, Option<(FaultKind, String)>, Finish) + Send>;
/// Answers the caller; gets the batch's commit failure, if any.
pub(super) type Finish = Box<dyn FnOnce(Option<&CommitFailure>) + Send>;

/// Why a batch was not committed.
#[derive(Debug, Clone)]
pub(super) enum CommitFailure {
    /// The disk failed: the store is degraded.
    Storage(FaultKind, String),
    /// Anything else.
    Other(String),
}

/// A batch committing for longer than this degrades the store (a flush that hangs).
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// The storage fault behind an SQLite error, if it is one.
pub(super) fn storage_fault(err: &rusqlite::Error) -> Option<FaultKind> {
    match err {
        rusqlite::Error::SqliteFailure(failure, _) => {
            FaultKind::from_sqlite_code(failure.extended_code)
        }
        _ => None,
    }
}

/// Degraded-state classification of a job's own error: a storage fault becomes
/// [`StoreError::Unavailable`], reported to the writer loop.
pub(super) fn classify<T>(
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
pub(super) fn unavailable_reason(health: &StorageHealth, kind: FaultKind) -> String {
    kind.sentence(health.service())
}

/// Prepared statements kept per connection (the store uses about 50 distinct ones).
pub(super) const STATEMENT_CACHE: usize = 128;

/// What the writer thread owns besides its jobs.
pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) conn: Option<Connection>,
    pub(super) reader: Arc<Mutex<Connection>>,
    pub(super) health: StorageHealth,
    pub(super) committing_since: Arc<AtomicU64>,
    pub(super) epoch: Instant,
}

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// `execute` through the connection's statement cache: under load, parsing the SQL of every
/// statement again cost more CPU than running it.
pub(super) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the connection's statement cache.
pub(super) fn row<T>(
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
pub(super) fn write_loop(mut writer: Writer, jobs: mpsc::Receiver<Job>) {
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

pub(super) fn run_batch(
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
