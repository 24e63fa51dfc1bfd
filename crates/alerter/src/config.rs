//! [`AlerterConfig`]: where messages go and how hard to try.

use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// The alerter's configuration (`GHOST_ALERTER__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterConfig {
    /// Listen addresses and drain timings.
    pub server: ServerConfig,
    /// Logs and span export.
    pub telemetry: TelemetryConfig,
    /// The Slack Web API.
    pub slack: SlackConfig,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50054, 8084),
            telemetry: TelemetryConfig::default(),
            slack: SlackConfig::default(),
        }
    }
}

/// How to reach Slack (`GHOST_ALERTER__SLACK__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Web API base URL, e.g. `https://slack.com/api`; unset: Slack is off and messages are
    /// only logged.
    pub api_base_url: Option<String>,
    /// Bot token (`xoxb-…`), sent as `Authorization: Bearer`.
    pub bot_token: Secret,
    /// Channel to post to, by name or id.
    pub channel: String,
    /// Tries per message before giving up, the first included.
    pub max_attempts: u32,
    /// Wait before the second try; doubles for each further try.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            api_base_url: None,
            bot_token: Secret::default(),
            channel: "#ghost-runner".to_owned(),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
        }
    }
}
