//! [`SummarizerConfig`]: where summaries live, whom to notify, and when to archive.

use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::ServerConfig;
pub use ghost_runtime::config::StoreConfig;
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

use crate::webhooks::subscription::Subscription;

/// The summarizer's configuration (`GHOST_SUMMARIZER__…`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummarizerConfig {
    /// Listen addresses and drain timings.
    pub server: ServerConfig,
    /// Logs and span export.
    pub telemetry: TelemetryConfig,
    /// Root of the summarizer's state: `summarizer.db` (index and notify outbox) and
    /// `summaries/<target>/` (summary files, artifacts, manifest, archive).
    pub data_dir: PathBuf,
    /// Where the index lives (`[store]`): unset, SQLite in `data_dir`.
    pub store: StoreConfig,
    /// The alerter's gRPC endpoint, e.g. `http://127.0.0.1:50054`; unset: nobody is notified.
    pub alerter_url: Option<String>,
    /// Link to a trace in the summary; `{trace_id}` is replaced by the trace id.
    pub jaeger_url_template: String,
    /// Summaries whose last attempt ended longer ago than this move to
    /// `summaries/<target>/.archive/YYYY-MM/`; unset: never archived.
    #[serde(with = "humantime_serde")]
    pub archive_after: Option<Duration>,
    /// How often the archive task runs.
    #[serde(with = "humantime_serde")]
    pub archive_interval: Duration,
    /// Archived summaries whose last attempt ended longer ago than this are deleted; unset:
    /// kept forever.
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Longest text returned to a model (`Summary.model_text`), in characters.
    pub model_text_chars: usize,
    /// Transitions kept in each target's `patch-manifest.json` changelog.
    pub changelog_len: usize,
    /// How long a target's `patch-manifest.json` may lag behind its summaries: records within
    /// this window share one rewrite (the manifest lists every patch, so a rewrite per record
    /// costs O(patches) each). Once rewrites get slow the lag grows to nine times the last
    /// rewrite's duration, so they never take more than a tenth of a thread. Zero: every
    /// record rewrites it before answering.
    #[serde(with = "humantime_serde")]
    pub manifest_delay: Duration,
    /// Wait before retrying a failed notification; doubles per failure up to `notify_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub notify_initial_backoff: Duration,
    /// Longest wait between two tries of one notification.
    #[serde(with = "humantime_serde")]
    pub notify_max_backoff: Duration,
    /// Deadline of one `Notify` call.
    #[serde(with = "humantime_serde")]
    pub notify_timeout: Duration,
    /// How long a replica's claim on an outbox row (a notification, a webhook) keeps the other
    /// replicas on the same database off it; a dead replica's rows are sent by another this
    /// long after it claimed them. Longer than `notify_timeout` and `webhook_timeout`.
    #[serde(with = "humantime_serde")]
    pub outbox_claim_timeout: Duration,
    /// Push subscriptions: each terminal outcome an entry wants is POSTed to its `url` as a
    /// Standard Webhooks message signed with its `secret` (`[[subscriptions]]` in
    /// `ghost.toml`). An entry breaking a rule (the SSRF guard among them) is refused at load.
    #[serde(deserialize_with = "crate::webhooks::subscription::deserialize_checked")]
    pub subscriptions: Vec<Subscription>,
    /// Link to a patch's summary in webhook payloads (`data.summary.url`); `{patch_id}` is
    /// replaced. Unset: no link.
    pub summary_url_template: Option<String>,
    /// Wait before retrying a failed webhook; doubles per failure up to `webhook_max_backoff`,
    /// less a random part of up to half.
    #[serde(with = "humantime_serde")]
    pub webhook_initial_backoff: Duration,
    /// Longest wait between two tries of one webhook.
    #[serde(with = "humantime_serde")]
    pub webhook_max_backoff: Duration,
    /// A webhook still failing this long after its first try is dead-lettered.
    #[serde(with = "humantime_serde")]
    pub webhook_give_up_after: Duration,
    /// Deadline of one webhook POST.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Most webhook messages waiting in the outbox; a message queued beyond it is
    /// dead-lettered at once (reason "outbox full"), logged as an error and counted in
    /// `ghost_webhook_outbox_full_total`; the record itself always succeeds.
    pub webhook_outbox_max: u64,
    /// Most dead letters kept; the oldest beyond it are deleted.
    pub webhook_dead_letter_max: u64,
    /// Dead letters older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub webhook_dead_letter_max_age: Duration,
}

