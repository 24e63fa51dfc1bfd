//! Router configuration.

use std::path::PathBuf;
use std::time::Duration;

pub use ghost_runtime::config::StoreConfig;
use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// Everything the router reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Listen addresses and drain timings.
    pub server: ServerConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Directory of the SQLite database (`router.db`), when `store.url` is unset.
    pub data_dir: PathBuf,
    /// Where the router's state lives (`[store]`): unset, SQLite in `data_dir`.
    pub store: StoreConfig,
    /// gRPC URL of the summarizer, e.g. `http://127.0.0.1:50053`; unset: outcomes wait in the
    /// outbox until one is configured.
    pub summarizer_url: Option<String>,
    /// gRPC URL of the alerter, e.g. `http://127.0.0.1:50054`; unset: alerts wait in the
    /// alert outbox until one is configured.
    pub alerter_url: Option<String>,
    /// A shared token for executors of every target, presented in Hello. Prefer per-executor
    /// tokens scoped to targets (`ghost token create`). Empty: only per-executor tokens and the
    /// service credential are accepted (and, with no credential of any kind and no token ever
    /// issued, any executor dialling the loopback gRPC port).
    pub executor_token: Secret,
    /// A second gRPC listener for executors on other machines: it serves only the `Work`
    /// stream and health, always over TLS (`server.tls.cert`/`key` must be set), and never
    /// opens an anonymous stream; off loopback it needs the service credential
    /// (`server.internal_token` or `server.internal_token_file`). Unset: none.
    pub executor_listen: Option<std::net::SocketAddr>,
    /// How often executors must heartbeat.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A lease not renewed for this long expires and its patch is requeued.
    #[serde(with = "humantime_serde")]
    pub lease_timeout: Duration,
    /// Attempts a patch may use (since submit or its last retry) before an interrupted one
    /// ends it as `lost`.
    pub max_attempts: u32,
    /// A queue whose oldest patch waited this long with no executor online raises
    /// `queue_stale/<target>`.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
    /// How often leases are checked for expiry and queues for staleness.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How long a replica's claim on an outbox row (an outcome, an alert) keeps the other
    /// replicas sharing `store.url` off it: a replica that dies while sending is taken over this
    /// long after it claimed. Longer than a delivery can take. Unused on SQLite (one router).
    #[serde(with = "humantime_serde")]
    pub outbox_claim_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50051, 8081),
            telemetry: TelemetryConfig::default(),
            data_dir: PathBuf::from("./.ghost/router"),
            store: StoreConfig::default(),
            summarizer_url: None,
            alerter_url: None,
            executor_token: Secret::default(),
            executor_listen: None,
            heartbeat_interval: Duration::from_secs(5),
            lease_timeout: Duration::from_secs(30),
            max_attempts: 3,
            stale_after: Duration::from_secs(300),
            sweep_interval: Duration::from_secs(2),
            outbox_claim_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_url_is_sqlite_when_unset_postgres_when_so_and_a_secret_in_dumps() {
        assert_eq!(StoreConfig::default().postgres_url(), Ok(None));
        let url = "postgres://ghost:hunter2@db.internal:5432/ghost";
        let env = [("GHOST_ROUTER__STORE__URL".to_owned(), url.to_owned())]
            .into_iter()
            .collect();
        let config: RouterConfig = ghost_runtime::config::load_from("router", None, env).unwrap();
        assert_eq!(config.store.postgres_url(), Ok(Some(url)));
        let printed = ghost_runtime::config::render(&config).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!format!("{config:?}").contains("hunter2"));
        let secrets = tempfile::tempdir().unwrap();
        let file = secrets.path().join("router-db-url");
        std::fs::write(&file, format!("{url}\n")).unwrap();
        let env = [(
            "GHOST_ROUTER__STORE__URL_FILE".to_owned(),
            file.to_string_lossy().into_owned(),
        )]
        .into_iter()
        .collect();
        let config: RouterConfig = ghost_runtime::config::load_from("router", None, env).unwrap();
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
}
