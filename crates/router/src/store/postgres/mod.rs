//! [`PgStore`]: the router's durable state on PostgreSQL (`store.url = "postgres://…"`), the
//! same rows and the same answers as [`SqliteStore`](super::SqliteStore), shared by several
//! router replicas (active-active).
//!
//! Each method is one transaction on a small `sqlx` pool. What one replica changes that
//! another may act on (a patch to hand out, a patch ended, a Cancel for an executor connected
//! elsewhere) is sent on one LISTEN/NOTIFY channel at commit ([`Note`]); a replica that missed
//! notes (its listening connection was lost) catches up by its bounded polling.
//!
//! A lost server is a storage fault like a failing disk: a call whose connection fails (or
//! waits [`ACQUIRE_TIMEOUT`] for one) answers [`StoreError::Unavailable`] with
//! [`FaultKind::Unreachable`] ("the router's database is unreachable"), the storage health
//! degrades (readiness 503, new patches refused at once), and the router's storage watch probes
//! until a write commits again. Nothing is lost: a call is answered as stored only after its
//! commit returned.

pub mod gateway_state;
pub mod keys;
mod listen;
mod migrations;
mod patches;
mod queue;
mod reads;
mod shared_state;

use std::time::Duration;

use ghost_core::{ApplyReport, Patch, Status};
use ghost_runtime::clock::SharedClock;
use ghost_runtime::storage::{FaultKind, StorageHealth};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, Postgres};
use sqlx::{PgConnection, Row as _};

pub use queue::{CHANNEL, Note};

use super::{
    AlertRow, ApiKeyRow, Completed, Delivery, EventRow, Inserted, KeyCreated, KeyRevoked,
    KeysImported, LeaseEnded, NewAlert, NewApiKey, NewToken, Outbox, OutboxBacklog, OutboxRow,
    PatchRecord, Revoked, Revoker, RouterStore, StatsRows, StoreError, TargetRow, TokenRow,
};

/// How long a call waits for a pool connection before the store counts the database as gone.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a call waits for a connection while all are busy (under load), before its
/// wait counts as the server gone.
const BUSY_WAIT: Duration = Duration::from_secs(30);
/// Connections the store keeps at most (the listener has one more of its own).
const MAX_CONNECTIONS: u32 = 16;
/// The storage fault a PostgreSQL error reports: the server gone, restarting or refusing
/// connections (`Unreachable`), out of disk (`Full`); a failed query of ours is none.
pub fn pg_fault(err: &sqlx::Error) -> Option<FaultKind> {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Some(FaultKind::Unreachable),
        sqlx::Error::Database(db) => FaultKind::from_postgres_code(&db.code().unwrap_or_default()),
        _ => None,
    }
}

/// The router's PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// For the listening connection (its own, not the pool's).
    options: std::sync::Arc<PgConnectOptions>,
    health: StorageHealth,
    /// When the server was last found reachable or not (see [`PgStore::reachable`]).
    reachable: std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, bool)>>>,
    /// This replica's name: on the channel (its own notes are not acted on twice) and on the
    /// outbox rows it claims (`claimed_by`: only it releases or reschedules them).
    origin: String,
    /// How long this replica's claims on outbox rows last (ms; see [`PgStore::with_claim_timeout`]).
    claim_ms: i64,
    /// Rule time: `None`, the database server's clock (production); a clock of its own from
    /// [`PgStore::with_clock`] (tests).
    clock: Option<SharedClock>,
}

/// Runs `$body` (an expression using `$conn: &mut PgConnection`) in a transaction: committed
/// when it succeeds, rolled back otherwise, every error classified.
macro_rules! in_tx {
    ($store:expr, $conn:ident => $body:expr) => {{
        let store = &$store;
        let result: Result<_, StoreError> = async {
            let mut pooled = store.acquire().await?;
            let mut tx = sqlx::Connection::begin(&mut *pooled).await?;
            store.pin_rule_time(&mut tx).await?;
            let $conn: &mut PgConnection = &mut tx;
            let value = $body.await?;
            tx.commit().await?;
            Ok(value)
        }
        .await;
        store.classify(result)
    }};
}

