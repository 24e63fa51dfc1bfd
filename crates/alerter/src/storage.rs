//! The alerter's own storage faults. Its store classifies each failed transaction
//! ([`crate::store::Store`]): a full disk, I/O errors, a failed fsync or an unreachable
//! PostgreSQL server make the alerter *degraded* (`/readyz` 503 with the reason,
//! `grpc.health.v1` NOT_SERVING,
//! `ghost_storage_degraded{service="alerter"}`), and `Notify` and `Alert` answer UNAVAILABLE
//! so their callers' outboxes keep them and retry.
//!
//! Its own alert, `storage_unavailable/alerter`, cannot be stored on the failing disk, so
//! [`report_to_slack`] logs it and posts it straight to the ops channel (one direct
//! `chat.postMessage`, or the incoming webhook when only that is configured), bypassing the
//! outbox: one post per fault, never more than one raise per [`MIN_RAISE_GAP`] however the
//! disk flaps, and one post when it heals. [`probe_until_healed`] heals the store by itself
//! once a real write succeeds again.

use std::time::Duration;

use ghost_runtime::storage::{Fault, StorageHealth};
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::slack::{SlackClient, Verdict};
use crate::store::Store;
use ghost_runtime::clock::SharedClock;

/// The key of the alerter's own storage alert.
pub const ALERT_KEY: &str = "storage_unavailable/alerter";
/// The least time between two direct raise posts: a flapping disk posts once, then again only
/// after this if it is (still or again) failing.
pub const MIN_RAISE_GAP: Duration = Duration::from_secs(60);
/// The first wait before posting again after Slack failed; doubles up to [`MAX_POST_RETRY`].
const FIRST_POST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two tries of a direct post.
const MAX_POST_RETRY: Duration = Duration::from_secs(30);
/// The first wait before probing a degraded store; doubles up to [`MAX_PROBE_WAIT`].
const FIRST_PROBE_WAIT: Duration = Duration::from_millis(250);
/// The longest wait between two probes (and the longest one probe may take).
const MAX_PROBE_WAIT: Duration = Duration::from_secs(1);

/// The direct message for a fault (`Some`) or its end (`None`).
pub fn message(fault: Option<&Fault>) -> String {
    match fault {
        Some(fault) => format!(
            ":rotating_light: *{ALERT_KEY}* (critical): {}. Alerts and patch notifications are \
             refused until it heals; the services keep them and retry, so they arrive late, not \
             lost. Sent directly: this alert is not stored.",
            fault.kind.sentence("alerter")
        ),
        None => format!(
            ":white_check_mark: *{ALERT_KEY}* resolved: the alerter's storage accepts \
             writes again; held alerts and notifications arrive now."
        ),
    }
}

async fn post(slack: &SlackClient, ops_channel: &str, text: &str) -> Verdict {
    if slack.has_api() {
        slack
            .api(
                "chat.postMessage",
                &json!({"channel": ops_channel, "text": text}),
            )
            .await
    } else {
        slack.webhook(&json!({"text": text})).await
    }
}

/// Logs each change of the storage state and posts it straight to `ops_channel` (see the
/// module doc); retries a failed post with backoff while the state it describes lasts. Runs
/// until `shutdown`.
pub async fn report_to_slack(
    health: StorageHealth,
    slack: Option<SlackClient>,
    ops_channel: String,
    shutdown: CancellationToken,
) {
    let mut changes = health.subscribe();
    let mut told_firing = false;
    let mut last_raise: Option<Instant> = None;
    let mut retry = FIRST_POST_RETRY;
    loop {
        let fault = changes.borrow_and_update().clone();
        if fault.is_some() != told_firing {
            if fault.is_some()
                && let Some(gap) = last_raise.map(|at| MIN_RAISE_GAP.saturating_sub(at.elapsed()))
                && !gap.is_zero()
            {
                tracing::warn!(alert = ALERT_KEY, wait = ?gap, "storage fault again soon after the last one; the direct post waits");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(gap) => {}
                    _ = changes.changed() => {}
                }
                continue;
            }
            let text = message(fault.as_ref());
            if fault.is_some() {
                tracing::error!(alert = ALERT_KEY, %text, "storage alert raised (not stored: posted directly to slack)");
            } else {
                tracing::info!(alert = ALERT_KEY, %text, "storage alert resolved");
            }
            let verdict = match &slack {
                Some(slack) => post(slack, &ops_channel, &text).await,
                None => Verdict::GiveUp {
                    reason: "slack is not configured; the log says it".to_owned(),
                },
            };
            match verdict {
                Verdict::Delivered { .. } => {}
                Verdict::GiveUp { reason } => {
                    tracing::error!(alert = ALERT_KEY, %reason, "cannot post the storage alert to slack; the log has it");
                }
                Verdict::Retry { after, reason } => {
                    let wait = after.unwrap_or(retry).min(MAX_POST_RETRY);
                    tracing::warn!(alert = ALERT_KEY, %reason, retry_in = ?wait, "posting the storage alert to slack failed; retried");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                        // A change meanwhile is posted at once (a heal need not wait).
                        _ = changes.changed() => {}
                    }
                    retry = (retry * 2).min(MAX_POST_RETRY);
                    continue;
                }
            }
            if fault.is_some() {
                last_raise = Some(Instant::now());
            }
            told_firing = fault.is_some();
            retry = FIRST_POST_RETRY;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// While the store is degraded, probes it with one real write at growing intervals (up to
/// [`MAX_PROBE_WAIT`]) and heals it at the first that commits. Runs until `shutdown`.
pub async fn probe_until_healed(store: Store, clock: SharedClock, shutdown: CancellationToken) {
    let mut changes = store.health().subscribe();
    loop {
        if !store.health().is_degraded() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        let mut wait = FIRST_PROBE_WAIT;
        while store.health().is_degraded() {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match tokio::time::timeout(MAX_PROBE_WAIT, store.probe(clock.now_ms())).await {
                Ok(Ok(())) => {
                    store.health().healed();
                }
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "storage probe failed; the alerter stays degraded");
                    wait = (wait * 2).min(MAX_PROBE_WAIT);
                }
                Err(_) => wait = MAX_PROBE_WAIT,
            }
        }
    }
}
