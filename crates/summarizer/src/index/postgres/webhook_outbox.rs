//! The webhook outbox on PostgreSQL: the same rows, order and dead letters as the SQLite one
//! ([`crate::index::SqliteIndex::webhooks_claim`] …), claims safe between replicas.

use ghost_runtime::outbox::{Claim, Outcome};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::{PgIndex, Tx, i64_of, sql, usize_i64};
use crate::error::SummarizerError;
use crate::index::{DeadLetter, FREE_AT, NewWebhook, WebhookRow};

/// The head-of-line rule: no earlier message of this patch to this subscription is pending.
const FIRST_OF_PATCH: &str = "NOT EXISTS (SELECT 1 FROM webhook_outbox earlier
     WHERE earlier.subscription = o.subscription AND earlier.patch_id = o.patch_id
     AND earlier.id < o.id)";

/// Moves outbox row $1 to the dead letters at $2 with reason $3, counting $4 more tries (the
/// caller deletes it).
const BURY: &str = "INSERT INTO webhook_dead_letters
     (id, webhook_id, subscription, patch_id, attempt, event, body, tries, created_ms,
      first_try_ms, dead_ms, reason)
     SELECT id, webhook_id, subscription, patch_id, attempt, event, body, tries + $4,
      created_ms, COALESCE(first_try_ms, $2), $2, $3
     FROM webhook_outbox WHERE id = $1
     ON CONFLICT DO NOTHING";

fn webhook_row(row: &PgRow) -> Result<WebhookRow, sqlx::Error> {
    Ok(webhook_of!(row.try_get))
}

