//! The executor runs next to a workspace and applies patches to it.
//!
//! It dials the router's `Work` stream (so it works behind NAT), announces its workspaces,
//! applies each assigned patch confined to the workspace root, and reports the result with
//! its trace context so the apply span joins the patch's trace. It serves only health, metrics
//! and reflection itself.

mod app;
pub mod apply;
pub mod config;
mod connection;
mod error;

pub use app::App;
pub use config::{ExecutorConfig, WorkspaceConfig};

/// Service name in logs, traces, metrics and the environment prefix.
pub const SERVICE: &str = "executor";