impl Default for SummarizerConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50053, 8083),
            telemetry: TelemetryConfig::default(),
            data_dir: PathBuf::from("./.ghost/summarizer"),
            store: StoreConfig::default(),
            alerter_url: None,
            jaeger_url_template: "http://127.0.0.1:16686/trace/{trace_id}".to_owned(),
            archive_after: Some(Duration::from_secs(30 * 24 * 3600)),
            archive_interval: Duration::from_secs(3600),
            retention: None,
            model_text_chars: crate::render::MODEL_TEXT_CHARS,
            changelog_len: 200,
            manifest_delay: Duration::from_millis(500),
            notify_initial_backoff: Duration::from_millis(500),
            notify_max_backoff: Duration::from_secs(60),
            notify_timeout: Duration::from_secs(10),
            outbox_claim_timeout: Duration::from_secs(60),
            subscriptions: Vec::new(),
            summary_url_template: None,
            webhook_initial_backoff: Duration::from_secs(1),
            webhook_max_backoff: Duration::from_secs(300),
            webhook_give_up_after: Duration::from_secs(24 * 3600),
            webhook_timeout: Duration::from_secs(10),
            webhook_outbox_max: 100_000,
            webhook_dead_letter_max: 10_000,
            webhook_dead_letter_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghost_runtime::config::Secret;

    #[test]
    fn old_config_files_still_load_and_durations_parse() {
        let config: SummarizerConfig = serde_json::from_value(serde_json::json!({
            "data_dir": "/tmp/x",
            "alerter_url": "http://127.0.0.1:1",
        }))
        .unwrap();
        assert_eq!(config.model_text_chars, 100_000);
        assert_eq!(config.retention, None);
        let config: SummarizerConfig = serde_json::from_value(serde_json::json!({
            "archive_after": "7days",
            "retention": "365days",
            "notify_max_backoff": "30s",
        }))
        .unwrap();
        assert_eq!(config.archive_after, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(config.notify_max_backoff, Duration::from_secs(30));
        assert!(
            serde_json::from_value::<SummarizerConfig>(serde_json::json!({"archive_afer": "1s"}))
                .is_err()
        );
    }

    #[test]
    fn defaults_survive_the_config_layers_and_env_overrides_apply() {
        let env = [
            ("GHOST_SUMMARIZER__RETENTION", "90days"),
            ("GHOST_SUMMARIZER__MODEL_TEXT_CHARS", "5000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config: SummarizerConfig =
            ghost_runtime::config::load_from("summarizer", None, env).unwrap();
        assert_eq!(config.retention, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(config.model_text_chars, 5000);
        assert_eq!(config.archive_after, Some(Duration::from_secs(30 * 86_400)));
        let plain: SummarizerConfig =
            ghost_runtime::config::load_from("summarizer", None, Default::default()).unwrap();
        assert_eq!(plain.retention, None);
        assert!(ghost_runtime::config::render(&plain).is_ok());
    }

    #[test]
    fn store_url_is_sqlite_when_unset_postgres_when_so_and_a_secret_in_dumps() {
        assert_eq!(StoreConfig::default().postgres_url(), Ok(None));
        let url = "postgres://ghost:hunter2@db.internal:5432/ghost";
        let env = [("GHOST_SUMMARIZER__STORE__URL".to_owned(), url.to_owned())]
            .into_iter()
            .collect();
        let config: SummarizerConfig =
            ghost_runtime::config::load_from("summarizer", None, env).unwrap();
        assert_eq!(config.store.postgres_url(), Ok(Some(url)));
        let printed = ghost_runtime::config::render(&config).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!format!("{config:?}").contains("hunter2"));
        // From a file (a Kubernetes or compose secret), as `…__STORE__URL_FILE`.
        let secrets = tempfile::tempdir().unwrap();
        let file = secrets.path().join("summarizer-db-url");
        std::fs::write(&file, format!("{url}\n")).unwrap();
        let env = [(
            "GHOST_SUMMARIZER__STORE__URL_FILE".to_owned(),
            file.to_string_lossy().into_owned(),
        )]
        .into_iter()
        .collect();
        let config: SummarizerConfig =
            ghost_runtime::config::load_from("summarizer", None, env).unwrap();
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
