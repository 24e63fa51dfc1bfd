//! The gateway is the only public HTTP door for patches.
//!
//! Callers: GPT Actions, MCP clients, scripts and the `ghost` CLI, with an API key. Callees:
//! the router (Submit, Get) and the summarizer (summary text). It is stateless: `202` is sent
//! only after the router has committed the patch; when the router cannot be reached the answer
//! is `503` with `Retry-After`, never a success that is then lost. Refusals are
//! `application/problem+json` naming the JSON pointer or line:column at fault.

mod app;
pub mod config;
mod error;
mod http;
pub mod patches;
mod upstream;

pub use app::App;
pub use config::GatewayConfig;

/// Service name in logs, traces, metrics and the environment prefix.
pub const SERVICE: &str = "gateway";
