//! The Slack clients: the Web API (`chat.postMessage`, `chat.update` with a bot token) and an
//! incoming webhook, each call read into a [`Verdict`] with Slack's retry rules (honour
//! `429 Retry-After`, back off on 5xx and network errors, never retry a permanent error such as
//! `invalid_auth`). Retrying itself is the outbox's job.

use std::time::Duration;

use ghost_runtime::config::Secret;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER};
use serde_json::Value;

use crate::config::SlackConfig;

/// Per-request timeout.
/// Longest wait for one HTTP request of the alerter (Slack's API, webhooks, `response_url`s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Slack `error` codes worth another try; every other code is permanent.
const TRANSIENT_ERRORS: &[&str] = &[
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// Web API errors that mean "this token will not work": the webhook may still.
pub const TOKEN_ERRORS: &[&str] = &[
    "not_authed",
    "invalid_auth",
    "token_revoked",
    "token_expired",
    "account_inactive",
    "missing_scope",
    "no_permission",
];

/// What one call to Slack means for the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done; for Web API posts, where the message now lives.
    Delivered {
        /// The message timestamp (empty for webhooks).
        ts: String,
        /// The channel id Slack answered with (empty for webhooks).
        channel: String,
    },
    /// Worth another try, after `after` when Slack said so.
    Retry {
        /// Slack's `Retry-After`, if given.
        after: Option<Duration>,
        /// Why, for the log.
        reason: String,
    },
    /// Will never work as sent.
    GiveUp {
        /// Why, for the log (Slack's error code when it gave one).
        reason: String,
    },
}

fn retry_after(value: Option<&str>) -> Duration {
    value
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

/// Reads a Web API answer: HTTP status, `Retry-After` header and JSON body
/// (`{"ok":false,"error":…}` arrives with HTTP 200).
pub fn classify(status: u16, retry_after_header: Option<&str>, body: &[u8]) -> Verdict {
    if status == 429 {
        return Verdict::Retry {
            after: Some(retry_after(retry_after_header)),
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
    let text = |field: &str| {
        answer
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if answer.get("ok").and_then(Value::as_bool) == Some(true) {
        return Verdict::Delivered {
            ts: text("ts"),
            channel: text("channel"),
        };
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

/// Reads an incoming-webhook answer: `200 ok` as text, errors as text codes with 4xx.
pub fn classify_webhook(status: u16, retry_after_header: Option<&str>, body: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(body).trim().to_owned();
    match status {
        200 => Verdict::Delivered {
            ts: String::new(),
            channel: String::new(),
        },
        429 => Verdict::Retry {
            after: Some(retry_after(retry_after_header)),
            reason: "http 429".to_owned(),
        },
        500.. => Verdict::Retry {
            after: None,
            reason: format!("http {status} {text}"),
        },
        _ => Verdict::GiveUp {
            reason: if text.is_empty() {
                format!("http {status}")
            } else {
                text
            },
        },
    }
}

/// Slack's Web API and/or incoming webhook.
#[derive(Clone)]
pub struct SlackClient {
    http: reqwest::Client,
    api_base_url: Option<String>,
    token: Secret,
    webhook_url: Secret,
}

impl SlackClient {
    /// A client for `config` over `http` (the alerter's one HTTP client: one connection pool
    /// and one copy of the trusted roots), or `None` when Slack is off (no API base URL and no
    /// webhook).
    pub fn new(config: &SlackConfig, http: reqwest::Client) -> Option<Self> {
        if config.api_base_url.is_none() && config.webhook_url.is_empty() {
            return None;
        }
        Some(Self {
            http,
            api_base_url: config
                .api_base_url
                .as_ref()
                .map(|url| url.trim_end_matches('/').to_owned()),
            token: config.bot_token.clone(),
            webhook_url: config.webhook_url.clone(),
        })
    }

    /// True when the Web API can be used (a base URL and a bot token, or no webhook at all).
    pub fn has_api(&self) -> bool {
        self.api_base_url.is_some() && (!self.token.is_empty() || self.webhook_url.is_empty())
    }

    /// True when an incoming webhook is configured.
    pub fn has_webhook(&self) -> bool {
        !self.webhook_url.is_empty()
    }

    /// Calls Web API `method` (e.g. `chat.postMessage`) with a JSON body.
    pub async fn api(&self, method: &str, body: &Value) -> Verdict {
        let Some(base_url) = &self.api_base_url else {
            return Verdict::GiveUp {
                reason: "no slack api base url".to_owned(),
            };
        };
        let mut headers = HeaderMap::new();
        ghost_runtime::propagation::inject_headers(&mut headers);
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", self.token.expose())) {
            headers.insert(AUTHORIZATION, value);
        }
        let request = self
            .http
            .post(format!("{base_url}/{method}"))
            .headers(headers)
            .json(body);
        send(request, classify).await
    }

    /// Posts a body to the incoming webhook.
    pub async fn webhook(&self, body: &Value) -> Verdict {
        if self.webhook_url.is_empty() {
            return Verdict::GiveUp {
                reason: "no webhook url".to_owned(),
            };
        }
        let request = self.http.post(self.webhook_url.expose()).json(body);
        send(request, classify_webhook).await
    }
}

async fn send(
    request: reqwest::RequestBuilder,
    read: fn(u16, Option<&str>, &[u8]) -> Verdict,
) -> Verdict {
    let response = match request.send().await {
        Ok(response) => response,
        Err(err) => {
            return Verdict::Retry {
                after: None,
                reason: format!("request failed: {err}"),
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after_header = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    match response.bytes().await {
        Ok(bytes) => read(status, retry_after_header.as_deref(), &bytes),
        Err(err) => Verdict::Retry {
            after: None,
            reason: format!("reading the answer failed: {err}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_answers_are_classified() {
        assert_eq!(
            classify(200, None, br#"{"ok":true,"channel":"C1","ts":"1.2"}"#),
            Verdict::Delivered {
                ts: "1.2".into(),
                channel: "C1".into()
            }
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

    #[test]
    fn webhook_answers_are_classified() {
        assert!(matches!(
            classify_webhook(200, None, b"ok"),
            Verdict::Delivered { .. }
        ));
        assert_eq!(
            classify_webhook(400, None, b"invalid_payload"),
            Verdict::GiveUp {
                reason: "invalid_payload".into()
            }
        );
        assert_eq!(
            classify_webhook(429, Some("3"), b""),
            Verdict::Retry {
                after: Some(Duration::from_secs(3)),
                reason: "http 429".into()
            }
        );
        assert!(matches!(
            classify_webhook(500, None, b"rollup_error"),
            Verdict::Retry { .. }
        ));
    }
}
