//! Telling the alerter about each recorded attempt, from the durable `outbox` table: one
//! `Notify` per (patch id, attempt), at least once, retried with exponential backoff (bounded
//! by `notify_max_backoff`) for as long as it takes, across summarizer restarts. The alerter
//! deduplicates by (patch id, attempt).

use std::sync::Arc;
use std::time::Duration;

use ghost_core::Status;
use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::propagation::{TracedChannel, Upstream, set_parent, traced_channel};
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::doc::SummaryDoc;
use crate::index::{OutboxRetry, OutboxRow};
use crate::render::slack_excerpt;
use crate::summaries::Summaries;

/// Looks at the outbox at least this often, even without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// Rows delivered per pass.
const BATCH: usize = 32;
/// Tries after which each further failure is logged as an error, not a warning.
const LOUD_AFTER: u32 = 5;

/// How the outbox retries.
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

/// A client of the alerter's `Notify`.
#[derive(Clone)]
pub struct Notifier {
    client: AlerterServiceClient<TracedChannel>,
    timeout: Duration,
}

impl Notifier {
    /// A lazily connecting client of the alerter at `endpoint`; each call gives up after `timeout`.
    pub fn connect(endpoint: &str, upstream: &Upstream, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: AlerterServiceClient::new(traced_channel(endpoint, upstream)?),
            timeout,
        })
    }

    async fn send(&self, request: NotifyRequest) -> Result<bool, String> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.notify(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner().accepted),
            Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// Delivers the outbox until `shutdown`; `wake` is signalled when a row is queued.
pub async fn run(
    summaries: Summaries,
    notifier: Notifier,
    backoff: Backoff,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let rows = {
            let index = summaries.index().clone();
            let now = summaries.now_ms();
            tokio::task::spawn_blocking(move || index.outbox_due(now, BATCH)).await
        };
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(err)) => {
                tracing::error!(error = ?anyhow::Error::from(err), "cannot read the notify outbox");
                Vec::new()
            }
            Err(err) => {
                tracing::error!(error = %err, "notify outbox task failed");
                Vec::new()
            }
        };
        let full_batch = rows.len() == BATCH;
        if shutdown.is_cancelled() {
            return;
        }
        deliver_round(&summaries, &notifier, backoff, rows, &shutdown).await;
        if full_batch {
            continue;
        }
        let wait = next_wait(&summaries).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Until the next row is due, at most [`POLL`].
async fn next_wait(summaries: &Summaries) -> Duration {
    let index = summaries.index().clone();
    let next = tokio::task::spawn_blocking(move || index.outbox_next_due())
        .await
        .ok()
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

/// Sends a round of due notifications at once, at most one per patch (a later attempt of a
/// patch waits for the round after its earlier one, so the alerter sees them in order), then
/// records every outcome in one transaction. One at a time, each waiting for its own commit,
/// they capped the whole system at about 330 patches/s.
async fn deliver_round(
    summaries: &Summaries,
    notifier: &Notifier,
    backoff: Backoff,
    rows: Vec<OutboxRow>,
    shutdown: &CancellationToken,
) {
    let mut patches = std::collections::HashSet::new();
    let mut sends = tokio::task::JoinSet::new();
    for row in rows {
        if !patches.insert(row.patch_id.clone()) {
            continue;
        }
        let notifier = notifier.clone();
        sends.spawn(async move {
            let span = tracing::info_span!("alerter.notify", patch_id = %row.patch_id, attempt = row.attempt);
            if !row.traceparent.is_empty() {
                set_parent(&span, &row.traceparent);
            }
            let result = match NotifyRequest::decode(row.request.as_slice()) {
                Ok(request) => notifier.send(request).instrument(span.clone()).await,
                Err(err) => Err(format!("undecodable outbox row: {err}")),
            };
            let tries = row.tries + 1;
            let _entered = span.enter();
            match &result {
                Ok(accepted) => tracing::info!(accepted, tries, "alerter notified"),
                Err(error) => {
                    let delay = backoff.delay(tries);
                    if tries >= LOUD_AFTER {
                        tracing::error!(tries, %error, retry_in = ?delay, "alerter still unreachable; notification kept");
                    } else {
                        tracing::warn!(tries, %error, retry_in = ?delay, "alerter notify failed; will retry");
                    }
                }
            }
            (row.id, tries, result)
        });
    }
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = sends.join_next().await {
        match joined {
            Ok((id, _, Ok(_))) => delivered.push(id),
            Ok((id, tries, Err(error))) => {
                let delay = i64::try_from(backoff.delay(tries).as_millis()).unwrap_or(i64::MAX);
                failed.push(OutboxRetry {
                    id,
                    next_at_ms: summaries.now_ms().saturating_add(delay),
                    error,
                });
            }
            // The row stays due and is sent again in the next round.
            Err(err) => tracing::error!(error = %err, "notify task failed"),
        }
    }
    if delivered.is_empty() && failed.is_empty() {
        return;
    }
    // Until the round is recorded its rows stay due: a storage error is retried, never
    // dropped (a row sent twice is harmless; the alerter deduplicates).
    loop {
        let index = summaries.index().clone();
        let (done, retries) = (delivered.clone(), failed.clone());
        match tokio::task::spawn_blocking(move || index.outbox_settle(&done, &retries)).await {
            Ok(Ok(())) => return,
            Ok(Err(err)) => {
                tracing::error!(error = ?anyhow::Error::from(err), "cannot update the notify outbox");
            }
            Err(err) => tracing::error!(error = %err, "notify outbox task failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The `Notify` request for attempt `attempt` (which ended `status`) of `doc`.
pub fn notify_request(doc: &SummaryDoc, attempt: u32, status: Status) -> NotifyRequest {
    let error = doc
        .attempts
        .iter()
        .find(|entry| entry.attempt == attempt)
        .map(|entry| entry.error.clone())
        .unwrap_or_default();
    NotifyRequest {
        patch_id: doc.patch_id.to_string(),
        target: doc.target.to_string(),
        attempt,
        status: PatchStatus::from(status) as i32,
        description: doc.description.clone(),
        excerpt: slack_excerpt(doc),
        trace_id: doc.trace_id.clone(),
        error: crate::render::excerpt(&error, crate::render::SLACK_EXCERPT_CHARS),
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
