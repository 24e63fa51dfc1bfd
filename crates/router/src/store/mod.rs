//! Durable state of the router in SQLite (WAL, `synchronous=FULL`): patches, their event
//! trail, attempts, dependencies, the outbox towards the summarizer and the alert outbox
//! towards the alerter.
//!
//! Writes go to one writer thread that commits concurrent requests together (group commit):
//! each request runs in its own savepoint, the batch is committed with one fsync, and only then
//! is every caller answered. So "stored" still means "survives kill -9", while many concurrent
//! submits share one disk flush. Reads use a second connection and never wait for the writer.

mod api_keys;
mod gateway_state;
pub mod postgres;
mod schema;
mod sqlite;
mod stats;
#[cfg(test)]
mod status_sql;
#[cfg(test)]
pub(crate) mod transitions;

use std::time::{SystemTime, UNIX_EPOCH};

use ghost_core::{ApplyReport, Patch, Status};

pub use api_keys::{
    ApiKeyRow, KeyCreated, KeyRevoked, KeysImported, MAX_API_KEYS, MAX_TOTAL_TARGETS, NewApiKey,
    Revoker,
};
pub use gateway_state::{
    AnswerRow, DeliveryBegun, GatewayStateStore, MAX_STORED_ANSWER, SessionRow,
};
pub use postgres::{Note, PgStore};
pub use sqlite::{STALL_AFTER, SqliteStore};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed (a lost server is [`StoreError::Unavailable`] instead).
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
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
    /// The batch this request was part of could not be committed.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The disk refused the write (full, I/O error, failed or stalled fsync): nothing was
    /// stored, and the store is degraded until a write succeeds again.
    #[error("storage unavailable ({kind}): {reason}")]
    Unavailable {
        /// What the disk did.
        kind: ghost_runtime::storage::FaultKind,
        /// For people and clients: `the router's disk is full`.
        reason: String,
    },
    /// The writer thread is gone (the router is stopping).
    #[error("the store is closed")]
    Closed,
    /// The blocking task running a read died.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Which durable outbox a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbox {
    /// Terminal outcomes towards the summarizer.
    Outcomes,
    /// Alert changes towards the alerter.
    Alerts,
}

impl Outbox {
    /// Its name in metrics (`ghost_outbox_*{outbox}`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Outcomes => "outcomes",
            Self::Alerts => "alerts",
        }
    }
}

/// The undelivered rows of one outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// Which outbox.
    pub outbox: Outbox,
    /// Rows not yet delivered.
    pub depth: u64,
    /// The first undelivered row (by id) and its creation time (wall ms; 0: not recorded).
    pub oldest: Option<(i64, i64)>,
}

/// What became of one delivery try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The receiver has it; never send again.
    Delivered,
    /// Try again after this many milliseconds.
    RetryIn(i64),
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
    /// What the gateway forgave while reading the submitted document, for the summary.
    pub warnings: Vec<String>,
    /// The credential that submitted it (the gateway's API key name); empty: unknown.
    pub key_name: String,
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

/// A pending delivery of one attempt's outcome to the summarizer.
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
    /// The attempt's report (`None` only in rows written before reports were kept here: the
    /// patch's latest report stands in).
    pub report: Option<ApplyReport>,
    /// When the outcome was stored (unix ms).
    pub created_ms: i64,
}

/// A system alert raised or resolved by the router, waiting to reach the alerter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// Row id.
    pub id: i64,
    /// Dedup key, e.g. `executor_lost/MAIN`.
    pub key: String,
    /// True when this resolves the alert.
    pub resolved: bool,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// One line for people.
    pub summary: String,
    /// Labels as (name, value) pairs.
    pub labels: Vec<(String, String)>,
    /// When the condition started or cleared (unix ms).
    pub at_ms: i64,
    /// Deliveries tried so far.
    pub tries: u32,
}

/// An alert to raise.
#[derive(Debug, Clone)]
pub struct NewAlert {
    /// Dedup key, e.g. `executor_lost/MAIN`.
    pub key: String,
    /// `info`, `warning` or `critical`.
    pub severity: &'static str,
    /// One line for people.
    pub summary: String,
    /// Labels as (name, value) pairs.
    pub labels: Vec<(String, String)>,
}

