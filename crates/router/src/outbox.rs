//! Delivery of terminal outcomes to the summarizer from the outbox table: at least once,
//! retried with exponential backoff, surviving router restarts (the rows are durable).

use std::sync::Arc;
use std::time::Duration;

use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_runtime::propagation::{TracedChannel, set_parent, trace_id_of};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{OutboxRow, Store};

/// Polls the outbox at least this often even without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// Longest wait between two tries of one row.
const MAX_BACKOFF_MS: i64 = 60_000;

/// Delivers outbox rows until `shutdown`.
pub async fn run(
    store: Store,
    summarizer: Option<SummarizerServiceClient<TracedChannel>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(client) = summarizer else {
        tracing::warn!("no summarizer configured; outcomes stay in the outbox");
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let rows = match store.outbox_due(64).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the outbox");
                continue;
            }
        };
        for row in rows {
            if shutdown.is_cancelled() {
                return;
            }
            deliver(&store, client.clone(), row).await;
        }
    }
}

async fn deliver(
    store: &Store,
    mut client: SummarizerServiceClient<TracedChannel>,
    row: OutboxRow,
) {
    let record = match store.get(row.patch_id.clone()).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            tracing::error!(patch_id = %row.patch_id, "outbox row for an unknown patch dropped");
            let _ = store.outbox_delivered(row.id).await;
            return;
        }
        Err(err) => {
            tracing::error!(patch_id = %row.patch_id, error = %err, "cannot read patch for outbox");
            return;
        }
    };
    let span = tracing::info_span!("router.forward_outcome", patch_id = %row.patch_id, attempt = row.attempt);
    set_parent(&span, &record.traceparent);
    let outcome = Outcome {
        patch_id: row.patch_id.clone(),
        target: record.patch.target.to_string(),
        attempt: row.attempt,
        description: record.patch.description.clone(),
        report: record
            .report
            .as_ref()
            .map(ghost_proto::router::v1::ApplyReport::from),
        trace_id: trace_id_of(&record.traceparent),
        created_unix_ms: record.created_ms,
        finished_unix_ms: record.updated_ms,
    };
    let result = client
        .record(RecordRequest {
            outcome: Some(outcome),
        })
        .instrument(span)
        .await;
    match result {
        Ok(_) => {
            if let Err(err) = store.outbox_delivered(row.id).await {
                tracing::error!(patch_id = %row.patch_id, error = %err, "cannot mark outcome delivered");
            }
        }
        Err(status) => {
            let delay = (500_i64 << row.tries.min(10)).min(MAX_BACKOFF_MS);
            tracing::warn!(
                patch_id = %row.patch_id,
                tries = row.tries + 1,
                code = ?status.code(),
                retry_in_ms = delay,
                "summarizer refused or unreachable; will retry"
            );
            if let Err(err) = store.outbox_retry_later(row.id, delay).await {
                tracing::error!(patch_id = %row.patch_id, error = %err, "cannot reschedule outcome");
            }
        }
    }
}
