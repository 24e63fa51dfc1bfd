//! Telling the alerter about a recorded outcome: one `Notify` call per (patch id, attempt),
//! made in a tracked background task with exponential backoff so `Record` never waits on it.
//!
//! The alerter deduplicates by (patch id, attempt), so the summarizer notifies again on every
//! redelivered `Record`, which heals a crash between writing a summary and notifying. A
//! durable notify outbox (surviving a summarizer restart while the alerter is down) is a later
//! issue; until then an exhausted retry is logged as an error with the patch id.

use std::time::Duration;

use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::propagation::{TracedChannel, set_parent, traced_channel};
use tokio_retry::Retry;
use tokio_retry::strategy::ExponentialBackoff;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::render::{SummaryDoc, excerpt};

/// Longest summary excerpt sent to the alerter (Slack allows 3,000 characters in a section).
pub const EXCERPT_CHARS: usize = 2_900;

/// Calls to the alerter after the first, at 100 ms, 200 ms, 400 ms, 800 ms.
const RETRIES: usize = 4;

/// A client of the alerter's `Notify`.
#[derive(Clone)]
pub struct Notifier {
    client: AlerterServiceClient<TracedChannel>,
}

impl Notifier {
    /// A lazily connecting client of the alerter at `endpoint`.
    pub fn connect(endpoint: &str) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            client: AlerterServiceClient::new(traced_channel(endpoint)?),
        })
    }

    /// Notifies the alerter about `doc` in a task tracked by `tracker`, as a child of the
    /// trace named by `traceparent`; gives up on `shutdown`.
    pub fn spawn(
        &self,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
        doc: &SummaryDoc,
        markdown: &str,
        traceparent: Option<String>,
    ) {
        let request = notify_request(doc, markdown);
        let span = tracing::info_span!(
            "alerter.notify",
            patch_id = %request.patch_id,
            attempt = request.attempt,
        );
        if let Some(traceparent) = traceparent.as_deref() {
            set_parent(&span, traceparent);
        }
        let client = self.client.clone();
        let patch_id = request.patch_id.clone();
        tracker.spawn(
            async move {
                let strategy = ExponentialBackoff::from_millis(2)
                    .factor(50)
                    .max_delay(Duration::from_secs(2))
                    .take(RETRIES);
                let call = Retry::start(strategy, || {
                    let mut client = client.clone();
                    let request = request.clone();
                    async move {
                        client.notify(request).await.inspect_err(|status| {
                            tracing::warn!(code = ?status.code(), message = status.message(), "alerter notify failed");
                        })
                    }
                });
                tokio::select! {
                    result = call => match result {
                        Ok(response) => tracing::info!(
                            accepted = response.into_inner().accepted,
                            "alerter notified"
                        ),
                        Err(status) => tracing::error!(
                            %patch_id,
                            code = ?status.code(),
                            message = status.message(),
                            "giving up notifying the alerter"
                        ),
                    },
                    () = shutdown.cancelled() => {
                        tracing::warn!(%patch_id, "shutting down before the alerter was notified");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// The `Notify` request for a recorded summary.
pub fn notify_request(doc: &SummaryDoc, markdown: &str) -> NotifyRequest {
    NotifyRequest {
        patch_id: doc.patch_id.to_string(),
        target: doc.target.to_string(),
        attempt: doc.attempt,
        status: PatchStatus::from(doc.status) as i32,
        description: doc.description.clone(),
        excerpt: excerpt(markdown, EXCERPT_CHARS),
        trace_id: doc.trace_id.clone(),
        error: doc.error.clone(),
    }
}
