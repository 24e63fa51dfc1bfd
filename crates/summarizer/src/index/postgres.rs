//! [`PgIndex`]: the summarizer's index on PostgreSQL (`store.url = "postgres://…"`), the same
//! tables, the same transactions and the same answers as the SQLite index ([`SqliteIndex`]),
//! plus the summary bodies (`summary_bodies`, `manifests`) that SQLite keeps as files: written
//! in the transaction that records the attempt, so any replica serves any summary.
//!
//! Every method is blocking, like the SQLite index's: the store calls the index only from
//! `spawn_blocking` threads, where each call runs its queries with the runtime's
//! [`Handle::block_on`](tokio::runtime::Handle::block_on) on a small `sqlx` pool. A pool
//! connection that the server dropped (a restart) is replaced at the next acquire; until the
//! server answers, acquiring fails after [`ACQUIRE_TIMEOUT`], which the store reports as a
//! storage fault (readiness 503, records refused with UNAVAILABLE).
//!
//! Here: opening, the summaries, attempts, changelog and bodies; the outboxes are in
//! `postgres/notify_outbox.rs` and `postgres/webhook_outbox.rs`.
//!
//! [`SqliteIndex`]: super::SqliteIndex

use std::future::Future;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

mod notify_outbox;
mod webhook_outbox;

use super::migrations::{self, Dialect};
use super::{Owed, SUMMARY_COLUMNS, SummaryRow, Transition, event, recorded};
use crate::error::SummarizerError;

/// How long a query waits for a pool connection before the store counts the database as gone.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections the index keeps at most.
const MAX_CONNECTIONS: u32 = 8;

/// The PostgreSQL index; cheap to clone, every call blocking (use from `spawn_blocking`).
#[derive(Clone)]
pub struct PgIndex {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
}

fn i64_of(value: u32) -> i64 {
    i64::from(value)
}

fn usize_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn summary_row(row: &PgRow) -> Result<SummaryRow, sqlx::Error> {
    Ok(summary_of!(row.try_get))
}

fn transition_row(row: &PgRow) -> Result<Transition, sqlx::Error> {
    Ok(transition_of!(row.try_get))
}

/// Every summary of `target`, by patch id, and its recent transitions, oldest first, read on
/// `conn` (a pooled connection, or the transaction that rewrites the manifest).
async fn manifest_rows_on(
    conn: &mut sqlx::PgConnection,
    target: &str,
) -> Result<(Vec<SummaryRow>, Vec<Transition>), sqlx::Error> {
    let rows = sqlx::query(sql(format!(
        "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE target = $1 ORDER BY patch_id"
    )))
    .bind(target)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(summary_row)
    .collect::<Result<Vec<_>, _>>()?;
    let transitions = sqlx::query(
        "SELECT patch_id, attempt, event, from_status, to_status, at_ms FROM changelog
         WHERE target = $1 ORDER BY id",
    )
    .bind(target)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(transition_row)
    .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, transitions))
}

/// `query` with a summary row's columns bound as `$1`…`$11`, in [`SUMMARY_COLUMNS`] order.
fn bind_summary<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    row: &SummaryRow,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&row.patch_id)
        .bind(&row.target)
        .bind(&row.status)
        .bind(i64_of(row.attempt))
        .bind(i64_of(row.attempts))
        .bind(&row.trace_id)
        .bind(row.created_ms)
        .bind(row.finished_ms)
        .bind(row.recorded_ms)
        .bind(&row.dir)
        .bind(row.archived)
}

/// A query built from constant pieces (column lists, filters): never caller text.
fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

