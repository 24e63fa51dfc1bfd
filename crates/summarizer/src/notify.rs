//! Telling the alerter about each recorded attempt, from the durable `outbox` table: one
//! `Notify` per (patch id, attempt), at least once, retried with exponential backoff (bounded
//! by `notify_max_backoff`) for as long as it takes, across summarizer restarts and across
//! replicas, by the one outbox engine ([`ghost_runtime::outbox`], [`run`]) over the
//! [`NotifyStore`] and the [`NotifySink`]. A round sends at most one notification per patch.
//! The alerter deduplicates by (patch id, attempt).

use std::sync::Arc;
use std::time::Duration;

use ghost_core::Status;
use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::outbox::{Outbox, Policy, SendError, Sink};
use ghost_runtime::propagation::{TracedChannel, Upstream, set_parent, traced_channel};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::doc::SummaryDoc;
use crate::index::OutboxRow;
use crate::outbox::NotifyStore;
use crate::render::slack_excerpt;
use crate::summaries::Summaries;

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

/// The notify outbox's sink: each row is one `Notify` to the alerter.
#[derive(Clone)]
pub struct NotifySink {
    /// The alerter.
    pub notifier: Notifier,
}

impl Sink for NotifySink {
    type Row = OutboxRow;
    type Receipt = ();

    /// One `Notify` of `row`, traced under the `Record` call that queued it.
    async fn send(&self, row: &OutboxRow) -> Result<(), SendError> {
        let span =
            tracing::info_span!("alerter.notify", patch_id = %row.patch_id, attempt = row.attempt);
        if !row.traceparent.is_empty() {
            set_parent(&span, &row.traceparent);
        }
        let result = match NotifyRequest::decode(row.request.as_slice()) {
            Ok(request) => self.notifier.send(request).instrument(span.clone()).await,
            Err(err) => Err(format!("undecodable outbox row: {err}")),
        };
        let tries = row.tries + 1;
        let _entered = span.enter();
        match result {
            Ok(accepted) => {
                tracing::info!(accepted, tries, "alerter notified");
                Ok(())
            }
            // Logged by the outbox with its retry time.
            Err(error) => Err(SendError::retry(error)),
        }
    }
}

/// Delivers the `outbox` table to the alerter until `shutdown` (woken when a row is queued).
pub async fn run(
    summaries: Summaries,
    sink: NotifySink,
    policy: Policy,
    claimant: Arc<str>,
    shutdown: CancellationToken,
) {
    let wake = summaries.outbox_wake();
    let clock = summaries.clock();
    let store = NotifyStore { summaries };
    Outbox::new(store, sink, policy, clock, claimant)
        .run(wake, shutdown)
        .await;
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
