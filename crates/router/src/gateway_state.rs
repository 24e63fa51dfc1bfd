//! State every gateway replica shares: `ghost.router.v1.GatewayStateService`.
//!
//! Dashboard sessions and Standard Webhooks deliveries live in the router's database, so a
//! login made through one gateway replica works through the others, a logout on one ends it
//! on all, and a webhook id committed through one is answered as a replay by the others. The
//! service is internal (the deployment's service credential, like every router method but
//! the executors' stream) and checks every field: the gateways are trusted, but a bug in one
//! must not fill the database.

use std::sync::Arc;

use ghost_proto::router::v1::{self as wire, gateway_state_service_server::GatewayStateService};
use tonic::{Request, Response};

use crate::error::RouterError;
use crate::store::{
    AnswerRow, DeliveryBegun, GatewayStateStore, MAX_STORED_ANSWER, SessionRow, now_ms,
};

/// Longest a session may last.
const MAX_TTL_S: u32 = 30 * 24 * 3600;
/// Longest a committed delivery is remembered.
const MAX_KEEP_MS: u64 = 24 * 3600 * 1000;
/// Longest sender name and webhook id.
const MAX_NAME: usize = 256;
/// Longest lease token, content type or location.
const MAX_SHORT: usize = 2048;

/// The gRPC service over the store.
pub struct GatewayStateGrpc {
    /// Where the state lives.
    pub store: Arc<dyn GatewayStateStore>,
}