impl PgIndex {
    /// Connects to `url` and migrates the schema; must be called on a `spawn_blocking` thread
    /// of the runtime.
    pub fn open(url: &str) -> Result<Self, SummarizerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SummarizerError::Store("the PostgreSQL index needs a tokio runtime".to_owned())
        })?;
        let options: PgConnectOptions = url.parse().map_err(|err: sqlx::Error| {
            // The parser's text names the part that is wrong, never the password.
            SummarizerError::Store(format!("store.url is not a valid PostgreSQL URL: {err}"))
        })?;
        // The summarizer's tables live in its own schema, so the router and the alerter may
        // share the database.
        let options = options.options([("search_path", migrations::SCHEMA)]);
        let server = format!("{}:{}", options.get_host(), options.get_port());
        let pool = runtime
            .block_on(
                PgPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options),
            )
            .map_err(|err| {
                SummarizerError::Store(format!(
                    "cannot connect to the PostgreSQL server of store.url ({server}): {err}"
                ))
            })?;
        let index = Self { pool, runtime };
        index.block(async |pool| {
            let mut tx = pool.begin().await?;
            // One replica migrates at a time; the others wait here, then find it done.
            sqlx::query("SELECT pg_advisory_xact_lock(7368011)")
                .execute(&mut *tx)
                .await?;
            sqlx::query("CREATE SCHEMA IF NOT EXISTS summarizer")
                .execute(&mut *tx)
                .await?;
            sqlx::query(migrations::TABLE).execute(&mut *tx).await?;
            let current: Option<i64> = sqlx::query("SELECT MAX(version) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let pending = migrations::pending(current.unwrap_or(0))?;
            for migration in pending {
                sqlx::raw_sql(sqlx::AssertSqlSafe(migration.sql(Dialect::Postgres)))
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
        })?;
        Ok(index)
    }

    /// Runs `job` on the pool to its end, from a blocking thread.
    fn block<T, F>(&self, job: impl FnOnce(PgPool) -> F) -> Result<T, SummarizerError>
    where
        F: Future<Output = Result<T, SummarizerError>>,
    {
        self.runtime.block_on(job(self.pool.clone()))
    }

    /// Nothing to reopen: the pool replaces a connection the server dropped.
    pub fn reopen(&self) -> Result<(), SummarizerError> {
        Ok(())
    }

    /// One real write through the index (a committed row): the storage probe.
    pub fn probe(&self, now_ms: i64) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            sqlx::query(
                "INSERT INTO storage_probe (id, at_ms) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
            )
            .bind(now_ms)
            .execute(&pool)
            .await?;
            Ok(())
        })
    }

    /// The status recorded for (patch id, attempt), if any.
    pub fn attempt_status(
        &self,
        patch_id: &str,
        attempt: u32,
    ) -> Result<Option<String>, SummarizerError> {
        self.block(async |pool| {
            let row =
                sqlx::query("SELECT status FROM attempts WHERE patch_id = $1 AND attempt = $2")
                    .bind(patch_id)
                    .bind(i64_of(attempt))
                    .fetch_optional(&pool)
                    .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    /// The row of `patch_id`.
    pub fn get(&self, patch_id: &str) -> Result<Option<SummaryRow>, SummarizerError> {
        self.block(async |pool| {
            let row = sqlx::query(sql(format!(
                "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE patch_id = $1"
            )))
            .bind(patch_id)
            .fetch_optional(&pool)
            .await?;
            Ok(row.as_ref().map(summary_row).transpose()?)
        })
    }

    /// See [`super::SqliteIndex::commit_record`].
    pub fn commit_record(
        &self,
        row: &SummaryRow,
        attempt: u32,
        attempt_status: &str,
        from_status: &str,
        owed: Owed,
        changelog_len: usize,
    ) -> Result<bool, SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO attempts (patch_id, attempt, status, recorded_ms)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&row.patch_id)
            .bind(i64_of(attempt))
            .bind(attempt_status)
            .bind(row.recorded_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
            // Another replica may have recorded another attempt of this patch since this one
            // read the previous summary: then the row has as many attempts as ours, ours lacks
            // that one, and the whole transaction is undone for the caller to retry.
            let written = bind_summary(
                sqlx::query(sql(format!(
                    "INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (patch_id) DO UPDATE SET target = $2, status = $3, attempt = $4,
                     attempts = $5, trace_id = $6, created_ms = $7, finished_ms = $8, recorded_ms = $9,
                     dir = $10, archived = $11 WHERE summaries.attempts < $5"
                ))),
                row,
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if written == 0 {
                return Err(SummarizerError::Unavailable(format!(
                    "another summarizer recorded patch {} at the same time; retry",
                    row.patch_id
                )));
            }
            let transition = recorded(row, attempt, from_status, attempt_status);
            insert_transition(&mut tx, &row.target, &transition, changelog_len).await?;
            webhook_outbox::insert_webhooks(&mut tx, &row.patch_id, attempt, row.recorded_ms, &owed.webhooks)
                .await?;
            for (name, body) in &owed.bodies {
                sqlx::query(
                    "INSERT INTO summary_bodies (patch_id, name, body) VALUES ($1, $2, $3)
                     ON CONFLICT (patch_id, name) DO UPDATE SET body = excluded.body",
                )
                .bind(&row.patch_id)
                .bind(name)
                .bind(body)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(notification) = owed.notification {
                sqlx::query(
                    "INSERT INTO outbox (patch_id, attempt, request, traceparent, next_at_ms, created_ms)
                     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT DO NOTHING",
                )
                .bind(&row.patch_id)
                .bind(i64_of(attempt))
                .bind(notification.request)
                .bind(notification.traceparent)
                .bind(row.recorded_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// See [`super::SqliteIndex::import`].
    pub fn import(
        &self,
        row: &SummaryRow,
        attempts: &[(u32, String)],
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            bind_summary(
                sqlx::query(sql(format!(
                    "INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT DO NOTHING"
                ))),
                row,
            )
            .execute(&mut *tx)
            .await?;
            for (attempt, status) in attempts {
                sqlx::query(
                    "INSERT INTO attempts (patch_id, attempt, status, recorded_ms)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(&row.patch_id)
                .bind(i64_of(*attempt))
                .bind(status)
                .bind(row.recorded_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Summaries newest first, optionally of one target and/or status; and the total matching.
    pub fn list(
        &self,
        target: Option<&str>,
        status: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<SummaryRow>, usize), SummarizerError> {
        self.block(async |pool| {
            let filter = "($1::text IS NULL OR target = $1) AND ($2::text IS NULL OR status = $2)";
            let total: i64 = sqlx::query(sql(format!(
                "SELECT COUNT(*) FROM summaries WHERE {filter}"
            )))
            .bind(target)
            .bind(status)
            .fetch_one(&pool)
            .await?
            .try_get(0)?;
            let rows = sqlx::query(sql(format!(
                "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE {filter}
                 ORDER BY finished_ms DESC, patch_id LIMIT $3 OFFSET $4"
            )))
            .bind(target)
            .bind(status)
            .bind(usize_i64(limit))
            .bind(usize_i64(offset))
            .fetch_all(&pool)
            .await?;
            let rows = rows
                .iter()
                .map(summary_row)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((rows, usize::try_from(total).unwrap_or(usize::MAX)))
        })
    }

    /// Every target with at least one summary or transition.
    pub fn targets(&self) -> Result<Vec<String>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(
                "SELECT target FROM summaries UNION SELECT target FROM changelog ORDER BY 1",
            )
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, _>>()?)
        })
    }

    /// Every summary of `target`, by patch id, and its recent transitions, oldest first.
    pub fn manifest_rows(
        &self,
        target: &str,
    ) -> Result<(Vec<SummaryRow>, Vec<Transition>), SummarizerError> {
        self.block(async |pool| {
            let mut conn = pool.acquire().await?;
            Ok(manifest_rows_on(&mut conn, target).await?)
        })
    }

    /// Live (not archived) summaries that ended before `cutoff_ms`.
    pub fn archive_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.select_where("NOT archived AND finished_ms < $1", cutoff_ms)
    }

    /// Archived summaries that ended before `cutoff_ms`.
    pub fn expired_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.select_where("archived AND finished_ms < $1", cutoff_ms)
    }

    /// Every summary row.
    pub fn all(&self) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.select_where("$1::bigint IS NOT NULL", 0)
    }

    fn select_where(
        &self,
        filter: &str,
        cutoff_ms: i64,
    ) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(sql(format!(
                "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE {filter} ORDER BY finished_ms, patch_id"
            )))
            .bind(cutoff_ms)
            .fetch_all(&pool)
            .await?;
            Ok(rows.iter().map(summary_row).collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Points `row` at its archive folder and logs the transition.
    pub fn mark_archived(
        &self,
        row: &SummaryRow,
        dir: &str,
        at_ms: i64,
        changelog_len: usize,
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE summaries SET dir = $2, archived = TRUE WHERE patch_id = $1")
                .bind(&row.patch_id)
                .bind(dir)
                .execute(&mut *tx)
                .await?;
            let transition = event(row, "archived", at_ms);
            insert_transition(&mut tx, &row.target, &transition, changelog_len).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Points `patch_id` at `dir` without a transition (repairing an interrupted move).
    pub fn set_dir(
        &self,
        patch_id: &str,
        dir: &str,
        archived: bool,
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            sqlx::query("UPDATE summaries SET dir = $2, archived = $3 WHERE patch_id = $1")
                .bind(patch_id)
                .bind(dir)
                .bind(archived)
                .execute(&pool)
                .await?;
            Ok(())
        })
    }

    /// Drops `row` (its files are gone); its attempts stay recorded so a redelivery is a no-op.
    pub fn mark_expired(
        &self,
        row: &SummaryRow,
        at_ms: i64,
        changelog_len: usize,
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM summaries WHERE patch_id = $1")
                .bind(&row.patch_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM summary_bodies WHERE patch_id = $1")
                .bind(&row.patch_id)
                .execute(&mut *tx)
                .await?;
            let transition = event(row, "expired", at_ms);
            insert_transition(&mut tx, &row.target, &transition, changelog_len).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The body `name` of `patch_id` (`summary-<id>.md`, …), if stored.
    pub fn body(&self, patch_id: &str, name: &str) -> Result<Option<Vec<u8>>, SummarizerError> {
        self.block(async |pool| {
            let row =
                sqlx::query("SELECT body FROM summary_bodies WHERE patch_id = $1 AND name = $2")
                    .bind(patch_id)
                    .bind(name)
                    .fetch_optional(&pool)
                    .await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    /// Rewrites the manifest of `target` with `build` over its rows, in one transaction that
    /// holds the target's lock: replicas rewrite it in turn, so the last write is of the
    /// newest rows.
    pub fn rewrite_manifest(
        &self,
        target: &str,
        build: impl FnOnce(&[SummaryRow], &[Transition]) -> Result<Vec<u8>, SummarizerError>,
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('manifest:' || $1))")
                .bind(target)
                .execute(&mut *tx)
                .await?;
            let (rows, transitions) = manifest_rows_on(&mut tx, target).await?;
            let body = build(&rows, &transitions)?;
            sqlx::query(
                "INSERT INTO manifests (target, body) VALUES ($1, $2)
                 ON CONFLICT (target) DO UPDATE SET body = excluded.body",
            )
            .bind(target)
            .bind(body)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn scalar(&self, query: &'static str) -> Result<Option<i64>, SummarizerError> {
        self.block(async |pool| Ok(sqlx::query(query).fetch_one(&pool).await?.try_get(0)?))
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Postgres>;

async fn insert_transition(
    tx: &mut Tx,
    target: &str,
    transition: &Transition,
    keep: usize,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO changelog (target, patch_id, attempt, event, from_status, to_status, at_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(target)
    .bind(&transition.patch_id)
    .bind(i64_of(transition.attempt))
    .bind(&transition.event)
    .bind(&transition.from_status)
    .bind(&transition.to_status)
    .bind(transition.at_ms)
    .execute(&mut **tx)
    .await?;
    // Bounded: keep only the newest `keep` transitions of this target.
    sqlx::query(
        "DELETE FROM changelog WHERE target = $1 AND id NOT IN
         (SELECT id FROM changelog WHERE target = $1 ORDER BY id DESC LIMIT $2)",
    )
    .bind(target)
    .bind(usize_i64(keep))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
