//! gRPC adapters of the gateway's ports: the router (and the state the gateway replicas share
//! there), the summarizer and the alerter.

use std::time::Duration;

use ghost_core::{Patch, PatchId, TargetName};
use ghost_proto::alerter::v1 as alerter_wire;
use ghost_proto::alerter::v1::alerter_read_service_client::AlerterReadServiceClient;
use ghost_proto::convert::status_from_wire;
use ghost_proto::router::v1::gateway_state_service_client::GatewayStateServiceClient;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::router_stats_service_client::RouterStatsServiceClient;
use ghost_proto::router::v1::{self as router_wire};
use ghost_proto::summarizer::v1::GetRequest as SummaryRequest;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::TracedChannel;

use crate::deliveries::{Begun, DeliveryLedger, StoredAnswer};
use crate::dry_run::DryRunReport;
use crate::error::{GatewayError, from_upstream};
use crate::fleet::{
    AlertFeed, AlertList, AlertView, ChannelBacklogView, ExecutorList, ExecutorView, HourOutcomes,
    StageLatency, Stats,
};
use crate::patches::{
    EventView, ListFilter, PatchPage, PatchQueue, PatchView, Reverted, SummaryStore, TargetView,
};
use crate::report::ReportView;
use crate::ui::{SessionStore, StoredSession};

/// The router over gRPC.
#[derive(Clone)]
pub struct GrpcRouter {
    /// Client on a lazily connecting channel.
    pub client: RouterServiceClient<TracedChannel>,
    /// The read-only aggregates service on the same channel.
    pub stats: RouterStatsServiceClient<TracedChannel>,
    /// Deadline per call.
    pub timeout: Duration,
}

/// A router answer that should carry a patch state but does not.
fn no_state() -> GatewayError {
    GatewayError::Internal("router answered without state".to_owned())
}

fn view(state: router_wire::PatchState, created: bool) -> Result<PatchView, GatewayError> {
    let status = status_from_wire("state.status", state.status)
        .map_err(|err| GatewayError::Internal(err.to_string()))?;
    Ok(PatchView {
        id: state.id,
        target: state.target,
        status,
        attempt: state.attempt,
        description: state.description,
        error: state.error,
        trace_id: state.trace_id,
        created_unix_ms: state.created_unix_ms,
        updated_unix_ms: state.updated_unix_ms,
        created,
    })
}

fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

#[tonic::async_trait]
impl PatchQueue for GrpcRouter {
    async fn submit(
        &self,
        patch: &Patch,
        warnings: &[String],
        key_name: &str,
    ) -> Result<PatchView, GatewayError> {
        let request = router_wire::SubmitRequest {
            patch: Some(router_wire::Patch::from(patch)),
            intake_warnings: warnings.to_vec(),
            key_name: key_name.to_owned(),
        };
        let response = self
            .client
            .clone()
            .submit(with_deadline(request, self.timeout))
            .await
            .map_err(|status| from_upstream(patch.id.as_str(), &status))?
            .into_inner();
        let state = response.state.ok_or_else(no_state)?;
        view(state, response.created)
    }

    async fn get(&self, id: &PatchId) -> Result<(PatchView, Option<ReportView>), GatewayError> {
        let request = router_wire::GetRequest { id: id.to_string() };
        let state = self
            .client
            .clone()
            .get(with_deadline(request, self.timeout))
            .await
            .map_err(|status| from_upstream(id.as_str(), &status))?
            .into_inner()
            .state
            .ok_or_else(no_state)?;
        let report = state.report.clone().map(ReportView::from);
        Ok((view(state, false)?, report))
    }