/// Runs `$body` on a pooled connection (reads), every error classified.
macro_rules! on_conn {
    ($store:expr, $conn:ident => $body:expr) => {{
        let store = &$store;
        let result: Result<_, StoreError> = async {
            let mut pooled = store.acquire().await?;
            let $conn: &mut PgConnection = &mut pooled;
            $body.await
        }
        .await;
        store.classify(result)
    }};
}

impl PgStore {
    /// Connects to `url` and migrates the schema.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|err: sqlx::Error| {
            // The parser's text names the part that is wrong, never the password.
            StoreError::Commit(format!("store.url is not a valid PostgreSQL URL: {err}"))
        })?;
        // The router's tables live in its own schema, so the summarizer and the alerter may
        // share the database.
        let options = options.options([("search_path", migrations::SCHEMA)]);
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|err| {
                StoreError::Commit(format!(
                    "cannot connect to the PostgreSQL server of store.url ({server}): {err}"
                ))
            })?;
        migrations::migrate(&pool).await?;
        let mut id = [0_u8; 6];
        getrandom::fill(&mut id).map_err(|err| StoreError::Commit(err.to_string()))?;
        Ok(Self {
            pool,
            options: std::sync::Arc::new(options),
            health: StorageHealth::new(crate::SERVICE),
            reachable: std::sync::Arc::default(),
            origin: id.iter().map(|byte| format!("{byte:02x}")).collect(),
            claim_ms: reads::CLAIM_MS,
            clock: None,
        })
    }

    /// Reads rule time (lease deadlines, outbox due times, claims) from `clock` instead of the
    /// database server's clock (tests: a clock that moves only when the test moves it). Every
    /// replica on one database must read the same clock.
    #[cfg(test)]
    #[must_use]
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// With a clock of its own, pins its reading as the transaction's rule time
    /// ([`patches::RULE_MS`]); without, leaves rule time to the server's clock.
    async fn pin_rule_time(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let Some(clock) = &self.clock else {
            return Ok(());
        };
        sqlx::query("SELECT set_config($1, $2, true)")
            .bind(patches::RULE_MS_SETTING)
            .bind(clock.now_ms().to_string())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Drops this replica's claims on the rows `ids` of `outbox`, claimed but not sent
    /// (shutdown, order held back): another replica may send them at once. A row whose claim
    /// ran out and was taken over by another replica keeps that replica's claim.
    pub async fn release_claims(&self, outbox: Outbox, ids: Vec<i64>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        in_tx!(self, conn => reads::release(conn, outbox, &self.origin, &ids))
    }

    /// Claims outbox rows for `timeout` (the default is [`reads::CLAIM_MS`]): a replica that
    /// dies while sending is taken over that long after it claimed.
    #[must_use]
    pub fn with_claim_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.claim_ms = i64::try_from(timeout.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        self
    }

    /// The health of the database under this store.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// A pooled connection. A wait of [`ACQUIRE_TIMEOUT`] counts as the server gone (the
    /// caller's error degrades the store) only when a fresh connection cannot be opened either;
    /// when one can, the pool is only saturated (under load) and the call waits on, up to
    /// [`BUSY_WAIT`].
    async fn acquire(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        let started = std::time::Instant::now();
        loop {
            match self.pool.acquire().await {
                Err(sqlx::Error::PoolTimedOut)
                    if started.elapsed() < BUSY_WAIT
                        && !self.health.is_degraded()
                        && self.reachable().await => {}
                acquired => return Ok(acquired?),
            }
        }
    }

    /// Whether the server accepts a new connection now; one check a second, shared by every
    /// waiting call.
    async fn reachable(&self) -> bool {
        let mut checked = self.reachable.lock().await;
        if let Some((at, answer)) = *checked
            && at.elapsed() < Duration::from_secs(1)
        {
            return answer;
        }
        let connected = tokio::time::timeout(
            ACQUIRE_TIMEOUT,
            <PgConnection as sqlx::Connection>::connect_with(&*self.options),
        )
        .await;
        let answer = match connected {
            Ok(Ok(conn)) => {
                let conn: PgConnection = conn;
                let _ = sqlx::Connection::close(conn).await;
                true
            }
            _ => false,
        };
        *checked = Some((std::time::Instant::now(), answer));
        answer
    }

    /// A lost server becomes [`StoreError::Unavailable`] and degrades the store.
    fn classify<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Postgres(err)) => match pg_fault(&err) {
                Some(kind) => {
                    self.health.fault(kind, err.to_string());
                    Err(StoreError::Unavailable {
                        kind,
                        reason: kind.sentence(self.health.service()),
                    })
                }
                None => Err(StoreError::Postgres(err)),
            },
            other => other,
        }
    }

    /// Refused at once while degraded: new work must not queue behind a lost server.
    fn refuse_if_degraded(&self) -> Result<(), StoreError> {
        match self.health.fault_now() {
            Some(fault) => Err(StoreError::Unavailable {
                kind: fault.kind,
                reason: fault.kind.sentence(self.health.service()),
            }),
            None => Ok(()),
        }
    }

    /// One real write (a committed row): the storage probe. The caller heals the store.
    pub async fn probe(&self) -> Result<(), StoreError> {
        in_tx!(self, conn => async {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ('storage_probe_ms', $1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(super::now_ms())
            .execute(&mut *conn)
            .await?;
            Ok::<_, StoreError>(())
        })
    }

    /// Sends `note` to the other replicas now.
    pub async fn publish(&self, note: &Note) -> Result<(), StoreError> {
        on_conn!(self, conn => queue::notify(conn, &self.origin, note))
    }
}

