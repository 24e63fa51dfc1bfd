//! Accepting alerts and delivering them: deduplication by (patch id, attempt), an in-memory
//! queue, and one delivery loop that sends each alert to Slack in a `slack.post` span.
//!
//! Everything here lives in memory for now: a restart forgets what was sent (the summarizer's
//! redelivery may then repeat a message) and drops what was queued. A durable outbox, alert
//! grouping, repeat and escalation are later issues.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use ghost_core::{PatchId, Status, TargetName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::AlerterError;
use crate::slack::{self, SlackClient};

/// Alerts waiting for delivery before `Notify` callers are slowed down.
pub const QUEUE_CAPACITY: usize = 1024;

/// A patch outcome to tell people about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// Which attempt ended.
    pub attempt: u32,
    /// How it ended.
    pub status: Status,
    /// The patch's description.
    pub description: String,
    /// A summary excerpt, within Slack's limits.
    pub excerpt: String,
    /// The patch's trace id, empty when untraced.
    pub trace_id: String,
    /// Why it did not succeed; empty on success.
    pub error: String,
}

/// An accepted alert and the trace context of the call that brought it.
#[derive(Debug)]
pub struct Queued {
    /// The alert.
    pub alert: Alert,
    /// `traceparent` of the `Notify` call, so the delivery joins its trace.
    pub traceparent: Option<String>,
}

/// The accepting side: dedup and enqueue. Cheap to clone.
#[derive(Clone)]
pub struct Alerts {
    seen: Arc<Mutex<HashSet<(PatchId, u32)>>>,
    queue: mpsc::Sender<Queued>,
}

impl Alerts {
    /// A new acceptor and the receiving end for [`deliver_loop`].
    pub fn new() -> (Self, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let alerts = Self {
            seen: Arc::new(Mutex::new(HashSet::new())),
            queue,
        };
        (alerts, receiver)
    }

    /// Queues `alert` unless its (patch id, attempt) was accepted before; true when queued.
    pub async fn accept(
        &self,
        alert: Alert,
        traceparent: Option<String>,
    ) -> Result<bool, AlerterError> {
        let key = (alert.patch_id.clone(), alert.attempt);
        let fresh = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone());
        if !fresh {
            return Ok(false);
        }
        if self
            .queue
            .send(Queued { alert, traceparent })
            .await
            .is_err()
        {
            // Not delivered, so a later Notify for it must be accepted again.
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            return Err(AlerterError::ShuttingDown);
        }
        Ok(true)
    }
}

/// Delivers queued alerts one at a time until `shutdown`; with no Slack client, logs them.
pub async fn deliver_loop(
    mut queue: mpsc::Receiver<Queued>,
    slack: Option<SlackClient>,
    shutdown: CancellationToken,
) {
    loop {
        let queued = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            queued = queue.recv() => match queued {
                Some(queued) => queued,
                None => break,
            },
        };
        let span = tracing::info_span!(
            "slack.post",
            otel.kind = "client",
            patch_id = %queued.alert.patch_id,
            attempt = queued.alert.attempt,
        );
        if let Some(traceparent) = queued.traceparent.as_deref() {
            ghost_runtime::propagation::set_parent(&span, traceparent);
        }
        let alert = queued.alert;
        async {
            match &slack {
                Some(client) => client.deliver(&alert, &shutdown).await,
                None => tracing::info!(
                    text = %slack::fallback_text(&alert),
                    "slack is not configured; alert logged only"
                ),
            }
        }
        .instrument(span)
        .await;
    }
    let dropped = queue.len();
    if dropped > 0 {
        tracing::warn!(dropped, "stopping with undelivered alerts");
    }
}
