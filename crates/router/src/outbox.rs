//! Delivery from the durable outboxes, on the one outbox engine ([`ghost_runtime::outbox`]):
//! terminal outcomes to the summarizer and alert changes to the alerter. At least once (the
//! receivers are idempotent), retried on the engine's backoff ([`BACKOFF`]: 0.5 s doubling up
//! to a minute), surviving router restarts (the rows are durable). On a store shared by
//! replicas each row is claimed by the replica sending it for `outbox_claim_timeout`, and a
//! dead replica's claims are taken over when they run out.
//!
//! - **Outcomes** (each its own patch) go [`Delivery::Continuous`]: up to [`AT_ONCE`] in flight,
//!   a new one starting as soon as a place frees up, so a patch that ends while another is
//!   being delivered does not wait for that delivery and its commit.
//! - **Alerts** go [`Delivery::Ordered`], strictly in row order: a row that fails holds back
//!   the later ones (the store's claim stops at the first not due), so a raise never arrives
//!   after its resolve.
//!
//! This module is the adapter: the rows ([`Row`]), the store side ([`OutcomeRows`],
//! [`AlertRows`], over the [`RouterStore`] methods and, on PostgreSQL, the release of claims) and the sinks ([`Summarizer`],
//! [`Alerter`]). The backlog gauges are set by the sweep ([`publish_backlog`]).

use std::sync::Arc;
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::alerter::v1::{AlertRequest, Severity};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{Outcome, RecordRequest};
use ghost_runtime::clock::SharedClock;
use ghost_runtime::outbox::{self as engine, Backoff, Claim, Delivery, Policy, Row, SendError};
use ghost_runtime::propagation::{TracedChannel, set_parent, trace_id_of};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::queue_ages::{Oldest, QueueAges};
use crate::store::{AlertRow, OutboxRow, PgStore, RouterStore, StoreError, now_ms, rule_ms};

/// Looks at the outbox at least this often even without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// Rows claimed per round.
const BATCH: usize = 64;
/// Outcome deliveries in flight at once.
pub const AT_ONCE: usize = 16;

/// The one retry schedule of both outboxes: 0.5 s doubling per failure, at most a minute.
pub const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(60),
    jitter: false,
};

/// How the outbox `name` runs: `delivery`, claims lasting `claim_timeout` (the store's, see
/// [`crate::store::postgres::PgStore::with_claim_timeout`]), retried on [`BACKOFF`], never
/// given up (the receivers are idempotent and the rows small).
pub fn policy(name: &'static str, delivery: Delivery, claim_timeout: Duration) -> Policy {
    Policy {
        delivery,
        batch: BATCH,
        poll: POLL,
        claim_timeout,
        ..Policy::new(name, BACKOFF)
    }
}

/// Delivers the rows of `rows` through `sink` until `shutdown` (`wake` is signalled when a
/// row is queued); with no receiver configured the rows wait in their outbox.
pub async fn run<St, Si>(
    rows: St,
    sink: Option<Si>,
    policy: Policy,
    clock: SharedClock,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) where
    St: engine::Store<Receipt = ()>,
    Si: engine::Sink<Row = St::Row, Receipt = ()>,
{
    let Some(sink) = sink else {
        tracing::warn!(
            outbox = policy.name,
            "no receiver configured; rows stay in the outbox"
        );
        return;
    };
    let claimant = engine::claimant();
    engine::Outbox::new(rows, sink, policy, clock, claimant)
        .run(wake, shutdown)
        .await;
}

impl Row for OutboxRow {
    fn id(&self) -> i64 {
        self.id
    }

    fn tries(&self) -> u32 {
        self.tries
    }

    fn describe(&self) -> String {
        format!("{}#{}", self.patch_id, self.attempt)
    }
}

impl Row for AlertRow {
    fn id(&self) -> i64 {
        self.id
    }

    fn tries(&self) -> u32 {
        self.tries
    }

    fn describe(&self) -> String {
        self.key.clone()
    }
}

/// The engine's results as the router's store records them (a released row is not among
/// them: see [`Claims::release`]); a row the engine gave up on (never, with the router's
/// policy) is dropped as delivered.
fn deliveries(outcomes: &[engine::Outcome<()>]) -> Vec<(i64, crate::store::Delivery)> {
    use crate::store::Delivery as Recorded;
    outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            engine::Outcome::Delivered { id, .. } | engine::Outcome::Dead { id, .. } => {
                Some((*id, Recorded::Delivered))
            }
            engine::Outcome::Retry {
                id,
                next_at_ms,
                tried_ms,
                ..
            } => Some((*id, Recorded::RetryIn(next_at_ms.saturating_sub(*tried_ms)))),
            engine::Outcome::Release { .. } => None,
        })
        .collect()
}

