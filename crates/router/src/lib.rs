//! The router owns the patch lifecycle and the only durable queue of Ghost Runner.
//!
//! Callers: the gateway (Submit, Get, List, Cancel, Retry, DryRun, Revert), the alerter (pause/resume/retry
//! from Slack), and executors, which dial the `Work` stream to take leases. Callees: the
//! summarizer, which receives every terminal outcome through the outbox. Dashboards read
//! aggregates (patches per hour, stage latency) from the read-only `RouterStatsService`.
//! Admins issue per-executor tokens scoped to targets through `ExecutorTokenService` (the
//! gateway's `/v1/executor-tokens`); a Work stream's Hello must present one of them, the
//! shared `executor_token` or the service credential, unless none exists at all.
//! API keys made at run time (the gateway's `/v1/keys`) live here too, in `ApiKeyService`, so
//! every gateway replica shares them and learns a revocation at once.
//!
//! A patch is committed to SQLite before Submit answers; it is then leased to an executor of
//! its target, its result is stored with the outcome queued for the summarizer in the same
//! transaction, and the trace context of the submit is kept with the patch so every later
//! span joins the same trace.

mod api_keys;
mod app;
pub mod config;
mod dry_runs;
mod error;
mod gateway_state;
mod grpc;
mod outbox;
mod queue_ages;
mod revert;
mod routing;
mod stats;
mod store;
mod tokens;
mod waiters;

pub use app::App;
pub use config::RouterConfig;

/// Service name in logs, traces, metrics and the environment prefix.
pub const SERVICE: &str = "router";
