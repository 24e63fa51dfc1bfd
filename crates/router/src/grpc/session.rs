//! One executor session's reader: the messages of its Work stream (heartbeats, progress,
//! results, dry-run answers) handed to the routing until the stream ends, the router stops or
//! the session's credential is withdrawn; then the session is disconnected.

use std::sync::Arc;
use std::time::Duration;

use ghost_core::{ApplyReport, Status};
use ghost_proto::convert::status_from_wire;
use ghost_proto::executor::v1::{
    DryRunResult, ExecutorMessage, Progress, Result as WorkResult, executor_message,
};
use ghost_runtime::propagation::set_parent;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::Instrument;

use super::hello::REFUSAL_SEND;
use crate::error::RouterError;
use crate::routing::{Reporter, Routing, SessionSender};
use crate::tokens::LiveStream;

/// What the reader task of one session owns.
pub(super) struct SessionReader {
    /// The logic.
    pub(super) routing: Arc<Routing>,
    /// The session id given by [`Routing::connect`].
    pub(super) session: u64,
    /// `<executor id>#<session id>`.
    pub(super) owner: String,
    /// The id the executor gave in Hello.
    pub(super) executor_id: String,
    /// The targets it serves.
    pub(super) targets: Vec<String>,
    /// Cancelled when the session's credential is withdrawn.
    pub(super) cut: CancellationToken,
    /// Told to the executor when it is cut.
    pub(super) cut_reason: String,
    /// The session's own stream, to send the cut status on.
    pub(super) cut_sender: SessionSender,
    /// Cancelled on shutdown.
    pub(super) shutdown: CancellationToken,
}

impl SessionReader {
    /// Reads `inbound` until it ends, then disconnects the session; `live` (the token's live
    /// stream, if any) is held until then.
    pub(super) async fn run(
        self,
        mut inbound: Streaming<ExecutorMessage>,
        live: Option<(String, LiveStream)>,
    ) {
        let reporter = Reporter {
            owner: &self.owner,
            executor_id: &self.executor_id,
            targets: &self.targets,
        };
        let mut refusals = Refusals::default();
        loop {
            let message = tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = self.cut.cancelled() => {
                    tracing::warn!(target: "audit", executor = ?self.owner, reason = %self.cut_reason, "work stream cut");
                    let revoked = tonic::Status::unauthenticated(self.cut_reason.clone());
                    let _ = tokio::time::timeout(REFUSAL_SEND, self.cut_sender.send(Err(revoked))).await;
                    break;
                }
                message = inbound.message() => message,
            };
            match message {
                Ok(Some(message)) => {
                    self.routing.seen(self.session).await;
                    handle_message(&self.routing, &reporter, &mut refusals, message).await;
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(executor = ?self.owner, code = ?status.code(), "work stream broke");
                    break;
                }
            }
        }
        drop(self.cut_sender);
        self.routing.disconnect(self.session, &self.owner).await;
        drop(live);
    }
}

/// How often a session's refused Result/Progress messages are logged (the rest are counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Refused Result/Progress messages of one session: logged at most once per
/// [`REFUSAL_LOG_EVERY`], with the count of those not logged.
#[derive(Default)]
struct Refusals {
    logged_at: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl Refusals {
    fn note(&mut self, owner: &str, patch_id: &str, kind: &'static str) {
        let now = tokio::time::Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY)
        {
            self.unlogged += 1;
            return;
        }
        tracing::warn!(
            executor = ?owner,
            patch_id = ?patch_id,
            kind,
            unlogged_since_last = self.unlogged,
            "refused: this session does not hold the patch's live lease"
        );
        self.logged_at = Some(now);
        self.unlogged = 0;
    }
}

/// One message of a session, handed to the routing.
async fn handle_message(
    routing: &Routing,
    reporter: &Reporter<'_>,
    refusals: &mut Refusals,
    message: ExecutorMessage,
) {
    let owner = reporter.owner;
    match message.kind {
        Some(executor_message::Kind::Heartbeat(beat)) => {
            routing.heartbeat(owner, beat.fencing_tokens).await;
        }
        Some(executor_message::Kind::DryRunResult(result)) => {
            on_dry_run_result(routing, owner, result);
        }
        Some(executor_message::Kind::Progress(progress)) => {
            on_progress(routing, owner, refusals, progress).await;
        }
        Some(executor_message::Kind::Result(result)) => {
            let span = tracing::info_span!(
                "router.complete",
                patch_id = ?result.patch_id,
                attempt = result.attempt
            );
            set_parent(&span, &result.traceparent);
            on_result(routing, reporter, refusals, result)
                .instrument(span)
                .await;
        }
        Some(executor_message::Kind::Hello(_)) => {
            tracing::warn!(executor = ?owner, "second Hello on one stream ignored");
        }
        None => tracing::warn!(executor = ?owner, "empty message ignored"),
    }
}

/// An executor's answer to a dry run, handed to the call waiting for it.
fn on_dry_run_result(routing: &Routing, owner: &str, result: DryRunResult) {
    let report = match result.report.map(ApplyReport::try_from) {
        Some(Ok(report)) => report,
        Some(Err(err)) => {
            tracing::warn!(executor = ?owner, error = %err, "malformed dry run result dropped");
            return;
        }
        None => {
            tracing::warn!(executor = ?owner, "dry run result without report dropped");
            return;
        }
    };
    if !routing.dry_runs.answer(owner, result.request_id, report) {
        tracing::info!(executor = ?owner, request_id = result.request_id,
            "dry run result for no request of this session dropped (late or unknown)");
    }
}

/// Progress (`applying`, `validating`) under the session's live lease; refused otherwise.
async fn on_progress(routing: &Routing, owner: &str, refusals: &mut Refusals, progress: Progress) {
    match status_from_wire("progress.status", progress.status) {
        Ok(status @ (Status::Applying | Status::Validating)) => {
            let accepted = routing
                .progress(
                    progress.patch_id.clone(),
                    owner,
                    progress.fencing_token,
                    status,
                    progress.detail,
                )
                .await;
            if !accepted {
                refusals.note(owner, &progress.patch_id, "progress");
            }
        }
        Ok(other) => {
            tracing::warn!(executor = ?owner, status = %other, "progress with a non-progress status ignored")
        }
        Err(err) => tracing::warn!(executor = ?owner, error = %err, "bad progress ignored"),
    }
}

/// An attempt's result, stored if the session holds the live lease (fencing token checked).
async fn on_result(
    routing: &Routing,
    reporter: &Reporter<'_>,
    refusals: &mut Refusals,
    result: WorkResult,
) {
    let owner = reporter.owner;
    let report = match result.report.map(ApplyReport::try_from) {
        Some(Ok(report)) => report,
        Some(Err(err)) => {
            tracing::warn!(executor = ?owner, error = %err, "malformed result ignored");
            return;
        }
        None => {
            tracing::warn!(executor = ?owner, "result without report ignored");
            return;
        }
    };
    match routing
        .complete(
            reporter,
            result.patch_id.clone(),
            result.attempt,
            result.fencing_token,
            report,
        )
        .await
    {
        Ok(()) => {}
        Err(RouterError::StaleLease(_)) => {
            refusals.note(owner, &result.patch_id, "result");
        }
        Err(err) => {
            tracing::warn!(executor = ?owner, error = %err, "result not accepted")
        }
    }
}
