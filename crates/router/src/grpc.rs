//! tonic adapter of `ghost.router.v1.RouterService`: wire → domain → [`Routing`] → wire.
//!
//! About 680 lines, and one thing on purpose: the 23 RPCs of `RouterService` side by side, each
//! a few lines of wire → domain → [`Routing`] → wire with the same error mapping. What is more
//! than an adapter lives beside it: the Work stream's session in `session.rs`, the executor's
//! hello in `hello.rs`.

mod hello;
mod session;

pub use hello::{RefusalAudit, refused_alert_key};

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ghost_core::{Patch, PatchId, TargetName};
use ghost_proto::convert::status_from_wire;
use ghost_proto::executor::v1::{
    ExecutorMessage, Hello, RouterMessage, Welcome, executor_message, router_message,
};
use ghost_proto::router::v1::{self as wire, router_service_server::RouterService};
use ghost_runtime::config::Secret;
use ghost_runtime::propagation::{current_traceparent, trace_id_of};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Streaming};
use tracing::Instrument;

use crate::error::RouterError;
use crate::revert::Reverted;
use crate::routing::Routing;
use crate::store::{PatchRecord, now_ms};
use crate::tokens::LiveStream;
use crate::tokens::{ExecutorTokens, hash_secret};
use hello::{Credential, Peer, check_hello};
use session::SessionReader;

/// How long a new Work stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// The gRPC face of the router.
#[derive(Clone)]
pub struct RouterGrpc {
    /// The logic.
    pub routing: Arc<Routing>,
    /// Tracks the per-session reader tasks.
    pub tasks: TaskTracker,
    /// Cancelled on shutdown; ends every session.
    pub shutdown: CancellationToken,
    /// Token executors must present.
    pub executor_token: Secret,
    /// The deployment's service credential (resolved once from `internal_token` or
    /// `internal_token_file`); also opens the Work stream for every target.
    pub internal_token: Secret,
    /// Per-executor tokens and their live streams.
    pub tokens: Arc<ExecutorTokens>,
    /// Told to executors in Welcome.
    pub heartbeat_interval: Duration,
    /// The bound executor port (`executor_listen`): never opens an anonymous stream.
    pub executor_addr: Option<std::net::SocketAddr>,
    /// Coalesces refused Hellos into at most one audit row per token or peer a minute.
    pub refusal_audit: Arc<RefusalAudit>,
}

fn state_of(record: &PatchRecord) -> wire::PatchState {
    wire::PatchState {
        id: record.patch.id.to_string(),
        target: record.patch.target.to_string(),
        status: wire::PatchStatus::from(record.status) as i32,
        attempt: record.attempt,
        description: record.patch.description.clone(),
        content_hash: record.content_hash.clone(),
        trace_id: trace_id_of(&record.traceparent),
        error: record.error.clone(),
        created_unix_ms: record.created_ms,
        updated_unix_ms: record.updated_ms,
        report: record.report.as_ref().map(wire::ApplyReport::from),
    }
}

fn patch_id(field: &str, raw: &str) -> Result<PatchId, RouterError> {
    PatchId::parse(raw).map_err(|err| RouterError::InvalidArgument {
        field: field.to_owned(),
        message: err.to_string(),
    })
}

fn target_name(field: &str, raw: &str) -> Result<TargetName, RouterError> {
    TargetName::parse(raw).map_err(|err| RouterError::InvalidArgument {
        field: field.to_owned(),
        message: err.to_string(),
    })
}

