//! The MCP endpoint (`/mcp`, streamable HTTP): tools `submit_patch`, `check_patch` (a dry
//! run), `get_patch` (with an optional `wait`), `list_patches`, `cancel_patch` and
//! `revert_patch` (its conflicts are an error result carrying them) over the
//! same logic and the same credentials as the API; the prompt `ghost_patch_guide` and the
//! resource `ghost://guide` hold the guide for models ([`guide`]). The guard in front of `/mcp`
//! authenticates; each tool checks the caller's scope and targets.
//!
//! Every tool carries annotations (read-only, destructive, idempotent; never open-world: it
//! acts on this deployment only) and an `outputSchema` ([`schemas`]) that its structured
//! result follows. `submit_patch` called with a `progressToken` follows the patch: it waits
//! with the router's long poll in slices, sends a progress notification on each status
//! change, and returns the state when the patch ends or after [`PROGRESS_WAIT`].

mod guide;
mod schemas;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ghost_core::{Format, ParseBudget, PatchError};
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, GetPromptRequestParams, GetPromptResponse, ListPromptsResult,
    ListResourcesResult, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResponse, RequestMetaObject, ServerCapabilities,
    ServerConfig,
};
use rmcp::schemars::JsonSchema;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth::{Principal, Scope};
use crate::error::GatewayError;
use crate::patches::{ListFilter, Patches};

/// The MCP server: one per session, cheap to clone.
#[derive(Clone)]
pub struct GhostMcp {
    patches: Patches,
}

/// `submit_patch` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct SubmitInput {
    /// The patch as a JSON object (v1 or a legacy shape); a key repeated in one object of the
    /// request is refused before the tool runs.
    pub patch: Option<serde_json::Value>,
    /// Or the patch as JSON or YAML text.
    pub document: Option<String>,
}

/// Input naming one patch.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct IdInput {
    /// The patch id.
    pub id: String,
}

/// How long `get_patch` waits: seconds, or a duration string.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
#[serde(untagged)]
pub enum WaitInput {
    /// Seconds, e.g. 30.
    Seconds(f64),
    /// `30s`, `1500ms` or `30`.
    Text(String),
}

/// `get_patch` input.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct GetInput {
    /// The patch id.
    pub id: String,
    /// Wait until the patch ends, at most this long (at most 60 s): seconds (30) or a duration
    /// (`30s`, `1500ms`). Then its current state is answered.
    pub wait: Option<WaitInput>,
}

/// How long `submit_patch` follows a patch when the caller asked for progress.
pub const PROGRESS_WAIT: Duration = Duration::from_secs(40);
/// One long poll of that follow: a status change shows at the latest after this.
const PROGRESS_SLICE: Duration = Duration::from_secs(2);

fn wait_of(input: Option<WaitInput>) -> Result<Duration, GatewayError> {
    match input {
        None => Ok(Duration::ZERO),
        Some(WaitInput::Text(text)) => crate::long_poll::parse_wait("wait", &text),
        Some(WaitInput::Seconds(seconds)) => {
            if !seconds.is_finite() || !(0.0..=60.0).contains(&seconds) {
                return Err(GatewayError::BadRequest(format!(
                    "wait={seconds} is not a number of seconds from 0 to 60"
                )));
            }
            Ok(Duration::from_secs_f64(seconds))
        }
    }
}

/// `list_patches` input.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct ListInput {
    /// Only this target.
    pub target: Option<String>,
    /// Only this status, e.g. `queued`.
    pub status: Option<String>,
    /// Page size.
    pub page_size: Option<u32>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

fn caller(parts: &http::request::Parts) -> Result<Principal, GatewayError> {
    parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or(GatewayError::Unauthorized)
}

/// The span of the HTTP request that carried an MCP message. rmcp runs tools on its session
/// task, outside that span, so each tool reopens the request's trace from here: a caller's
/// `traceparent` then reaches the router like on the HTTP API.
#[derive(Clone)]
pub struct RequestSpan(pub tracing::Span);

/// Keeps the current (HTTP request) span in the request for the tools (see [`RequestSpan`]).
pub async fn keep_request_span(mut request: Request, next: Next) -> Response {
    request
        .extensions_mut()
        .insert(RequestSpan(tracing::Span::current()));
    next.run(request).await
}

