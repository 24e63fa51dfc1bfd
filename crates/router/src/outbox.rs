//! Delivery from the durable outboxes: terminal outcomes to the summarizer and alert changes
//! to the alerter. At least once (the receivers are idempotent), in row order, retried with
//! exponential backoff up to a minute, surviving router restarts (the rows are durable).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::alerter::v1::{AlertRequest, Severity};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_runtime::propagation::{TracedChannel, set_parent, trace_id_of};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::store::{AlertRow, OutboxRow, RouterStore, StoreError};

/// Polls the outbox at least this often even without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// Longest wait between two tries of one row.
const MAX_BACKOFF_MS: i64 = 60_000;
/// Rows fetched per round.
const BATCH: u32 = 64;

/// The wait before try `tries + 1`: 0.5 s doubling, at most a minute.
pub fn backoff_ms(tries: u32) -> i64 {
    (500_i64 << tries.min(10)).min(MAX_BACKOFF_MS)
}

/// Runs `round` whenever woken (or every [`POLL`]) until `shutdown`.
async fn pump<F, Fut>(wake: Arc<Notify>, shutdown: CancellationToken, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        round().await;
    }
}

/// Delivers outcomes to the summarizer until `shutdown`.
pub async fn run_outcomes(
    store: Arc<dyn RouterStore>,
    summarizer: Option<SummarizerServiceClient<TracedChannel>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(client) = summarizer else {
        tracing::warn!("no summarizer configured; outcomes stay in the outbox");
        return;
    };
    pump(wake, shutdown.clone(), || {
        let store = Arc::clone(&store);
        let client = client.clone();
        let shutdown = shutdown.clone();
        async move {
            let rows = match store.outbox_due(BATCH).await {
                Ok(rows) => rows,
                Err(err) => return tracing::error!(error = %err, "cannot read the outbox"),
            };
            for row in rows {
                if shutdown.is_cancelled() {
                    return;
                }
                deliver_outcome(store.as_ref(), client.clone(), row).await;
            }
        }
    })
    .await;
}

async fn deliver_outcome(
    store: &dyn RouterStore,
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
            return tracing::error!(patch_id = %row.patch_id, error = %err, "cannot read patch for outbox");
        }
    };
    let span = tracing::info_span!("router.forward_outcome", patch_id = %row.patch_id, attempt = row.attempt);
    set_parent(&span, &record.traceparent);
    let report = row.report.as_ref().or(record.report.as_ref());
    let finished = if row.created_ms > 0 {
        row.created_ms
    } else {
        record.updated_ms
    };
    let outcome = Outcome {
        patch_id: row.patch_id.clone(),
        target: record.patch.target.to_string(),
        attempt: row.attempt,
        description: record.patch.description.clone(),
        report: report.map(ghost_proto::router::v1::ApplyReport::from),
        trace_id: trace_id_of(&record.traceparent),
        created_unix_ms: record.created_ms,
        finished_unix_ms: finished,
    };
    let result = client
        .record(RecordRequest {
            outcome: Some(outcome),
        })
        .instrument(span)
        .await;
    let settled = match result {
        Ok(_) => store.outbox_delivered(row.id).await,
        Err(status) => {
            let delay = backoff_ms(row.tries);
            tracing::warn!(
                patch_id = %row.patch_id,
                tries = row.tries + 1,
                code = ?status.code(),
                retry_in_ms = delay,
                "summarizer refused or unreachable; will retry"
            );
            store.outbox_retry_later(row.id, delay).await
        }
    };
    log_unsettled(settled, &row.patch_id);
}

fn log_unsettled(settled: Result<(), StoreError>, what: &str) {
    if let Err(err) = settled {
        tracing::error!(row = %what, error = %err, "cannot record delivery state; it will be sent again");
    }
}

/// Delivers alert changes to the alerter until `shutdown`. Rows go strictly in order: a row
/// that fails holds back the later ones, so a raise never arrives after its resolve.
pub async fn run_alerts(
    store: Arc<dyn RouterStore>,
    alerter: Option<AlerterServiceClient<TracedChannel>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(client) = alerter else {
        tracing::warn!("no alerter configured; alerts stay in the outbox");
        return;
    };
    pump(wake, shutdown.clone(), || {
        let store = Arc::clone(&store);
        let client = client.clone();
        let shutdown = shutdown.clone();
        async move {
            let rows = match store.alerts_due(BATCH).await {
                Ok(rows) => rows,
                Err(err) => return tracing::error!(error = %err, "cannot read the alert outbox"),
            };
            for row in rows {
                if shutdown.is_cancelled()
                    || !deliver_alert(store.as_ref(), client.clone(), row).await
                {
                    return;
                }
            }
        }
    })
    .await;
}

fn severity(name: &str) -> Severity {
    match name {
        "critical" => Severity::Critical,
        "warning" => Severity::Warning,
        _ => Severity::Info,
    }
}

/// True when the row was delivered.
async fn deliver_alert(
    store: &dyn RouterStore,
    mut client: AlerterServiceClient<TracedChannel>,
    row: AlertRow,
) -> bool {
    let request = AlertRequest {
        key: row.key.clone(),
        resolved: row.resolved,
        severity: severity(&row.severity) as i32,
        summary: row.summary.clone(),
        labels: row.labels.iter().cloned().collect(),
        source: crate::SERVICE.to_owned(),
        at_unix_ms: row.at_ms,
    };
    let result = client
        .alert(request)
        .instrument(
            tracing::info_span!("router.forward_alert", alert = %row.key, resolved = row.resolved),
        )
        .await;
    match result {
        Ok(_) => {
            log_unsettled(store.alert_delivered(row.id).await, &row.key);
            true
        }
        Err(status) => {
            let delay = backoff_ms(row.tries);
            tracing::warn!(
                alert = %row.key,
                tries = row.tries + 1,
                code = ?status.code(),
                retry_in_ms = delay,
                "alerter refused or unreachable; will retry"
            );
            log_unsettled(store.alert_retry_later(row.id, delay).await, &row.key);
            false
        }
    }
}
