//! [`Index`]: the summarizer's index, on one of two stores chosen by `store.url`:
//! [`SqliteIndex`] (the embedded default, `<data_dir>/summarizer.db`, WAL, synchronous=FULL) or
//! [`PgIndex`] (PostgreSQL). Both hold the same tables, versioned by [`migrations`].
//!
//! Tables: `summaries` (one row per patch: where its files are and what the latest attempt was),
//! `attempts` (the idempotency key (patch id, attempt)), `outbox` (notifications owed to the
//! alerter), `changelog` (recent transitions per target, bounded) and the webhook outbox
//! ([`webhook_outbox`]: messages owed to push subscriptions, and dead letters). The summary files are
//! written before the row that points at them is committed, so a committed row always names
//! complete files.
//!
//! Shape: an enum over the two backends, not a trait. The store above it ([`crate::summaries`])
//! is a blocking core run on `spawn_blocking` threads (files, fsyncs, per-patch locks), so the
//! index's methods stay blocking and every call site stays as it was; the PostgreSQL side runs
//! its async `sqlx` queries to their end from those threads. An enum keeps the two backends'
//! method lists side by side in `dispatch!`, checked by the compiler to match, with no boxed
//! futures or trait objects; the async trait that the router and the alerter will share comes
//! with the one store layer of issue 21.

/// Row mapping both backends share: `$row.$get(i)?` reads column `i` (`get` on rusqlite,
/// `try_get` on sqlx), so each struct's column order is written once, for SQL that selects the
/// columns in that order. Defined before the backend modules so that they see them.
macro_rules! summary_of {
    ($row:ident . $get:ident) => {
        $crate::index::SummaryRow {
            patch_id: $row.$get(0)?,
            target: $row.$get(1)?,
            status: $row.$get(2)?,
            attempt: $crate::index::u32_of($row.$get(3)?),
            attempts: $crate::index::u32_of($row.$get(4)?),
            trace_id: $row.$get(5)?,
            created_ms: $row.$get(6)?,
            finished_ms: $row.$get(7)?,
            recorded_ms: $row.$get(8)?,
            dir: $row.$get(9)?,
            archived: $row.$get(10)?,
        }
    };
}

/// A [`Transition`] from `patch_id, attempt, event, from_status, to_status, at_ms`.
macro_rules! transition_of {
    ($row:ident . $get:ident) => {
        $crate::index::Transition {
            patch_id: $row.$get(0)?,
            attempt: $crate::index::u32_of($row.$get(1)?),
            event: $row.$get(2)?,
            from_status: $row.$get(3)?,
            to_status: $row.$get(4)?,
            at_ms: $row.$get(5)?,
        }
    };
}

/// An [`OutboxRow`] from `id, patch_id, attempt, request, traceparent, tries`.
macro_rules! outbox_of {
    ($row:ident . $get:ident) => {
        $crate::index::OutboxRow {
            id: $row.$get(0)?,
            patch_id: $row.$get(1)?,
            attempt: $crate::index::u32_of($row.$get(2)?),
            request: $row.$get(3)?,
            traceparent: $row.$get(4)?,
            tries: $crate::index::u32_of($row.$get(5)?),
        }
    };
}

/// A [`WebhookRow`] from `id, webhook_id, subscription, patch_id, attempt, event, body, tries,
/// first_try_ms`.
macro_rules! webhook_of {
    ($row:ident . $get:ident) => {
        $crate::index::WebhookRow {
            id: $row.$get(0)?,
            webhook_id: $row.$get(1)?,
            subscription: $row.$get(2)?,
            patch_id: $row.$get(3)?,
            attempt: $crate::index::u32_of($row.$get(4)?),
            event: $row.$get(5)?,
            body: $row.$get(6)?,
            tries: $crate::index::u32_of($row.$get(7)?),
            first_try_ms: $row.$get(8)?,
        }
    };
}