fn invalid(field: &str, message: impl Into<String>) -> RouterError {
    RouterError::InvalidArgument {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn sha256(field: &str, bytes: &[u8]) -> Result<Vec<u8>, RouterError> {
    if bytes.len() != 32 {
        return Err(invalid(
            field,
            format!("must be a SHA-256 (32 bytes), got {} bytes", bytes.len()),
        ));
    }
    Ok(bytes.to_vec())
}

fn bounded_text(field: &str, text: &str, max: usize) -> Result<(), RouterError> {
    if text.is_empty() || text.len() > max {
        return Err(invalid(
            field,
            format!("must be 1 to {max} bytes, got {}", text.len()),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "must not hold control characters"));
    }
    Ok(())
}

fn keep_ms(keep: u64) -> i64 {
    i64::try_from(keep.clamp(1, MAX_KEEP_MS)).unwrap_or(i64::MAX)
}

fn answer_row(answer: wire::StoredAnswer) -> Result<AnswerRow, RouterError> {
    let status = u16::try_from(answer.status)
        .ok()
        .filter(|status| (200..300).contains(status))
        .ok_or_else(|| {
            invalid(
                "answer.status",
                format!("only a 2xx answer is committed, got {}", answer.status),
            )
        })?;
    if answer.body.len() > MAX_STORED_ANSWER {
        return Err(invalid(
            "answer.body",
            format!(
                "at most {MAX_STORED_ANSWER} bytes are stored, got {}",
                answer.body.len()
            ),
        ));
    }
    for (field, text) in [
        ("answer.content_type", &answer.content_type),
        ("answer.location", &answer.location),
    ] {
        if !text.is_empty() {
            bounded_text(field, text, MAX_SHORT)?;
        }
    }
    Ok(AnswerRow {
        status,
        content_type: answer.content_type,
        location: answer.location,
        body: answer.body,
    })
}

/// A fresh lease token: 16 random bytes as hex.
fn new_lease() -> Result<String, RouterError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|err| RouterError::Internal(format!("no randomness for a lease: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[tonic::async_trait]
impl GatewayStateService for GatewayStateGrpc {
    async fn start_session(
        &self,
        request: Request<wire::StartSessionRequest>,
    ) -> Result<Response<wire::StartSessionResponse>, tonic::Status> {
        let request = request.into_inner();
        let id = sha256("id_sha256", &request.id_sha256)?;
        let credential = sha256("credential_sha256", &request.credential_sha256)?;
        if request.csrf.len() != 64 || !request.csrf.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("csrf", "must be 64 hex digits").into());
        }
        if request.ttl_s == 0 || request.ttl_s > MAX_TTL_S {
            return Err(invalid(
                "ttl_s",
                format!("must be 1 to {MAX_TTL_S} s, got {}", request.ttl_s),
            )
            .into());
        }
        let now = now_ms();
        let session = SessionRow {
            credential,
            csrf: request.csrf,
            expires_ms: now.saturating_add(i64::from(request.ttl_s) * 1000),
        };
        let started = self
            .store
            .start_session(id, session, i64::from(request.max_sessions), now)
            .await
            .map_err(RouterError::from)?;
        if !started {
            tracing::warn!("dashboard session refused: the live sessions are at the cap");
        }
        Ok(Response::new(wire::StartSessionResponse { started }))
    }

    async fn get_session(
        &self,
        request: Request<wire::GetSessionRequest>,
    ) -> Result<Response<wire::GetSessionResponse>, tonic::Status> {
        let id = sha256("id_sha256", &request.into_inner().id_sha256)?;
        let found = self
            .store
            .session(id, now_ms())
            .await
            .map_err(RouterError::from)?;
        Ok(Response::new(match found {
            Some(session) => wire::GetSessionResponse {
                found: true,
                credential_sha256: session.credential,
                csrf: session.csrf,
                expires_unix_ms: session.expires_ms,
            },
            None => wire::GetSessionResponse::default(),
        }))
    }

    async fn end_session(
        &self,
        request: Request<wire::EndSessionRequest>,
    ) -> Result<Response<wire::EndSessionResponse>, tonic::Status> {
        let id = sha256("id_sha256", &request.into_inner().id_sha256)?;
        self.store
            .end_session(id)
            .await
            .map_err(RouterError::from)?;
        Ok(Response::new(wire::EndSessionResponse {}))
    }

    async fn begin_delivery(
        &self,
        request: Request<wire::BeginDeliveryRequest>,
    ) -> Result<Response<wire::BeginDeliveryResponse>, tonic::Status> {
        let request = request.into_inner();
        bounded_text("sender", &request.sender, MAX_NAME)?;
        bounded_text("id", &request.id, MAX_NAME)?;
        let body = sha256("body_sha256", &request.body_sha256)?;
        let begun = self
            .store
            .begin_delivery(request.sender, request.id, body, new_lease()?, now_ms())
            .await
            .map_err(RouterError::from)?;
        let mut response = wire::BeginDeliveryResponse::default();
        let outcome = match begun {
            DeliveryBegun::Deliver(lease) => {
                response.lease = lease;
                wire::DeliveryOutcome::Deliver
            }
            DeliveryBegun::InProgress => wire::DeliveryOutcome::InProgress,
            DeliveryBegun::Replay(answer) => {
                response.answer = Some(wire::StoredAnswer {
                    status: u32::from(answer.status),
                    content_type: answer.content_type,
                    location: answer.location,
                    body: answer.body,
                });
                wire::DeliveryOutcome::Replay
            }
            DeliveryBegun::OtherBody => wire::DeliveryOutcome::OtherBody,
            DeliveryBegun::Full => {
                tracing::warn!("webhook delivery refused: too many ids remembered or in progress");
                wire::DeliveryOutcome::Full
            }
        };
        response.outcome = outcome.into();
        Ok(Response::new(response))
    }

    async fn settle_delivery(
        &self,
        request: Request<wire::SettleDeliveryRequest>,
    ) -> Result<Response<wire::SettleDeliveryResponse>, tonic::Status> {
        let request = request.into_inner();
        bounded_text("sender", &request.sender, MAX_NAME)?;
        bounded_text("id", &request.id, MAX_NAME)?;
        bounded_text("lease", &request.lease, MAX_SHORT)?;
        let answer = request.answer.map(answer_row).transpose()?;
        let committed = self
            .store
            .settle_delivery(
                request.sender,
                request.id,
                request.lease,
                answer,
                keep_ms(request.keep_ms),
                now_ms(),
            )
            .await
            .map_err(RouterError::from)?;
        Ok(Response::new(wire::SettleDeliveryResponse { committed }))
    }
}
