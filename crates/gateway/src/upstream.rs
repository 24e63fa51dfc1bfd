//! gRPC adapters of the gateway's ports: the router (and the state the gateway replicas share
//! there), the summarizer and the alerter.
//!
//! This file is the router's patch queue ([`GrpcRouter`]); the alerter and the summarizer are
//! in `readers`, the gateways' shared state in the router in `gateway_state`.

mod gateway_state;
mod readers;

pub use gateway_state::GrpcGatewayState;
pub use readers::{GrpcAlerter, GrpcSummaries};

use std::time::Duration;

use ghost_core::{Patch, PatchId, TargetName};
use ghost_proto::convert::status_from_wire;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::router_stats_service_client::RouterStatsServiceClient;
use ghost_proto::router::v1::{self as router_wire};
use ghost_runtime::propagation::TracedChannel;

use crate::dry_run::DryRunReport;
use crate::error::{GatewayError, from_upstream};
use crate::fleet::{ExecutorList, ExecutorView, HourOutcomes, StageLatency, Stats};
use crate::patches::{
    EventView, ListFilter, PatchPage, PatchQueue, PatchView, Reverted, TargetView,
};
use crate::report::ReportView;

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
