//! Slack: the Block Kit message for an [`Alert`] and a Web API client that posts it with the
//! retry rules Slack asks for (honour `429 Retry-After`, back off on 5xx and network errors,
//! never retry a permanent error such as `invalid_auth`).

use std::time::Duration;

use ghost_core::Status;
use ghost_runtime::config::Secret;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::alerts::Alert;
use crate::config::SlackConfig;

/// Longest text Slack accepts in a section block.
const SECTION_CHARS: usize = 3_000;
/// Longest text Slack accepts in a header block.
const HEADER_CHARS: usize = 150;
/// Upper bound on one wait between tries, whatever Slack or the backoff says.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Slack `error` codes worth another try; every other code is permanent.
const TRANSIENT_ERRORS: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// The header line: `✅ <id> succeeded` or `❌ <id> <status>`.
pub fn headline(alert: &Alert) -> String {
    let icon = if alert.status == Status::Succeeded {
        "✅"
    } else {
        "❌"
    };
    format!("{icon} {} {}", alert.patch_id, alert.status)
}

/// The plain-text fallback shown in notifications.
pub fn fallback_text(alert: &Alert) -> String {
    format!(
        "{} on {} (attempt {})",
        headline(alert),
        alert.target,
        alert.attempt
    )
}

/// The `chat.postMessage` body for `alert`.
pub fn message(alert: &Alert, channel: &str) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&headline(alert), HEADER_CHARS), "emoji": true},
        }),
        json!({
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": format!("*Target*\n{}", alert.target)},
                {"type": "mrkdwn", "text": format!("*Attempt*\n{}", alert.attempt)},
                {"type": "mrkdwn", "text": format!("*Status*\n{}", alert.status)},
            ],
        }),
    ];
    let body = if alert.excerpt.is_empty() {
        &alert.error
    } else {
        &alert.excerpt
    };
    if !body.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": truncate(body, SECTION_CHARS)},
        }));
    }
    if !alert.trace_id.is_empty() {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": format!("trace {}", alert.trace_id)}],
        }));
    }
    json!({"channel": channel, "text": fallback_text(alert), "blocks": blocks})
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

/// What one call to Slack means for the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Posted; `ts` identifies the message.
    Delivered {
        /// The message timestamp.
        ts: String,
    },
    /// Worth another try, after `after` when Slack said so.
    Retry {
        /// Slack's `Retry-After`, if given.
        after: Option<Duration>,
        /// Why, for the log.
        reason: String,
    },
    /// Will never work as configured.
    GiveUp {
        /// Why, for the log.
        reason: String,
    },
}

/// Reads Slack's answer: HTTP status, `Retry-After` header and body.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Verdict {
    if status == 429 {
        let after = retry_after
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs);
        return Verdict::Retry {
            after: Some(after),
            reason: "http 429".to_owned(),
        };
    }
    if status >= 500 {
        return Verdict::Retry {
            after: None,
            reason: format!("http {status}"),
        };
    }
    if status != 200 {
        return Verdict::GiveUp {
            reason: format!("http {status}"),
        };
    }
    let Ok(answer) = serde_json::from_slice::<Value>(body) else {
        return Verdict::Retry {
            after: None,
            reason: "answer is not json".to_owned(),
        };
    };
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        let ts = answer
            .get("ts")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        return Verdict::Delivered { ts };
    }
    let error = answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("unknown_error")
        .to_owned();
    if TRANSIENT_ERRORS.contains(&error.as_str()) {
        Verdict::Retry {
            after: None,
            reason: error,
        }
    } else {
        Verdict::GiveUp { reason: error }
    }
}

/// A Slack Web API client for one channel.
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    post_url: String,
    token: Secret,
    channel: String,
    max_attempts: u32,
    initial_backoff: Duration,
}

