//! What every Ghost Runner service runs on, so that each service's `main.rs` stays a few lines
//! and every service behaves the same at its edges.
//!
//! - [`clock`]: rule time (wall clock read once, then monotonic) for leases, deadlines and
//!   backoff, injectable ([`clock::RuleClock`]: the system clock, or tokio's paused clock in
//!   tests); wall time for timestamps shown to people.
//! - [`config`]: the one place configuration is loaded (defaults → TOML file → `GHOST_<SVC>__KEY`
//!   environment), with `--print-config` and redacted [`config::Secret`]s.
//! - [`telemetry`]: the one place a tracing subscriber is built (fmt or JSON logs, a tracer that
//!   always makes trace ids, OTLP export when configured, per-service names under `ghost up`).
//! - [`propagation`]: W3C trace context across gRPC, HTTP and the router's stored contexts.
//! - [`shutdown`]: SIGINT/SIGTERM as a future.
//! - [`serve`]: gRPC (with `grpc.health.v1` and reflection) and HTTP (`/healthz`, `/readyz`,
//!   `/metrics`) servers with a bounded drain.
//! - [`connections`]: the HTTP accept loop (header read timeout, connections per address).
//! - [`tls`]: TLS on the listeners (rustls with ring): certificate loading and reloading, the
//!   first look at a connection to a TLS port.
//! - [`credential`]: the deployment's service credential on every gRPC server, and the method
//!   allow-list of a restricted listener.
//! - [`metrics`]: the Prometheus recorder.
//! - [`outbox`]: the one outbox engine (claim, send, backoff, settle, dead-letter, gauges) of
//!   every service that owes rows to a receiver.
//! - [`peers`]: deadlines and keep-alives of every gRPC client and server.
//! - [`probe`]: `--healthcheck`, the container health check run by the service binary itself.
//! - [`storage`]: storage health (a full or failing disk makes a service *degraded*: readiness,
//!   metrics and the `storage_unavailable/<service>` alert).
//!
//! Every service depends on this crate; it depends on `ghost-proto` only for the reflection
//! descriptors.

pub mod clock;
pub mod config;
pub mod connections;
pub mod credential;
pub mod metrics;
pub mod migrations;
pub mod outbox;
pub mod peers;
pub mod probe;
pub mod propagation;
pub mod red;
pub mod serve;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
pub mod tls;