    async fn wait(
        &self,
        id: &PatchId,
        wait: Duration,
    ) -> Result<(PatchView, Option<ReportView>), GatewayError> {
        let wait = wait.min(crate::long_poll::MAX_WAIT);
        let request = router_wire::WaitRequest {
            id: id.to_string(),
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        let state = self
            .client
            .clone()
            .wait(with_deadline(
                request,
                wait + crate::long_poll::ANSWER_MARGIN,
            ))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::ResourceExhausted => {
                    GatewayError::Overloaded("too many calls are waiting for patches; poll instead")
                }
                _ => from_upstream(id.as_str(), &status),
            })?
            .into_inner()
            .state
            .ok_or_else(no_state)?;
        let report = state.report.clone().map(ReportView::from);
        Ok((view(state, false)?, report))
    }

    async fn dry_run(&self, patch: &Patch) -> Result<DryRunReport, GatewayError> {
        let request = router_wire::DryRunRequest {
            patch: Some(router_wire::Patch::from(patch)),
        };
        // The router waits up to 30 s for the executor's answer.
        let deadline = crate::dry_run::CALL_DEADLINE;
        let report = self
            .client
            .clone()
            .dry_run(with_deadline(request, deadline))
            .await
            .map_err(|status| match status.code() {
                // The router's own refusals say what is missing (no executor for the target,
                // too many dry runs, no answer in time); a transport failure says nothing useful.
                // No executor for the target is not the gateway's fault nor the request's: 409.
                tonic::Code::Unavailable if status.message().starts_with("no executor serving") => {
                    GatewayError::Conflict(status.message().to_owned())
                }
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                    if status.message().contains("executor")
                        || status.message().contains("dry run") =>
                {
                    GatewayError::DryRunUnavailable(status.message().to_owned())
                }
                _ => from_upstream(patch.id.as_str(), &status),
            })?
            .into_inner()
            .report
            .ok_or_else(|| {
                GatewayError::Internal("router answered a dry run without a report".to_owned())
            })?;
        Ok(DryRunReport::from(report))
    }

    async fn revert(&self, id: &PatchId, actor: &str) -> Result<Reverted, GatewayError> {
        let request = router_wire::RevertRequest {
            id: id.to_string(),
            actor: actor.to_owned(),
        };
        // The router asks the target's executor, waiting up to 30 s, as for a dry run.
        let response = self
            .client
            .clone()
            .revert(with_deadline(request, crate::dry_run::CALL_DEADLINE))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted
                    if status.message().contains("executor")
                        || status.message().contains("dry run") =>
                {
                    GatewayError::DryRunUnavailable(status.message().to_owned())
                }
                tonic::Code::FailedPrecondition => {
                    GatewayError::Conflict(status.message().to_owned())
                }
                // Cut before the router answered: it may have stored the revert already.
                tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown => GatewayError::RevertCut(format!(
                    "the router's answer to the revert of {id} was cut ({:?}: {}): it may have \
                     been queued; ask again (asking again answers the same revert)",
                    status.code(),
                    status.message()
                )),
                _ => from_upstream(id.as_str(), &status),
            })?
            .into_inner();
        match response.state {
            Some(state) => Ok(Reverted::Queued(view(state, response.created)?)),
            None if !response.conflicts.is_empty() => Ok(Reverted::Conflicts {
                error: response.error,
                conflicts: response.conflicts,
            }),
            None => Err(no_state()),
        }
    }

    async fn events(&self, id: &PatchId) -> Result<Vec<EventView>, GatewayError> {
        let request = router_wire::EventsRequest { id: id.to_string() };
        let events = self
            .client
            .clone()
            .events(with_deadline(request, self.timeout))
            .await
            .map_err(|status| from_upstream(id.as_str(), &status))?
            .into_inner()
            .events;
        Ok(events
            .into_iter()
            .map(|event| EventView {
                at_unix_ms: event.at_unix_ms,
                at_unix_us: event.at_unix_us,
                status: event.status,
                actor: event.actor,
                attempt: event.attempt,
                detail: event.detail,
            })
            .collect())
    }

    async fn list(&self, filter: &ListFilter) -> Result<PatchPage, GatewayError> {
        let request = router_wire::ListRequest {
            target: filter.target.clone().unwrap_or_default(),
            status: filter
                .status
                .map_or(0, |status| router_wire::PatchStatus::from(status) as i32),
            page_size: filter.page_size,
            page_token: filter.page_token.clone(),
        };
        let response = self
            .client
            .clone()
            .list(with_deadline(request, self.timeout))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::InvalidArgument => {
                    GatewayError::BadRequest(status.message().to_owned())
                }
                _ => from_upstream("", &status),
            })?
            .into_inner();
        let patches = response
            .patches
            .into_iter()
            .map(|state| view(state, false))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PatchPage {
            patches,
            next_page_token: response.next_page_token,
        })
    }

    async fn cancel(&self, id: &PatchId, actor: &str) -> Result<PatchView, GatewayError> {
        let request = router_wire::CancelRequest {
            id: id.to_string(),
            actor: actor.to_owned(),
        };
        let state = self
            .client
            .clone()
            .cancel(with_deadline(request, self.timeout))
            .await
            .map_err(|status| from_upstream(id.as_str(), &status))?
            .into_inner()
            .state
            .ok_or_else(no_state)?;
        view(state, false)
    }

    async fn retry(&self, id: &PatchId, actor: &str) -> Result<PatchView, GatewayError> {
        let request = router_wire::RetryRequest {
            id: id.to_string(),
            actor: actor.to_owned(),
        };
        let state = self
            .client
            .clone()
            .retry(with_deadline(request, self.timeout))
            .await
            .map_err(|status| from_upstream(id.as_str(), &status))?
            .into_inner()
            .state
            .ok_or_else(no_state)?;
        view(state, false)
    }

    async fn targets(&self) -> Result<Vec<TargetView>, GatewayError> {
        let request = router_wire::ListTargetsRequest {};
        let targets = self
            .client
            .clone()
            .list_targets(with_deadline(request, self.timeout))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => GatewayError::NotImplemented("ListTargets"),
                _ => from_upstream("", &status),
            })?
            .into_inner()
            .targets;
        Ok(targets
            .into_iter()
            .map(|target| TargetView {
                target: target.target,
                queued: target.queued,
                paused: target.paused,
                executor_online: target.executor_online,
                oldest_queued_unix_ms: target.oldest_queued_unix_ms,
                running_patch_id: target.running_patch_id,
                finished: target.finished.into_iter().collect(),
            })
            .collect())
    }

    async fn set_paused(
        &self,
        target: &TargetName,
        paused: bool,
        actor: &str,
    ) -> Result<(), GatewayError> {
        let mut client = self.client.clone();
        let result = if paused {
            let request = router_wire::PauseRequest {
                target: target.to_string(),
                actor: actor.to_owned(),
            };
            client
                .pause(with_deadline(request, self.timeout))
                .await
                .map(drop)
        } else {
            let request = router_wire::ResumeRequest {
                target: target.to_string(),
                actor: actor.to_owned(),
            };
            client
                .resume(with_deadline(request, self.timeout))
                .await
                .map(drop)
        };
        result.map_err(|status| match status.code() {
            tonic::Code::InvalidArgument => GatewayError::BadRequest(status.message().to_owned()),
            _ => from_upstream(target.as_str(), &status),
        })
    }

    async fn executors(&self) -> Result<ExecutorList, GatewayError> {
        let request = router_wire::ListExecutorsRequest {};
        let executors = self
            .client
            .clone()
            .list_executors(with_deadline(request, self.timeout))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => GatewayError::NotImplemented("ListExecutors"),
                _ => from_upstream("", &status),
            })?
            .into_inner()
            .executors;
        Ok(ExecutorList {
            executors: executors
                .into_iter()
                .map(|executor| ExecutorView {
                    executor_id: executor.executor_id,
                    session: executor.session,
                    targets: executor.targets,
                    connected_unix_ms: executor.connected_unix_ms,
                    last_seen_unix_ms: executor.last_seen_unix_ms,
                    running_patch_ids: executor.running_patch_ids,
                })
                .collect(),
        })
    }

    async fn stats(
        &self,
        target: Option<&TargetName>,
        since_unix_ms: i64,
    ) -> Result<Stats, GatewayError> {
        let request = router_wire::GetStatsRequest {
            since_unix_ms,
            target: target.map(ToString::to_string).unwrap_or_default(),
        };
        let stats = self
            .stats
            .clone()
            .get_stats(with_deadline(request, self.timeout))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => GatewayError::NotImplemented("GetStats"),
                _ => from_upstream("", &status),
            })?
            .into_inner();
        Ok(Stats {
            hours: stats
                .hours
                .into_iter()
                .map(|hour| HourOutcomes {
                    hour_unix_ms: hour.hour_unix_ms,
                    outcomes: hour.outcomes.into_iter().collect(),
                })
                .collect(),
            stages: stats
                .stages
                .into_iter()
                .map(|stage| StageLatency {
                    stage: stage.stage,
                    count: stage.count,
                    p50_ms: stage.p50_ms,
                    p95_ms: stage.p95_ms,
                    max_ms: stage.max_ms,
                })
                .collect(),
            reports_sampled: stats.reports_sampled,
        })
    }
}

