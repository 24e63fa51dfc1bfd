//! [`AlerterConfig`]: where messages go, how hard to try, how alerts behave, what to watch.
//!
//! Every field has a default, so older config files (and `..Default::default()` callers) keep
//! working as fields are added.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use ghost_runtime::config::StoreConfig;
use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::routing::RoutingConfig;

/// The alerter's configuration (`GHOST_ALERTER__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlerterConfig {
    /// Listen addresses and drain timings.
    pub server: ServerConfig,
    /// Logs and span export.
    pub telemetry: TelemetryConfig,
    /// The Slack Web API, webhook, signing secret and operators.
    pub slack: SlackConfig,
    /// Directory of the SQLite database (`alerter.db`: outbox, alerts, silences, audit);
    /// unset: an in-memory database, so a restart forgets pending messages (tests only).
    /// Not used when `store.url` names a PostgreSQL database.
    pub data_dir: Option<PathBuf>,
    /// Where the database lives (`[store]`): unset, SQLite in `data_dir`.
    pub store: StoreConfig,
    /// gRPC URL of the router (Slack verbs, executor presence), e.g. `http://127.0.0.1:50051`.
    pub router_url: Option<String>,
    /// gRPC URL of the summarizer (`/ghost summary`), e.g. `http://127.0.0.1:50053`.
    pub summarizer_url: Option<String>,
    /// Grouping, repeat and escalation of system alerts.
    pub alerts: AlertPolicy,
    /// The health monitor.
    pub health: HealthConfig,
    /// Routes (channel, mention, own thread or digest), digests and the backlog switch.
    pub routing: RoutingConfig,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50054, 8084),
            telemetry: TelemetryConfig::default(),
            slack: SlackConfig::default(),
            data_dir: None,
            store: StoreConfig::default(),
            router_url: None,
            summarizer_url: None,
            alerts: AlertPolicy::default(),
            health: HealthConfig::default(),
            routing: RoutingConfig::default(),
        }
    }
}

/// How to reach Slack and who may steer from it (`GHOST_ALERTER__SLACK__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlackConfig {
    /// Web API base URL, e.g. `https://slack.com/api`; unset (and no webhook): Slack is off
    /// and messages are only logged.
    pub api_base_url: Option<String>,
    /// Bot token (`xoxb-…`), sent as `Authorization: Bearer`; empty: webhook only.
    pub bot_token: Secret,
    /// Incoming webhook URL, used when there is no bot token or the Web API refuses the
    /// token; empty: none.
    pub webhook_url: Secret,
    /// Channel to post to, by name or id.
    pub channel: String,
    /// Signing secret of the Slack app; empty: `/slack/*` refuses every request.
    pub signing_secret: Secret,
    /// Slack user ids allowed to run mutating verbs (retry, cancel, revert, pause, ack, silence…).
    pub operators: Vec<String>,
    /// Tries per message before it is dead-lettered, the first included.
    pub max_attempts: u32,
    /// Wait before the second try; doubles for each further try.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of one backoff wait (and of an honoured `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Least time between two messages to one channel (Slack allows about one per second).
    #[serde(with = "humantime_serde")]
    pub pacing: Duration,
    /// Slack calls in flight at once: each delivery round sends up to this many messages
    /// concurrently (the oldest pending message of distinct threads; with `pacing` above zero
    /// at most one per channel) and records their results in one transaction. At least 1.
    #[serde(deserialize_with = "at_least_one")]
    pub concurrency: u32,
    /// How long a slash command may take before the answer moves to `response_url`.
    #[serde(with = "humantime_serde")]
    pub inline_answer_budget: Duration,
    /// Origins (`scheme://host[:port]`) a signed request's `response_url` may point to; a
    /// request naming any other (or a path other than Slack's `/commands/…` and `/actions/…`)
    /// is refused before its verb runs, so the alerter never posts to an address a caller
    /// chose; redirects are never followed. Default: Slack's hook hosts.
    pub response_url_origins: Vec<String>,
}

impl Default for SlackConfig {
    fn default() -> Self {
        Self {
            api_base_url: None,
            bot_token: Secret::default(),
            webhook_url: Secret::default(),
            channel: "#ghost-runner".to_owned(),
            signing_secret: Secret::default(),
            operators: Vec::new(),
            max_attempts: 12,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            pacing: Duration::from_secs(1),
            concurrency: 8,
            inline_answer_budget: Duration::from_millis(2_500),
            response_url_origins: vec![
                "https://hooks.slack.com".to_owned(),
                "https://hooks.slack-gov.com".to_owned(),
            ],
        }
    }
}