/// What happened to a patch whose lease ended without a result.
#[derive(Debug, Clone)]
pub struct LeaseEnded {
    /// The patch.
    pub id: String,
    /// Its target.
    pub target: String,
    /// The attempt that was interrupted.
    pub attempt: u32,
    /// The lease's fencing token.
    pub fencing_token: u64,
    /// The lease owner (`<executor>#<session>`).
    pub owner: String,
    /// True when the patch ran out of attempts and ended `lost`; false when requeued.
    pub lost: bool,
}

/// Per-target figures for `ListTargets` and stale detection.
#[derive(Debug, Clone, Default)]
pub struct TargetRow {
    /// The target.
    pub target: String,
    /// Patches waiting for a lease.
    pub queued: u32,
    /// Creation time (wall) of the oldest queued patch (0: none).
    pub oldest_queued_ms: i64,
    /// Queue position (`seq`) of the oldest queued patch: what no clock jump moves.
    pub oldest_queued_seq: i64,
    /// Queued revert patches (only a session advertising `revert` is leased them).
    pub queued_reverts: u32,
    /// Creation time (wall) of the oldest queued revert patch (0: none).
    pub oldest_queued_revert_ms: i64,
    /// Queue position (`seq`) of the oldest queued revert patch.
    pub oldest_queued_revert_seq: i64,
    /// Hand-out paused.
    pub paused: bool,
    /// The patch holding the lease (empty: none).
    pub running: String,
    /// Patches per terminal status.
    pub finished: Vec<(String, u32)>,
}

/// One row of a patch's audit trail.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Unix ms.
    pub at_ms: i64,
    /// Unix µs (for rows stored before microseconds were kept: `at_ms` × 1000).
    pub at_us: i64,
    /// The state entered.
    pub status: String,
    /// Who caused it (`gateway`, `executor:<id>`, `router`, a Slack user).
    pub actor: String,
    /// Attempt number at the time.
    pub attempt: u32,
    /// Free text.
    pub detail: String,
}

/// A per-executor token as stored (never the secret: its SHA-256 only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Row id (a revoked name may be issued again, under a new id).
    pub id: i64,
    /// Unique among live tokens.
    pub name: String,
    /// The targets it may serve.
    pub targets: Vec<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// Unix ms; 0 while live.
    pub revoked_ms: i64,
    /// Last accepted Hello (unix ms); 0: never.
    pub last_used_ms: i64,
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Its name (validated by the caller).
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// The targets it may serve (validated by the caller).
    pub targets: Vec<String>,
    /// Who asks.
    pub actor: String,
}

/// What became of a revocation.
#[derive(Debug, Clone)]
pub enum Revoked {
    /// No token has this name.
    Unknown,
    /// Only revoked tokens have this name.
    Already,
    /// The live token of this name, now revoked.
    Now(TokenRow),
}

/// Raw figures for dashboards, aggregated further by the stats service.
#[derive(Debug, Clone, Default)]
pub struct StatsRows {
    /// (start of the hour in Unix ms, terminal status, patches), oldest hour first.
    pub hours: Vec<(i64, String, u32)>,
    /// The stage timings (stage, ms) of each of the newest reports.
    pub stages: Vec<Vec<(String, u64)>>,
}

/// Unix time in microseconds.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Rule time in Unix milliseconds, for lease deadlines, executor liveness and outbox backoff:
/// the process's [`ghost_runtime::clock::Clock`], which a wall-clock jump does not move. Every
/// column compared with it (`lease_deadline_ms`, the outboxes' `next_at_ms`) is written with it.
pub fn rule_ms() -> i64 {
    ghost_runtime::clock::Clock::process().now_ms()
}

/// Wall time in Unix milliseconds, for timestamps shown to people (created, updated, events,
/// deliveries).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The router's durable state, as the routing logic needs it. [`SqliteStore`] is the embedded
/// implementation; a PostgreSQL one (`FOR UPDATE SKIP LOCKED`) could serve several replicas.
/// A completion that was accepted.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The patch after the completion.
    pub record: PatchRecord,
    /// When it succeeded: the targets with a queued patch that depended on it, where a patch
    /// may have become runnable (read in the completion's own transaction).
    pub dependent_targets: Vec<String>,
}

