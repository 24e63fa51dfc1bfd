//! [`PgStore`]: the alerter's tables on PostgreSQL (`store.url = "postgres://…"`), the same
//! transactions and the same answers as [`SqliteStore`](super::SqliteStore), shared by
//! replicas:
//!
//! - every transaction that adds to the outbox first takes one transaction-scoped advisory
//!   lock, so outbox ids are drawn in commit order and the oldest pending message of a thread
//!   is always its first (two replicas storing into one thread cannot reorder it);
//! - a replica sends to a channel only while it holds the lease `channel/<name>` (a row of
//!   `leases`, renewed by every delivery round that has work there, expiring
//!   [`CHANNEL_LEASE`] after the last, given up at a clean shutdown), so one sender per
//!   channel keeps Slack's order per thread and posts nothing twice;
//! - [`PgStore::hold_lease`] elects the leader of other singletons (the health monitor);
//! - a replica changing the alerts (raise, resolve, ack, silence, timers) holds
//!   [`PgStore::lock_alerts`] from reading them to storing the change, so one alert raised
//!   through two replicas at once is posted once.
//!
//! Lease times are the server's clock, so replicas need not agree on theirs. A pool
//! connection that the server dropped (a restart) is replaced at the next acquire; until the
//! server answers, acquiring fails after [`ACQUIRE_TIMEOUT`], which the store reports as the
//! database unreachable (readiness 503, `Notify` and `Alert` refused with UNAVAILABLE).

mod delivery;
mod digest;
mod records;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ghost_runtime::storage::FaultKind;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Row as _, raw_sql};

use self::digest::{add_to_digest, insert_messages, lock_outbox};
use super::migrations::{self, Dialect};
use super::{Accept, Kind, NewMessage, OutboxCounts, StoreError};

/// How long a query waits for a pool connection before the store counts the database as gone.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a channel's sender lease lasts after the last round that renewed it: longer than
/// one delivery round (a Slack call and its webhook fallback), so a live sender never loses
/// it mid-round; a dead replica's channels move after this.
pub const CHANNEL_LEASE: Duration = Duration::from_secs(30);
/// The longest a replica sleeps before looking at the outbox again: another replica may have
/// stored messages for a channel this one sends to.
pub const POLL: Duration = Duration::from_millis(200);
/// Connections the store keeps at most.
const MAX_CONNECTIONS: u32 = 8;
/// The advisory lock taken while migrating (one replica at a time).
const MIGRATION_LOCK: i64 = 7_368_021;
/// The advisory lock held while a replica changes the alerts ([`PgStore::lock_alerts`]).
const ALERTS_LOCK: i64 = 7_368_023;
/// The server's clock in unix ms.
const DB_NOW: &str = "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// The alerts held by one replica until dropped: an open transaction holding [`ALERTS_LOCK`];
/// dropping it rolls the transaction back (sqlx sends the rollback when the connection returns
/// to the pool), which releases the lock.
pub struct AlertsLock {
    _transaction: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// The PostgreSQL backend. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Who this store is in `leases`: unique per process and store.
    holder: std::sync::Arc<str>,
}

/// The storage fault a PostgreSQL error reports: the server gone or refusing connections
/// (`Unreachable`), out of disk (`Full`); a failed query of ours is no storage fault.
pub fn fault(err: &sqlx::Error) -> Option<FaultKind> {
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

/// A holder name no other store shares: the process id, the time and a counter.
fn new_holder() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Takes or renews lease `name` for `holder` until `now + ttl` (server time), unless another
/// holder's lease is still running; true when `holder` has it.
async fn take_lease(
    conn: &mut PgConnection,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH now AS ({DB_NOW} AS ms)
         INSERT INTO leases (name, holder, until_ms) SELECT $1, $2, ms + $3 FROM now
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
         WHERE leases.holder = excluded.holder OR leases.until_ms <= (SELECT ms FROM now)
         RETURNING holder"
    )))
    .bind(name)
    .bind(holder)
    .bind(millis(ttl))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(taken.is_some())
}

