//! [`SlackSink`]: how one stored message is sent to Slack, as the outbox engine's
//! [`Sink`]: the call its kind and its thread's parent make (`chat.postMessage`, a reply in
//! the thread, `chat.update`, or the webhook), the webhook fallback when Slack refuses the bot
//! token, and what Slack's answer means for the engine (delivered, retry, permanent). A digest
//! edit Slack cannot apply any more is not dead-lettered: it is delivered as a
//! [`Receipt::Repost`] (posted again as a new digest message).

use ghost_runtime::outbox::{Outcome, SendError, Sink};
use serde_json::{Value, json};
use tracing::Instrument;

use crate::slack::{SlackClient, TOKEN_ERRORS, Verdict};
use crate::store::{Head, Kind, Message, ThreadParent};

/// What a delivered message came to, for the store's settlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Sent with Slack's `ts` (empty for webhooks and unconfigured Slack); `parent` (when
    /// given) becomes its thread's parent.
    Sent {
        /// Slack's `ts`.
        ts: String,
        /// Thread key and parent to record.
        parent: Option<(String, ThreadParent)>,
    },
    /// A digest edit Slack cannot apply (`message_not_found`, or out of tries): its thread
    /// forgets the parent and the edit is posted again as a new message.
    Repost {
        /// The digest's thread key.
        thread: String,
        /// Why, kept as `last_error`.
        error: String,
    },
}

/// Sends the outbox's messages to Slack; with no Slack client, logs them.
pub struct SlackSink {
    /// The Slack clients; `None`: Slack is not configured.
    pub slack: Option<SlackClient>,
    /// Tries before a message is dead-lettered (a digest edit is reposted instead).
    pub max_attempts: u32,
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

/// The call for `message`, given its thread's parent (replies and updates only).
fn call_for(slack: &SlackClient, message: &Message, parent: Option<&ThreadParent>) -> Call {
    if !slack.has_api() {
        return Call::Webhook {
            body: webhook_body(&message.body),
        };
    }
    match (message.kind, parent) {
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
}

/// Makes `call`; a bot token Slack refuses falls back to the webhook when there is one.
async fn make(slack: &SlackClient, call: &Call, message: &Message) -> Verdict {
    let verdict = match call {
        Call::Api { method, body } => slack.api(method, body).await,
        Call::Webhook { body } => slack.webhook(body).await,
    };
    if let (Verdict::GiveUp { reason }, Call::Api { .. }) = (&verdict, call)
        && TOKEN_ERRORS.contains(&reason.as_str())
        && slack.has_webhook()
    {
        tracing::warn!(
            reason,
            "slack refused the bot token; falling back to the webhook"
        );
        return slack.webhook(&webhook_body(&message.body)).await;
    }
    verdict
}

impl SlackSink {
    /// Tries `head` once; never touches the store.
    async fn try_once(&self, head: &Head) -> Result<Receipt, SendError> {
        let message = &head.message;
        let Some(slack) = &self.slack else {
            let text = message.body.get("text").and_then(Value::as_str);
            tracing::info!(
                text = text.unwrap_or_default(),
                "slack is not configured; message logged only"
            );
            metrics::counter!("ghost_slack_deliveries_total", "result" => "logged").increment(1);
            return Ok(Receipt::Sent {
                ts: String::new(),
                parent: None,
            });
        };
        let parent = match message.kind {
            Kind::Post => None,
            Kind::Reply | Kind::Update => head.parent.as_ref(),
        };
        let verdict = make(slack, &call_for(slack, message, parent), message).await;
        // A digest edit Slack cannot apply any more is posted again as a new digest message.
        let repost = message.kind == Kind::Update
            && parent.is_some()
            && message.thread.starts_with("digest/");
        let last_try = message.tries.saturating_add(1) >= self.max_attempts;
        match verdict {
            // Without a known parent (webhook mode, or the parent was dead-lettered) a reply
            // or update is posted on its own and becomes the thread's parent.
            Verdict::Delivered { ts, channel } => Ok(sent(message, parent.is_none(), ts, channel)),
            Verdict::GiveUp { reason } if repost && reason == "message_not_found" => {
                Ok(reposted(message, reason))
            }
            Verdict::GiveUp { reason } => Err(SendError::Permanent(reason)),
            Verdict::Retry { reason, .. } if repost && last_try => Ok(reposted(message, reason)),
            Verdict::Retry { reason, after } => Err(SendError::Retry { reason, after }),
        }
    }
}

/// The receipt of a delivered message; the first of a thread records its parent.
fn sent(message: &Message, starts_thread: bool, ts: String, channel: String) -> Receipt {
    tracing::info!(ts, tries = message.tries + 1, thread = %message.thread, "slack message delivered");
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
    Receipt::Sent { ts, parent }
}

/// The receipt of a digest edit that Slack cannot apply: post the full digest again.
fn reposted(message: &Message, reason: String) -> Receipt {
    tracing::warn!(
        outbox_id = message.id,
        thread = %message.thread,
        reason,
        "a digest edit failed; posting the digest again as a new message"
    );
    Receipt::Repost {
        thread: message.thread.clone(),
        error: reason,
    }
}

impl Sink for SlackSink {
    type Row = Head;
    type Receipt = Receipt;

    async fn send(&self, head: &Head) -> Result<Receipt, SendError> {
        let message = &head.message;
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
        self.try_once(head).instrument(span).await
    }

    /// `ghost_slack_deliveries_total{result}`: ok, retried, dead_letter or reposted (logged
    /// is counted when sent).
    fn observe(&self, _head: &Head, outcome: &Outcome<Receipt>) {
        let result = match outcome {
            Outcome::Delivered {
                receipt: Receipt::Repost { .. },
                ..
            } => "reposted",
            Outcome::Delivered { .. } if self.slack.is_none() => return,
            Outcome::Delivered { .. } => "ok",
            Outcome::Retry { .. } => "retried",
            Outcome::Dead { .. } => "dead_letter",
            Outcome::Release { .. } => return,
        };
        metrics::counter!("ghost_slack_deliveries_total", "result" => result).increment(1);
    }
}
