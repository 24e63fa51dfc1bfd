//! The `AlerterReadService` adapter: the active alerts as dashboards show them (firing,
//! acknowledged or silenced), read from the [`Lifecycle`] without changing anything.

use std::sync::Arc;

use ghost_proto::alerter::v1 as wire;
use ghost_proto::alerter::v1::alerter_read_service_server::AlerterReadService;
use tonic::{Request, Response, Status};

use crate::lifecycle::{AlertState, Lifecycle, Phase, Severity};
use crate::store::Store;

/// The read-only gRPC face of the alert lifecycle and the Slack backlog.
pub struct AlerterRead {
    lifecycle: Arc<Lifecycle>,
    store: Store,
}

impl AlerterRead {
    /// An adapter over the alert lifecycle and the outbox's store.
    pub fn new(lifecycle: Arc<Lifecycle>, store: Store) -> Self {
        Self { lifecycle, store }
    }

    /// Pending messages per channel, with the channels switched to the digest.
    async fn backlog(&self) -> Result<Vec<wire::ChannelBacklog>, Status> {
        let unavailable = |err: crate::store::StoreError| {
            tracing::error!(error = %err, "the Slack backlog could not be read");
            Status::unavailable("the alerter's store could not be read")
        };
        let mut pending = self.store.pending_by_channel().await.map_err(unavailable)?;
        let switched = self.store.backlog_switched().await.map_err(unavailable)?;
        for channel in &switched {
            pending.entry(channel.clone()).or_insert(0);
        }
        Ok(pending
            .into_iter()
            .map(|(channel, pending)| wire::ChannelBacklog {
                digest_only: switched.contains(&channel),
                channel,
                pending,
            })
            .collect())
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
        let slack_backlog = self.backlog().await?;
        Ok(Response::new(wire::ListAlertsResponse {
            alerts,
            slack_backlog,
        }))
    }
}
