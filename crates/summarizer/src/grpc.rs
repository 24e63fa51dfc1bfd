//! The `SummarizerService` adapter: wire → domain → [`Summaries`](crate::summaries) → wire.

use ghost_core::{ApplyReport, PatchId, Status, TargetName};
use ghost_proto::router::v1::PatchStatus;
use ghost_proto::summarizer::v1 as wire;
use ghost_proto::summarizer::v1::summarizer_service_server::SummarizerService;
use ghost_runtime::propagation::{current_trace_id, current_traceparent};
use tonic::{Request, Response, Status as GrpcStatus};

use crate::app::AppState;
use crate::doc::Outcome;
use crate::error::SummarizerError;
use crate::index::SummaryRow;

/// Default and largest `List` page.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 500;

/// The gRPC face of the summarizer.
pub struct SummarizerGrpc {
    state: AppState,
}

impl SummarizerGrpc {
    /// An adapter over `state`.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl TryFrom<wire::Outcome> for Outcome {
    type Error = SummarizerError;

    fn try_from(outcome: wire::Outcome) -> Result<Self, Self::Error> {
        let patch_id = PatchId::parse(&outcome.patch_id)
            .map_err(|err| SummarizerError::invalid("outcome.patch_id", err.to_string()))?;
        let target = TargetName::parse(&outcome.target)
            .map_err(|err| SummarizerError::invalid("outcome.target", err.to_string()))?;
        let wire_report = outcome
            .report
            .ok_or_else(|| SummarizerError::invalid("outcome.report", "missing"))?;
        let report = ApplyReport::try_from(wire_report).map_err(|err| {
            SummarizerError::invalid(format!("outcome.{}", err.field), err.message)
        })?;
        if !report.status.is_terminal() {
            return Err(SummarizerError::invalid(
                "outcome.report.status",
                format!("{} is not a terminal status", report.status),
            ));
        }
        Ok(Self {
            patch_id,
            target,
            attempt: outcome.attempt,
            description: outcome.description,
            report,
            trace_id: outcome.trace_id,
            created_unix_ms: outcome.created_unix_ms,
            finished_unix_ms: outcome.finished_unix_ms,
            intake_warnings: outcome.intake_warnings,
            notify: outcome.notify,
            priority: outcome.priority,
            key_name: outcome.key_name,
        })
    }
}

fn summary_to_wire(row: SummaryRow, markdown: String, model_text: String) -> wire::Summary {
    let status = row
        .status
        .parse::<Status>()
        .map(|status| PatchStatus::from(status) as i32)
        .unwrap_or(PatchStatus::Unspecified as i32);
    wire::Summary {
        path: format!("{}/summary-{}.md", row.dir, row.patch_id),
        json_path: format!("{}/summary-{}.json", row.dir, row.patch_id),
        patch_id: row.patch_id,
        target: row.target,
        attempt: row.attempt,
        status,
        markdown,
        trace_id: row.trace_id,
        finished_unix_ms: row.finished_ms,
        model_text,
        attempts: row.attempts,
        archived: row.archived,
        created_unix_ms: row.created_ms,
    }
}

#[tonic::async_trait]
impl SummarizerService for SummarizerGrpc {
    #[tracing::instrument(skip_all, fields(
        patch_id = %request.get_ref().outcome.as_ref().map(|o| o.patch_id.as_str()).unwrap_or_default(),
        attempt = request.get_ref().outcome.as_ref().map(|o| o.attempt).unwrap_or_default(),
    ))]
    async fn record(
        &self,
        request: Request<wire::RecordRequest>,
    ) -> Result<Response<wire::RecordResponse>, GrpcStatus> {
        let wire_outcome = request
            .into_inner()
            .outcome
            .ok_or_else(|| SummarizerError::invalid("outcome", "missing"))?;
        let mut outcome = Outcome::try_from(wire_outcome)?;
        if outcome.trace_id.is_empty() {
            outcome.trace_id = current_trace_id();
        }
        let recorded = self
            .state
            .summaries
            .record(outcome, current_traceparent().unwrap_or_default())
            .await?;
        tracing::info!(
            created = recorded.created,
            status = %recorded.status,
            "outcome recorded"
        );
        metrics::counter!(
            "ghost_summaries_recorded_total",
            "created" => if recorded.created { "true" } else { "false" }
        )
        .increment(1);
        Ok(Response::new(wire::RecordResponse {
            created: recorded.created,
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id = %request.get_ref().patch_id))]
    async fn get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, GrpcStatus> {
        let patch_id = PatchId::parse(&request.get_ref().patch_id)
            .map_err(|err| SummarizerError::invalid("patch_id", err.to_string()))?;
        let summary = self.state.summaries.get(&patch_id).await?;
        Ok(Response::new(wire::GetResponse {
            summary: Some(summary_to_wire(
                summary.row,
                summary.markdown,
                summary.model_text,
            )),
        }))
    }

    /// Summaries newest first; `markdown` and `model_text` are left empty (call `Get`).
    #[tracing::instrument(skip_all, fields(target = %request.get_ref().target))]
    async fn list(
        &self,
        request: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, GrpcStatus> {
        let list = request.into_inner();
        let target = if list.target.is_empty() {
            None
        } else {
            Some(
                TargetName::parse(&list.target)
                    .map_err(|err| SummarizerError::invalid("target", err.to_string()))?,
            )
        };
        let status = if list.status == PatchStatus::Unspecified as i32 {
            None
        } else {
            Some(
                ghost_proto::convert::status_from_wire("status", list.status)
                    .map_err(|err| SummarizerError::invalid(err.field, err.message))?,
            )
        };
        let offset = if list.page_token.is_empty() {
            0
        } else {
            list.page_token.parse::<usize>().map_err(|_| {
                SummarizerError::invalid("page_token", "expected a token from a previous page")
            })?
        };
        let page_size = match list.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => usize::try_from(size)
                .unwrap_or(MAX_PAGE_SIZE)
                .min(MAX_PAGE_SIZE),
        };
        let page = self
            .state
            .summaries
            .list(target, status, offset, page_size)
            .await?;
        Ok(Response::new(wire::ListResponse {
            summaries: page
                .rows
                .into_iter()
                .map(|row| summary_to_wire(row, String::new(), String::new()))
                .collect(),
            next_page_token: page
                .next_offset
                .map(|offset| offset.to_string())
                .unwrap_or_default(),
            total: u32::try_from(page.total).unwrap_or(u32::MAX),
        }))
    }
}
