//! The gateway is the only public HTTP door for patches.
//!
//! Callers: GPT Actions (OpenAPI 3.1 at `/openapi.json`), MCP clients (`/mcp`), signed webhooks,
//! files dropped into the inbox directory, scripts and the `ghost` CLI. Callees: the router
//! (Submit, Get, Wait, DryRun, Revert, Events, List, Cancel, Retry, Pause, Resume, ListTargets,
//! ListExecutors, GetStats, and the executor-token admin calls behind `/v1/executor-tokens`), the summarizer (summary text) and, when configured, the alerter (ListAlerts).
//! Patches arrive as JSON or YAML, in v1 or a legacy shape that ghost-core normalises. It keeps no patch state (its only file is
//! `<data_dir>/api-keys.json`, the hashes of keys created at runtime): `202` is sent
//! only after the router has committed the patch; when the router cannot be reached the answer
//! is `503` with `Retry-After`, never a success that is then lost. Refusals are
//! `application/problem+json` naming the JSON pointer or line:column at fault. The web dashboard
//! ([`ui`], at `/ui`) renders the same data as HTML behind a cookie session.
//! The guide for models ([`guide`]) is served, without a credential, at `/v1/guide` and to MCP
//! clients as the prompt `ghost_patch_guide` and the resource `ghost://guide`.

mod api_keys;
mod app;
pub mod auth;
mod clients;
pub mod config;
mod deliveries;
pub mod dry_run;
mod error;
mod executor_tokens;
pub mod fleet;
mod guard;
pub mod guide;
mod http;
mod inbox;
pub mod known_targets;
mod long_poll;
mod mcp;
mod openapi;
pub mod patches;
mod public_pages;
pub mod report;
pub mod ui;
mod upstream;

pub use app::App;
pub use config::GatewayConfig;

/// Service name in logs, traces, metrics and the environment prefix.
pub const SERVICE: &str = "gateway";