impl PgIndex {
    /// See [`super::SqliteIndex::webhooks_claim`]; rows another replica is claiming at this
    /// moment are skipped (`FOR UPDATE SKIP LOCKED`).
    pub fn webhooks_claim(
        &self,
        claim: &Claim,
        lane: Option<&str>,
    ) -> Result<Vec<WebhookRow>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(sql(format!(
                "UPDATE webhook_outbox SET claimed_by = $4, claim_until = $5 WHERE id IN (
                 SELECT id FROM webhook_outbox o WHERE next_at_ms <= $1
                 AND ($3::text IS NULL OR subscription = $3)
                 AND (claim_until IS NULL OR claim_until <= $1) AND {FIRST_OF_PATCH}
                 ORDER BY next_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING id, webhook_id, subscription, patch_id, attempt, event, body, tries,
                 first_try_ms"
            )))
            .bind(claim.now_ms)
            .bind(usize_i64(claim.limit))
            .bind(lane)
            .bind(claim.claimant.as_ref())
            .bind(claim.until_ms)
            .fetch_all(&pool)
            .await?;
            let mut rows = rows
                .iter()
                .map(webhook_row)
                .collect::<Result<Vec<_>, _>>()?;
            rows.sort_by_key(|row| row.id);
            Ok(rows)
        })
    }

    /// See [`super::SqliteIndex::webhooks_next_due`].
    pub fn webhooks_next_due(&self, lane: Option<&str>) -> Result<Option<i64>, SummarizerError> {
        self.block(async |pool| {
            Ok(sqlx::query(sql(format!(
                "SELECT MIN({FREE_AT}) FROM webhook_outbox o
                 WHERE ($1::text IS NULL OR subscription = $1) AND {FIRST_OF_PATCH}"
            )))
            .bind(lane)
            .fetch_one(&pool)
            .await?
            .try_get(0)?)
        })
    }

    /// Per subscription key: pending messages and when the oldest was queued (unix ms).
    pub fn webhook_backlogs(&self) -> Result<Vec<(String, u64, i64)>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(
                "SELECT subscription, COUNT(*), MIN(created_ms) FROM webhook_outbox
                 GROUP BY subscription",
            )
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .iter()
                .map(|row| {
                    let count: i64 = row.try_get(1)?;
                    Ok((
                        row.try_get(0)?,
                        u64::try_from(count).unwrap_or(0),
                        row.try_get(2)?,
                    ))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// Every pending message, in record order.
    pub fn webhooks_pending(&self) -> Result<Vec<WebhookRow>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(
                "SELECT id, webhook_id, subscription, patch_id, attempt, event, body, tries, first_try_ms
                 FROM webhook_outbox ORDER BY id",
            )
            .fetch_all(&pool)
            .await?;
            Ok(rows.iter().map(webhook_row).collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Pending messages and dead letters, counted.
    pub fn webhook_counts(&self) -> Result<(u64, u64), SummarizerError> {
        let pending = self.scalar("SELECT COUNT(*) FROM webhook_outbox")?;
        let dead = self.scalar("SELECT COUNT(*) FROM webhook_dead_letters")?;
        let count = |n: Option<i64>| u64::try_from(n.unwrap_or(0)).unwrap_or(0);
        Ok((count(pending), count(dead)))
    }

    /// Every dead letter, oldest first.
    pub fn webhook_dead_letters(&self) -> Result<Vec<DeadLetter>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query(
                "SELECT webhook_id, subscription, patch_id, attempt, tries, reason
                 FROM webhook_dead_letters ORDER BY dead_ms, id",
            )
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .iter()
                .map(|row| Ok(dead_letter_of!(row.try_get)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// The subscriptions whose receiver answered 410 Gone: (key, SHA-256 of the URL then).
    pub fn webhooks_gone(&self) -> Result<Vec<(String, String)>, SummarizerError> {
        self.block(async |pool| {
            let rows = sqlx::query("SELECT subscription, url_sha256 FROM webhook_gone")
                .fetch_all(&pool)
                .await?;
            Ok(rows
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?)
        })
    }

    /// See [`super::SqliteIndex::webhook_set_gone`].
    pub fn webhook_set_gone(
        &self,
        key: &str,
        url_sha256: Option<&str>,
        at_ms: i64,
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            match url_sha256 {
                Some(sha) => sqlx::query(
                    "INSERT INTO webhook_gone (subscription, url_sha256, at_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (subscription) DO UPDATE SET url_sha256 = $2, at_ms = $3",
                )
                .bind(key)
                .bind(sha)
                .bind(at_ms)
                .execute(&pool)
                .await?,
                None => {
                    sqlx::query("DELETE FROM webhook_gone WHERE subscription = $1")
                        .bind(key)
                        .execute(&pool)
                        .await?
                }
            };
            Ok(())
        })
    }

    /// See [`super::SqliteIndex::webhook_prune_dead_letters`].
    pub fn webhook_prune_dead_letters(
        &self,
        before_ms: i64,
        keep: u64,
    ) -> Result<usize, SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            let mut deleted = sqlx::query("DELETE FROM webhook_dead_letters WHERE dead_ms < $1")
                .bind(before_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            deleted += sqlx::query(
                "DELETE FROM webhook_dead_letters WHERE id IN (SELECT id FROM webhook_dead_letters
                 ORDER BY dead_ms DESC, id DESC OFFSET $1)",
            )
            .bind(i64::try_from(keep).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
        })
    }

    /// Records a round of tries in one transaction; retries and releases apply only to rows
    /// `claimant` still holds.
    pub fn webhooks_settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        self.block(async |pool| {
            let mut tx = pool.begin().await?;
            for outcome in outcomes {
                match outcome {
                    Outcome::Delivered { id, .. } => forget_webhook(&mut tx, *id).await?,
                    Outcome::Retry {
                        id,
                        next_at_ms,
                        tried_ms,
                        error,
                    } => {
                        sqlx::query(
                            "UPDATE webhook_outbox SET tries = tries + 1, next_at_ms = $3,
                             first_try_ms = COALESCE(first_try_ms, $4), last_error = $5,
                             claimed_by = NULL, claim_until = NULL
                             WHERE id = $1 AND claimed_by = $2",
                        )
                        .bind(id)
                        .bind(claimant)
                        .bind(next_at_ms)
                        .bind(tried_ms)
                        .bind(error)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Outcome::Dead {
                        id, at_ms, reason, ..
                    } => {
                        bury(&mut tx, *id, *at_ms, reason, 1).await?;
                        forget_webhook(&mut tx, *id).await?;
                    }
                    Outcome::Release { id } => {
                        sqlx::query(
                            "UPDATE webhook_outbox SET claimed_by = NULL, claim_until = NULL
                             WHERE id = $1 AND claimed_by = $2",
                        )
                        .bind(id)
                        .bind(claimant)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

async fn forget_webhook(tx: &mut Tx, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_outbox WHERE id = $1")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn bury(
    tx: &mut Tx,
    id: i64,
    at_ms: i64,
    reason: &str,
    tries: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(BURY)
        .bind(id)
        .bind(at_ms)
        .bind(reason)
        .bind(tries)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub(super) async fn insert_webhooks(
    tx: &mut Tx,
    patch_id: &str,
    attempt: u32,
    now_ms: i64,
    webhooks: &[NewWebhook],
) -> Result<(), sqlx::Error> {
    if webhooks.is_empty() {
        return Ok(());
    }
    let pending: i64 = sqlx::query("SELECT COUNT(*) FROM webhook_outbox")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    let mut pending = u64::try_from(pending).unwrap_or(0);
    for webhook in webhooks {
        let inserted = sqlx::query(
            "INSERT INTO webhook_outbox
             (webhook_id, subscription, patch_id, attempt, event, body, next_at_ms, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&webhook.webhook_id)
        .bind(&webhook.subscription)
        .bind(patch_id)
        .bind(i64_of(attempt))
        .bind(&webhook.event)
        .bind(&webhook.body)
        .bind(now_ms)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(inserted) = inserted else {
            continue;
        };
        if pending < webhook.outbox_max {
            pending += 1;
            continue;
        }
        // Full: the record must still succeed, so this message goes straight to the dead
        // letters (queued and moved, so it keeps a unique id).
        let id: i64 = inserted.try_get(0)?;
        let reason = crate::index::webhook_outbox::full_reason(pending, webhook.outbox_max);
        bury(tx, id, now_ms, &reason, 0).await?;
        forget_webhook(tx, id).await?;
        crate::index::webhook_outbox::count_full(patch_id, attempt, &webhook.webhook_id, &reason);
    }
    Ok(())
}
