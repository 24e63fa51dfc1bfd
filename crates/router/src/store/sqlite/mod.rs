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

mod lifecycle;
mod outboxes;
mod queue;
mod reads;
mod records;
mod tokens;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ghost_core::{ApplyReport, Patch, Status};
use ghost_runtime::clock::{SharedClock, SystemClock};
use ghost_runtime::storage::StorageHealth;
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use super::api_keys::{
    self as keys, ApiKeyRow, KeyCreated, KeyRevoked, KeysImported, NewApiKey, Revoker,
};
use super::schema::migrate;
use super::{
    AlertRow, Completed, Delivery, EventRow, Inserted, LeaseEnded, NewAlert, NewToken, Outbox,
    OutboxBacklog, OutboxRow, PatchRecord, Revoked, RouterStore, StatsRows, StoreError, TargetRow,
    TokenRow, now_ms,
};

use outboxes::{raise_tx, resolve_tx};
use records::get_tx;
use tokens::token_where;
pub(in crate::store) use tokens::{AUDIT_KEEP_MS, AUDIT_KEEP_ROWS, audit_tx};
pub use writer::STALL_AFTER;
use writer::{
    CommitFailure, Finish, Job, Writer, classify, exec, open_connection, unavailable_reason,
    write_loop,
};

/// The router's SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    reader: Arc<Mutex<Connection>>,
    health: StorageHealth,
    /// When the batch being committed started (ms since `epoch`, plus one; 0: none).
    committing_since: Arc<AtomicU64>,
    epoch: Instant,
    /// Rule time (lease deadlines, outbox and alert backoff): [`SystemClock`] in production.
    clock: SharedClock,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, migrates its schema and starts the
    /// writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(path, SystemClock::shared())
    }

    /// [`SqliteStore::open`], reading rule time from `clock` (tests: a
    /// [`ghost_runtime::clock::TokioClock`] on paused time).
    pub fn open_with_clock(path: &Path, clock: SharedClock) -> Result<Self, StoreError> {
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
            clock,
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
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| {
            queue::insert(
                conn,
                rule_now,
                patch,
                actor,
                traceparent,
                warnings,
                key_name,
            )
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
        self.read(move |conn| reads::list(conn, target, status, limit, offset))
            .await
    }

    async fn events(&self, id: String) -> Result<Vec<EventRow>, StoreError> {
        self.read(move |conn| reads::events(conn, id)).await
    }

    async fn lease_next(
        &self,
        target: String,
        owner: String,
        lease_ms: i64,
        takes_reverts: bool,
    ) -> Result<Option<PatchRecord>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| {
            queue::lease_next(conn, rule_now, target, owner, lease_ms, takes_reverts)
        })
        .await
    }

    async fn renew(
        &self,
        owner: String,
        tokens: Vec<u64>,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| queue::renew(conn, rule_now, owner, tokens, lease_ms))
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
        self.write(move |conn| queue::progress(conn, id, owner, token, status, detail))
            .await
    }

    async fn complete(
        &self,
        id: String,
        owner: String,
        token: u64,
        report: ApplyReport,
    ) -> Result<Option<Completed>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| queue::complete(conn, rule_now, id, owner, token, report))
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
            lifecycle::record_interrupted(conn, id, executor_id, targets, attempt, report)
        })
        .await
    }

    async fn end_leases(
        &self,
        owner: Option<String>,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| lifecycle::end_leases(conn, rule_now, owner, reason, max_attempts))
            .await
    }

    async fn end_all_leases(
        &self,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| lifecycle::end_all_leases(conn, rule_now, reason, max_attempts))
            .await
    }

    async fn cancel_queued(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<PatchRecord>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| lifecycle::cancel_queued(conn, rule_now, id, actor))
            .await
    }

    async fn retry(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<(PatchRecord, bool)>, StoreError> {
        self.write(move |conn| lifecycle::retry(conn, id, actor))
            .await
    }

    async fn note(&self, id: String, actor: String, detail: String) -> Result<bool, StoreError> {
        self.write(move |conn| queue::note(conn, id, actor, detail))
            .await
    }

    async fn set_paused(&self, target: String, paused: bool) -> Result<(), StoreError> {
        self.write(move |conn| queue::set_paused(conn, target, paused))
            .await
    }

    async fn targets(&self) -> Result<Vec<TargetRow>, StoreError> {
        self.read(reads::targets).await
    }

    async fn stats(&self, since_ms: i64, target: Option<String>) -> Result<StatsRows, StoreError> {
        self.read(move |conn| super::stats::read(conn, since_ms, target.as_deref()))
            .await
    }

    async fn outbox_backlog(&self) -> Result<Vec<OutboxBacklog>, StoreError> {
        self.read(reads::outbox_backlog).await
    }

    async fn outbox_due(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.read(move |conn| outboxes::outbox_due(conn, rule_now, limit))
            .await
    }

    async fn create_token(&self, token: NewToken) -> Result<Option<TokenRow>, StoreError> {
        self.write(move |conn| tokens::create_token(conn, token))
            .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.read(tokens::tokens).await
    }

    async fn token_by_hash(&self, hash: String) -> Result<Option<TokenRow>, StoreError> {
        self.read(move |conn| token_where(conn, "hash = ?1", &hash))
            .await
    }

    async fn any_token(&self) -> Result<bool, StoreError> {
        self.read(tokens::any_token).await
    }

    async fn revoke_token(&self, name: String, actor: String) -> Result<Revoked, StoreError> {
        self.write(move |conn| tokens::revoke_token(conn, name, actor))
            .await
    }

    async fn token_used(&self, id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.write(move |conn| tokens::token_used(conn, id, at_ms))
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
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| raise_tx(conn, rule_now, &alert))
            .await
    }

    async fn resolve_alert(&self, key: String, summary: String) -> Result<bool, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| resolve_tx(conn, rule_now, &key, &summary))
            .await
    }

    async fn firing_alerts(&self) -> Result<Vec<String>, StoreError> {
        self.read(outboxes::firing_alerts).await
    }

    async fn alerts_due(&self, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.read(move |conn| outboxes::alerts_due(conn, rule_now, limit))
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
        // Read here, on the runtime: the writer thread has no tokio clock (paused time in tests).
        let rule_now = self.clock.now_ms();
        self.write(move |conn| outboxes::settle(conn, rule_now, table, settled))
            .await
    }
}
