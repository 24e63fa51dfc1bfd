//! The alerter owns all Slack traffic and the health of the system.
//!
//! Called by the summarizer (`Notify`: one Slack thread per patch, idempotent by (patch id,
//! attempt)), by the router (`Alert`: stale queues, lost executors, lost patches) and by Slack
//! itself (`POST /slack/commands`, `POST /slack/interactions`, signed v0). Calls the Slack Web
//! API (`chat.postMessage`, `chat.update`) or an incoming webhook through a durable outbox
//! (SQLite, or PostgreSQL shared by replicas), the router's and summarizer's gRPC APIs for
//! `/ghost` verbs, and every service's `grpc.health.v1` for the health monitor.
//!
//! - [`config`] — [`AlerterConfig`] and its parts.
//! - [`app`] — [`App`], wiring everything and serving.
//! - [`grpc`] — the `AlerterService` adapter (wire ↔ domain).
//! - [`patches`] — patch outcomes → own thread or digest, as [`routing`] decides.
//! - [`lifecycle`] — system alerts: group, repeat, escalate, ack, silence, resolve; their
//!   typed state is [`alert::AlertState`].
//! - [`listing`] — the read-only `AlerterReadService` (`ListAlerts`) for dashboards.
//! - [`health`] — the health monitor; [`leader`] — which replica runs it and the alert
//!   timers.
//! - [`outbox`] — store-first Slack delivery: order per thread, pacing, backoff, dead letters.
//! - [`slack`] — the Web API and webhook clients and how their answers are read.
//! - [`messages`] — Block Kit bodies; [`mrkdwn`] — caller text escaped for them.
//! - [`inbound`] — the signed Slack routes; [`signing`] — v0 verification.
//! - [`commands`] — the `/ghost` verbs, operators and the audit log.
//! - [`store`] — the database (SQLite or PostgreSQL); time comes from
//!   [`ghost_runtime::clock::RuleClock`], injected.
//! - [`error`] — [`AlerterError`] and its mapping to `tonic::Status` and HTTP.

pub mod alert;
pub mod app;
pub mod commands;
pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod inbound;
pub mod leader;
pub mod lifecycle;
pub mod listing;
pub mod messages;
pub mod mrkdwn;
pub mod outbox;
pub mod patches;
pub mod routing;
pub mod signing;
pub mod slack;
pub mod storage;
pub mod store;

pub use app::App;
pub use config::{AlertPolicy, AlerterConfig, HealthConfig, SlackConfig};
pub use error::AlerterError;

/// The service name: binary, `service.name`, env prefix `GHOST_ALERTER`.
pub const SERVICE: &str = "alerter";
