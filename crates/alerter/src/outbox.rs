//! The durable Slack outbox: [`Outbox`] stores messages (store first, then wake the loop) and
//! [`deliver_loop`] sends them.
//!
//! Order is kept per thread: only the oldest pending message of a thread is ever tried, so a
//! reply never overtakes its parent and updates land in the order they were made. Between two
//! messages to one channel the loop waits `pacing` (Slack allows about one per second). A
//! failed try is rescheduled with exponential backoff, or after Slack's `Retry-After`; after
//! `max_attempts` tries, or on a permanent error, the message is dead-lettered with a metric and
//! an error log. Pending messages survive a restart: the loop just picks them up again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::SharedClock;
use crate::config::SlackConfig;
use crate::slack::{SlackClient, TOKEN_ERRORS, Verdict};
use crate::store::{Kind, Message, NewMessage, Store, StoreError, ThreadParent};

/// Longest idle wait between two looks at the outbox.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// Wait after a storage error before looking again.
const STORE_ERROR_WAIT: Duration = Duration::from_secs(1);

/// The storing side of the outbox. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    clock: SharedClock,
    wake: Arc<Notify>,
}

impl Outbox {
    /// An outbox over `store`.
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self {
            store,
            clock,
            wake: Arc::new(Notify::new()),
        }
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
}

impl DeliveryPolicy {
    /// The policy configured in `slack`.
    pub fn from_config(slack: &SlackConfig) -> Self {
        Self {
            max_attempts: slack.max_attempts.max(1),
            initial_backoff: slack.initial_backoff,
            max_backoff: slack.max_backoff,
            pacing: slack.pacing,
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

/// Delivers stored messages until `shutdown`; with no Slack client, logs and marks them sent.
pub async fn deliver_loop(
    outbox: Outbox,
    slack: Option<SlackClient>,
    policy: DeliveryPolicy,
    shutdown: CancellationToken,
) {
    let mut last_sent: HashMap<String, i64> = HashMap::new();
    while !shutdown.is_cancelled() {
        let heads = match outbox.store.heads().await {
            Ok(heads) => heads,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the slack outbox");
                pause(STORE_ERROR_WAIT, &outbox, &shutdown).await;
                continue;
            }
        };
        let now = outbox.clock.now_ms();
        let mut next_ready: Option<i64> = None;
        let mut chosen = None;
        for head in heads {
            let paced_until = last_sent
                .get(&head.channel)
                .map_or(i64::MIN, |sent| sent.saturating_add(millis(policy.pacing)));
            let ready_at = head.next_at_ms.max(paced_until);
            if ready_at <= now {
                chosen = Some(head);
                break;
            }
            next_ready = Some(next_ready.map_or(ready_at, |next: i64| next.min(ready_at)));
        }
        let Some(message) = chosen else {
            let wait = next_ready.map_or(IDLE_WAIT, |at| {
                Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                    .min(IDLE_WAIT)
            });
            pause(wait, &outbox, &shutdown).await;
            continue;
        };
        let channel = message.channel.clone();
        let span = tracing::info_span!(
            "slack.post",
            otel.kind = "client",
            thread = %message.thread,
            outbox_id = message.id,
            tries = message.tries + 1,
        );
        if let Some(traceparent) = message.traceparent.as_deref() {
            ghost_runtime::propagation::set_parent(&span, traceparent);
        }
        let result = deliver_one(&outbox, slack.as_ref(), policy, message)
            .instrument(span)
            .await;
        if let Err(err) = result {
            tracing::error!(error = %err, "cannot record a slack delivery");
            pause(STORE_ERROR_WAIT, &outbox, &shutdown).await;
        }
        last_sent.insert(channel, outbox.clock.now_ms());
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

async fn deliver_one(
    outbox: &Outbox,
    slack: Option<&SlackClient>,
    policy: DeliveryPolicy,
    message: Message,
) -> Result<(), StoreError> {
    let store = &outbox.store;
    let Some(slack) = slack else {
        let text = message
            .body
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        tracing::info!(text, "slack is not configured; message logged only");
        metrics::counter!("ghost_slack_deliveries_total", "result" => "logged").increment(1);
        return store.mark_sent(message.id, String::new(), None).await;
    };
    let parent = match message.kind {
        Kind::Post => None,
        Kind::Reply | Kind::Update => store.thread_parent(&message.thread).await?,
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
    match verdict {
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
            store.mark_sent(message.id, ts, parent).await
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
            store.mark_dead(message.id, reason).await
        }
        Verdict::Retry { after, reason } => {
            if tries >= policy.max_attempts {
                metrics::counter!("ghost_slack_deliveries_total", "result" => "dead_letter")
                    .increment(1);
                tracing::error!(
                    outbox_id = message.id,
                    thread = %message.thread,
                    reason,
                    tries,
                    "giving up on the slack message; dead-lettered"
                );
                return store.mark_dead(message.id, reason).await;
            }
            metrics::counter!("ghost_slack_deliveries_total", "result" => "retried").increment(1);
            let wait = after
                .unwrap_or_else(|| policy.backoff(tries))
                .min(policy.max_backoff);
            tracing::warn!(reason, ?wait, tries, "slack delivery failed; will retry");
            let next_at = outbox.clock.now_ms().saturating_add(millis(wait));
            store.mark_retry(message.id, next_at, reason).await
        }
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