/// The alerter's read-only service over gRPC.
#[derive(Clone)]
pub struct GrpcAlerter {
    /// Client on a lazily connecting channel.
    pub client: AlerterReadServiceClient<TracedChannel>,
    /// Deadline per call.
    pub timeout: Duration,
}

fn severity_name(value: i32) -> &'static str {
    match alerter_wire::Severity::try_from(value) {
        Ok(alerter_wire::Severity::Info) => "info",
        Ok(alerter_wire::Severity::Critical) => "critical",
        _ => "warning",
    }
}

#[tonic::async_trait]
impl AlertFeed for GrpcAlerter {
    async fn alerts(&self) -> Result<AlertList, GatewayError> {
        let request = alerter_wire::ListAlertsRequest {};
        let listed = self
            .client
            .clone()
            .list_alerts(with_deadline(request, self.timeout))
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unimplemented => GatewayError::NotImplemented("ListAlerts"),
                _ => from_upstream("", &status),
            })?
            .into_inner();
        let alerts = listed
            .alerts
            .into_iter()
            .map(|alert| AlertView {
                severity: severity_name(alert.severity).to_owned(),
                key: alert.key,
                state: alert.state,
                summary: alert.summary,
                labels: alert.labels.into_iter().collect(),
                source: alert.source,
                since_unix_ms: alert.since_unix_ms,
                updated_unix_ms: alert.updated_unix_ms,
            })
            .collect();
        let slack_backlog = listed
            .slack_backlog
            .into_iter()
            .map(|channel| ChannelBacklogView {
                channel: channel.channel,
                pending: channel.pending,
                digest_only: channel.digest_only,
            })
            .collect();
        Ok(AlertList {
            alerts,
            slack_backlog,
        })
    }
}

