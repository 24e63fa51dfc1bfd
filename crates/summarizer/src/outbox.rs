//! The summarizer's two outboxes on the one outbox engine ([`ghost_runtime::outbox`]): this
//! module is the store side of both, over the [`Index`] (whose calls are blocking, so each runs
//! on a `spawn_blocking` thread), plus the policies. The sinks are [`crate::notify`] (to the
//! alerter) and [`crate::webhooks::deliver`] (to push subscriptions).
//!
//! Rows are claimed (`claimed_by`, `claim_until`) for [`Policy::claim_timeout`]: two replicas
//! on one PostgreSQL database send each row once, and a dead replica's rows are taken over once
//! its claims run out. On SQLite the claims left by a previous run are cleared at open.

use std::sync::Arc;
use std::time::Duration;

use ghost_runtime::outbox::{Backlog, Claim, Outcome, Policy, Row, Store};

use crate::error::SummarizerError;
use crate::index::{Index, OutboxRow, WebhookRow};
use crate::summaries::Summaries;

pub use ghost_runtime::outbox::Backoff;

/// Rows claimed per round.
pub const BATCH: usize = 32;
/// Sends in flight at once per outbox (per subscription for webhooks).
pub const AT_ONCE: usize = 32;

/// The notify outbox's policy: never gives up (the alerter deduplicates; a notification waits
/// for as long as the alerter is away).
pub fn notify_policy(backoff: Backoff, claim_timeout: Duration) -> Policy {
    Policy {
        batch: BATCH,
        delivery: ghost_runtime::outbox::Delivery::Parallel { at_once: AT_ONCE },
        claim_timeout,
        ..Policy::new("notifications", backoff)
    }
}

/// Runs `job` on the index off the async threads.
async fn blocking<T: Send + 'static>(
    summaries: &Summaries,
    job: impl FnOnce(&Index) -> Result<T, SummarizerError> + Send + 'static,
) -> Result<T, SummarizerError> {
    let index = summaries.index().clone();
    tokio::task::spawn_blocking(move || job(&index))
        .await
        .map_err(SummarizerError::Task)?
}

impl Row for OutboxRow {
    fn id(&self) -> i64 {
        self.id
    }

    fn tries(&self) -> u32 {
        self.tries
    }

    fn key(&self) -> Option<&str> {
        Some(&self.patch_id)
    }

    fn describe(&self) -> String {
        format!("{}#{}", self.patch_id, self.attempt)
    }
}

impl Row for WebhookRow {
    fn id(&self) -> i64 {
        self.id
    }

    fn tries(&self) -> u32 {
        self.tries
    }

    fn first_try_ms(&self) -> Option<i64> {
        self.first_try_ms
    }

    fn key(&self) -> Option<&str> {
        Some(&self.patch_id)
    }

    fn describe(&self) -> String {
        self.webhook_id.clone()
    }
}

/// The `outbox` table: notifications owed to the alerter.
#[derive(Clone)]
pub struct NotifyStore {
    /// The store whose index holds the table.
    pub summaries: Summaries,
}

impl Store for NotifyStore {
    type Row = OutboxRow;
    type Receipt = ();
    type Error = SummarizerError;

    async fn claim(&self, claim: Claim) -> Result<Vec<OutboxRow>, SummarizerError> {
        blocking(&self.summaries, move |index| index.outbox_claim(&claim)).await
    }

    async fn next_due(&self) -> Result<Option<i64>, SummarizerError> {
        blocking(&self.summaries, Index::outbox_next_due).await
    }

    async fn settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        let (claimant, outcomes) = (claimant.to_owned(), outcomes.to_vec());
        blocking(&self.summaries, move |index| {
            index.outbox_settle(&claimant, &outcomes)
        })
        .await
    }

    /// `ghost_outbox_depth{outbox="notifications"}` and the age of its oldest row.
    async fn backlog(&self) -> Result<Option<Backlog>, SummarizerError> {
        blocking(&self.summaries, |index| {
            Ok(Some(Backlog {
                depth: index.outbox_len()?,
                oldest_created_ms: index.outbox_oldest_ms()?,
            }))
        })
        .await
    }

    fn failed(&self, err: &SummarizerError) {
        self.summaries.note_storage_error(err);
    }
}

/// The `webhook_outbox` rows of one subscription (a lane).
#[derive(Clone)]
pub struct WebhookStore {
    /// The store whose index holds the table.
    pub summaries: Summaries,
    /// The subscription's key.
    pub lane: Arc<str>,
}

impl WebhookStore {
    /// Claims this lane's due rows.
    pub async fn claim(&self, claim: Claim) -> Result<Vec<WebhookRow>, SummarizerError> {
        let lane = Arc::clone(&self.lane);
        blocking(&self.summaries, move |index| {
            index.webhooks_claim(&claim, Some(&lane))
        })
        .await
    }

    /// When this lane's next row may be claimed.
    pub async fn next_due(&self) -> Result<Option<i64>, SummarizerError> {
        let lane = Arc::clone(&self.lane);
        blocking(&self.summaries, move |index| {
            index.webhooks_next_due(Some(&lane))
        })
        .await
    }

    /// Records a round of this lane's tries in one transaction.
    pub async fn settle(
        &self,
        claimant: &str,
        outcomes: &[Outcome<()>],
    ) -> Result<(), SummarizerError> {
        let (claimant, outcomes) = (claimant.to_owned(), outcomes.to_vec());
        blocking(&self.summaries, move |index| {
            index.webhooks_settle(&claimant, &outcomes)
        })
        .await
    }
}