/// Reads `slack.concurrency`, refusing 0 with a clear error.
fn at_least_one<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(serde::de::Error::custom(
            "slack.concurrency must be at least 1 (got 0)",
        ));
    }
    Ok(value)
}

/// Alert lifecycle timings (`GHOST_ALERTER__ALERTS__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertPolicy {
    /// Alerts of one group (the key up to its first `/`) raised within this window share one
    /// message.
    #[serde(with = "humantime_serde")]
    pub group_wait: Duration,
    /// A firing, unacknowledged alert is repeated in its thread this often.
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// A firing alert nobody acknowledged within this time is escalated once.
    #[serde(with = "humantime_serde")]
    pub escalate_after: Duration,
    /// Where escalations go; unset: re-posted in the main channel with `escalation_mention`.
    pub escalation_channel: Option<String>,
    /// Prefix of an escalation, e.g. `<!here>` or `<@U0123>`.
    pub escalation_mention: String,
    /// How often timers are evaluated.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        Self {
            group_wait: Duration::from_secs(30),
            repeat_interval: Duration::from_secs(4 * 3600),
            escalate_after: Duration::from_secs(30 * 60),
            escalation_channel: None,
            escalation_mention: "<!here>".to_owned(),
            tick: Duration::from_secs(1),
        }
    }
}

/// The health monitor (`GHOST_ALERTER__HEALTH__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Services to watch over `grpc.health.v1`: name → gRPC URL.
    pub services: BTreeMap<String, String>,
    /// Watch executor presence through the router's `ListTargets` (needs `router_url`).
    pub watch_executors: bool,
    /// Time between two rounds of checks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one check.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// Consecutive failed checks before an alert is raised (hysteresis).
    pub failures_before_alert: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            services: BTreeMap::new(),
            watch_executors: true,
            interval: Duration::from_secs(15),
            check_timeout: Duration::from_secs(3),
            failures_before_alert: 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(env: &[(&str, &str)]) -> Result<AlerterConfig, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ghost_runtime::config::load_from("alerter", None, env).map_err(|err| err.to_string())
    }

    #[test]
    fn slack_concurrency_defaults_to_8_and_refuses_0() {
        assert_eq!(load(&[]).unwrap().slack.concurrency, 8);
        let three = load(&[("GHOST_ALERTER__SLACK__CONCURRENCY", "3")]).unwrap();
        assert_eq!(three.slack.concurrency, 3);
        let error = load(&[("GHOST_ALERTER__SLACK__CONCURRENCY", "0")]).unwrap_err();
        assert!(
            error.contains("slack.concurrency must be at least 1"),
            "{error}"
        );
    }

    #[test]
    fn store_url_is_sqlite_when_unset_postgres_when_so_and_a_secret_in_dumps() {
        assert_eq!(StoreConfig::default().postgres_url(), Ok(None));
        let url = "postgres://ghost:hunter2@db.internal:5432/ghost";
        let config = load(&[("GHOST_ALERTER__STORE__URL", url)]).unwrap();
        assert_eq!(config.store.postgres_url(), Ok(Some(url)));
        let printed = ghost_runtime::config::render(&config).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!format!("{config:?}").contains("hunter2"));
        // From a file (a Kubernetes or compose secret), as `…__STORE__URL_FILE`.
        let secrets = tempfile::tempdir().unwrap();
        let file = secrets.path().join("alerter-db-url");
        std::fs::write(&file, format!("{url}\n")).unwrap();
        let config = load(&[("GHOST_ALERTER__STORE__URL_FILE", &file.to_string_lossy())]).unwrap();
        assert_eq!(config.store.postgres_url(), Ok(Some(url)));
        for bad in ["mysql://root:hunter2@x/db", "hunter2", "sqlite:///tmp/x.db"] {
            let store = StoreConfig {
                url: Some(Secret::new(bad)),
            };
            let err = store.postgres_url().unwrap_err();
            assert!(err.contains("store.url"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn routing_keys_load_from_the_environment() {
        let config = load(&[
            ("GHOST_ALERTER__ROUTING__DIGEST_PERIOD", "5m"),
            ("GHOST_ALERTER__ROUTING__OPS_CHANNEL", "#ops"),
        ])
        .unwrap();
        assert_eq!(config.routing.digest_period, Duration::from_secs(300));
        assert_eq!(config.routing.ops_channel.as_deref(), Some("#ops"));
        assert_eq!(config.routing.digest_max_entries, 50);
    }
}