#[tonic::async_trait]
impl RouterStore for PgStore {
    async fn insert(
        &self,
        patch: Patch,
        actor: String,
        traceparent: String,
        warnings: Vec<String>,
        key_name: String,
    ) -> Result<Inserted, StoreError> {
        self.refuse_if_degraded()?;
        let origin = &self.origin;
        in_tx!(self, conn => queue::insert(conn, origin, patch, &actor, &traceparent, &warnings, &key_name))
    }

    async fn get(&self, id: String) -> Result<Option<PatchRecord>, StoreError> {
        on_conn!(self, conn => patches::get(conn, &id, false))
    }

    async fn list(
        &self,
        target: Option<String>,
        status: Option<Status>,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<PatchRecord>, StoreError> {
        on_conn!(self, conn => reads::list(conn, target.as_deref(), status, limit, offset))
    }

    async fn events(&self, id: String) -> Result<Vec<EventRow>, StoreError> {
        on_conn!(self, conn => reads::events(conn, &id))
    }

    async fn lease_next(
        &self,
        target: String,
        owner: String,
        lease_ms: i64,
        takes_reverts: bool,
    ) -> Result<Option<PatchRecord>, StoreError> {
        in_tx!(self, conn => queue::lease_next(conn, &target, &owner, lease_ms, takes_reverts))
    }

    async fn renew(
        &self,
        owner: String,
        tokens: Vec<u64>,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        in_tx!(self, conn => queue::renew(conn, &owner, &tokens, lease_ms))
    }

    async fn progress(
        &self,
        id: String,
        owner: String,
        token: u64,
        status: Status,
        detail: String,
    ) -> Result<bool, StoreError> {
        in_tx!(self, conn => queue::progress(conn, &id, &owner, token, status, &detail))
    }

    async fn complete(
        &self,
        id: String,
        owner: String,
        token: u64,
        report: ApplyReport,
    ) -> Result<Option<Completed>, StoreError> {
        let origin = &self.origin;
        in_tx!(self, conn => queue::complete(conn, origin, &id, &owner, token, &report))
    }

    async fn record_interrupted(
        &self,
        id: String,
        executor_id: String,
        targets: Vec<String>,
        attempt: u32,
        report: ApplyReport,
    ) -> Result<bool, StoreError> {
        in_tx!(self, conn => queue::record_interrupted(conn, &id, &executor_id, &targets, attempt, &report))
    }

    async fn end_leases(
        &self,
        owner: Option<String>,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError> {
        let origin = &self.origin;
        in_tx!(self, conn => queue::end_leases(conn, origin, owner.as_deref(), false, &reason, max_attempts))
    }

    async fn end_all_leases(
        &self,
        reason: String,
        max_attempts: u32,
    ) -> Result<Vec<LeaseEnded>, StoreError> {
        let origin = &self.origin;
        in_tx!(self, conn => queue::end_leases(conn, origin, None, true, &reason, max_attempts))
    }

    async fn cancel_queued(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<PatchRecord>, StoreError> {
        let origin = &self.origin;
        in_tx!(self, conn => queue::cancel_queued(conn, origin, &id, &actor))
    }

    async fn retry(
        &self,
        id: String,
        actor: String,
    ) -> Result<Option<(PatchRecord, bool)>, StoreError> {
        let origin = &self.origin;
        in_tx!(self, conn => queue::retry(conn, origin, &id, &actor))
    }

    async fn note(&self, id: String, actor: String, detail: String) -> Result<bool, StoreError> {
        in_tx!(self, conn => async {
            let Some(record) = patches::get(conn, &id, false).await? else {
                return Ok::<_, StoreError>(false);
            };
            patches::event(conn, &id, record.status, &actor, record.attempt, &detail).await?;
            Ok(true)
        })
    }

    async fn set_paused(&self, target: String, paused: bool) -> Result<(), StoreError> {
        let origin = &self.origin;
        in_tx!(self, conn => async {
            sqlx::query(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .bind(format!("paused:{target}"))
            .bind(i64::from(paused))
            .execute(&mut *conn)
            .await?;
            if !paused {
                queue::notify(conn, origin, &Note::Dispatch(target.clone())).await?;
            }
            Ok::<_, StoreError>(())
        })
    }

    async fn targets(&self) -> Result<Vec<TargetRow>, StoreError> {
        on_conn!(self, conn => reads::targets(conn))
    }

    async fn stats(&self, since_ms: i64, target: Option<String>) -> Result<StatsRows, StoreError> {
        on_conn!(self, conn => reads::stats(conn, since_ms, target.as_deref()))
    }

    async fn outbox_backlog(&self) -> Result<Vec<OutboxBacklog>, StoreError> {
        on_conn!(self, conn => reads::outbox_backlog(conn))
    }

    async fn outbox_due(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        in_tx!(self, conn => reads::outbox_due(conn, limit, self.claim_ms, &self.origin))
    }

    async fn raise_alert(&self, alert: NewAlert) -> Result<bool, StoreError> {
        in_tx!(self, conn => patches::raise(conn, &alert))
    }

    async fn resolve_alert(&self, key: String, summary: String) -> Result<bool, StoreError> {
        in_tx!(self, conn => patches::resolve(conn, &key, &summary))
    }

    async fn firing_alerts(&self) -> Result<Vec<String>, StoreError> {
        on_conn!(self, conn => async {
            Ok::<_, StoreError>(
                sqlx::query("SELECT key FROM alert_state ORDER BY key")
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<_, _>>()?,
            )
        })
    }

    async fn alerts_due(&self, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        in_tx!(self, conn => reads::alerts_due(conn, limit, self.claim_ms, &self.origin))
    }

    async fn create_token(&self, token: NewToken) -> Result<Option<TokenRow>, StoreError> {
        self.classify(keys::create_token(&self.pool, token).await)
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        self.classify(keys::tokens(&self.pool).await)
    }

    async fn token_by_hash(&self, hash: String) -> Result<Option<TokenRow>, StoreError> {
        self.classify(keys::token_by_hash(&self.pool, hash).await)
    }

    async fn any_token(&self) -> Result<bool, StoreError> {
        self.classify(keys::any_token(&self.pool).await)
    }

    async fn revoke_token(&self, name: String, actor: String) -> Result<Revoked, StoreError> {
        self.classify(keys::revoke_token(&self.pool, name, actor).await)
    }

    async fn token_used(&self, id: i64, at_ms: i64) -> Result<(), StoreError> {
        self.classify(keys::token_used(&self.pool, id, at_ms).await)
    }

    async fn audit_token(
        &self,
        action: String,
        token_id: i64,
        name: String,
        actor: String,
        detail: String,
    ) -> Result<(), StoreError> {
        let audited = keys::audit_token(&self.pool, action, token_id, name, actor, detail).await;
        self.classify(audited)
    }

    async fn create_api_key(&self, key: NewApiKey) -> Result<KeyCreated, StoreError> {
        self.classify(keys::create_api_key(&self.pool, key).await)
    }

    async fn api_keys(&self) -> Result<(Vec<ApiKeyRow>, u64), StoreError> {
        self.classify(keys::api_keys(&self.pool).await)
    }

    async fn revoke_api_key(
        &self,
        name: String,
        revoker: Revoker,
    ) -> Result<KeyRevoked, StoreError> {
        self.classify(keys::revoke_api_key(&self.pool, name, revoker).await)
    }

    async fn import_api_keys(
        &self,
        imported: Vec<NewApiKey>,
        actor: String,
    ) -> Result<KeysImported, StoreError> {
        self.classify(keys::import_api_keys(&self.pool, imported, actor).await)
    }

    async fn settle(
        &self,
        outbox: Outbox,
        settled: Vec<(i64, Delivery)>,
    ) -> Result<(), StoreError> {
        if settled.is_empty() {
            return Ok(());
        }
        in_tx!(self, conn => reads::settle(conn, outbox, &self.origin, &settled))
    }

    async fn publish_cancel(
        &self,
        id: String,
        token: u64,
        reason: String,
    ) -> Result<(), StoreError> {
        self.publish(&Note::Cancel { id, token, reason }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_as_sent_and_foreign_payloads_are_ignored() {
        let notes = [
            Note::Dispatch("MAIN".to_owned()),
            Note::Ended("p-1".to_owned()),
            Note::Others,
            Note::Cancel {
                id: "p-2".to_owned(),
                token: 42,
                reason: "cancelled by\tme".to_owned(),
            },
        ];
        for note in notes {
            let (origin, read) = Note::parse(&note.payload("abc")).unwrap();
            assert_eq!(origin, "abc");
            match (&note, &read) {
                (Note::Cancel { reason, .. }, Note::Cancel { reason: got, .. }) => {
                    assert_eq!(got, &reason.replace('\t', " "));
                }
                _ => assert_eq!(read, note),
            }
        }
        assert!(Note::parse("hello").is_none());
        assert!(Note::parse("abc\tcancel\tp\tnot-a-number\tx").is_none());
    }

    #[test]
    fn rule_time_reads_the_setting_a_stores_own_clock_pins() {
        assert!(
            patches::RULE_MS.contains(&format!("'{}'", patches::RULE_MS_SETTING)),
            "{}",
            patches::RULE_MS
        );
    }

    #[test]
    fn a_lost_server_is_unreachable_and_a_bad_query_is_no_storage_fault() {
        assert_eq!(
            pg_fault(&sqlx::Error::PoolTimedOut),
            Some(FaultKind::Unreachable)
        );
        assert_eq!(pg_fault(&sqlx::Error::RowNotFound), None);
        assert_eq!(
            FaultKind::Unreachable.sentence(crate::SERVICE),
            "the router's database is unreachable"
        );
    }
}