/// A `DELETE /mcp` that ended its session is answered 204 No Content. The MCP library answers
/// 202, which the `mcp` Python SDK reports to its user as "Session termination failed: 202" (it
/// takes 200 or 204, and 405 for "not allowed"): nothing failed, so say so in its terms.
pub async fn session_end_no_content(request: Request, next: Next) -> Response {
    let delete = request.method() == http::Method::DELETE;
    let mut response = next.run(request).await;
    if delete && response.status() == http::StatusCode::ACCEPTED {
        *response.status_mut() = http::StatusCode::NO_CONTENT;
        *response.body_mut() = axum::body::Body::empty();
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
        response.headers_mut().remove(http::header::CONTENT_TYPE);
    }
    response
}

/// The span of one tool call, a child of the HTTP request that carried it.
fn tool_span(parts: &http::request::Parts, tool: &'static str) -> tracing::Span {
    let request = parts
        .extensions
        .get::<RequestSpan>()
        .map_or_else(tracing::Span::current, |span| span.0.clone());
    tracing::info_span!(
        parent: &request,
        "mcp.tool",
        otel.name = %format!("mcp {tool}"),
        mcp.tool = tool,
        patch_id = tracing::field::Empty,
    )
}

/// The structured result (also as text, for clients that read only content), or the error.
/// An error result (`isError`) carries text only: the MCP spec asks tools with an
/// `outputSchema` for conforming structured results on success, and clients (the Python and
/// TypeScript SDKs) check the schema only for results that are not errors.
fn answer<T: Serialize>(result: Result<T, GatewayError>) -> CallToolResult {
    match result.and_then(|value| {
        serde_json::to_value(value)
            .map_err(|err| GatewayError::Internal(format!("cannot write the answer: {err}")))
    }) {
        Ok(value) => CallToolResult::structured(value),
        Err(err) => CallToolResult::error(vec![ContentBlock::text(err.to_string())]),
    }
}

/// The document of a `submit_patch`/`check_patch` input and its format.
fn document_of(input: SubmitInput) -> Result<(String, Format), GatewayError> {
    match (input.patch, input.document) {
        (Some(patch), None) => Ok((patch.to_string(), Format::Json)),
        (None, Some(document)) => {
            let format = if document.trim_start().starts_with('{') {
                Format::Json
            } else {
                Format::Yaml
            };
            Ok((document, format))
        }
        _ => Err(GatewayError::BadRequest(
            "give exactly one of `patch` or `document`".to_owned(),
        )),
    }
}

#[tool_router]
impl GhostMcp {
    /// Tools over `patches`.
    pub fn new(patches: Patches) -> Self {
        Self { patches }
    }

