//! The MCP endpoint (`/mcp`, streamable HTTP): tools `submit_patch`, `get_patch`,
//! `list_patches` and `cancel_patch` over the same logic and the same credentials as the API.
//! The guard in front of `/mcp` authenticates; each tool checks the caller's scope and targets.

use std::sync::Arc;

use ghost_core::Format;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, ServerCapabilities, ServerConfig};
use rmcp::schemars::JsonSchema;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
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
    /// The patch as a JSON object (v1 or a legacy shape).
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

fn answer<T: Serialize>(result: Result<T, GatewayError>) -> CallToolResult {
    match result {
        Ok(value) => {
            let text = serde_json::to_string(&value).unwrap_or_default();
            CallToolResult::success(vec![ContentBlock::text(text)])
        }
        Err(err) => CallToolResult::error(vec![ContentBlock::text(err.to_string())]),
    }
}

#[tool_router]
impl GhostMcp {
    /// Tools over `patches`.
    pub fn new(patches: Patches) -> Self {
        Self { patches }
    }

    #[tool(
        description = "Submit a code patch (JSON object in `patch`, or JSON/YAML text in `document`). Returns the id and status once the router has stored it."
    )]
    async fn submit_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<SubmitInput>,
    ) -> CallToolResult {
        let result = async {
            let caller = caller(&parts)?;
            let (body, format) = match (input.patch, input.document) {
                (Some(patch), None) => (patch.to_string(), Format::Json),
                (None, Some(document)) => {
                    let format = if document.trim_start().starts_with('{') {
                        Format::Json
                    } else {
                        Format::Yaml
                    };
                    (document, format)
                }
                _ => {
                    return Err(GatewayError::BadRequest(
                        "give exactly one of `patch` or `document`".to_owned(),
                    ));
                }
            };
            self.patches
                .submit(&caller, body.as_bytes(), format, None, None)
                .await
        }
        .await;
        answer(result)
    }

    #[tool(description = "Read one patch: status, attempts, error and, once ended, its summary.")]
    async fn get_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<IdInput>,
    ) -> CallToolResult {
        let result = async {
            let caller = caller(&parts)?;
            self.patches.detail(&caller, &input.id).await
        }
        .await;
        answer(result)
    }

    #[tool(description = "List patches, newest first, optionally by target and status.")]
    async fn list_patches(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<ListInput>,
    ) -> CallToolResult {
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
        .await;
        answer(result)
    }

    #[tool(description = "Cancel a queued or running patch (needs the admin scope).")]
    async fn cancel_patch(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(input): Parameters<IdInput>,
    ) -> CallToolResult {
        let result = async {
            let caller = caller(&parts)?;
            self.patches.cancel(&caller, &input.id).await
        }
        .await;
        answer(result)
    }
}

#[tool_handler]
impl ServerHandler for GhostMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "Ghost Runner: submit code patches to workspaces and read their outcome.",
        )
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
