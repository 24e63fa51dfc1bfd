//! The notify outbox in the SQLite index ([`super::PgIndex`] the same on PostgreSQL): `outbox`,
//! the `Notify` calls owed to the alerter, queued in the transaction that records the attempt
//! and claimed, settled and retried by the one outbox engine ([`ghost_runtime::outbox`]).

use ghost_runtime::outbox::{Claim, Outcome};
use rusqlite::{OptionalExtension as _, params};

use super::sqlite::lock;
use super::{CLAIMABLE, FREE_AT, OutboxRow, SqliteIndex};
use crate::error::SummarizerError;

impl SqliteIndex {
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