fn actor_or(actor: String, fallback: &str) -> String {
    if actor.trim().is_empty() {
        fallback.to_owned()
    } else {
        actor
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same_secret(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// At most this many intake warnings are stored with a patch (the gateway sends at most 21).
const MAX_INTAKE_WARNINGS: usize = 32;
/// Longest stored intake warning, in bytes.
const MAX_INTAKE_WARNING_BYTES: usize = 256;

/// Refuses intake warnings beyond the caps, so a caller of the router cannot make every
/// read of a patch carry an unbounded list.
/// Longest submitting credential name kept with a patch.
const MAX_KEY_NAME_BYTES: usize = 200;

fn check_intake_warnings(warnings: &[String]) -> Result<(), RouterError> {
    if warnings.len() > MAX_INTAKE_WARNINGS {
        return Err(RouterError::InvalidArgument {
            field: "intake_warnings".to_owned(),
            message: format!(
                "at most {MAX_INTAKE_WARNINGS} warnings are stored, got {}",
                warnings.len()
            ),
        });
    }
    if let Some(index) = warnings
        .iter()
        .position(|warning| warning.len() > MAX_INTAKE_WARNING_BYTES)
    {
        return Err(RouterError::InvalidArgument {
            field: format!("intake_warnings/{index}"),
            message: format!(
                "a warning may be at most {MAX_INTAKE_WARNING_BYTES} bytes, got {}",
                warnings[index].len()
            ),
        });
    }
    Ok(())
}

/// The submitting credential's name: what the gateway's own key names allow, bounded.
fn check_key_name(name: &str) -> Result<(), RouterError> {
    let refuse = |message: String| {
        Err(RouterError::InvalidArgument {
            field: "key_name".to_owned(),
            message,
        })
    };
    if name.len() > MAX_KEY_NAME_BYTES {
        return refuse(format!(
            "at most {MAX_KEY_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return refuse("a control character is not allowed".to_owned());
    }
    Ok(())
}

/// A revert patch is built by the router's `Revert` only, never submitted (nor dry-run) as is.
fn refuse_revert(patch: &wire::Patch) -> Result<(), RouterError> {
    if !patch.revert_of.is_empty() || !patch.revert_commit.is_empty() {
        return Err(RouterError::InvalidArgument {
            field: "patch.revert_of".to_owned(),
            message: "a revert patch is not submitted: use Revert with the id of the patch to undo"
                .to_owned(),
        });
    }
    // Nor may a patch take the id a revert gets: `revert-X` stored ahead of time would be
    // answered as the revert of X.
    if ghost_core::is_revert_form(&patch.id) {
        return Err(RouterError::InvalidArgument {
            field: "patch.id".to_owned(),
            message: ghost_core::RESERVED_REVERT_ID.to_owned(),
        });
    }
    Ok(())
}

type WorkStream = Pin<Box<dyn Stream<Item = Result<RouterMessage, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl RouterService for RouterGrpc {
    #[tracing::instrument(skip_all, fields(patch_id))]
    async fn revert(
        &self,
        request: Request<wire::RevertRequest>,
    ) -> Result<Response<wire::RevertResponse>, tonic::Status> {
        let request = request.into_inner();
        let id = patch_id("id", &request.id)?;
        tracing::Span::current().record("patch_id", id.as_str());
        let traceparent = current_traceparent().unwrap_or_default();
        let answer = match self
            .routing
            .revert(id, actor_or(request.actor, "api"), traceparent)
            .await?
        {
            Reverted::Queued { record, created } => wire::RevertResponse {
                state: Some(state_of(&record)),
                created,
                conflicts: Vec::new(),
                error: String::new(),
            },
            Reverted::Conflicts { conflicts, error } => wire::RevertResponse {
                state: None,
                created: false,
                conflicts,
                error,
            },
        };
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all, fields(patch_id, target))]
    async fn dry_run(
        &self,
        request: Request<wire::DryRunRequest>,
    ) -> Result<Response<wire::DryRunResponse>, tonic::Status> {
        let wire_patch = request
            .into_inner()
            .patch
            .ok_or(RouterError::InvalidArgument {
                field: "patch".to_owned(),
                message: "required".to_owned(),
            })?;
        refuse_revert(&wire_patch)?;
        let patch = Patch::try_from(wire_patch).map_err(RouterError::from)?;
        tracing::Span::current().record("patch_id", patch.id.as_str());
        tracing::Span::current().record("target", patch.target.as_str());
        let mut report = self.routing.dry_run(&patch).await?;
        // Whatever the executor said, this answer is a dry run's.
        report.dry_run = true;
        Ok(Response::new(wire::DryRunResponse {
            report: Some(wire::ApplyReport::from(&report)),
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id))]
    async fn wait(
        &self,
        request: Request<wire::WaitRequest>,
    ) -> Result<Response<wire::GetResponse>, tonic::Status> {
        let request = request.into_inner();
        let id = patch_id("id", &request.id)?;
        tracing::Span::current().record("patch_id", id.as_str());
        let wait = Duration::from_millis(u64::from(request.wait_ms));
        let record = self.routing.wait(id.to_string(), wait).await?;
        Ok(Response::new(wire::GetResponse {
            state: Some(state_of(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id, target))]
    async fn submit(
        &self,
        request: Request<wire::SubmitRequest>,
    ) -> Result<Response<wire::SubmitResponse>, tonic::Status> {
        let wire::SubmitRequest {
            patch: wire_patch,
            intake_warnings,
            key_name,
        } = request.into_inner();
        let wire_patch = wire_patch.ok_or(RouterError::InvalidArgument {
            field: "patch".to_owned(),
            message: "required".to_owned(),
        })?;
        check_intake_warnings(&intake_warnings)?;
        check_key_name(&key_name)?;
        refuse_revert(&wire_patch)?;
        let patch = Patch::try_from(wire_patch).map_err(RouterError::from)?;
        tracing::Span::current().record("patch_id", patch.id.as_str());
        tracing::Span::current().record("target", patch.target.as_str());
        let traceparent = current_traceparent().unwrap_or_default();
        // Run to the end even if the caller gives up (a gateway timing out behind a partition
        // resets the stream): dropped between storing the patch and dispatching it, the patch
        // would stay queued with nothing to assign it, and the caller's retry finds it stored.
        let routing = Arc::clone(&self.routing);
        let stored = tokio::spawn(
            async move {
                routing
                    .submit(patch, "gateway", traceparent, intake_warnings, key_name)
                    .await
            }
            .instrument(tracing::Span::current()),
        )
        .await
        .map_err(|err| tonic::Status::internal(format!("submit task failed: {err}")))?;
        let (record, created) = stored?;
        Ok(Response::new(wire::SubmitResponse {
            state: Some(state_of(&record)),
            created,
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id))]
    async fn get(
        &self,
        request: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, tonic::Status> {
        let id = patch_id("id", &request.into_inner().id)?;
        tracing::Span::current().record("patch_id", id.as_str());
        let record = self
            .routing
            .store()
            .get(id.to_string())
            .await
            .map_err(RouterError::from)?
            .ok_or_else(|| RouterError::NotFound(id.to_string()))?;
        Ok(Response::new(wire::GetResponse {
            state: Some(state_of(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id))]
    async fn events(
        &self,
        request: Request<wire::EventsRequest>,
    ) -> Result<Response<wire::EventsResponse>, tonic::Status> {
        let id = patch_id("id", &request.into_inner().id)?;
        tracing::Span::current().record("patch_id", id.as_str());
        let store = self.routing.store();
        if store
            .get(id.to_string())
            .await
            .map_err(RouterError::from)?
            .is_none()
        {
            return Err(RouterError::NotFound(id.to_string()).into());
        }
        let events = store
            .events(id.to_string())
            .await
            .map_err(RouterError::from)?
            .into_iter()
            .map(|event| wire::Event {
                at_unix_ms: event.at_ms,
                at_unix_us: event.at_us,
                status: event.status,
                actor: event.actor,
                attempt: event.attempt,
                detail: event.detail,
            })
            .collect();
        Ok(Response::new(wire::EventsResponse { events }))
    }

    #[tracing::instrument(skip_all)]
    async fn list(
        &self,
        request: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, tonic::Status> {
        let request = request.into_inner();
        let target = if request.target.is_empty() {
            None
        } else {
            Some(target_name("target", &request.target)?.to_string())
        };
        let status = if request.status == 0 {
            None
        } else {
            Some(status_from_wire("status", request.status).map_err(RouterError::from)?)
        };
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            size => size.min(MAX_PAGE),
        };
        let offset: u64 = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| RouterError::InvalidArgument {
                    field: "page_token".to_owned(),
                    message: "not a token returned by List".to_owned(),
                })?
        };
        let records = self
            .routing
            .store()
            .list(target, status, limit, offset)
            .await
            .map_err(RouterError::from)?;
        let next_page_token = if records.len() == limit as usize {
            (offset + u64::from(limit)).to_string()
        } else {
            String::new()
        };
        Ok(Response::new(wire::ListResponse {
            patches: records.iter().map(state_of).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id))]
    async fn cancel(
        &self,
        request: Request<wire::CancelRequest>,
    ) -> Result<Response<wire::CancelResponse>, tonic::Status> {
        let request = request.into_inner();
        let id = patch_id("id", &request.id)?;
        tracing::Span::current().record("patch_id", id.as_str());
        let record = self
            .routing
            .cancel(id.to_string(), actor_or(request.actor, "api"))
            .await?;
        Ok(Response::new(wire::CancelResponse {
            state: Some(state_of(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(patch_id))]
    async fn retry(
        &self,
        request: Request<wire::RetryRequest>,
    ) -> Result<Response<wire::RetryResponse>, tonic::Status> {
        let request = request.into_inner();
        let id = patch_id("id", &request.id)?;
        tracing::Span::current().record("patch_id", id.as_str());
        let record = self
            .routing
            .retry(id.to_string(), actor_or(request.actor, "api"))
            .await?;
        Ok(Response::new(wire::RetryResponse {
            state: Some(state_of(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(target))]
    async fn pause(
        &self,
        request: Request<wire::PauseRequest>,
    ) -> Result<Response<wire::PauseResponse>, tonic::Status> {
        let target = target_name("target", &request.into_inner().target)?;
        self.routing.set_paused(target.to_string(), true).await?;
        Ok(Response::new(wire::PauseResponse {}))
    }

    #[tracing::instrument(skip_all, fields(target))]
    async fn resume(
        &self,
        request: Request<wire::ResumeRequest>,
    ) -> Result<Response<wire::ResumeResponse>, tonic::Status> {
        let target = target_name("target", &request.into_inner().target)?;
        self.routing.set_paused(target.to_string(), false).await?;
        Ok(Response::new(wire::ResumeResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_targets(
        &self,
        _request: Request<wire::ListTargetsRequest>,
    ) -> Result<Response<wire::ListTargetsResponse>, tonic::Status> {
        let targets = self
            .routing
            .targets()
            .await?
            .into_iter()
            .map(|view| wire::TargetState {
                target: view.row.target,
                queued: view.row.queued,
                paused: view.row.paused,
                executor_online: view.executor_online,
                oldest_queued_unix_ms: view.row.oldest_queued_ms,
                running_patch_id: view.row.running,
                finished: view.row.finished.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(wire::ListTargetsResponse { targets }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_executors(
        &self,
        _request: Request<wire::ListExecutorsRequest>,
    ) -> Result<Response<wire::ListExecutorsResponse>, tonic::Status> {
        let executors = self
            .routing
            .executors()
            .await
            .into_iter()
            .map(|view| wire::ExecutorState {
                executor_id: view.executor_id,
                session: view.session,
                targets: view.targets,
                connected_unix_ms: view.connected_ms,
                last_seen_unix_ms: view.last_seen_ms,
                running_patch_ids: view.running,
            })
            .collect();
        Ok(Response::new(wire::ListExecutorsResponse { executors }))
    }

    type WorkStream = WorkStream;

    async fn work(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::WorkStream>, tonic::Status> {
        let peer = self.peer_of(&request);
        let mut inbound = request.into_inner();
        let hello = read_hello(&mut inbound).await?;
        check_hello(&hello)?;
        let credential = self
            .credential(&hello.token, &hello.executor_id, peer)
            .await?;
        if hello.executor_id.trim().is_empty() {
            return Err(RouterError::InvalidArgument {
                field: "hello.executor_id".to_owned(),
                message: "required".to_owned(),
            }
            .into());
        }
        let targets = hello_targets(&hello)?;
        let anonymous = matches!(credential, Credential::Anonymous);
        let live = self.live_token(credential, &hello, &targets).await?;
        let (cut, cut_reason) = self.cut_of(live.as_ref(), anonymous);
        let (sender, receiver) = tokio::sync::mpsc::channel(32);
        let cut_sender = sender.clone();
        let welcome = RouterMessage {
            kind: Some(router_message::Kind::Welcome(Welcome {
                heartbeat_interval_ms: u32::try_from(self.heartbeat_interval.as_millis())
                    .unwrap_or(u32::MAX),
            })),
        };
        let _ = sender.send(Ok(welcome)).await;
        let routing = Arc::clone(&self.routing);
        let (session, owner) = routing
            .connect(
                &hello.executor_id,
                &targets,
                &hello.capabilities,
                sender,
                cut.clone(),
            )
            .await;
        let reader = SessionReader {
            routing,
            session,
            owner,
            executor_id: hello.executor_id.clone(),
            targets,
            cut,
            cut_reason,
            cut_sender,
            shutdown: self.shutdown.clone(),
        };
        self.tasks.spawn(reader.run(inbound, live));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl RouterGrpc {
    /// Where a Work stream comes from: its address, whether it is loopback, and whether it came
    /// in on the executor port.
    fn peer_of<T>(&self, request: &Request<T>) -> Peer {
        Peer {
            addr: request.remote_addr().map(|addr| addr.ip()),
            loopback: request
                .remote_addr()
                .is_some_and(|addr| addr.ip().is_loopback()),
            via_executor_port: match self.executor_addr {
                // Unknown local address: it may have been the executor port.
                Some(executor) => request.local_addr().is_none_or(|local| local == executor),
                None => false,
            },
        }
    }

    /// For a per-executor token: its scope checked, its use noted, and its live stream (cut on
    /// revocation), refused if it was revoked meanwhile. `None` for every other credential.
    async fn live_token(
        &self,
        credential: Credential,
        hello: &Hello,
        targets: &[String],
    ) -> Result<Option<(String, LiveStream)>, tonic::Status> {
        let Credential::Token(token) = credential else {
            return Ok(None);
        };
        self.check_scope(&token, &hello.executor_id, targets)
            .await?;
        if let Err(err) = self.tokens.store().token_used(token.id, now_ms()).await {
            tracing::warn!(error = %err, token = %token.name, "cannot note the token's last use");
        }
        let stream = self.tokens.open(&token.name);
        // A revocation between the lookup and `open` cut nothing: look again now
        // that a later one would find this stream.
        let current = self
            .tokens
            .store()
            .token_by_hash(hash_secret(&hello.token))
            .await
            .map_err(RouterError::from)?;
        if current.is_none_or(|row| row.revoked_ms != 0) {
            return Err(RouterError::Unauthenticated(format!(
                "executor token {} was revoked",
                token.name
            ))
            .into());
        }
        Ok(Some((token.name.clone(), stream)))
    }

    /// Cancelled when the token is revoked, or, for an anonymous stream, when the first
    /// token is created: the session keeps it so dispatch never assigns to a cut session
    /// (a revocation may land before the reader starts watching). With the reason told to
    /// the executor.
    fn cut_of(
        &self,
        live: Option<&(String, LiveStream)>,
        anonymous: bool,
    ) -> (CancellationToken, String) {
        match (live, anonymous) {
            (Some((name, stream)), _) => (
                stream.cut.clone(),
                format!("executor token {name} was revoked"),
            ),
            (None, true) => (
                self.tokens.anonymous_cut(),
                "an executor token was created: anonymous work streams are closed; say Hello \
                 with a credential"
                    .to_owned(),
            ),
            (None, false) => (CancellationToken::new(), String::new()),
        }
    }
}

/// The first message of a Work stream, which must be Hello (within [`HELLO_TIMEOUT`]).
async fn read_hello(inbound: &mut Streaming<ExecutorMessage>) -> Result<Hello, tonic::Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no Hello within 10s"))??;
    let Some(ExecutorMessage {
        kind: Some(executor_message::Kind::Hello(hello)),
    }) = first
    else {
        return Err(RouterError::InvalidArgument {
            field: "kind".to_owned(),
            message: "the first message on the Work stream must be Hello".to_owned(),
        }
        .into());
    };
    Ok(hello)
}

/// The targets a Hello claims, each once, validated; at least one.
fn hello_targets(hello: &Hello) -> Result<Vec<String>, RouterError> {
    let mut targets = Vec::with_capacity(hello.workspaces.len());
    for (index, workspace) in hello.workspaces.iter().enumerate() {
        let target = target_name(
            &format!("hello.workspaces[{index}].target"),
            &workspace.target,
        )?
        .to_string();
        // A target claimed twice is served once: the session joins its slot once.
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        return Err(RouterError::InvalidArgument {
            field: "hello.workspaces".to_owned(),
            message: "an executor must serve at least one target".to_owned(),
        });
    }
    Ok(targets)
}
