//! The summarizer turns every terminal outcome of a patch attempt into a human summary
//! (`summary-<id>.md`) and a machine one (`summary-<id>.json`) on disk, serves them over gRPC,
//! and tells the alerter about each outcome.
//!
//! Called by the router (`Record`, through its outbox, at least once per attempt) and by the
//! gateway, the alerter and the CLI (`Get`, `List`). Calls the alerter (`Notify`) from a durable
//! outbox with retries, so `Record` never waits on Slack and a restart never drops a message;
//! and POSTs each outcome to the push subscriptions that want it, from a second outbox.
//!
//! - [`config`] — [`SummarizerConfig`].
//! - [`app`] — [`App`], wiring the store, the outbox, the archiver and the servers.
//! - [`grpc`] — the `SummarizerService` adapter (wire ↔ domain).
//! - [`summaries`] — the store: summary files, artifacts, manifests, archive.
//! - [`index`] — the index on SQLite or PostgreSQL (`store.url`): idempotency keys, notify and
//!   webhook outboxes, changelog; on PostgreSQL the summary bodies too.
//! - [`doc`] — the summary's facts (`summary-<id>.json`) and how attempts merge.
//! - [`render`] — Markdown, model text and Slack excerpt, as pure functions.
//! - [`manifest`] — `patch-manifest.json`.
//! - [`atomic_file`] — crash-safe writes and moves.
//! - [`outbox`] — the store side of both outboxes on the one outbox engine
//!   ([`ghost_runtime::outbox`]: claim, send, settle, back off).
//! - [`notify`] — delivering the notify outbox to the alerter.
//! - [`webhooks`] — push subscriptions: Standard Webhooks from a durable outbox.
//! - [`error`] — [`SummarizerError`] and its mapping to `tonic::Status`.

pub mod app;
pub mod atomic_file;
pub mod config;
pub mod doc;
pub mod error;
pub mod grpc;
pub mod index;
pub mod manifest;
pub mod notify;
pub mod outbox;
pub mod render;
pub mod summaries;
pub mod webhooks;

pub use app::App;
pub use config::SummarizerConfig;
pub use error::SummarizerError;

/// The service name: binary, `service.name`, env prefix `GHOST_SUMMARIZER`.
pub const SERVICE: &str = "summarizer";