/// A [`DeadLetter`] from `webhook_id, subscription, patch_id, attempt, tries, reason`.
macro_rules! dead_letter_of {
    ($row:ident . $get:ident) => {
        $crate::index::DeadLetter {
            webhook_id: $row.$get(0)?,
            subscription: $row.$get(1)?,
            patch_id: $row.$get(2)?,
            attempt: $crate::index::u32_of($row.$get(3)?),
            tries: $crate::index::u32_of($row.$get(4)?),
            reason: $row.$get(5)?,
        }
    };
}

mod migrations;
mod postgres;
mod webhook_outbox;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use ghost_runtime::outbox::{Claim, Outcome};
use rusqlite::{Connection, OptionalExtension as _, params};

pub use self::postgres::PgIndex;
pub use self::webhook_outbox::{DeadLetter, NewWebhook, WebhookRow};
use crate::error::SummarizerError;

/// A connection to the index file with the store's settings.
fn connect(path: &Path) -> Result<Connection, SummarizerError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// One `summaries` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// The patch.
    pub patch_id: String,
    /// Its workspace.
    pub target: String,
    /// Status of the latest attempt (snake_case).
    pub status: String,
    /// The latest attempt.
    pub attempt: u32,
    /// How many attempts are recorded.
    pub attempts: u32,
    /// Trace id of the latest attempt.
    pub trace_id: String,
    /// When the patch was accepted, unix ms.
    pub created_ms: i64,
    /// When the latest attempt ended, unix ms.
    pub finished_ms: i64,
    /// When the latest attempt was recorded here, unix ms.
    pub recorded_ms: i64,
    /// Folder of `summary-<id>.{md,json}`, relative to the data dir.
    pub dir: String,
    /// True once moved under `.archive/`.
    pub archived: bool,
}

/// One `changelog` row: a transition of one patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The patch.
    pub patch_id: String,
    /// The attempt.
    pub attempt: u32,
    /// `recorded`, `archived` or `expired`.
    pub event: String,
    /// Status before (empty for a first summary).
    pub from_status: String,
    /// Status after.
    pub to_status: String,
    /// When, unix ms.
    pub at_ms: i64,
}

/// One `outbox` row: a `Notify` owed to the alerter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The patch.
    pub patch_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The encoded `NotifyRequest`.
    pub request: Vec<u8>,
    /// W3C traceparent of the `Record` call, empty when untraced.
    pub traceparent: String,
    /// Failed tries so far.
    pub tries: u32,
}

/// A notification to queue with a recorded attempt.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// The encoded `NotifyRequest`.
    pub request: Vec<u8>,
    /// W3C traceparent, empty when untraced.
    pub traceparent: String,
}

/// What a recorded attempt owes, queued in the same transaction as the record.
#[derive(Debug, Clone, Default)]
pub struct Owed {
    /// The alerter's notification, when an alerter is configured.
    pub notification: Option<NewNotification>,
    /// One message per push subscription that wants this outcome.
    pub webhooks: Vec<NewWebhook>,
    /// The summary's files (name relative to its folder, contents) on a store that keeps them
    /// in the database (PostgreSQL); empty on SQLite, where they were written as files first.
    pub bodies: Vec<(String, Vec<u8>)>,
}

/// The SQLite index; cheap to clone, every call blocking (use from `spawn_blocking`).
#[derive(Clone)]
pub struct SqliteIndex {
    conn: Arc<Mutex<Connection>>,
    path: Arc<Path>,
}

