//! The webhook outbox in the summarizer's index (SQLite here; [`super::PgIndex`] the same on
//! PostgreSQL): `webhook_outbox` (messages owed to push
//! subscriptions, queued in the transaction that records the attempt) and
//! `webhook_dead_letters` (messages given up on, kept for an operator).
//!
//! Order: a message is due only when no earlier message of the same patch to the same
//! subscription is still in the outbox, so a receiver sees a patch's events in the order they
//! were recorded (an earlier one delivered or dead-lettered first).

use ghost_runtime::outbox::{Claim, Outcome};
use rusqlite::params;

use super::SqliteIndex;
use super::sqlite::lock;
use crate::error::SummarizerError;

/// The head-of-line rule: no earlier message of this patch to this subscription is pending.
const FIRST_OF_PATCH: &str = "NOT EXISTS (SELECT 1 FROM webhook_outbox earlier
     WHERE earlier.subscription = o.subscription AND earlier.patch_id = o.patch_id
     AND earlier.id < o.id)";

/// A message to queue with a recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    /// The `webhook-id`: stable per (subscription, patch, attempt).
    pub webhook_id: String,
    /// The subscription's key (its URL as configured).
    pub subscription: String,
    /// `patch.<status>`.
    pub event: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Most messages the outbox may hold: beyond it this one is dead-lettered at once.
    pub outbox_max: u64,
}

/// One pending message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRow {
    /// Row id (record order).
    pub id: i64,
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The subscription's key.
    pub subscription: String,
    /// The patch.
    pub patch_id: String,
    /// The attempt.
    pub attempt: u32,
    /// `patch.<status>`.
    pub event: String,
    /// The JSON body.
    pub body: Vec<u8>,
    /// Failed tries so far.
    pub tries: u32,
    /// When it was first tried (unix ms), if it was.
    pub first_try_ms: Option<i64>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The `webhook-id`.
    pub webhook_id: String,
    /// The subscription's key.
    pub subscription: String,
    /// The patch.
    pub patch_id: String,
    /// The attempt.
    pub attempt: u32,
    /// Tries made, the last included.
    pub tries: u32,
    /// Why it was given up.
    pub reason: String,
}

fn webhook_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WebhookRow> {
    Ok(webhook_of!(row.get))
}

