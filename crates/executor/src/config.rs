//! Executor configuration.

use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// One workspace served by this executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// The target name patches use, e.g. `MAIN`.
    pub target: String,
    /// The directory patches are applied to; must exist.
    pub root: PathBuf,
}

/// Everything the executor reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Listen addresses (health and metrics only) and drain timings.
    pub server: ServerConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// gRPC URL of the router this executor dials.
    pub router_url: String,
    /// Name shown in leases and events.
    pub executor_id: String,
    /// Token presented to the router.
    pub token: Secret,
    /// The executor's own state (journal, ledger); never writable by patches.
    pub state_dir: PathBuf,
    /// The workspaces served.
    pub workspaces: Vec<WorkspaceConfig>,
    /// Wait between reconnect attempts when the router is unreachable.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff: Duration,
    /// Largest file a patch may write.
    pub max_file_bytes: u64,
    /// Largest total a patch may write.
    pub max_patch_bytes: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50052, 8082),
            telemetry: TelemetryConfig::default(),
            router_url: "http://127.0.0.1:50051".to_owned(),
            executor_id: "executor-1".to_owned(),
            token: Secret::default(),
            state_dir: PathBuf::from("./.ghost/executor"),
            workspaces: vec![WorkspaceConfig {
                target: "MAIN".to_owned(),
                root: PathBuf::from("./workspace"),
            }],
            reconnect_backoff: Duration::from_secs(1),
            max_file_bytes: 10 * 1024 * 1024,
            max_patch_bytes: 50 * 1024 * 1024,
        }
    }
}
