//! The `AlerterReadService` adapter: the active alerts as dashboards show them (firing,
//! acknowledged or silenced), read from the [`Lifecycle`] without changing anything.

use std::sync::Arc;

use ghost_proto::alerter::v1 as wire;
use ghost_proto::alerter::v1::alerter_read_service_server::AlerterReadService;
use tonic::{Request, Response, Status};

use crate::lifecycle::{AlertState, Lifecycle, Phase, Severity};

/// The read-only gRPC face of the alert lifecycle.
pub struct AlerterRead {
    lifecycle: Arc<Lifecycle>,
}

impl AlerterRead {
    /// An adapter over the alert lifecycle.
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Self { lifecycle }
    }
}

fn severity_to_wire(severity: Severity) -> wire::Severity {
    match severity {
        Severity::Info => wire::Severity::Info,
        Severity::Warning => wire::Severity::Warning,
        Severity::Critical => wire::Severity::Critical,
    }
}

/// The dashboard state of one alert: resolved, silenced, acknowledged or firing, in that order
/// of precedence (a pending alert, still inside its group window, counts as firing).
pub fn state_name(alert: &AlertState, silenced: bool) -> &'static str {
    if alert.phase == Phase::Resolved {
        "resolved"
    } else if silenced {
        "silenced"
    } else if alert.ack.is_some() {
        "acked"
    } else {
        "firing"
    }
}

fn info(alert: AlertState, silenced: bool) -> wire::AlertInfo {
    let updated = [
        Some(alert.raised_ms),
        Some(alert.last_notified_ms),
        alert.ack.as_ref().map(|ack| ack.at_ms),
        alert.resolved_ms,
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(alert.raised_ms);
    wire::AlertInfo {
        state: state_name(&alert, silenced).to_owned(),
        severity: severity_to_wire(alert.severity) as i32,
        acked_by: alert.ack.map(|ack| ack.by).unwrap_or_default(),
        key: alert.key,
        summary: alert.summary,
        labels: alert.labels.into_iter().collect(),
        source: alert.source,
        since_unix_ms: alert.raised_ms,
        updated_unix_ms: updated,
    }
}

#[tonic::async_trait]
impl AlerterReadService for AlerterRead {
    #[tracing::instrument(skip_all)]
    async fn list_alerts(
        &self,
        _request: Request<wire::ListAlertsRequest>,
    ) -> Result<Response<wire::ListAlertsResponse>, Status> {
        let mut active = self.lifecycle.active().await;
        active.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.raised_ms.cmp(&b.raised_ms))
                .then(a.key.cmp(&b.key))
        });
        let mut alerts = Vec::with_capacity(active.len());
        for alert in active {
            let silenced = self.lifecycle.is_silenced(&alert).await;
            alerts.push(info(alert, silenced));
        }
        Ok(Response::new(wire::ListAlertsResponse { alerts }))
    }
}