/// The summarizer over gRPC.
#[derive(Clone)]
pub struct GrpcSummaries {
    /// Client on a lazily connecting channel.
    pub client: SummarizerServiceClient<TracedChannel>,
    /// Deadline per call.
    pub timeout: Duration,
}

#[tonic::async_trait]
impl SummaryStore for GrpcSummaries {
    async fn markdown(&self, id: &PatchId) -> Result<Option<String>, GatewayError> {
        let request = SummaryRequest {
            patch_id: id.to_string(),
        };
        match self
            .client
            .clone()
            .get(with_deadline(request, self.timeout))
            .await
        {
            Ok(response) => Ok(response.into_inner().summary.map(|s| s.markdown)),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            // The summary is an addition to the router's state, not a condition of it: with
            // the summarizer down a patch is shown without one (as before it is summarised)
            // instead of the whole read failing with a 503 that blames the patch queue.
            Err(status) if is_transient(status.code()) => {
                tracing::warn!(patch_id = %id, code = ?status.code(), error = %status.message(), "summarizer unavailable; patch shown without its summary");
                Ok(None)
            }
            Err(status) => Err(from_upstream(id.as_str(), &status)),
        }
    }
}

/// Codes of a summarizer that is down, restarting or slow, rather than of a bad request.
fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::Unknown
    )
}

/// The gateways' shared state in the router (`GatewayStateService`): dashboard sessions and
/// webhook deliveries, so every gateway replica sees the same ones.
#[derive(Clone)]
pub struct GrpcGatewayState {
    /// Client on the router's lazily connecting channel.
    pub client: GatewayStateServiceClient<TracedChannel>,
    /// Deadline per call.
    pub timeout: Duration,
}

/// A failed call for shared state: 503 when the router is away (the caller retries), else 500.
fn state_error(what: &str, status: &tonic::Status) -> GatewayError {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            GatewayError::Unavailable(format!(
                "the router cannot {what} now ({:?}: {})",
                status.code(),
                status.message()
            ))
        }
        other => GatewayError::Internal(format!(
            "the router refused to {what}: {other:?}: {}",
            status.message()
        )),
    }
}

fn answer_to_wire(answer: StoredAnswer) -> router_wire::StoredAnswer {
    router_wire::StoredAnswer {
        status: u32::from(answer.status),
        content_type: answer.content_type,
        location: answer.location,
        body: answer.body.to_vec(),
    }
}

fn answer_from_wire(answer: router_wire::StoredAnswer) -> Result<StoredAnswer, GatewayError> {
    let status = u16::try_from(answer.status)
        .ok()
        .filter(|status| (200..300).contains(status))
        .ok_or_else(|| {
            GatewayError::Internal(format!(
                "the router gave a stored webhook answer with status {}",
                answer.status
            ))
        })?;
    Ok(StoredAnswer {
        status,
        content_type: answer.content_type,
        location: answer.location,
        body: answer.body.into(),
    })
}

