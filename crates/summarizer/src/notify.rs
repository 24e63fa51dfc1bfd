//! Telling the alerter about each recorded attempt, from the durable `outbox` table: one
//! `Notify` per (patch id, attempt), at least once, retried with exponential backoff (bounded
//! by `notify_max_backoff`) for as long as it takes, across summarizer restarts, by the one
//! outbox loop ([`crate::outbox::run`] over [`NotifyOutbox`]). The alerter deduplicates by
//! (patch id, attempt).

use std::time::Duration;

use ghost_core::Status;
use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::propagation::{TracedChannel, Upstream, set_parent, traced_channel};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::doc::SummaryDoc;
use crate::error::SummarizerError;
use crate::index::{Index, OutboxRetry, OutboxRow};
use crate::outbox::{Backoff, Outbox};
use crate::render::slack_excerpt;
use crate::summaries::Summaries;

/// Tries after which each further failure is logged as an error, not a warning.
const LOUD_AFTER: u32 = 5;

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

/// The notify outbox: the `outbox` table, sent to the alerter.
#[derive(Clone)]
pub struct NotifyOutbox {
    /// The alerter.
    pub notifier: Notifier,
    /// Retry schedule.
    pub backoff: Backoff,
}

/// What became of one notification try.
#[derive(Debug, Clone)]
pub enum NotifySettle {
    /// The alerter has it: forget the row.
    Delivered(i64),
    /// Try again later.
    Retry(OutboxRetry),
}

impl Outbox for NotifyOutbox {
    type Row = OutboxRow;
    type Settled = NotifySettle;

    const NAME: &'static str = "notify";

    fn due(
        &self,
        index: &Index,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, SummarizerError> {
        index.outbox_due(now_ms, limit)
    }

    fn next_due(&self, index: &Index) -> Result<Option<i64>, SummarizerError> {
        index.outbox_next_due()
    }

    fn settle(&self, index: &Index, settled: &[NotifySettle]) -> Result<(), SummarizerError> {
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        for outcome in settled {
            match outcome {
                NotifySettle::Delivered(id) => delivered.push(*id),
                NotifySettle::Retry(retry) => failed.push(retry.clone()),
            }
        }
        index.outbox_settle(&delivered, &failed)
    }

    /// Publishes `ghost_outbox_depth{outbox="notifications"}` and the age of its oldest row.
    async fn after_pass(&self, summaries: &Summaries) {
        let index = summaries.index().clone();
        let read = tokio::task::spawn_blocking(move || {
            Ok::<_, SummarizerError>((index.outbox_len()?, index.outbox_oldest_ms()?))
        })
        .await;
        match read {
            Ok(Ok((depth, oldest))) => {
                let age_ms = oldest.map_or(0, |created| (summaries.now_ms() - created).max(0));
                #[allow(clippy::cast_precision_loss)]
                {
                    metrics::gauge!("ghost_outbox_depth", "outbox" => "notifications")
                        .set(depth as f64);
                    metrics::gauge!("ghost_outbox_oldest_age_seconds", "outbox" => "notifications")
                        .set(age_ms as f64 / 1000.0);
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot read the notification outbox for its gauges");
            }
            Err(err) => tracing::warn!(error = %err, "notification outbox gauge task failed"),
        }
    }

    /// Sends a round of due notifications at once, at most one per patch (a later attempt of
    /// a patch waits for the round after its earlier one, so the alerter sees them in order).
    /// One at a time, each waiting for its own commit, they capped the whole system at about
    /// 330 patches/s. A round runs to its end even on shutdown (each call has a deadline).
    async fn round(
        &self,
        summaries: &Summaries,
        rows: Vec<OutboxRow>,
        _shutdown: &CancellationToken,
    ) -> Vec<NotifySettle> {
        let mut patches = std::collections::HashSet::new();
        let mut sends = tokio::task::JoinSet::new();
        for row in rows {
            if !patches.insert(row.patch_id.clone()) {
                continue;
            }
            let notifier = self.notifier.clone();
            let backoff = self.backoff;
            sends.spawn(async move { send_one(&notifier, backoff, row).await });
        }
        let mut settled = Vec::new();
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok((id, _, Ok(_))) => settled.push(NotifySettle::Delivered(id)),
                Ok((id, tries, Err(error))) => {
                    let delay =
                        i64::try_from(self.backoff.delay(tries).as_millis()).unwrap_or(i64::MAX);
                    settled.push(NotifySettle::Retry(OutboxRetry {
                        id,
                        next_at_ms: summaries.now_ms().saturating_add(delay),
                        error,
                    }));
                }
                // The row stays due and is sent again in the next round.
                Err(err) => tracing::error!(error = %err, "notify task failed"),
            }
        }
        settled
    }
}

/// One `Notify` of `row`, traced under the `Record` call that queued it; (row id, tries so
/// far, result).
async fn send_one(
    notifier: &Notifier,
    backoff: Backoff,
    row: OutboxRow,
) -> (i64, u32, Result<bool, String>) {
    let span =
        tracing::info_span!("alerter.notify", patch_id = %row.patch_id, attempt = row.attempt);
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
        duration_ms: doc.duration_ms,
        notify: doc.notify.clone(),
        priority: doc.priority.clone(),
        key_name: doc.key_name.clone(),
        ..NotifyRequest::default()
    }
}
