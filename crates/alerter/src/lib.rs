//! The alerter owns all Slack traffic: it turns each patch outcome it is told about into one
//! Slack message and delivers it with retries.
//!
//! Called by the summarizer (`Notify`, once per (patch id, attempt), possibly repeated). Calls
//! the Slack Web API (`chat.postMessage`), or only logs the message when Slack is not
//! configured. The rest of the alerter's job in DESIGN.md (a durable delivery outbox, alert
//! grouping, repeat and escalation, threads per patch, Slack commands and buttons, the health
//! monitor) are later issues; this crate is their home.
//!
//! - [`config`] — [`AlerterConfig`] and [`SlackConfig`].
//! - [`app`] — [`App`], wiring the queue, the delivery loop and the servers.
//! - [`grpc`] — the `AlerterService` adapter (wire ↔ domain).
//! - [`alerts`] — deduplication, the in-memory queue and the delivery loop.
//! - [`slack`] — the Slack message (Block Kit) and the Web API client with its retry rules.
//! - [`error`] — [`AlerterError`] and its mapping to `tonic::Status`.

pub mod alerts;
pub mod app;
pub mod config;
pub mod error;
pub mod grpc;
pub mod slack;

pub use app::App;
pub use config::{AlerterConfig, SlackConfig};
pub use error::AlerterError;

/// The service name: binary, `service.name`, env prefix `GHOST_ALERTER`.
pub const SERVICE: &str = "alerter";
