//! The Prometheus recorder behind every service's `/metrics`, and the catalogue of every
//! metric Ghost Runner exports (name, type, help text), so `/metrics` always carries `# HELP`
//! and `# TYPE` lines and latency histograms have real buckets.
//!
//! The `metrics` facade has one recorder per process; in production each service is its own
//! process, and under `ghost up` the five services share one registry.
//!
//! Labels never carry names a client chose freely: the router labels a target by name only once
//! an executor has served it (every other target is `target="(other)"`), and gRPC calls to a
//! path nothing serves are `grpc_service="(unimplemented)"`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The kind of a catalogued metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution; seconds unless the name says otherwise.
    Histogram,
}

/// Every metric any Ghost Runner service records: (name, kind, help). A test checks that every
/// name recorded anywhere in the workspace is listed here.
pub const CATALOGUE: &[(&str, Kind, &str)] = &[
    (
        "ghost_storage_degraded",
        Kind::Gauge,
        "1 while the service's storage refuses writes (disk full, I/O errors, a failed or stalled fsync), else 0, by service.",
    ),
    (
        "ghost_storage_faults_total",
        Kind::Counter,
        "Storage faults met (a write or flush that failed or stalled), by service and kind (full, io, fsync, stall).",
    ),
    (
        "ghost_gateway_api_keys_stale",
        Kind::Gauge,
        "1 while the gateway cannot reach the router for the runtime API keys (it keeps the last ones learnt), else 0.",
    ),
    (
        "ghost_patches_submitted_total",
        Kind::Counter,
        "Patches newly stored by the router, by target.",
    ),
    (
        "ghost_patches_total",
        Kind::Counter,
        "Patches that reached a terminal state, by target and outcome.",
    ),
    (
        "ghost_queue_depth",
        Kind::Gauge,
        "Patches queued (waiting for a lease), by target.",
    ),
    (
        "ghost_queue_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest queued patch, by target, in seconds (measured by the router's monotonic clock: a wall-clock jump does not move it).",
    ),
    (
        "ghost_outbox_depth",
        Kind::Gauge,
        "Rows not yet delivered, by outbox (router: outcomes, alerts; summarizer: notifications; alerter: slack).",
    ),
    (
        "ghost_outbox_oldest_age_seconds",
        Kind::Gauge,
        "Age of the oldest row not yet delivered, by outbox (0 when empty), in seconds.",
    ),
    (
        "ghost_executors_connected",
        Kind::Gauge,
        "Executor sessions connected to the router, by target.",
    ),
    (
        "ghost_patch_stage_seconds",
        Kind::Histogram,
        "Time patches spend in each stage (queued, apply), in seconds.",
    ),
    (
        "ghost_router_commit_batch_size",
        Kind::Histogram,
        "Writes committed together by one router group commit.",
    ),
    (
        "ghost_router_waiters",
        Kind::Gauge,
        "Calls waiting in the router's Wait (long-poll) for a patch to end.",
    ),
    (
        "ghost_router_waiters_refused_total",
        Kind::Counter,
        "Wait calls refused because the router's cap on waiting calls was reached.",
    ),
    (
        "ghost_router_reverts_total",
        Kind::Counter,
        "Revert calls by outcome: queued (a revert patch stored), conflict (files changed since \
         the patch ended), refused (unknown or not succeeded patch, no executor, the check \
         failed). A replay of a stored revert is not counted.",
    ),
    (
        "ghost_router_reverts_checking",
        Kind::Gauge,
        "Patch ids whose revert the router is checking with an executor now (or waiting to).",
    ),
    (
        "ghost_executor_rollback_failures_total",
        Kind::Counter,
        "Rollbacks that could not restore the workspace byte for byte, by target.",
    ),
    (
        "ghost_executor_journal_blocked",
        Kind::Gauge,
        "1 while a target refuses patches because the journal of an earlier patch cannot be cleared.",
    ),
    (
        "ghost_executor_journals_unclosed",
        Kind::Gauge,
        "1 while a journal of an attempt that ended is still on disk (it could not be removed, or its rollback was incomplete), by target; 0 once cleared.",
    ),
    (
        "ghost_executor_active",
        Kind::Gauge,
        "1 while this executor holds the workspace lock of a target (active), 0 while it waits on standby; exported with `standby = true`.",
    ),
    (
        "ghost_executor_root_replaced_total",
        Kind::Counter,
        "Patches refused because a target's root is no longer the directory the executor opened at start (device or inode changed).",
    ),
    (
        "ghost_command_sweep_leftovers_total",
        Kind::Counter,
        "Processes of a patch's command still alive after the kill sweep's budget (retried by later sweeps).",
    ),
    (
        "ghost_summaries_recorded_total",
        Kind::Counter,
        "Record calls the summarizer answered, by whether the attempt was new (created) or a replay.",
    ),
    (
        "ghost_webhook_deliveries_total",
        Kind::Counter,
        "Webhook delivery tries by the summarizer, by result (delivered, retry, dead_letter).",
    ),
    (
        "ghost_webhook_outbox_depth",
        Kind::Gauge,
        "Webhook messages waiting in the summarizer's outbox.",
    ),
    (
        "ghost_webhook_subscription_depth",
        Kind::Gauge,
        "Webhook messages waiting for one subscription, by subscription (its name, or a hash of its URL).",
    ),
    (
        "ghost_webhook_oldest_pending_age_seconds",
        Kind::Gauge,
        "Age of the oldest webhook message waiting for one subscription, by subscription, in seconds.",
    ),
    (
        "ghost_webhook_outbox_full_total",
        Kind::Counter,
        "Webhook messages dead-lettered at once because the outbox held webhook_outbox_max messages.",
    ),
    (
        "ghost_webhook_orphaned",
        Kind::Gauge,
        "Webhook messages kept for subscriptions no longer configured (sent if they come back).",
    ),
    (
        "ghost_webhook_dead_letters",
        Kind::Gauge,
        "Webhook messages given up on and kept in the summarizer's dead-letter table.",
    ),
    (
        "ghost_webhook_attempt_duration_seconds",
        Kind::Histogram,
        "Time of one webhook POST (to the response headers or the failure), in seconds.",
    ),
    (
        "ghost_alerts_total",
        Kind::Counter,
        "Alert lifecycle events in the alerter (raised, resolved, acked, escalated).",
    ),
    (
        "ghost_slack_deliveries_total",
        Kind::Counter,
        "Slack deliveries by result (ok, logged, retried, dead_letter, reposted: a digest edit posted again).",
    ),
    (
        "ghost_alerter_channel_backlog",
        Kind::Gauge,
        "Slack messages waiting for delivery in the alerter's outbox, by channel (all direct messages as the one channel dm).",
    ),
    (
        "ghost_alerter_notify_dropped_total",
        Kind::Counter,
        "Patch-end DMs not sent, by reason (not_allowed: the user is not in routing.notify_allowed; capped: over routing.notify_max_per_period).",
    ),
    (
        "ghost_http_requests_total",
        Kind::Counter,
        "HTTP requests served, by method, matched route and status.",
    ),
    (
        "ghost_http_request_duration_seconds",
        Kind::Histogram,
        "HTTP request latency in seconds, by method and matched route.",
    ),
    (
        "ghost_grpc_requests_total",
        Kind::Counter,
        "gRPC calls served, by service, method and status code.",
    ),
    (
        "ghost_grpc_request_duration_seconds",
        Kind::Histogram,
        "gRPC call latency in seconds (to the response headers), by service and method.",
    ),
    (
        "ghost_grpc_unauthenticated_total",
        Kind::Counter,
        "gRPC calls refused for want of the deployment's service credential, by service.",
    ),
];