    #[tool(
        description = "Submit a code patch (JSON object in `patch`, or JSON/YAML text in `document`). Returns the id and status once the router has stored it. Called with a progressToken (and the read scope), it follows the patch: a progress notification on each status change, and the result once the patch ends (or its state after 40 s); if following fails, the accepted result comes with `follow_error`.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schemas::submitted()
    )]
    async fn submit_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
        Parameters(input): Parameters<SubmitInput>,
    ) -> CallToolResult {
        let span = tool_span(&parts, "submit_patch");
        let result = async {
            let caller = caller(&parts)?;
            let (body, format) = document_of(input)?;
            let accepted = self
                .patches
                .submit(&caller, body.as_bytes(), format, None, None)
                .await?;
            let mut value = serde_json::to_value(&accepted)
                .map_err(|err| GatewayError::Internal(format!("cannot write the answer: {err}")))?;
            let Some(token) = meta.get_progress_token() else {
                return Ok(value);
            };
            // Following reads the patch: a caller without the read scope gets the accepted
            // result. The patch is queued whatever happens while following: a failure to
            // follow is said next to that result, never in place of it.
            if caller.require(Scope::Read).is_err() {
                value["follow_error"] = serde_json::Value::String(
                    "not followed: the credential lacks the read scope".to_owned(),
                );
                return Ok(value);
            }
            match self.follow(&caller, &accepted.id, token, &peer).await {
                Ok((status, error)) => {
                    value["status"] = serde_json::Value::String(status);
                    value["error"] = serde_json::Value::String(error);
                }
                Err(err) => {
                    tracing::info!(patch_id = %accepted.id, error = %err, "following a queued patch failed");
                    value["follow_error"] = serde_json::Value::String(err.to_string());
                }
            }
            Ok(value)
        }
        .instrument(span)
        .await;
        answer(result)
    }

    #[tool(
        description = "Check a code patch without applying it (a dry run; same input as submit_patch). The executor plans every edit against the workspace as it is now and writes nothing: the answer is the unified diff it would apply, the matching rung of every edit, and `status` succeeded, or rejected/failed with the `error`. Nothing is queued or stored; commands and checks are not run. It reads the workspace (the diff shows the lines around each change), so it needs the read scope as well as the submit scope.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schemas::dry_run()
    )]
    async fn check_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<SubmitInput>,
    ) -> CallToolResult {
        let span = tool_span(&parts, "check_patch");
        let result = async {
            let caller = caller(&parts)?;
            let (body, format) = document_of(input)?;
            self.patches
                .dry_run(&caller, body.as_bytes(), format, None)
                .await
        }
        .instrument(span)
        .await;
        answer(result)
    }

    #[tool(
        description = "Read one patch: status, attempts, error and, once ended, its summary and report. With `wait` (seconds, or `30s`/`1500ms`; at most 60) the answer comes as soon as the patch ends, or with its current state when the wait is over.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schemas::detail()
    )]
    async fn get_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<GetInput>,
    ) -> CallToolResult {
        let span = tool_span(&parts, "get_patch");
        let result = async {
            let caller = caller(&parts)?;
            let wait = wait_of(input.wait)?;
            self.patches.detail_waiting(&caller, &input.id, wait).await
        }
        .instrument(span)
        .await;
        answer(result)
    }

    #[tool(
        description = "List patches, newest first, optionally by target and status.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schemas::page()
    )]
    async fn list_patches(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<ListInput>,
    ) -> CallToolResult {
        let span = tool_span(&parts, "list_patches");
        let result = async {
            let caller = caller(&parts)?;
            // Models often send "" for "no filter": the tools treat that as absent.
            let given = |value: Option<String>| value.filter(|v| !v.is_empty());
            let filter = ListFilter::parse(
                given(input.target),
                given(input.status),
                input.page_size,
                given(input.page_token),
            )?;
            self.patches.list(&caller, &filter).await
        }
        .instrument(span)
        .await;
        answer(result)
    }

    #[tool(
        description = "Cancel a queued or running patch (needs the admin scope).",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schemas::view()
    )]
    async fn cancel_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<IdInput>,
    ) -> CallToolResult {
        let span = tool_span(&parts, "cancel_patch");
        let result = async {
            let caller = caller(&parts)?;
            self.patches.cancel(&caller, &input.id).await
        }
        .instrument(span)
        .await;
        answer(result)
    }

    #[tool(
        description = "Undo a succeeded patch: queues the patch `revert-<id>` restoring the files it changed, once the target's executor checked that none changed since (needs the admin scope, or the submit scope on the patch's target). Asking again answers the same revert (`replayed`). When files changed since, nothing is queued and the error result's text is the JSON `{\"error\": ..., \"conflicts\": [paths]}`.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        ),
        output_schema = schemas::submitted()
    )]
    async fn revert_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<IdInput>,
    ) -> CallToolResult {
        let span = tool_span(&parts, "revert_patch");
        let result = async {
            let caller = caller(&parts)?;
            self.patches.revert(&caller, &input.id).await
        }
        .instrument(span)
        .await;
        match result {
            // The files are data the model acts on: the `{error, conflicts}` JSON, as text
            // only like every other error result. structuredContent would have to fit the
            // tool's outputSchema (a patch's view), and clients check it even on an error.
            Err(GatewayError::RevertConflicts { error, conflicts }) => {
                let text = serde_json::json!({"error": error, "conflicts": conflicts}).to_string();
                CallToolResult::error(vec![ContentBlock::text(text)])
            }
            other => answer(other),
        }
    }
}