/// Applies the pending [`migrations`] to an SQLite index in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), SummarizerError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(migrations::TABLE)?;
    let current: Option<i64> =
        tx.query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })?;
    for migration in migrations::pending(current.unwrap_or(0))? {
        tx.execute_batch(migration.sql(migrations::Dialect::Sqlite))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
            params![migration.version, migration.name],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The index on the store `store.url` names; cheap to clone, every call blocking (use from
/// `spawn_blocking`).
#[derive(Clone)]
pub enum Index {
    /// The embedded SQLite file.
    Sqlite(SqliteIndex),
    /// A PostgreSQL database.
    Postgres(PgIndex),
}

/// The methods of [`Index`], each passed on to the backend's method of the same name.
macro_rules! dispatch {
    ($( $(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Index {
            $(
                $(#[$meta])*
                pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Self::Sqlite(index) => index.$name($($arg),*),
                        Self::Postgres(index) => index.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// After a failed write: a fresh connection (SQLite), nothing (PostgreSQL's pool).
    fn reopen(&self) -> Result<(), SummarizerError>;
    /// One real committed write: the storage probe.
    fn probe(&self, now_ms: i64) -> Result<(), SummarizerError>;
    /// The status recorded for (patch id, attempt), if any.
    fn attempt_status(&self, patch_id: &str, attempt: u32) -> Result<Option<String>, SummarizerError>;
    /// The row of `patch_id`.
    fn get(&self, patch_id: &str) -> Result<Option<SummaryRow>, SummarizerError>;
    /// See [`SqliteIndex::commit_record`].
    fn commit_record(&self, row: &SummaryRow, attempt: u32, attempt_status: &str, from_status: &str, owed: Owed, changelog_len: usize) -> Result<bool, SummarizerError>;
    /// See [`SqliteIndex::import`].
    fn import(&self, row: &SummaryRow, attempts: &[(u32, String)]) -> Result<(), SummarizerError>;
    /// See [`SqliteIndex::list`].
    fn list(&self, target: Option<&str>, status: Option<&str>, offset: usize, limit: usize) -> Result<(Vec<SummaryRow>, usize), SummarizerError>;
    /// Every target with at least one summary or transition.
    fn targets(&self) -> Result<Vec<String>, SummarizerError>;
    /// See [`SqliteIndex::manifest_rows`].
    fn manifest_rows(&self, target: &str) -> Result<(Vec<SummaryRow>, Vec<Transition>), SummarizerError>;
    /// Live summaries that ended before `cutoff_ms`.
    fn archive_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError>;
    /// Archived summaries that ended before `cutoff_ms`.
    fn expired_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError>;
    /// Points `row` at its archive folder and logs the transition.
    fn mark_archived(&self, row: &SummaryRow, dir: &str, at_ms: i64, changelog_len: usize) -> Result<(), SummarizerError>;
    /// Points `patch_id` at `dir` without a transition.
    fn set_dir(&self, patch_id: &str, dir: &str, archived: bool) -> Result<(), SummarizerError>;
    /// Every summary row.
    fn all(&self) -> Result<Vec<SummaryRow>, SummarizerError>;
    /// Drops `row`; its attempts stay recorded.
    fn mark_expired(&self, row: &SummaryRow, at_ms: i64, changelog_len: usize) -> Result<(), SummarizerError>;
    /// Up to `limit` notifications due at `now_ms`, oldest first.
    fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, SummarizerError>;
    /// See [`SqliteIndex::outbox_claim`].
    fn outbox_claim(&self, claim: &Claim) -> Result<Vec<OutboxRow>, SummarizerError>;
    /// See [`SqliteIndex::outbox_next_due`].
    fn outbox_next_due(&self) -> Result<Option<i64>, SummarizerError>;
    /// Notifications still owed.
    fn outbox_len(&self) -> Result<u64, SummarizerError>;
    /// See [`SqliteIndex::outbox_oldest_ms`].
    fn outbox_oldest_ms(&self) -> Result<Option<i64>, SummarizerError>;
    /// See [`SqliteIndex::outbox_settle`].
    fn outbox_settle(&self, claimant: &str, outcomes: &[Outcome<()>]) -> Result<(), SummarizerError>;
    /// See [`SqliteIndex::webhooks_claim`].
    fn webhooks_claim(&self, claim: &Claim, lane: Option<&str>) -> Result<Vec<WebhookRow>, SummarizerError>;
    /// See [`SqliteIndex::webhooks_next_due`].
    fn webhooks_next_due(&self, lane: Option<&str>) -> Result<Option<i64>, SummarizerError>;
    /// Per subscription key: pending messages and the oldest's queue time.
    fn webhook_backlogs(&self) -> Result<Vec<(String, u64, i64)>, SummarizerError>;
    /// Every pending message, in record order.
    fn webhooks_pending(&self) -> Result<Vec<WebhookRow>, SummarizerError>;
    /// Pending messages and dead letters, counted.
    fn webhook_counts(&self) -> Result<(u64, u64), SummarizerError>;
    /// Every dead letter, oldest first.
    fn webhook_dead_letters(&self) -> Result<Vec<DeadLetter>, SummarizerError>;
    /// The subscriptions whose receiver answered 410 Gone.
    fn webhooks_gone(&self) -> Result<Vec<(String, String)>, SummarizerError>;
    /// See [`SqliteIndex::webhook_set_gone`].
    fn webhook_set_gone(&self, key: &str, url_sha256: Option<&str>, at_ms: i64) -> Result<(), SummarizerError>;
    /// See [`SqliteIndex::webhook_prune_dead_letters`].
    fn webhook_prune_dead_letters(&self, before_ms: i64, keep: u64) -> Result<usize, SummarizerError>;
    /// Records a round of webhook tries in one transaction.
    fn webhooks_settle(&self, claimant: &str, outcomes: &[Outcome<()>]) -> Result<(), SummarizerError>;
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic mid-call leaves SQLite itself consistent (transactions roll back on drop).
    conn.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(summary_of!(row.get))
}

const SUMMARY_COLUMNS: &str = "patch_id, target, status, attempt, attempts, trace_id, created_ms, \
     finished_ms, recorded_ms, dir, archived";

impl SqliteIndex {
    /// Opens (creating) the index at `path`; returns it and whether it was just created.
    pub fn open(path: &Path) -> Result<(Self, bool), SummarizerError> {
        let existed = path.exists();
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        // One process owns an SQLite index: claims left by a previous run are void.
        conn.execute_batch(
            "UPDATE outbox SET claimed_by = NULL, claim_until = NULL WHERE claimed_by IS NOT NULL;
             UPDATE webhook_outbox SET claimed_by = NULL, claim_until = NULL
             WHERE claimed_by IS NOT NULL;",
        )?;
        Ok((
            Self {
                conn: Arc::new(Mutex::new(conn)),
                path: Arc::from(path),
            },
            !existed,
        ))
    }

    /// Replaces the connection by a new one on the same file: after a failed write or fsync
    /// the old one's view of what reached the disk is not trusted (SQLite re-reads the file and
    /// replays or drops its WAL as it finds it).
    pub fn reopen(&self) -> Result<(), SummarizerError> {
        let fresh = connect(&self.path)?;
        *lock(&self.conn) = fresh;
        Ok(())
    }

    /// One real write through the index (a committed, fsynced row): the storage probe.
    pub fn probe(&self, now_ms: i64) -> Result<(), SummarizerError> {
        let conn = lock(&self.conn);
        conn.execute(
            "INSERT INTO storage_probe (id, at_ms) VALUES (1, ?1)
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
            params![now_ms],
        )?;
        Ok(())
    }

    /// The status recorded for (patch id, attempt), if any.
    pub fn attempt_status(
        &self,
        patch_id: &str,
        attempt: u32,
    ) -> Result<Option<String>, SummarizerError> {
        Ok(lock(&self.conn)
            .query_row(
                "SELECT status FROM attempts WHERE patch_id = ?1 AND attempt = ?2",
                params![patch_id, attempt],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// The row of `patch_id`.
    pub fn get(&self, patch_id: &str) -> Result<Option<SummaryRow>, SummarizerError> {
        Ok(lock(&self.conn)
            .query_row(
                &format!("SELECT {SUMMARY_COLUMNS} FROM summaries WHERE patch_id = ?1"),
                params![patch_id],
                summary_row,
            )
            .optional()?)
    }

    /// In one transaction: the summary row, the attempt, the changelog entry and what the
    /// attempt owes (the notification, the webhooks). Returns false, changing nothing, when the
    /// attempt was already recorded.
    pub fn commit_record(
        &self,
        row: &SummaryRow,
        attempt: u32,
        attempt_status: &str,
        from_status: &str,
        owed: Owed,
        changelog_len: usize,
    ) -> Result<bool, SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO attempts (patch_id, attempt, status, recorded_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![row.patch_id, attempt, attempt_status, row.recorded_ms],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        tx.execute(
            &format!(
                "INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (patch_id) DO UPDATE SET target = ?2, status = ?3, attempt = ?4,
                 attempts = ?5, trace_id = ?6, created_ms = ?7, finished_ms = ?8, recorded_ms = ?9,
                 dir = ?10, archived = ?11"
            ),
            summary_params(row),
        )?;
        insert_transition(
            &tx,
            &row.target,
            &recorded(row, attempt, from_status, attempt_status),
            changelog_len,
        )?;
        webhook_outbox::insert(&tx, &row.patch_id, attempt, row.recorded_ms, &owed.webhooks)?;
        if let Some(notification) = owed.notification {
            tx.execute(
                "INSERT OR IGNORE INTO outbox (patch_id, attempt, request, traceparent, next_at_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![
                    row.patch_id,
                    attempt,
                    notification.request,
                    notification.traceparent,
                    row.recorded_ms
                ],
            )?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Imports a row found on disk (summaries written before the index existed); its attempts
    /// count as recorded and notified.
    pub fn import(
        &self,
        row: &SummaryRow,
        attempts: &[(u32, String)],
    ) -> Result<(), SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        tx.execute(
            &format!(
                "INSERT OR IGNORE INTO summaries ({SUMMARY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            summary_params(row),
        )?;
        for (attempt, status) in attempts {
            tx.execute(
                "INSERT OR IGNORE INTO attempts (patch_id, attempt, status, recorded_ms) VALUES (?1, ?2, ?3, ?4)",
                params![row.patch_id, attempt, status, row.recorded_ms],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Summaries newest first, optionally of one target and/or status; and the total matching.
    pub fn list(
        &self,
        target: Option<&str>,
        status: Option<&str>,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<SummaryRow>, usize), SummarizerError> {
        let conn = lock(&self.conn);
        let filter = "(?1 IS NULL OR target = ?1) AND (?2 IS NULL OR status = ?2)";
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM summaries WHERE {filter}"),
            params![target, status],
            |row| row.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE {filter}
             ORDER BY finished_ms DESC, patch_id LIMIT ?3 OFFSET ?4"
        ))?;
        let rows = stmt
            .query_map(
                params![
                    target,
                    status,
                    i64::try_from(limit).unwrap_or(i64::MAX),
                    i64::try_from(offset).unwrap_or(i64::MAX)
                ],
                summary_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, usize::try_from(total).unwrap_or(usize::MAX)))
    }

    /// Every target with at least one summary or transition.
    pub fn targets(&self) -> Result<Vec<String>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(
            "SELECT target FROM summaries UNION SELECT target FROM changelog ORDER BY 1",
        )?;
        let rows = stmt
            .query_map([], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(rows)
    }

    /// Every summary of `target`, by patch id, and its recent transitions, oldest first.
    pub fn manifest_rows(
        &self,
        target: &str,
    ) -> Result<(Vec<SummaryRow>, Vec<Transition>), SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE target = ?1 ORDER BY patch_id"
        ))?;
        let rows = stmt
            .query_map(params![target], summary_row)?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT patch_id, attempt, event, from_status, to_status, at_ms FROM changelog
             WHERE target = ?1 ORDER BY id",
        )?;
        let transitions = stmt
            .query_map(params![target], |row| Ok(transition_of!(row.get)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, transitions))
    }

    /// Live (not archived) summaries that ended before `cutoff_ms`.
    pub fn archive_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.select_where("archived = 0 AND finished_ms < ?1", cutoff_ms)
    }

    /// Archived summaries that ended before `cutoff_ms`.
    pub fn expired_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.select_where("archived = 1 AND finished_ms < ?1", cutoff_ms)
    }

    fn select_where(
        &self,
        filter: &str,
        cutoff_ms: i64,
    ) -> Result<Vec<SummaryRow>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM summaries WHERE {filter} ORDER BY finished_ms, patch_id"
        ))?;
        let rows = stmt
            .query_map(params![cutoff_ms], summary_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Points `row` at its archive folder and logs the transition.
    pub fn mark_archived(
        &self,
        row: &SummaryRow,
        dir: &str,
        at_ms: i64,
        changelog_len: usize,
    ) -> Result<(), SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE summaries SET dir = ?2, archived = 1 WHERE patch_id = ?1",
            params![row.patch_id, dir],
        )?;
        insert_transition(
            &tx,
            &row.target,
            &event(row, "archived", at_ms),
            changelog_len,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Points `patch_id` at `dir` without a transition (repairing an interrupted move).
    pub fn set_dir(
        &self,
        patch_id: &str,
        dir: &str,
        archived: bool,
    ) -> Result<(), SummarizerError> {
        lock(&self.conn).execute(
            "UPDATE summaries SET dir = ?2, archived = ?3 WHERE patch_id = ?1",
            params![patch_id, dir, archived],
        )?;
        Ok(())
    }

    /// Every summary row.
    pub fn all(&self) -> Result<Vec<SummaryRow>, SummarizerError> {
        self.select_where("?1 = ?1", 0)
    }

    /// Drops `row` (its files are gone); its attempts stay recorded so a redelivery is a no-op.
    pub fn mark_expired(
        &self,
        row: &SummaryRow,
        at_ms: i64,
        changelog_len: usize,
    ) -> Result<(), SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM summaries WHERE patch_id = ?1",
            params![row.patch_id],
        )?;
        insert_transition(
            &tx,
            &row.target,
            &event(row, "expired", at_ms),
            changelog_len,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` notifications due at `now_ms`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(
            "SELECT id, patch_id, attempt, request, traceparent, tries FROM outbox
             WHERE next_at_ms <= ?1 ORDER BY next_at_ms, id LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(
                params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| Ok(outbox_of!(row.get)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Claims (see [`Claim`]) up to `claim.limit` notifications due at `claim.now_ms`,
    /// unclaimed or whose claim ran out; by id. (A round sends one per patch: the engine
    /// releases a later attempt of a patch in the round, to the next round.)
    pub fn outbox_claim(&self, claim: &Claim) -> Result<Vec<OutboxRow>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE outbox SET claimed_by = ?3, claim_until = ?4 WHERE id IN (
             SELECT id FROM outbox WHERE next_at_ms <= ?1 AND {CLAIMABLE}
             ORDER BY next_at_ms, id LIMIT ?2)
             RETURNING id, patch_id, attempt, request, traceparent, tries"
        ))?;
        let mut rows = stmt
            .query_map(
                params![
                    claim.now_ms,
                    i64::try_from(claim.limit).unwrap_or(i64::MAX),
                    claim.claimant.as_ref(),
                    claim.until_ms
                ],
                |row| Ok(outbox_of!(row.get)),
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|row| row.id);
        Ok(rows)
    }

    /// When the next notification may be claimed (due, and its claim run out), if any is
    /// queued.
    pub fn outbox_next_due(&self) -> Result<Option<i64>, SummarizerError> {
        Ok(lock(&self.conn).query_row(
            &format!("SELECT MIN({FREE_AT}) FROM outbox"),
            [],
            |row| row.get(0),
        )?)
    }

    /// Notifications still owed.
    pub fn outbox_len(&self) -> Result<u64, SummarizerError> {
        let count: i64 =
            lock(&self.conn).query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The creation time of the oldest notification still owed (rows are forgotten once
    /// delivered, so the table holds only those), if any.
    pub fn outbox_oldest_ms(&self) -> Result<Option<i64>, SummarizerError> {
        Ok(lock(&self.conn)
            .query_row(
                "SELECT created_ms FROM outbox ORDER BY id LIMIT 1",
                [],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Records a round of notification tries in one transaction: delivered rows are
    /// forgotten (the alerter has them; a dead one too: notifications are never given up, so
    /// none is); a failed one counts a try and waits until its `next_at_ms`; a released one is
    /// only unclaimed. Retries and releases apply only to rows `claimant` still holds.
    pub fn outbox_settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        {
            let mut forget = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
            let mut retry = tx.prepare_cached(
                "UPDATE outbox SET tries = tries + 1, next_at_ms = ?3, last_error = ?4,
                 claimed_by = NULL, claim_until = NULL WHERE id = ?1 AND claimed_by = ?2",
            )?;
            let mut release = tx.prepare_cached(
                "UPDATE outbox SET claimed_by = NULL, claim_until = NULL
                 WHERE id = ?1 AND claimed_by = ?2",
            )?;
            for outcome in outcomes {
                match outcome {
                    Outcome::Delivered { id, .. } | Outcome::Dead { id, .. } => {
                        forget.execute(params![id])?;
                    }
                    Outcome::Retry {
                        id,
                        next_at_ms,
                        error,
                        ..
                    } => {
                        retry.execute(params![id, claimant, next_at_ms, error])?;
                    }
                    Outcome::Release { id } => {
                        release.execute(params![id, claimant])?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// A row not claimed, or whose claim ran out by `?1` / `$1` (now).
const CLAIMABLE: &str = "(claim_until IS NULL OR claim_until <= ?1)";
/// When a row may be claimed: when due, or when its claim runs out if that is later.
const FREE_AT: &str = "CASE WHEN claim_until > next_at_ms THEN claim_until ELSE next_at_ms END";

/// The transition a newly recorded `attempt` of `row` makes, from `from_status`.
fn recorded(row: &SummaryRow, attempt: u32, from_status: &str, attempt_status: &str) -> Transition {
    Transition {
        patch_id: row.patch_id.clone(),
        attempt,
        event: "recorded".to_owned(),
        from_status: from_status.to_owned(),
        to_status: attempt_status.to_owned(),
        at_ms: row.recorded_ms,
    }
}

/// `row`'s columns as SQLite parameters `?1`…`?11`, in [`SUMMARY_COLUMNS`] order.
fn summary_params(row: &SummaryRow) -> [&dyn rusqlite::ToSql; 11] {
    [
        &row.patch_id,
        &row.target,
        &row.status,
        &row.attempt,
        &row.attempts,
        &row.trace_id,
        &row.created_ms,
        &row.finished_ms,
        &row.recorded_ms,
        &row.dir,
        &row.archived,
    ]
}

fn event(row: &SummaryRow, name: &str, at_ms: i64) -> Transition {
    Transition {
        patch_id: row.patch_id.clone(),
        attempt: row.attempt,
        event: name.to_owned(),
        from_status: row.status.clone(),
        to_status: row.status.clone(),
        at_ms,
    }
}

fn insert_transition(
    tx: &rusqlite::Transaction<'_>,
    target: &str,
    transition: &Transition,
    keep: usize,
) -> Result<(), SummarizerError> {
    tx.execute(
        "INSERT INTO changelog (target, patch_id, attempt, event, from_status, to_status, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            target,
            transition.patch_id,
            transition.attempt,
            transition.event,
            transition.from_status,
            transition.to_status,
            transition.at_ms
        ],
    )?;
    // Bounded: keep only the newest `keep` transitions of this target.
    tx.execute(
        "DELETE FROM changelog WHERE target = ?1 AND id NOT IN
         (SELECT id FROM changelog WHERE target = ?1 ORDER BY id DESC LIMIT ?2)",
        params![target, i64::try_from(keep).unwrap_or(i64::MAX)],
    )?;
    Ok(())
}
