//! Delivery from the durable outboxes: terminal outcomes to the summarizer and alert changes
//! to the alerter. At least once (the receivers are idempotent), retried with exponential
//! backoff up to a minute, surviving router restarts (the rows are durable). Alerts go strictly
//! in row order; outcomes (each its own patch) go several at a time.

use std::collections::{HashMap, HashSet, VecDeque};
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

use crate::queue_ages::{Oldest, QueueAges};
use crate::store::{
    AlertRow, Delivery, Outbox, OutboxRow, RouterStore, StoreError, now_ms, rule_ms,
};

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

/// Where one outbox's rows go.
#[tonic::async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The rows of this outbox.
    type Row: Send + 'static;
    /// Which outbox.
    const OUTBOX: Outbox;
    /// Rows due now, in delivery order.
    async fn due(&self, store: &dyn RouterStore) -> Result<Vec<Self::Row>, StoreError>;
    /// The row's id in its table, its tries so far, and a name for logs.
    fn describe(row: &Self::Row) -> (i64, u32, String);
    /// Sends one row; `Err` carries why it must be tried again.
    async fn send(&self, store: &dyn RouterStore, row: &Self::Row) -> Result<(), tonic::Status>;
    /// True when a failed row must hold back the rows after it (ordered outboxes).
    const ORDERED: bool;
}

/// Deliveries in flight at once from an unordered outbox.
const PARALLEL: usize = 16;

/// Delivers `sink`'s outbox rows whenever woken (or every second) until `shutdown`. Ordered
/// outboxes send one row at a time, record each result, and stop a round at the first failure.
/// The others keep up to [`PARALLEL`] deliveries in flight and start new rows as soon as they
/// are woken, without waiting for the deliveries already out: a patch that ends while another
/// is being delivered does not wait for that delivery and its commit. Results are recorded in
/// the background, one store write for all that came in since the last.
pub async fn run<S: Sink>(
    store: Arc<dyn RouterStore>,
    sink: Option<S>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let Some(sink) = sink else {
        tracing::warn!(outbox = ?S::OUTBOX, "no receiver configured; rows stay in the outbox");
        return;
    };
    let sink = Arc::new(sink);
    if !S::ORDERED {
        return run_unordered(store, sink, wake, shutdown).await;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let rows = match sink.due(store.as_ref()).await {
            Ok(rows) => rows,
            Err(err) => {
                tracing::error!(outbox = ?S::OUTBOX, error = %err, "cannot read the outbox");
                continue;
            }
        };
        for row in rows {
            if shutdown.is_cancelled() {
                return;
            }
            let (id, delivery) = deliver(sink.as_ref(), store.as_ref(), row).await;
            settle(store.as_ref(), S::OUTBOX, vec![(id, delivery)]).await;
            if delivery != Delivery::Delivered {
                break;
            }
        }
    }
}