#[tonic::async_trait]
pub trait RouterStore: Send + Sync + 'static {
    /// Stores a submitted patch as `queued` unless its id is already taken. A patch whose
    /// dependency already ended without success fails at once. `warnings` (what the gateway
    /// forgave reading it) are kept with it for the summary. `actor` is named by its first
    /// event (`received`): `gateway` for a submitted patch, who asked for a revert patch.
    /// `key_name` is the credential that submitted it, passed on with its outcome.
    async fn insert(
        &self,
        patch: Patch,
        actor: String,
        traceparent: String,
        warnings: Vec<String>,
        key_name: String,
    ) -> Result<Inserted, StoreError>;

    /// One patch.
    async fn get(&self, id: String) -> Result<Option<PatchRecord>, StoreError>;

    /// Patches newest first, filtered by target and status when given.
    async fn list(
        &self,
        target: Option<String>,
        status: Option<Status>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<PatchRecord>, StoreError>;

    /// The audit trail of one patch, oldest first.
    async fn events(&self, id: String) -> Result<Vec<EventRow>, StoreError>;

    /// Leases the next runnable patch of `target` to `owner`: highest priority, then oldest,
    /// skipping patches whose dependencies have not all succeeded. Returns the leased record
    /// (attempt incremented, fresh fencing token) or `None` (paused, empty, or all waiting).
    /// Revert patches are skipped unless `takes_reverts` (the owner advertised `revert`).
    /// One lease per target at a time: [`PgStore`] answers `None` while the target has one (its
    /// replicas share the queue); on [`SqliteStore`] the one router's routing never asks then.
    async fn lease_next(
        &self,
        target: String,
        owner: String,
        lease_ms: i64,
        takes_reverts: bool,
    ) -> Result<Option<PatchRecord>, StoreError>;

    /// Extends the leases named by `tokens` held by `owner`.
    async fn renew(&self, owner: String, tokens: Vec<u64>, lease_ms: i64)
    -> Result<(), StoreError>;

    /// Records progress (`applying`, `validating`) under a live lease held by `owner`; false
    /// if the lease is stale or someone else's.
    async fn progress(
        &self,
        id: String,
        owner: String,
        token: u64,
        status: Status,
        detail: String,
    ) -> Result<bool, StoreError>;

    /// Stores an attempt's report if `token` is the live lease and `owner` holds it, queueing
    /// the outcome for the summarizer in the same transaction (and failing patches that
    /// depended on it, when it did not succeed). `None` when the token is stale or the lease
    /// someone else's.
    async fn complete(
        &self,
        id: String,
        owner: String,
        token: u64,
        report: ApplyReport,
    ) -> Result<Option<Completed>, StoreError>;

    /// Takes an executor's own report of an attempt the router had already ended as
    /// `interrupted` (e.g. after the executor restarted and rolled back its journal): the
    /// fuller report replaces the router's, and goes to the summarizer if not yet sent.
    /// False when no such interrupted attempt exists, when it was not leased to a session of
    /// `executor_id`, or when the patch's target is not one of `targets`.
    async fn record_interrupted(
        &self,
        id: String,
        executor_id: String,
        targets: Vec<String>,
        attempt: u32,
        report: ApplyReport,
    ) -> Result<bool, StoreError>;

    /// Ends the in-flight attempts of patches leased to `owner` (when given) or whose lease
    /// expired: each is requeued, or ends `lost` past `max_attempts`.
    async fn end_leases(
        &self,
        owner: Option<String>,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError>;

    /// Every patch that was in flight when the router stopped: its attempt is interrupted.
    async fn end_all_leases(
        &self,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError>;

    /// Cancels a queued patch (running ones are cancelled through their executor).
    async fn cancel_queued(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<PatchRecord>, StoreError>;

    /// Queues a finished (not succeeded) patch for another attempt, with a fresh attempt budget.
    /// Returns the record and whether it was requeued (false: its state allows no retry).
    async fn retry(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<(PatchRecord, bool)>, StoreError>;

    /// Adds an audit event to a patch without changing it (its current status and attempt,
    /// `actor`, `detail`); false when there is no such patch.
    async fn note(&self, id: String, actor: String, detail: String) -> Result<bool, StoreError>;

    /// Pauses or resumes handing out work for a target.
    async fn set_paused(&self, target: String, paused: bool) -> Result<(), StoreError>;

    /// Every target that has patches or a pause flag, with its queue figures.
    async fn targets(&self) -> Result<Vec<TargetRow>, StoreError>;

    /// Finished patches per hour and stage timings of patches updated since `since_ms`
    /// (read-only, bounded; see `store::stats`).
    async fn stats(&self, since_ms: i64, target: Option<String>) -> Result<StatsRows, StoreError>;

    /// Each outbox's undelivered rows: how many, and the oldest (indexed, cheap).
    async fn outbox_backlog(&self) -> Result<Vec<OutboxBacklog>, StoreError>;

    /// Outcomes due for delivery to the summarizer.
    async fn outbox_due(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    /// Raises `alert` unless it is already firing; true when it was newly raised.
    async fn raise_alert(&self, alert: NewAlert) -> Result<bool, StoreError>;

    /// Resolves the alert `key` if it is firing; true when it was.
    async fn resolve_alert(&self, key: String, summary: String) -> Result<bool, StoreError>;

    /// Keys of the alerts firing now.
    async fn firing_alerts(&self) -> Result<Vec<String>, StoreError>;

    /// Alert changes due for delivery to the alerter, oldest first, stopping at the first
    /// one that waits for a later retry (so changes of one key never overtake each other).
    async fn alerts_due(&self, limit: u32) -> Result<Vec<AlertRow>, StoreError>;

    /// Stores a new token unless a live one has its name (`None` then); audited.
    async fn create_token(&self, token: NewToken) -> Result<Option<TokenRow>, StoreError>;

    /// Every token, live and revoked, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;

    /// The token whose secret hashes to `hash`, live or revoked.
    async fn token_by_hash(&self, hash: String) -> Result<Option<TokenRow>, StoreError>;

    /// True when any token was ever created.
    async fn any_token(&self) -> Result<bool, StoreError>;

    /// Revokes the live token `name`; audited.
    async fn revoke_token(&self, name: String, actor: String) -> Result<Revoked, StoreError>;

    /// Notes an accepted Hello with token `id`.
    async fn token_used(&self, id: i64, at_ms: i64) -> Result<(), StoreError>;

    /// Appends to the token audit trail (refusals; creation and revocation audit themselves)
    /// about token `token_id` (0: no known token), keeping the trail bounded.
    async fn audit_token(
        &self,
        action: String,
        token_id: i64,
        name: String,
        actor: String,
        detail: String,
    ) -> Result<(), StoreError>;

    /// Stores a runtime API key unless its name is taken or [`MAX_API_KEYS`] exist; audited.
    async fn create_api_key(&self, key: NewApiKey) -> Result<KeyCreated, StoreError>;

    /// Every runtime API key, oldest first, and the version of the set.
    async fn api_keys(&self) -> Result<(Vec<ApiKeyRow>, u64), StoreError>;

    /// Deletes the runtime API key `name` when `revoker` may touch all it may; every outcome
    /// audited.
    async fn revoke_api_key(
        &self,
        name: String,
        revoker: Revoker,
    ) -> Result<KeyRevoked, StoreError>;

    /// Stores keys a gateway kept in its own file (all or none); audited.
    async fn import_api_keys(
        &self,
        keys: Vec<NewApiKey>,
        actor: String,
    ) -> Result<KeysImported, StoreError>;

    /// Records what became of delivery tries of outbox rows (row id, result), all in one
    /// write.
    async fn settle(&self, outbox: Outbox, settled: Vec<(i64, Delivery)>)
    -> Result<(), StoreError>;

    /// Asks the replica whose executor holds lease `token` of `id` to send it Cancel (a store
    /// shared by replicas); the embedded store has no other replica and does nothing.
    async fn publish_cancel(
        &self,
        _id: String,
        _token: u64,
        _reason: String,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}
