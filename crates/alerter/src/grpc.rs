//! The `AlerterService` adapter: wire → domain → [`Alerts`](crate::alerts) → wire.

use ghost_core::{PatchId, TargetName};
use ghost_proto::alerter::v1 as wire;
use ghost_proto::alerter::v1::alerter_service_server::AlerterService;
use ghost_proto::convert::status_from_wire;
use ghost_runtime::propagation::current_traceparent;
use tonic::{Request, Response, Status};

use crate::alerts::{Alert, Alerts};
use crate::error::AlerterError;

/// The gRPC face of the alerter.
pub struct AlerterGrpc {
    alerts: Alerts,
}

impl AlerterGrpc {
    /// An adapter over `alerts`.
    pub fn new(alerts: Alerts) -> Self {
        Self { alerts }
    }
}

impl TryFrom<wire::NotifyRequest> for Alert {
    type Error = AlerterError;

    fn try_from(request: wire::NotifyRequest) -> Result<Self, Self::Error> {
        let patch_id = PatchId::parse(&request.patch_id)
            .map_err(|err| AlerterError::invalid("patch_id", err.to_string()))?;
        let target = TargetName::parse(&request.target)
            .map_err(|err| AlerterError::invalid("target", err.to_string()))?;
        let status = status_from_wire("status", request.status)
            .map_err(|err| AlerterError::invalid(err.field, err.message))?;
        Ok(Self {
            patch_id,
            target,
            attempt: request.attempt,
            status,
            description: request.description,
            excerpt: request.excerpt,
            trace_id: request.trace_id,
            error: request.error,
        })
    }
}

#[tonic::async_trait]
impl AlerterService for AlerterGrpc {
    #[tracing::instrument(skip_all, fields(
        patch_id = %request.get_ref().patch_id,
        attempt = request.get_ref().attempt,
    ))]
    async fn notify(
        &self,
        request: Request<wire::NotifyRequest>,
    ) -> Result<Response<wire::NotifyResponse>, Status> {
        let alert = Alert::try_from(request.into_inner())?;
        let accepted = self.alerts.accept(alert, current_traceparent()).await?;
        tracing::info!(accepted, "notify received");
        Ok(Response::new(wire::NotifyResponse { accepted }))
    }

    async fn alert(
        &self,
        _request: Request<wire::AlertRequest>,
    ) -> Result<Response<wire::AlertResponse>, Status> {
        Err(Status::unimplemented("system alerts are not handled yet"))
    }
}
