//! Gateway configuration.

use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// Everything the gateway reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Listen addresses (the HTTP one is the public API) and drain timings.
    pub server: ServerConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// gRPC URL of the router.
    pub router_url: String,
    /// gRPC URL of the summarizer, for summary text.
    pub summarizer_url: String,
    /// The API key callers present as `Authorization: Bearer <key>` or `X-Api-Key`. Required.
    pub api_key: Secret,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest summary text returned to a caller (a model's context is finite).
    pub summary_max_chars: usize,
    /// Deadline for one call to the router or summarizer.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50050, 8080),
            telemetry: TelemetryConfig::default(),
            router_url: "http://127.0.0.1:50051".to_owned(),
            summarizer_url: "http://127.0.0.1:50053".to_owned(),
            api_key: Secret::default(),
            max_body_bytes: 2 * 1024 * 1024,
            summary_max_chars: 100_000,
            upstream_timeout: Duration::from_secs(10),
        }
    }
}