impl GhostMcp {
    /// Follows patch `id` for at most [`PROGRESS_WAIT`]: long polls in slices, a progress
    /// notification on each status change; returns the last status and error.
    async fn follow(
        &self,
        caller: &Principal,
        id: &str,
        token: rmcp::model::ProgressToken,
        peer: &Peer<RoleServer>,
    ) -> Result<(String, String), GatewayError> {
        let deadline = tokio::time::Instant::now() + PROGRESS_WAIT;
        let mut last = String::new();
        let mut step = 0u32;
        loop {
            let slice_started = tokio::time::Instant::now();
            let left = deadline.saturating_duration_since(slice_started);
            let slice = left.min(PROGRESS_SLICE);
            let detail = self.patches.detail_waiting(caller, id, slice).await?;
            let status = detail.view.status.as_str().to_owned();
            if status != last {
                step += 1;
                let note = ProgressNotificationParam::new(token.clone(), f64::from(step))
                    .with_message(format!("patch {id}: {status}"));
                if let Err(err) = peer.notify_progress(note).await {
                    tracing::info!(patch_id = %id, error = %err, "progress notification not delivered");
                }
                last = status.clone();
            }
            if detail.view.status.is_terminal() || left.is_zero() {
                return Ok((status, detail.view.error));
            }
            // Answered early without an end (the caller's long polls at their cap): at most
            // one read per slice.
            tokio::time::sleep_until(slice_started + slice).await;
        }
    }
}

#[tool_handler]
impl ServerHandler for GhostMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .build(),
        )
        .with_instructions(
            "Ghost Runner: submit code patches to workspaces and read their outcome. Read the prompt ghost_patch_guide (or the resource ghost://guide) before the first patch.",
        )
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(guide::prompts())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        guide::prompt(&request.name).map(GetPromptResponse::from)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(guide::resources())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        guide::resource(&request.uri).map(ReadResourceResponse::from)
    }
}

/// Refuses a JSON-RPC request to `/mcp` whose JSON repeats a key in one object, nests too deep
/// or passes the parse budget, before rmcp reads it: rmcp reads the tool arguments into a map
/// that keeps the last of repeated keys silently, so the `patch` object form would otherwise
/// escape the rule every other entry point keeps. Syntax errors are left to rmcp's own answer.
pub async fn strict_json(
    State(budget): State<ParseBudget>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != http::Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, budget.max_bytes).await else {
        return GatewayError::PayloadTooLarge(budget.max_bytes).into_response();
    };
    let checked = bytes.clone();
    let verdict = tokio::task::spawn_blocking(move || {
        match ghost_core::parse_document(&checked, Format::Json, &budget) {
            Err(
                err @ (PatchError::Invalid { .. }
                | PatchError::OverBudget { .. }
                | PatchError::DuplicateKey { .. }),
            ) => {
                // Only the id is read (the rest is skipped unbuilt), to answer in JSON-RPC.
                #[derive(Deserialize)]
                struct Envelope {
                    id: Option<serde_json::Value>,
                }
                let id = serde_json::from_slice::<Envelope>(&checked)
                    .ok()
                    .and_then(|envelope| envelope.id);
                Some((id, err.to_string()))
            }
            _ => None,
        }
    })
    .await;
    match verdict {
        Ok(None) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Some((id, message))) => {
            let answer = serde_json::json!({
                "jsonrpc": "2.0",
                "id": id,
                "error": {"code": -32602, "message": message},
            });
            axum::Json(answer).into_response()
        }
        Err(err) => {
            GatewayError::Internal(format!("the request reader failed: {err}")).into_response()
        }
    }
}

/// The `/mcp` tower service; sessions end when `shutdown` is cancelled.
pub fn service(
    patches: Patches,
    allowed_hosts: Vec<String>,
    shutdown: CancellationToken,
) -> StreamableHttpService<GhostMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    config.cancellation_token = shutdown;
    if !allowed_hosts.is_empty() {
        config.allowed_hosts.extend(allowed_hosts);
    }
    StreamableHttpService::new(
        move || Ok(GhostMcp::new(patches.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
