//! The durable Slack outbox: [`Outbox`] stores messages (store first, then wake the loop) and
//! [`deliver_loop`] sends them.
//!
//! Delivery works in rounds: up to `concurrency` ready messages are sent at once and their
//! results recorded in one transaction. Order is kept per thread: only the oldest pending
//! message of a thread is ever tried (at most one per thread per round), so a reply never
//! overtakes its parent and updates land in the order they were made. Between two messages to
//! one channel the loop waits `pacing` (Slack allows about one per second). A failed try is
//! rescheduled with exponential backoff, or after Slack's `Retry-After`, which also holds every
//! other message of that channel; after `max_attempts` tries, or on a permanent error, the
//! message is dead-lettered with a metric and an error log. Pending messages survive a
//! restart: the loop just picks them up again.
//!
//! The loop is the one outbox engine of ghost-runtime; this module is its adapter:
//! [`SlackRows`] (the table: ready heads, settling, backlog gauges) and [`SlackSink`] (the
//! Slack calls and what their answers mean).

mod rows;
mod sink;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ghost_runtime::clock::SharedClock;
use ghost_runtime::outbox::{Backoff, Delivery, GiveUp, Policy, claimant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::rows::SlackRows;
pub use self::sink::{Receipt, SlackSink};
use crate::config::SlackConfig;
use crate::slack::SlackClient;
use crate::store::{Kind, NewMessage, Priority, Store, StoreError};

/// Longest idle wait between two looks at the outbox.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// Wait after a storage error before looking again.
const STORE_ERROR_WAIT: Duration = Duration::from_secs(1);

/// The backlog switch: which channels send their successes to the digest because too many
/// messages are waiting for them.
pub struct BacklogSwitch {
    threshold: u64,
    switched: std::sync::Mutex<HashSet<String>>,
    /// Makes each notice its own thread.
    notices: std::sync::atomic::AtomicU64,
}

impl BacklogSwitch {
    fn new(threshold: u32) -> Self {
        Self {
            threshold: u64::from(threshold),
            switched: std::sync::Mutex::new(HashSet::new()),
            notices: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records that `pending` messages wait for `channel`: true while its successes go to
    /// the digest (over the threshold; back under half of it), and the one-line notice when
    /// that just changed. A threshold of 0 never switches.
    pub fn observe(&self, channel: &str, pending: u64) -> (bool, Option<NewMessage>) {
        if self.threshold == 0 {
            return (false, None);
        }
        let mut switched = self
            .switched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let was = switched.contains(channel);
        let now = if was {
            pending > self.threshold / 2
        } else {
            pending > self.threshold
        };
        if now == was {
            return (now, None);
        }
        let text = if now {
            switched.insert(channel.to_owned());
            format!(
                "⏩ {pending} messages are waiting for this channel: successes go to the digest until the backlog drains."
            )
        } else {
            switched.remove(channel);
            "↩️ The backlog has drained: successes get their own thread again.".to_owned()
        };
        tracing::info!(channel, pending, digest = now, "slack backlog switch");
        let notice = NewMessage {
            thread: format!(
                "notice/{channel}/{}/{}",
                std::process::id(),
                self.notices
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            channel: channel.to_owned(),
            kind: Kind::Post,
            body: crate::messages::line(&text),
            traceparent: None,
            priority: Priority::Failure,
        };
        (now, Some(notice))
    }

    /// Marks `channels` as switched (state read back from the database at start).
    fn restore(&self, channels: Vec<String>) {
        self.switched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(channels);
    }

    fn switched(&self) -> Vec<String> {
        self.switched
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

/// The storing side of the outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    clock: SharedClock,
    wake: Arc<Notify>,
    backlog: Arc<BacklogSwitch>,
}

impl Outbox {
    /// An outbox over `store` without a backlog switch.
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            wake: Arc::new(Notify::new()),
            backlog: Arc::new(BacklogSwitch::new(0)),
        }
    }

    /// The same outbox with a backlog switch at `threshold` pending messages per channel.
    #[must_use]
    pub fn with_backlog_threshold(mut self, threshold: u32) -> Self {
        self.backlog = Arc::new(BacklogSwitch::new(threshold));
        self
    }

    /// The backlog switch.
    pub fn backlog(&self) -> &BacklogSwitch {
        &self.backlog
    }

    /// Reads back which channels the backlog switch had sent to the digest before a restart.
    pub async fn restore_backlog(&self) -> Result<(), StoreError> {
        let switched = self.store.backlog_switched().await?;
        if !switched.is_empty() {
            tracing::info!(?switched, "slack backlog switch restored");
        }
        self.backlog.restore(switched);
        Ok(())
    }

    /// Records that `pending` messages wait for `channel` (see [`BacklogSwitch::observe`]):
    /// true while its successes go to the digest. A switch either way is stored with its
    /// notice, so it survives a restart.
    pub async fn observe_backlog(&self, channel: &str, pending: u64) -> Result<bool, StoreError> {
        let (digest, notice) = self.backlog.observe(channel, pending);
        if let Some(notice) = notice {
            self.store
                .switch_backlog(channel, digest, notice, self.clock.now_ms())
                .await?;
            self.wake();
        }
        Ok(digest)
    }

    /// Stores `messages` and wakes the delivery loop.
    pub async fn enqueue(&self, messages: Vec<NewMessage>) -> Result<(), StoreError> {
        self.store.enqueue(messages, self.clock.now_ms()).await?;
        self.wake();
        Ok(())
    }

    /// Tells the delivery loop that new messages were stored.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The database behind the outbox.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// How the delivery loop paces and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Tries before a message is dead-lettered.
    pub max_attempts: u32,
    /// First backoff; doubles per try.
    pub initial_backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
    /// Least time between two messages to one channel.
    pub pacing: Duration,
    /// Slack calls in flight at once (at least 1).
    pub concurrency: u32,
}

impl DeliveryPolicy {
    /// The policy configured in `slack`.
    pub fn from_config(slack: &SlackConfig) -> Self {
        Self {
            max_attempts: slack.max_attempts.max(1),
            initial_backoff: slack.initial_backoff,
            max_backoff: slack.max_backoff,
            pacing: slack.pacing,
            concurrency: slack.concurrency.max(1),
        }
    }

    /// The retry schedule: `initial_backoff` doubling per failed try, at most `max_backoff`
    /// (a `Retry-After` is capped there too); no jitter.
    pub fn backoff(&self) -> Backoff {
        Backoff::exponential(self.initial_backoff, self.max_backoff)
    }

    /// The engine's policy: `concurrency` sends at once (and claimed per round), one message
    /// per thread and (paced) per channel a round, dead letters after `max_attempts` tries;
    /// looking at the store at least every `poll`.
    pub fn engine_policy(&self, poll: Duration) -> Policy {
        let at_once = usize::try_from(self.concurrency.max(1)).unwrap_or(1);
        Policy {
            name: "slack",
            delivery: Delivery::Parallel { at_once },
            backoff: self.backoff(),
            give_up: GiveUp {
                after_tries: Some(self.max_attempts.max(1)),
                after: None,
            },
            batch: at_once,
            poll,
            // Unused: on PostgreSQL the channel's sender lease keeps other replicas off.
            claim_timeout: Duration::from_secs(60),
            pacing: self.pacing,
            store_retry: STORE_ERROR_WAIT,
        }
    }
}

/// Delivers stored messages until `shutdown` on the one outbox engine
/// ([`ghost_runtime::outbox::Outbox`]): [`SlackRows`] claims the ready heads and settles each
/// round in one transaction, [`SlackSink`] sends them (with no Slack client, logs them and
/// marks them sent).
pub async fn deliver_loop(
    outbox: Outbox,
    slack: Option<SlackClient>,
    policy: DeliveryPolicy,
    shutdown: CancellationToken,
) {
    let wake = Arc::clone(&outbox.wake);
    let clock = Arc::clone(&outbox.clock);
    let poll = outbox.store.poll().unwrap_or(IDLE_WAIT);
    let sink = SlackSink {
        slack,
        max_attempts: policy.max_attempts.max(1),
    };
    let in_round = Arc::new(AtomicBool::new(false));
    let rows = SlackRows::new(outbox, shutdown.clone(), Arc::clone(&in_round));
    let engine = ghost_runtime::outbox::Outbox::new(
        rows,
        sink,
        policy.engine_policy(poll),
        clock,
        claimant(),
    );
    let stop = CancellationToken::new();
    tokio::join!(
        engine.run(wake, stop.clone()),
        finish_round_then_stop(shutdown, in_round, stop)
    );
}

/// Longest a round in flight at shutdown may take to finish (its Slack calls, a webhook
/// fallback, the settling write).
const ROUND_GRACE: Duration = Duration::from_secs(30);

/// Stops the engine (`stop`) once `shutdown` fired and the round in flight, if any, is
/// settled (at most [`ROUND_GRACE`]): the engine would release a round cut short, and a
/// message Slack already took would be posted again after the restart.
async fn finish_round_then_stop(
    shutdown: CancellationToken,
    in_round: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    shutdown.cancelled().await;
    let deadline = tokio::time::Instant::now() + ROUND_GRACE;
    while in_round.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let policy = DeliveryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(3),
            pacing: Duration::ZERO,
            concurrency: 1,
        };
        let waits: Vec<_> = (1..=5).map(|tries| policy.backoff().wait(tries)).collect();
        assert_eq!(
            waits,
            [
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(3),
                Duration::from_secs(3)
            ]
        );
        let engine = policy.engine_policy(IDLE_WAIT);
        assert_eq!(engine.give_up.after_tries, Some(10));
        assert_eq!(engine.delivery, Delivery::Parallel { at_once: 1 });
    }
}
