//! [`SqliteIndex`]: the summarizer's index in one SQLite file (`<data_dir>/summarizer.db`, WAL,
//! synchronous=FULL): opening and migrating it, the `summaries` and `attempts` rows and the
//! bounded `changelog`. Its outboxes are in [`super::notify_outbox`] and
//! [`super::webhook_outbox`].

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::{
    Owed, SUMMARY_COLUMNS, SummaryRow, Transition, event, migrations, recorded, webhook_outbox,
};
use crate::error::SummarizerError;

/// A connection to the index file with the store's settings.
fn connect(path: &Path) -> Result<Connection, SummarizerError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The SQLite index; cheap to clone, every call blocking (use from `spawn_blocking`).
#[derive(Clone)]
pub struct SqliteIndex {
    pub(super) conn: Arc<Mutex<Connection>>,
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

pub(super) fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic mid-call leaves SQLite itself consistent (transactions roll back on drop).
    conn.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn summary_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SummaryRow> {
    Ok(summary_of!(row.get))
}

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