#[tonic::async_trait]
impl SessionStore for GrpcGatewayState {
    async fn start(
        &self,
        id_sha256: [u8; 32],
        session: StoredSession,
        ttl: Duration,
        max: usize,
    ) -> Result<bool, GatewayError> {
        let request = router_wire::StartSessionRequest {
            id_sha256: id_sha256.to_vec(),
            credential_sha256: session.credential.to_vec(),
            csrf: session.csrf,
            ttl_s: u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX),
            max_sessions: u32::try_from(max).unwrap_or(u32::MAX),
        };
        Ok(self
            .client
            .clone()
            .start_session(with_deadline(request, self.timeout))
            .await
            .map_err(|status| state_error("start a dashboard session", &status))?
            .into_inner()
            .started)
    }

    async fn get(&self, id_sha256: [u8; 32]) -> Result<Option<StoredSession>, GatewayError> {
        let request = router_wire::GetSessionRequest {
            id_sha256: id_sha256.to_vec(),
        };
        let found = self
            .client
            .clone()
            .get_session(with_deadline(request, self.timeout))
            .await
            .map_err(|status| state_error("read a dashboard session", &status))?
            .into_inner();
        if !found.found {
            return Ok(None);
        }
        let credential =
            <[u8; 32]>::try_from(found.credential_sha256.as_slice()).map_err(|_| {
                GatewayError::Internal("the router gave a session without a key hash".to_owned())
            })?;
        Ok(Some(StoredSession {
            credential,
            csrf: found.csrf,
        }))
    }

    async fn end(&self, id_sha256: [u8; 32]) -> Result<(), GatewayError> {
        let request = router_wire::EndSessionRequest {
            id_sha256: id_sha256.to_vec(),
        };
        self.client
            .clone()
            .end_session(with_deadline(request, self.timeout))
            .await
            .map_err(|status| state_error("end a dashboard session", &status))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl DeliveryLedger for GrpcGatewayState {
    async fn begin(&self, sender: &str, id: &str, body: [u8; 32]) -> Result<Begun, GatewayError> {
        let request = router_wire::BeginDeliveryRequest {
            sender: sender.to_owned(),
            id: id.to_owned(),
            body_sha256: body.to_vec(),
        };
        let begun = self
            .client
            .clone()
            .begin_delivery(with_deadline(request, self.timeout))
            .await
            .map_err(|status| state_error("check a webhook id", &status))?
            .into_inner();
        use router_wire::DeliveryOutcome as Outcome;
        Ok(match Outcome::try_from(begun.outcome) {
            Ok(Outcome::Deliver) if !begun.lease.is_empty() => Begun::Deliver(begun.lease),
            Ok(Outcome::InProgress) => Begun::InProgress,
            Ok(Outcome::Replay) => {
                Begun::Replay(answer_from_wire(begun.answer.ok_or_else(|| {
                    GatewayError::Internal("the router gave a replay without its answer".to_owned())
                })?)?)
            }
            Ok(Outcome::OtherBody) => Begun::OtherBody,
            Ok(Outcome::Full) => Begun::Full,
            _ => {
                return Err(GatewayError::Internal(format!(
                    "the router answered a webhook id with outcome {}",
                    begun.outcome
                )));
            }
        })
    }

    async fn commit(
        &self,
        sender: &str,
        id: &str,
        lease: &str,
        answer: StoredAnswer,
        keep: Duration,
    ) -> Result<bool, GatewayError> {
        let request = router_wire::SettleDeliveryRequest {
            sender: sender.to_owned(),
            id: id.to_owned(),
            lease: lease.to_owned(),
            answer: Some(answer_to_wire(answer)),
            keep_ms: u64::try_from(keep.as_millis()).unwrap_or(u64::MAX),
        };
        Ok(self
            .client
            .clone()
            .settle_delivery(with_deadline(request, self.timeout))
            .await
            .map_err(|status| state_error("remember a webhook id", &status))?
            .into_inner()
            .committed)
    }

    async fn release(&self, sender: &str, id: &str, lease: &str) -> Result<(), GatewayError> {
        let request = router_wire::SettleDeliveryRequest {
            sender: sender.to_owned(),
            id: id.to_owned(),
            lease: lease.to_owned(),
            answer: None,
            keep_ms: 0,
        };
        self.client
            .clone()
            .settle_delivery(with_deadline(request, self.timeout))
            .await
            .map_err(|status| state_error("free a webhook id", &status))?;
        Ok(())
    }
}