/// Latency buckets in seconds: 1 ms to 5 minutes.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// Buckets for counts of things (batch sizes).
const COUNTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

fn build() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets(SECONDS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full("ghost_router_commit_batch_size".to_owned()),
                COUNTS,
            )
        })
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    // Fails only if another recorder was installed first; then ours renders nothing, which
    // the /metrics tests would show.
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder was already installed");
    }
    for (name, kind, help) in CATALOGUE {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    handle
}

/// Installs the process-wide recorder on first use and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    HANDLE.get_or_init(build).clone()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::CATALOGUE;

    fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_metric_recorded_in_the_workspace_is_catalogued() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        rust_files(&crates, &mut files);
        let mut missing = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                for (index, _) in text.match_indices(macro_name) {
                    let rest = text[index + macro_name.len()..].trim_start();
                    let Some(name) = rest
                        .strip_prefix('"')
                        .and_then(|rest| rest.split('"').next())
                    else {
                        continue;
                    };
                    if name.starts_with("ghost_") && !CATALOGUE.iter().any(|(n, _, _)| *n == name) {
                        missing.push(format!("{name} ({})", file.display()));
                    }
                }
            }
        }
        assert!(files.len() > 20, "found the workspace sources");
        assert!(missing.is_empty(), "not in metrics::CATALOGUE: {missing:?}");
    }
}
