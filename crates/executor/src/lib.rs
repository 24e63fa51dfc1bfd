//! The executor runs next to a workspace and applies patches to it.
//!
//! It dials the router's `Work` stream (so it works behind NAT; over TLS for an `https://`
//! router, reconnecting with jittered backoff and saying once why it was refused), announces
//! its workspaces, applies each assigned patch confined to the workspace root, and reports the
//! result with its trace context so the apply span joins the patch's trace. It serves only
//! health, metrics and reflection itself.
//!
//! An attempt ([`apply`]) plans every edit in memory ([`plan`]), journals the originals
//! ([`journal`]), writes (every file operation relative to directory handles: [`beneath`]), runs commands and checks under the target's policy ([`commands`]), gathers what their
//! output reports into the report's diagnostics (`diagnose`),
//! and commits or rolls back; the [`ledger`] makes a re-delivered patch a no-op. A succeeded
//! patch's journal is kept as its revert record (`revert`), from which a revert patch
//! restores its pre-images (or from its git commit once the record is gone). On start a
//! leftover journal is rolled back and reported `interrupted` once the router is connected.

#![warn(missing_docs, clippy::too_many_lines)]

pub mod agent;
mod app;
pub mod apply;
pub mod beneath;
pub mod commands;
pub mod config;
mod connection;
mod diagnose;
pub mod diff;
pub mod dry_run;
mod error;
mod git;
pub mod journal;
pub mod ledger;
pub mod plan;
mod revert;
pub mod snapshot;
mod standby;
mod storage;
pub mod workspace;

pub use app::App;
pub use config::{
    AgentConfig, CommandPolicy, ExecutorConfig, OwnerCheck, SandboxMode, TargetPolicy, When,
    WorkspaceConfig,
};

/// For the crash tests only: in a debug build, milliseconds to pause after each file written
/// while applying (read once, by [`App::build`]); a release build ignores it.
pub const TEST_WRITE_DELAY_VAR: &str = "GHOST_TEST_EXECUTOR_WRITE_DELAY_MS";

/// Service name in logs, traces, metrics and the environment prefix.
pub const SERVICE: &str = "executor";