pub(super) fn insert(
    tx: &rusqlite::Transaction<'_>,
    patch_id: &str,
    attempt: u32,
    now_ms: i64,
    webhooks: &[NewWebhook],
) -> Result<(), SummarizerError> {
    if webhooks.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(
        "INSERT OR IGNORE INTO webhook_outbox
         (webhook_id, subscription, patch_id, attempt, event, body, next_at_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )?;
    let mut bury = tx.prepare_cached(BURY)?;
    let mut forget = tx.prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")?;
    let pending: i64 = tx.query_row("SELECT COUNT(*) FROM webhook_outbox", [], |row| row.get(0))?;
    let mut pending = u64::try_from(pending).unwrap_or(0);
    for webhook in webhooks {
        if insert.execute(params![
            webhook.webhook_id,
            webhook.subscription,
            patch_id,
            attempt,
            webhook.event,
            webhook.body,
            now_ms
        ])? == 0
        {
            continue;
        }
        if pending < webhook.outbox_max {
            pending += 1;
            continue;
        }
        // Full: the record must still succeed, so this message goes straight to the dead
        // letters (queued and moved, so it keeps a unique id).
        let id = tx.last_insert_rowid();
        let reason = full_reason(pending, webhook.outbox_max);
        bury.execute(params![id, now_ms, reason, 0])?;
        forget.execute(params![id])?;
        count_full(patch_id, attempt, &webhook.webhook_id, &reason);
    }
    Ok(())
}

/// Why a message queued beyond `webhook_outbox_max` was dead-lettered at once.
pub(super) fn full_reason(pending: u64, outbox_max: u64) -> String {
    format!("outbox full ({pending} messages waiting, webhook_outbox_max = {outbox_max})")
}

/// Counts and logs a message dead-lettered because the outbox was full.
pub(super) fn count_full(patch_id: &str, attempt: u32, webhook_id: &str, reason: &str) {
    metrics::counter!("ghost_webhook_outbox_full_total").increment(1);
    tracing::error!(
        patch_id,
        attempt,
        webhook_id,
        %reason,
        "webhook outbox full; message dead-lettered"
    );
}

/// Moves outbox row ?1 to the dead letters at ?2 with reason ?3, counting ?4 more tries (the
/// caller deletes it).
const BURY: &str = "INSERT OR REPLACE INTO webhook_dead_letters
     (id, webhook_id, subscription, patch_id, attempt, event, body, tries, created_ms,
      first_try_ms, dead_ms, reason)
     SELECT id, webhook_id, subscription, patch_id, attempt, event, body, tries + ?4,
      created_ms, COALESCE(first_try_ms, ?2), ?2, ?3
     FROM webhook_outbox WHERE id = ?1";

impl SqliteIndex {
    /// Claims (see [`Claim`]) up to `claim.limit` messages due at `claim.now_ms` and first in
    /// line for their patch and subscription, unclaimed or whose claim ran out; by id; only
    /// those of the subscription `lane` when given.
    pub fn webhooks_claim(
        &self,
        claim: &Claim,
        lane: Option<&str>,
    ) -> Result<Vec<WebhookRow>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE webhook_outbox SET claimed_by = ?4, claim_until = ?5 WHERE id IN (
             SELECT id FROM webhook_outbox o WHERE next_at_ms <= ?1
             AND (?3 IS NULL OR subscription = ?3)
             AND (claim_until IS NULL OR claim_until <= ?1) AND {FIRST_OF_PATCH}
             ORDER BY next_at_ms, id LIMIT ?2)
             RETURNING id, webhook_id, subscription, patch_id, attempt, event, body, tries, first_try_ms"
        ))?;
        let mut rows = stmt
            .query_map(
                params![
                    claim.now_ms,
                    i64::try_from(claim.limit).unwrap_or(i64::MAX),
                    lane,
                    claim.claimant.as_ref(),
                    claim.until_ms
                ],
                webhook_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.sort_by_key(|row| row.id);
        Ok(rows)
    }

    /// When the next message first in line may be claimed (due, and its claim run out), if
    /// any is pending (of the subscription `lane` when given).
    pub fn webhooks_next_due(&self, lane: Option<&str>) -> Result<Option<i64>, SummarizerError> {
        Ok(lock(&self.conn).query_row(
            &format!(
                "SELECT MIN(CASE WHEN claim_until > next_at_ms THEN claim_until ELSE next_at_ms END)
                 FROM webhook_outbox o
                 WHERE (?1 IS NULL OR subscription = ?1) AND {FIRST_OF_PATCH}"
            ),
            params![lane],
            |row| row.get(0),
        )?)
    }

    /// Per subscription key: pending messages and when the oldest was queued (unix ms).
    pub fn webhook_backlogs(&self) -> Result<Vec<(String, u64, i64)>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare_cached(
            "SELECT subscription, COUNT(*), MIN(created_ms) FROM webhook_outbox
             GROUP BY subscription",
        )?;
        let rows = stmt
            .query_map([], |row| {
                let count: i64 = row.get(1)?;
                Ok((row.get(0)?, u64::try_from(count).unwrap_or(0), row.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every pending message, in record order.
    pub fn webhooks_pending(&self) -> Result<Vec<WebhookRow>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(
            "SELECT id, webhook_id, subscription, patch_id, attempt, event, body, tries, first_try_ms
             FROM webhook_outbox ORDER BY id",
        )?;
        let rows = stmt
            .query_map([], webhook_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Pending messages and dead letters, counted.
    pub fn webhook_counts(&self) -> Result<(u64, u64), SummarizerError> {
        let conn = lock(&self.conn);
        let count = |table: &str| -> Result<u64, SummarizerError> {
            let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok((count("webhook_outbox")?, count("webhook_dead_letters")?))
    }

    /// Every dead letter, oldest first.
    pub fn webhook_dead_letters(&self) -> Result<Vec<DeadLetter>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare(
            "SELECT webhook_id, subscription, patch_id, attempt, tries, reason
             FROM webhook_dead_letters ORDER BY dead_ms, id",
        )?;
        let rows = stmt
            .query_map([], |row| Ok(dead_letter_of!(row.get)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The subscriptions whose receiver answered 410 Gone: (key, SHA-256 of the URL then).
    pub fn webhooks_gone(&self) -> Result<Vec<(String, String)>, SummarizerError> {
        let conn = lock(&self.conn);
        let mut stmt = conn.prepare_cached("SELECT subscription, url_sha256 FROM webhook_gone")?;
        let rows = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Remembers that the receiver of subscription `key` (at the URL hashed `url_sha256`)
    /// answered 410 Gone; `None` forgets it.
    pub fn webhook_set_gone(
        &self,
        key: &str,
        url_sha256: Option<&str>,
        at_ms: i64,
    ) -> Result<(), SummarizerError> {
        let conn = lock(&self.conn);
        match url_sha256 {
            Some(sha) => conn.execute(
                "INSERT OR REPLACE INTO webhook_gone (subscription, url_sha256, at_ms)
                 VALUES (?1, ?2, ?3)",
                params![key, sha, at_ms],
            )?,
            None => conn.execute(
                "DELETE FROM webhook_gone WHERE subscription = ?1",
                params![key],
            )?,
        };
        Ok(())
    }

    /// Deletes the dead letters that died before `before_ms`, then all but the newest
    /// `keep`; returns how many.
    pub fn webhook_prune_dead_letters(
        &self,
        before_ms: i64,
        keep: u64,
    ) -> Result<usize, SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        let mut deleted = tx.execute(
            "DELETE FROM webhook_dead_letters WHERE dead_ms < ?1",
            params![before_ms],
        )?;
        deleted += tx.execute(
            "DELETE FROM webhook_dead_letters WHERE id IN (SELECT id FROM webhook_dead_letters
             ORDER BY dead_ms DESC, id DESC LIMIT -1 OFFSET ?1)",
            params![i64::try_from(keep).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Records a round of tries in one transaction; retries and releases apply only to rows
    /// `claimant` still holds.
    pub fn webhooks_settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        let mut conn = lock(&self.conn);
        let tx = conn.transaction()?;
        {
            let mut forget = tx.prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")?;
            let mut retry = tx.prepare_cached(
                "UPDATE webhook_outbox SET tries = tries + 1, next_at_ms = ?3,
                 first_try_ms = COALESCE(first_try_ms, ?4), last_error = ?5,
                 claimed_by = NULL, claim_until = NULL WHERE id = ?1 AND claimed_by = ?2",
            )?;
            let mut release = tx.prepare_cached(
                "UPDATE webhook_outbox SET claimed_by = NULL, claim_until = NULL
                 WHERE id = ?1 AND claimed_by = ?2",
            )?;
            let mut bury = tx.prepare_cached(BURY)?;
            for outcome in outcomes {
                match outcome {
                    Outcome::Delivered { id, .. } => {
                        forget.execute(params![id])?;
                    }
                    Outcome::Retry {
                        id,
                        next_at_ms,
                        tried_ms,
                        error,
                    } => {
                        retry.execute(params![id, claimant, next_at_ms, tried_ms, error])?;
                    }
                    Outcome::Dead {
                        id, at_ms, reason, ..
                    } => {
                        bury.execute(params![id, at_ms, reason, 1])?;
                        forget.execute(params![id])?;
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