impl SlackClient {
    /// A client for `config`, or `None` when Slack is off (`api_base_url` unset).
    pub fn new(config: &SlackConfig) -> Result<Option<Self>, reqwest::Error> {
        let Some(base_url) = &config.api_base_url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Some(Self {
            http,
            post_url: format!("{}/chat.postMessage", base_url.trim_end_matches('/')),
            token: config.bot_token.clone(),
            channel: config.channel.clone(),
            max_attempts: config.max_attempts.max(1),
            initial_backoff: config.initial_backoff,
        }))
    }

    /// Posts `alert`, retrying as [`classify`] says, up to `max_attempts` tries or `shutdown`.
    pub async fn deliver(&self, alert: &Alert, shutdown: &CancellationToken) {
        let body = message(alert, &self.channel);
        let mut backoff = self.initial_backoff;
        for attempt in 1..=self.max_attempts {
            match self.post_once(&body).await {
                Verdict::Delivered { ts } => {
                    metrics::counter!("ghost_slack_deliveries_total", "result" => "ok")
                        .increment(1);
                    tracing::info!(ts, tries = attempt, "slack message posted");
                    return;
                }
                Verdict::GiveUp { reason } => {
                    metrics::counter!("ghost_slack_deliveries_total", "result" => "failed")
                        .increment(1);
                    tracing::error!(
                        patch_id = %alert.patch_id,
                        reason,
                        "slack refused the message; not retrying"
                    );
                    return;
                }
                Verdict::Retry { after, reason } => {
                    if attempt == self.max_attempts {
                        metrics::counter!("ghost_slack_deliveries_total", "result" => "failed")
                            .increment(1);
                        tracing::error!(
                            patch_id = %alert.patch_id,
                            reason,
                            tries = attempt,
                            "giving up on the slack message"
                        );
                        return;
                    }
                    metrics::counter!("ghost_slack_deliveries_total", "result" => "retried")
                        .increment(1);
                    let wait = after.unwrap_or(backoff).min(MAX_WAIT);
                    backoff = backoff.saturating_mul(2).min(MAX_WAIT);
                    tracing::warn!(
                        reason,
                        ?wait,
                        tries = attempt,
                        "slack post failed; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => {
                            tracing::warn!(
                                patch_id = %alert.patch_id,
                                "shutting down before the slack message was delivered"
                            );
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn post_once(&self, body: &Value) -> Verdict {
        let mut headers = HeaderMap::new();
        ghost_runtime::propagation::inject_headers(&mut headers);
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", self.token.expose())) {
            headers.insert(AUTHORIZATION, value);
        }
        let response = match self
            .http
            .post(&self.post_url)
            .headers(headers)
            .json(body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) => {
                return Verdict::Retry {
                    after: None,
                    reason: format!("request failed: {err}"),
                };
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        match response.bytes().await {
            Ok(bytes) => classify(status, retry_after.as_deref(), &bytes),
            Err(err) => Verdict::Retry {
                after: None,
                reason: format!("reading the answer failed: {err}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use ghost_core::{PatchId, TargetName};

    use super::*;

    fn alert(status: Status) -> Alert {
        Alert {
            patch_id: PatchId::parse("fix-login").unwrap(),
            target: TargetName::parse("MAIN").unwrap(),
            attempt: 2,
            status,
            description: "d".to_owned(),
            excerpt: "x".repeat(5000),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            error: String::new(),
        }
    }

    #[test]
    fn messages_carry_status_fields_excerpt_and_trace() {
        let body = message(&alert(Status::Succeeded), "#ghost");
        assert_eq!(body["channel"], "#ghost");
        assert_eq!(body["blocks"][0]["text"]["text"], "✅ fix-login succeeded");
        assert_eq!(body["blocks"][1]["fields"][0]["text"], "*Target*\nMAIN");
        assert_eq!(body["blocks"][1]["fields"][1]["text"], "*Attempt*\n2");
        let excerpt = body["blocks"][2]["text"]["text"].as_str().unwrap();
        assert_eq!(excerpt.chars().count(), SECTION_CHARS);
        assert_eq!(
            body["blocks"][3]["elements"][0]["text"],
            "trace 4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let failed = message(&alert(Status::RolledBack), "#ghost");
        assert_eq!(
            failed["blocks"][0]["text"]["text"],
            "❌ fix-login rolled_back"
        );
        assert!(failed["text"].as_str().unwrap().contains("fix-login"));
    }

    #[test]
    fn slack_answers_are_classified() {
        assert_eq!(
            classify(200, None, br#"{"ok":true,"ts":"1.2"}"#),
            Verdict::Delivered { ts: "1.2".into() }
        );
        assert_eq!(
            classify(429, Some("7"), b""),
            Verdict::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "http 429".into()
            }
        );
        assert!(matches!(
            classify(503, None, b""),
            Verdict::Retry { after: None, .. }
        ));
        assert!(matches!(
            classify(200, None, br#"{"ok":false,"error":"ratelimited"}"#),
            Verdict::Retry { .. }
        ));
        for permanent in [
            "invalid_auth",
            "channel_not_found",
            "not_authed",
            "invalid_arguments",
        ] {
            let body = format!(r#"{{"ok":false,"error":"{permanent}"}}"#);
            assert_eq!(
                classify(200, None, body.as_bytes()),
                Verdict::GiveUp {
                    reason: permanent.into()
                }
            );
        }
        assert!(matches!(classify(404, None, b""), Verdict::GiveUp { .. }));
    }
}
