//! [`SummarizerConfig`]: where summaries live and whom to notify.

use std::path::PathBuf;

use ghost_runtime::config::ServerConfig;
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// The summarizer's configuration (`GHOST_SUMMARIZER__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummarizerConfig {
    /// Listen addresses and drain timings.
    pub server: ServerConfig,
    /// Logs and span export.
    pub telemetry: TelemetryConfig,
    /// Root of the summary files; summaries go to `<data_dir>/summaries/<target>/`.
    pub data_dir: PathBuf,
    /// The alerter's gRPC endpoint, e.g. `http://127.0.0.1:50054`; unset: nobody is notified.
    pub alerter_url: Option<String>,
    /// Link to a trace in the summary; `{trace_id}` is replaced by the trace id.
    pub jaeger_url_template: String,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50053, 8083),
            telemetry: TelemetryConfig::default(),
            data_dir: PathBuf::from("./.ghost/summarizer"),
            alerter_url: None,
            jaeger_url_template: "http://127.0.0.1:16686/trace/{trace_id}".to_owned(),
        }
    }
}
