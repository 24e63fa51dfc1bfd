//! The one delivery loop behind the summarizer's outboxes (notifications to the alerter in
//! [`crate::notify`], webhooks in [`crate::webhooks::deliver`]): claim the rows due, send them
//! as a round, settle every outcome in one transaction (a storage error is retried, never
//! dropped), then sleep until the next row is due, a wake-up or shutdown. [`Backoff`] is the
//! one retry schedule both use.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::SummarizerError;
use crate::index::Index;
use crate::summaries::Summaries;

/// Looks at an outbox at least this often, even without a wake-up.
pub const POLL: Duration = Duration::from_secs(1);
/// Rows claimed per round.
pub const BATCH: usize = 32;

/// How an outbox retries.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait after `tries` failures (1 = the first failure).
    pub fn delay(&self, tries: u32) -> Duration {
        let factor = 1_u32 << tries.saturating_sub(1).min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// One outbox: where its rows live and how a round of them is sent.
pub trait Outbox: Clone + Send + Sync + 'static {
    /// A pending message.
    type Row: Send + 'static;
    /// What became of one try.
    type Settled: Send + Sync + 'static;

    /// Names the outbox in logs.
    const NAME: &'static str;

    /// Up to `limit` rows due at `now_ms`, in the order they may be sent (blocking).
    fn due(
        &self,
        index: &Index,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Self::Row>, SummarizerError>;

    /// When the next row is due, if any (blocking).
    fn next_due(&self, index: &Index) -> Result<Option<i64>, SummarizerError>;

    /// Records a round in one transaction (blocking).
    fn settle(&self, index: &Index, settled: &[Self::Settled]) -> Result<(), SummarizerError>;

    /// Sends `rows`; on shutdown, what finished before it (the other rows stay due).
    fn round(
        &self,
        summaries: &Summaries,
        rows: Vec<Self::Row>,
        shutdown: &CancellationToken,
    ) -> impl Future<Output = Vec<Self::Settled>> + Send;

    /// After every pass (e.g. to publish gauges).
    fn after_pass(&self, _summaries: &Summaries) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Delivers `outbox` until `shutdown`; `wake` is signalled when a row is queued.
pub async fn run<O: Outbox>(
    outbox: O,
    summaries: Summaries,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let lane = outbox.clone();
        let rows = blocking(&summaries, move |index, now| lane.due(index, now, BATCH)).await;
        let rows = match rows {
            Some(Ok(rows)) => rows,
            Some(Err(err)) => {
                tracing::error!(outbox = O::NAME, error = ?anyhow::Error::from(err), "cannot read the outbox");
                Vec::new()
            }
            None => Vec::new(),
        };
        let full_batch = rows.len() == BATCH;
        if shutdown.is_cancelled() {
            return;
        }
        if !rows.is_empty() {
            let settled = outbox.round(&summaries, rows, &shutdown).await;
            // What finished is recorded even on shutdown, so it is not sent again.
            settle(&outbox, &summaries, settled, &shutdown).await;
            if shutdown.is_cancelled() {
                return;
            }
        }
        outbox.after_pass(&summaries).await;
        if full_batch {
            continue;
        }
        let wait = next_wait(&outbox, &summaries).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Runs `job` on the index off the async threads; `None` (logged) when the task failed.
async fn blocking<T: Send + 'static>(
    summaries: &Summaries,
    job: impl FnOnce(&Index, i64) -> T + Send + 'static,
) -> Option<T> {
    let index = summaries.index().clone();
    let now = summaries.now_ms();
    match tokio::task::spawn_blocking(move || job(&index, now)).await {
        Ok(value) => Some(value),
        Err(err) => {
            tracing::error!(error = %err, "outbox task failed");
            None
        }
    }
}

/// Until the next row is due, at most [`POLL`].
async fn next_wait<O: Outbox>(outbox: &O, summaries: &Summaries) -> Duration {
    let lane = outbox.clone();
    let next = blocking(summaries, move |index, _| lane.next_due(index))
        .await
        .and_then(Result::ok)
        .flatten();
    match next {
        Some(due) => {
            let in_ms = due.saturating_sub(summaries.now_ms()).max(0);
            Duration::from_millis(u64::try_from(in_ms).unwrap_or(0)).min(POLL)
        }
        None => POLL,
    }
}

/// Records a round; until it is recorded its rows stay due, so a storage error is retried,
/// never dropped (a row sent twice is harmless: receivers deduplicate).
async fn settle<O: Outbox>(
    outbox: &O,
    summaries: &Summaries,
    settled: Vec<O::Settled>,
    shutdown: &CancellationToken,
) {
    if settled.is_empty() {
        return;
    }
    let settled = Arc::new(settled);
    loop {
        let round = Arc::clone(&settled);
        let lane = outbox.clone();
        match blocking(summaries, move |index, _| lane.settle(index, &round)).await {
            Some(Ok(())) => return,
            Some(Err(err)) => {
                summaries.note_storage_error(&err);
                tracing::error!(outbox = O::NAME, error = ?anyhow::Error::from(err), "cannot update the outbox");
            }
            None => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(500));
        assert_eq!(backoff.delay(2), Duration::from_secs(1));
        assert_eq!(backoff.delay(4), Duration::from_secs(4));
        assert_eq!(backoff.delay(30), Duration::from_secs(60));
    }
}