fn limit(claim: &Claim) -> u32 {
    u32::try_from(claim.limit).unwrap_or(u32::MAX)
}

/// The router's store as the engine's store side: claims last the store's claim timeout
/// (`Claim::until_ms` is not passed on) and are named by the store's replica, which alone
/// releases or reschedules them (the engine's claimant is not passed on either).
#[derive(Clone)]
pub struct Claims {
    /// The router's store.
    pub store: Arc<dyn RouterStore>,
    /// The same store when it is PostgreSQL: rows claimed but not sent are released there.
    /// `None` on SQLite, which keeps no claims (one router; the engine keeps the rows it holds
    /// from being sent twice).
    pub shared: Option<PgStore>,
}

impl Claims {
    /// Records a round: results in one write, then the claims of rows not sent dropped.
    async fn record(
        &self,
        outbox: crate::store::Outbox,
        outcomes: &[engine::Outcome<()>],
    ) -> Result<(), StoreError> {
        let settled = deliveries(outcomes);
        if !settled.is_empty() {
            self.store.settle(outbox, settled).await?;
        }
        self.release(outbox, outcomes).await
    }

    /// Drops the claims of the released rows (PostgreSQL), so another replica, or this one
    /// after a restart, need not wait for them to run out.
    async fn release(
        &self,
        outbox: crate::store::Outbox,
        outcomes: &[engine::Outcome<()>],
    ) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let released: Vec<i64> = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, engine::Outcome::Release { .. }))
            .map(engine::Outcome::id)
            .collect();
        shared.release_claims(outbox, released).await
    }
}

/// The outcomes outbox in the router's store.
pub struct OutcomeRows(pub Claims);

impl engine::Store for OutcomeRows {
    type Row = OutboxRow;
    type Receipt = ();
    type Error = StoreError;

    async fn claim(&self, claim: Claim) -> Result<Vec<OutboxRow>, StoreError> {
        self.0.store.outbox_due(limit(&claim)).await
    }

    async fn settle(
        &self,
        _claimant: &str,
        outcomes: &[engine::Outcome<()>],
    ) -> Result<(), StoreError> {
        self.0
            .record(crate::store::Outbox::Outcomes, outcomes)
            .await
    }
}

/// The alert outbox in the router's store: claims stop at the first row not due (or claimed
/// by another replica), so alerts go in row order.
pub struct AlertRows(pub Claims);

impl engine::Store for AlertRows {
    type Row = AlertRow;
    type Receipt = ();
    type Error = StoreError;

    async fn claim(&self, claim: Claim) -> Result<Vec<AlertRow>, StoreError> {
        self.0.store.alerts_due(limit(&claim)).await
    }

    async fn settle(
        &self,
        _claimant: &str,
        outcomes: &[engine::Outcome<()>],
    ) -> Result<(), StoreError> {
        self.0.record(crate::store::Outbox::Alerts, outcomes).await
    }
}

/// A receiver's refusal, or its absence: tried again on the backoff.
fn refused(status: tonic::Status) -> SendError {
    SendError::retry(format!(
        "receiver refused or unreachable: {:?}: {}",
        status.code(),
        status.message()
    ))
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

/// Terminal outcomes to the summarizer (the patch's record is read from the store).
pub struct Summarizer {
    /// The summarizer's gRPC client.
    pub client: SummarizerServiceClient<TracedChannel>,
    /// Where the patches are.
    pub store: Arc<dyn RouterStore>,
}

impl engine::Sink for Summarizer {
    type Row = OutboxRow;
    type Receipt = ();

    async fn send(&self, row: &OutboxRow) -> Result<(), SendError> {
        let record = match self.store.get(row.patch_id.clone()).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                tracing::error!(patch_id = %row.patch_id, "outbox row for an unknown patch dropped");
                return Ok(());
            }
            Err(err) => return Err(SendError::retry(format!("cannot read the patch: {err}"))),
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
        self.client
            .clone()
            .record(RecordRequest {
                outcome: Some(outcome),
            })
            .instrument(span)
            .await
            .map(|_| ())
            .map_err(refused)
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

impl engine::Sink for Alerter {
    type Row = AlertRow;
    type Receipt = ();

    async fn send(&self, row: &AlertRow) -> Result<(), SendError> {
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
            .map_err(refused)
    }
}
