//! The summarizer turns every terminal outcome of a patch attempt into a human summary
//! (`summary-<id>.md`) and a machine one (`summary-<id>.json`) on disk, serves them over gRPC,
//! and tells the alerter about each outcome.
//!
//! Called by the router (`Record`, through its outbox, at least once per attempt) and by the
//! gateway and CLI (`Get`, `List`). Calls the alerter (`Notify`), in the background and with
//! retries, so `Record` never waits on Slack.
//!
//! - [`config`] — [`SummarizerConfig`].
//! - [`app`] — [`App`], wiring the store, the alerter client and the servers.
//! - [`grpc`] — the `SummarizerService` adapter (wire ↔ domain).
//! - [`summaries`] — the on-disk store and its in-memory index.
//! - [`render`] — the Markdown and JSON documents, as pure functions.
//! - [`notify`] — the background `Notify` call to the alerter.
//! - [`error`] — [`SummarizerError`] and its mapping to `tonic::Status`.

pub mod app;
pub mod config;
pub mod error;
pub mod grpc;
pub mod notify;
pub mod render;
pub mod summaries;

pub use app::App;
pub use config::SummarizerConfig;
pub use error::SummarizerError;

/// The service name: binary, `service.name`, env prefix `GHOST_SUMMARIZER`.
pub const SERVICE: &str = "summarizer";
