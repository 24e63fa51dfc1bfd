//! [`SlackRows`]: the alerter's outbox table as the outbox engine's [`Store`], and a stored
//! [`Head`] as its [`Row`]: the key is the thread (one message of a thread at a time, in
//! order), the gate is the channel (paced, held by a `Retry-After`).
//!
//! A claim is [`crate::store::Store::ready_heads`]: the oldest pending message of each thread,
//! due, not in a closed channel; on PostgreSQL only the channels whose sender lease this
//! replica holds or takes now, so the lease (not a per-row claim) keeps one sender per channel
//! across replicas. A round claimed before the alerter's shutdown is sent and settled before
//! the engine stops: Slack does not deduplicate, so a message Slack took is never left
//! pending to be posted again. After every pass it also keeps `ghost_alerter_channel_backlog{channel}`
//! and switches drained channels back from the digest.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ghost_runtime::outbox::{Backlog, Claim, Outcome, Row, Store};
use tokio_util::sync::CancellationToken;

use super::Outbox;
use super::sink::Receipt;
use crate::store::{self, Head, StoreError};

/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_millis(500);

impl Row for Head {
    fn id(&self) -> i64 {
        self.message.id
    }

    fn tries(&self) -> u32 {
        self.message.tries
    }

    fn key(&self) -> Option<&str> {
        Some(&self.message.thread)
    }

    fn gate(&self) -> Option<&str> {
        Some(&self.message.channel)
    }

    fn describe(&self) -> String {
        format!("{}#{}", self.message.thread, self.message.id)
    }
}

/// The outbox table, for the engine.
pub struct SlackRows {
    outbox: Outbox,
    /// The alerter's shutdown: no round starts after it.
    shutdown: CancellationToken,
    /// True from a claim until its round is settled (see [`super::finish_round_then_stop`]).
    in_round: Arc<AtomicBool>,
    /// When to look again, from the last claim.
    next_due: std::sync::Mutex<Option<i64>>,
    /// The backlog per channel read for the gauges, and the channels given a series.
    gauge: tokio::sync::Mutex<ChannelGauge>,
}

#[derive(Default)]
struct ChannelGauge {
    /// Pending messages per channel, read by the last refresh and not yet published.
    pending: Option<BTreeMap<String, u64>>,
    seen: HashSet<String>,
    last: Option<Instant>,
}

impl SlackRows {
    /// The table behind `outbox`; claims nothing once `shutdown` fires, and says in
    /// `in_round` while a claimed round is not settled yet.
    pub fn new(outbox: Outbox, shutdown: CancellationToken, in_round: Arc<AtomicBool>) -> Self {
        Self {
            outbox,
            shutdown,
            in_round,
            next_due: std::sync::Mutex::new(None),
            gauge: tokio::sync::Mutex::new(ChannelGauge::default()),
        }
    }

    /// `ghost_alerter_channel_backlog{channel}` from `pending`: DMs are one series, `dm` (one
    /// per user id would grow without bound); a channel that drained is set to 0; a switched
    /// channel that drained switches back without waiting for its next patch.
    async fn publish_channels(&self, pending: BTreeMap<String, u64>, seen: &mut HashSet<String>) {
        for channel in seen.iter() {
            let drained = if channel == "dm" {
                !pending.keys().any(|c| crate::routing::is_slack_user_id(c))
            } else {
                !pending.contains_key(channel)
            };
            if drained {
                metrics::gauge!("ghost_alerter_channel_backlog", "channel" => channel.clone())
                    .set(0.0);
            }
        }
        for channel in self.outbox.backlog.switched() {
            let count = pending.get(&channel).copied().unwrap_or(0);
            if let Err(err) = self.outbox.observe_backlog(&channel, count).await {
                tracing::warn!(error = %err, "cannot store the backlog switch");
            }
        }
        let mut series: BTreeMap<String, u64> = BTreeMap::new();
        for (channel, count) in pending {
            let name = if crate::routing::is_slack_user_id(&channel) {
                "dm".to_owned()
            } else {
                channel
            };
            *series.entry(name).or_default() += count;
        }
        for (channel, count) in series {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("ghost_alerter_channel_backlog", "channel" => channel.clone())
                .set(count as f64);
            seen.insert(channel);
        }
    }
}

/// The store's record of one engine outcome (a release records nothing).
fn recorded(outcome: &Outcome<Receipt>) -> Option<store::Outcome> {
    Some(match outcome.clone() {
        Outcome::Delivered {
            id,
            receipt: Receipt::Sent { ts, parent },
        } => store::Outcome::Sent { id, ts, parent },
        Outcome::Delivered {
            id,
            receipt: Receipt::Repost { thread, error },
        } => store::Outcome::Repost { id, thread, error },
        Outcome::Retry {
            id,
            next_at_ms,
            error,
            ..
        } => store::Outcome::Retry {
            id,
            next_at_ms,
            error,
        },
        Outcome::Dead { id, reason, .. } => store::Outcome::Dead { id, error: reason },
        Outcome::Release { .. } => return None,
    })
}

impl Store for SlackRows {
    type Row = Head;
    type Receipt = Receipt;
    type Error = StoreError;

    async fn claim(&self, claim: Claim) -> Result<Vec<Head>, StoreError> {
        // Marked before the shutdown is read: a stop that sees no round finds this claim
        // empty (see `finish_round_then_stop`).
        self.in_round.store(true, Ordering::SeqCst);
        if self.shutdown.is_cancelled() {
            self.in_round.store(false, Ordering::SeqCst);
            return Ok(Vec::new());
        }
        let ready = self
            .outbox
            .store
            .ready_heads(claim.now_ms, claim.limit, claim.closed)
            .await;
        let ready = ready.inspect_err(|_| self.in_round.store(false, Ordering::SeqCst))?;
        if ready.heads.is_empty() {
            self.in_round.store(false, Ordering::SeqCst);
        }
        // After a round, look again at once (the next message of a thread is due now);
        // after an empty look, when the first message not due yet is.
        let next = if ready.heads.is_empty() {
            ready.next_at_ms
        } else {
            Some(claim.now_ms)
        };
        *self
            .next_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(ready.heads)
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(*self
            .next_due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    async fn settle(
        &self,
        _claimant: &str,
        outcomes: &[Outcome<Receipt>],
    ) -> Result<(), StoreError> {
        let records = outcomes.iter().filter_map(recorded).collect();
        self.outbox.store.settle(records).await?;
        self.in_round.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// At most every [`BACKLOG_EVERY`]: the depth and the oldest pending message.
    async fn backlog(&self) -> Result<Option<Backlog>, StoreError> {
        let mut gauge = self.gauge.lock().await;
        if gauge.last.is_some_and(|at| at.elapsed() < BACKLOG_EVERY) {
            return Ok(None);
        }
        gauge.last = Some(Instant::now());
        let pending = self.outbox.store.pending_by_channel().await?;
        let oldest_created_ms = self.outbox.store.oldest_pending_ms().await?;
        let depth = pending.values().sum();
        gauge.pending = Some(pending);
        Ok(Some(Backlog {
            depth,
            oldest_created_ms,
        }))
    }

    async fn after_pass(&self) {
        let mut gauge = self.gauge.lock().await;
        let Some(pending) = gauge.pending.take() else {
            return;
        };
        let mut seen = std::mem::take(&mut gauge.seen);
        self.publish_channels(pending, &mut seen).await;
        gauge.seen = seen;
    }
}
