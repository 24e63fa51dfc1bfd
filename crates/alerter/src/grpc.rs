//! The `AlerterService` adapter: wire → domain → [`Patches`] / [`Lifecycle`] → wire.

use std::sync::Arc;

use ghost_core::{PatchId, TargetName};
use ghost_proto::alerter::v1 as wire;
use ghost_proto::alerter::v1::alerter_service_server::AlerterService;
use ghost_proto::convert::status_from_wire;
use ghost_runtime::propagation::current_traceparent;
use tonic::{Request, Response, Status};

use crate::error::AlerterError;
use crate::lifecycle::{Lifecycle, RaiseAlert, Severity};
use crate::messages::PatchOutcome;
use crate::patches::Patches;
use crate::store::Store;

/// The gRPC face of the alerter.
pub struct AlerterGrpc {
    patches: Patches,
    lifecycle: Arc<Lifecycle>,
    store: Store,
}

impl AlerterGrpc {
    /// An adapter over the patch threads and the alert lifecycle.
    pub fn new(patches: Patches, lifecycle: Arc<Lifecycle>, store: Store) -> Self {
        Self {
            patches,
            lifecycle,
            store,
        }
    }
}

impl TryFrom<wire::NotifyRequest> for PatchOutcome {
    type Error = AlerterError;

    fn try_from(request: wire::NotifyRequest) -> Result<Self, Self::Error> {
        let patch_id = PatchId::parse(&request.patch_id)
            .map_err(|err| AlerterError::invalid("patch_id", err.to_string()))?;
        let target = TargetName::parse(&request.target)
            .map_err(|err| AlerterError::invalid("target", err.to_string()))?;
        let status = status_from_wire("status", request.status)
            .map_err(|err| AlerterError::invalid(err.field, err.message))?;
        if !request.notify.is_empty() && !crate::routing::is_slack_user_id(&request.notify) {
            return Err(AlerterError::invalid(
                "notify",
                "must be a Slack user id: U or W, then 2 to 20 capital letters or digits",
            ));
        }
        if !matches!(request.priority.as_str(), "" | "low" | "normal" | "high") {
            return Err(AlerterError::invalid(
                "priority",
                "must be low, normal or high",
            ));
        }
        if request.labels.len() > 32
            || request
                .labels
                .iter()
                .any(|(name, value)| name.len() > 100 || value.len() > 500)
        {
            return Err(AlerterError::invalid(
                "labels",
                "at most 32 labels, names up to 100 and values up to 500 bytes",
            ));
        }
        if request.key_name.len() > 200 {
            return Err(AlerterError::invalid("key_name", "longer than 200 bytes"));
        }
        Ok(Self {
            patch_id,
            target,
            attempt: request.attempt,
            status,
            description: request.description,
            excerpt: request.excerpt,
            trace_id: request.trace_id,
            error: request.error,
            duration_ms: request.duration_ms,
            priority: request.priority,
            labels: request.labels.into_iter().collect(),
            notify: request.notify,
            key_name: request.key_name,
        })
    }
}

/// Longest alert key accepted.
const MAX_KEY_CHARS: usize = 200;

/// Checks an alert key: 1–200 printable characters without spaces or backticks.
pub fn validate_key(key: &str) -> Result<(), AlerterError> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS {
        return Err(AlerterError::invalid(
            "key",
            format!("must be 1 to {MAX_KEY_CHARS} characters"),
        ));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '`' || *c == '*')
    {
        return Err(AlerterError::invalid(
            "key",
            format!("must not contain {bad:?}"),
        ));
    }
    Ok(())
}

fn severity_from_wire(value: i32) -> Result<Severity, AlerterError> {
    match wire::Severity::try_from(value) {
        Ok(wire::Severity::Info) => Ok(Severity::Info),
        Ok(wire::Severity::Warning | wire::Severity::Unspecified) => Ok(Severity::Warning),
        Ok(wire::Severity::Critical) => Ok(Severity::Critical),
        Err(_) => Err(AlerterError::invalid(
            "severity",
            format!("unknown severity {value}"),
        )),
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
        let outcome = PatchOutcome::try_from(request.into_inner())?;
        // Refused while the disk is failing: the caller's outbox keeps it and retries.
        if let Some(status) = self.store.health().unavailable() {
            return Err(status);
        }
        let accepted = self.patches.accept(&outcome, current_traceparent()).await?;
        tracing::info!(accepted, "notify received");
        Ok(Response::new(wire::NotifyResponse { accepted }))
    }

    #[tracing::instrument(skip_all, fields(
        key = %request.get_ref().key,
        resolved = request.get_ref().resolved,
    ))]
    async fn alert(
        &self,
        request: Request<wire::AlertRequest>,
    ) -> Result<Response<wire::AlertResponse>, Status> {
        let request = request.into_inner();
        validate_key(&request.key)?;
        let severity = severity_from_wire(request.severity)?;
        // Refused while the disk is failing: the caller retries (its outbox, or the storage
        // reporter's backoff).
        if let Some(status) = self.store.health().unavailable() {
            return Err(status);
        }
        // Seen first, acted on, then recorded: raising an active alert again and resolving an
        // inactive one change nothing, so a call whose record failed (a full disk) is acted on
        // again when retried instead of being lost as a duplicate.
        if self
            .store
            .alert_event_seen(&request.key, request.resolved, request.at_unix_ms)
            .await
            .map_err(AlerterError::from)?
        {
            return Ok(Response::new(wire::AlertResponse { accepted: false }));
        }
        let key = request.key.clone();
        if request.resolved {
            self.lifecycle.resolve(&request.key).await?;
        } else {
            let summary = if request.summary.is_empty() {
                request.key.clone()
            } else {
                request.summary
            };
            let raise = RaiseAlert {
                key: request.key,
                severity,
                summary,
                labels: request.labels.into_iter().collect(),
                source: request.source,
            };
            self.lifecycle.raise(raise, current_traceparent()).await?;
        }
        let accepted = self
            .store
            .accept_alert_event(&key, request.resolved, request.at_unix_ms)
            .await
            .map_err(AlerterError::from)?;
        Ok(Response::new(wire::AlertResponse { accepted }))
    }
}