/// The unordered loop of [`run`]. A row is out from when it is fetched until its result is
/// recorded (queued here, in flight, or delivered and waiting for its commit); rows that are out
/// are not fetched again. Rows are fetched in batches, started as places free up, and their
/// results recorded by one store write at a time, in the background: what comes in meanwhile
/// goes in the next write. On shutdown the deliveries and the write in flight are dropped; rows
/// not yet recorded are sent again after a restart (the receivers are idempotent).
async fn run_unordered<S: Sink>(
    store: Arc<dyn RouterStore>,
    sink: Arc<S>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut out: HashSet<i64> = HashSet::new();
    let mut queue: VecDeque<S::Row> = VecDeque::new();
    let mut tasks: HashMap<tokio::task::Id, i64> = HashMap::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut results: Vec<(i64, Delivery)> = Vec::new();
    let mut settling = tokio::task::JoinSet::new();
    let mut settling_ids: Vec<i64> = Vec::new();
    // Rows come due by time too (retries after a backoff): polled on a steady tick that
    // deliveries do not reset.
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fetch = true;
    let mut flush = false;
    loop {
        // One write for a whole batch under load (as many results as places); at once when
        // nothing else is out, so a lone delivery is not kept waiting; and at every poll, so a
        // delivery that hangs does not hold back the results of the others.
        let settle_now =
            results.len() >= PARALLEL || (!results.is_empty() && (in_flight.is_empty() || flush));
        if settling.is_empty() && settle_now {
            flush = false;
            let batch = std::mem::take(&mut results);
            settling_ids = batch.iter().map(|(id, _)| *id).collect();
            let store = Arc::clone(&store);
            settling.spawn(
                async move { settle(store.as_ref(), S::OUTBOX, batch).await }.in_current_span(),
            );
        }
        if fetch && queue.is_empty() && in_flight.len() < PARALLEL && !shutdown.is_cancelled() {
            fetch = false;
            match sink.due(store.as_ref()).await {
                Ok(rows) => {
                    for row in rows {
                        if out.insert(S::describe(&row).0) {
                            queue.push_back(row);
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(outbox = ?S::OUTBOX, error = %err, "cannot read the outbox")
                }
            }
        }
        while in_flight.len() < PARALLEL {
            let Some(row) = queue.pop_front() else { break };
            let id = S::describe(&row).0;
            let (sink, store) = (Arc::clone(&sink), Arc::clone(&store));
            let task = in_flight.spawn(
                async move { deliver(sink.as_ref(), store.as_ref(), row).await }.in_current_span(),
            );
            tasks.insert(task.id(), id);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => fetch = true,
            _ = poll.tick() => {
                fetch = true;
                flush = true;
            }
            Some(joined) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                let mut joined = Some(joined);
                while let Some(result) = joined {
                    match result {
                        Ok((task, delivered)) => {
                            tasks.remove(&task);
                            results.push(delivered);
                        }
                        Err(err) => {
                            // Not delivered as far as we know: due again, and fetched again.
                            tracing::error!(outbox = ?S::OUTBOX, error = %err, "a delivery task failed; its row will be sent again");
                            if let Some(id) = tasks.remove(&err.id()) {
                                out.remove(&id);
                            }
                        }
                    }
                    joined = in_flight.try_join_next_with_id();
                }
            }
            Some(_) = settling.join_next(), if !settling.is_empty() => {
                // Recorded (or, after a storage error, still due): fetchable again.
                for id in settling_ids.drain(..) {
                    out.remove(&id);
                }
                fetch = true;
            }
        }
    }
}

/// Sends one row; returns its id and what became of it (delivered, or when to try again).
async fn deliver<S: Sink>(sink: &S, store: &dyn RouterStore, row: S::Row) -> (i64, Delivery) {
    let (id, tries, name) = S::describe(&row);
    let delivery = match sink.send(store, &row).await {
        Ok(()) => Delivery::Delivered,
        Err(status) => {
            let delay = backoff_ms(tries);
            tracing::warn!(
                outbox = ?S::OUTBOX,
                row = %name,
                tries = tries + 1,
                code = ?status.code(),
                message = status.message(),
                retry_in_ms = delay,
                "receiver refused or unreachable; will retry"
            );
            Delivery::RetryIn(delay)
        }
    };
    (id, delivery)
}

/// Records delivery results; on failure the rows stay due and are sent again.
async fn settle(store: &dyn RouterStore, outbox: Outbox, settled: Vec<(i64, Delivery)>) {
    let rows = settled.len();
    if let Err(err) = store.settle(outbox, settled).await {
        tracing::error!(?outbox, rows, error = %err, "cannot record delivery state; the rows will be sent again");
    }
}

/// Sets `ghost_outbox_depth{outbox}` and `ghost_outbox_oldest_age_seconds{outbox}` (the
/// oldest undelivered row's wait, in rule time: see [`crate::queue_ages`]) for both outboxes.
/// Called by the sweep; a storage error leaves the gauges as they were, and says so.
pub async fn publish_backlog(store: &dyn RouterStore, ages: &mut QueueAges) {
    let backlog = match store.outbox_backlog().await {
        Ok(backlog) => backlog,
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the outbox backlog for its gauges");
            return;
        }
    };
    let queues: Vec<(String, Option<Oldest>)> = backlog
        .iter()
        .map(|outbox| {
            let oldest = outbox.oldest.map(|(order, created_wall_ms)| Oldest {
                order,
                created_wall_ms,
            });
            (outbox.outbox.label().to_owned(), oldest)
        })
        .collect();
    let aged = ages.sweep(&queues, rule_ms(), now_ms());
    for outbox in backlog {
        let label = outbox.outbox.label();
        let age_ms = aged.get(label).copied().unwrap_or(0);
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!("ghost_outbox_depth", "outbox" => label).set(outbox.depth as f64);
            metrics::gauge!("ghost_outbox_oldest_age_seconds", "outbox" => label)
                .set(age_ms as f64 / 1000.0);
        }
    }
}

