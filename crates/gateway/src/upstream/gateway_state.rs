//! The gateways' shared state in the router over gRPC: dashboard sessions and webhook
//! deliveries, kept there so every gateway replica sees the same ones.

use ghost_proto::router::v1::gateway_state_service_client::GatewayStateServiceClient;
use ghost_proto::router::v1::{self as router_wire};
use ghost_runtime::propagation::TracedChannel;
use std::time::Duration;

use super::with_deadline;
use crate::deliveries::{Begun, DeliveryLedger, StoredAnswer};
use crate::error::GatewayError;
use crate::ui::{SessionStore, StoredSession};

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