impl PgStore {
    /// Connects to `url` and migrates the schema.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|err: sqlx::Error| {
            // The parser's text names the part that is wrong, never the password.
            StoreError::Open(format!("store.url is not a valid PostgreSQL URL: {err}"))
        })?;
        // The alerter's tables live in its own schema, so the router and the summarizer may
        // share the database.
        let options = options.options([("search_path", migrations::SCHEMA)]);
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|err| {
                StoreError::Open(format!(
                    "cannot connect to the PostgreSQL server of store.url ({server}): {err}"
                ))
            })?;
        let store = Self {
            pool,
            holder: new_holder().into(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // One replica migrates at a time; the others wait here, then find it done.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query("CREATE SCHEMA IF NOT EXISTS alerter")
            .execute(&mut *tx)
            .await?;
        sqlx::query(migrations::TABLE).execute(&mut *tx).await?;
        let current: Option<i64> = sqlx::query("SELECT MAX(version) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for migration in migrations::pending(current.unwrap_or(0))? {
            raw_sql(sqlx::AssertSqlSafe(migration.sql(Dialect::Postgres)))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
                .bind(migration.version)
                .bind(migration.name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes or renews lease `name` for `ttl`; true while this store holds it.
    pub async fn hold_lease(&self, name: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(take_lease(&mut conn, name, &self.holder, ttl).await?)
    }

    /// Waits for the alerts lock, so one replica at a time reads, changes and posts the alerts
    /// (two replicas raising one key at once would otherwise both post it).
    pub async fn lock_alerts(&self) -> Result<AlertsLock, StoreError> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(ALERTS_LOCK)
            .execute(&mut *transaction)
            .await?;
        Ok(AlertsLock {
            _transaction: transaction,
        })
    }

    /// Gives up every lease this store holds.
    pub async fn release_leases(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE holder = $1")
            .bind(&*self.holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One real write (a committed row): the storage probe.
    pub async fn probe(&self, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO storage_probe (id, at_ms) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// True when any message of `thread` was ever stored.
    pub async fn thread_started(&self, thread: &str) -> Result<bool, StoreError> {
        let found = sqlx::query("SELECT id FROM outbox WHERE thread = $1 LIMIT 1")
            .bind(thread)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// The channel of `thread`'s first stored message, if any was ever stored.
    pub async fn thread_channel(&self, thread: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT channel FROM outbox WHERE thread = $1 ORDER BY id LIMIT 1")
            .bind(thread)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// The copies of `thread` in other channels, with their channels.
    pub async fn thread_copies(&self, thread: &str) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = format!("{thread}@");
        let rows = sqlx::query(
            "SELECT thread, MIN(channel) FROM outbox
             WHERE substr(thread, 1, length($1)) = $1
             GROUP BY thread ORDER BY MIN(id)",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        let copies = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(copies)
    }

    /// Records `Notify(patch_id, attempt)`, stores its messages and digest entries in one
    /// transaction, unless it was recorded before; true when fresh.
    pub(crate) async fn accept_routed(&self, accept: Accept) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_outbox(&mut tx).await?;
        let fresh = sqlx::query(
            "INSERT INTO notifications (patch_id, attempt, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(&accept.patch_id)
        .bind(i64::from(accept.attempt))
        .bind(accept.now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if fresh {
            insert_messages(&mut tx, &accept.messages, accept.now_ms).await?;
            for add in &accept.digests {
                add_to_digest(&mut tx, &accept, add).await?;
            }
        }
        tx.commit().await?;
        Ok(fresh)
    }

    /// Pending messages per channel (the backlog).
    pub async fn pending_by_channel(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY channel",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let count: i64 = row.try_get(1)?;
            out.insert(row.try_get(0)?, u64::try_from(count).unwrap_or(0));
        }
        Ok(out)
    }

    /// The creation time of the oldest pending message, if any.
    pub async fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT created_ms FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    async fn count(
        &self,
        sql: &'static str,
        binds: (&str, Option<i64>),
    ) -> Result<u64, StoreError> {
        let mut query = sqlx::query(sql).bind(binds.0);
        if let Some(value) = binds.1 {
            query = query.bind(value);
        }
        let count: i64 = query.fetch_one(&self.pool).await?.try_get(0)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Direct messages (threads `dm/…`) stored for `user` since `since_ms`.
    pub async fn dms_since(&self, user: &str, since_ms: i64) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM outbox
             WHERE channel = $1 AND thread LIKE 'dm/%' AND created_ms >= $2",
            (user, Some(since_ms)),
        )
        .await
    }

    /// Pending messages of `channel`.
    pub async fn pending_in(&self, channel: &str) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND channel = $1",
            (channel, None),
        )
        .await
    }

    /// The channels whose successes the backlog switch sends to the digest.
    pub async fn backlog_switched(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT channel FROM backlog_switched ORDER BY channel")
            .fetch_all(&self.pool)
            .await?;
        let channels = rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(channels)
    }

    /// Records a backlog switch of `channel` and stores its notice, in one transaction.
    pub async fn switch_backlog(
        &self,
        channel: &str,
        on: bool,
        notice: NewMessage,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_outbox(&mut tx).await?;
        let sql = if on {
            "INSERT INTO backlog_switched (channel) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM backlog_switched WHERE channel = $1"
        };
        sqlx::query(sql).bind(channel).execute(&mut *tx).await?;
        insert_messages(&mut tx, &[notice], now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// True when the `Alert(key, resolved, at)` call was already recorded.
    pub async fn alert_event_seen(
        &self,
        key: &str,
        resolved: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM alert_events WHERE key = $1 AND resolved = $2 AND at_ms = $3",
        )
        .bind(key)
        .bind(resolved)
        .bind(at_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Records one `Alert(key, resolved, at)` call; true when it was not seen before.
    pub async fn accept_alert_event(
        &self,
        key: &str,
        resolved: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO alert_events (key, resolved, at_ms) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(key)
        .bind(resolved)
        .bind(at_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Stores messages for delivery.
    pub async fn enqueue(&self, messages: Vec<NewMessage>, now_ms: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_outbox(&mut tx).await?;
        insert_messages(&mut tx, &messages, now_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Outbox rows by state.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM outbox GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut counts = OutboxCounts::default();
        for row in rows {
            let state: String = row.try_get(0)?;
            let count = u64::try_from(row.try_get::<i64, _>(1)?).unwrap_or(0);
            match state.as_str() {
                "pending" => counts.pending = count,
                "sent" => counts.sent = count,
                _ => counts.dead = count,
            }
        }
        Ok(counts)
    }

    /// Every stored message in storing order, delivered or not.
    pub async fn all_messages(&self) -> Result<Vec<NewMessage>, StoreError> {
        let rows = sqlx::query("SELECT thread, channel, kind, body FROM outbox ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get(2)?;
            let body: String = row.try_get(3)?;
            messages.push(NewMessage {
                thread: row.try_get(0)?,
                channel: row.try_get(1)?,
                kind: Kind::parse(&kind),
                body: serde_json::from_str(&body)?,
                traceparent: None,
                priority: super::Priority::Thread,
            });
        }
        Ok(messages)
    }
}
