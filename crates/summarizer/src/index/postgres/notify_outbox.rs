//! The notify outbox on PostgreSQL: the same rows and answers as the SQLite one
//! ([`crate::index::SqliteIndex::outbox_claim`] …), claims safe between replicas.

use ghost_runtime::outbox::{Claim, Outcome};
use sqlx::Row as _;

use super::{PgIndex, sql, usize_i64};
use crate::error::SummarizerError;
use crate::index::{FREE_AT, OutboxRow};

impl PgIndex {
    /// Up to `limit` notifications due at `now_ms`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(
                "SELECT id, patch_id, attempt, request, traceparent, tries FROM outbox
                 WHERE next_at_ms <= $1 ORDER BY next_at_ms, id LIMIT $2",
            )
            .bind(now_ms)
            .bind(usize_i64(limit))
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .iter()
                .map(|row| Ok(outbox_of!(row.try_get)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// See [`super::SqliteIndex::outbox_claim`]; rows another replica is claiming at this
    /// moment are skipped (`FOR UPDATE SKIP LOCKED`), so no two replicas claim one row.
    pub fn outbox_claim(&self, claim: &Claim) -> Result<Vec<OutboxRow>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(
                "UPDATE outbox SET claimed_by = $3, claim_until = $4 WHERE id IN (
                 SELECT id FROM outbox WHERE next_at_ms <= $1
                 AND (claim_until IS NULL OR claim_until <= $1)
                 ORDER BY next_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, patch_id, attempt, request, traceparent, tries",
            )
            .bind(claim.now_ms)
            .bind(usize_i64(claim.limit))
            .bind(claim.claimant.as_ref())
            .bind(claim.until_ms)
            .fetch_all(&pool)
            .await?;
            let mut rows = rows
                .iter()
                .map(|row| Ok(outbox_of!(row.try_get)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            rows.sort_by_key(|row| row.id);
            Ok(rows)
        })
    }

    /// See [`super::SqliteIndex::outbox_next_due`].
    pub fn outbox_next_due(&self) -> Result<Option<i64>, SummarizerError> {
        self.block(async |pool| {
            Ok(
                sqlx::query(sql(format!("SELECT MIN({FREE_AT}) FROM outbox")))
                    .fetch_one(&pool)
                    .await?
                    .try_get(0)?,
            )
        })
    }

    /// Notifications still owed.
    pub fn outbox_len(&self) -> Result<u64, SummarizerError> {
        let count = self.scalar("SELECT COUNT(*) FROM outbox")?;
        Ok(u64::try_from(count.unwrap_or(0)).unwrap_or(0))
    }

    /// See [`super::SqliteIndex::outbox_oldest_ms`].
    pub fn outbox_oldest_ms(&self) -> Result<Option<i64>, SummarizerError> {
        self.scalar("SELECT (SELECT created_ms FROM outbox ORDER BY id LIMIT 1)")
    }

    /// See [`super::SqliteIndex::outbox_settle`].
    pub fn outbox_settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            for outcome in outcomes {
                let query = match outcome {
                    Outcome::Delivered { id, .. } | Outcome::Dead { id, .. } => {
                        sqlx::query("DELETE FROM outbox WHERE id = $1").bind(id)
                    }
                    Outcome::Retry {
                        id,
                        next_at_ms,
                        error,
                        ..
                    } => sqlx::query(
                        "UPDATE outbox SET tries = tries + 1, next_at_ms = $3, last_error = $4,
                         claimed_by = NULL, claim_until = NULL WHERE id = $1 AND claimed_by = $2",
                    )
                    .bind(id)
                    .bind(claimant)
                    .bind(next_at_ms)
                    .bind(error),
                    Outcome::Release { id } => sqlx::query(
                        "UPDATE outbox SET claimed_by = NULL, claim_until = NULL
                         WHERE id = $1 AND claimed_by = $2",
                    )
                    .bind(id)
                    .bind(claimant),
                };
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }
}