/// Terminal outcomes to the summarizer.
pub struct Summarizer(pub SummarizerServiceClient<TracedChannel>);

#[tonic::async_trait]
impl Sink for Summarizer {
    type Row = OutboxRow;
    const OUTBOX: Outbox = Outbox::Outcomes;
    const ORDERED: bool = false;

    async fn due(&self, store: &dyn RouterStore) -> Result<Vec<OutboxRow>, StoreError> {
        store.outbox_due(BATCH).await
    }

    fn describe(row: &OutboxRow) -> (i64, u32, String) {
        (
            row.id,
            row.tries,
            format!("{}#{}", row.patch_id, row.attempt),
        )
    }

    async fn send(&self, store: &dyn RouterStore, row: &OutboxRow) -> Result<(), tonic::Status> {
        let record = match store.get(row.patch_id.clone()).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::error!(patch_id = %row.patch_id, "outbox row for an unknown patch dropped");
                return Ok(());
            }
            Err(err) => return Err(tonic::Status::internal(err.to_string())),
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
            intake_warnings: record.warnings.clone(),
            notify: record.patch.notify.clone().unwrap_or_default(),
            key_name: record.key_name.clone(),
            priority: match record.patch.priority {
                ghost_core::Priority::Low => "low",
                ghost_core::Priority::Normal => "normal",
                ghost_core::Priority::High => "high",
            }
            .to_owned(),
        };
        self.0
            .clone()
            .record(RecordRequest {
                outcome: Some(outcome),
            })
            .instrument(span)
            .await
            .map(|_| ())
    }
}

/// Alert changes to the alerter, strictly in order: a row that fails holds back the later
/// ones, so a raise never arrives after its resolve.
pub struct Alerter(pub AlerterServiceClient<TracedChannel>);

fn severity(name: &str) -> Severity {
    match name {
        "critical" => Severity::Critical,
        "warning" => Severity::Warning,
        _ => Severity::Info,
    }
}

#[tonic::async_trait]
impl Sink for Alerter {
    type Row = AlertRow;
    const OUTBOX: Outbox = Outbox::Alerts;
    const ORDERED: bool = true;

    async fn due(&self, store: &dyn RouterStore) -> Result<Vec<AlertRow>, StoreError> {
        store.alerts_due(BATCH).await
    }

    fn describe(row: &AlertRow) -> (i64, u32, String) {
        (row.id, row.tries, row.key.clone())
    }

    async fn send(&self, _store: &dyn RouterStore, row: &AlertRow) -> Result<(), tonic::Status> {
        let request = AlertRequest {
            key: row.key.clone(),
            resolved: row.resolved,
            severity: severity(&row.severity) as i32,
            summary: row.summary.clone(),
            labels: row.labels.iter().cloned().collect(),
            source: crate::SERVICE.to_owned(),
            at_unix_ms: row.at_ms,
        };
        self.0
            .clone()
            .alert(request)
            .instrument(tracing::info_span!("router.forward_alert", alert = %row.key, resolved = row.resolved))
            .await
            .map(|_| ())
    }
}
