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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::SlackConfig;
use crate::slack::{SlackClient, TOKEN_ERRORS, Verdict};
use crate::store::{Kind, Message, NewMessage, Outcome, Priority, Store, StoreError, ThreadParent};
use ghost_runtime::clock::SharedClock;

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

    /// The wait after failed try number `tries` (1-based): initial × 2^(tries-1), capped.
    pub fn backoff(&self, tries: u32) -> Duration {
        let factor = 2u32.saturating_pow(tries.saturating_sub(1).min(20));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// When each channel may be sent to again (Unix ms): after `pacing`, or after Slack's
/// `Retry-After` for the whole channel.
#[derive(Default)]
struct ChannelGates {
    not_before: HashMap<String, i64>,
}

impl ChannelGates {
    /// Closes `channel` until `until` (keeps a later closing time).
    fn close(&mut self, channel: &str, until: i64) {
        let entry = self.not_before.entry(channel.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Forgets the gates open at `now`; returns the channels still closed.
    fn closed(&mut self, now: i64) -> Vec<String> {
        self.not_before.retain(|_, until| *until > now);
        self.not_before.keys().cloned().collect()
    }

    /// The earliest time a closed channel opens.
    fn next_open(&self) -> Option<i64> {
        self.not_before.values().copied().min()
    }
}

/// `ghost_alerter_channel_backlog{channel}`: pending messages per channel, read at most every
/// [`BACKLOG_EVERY`]; a channel that drained is set to 0.
#[derive(Default)]
struct BacklogGauge {
    seen: HashSet<String>,
    last: Option<std::time::Instant>,
}

/// How often the backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_millis(500);

impl BacklogGauge {
    async fn update(&mut self, outbox: &Outbox) {
        if self.last.is_some_and(|at| at.elapsed() < BACKLOG_EVERY) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let pending = match outbox.store.pending_by_channel().await {
            Ok(pending) => pending,
            Err(err) => {
                tracing::warn!(error = %err, "cannot count the slack backlog");
                return;
            }
        };
        publish_outbox_age(outbox, pending.values().sum()).await;
        for channel in &self.seen {
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
        // A switched channel that drained switches back without waiting for its next patch.
        for channel in outbox.backlog.switched() {
            let count = pending.get(&channel).copied().unwrap_or(0);
            if let Err(err) = outbox.observe_backlog(&channel, count).await {
                tracing::warn!(error = %err, "cannot store the backlog switch");
            }
        }
        // DMs are one series, `dm`: one per user id would grow without bound.
        let mut series: std::collections::BTreeMap<String, u64> = Default::default();
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
            self.seen.insert(channel);
        }
    }
}

/// `ghost_outbox_depth{outbox="slack"}` (`depth` pending messages) and the age of the oldest,
/// by the alerter's rule clock.
async fn publish_outbox_age(outbox: &Outbox, depth: u64) {
    let age_ms = match outbox.store.oldest_pending_ms().await {
        Ok(oldest) => oldest.map_or(0, |created| (outbox.clock.now_ms() - created).max(0)),
        Err(err) => {
            tracing::warn!(error = %err, "cannot read the slack outbox's oldest message");
            return;
        }
    };
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!("ghost_outbox_depth", "outbox" => "slack").set(depth as f64);
        metrics::gauge!("ghost_outbox_oldest_age_seconds", "outbox" => "slack")
            .set(age_ms as f64 / 1000.0);
    }
}

/// What one try came to, for the round's settlement.
struct Attempt {
    outcome: Outcome,
    channel: String,
    /// Slack asked to wait (`Retry-After`) until then: the whole channel waits.
    hold_until: Option<i64>,
}

/// Delivers stored messages until `shutdown`; with no Slack client, logs and marks them sent.
///
/// Works in rounds: reads up to `concurrency` ready heads (skipping channels that are paced or
/// held by a `Retry-After`; with `pacing` above zero at most one per channel), sends them
/// concurrently, records all results in one transaction, and looks again.
pub async fn deliver_loop(
    outbox: Outbox,
    slack: Option<SlackClient>,
    policy: DeliveryPolicy,
    shutdown: CancellationToken,
) {
    let mut gates = ChannelGates::default();
    let mut backlog = BacklogGauge::default();
    let limit = usize::try_from(policy.concurrency.max(1)).unwrap_or(1);
    while !shutdown.is_cancelled() {
        backlog.update(&outbox).await;
        let now = outbox.clock.now_ms();
        let closed = gates.closed(now);
        let ready = match outbox.store.ready_heads(now, limit, closed).await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the slack outbox");
                pause(STORE_ERROR_WAIT, &outbox, &shutdown).await;
                continue;
            }
        };
        let mut round = ready.heads;
        if !policy.pacing.is_zero() {
            let mut channels = HashSet::new();
            round.retain(|head| channels.insert(head.message.channel.clone()));
        }
        if round.is_empty() {
            let wake_at = match (ready.next_at_ms, gates.next_open()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = wake_at.map_or(IDLE_WAIT, |at| {
                Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                    .min(IDLE_WAIT)
            });
            pause(wait, &outbox, &shutdown).await;
            continue;
        }
        let mut tries = JoinSet::new();
        for head in round {
            let span = tracing::info_span!(
                "slack.post",
                otel.kind = "client",
                thread = %head.message.thread,
                outbox_id = head.message.id,
                tries = head.message.tries + 1,
            );
            if let Some(traceparent) = head.message.traceparent.as_deref() {
                ghost_runtime::propagation::set_parent(&span, traceparent);
            }
            tries.spawn(
                try_one(
                    slack.clone(),
                    policy,
                    Arc::clone(&outbox.clock),
                    head.message,
                    head.parent,
                )
                .instrument(span),
            );
        }
        let mut outcomes = Vec::with_capacity(tries.len());
        let mut tried_channels = Vec::with_capacity(tries.len());
        while let Some(joined) = tries.join_next().await {
            match joined {
                Ok(attempt) => {
                    if let Some(until) = attempt.hold_until {
                        gates.close(&attempt.channel, until);
                    }
                    tried_channels.push(attempt.channel);
                    outcomes.push(attempt.outcome);
                }
                // The message stays pending and is tried again in a later round.
                Err(err) => tracing::error!(error = %err, "a slack delivery task failed"),
            }
        }
        if !policy.pacing.is_zero() {
            let paced_until = outbox.clock.now_ms().saturating_add(millis(policy.pacing));
            for channel in &tried_channels {
                gates.close(channel, paced_until);
            }
        }
        settle(&outbox, outcomes, &shutdown).await;
    }
}

/// Records a round's outcomes; on a storage error logs, waits and tries again (until
/// shutdown: then the messages stay pending and are tried again after the restart).
async fn settle(outbox: &Outbox, outcomes: Vec<Outcome>, shutdown: &CancellationToken) {
    loop {
        match outbox.store.settle(outcomes.clone()).await {
            Ok(()) => return,
            Err(err) => {
                tracing::error!(error = %err, "cannot record a slack delivery");
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(STORE_ERROR_WAIT) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }
}

async fn pause(wait: Duration, outbox: &Outbox, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = outbox.wake.notified() => {}
        () = shutdown.cancelled() => {}
    }
}

/// Where one message goes, resolved against its thread.
enum Call {
    Api { method: &'static str, body: Value },
    Webhook { body: Value },
}

fn with_fields(body: &Value, fields: &[(&str, Value)]) -> Value {
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        for (name, value) in fields {
            object.insert((*name).to_owned(), value.clone());
        }
    }
    body
}

fn webhook_body(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.remove("reply_broadcast");
    }
    body
}

/// Tries `message` once (its thread's parent resolved beforehand); never touches the store.
async fn try_one(
    slack: Option<SlackClient>,
    policy: DeliveryPolicy,
    clock: SharedClock,
    message: Message,
    parent: Option<ThreadParent>,
) -> Attempt {
    let channel = message.channel.clone();
    let Some(slack) = slack else {
        let text = message
            .body
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        tracing::info!(text, "slack is not configured; message logged only");
        metrics::counter!("ghost_slack_deliveries_total", "result" => "logged").increment(1);
        return Attempt {
            outcome: Outcome::Sent {
                id: message.id,
                ts: String::new(),
                parent: None,
            },
            channel,
            hold_until: None,
        };
    };
    let parent = match message.kind {
        Kind::Post => None,
        Kind::Reply | Kind::Update => parent,
    };
    // Without a known parent (webhook mode, or the parent was dead-lettered) a reply or update
    // is posted on its own and becomes the thread's parent.
    let starts_thread = parent.is_none();
    let call = if !slack.has_api() {
        Call::Webhook {
            body: webhook_body(&message.body),
        }
    } else {
        match (message.kind, &parent) {
            (Kind::Update, Some(parent)) => Call::Api {
                method: "chat.update",
                body: with_fields(
                    &message.body,
                    &[("channel", json!(parent.channel)), ("ts", json!(parent.ts))],
                ),
            },
            (Kind::Reply, Some(parent)) => Call::Api {
                method: "chat.postMessage",
                body: with_fields(
                    &message.body,
                    &[
                        ("channel", json!(parent.channel)),
                        ("thread_ts", json!(parent.ts)),
                    ],
                ),
            },
            _ => Call::Api {
                method: "chat.postMessage",
                body: with_fields(&message.body, &[("channel", json!(message.channel))]),
            },
        }
    };
    let mut verdict = match &call {
        Call::Api { method, body } => slack.api(method, body).await,
        Call::Webhook { body } => slack.webhook(body).await,
    };
    if let (Verdict::GiveUp { reason }, Call::Api { .. }) = (&verdict, &call)
        && TOKEN_ERRORS.contains(&reason.as_str())
        && slack.has_webhook()
    {
        tracing::warn!(
            reason,
            "slack refused the bot token; falling back to the webhook"
        );
        verdict = slack.webhook(&webhook_body(&message.body)).await;
    }
    let tries = message.tries + 1;
    // A digest edit Slack cannot apply any more is posted again as a new digest message.
    let repost_digest =
        message.kind == Kind::Update && parent.is_some() && message.thread.starts_with("digest/");
    let mut hold_until = None;
    let outcome = match verdict {
        Verdict::Delivered { ts, channel } => {
            metrics::counter!("ghost_slack_deliveries_total", "result" => "ok").increment(1);
            tracing::info!(ts, tries, thread = %message.thread, "slack message delivered");
            let parent = (starts_thread && !ts.is_empty()).then(|| {
                let channel = if channel.is_empty() {
                    message.channel.clone()
                } else {
                    channel
                };
                (
                    message.thread.clone(),
                    ThreadParent {
                        channel,
                        ts: ts.clone(),
                    },
                )
            });
            Outcome::Sent {
                id: message.id,
                ts,
                parent,
            }
        }
        Verdict::GiveUp { reason } if repost_digest && reason == "message_not_found" => {
            reposted(&message, reason)
        }
        Verdict::GiveUp { reason } => {
            metrics::counter!("ghost_slack_deliveries_total", "result" => "dead_letter")
                .increment(1);
            tracing::error!(
                outbox_id = message.id,
                thread = %message.thread,
                reason,
                tries,
                "slack refused the message; dead-lettered"
            );
            Outcome::Dead {
                id: message.id,
                error: reason,
            }
        }
        Verdict::Retry { after, reason } => {
            let wait = after
                .unwrap_or_else(|| policy.backoff(tries))
                .min(policy.max_backoff);
            let next_at_ms = clock.now_ms().saturating_add(millis(wait));
            // Slack's limits are per channel and method: a `Retry-After` holds the channel.
            if after.is_some() {
                hold_until = Some(next_at_ms);
            }
            if tries >= policy.max_attempts && repost_digest {
                reposted(&message, reason)
            } else if tries >= policy.max_attempts {
                metrics::counter!("ghost_slack_deliveries_total", "result" => "dead_letter")
                    .increment(1);
                tracing::error!(
                    outbox_id = message.id,
                    thread = %message.thread,
                    reason,
                    tries,
                    "giving up on the slack message; dead-lettered"
                );
                Outcome::Dead {
                    id: message.id,
                    error: reason,
                }
            } else {
                metrics::counter!("ghost_slack_deliveries_total", "result" => "retried")
                    .increment(1);
                tracing::warn!(reason, ?wait, tries, "slack delivery failed; will retry");
                Outcome::Retry {
                    id: message.id,
                    next_at_ms,
                    error: reason,
                }
            }
        }
    };
    Attempt {
        outcome,
        channel,
        hold_until,
    }
}

/// The outcome of a digest edit that Slack cannot apply: post the full digest again.
fn reposted(message: &Message, reason: String) -> Outcome {
    metrics::counter!("ghost_slack_deliveries_total", "result" => "reposted").increment(1);
    tracing::warn!(
        outbox_id = message.id,
        thread = %message.thread,
        reason,
        "a digest edit failed; posting the digest again as a new message"
    );
    Outcome::Repost {
        id: message.id,
        thread: message.thread.clone(),
        error: reason,
    }
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
        let waits: Vec<_> = (1..=5).map(|tries| policy.backoff(tries)).collect();
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
    }
}
