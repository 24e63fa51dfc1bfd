//! The read-only peers over gRPC: the alerter's open alerts and the summarizer's summaries.

use ghost_core::PatchId;
use ghost_proto::alerter::v1 as alerter_wire;
use ghost_proto::alerter::v1::alerter_read_service_client::AlerterReadServiceClient;
use ghost_proto::summarizer::v1::GetRequest as SummaryRequest;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::TracedChannel;
use std::time::Duration;

use super::with_deadline;
use crate::error::{GatewayError, from_upstream};
use crate::fleet::{AlertFeed, AlertList, AlertView, ChannelBacklogView};
use crate::patches::SummaryStore;

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
