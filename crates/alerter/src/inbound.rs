//! `POST /slack/commands` and `POST /slack/interactions`: verify the v0 signature over the raw
//! body, then run the verb.
//!
//! Slack wants an answer within 3 s. A slash command is answered inline (ephemeral) when its
//! verb finishes within `inline_answer_budget`; otherwise the answer says "working on it" and
//! the result follows through `response_url`. Button presses are acknowledged at once with an
//! empty 200 and answered through `response_url`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::commands::{Commands, Invocation, Source};
use crate::error::AlerterError;
use crate::signing::Verifier;

/// Tries of one `response_url` post.
const RESPONSE_URL_TRIES: u32 = 3;

/// What the Slack routes share.
pub struct Inbound {
    /// Signature checks.
    pub verifier: Verifier,
    /// The verbs.
    pub commands: Arc<Commands>,
    /// For `response_url`.
    pub http: reqwest::Client,
    /// Longest inline wait for a verb.
    pub inline_budget: Duration,
    /// Where a `response_url` may point.
    pub response_urls: ResponseUrls,
}

/// The origins a `response_url` may point to (`slack.response_url_origins`).
#[derive(Debug, Clone)]
pub struct ResponseUrls {
    origins: Vec<reqwest::Url>,
}

impl ResponseUrls {
    /// Reads the configured origins; an entry that is not an `http(s)://host[:port]` origin is
    /// an error naming it.
    pub fn new(origins: &[String]) -> Result<Self, String> {
        let origins = origins
            .iter()
            .map(|raw| {
                let url = reqwest::Url::parse(raw).map_err(|err| {
                    format!("slack.response_url_origins: {raw:?} is not a URL: {err}")
                })?;
                let bare = url.path() == "/" && url.query().is_none() && url.username().is_empty();
                if !matches!(url.scheme(), "https" | "http") || url.host().is_none() || !bare {
                    return Err(format!(
                        "slack.response_url_origins: {raw:?} must be an origin like https://hooks.slack.com"
                    ));
                }
                Ok(url)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { origins })
    }

    /// `raw` as a URL when it lies on an allowed origin and carries no credentials.
    fn check(&self, raw: &str) -> Result<reqwest::Url, AlerterError> {
        let refused = || {
            tracing::warn!("slack request refused: response_url outside the allowed origins");
            AlerterError::invalid(
                "response_url",
                "not on an allowed origin (slack.response_url_origins)",
            )
        };
        let url = reqwest::Url::parse(raw).map_err(|_| refused())?;
        // Slack's response_urls are `/commands/…` (slash commands) and `/actions/…` (buttons);
        // anything else on the same host (an incoming webhook of another workspace) is not one.
        let allowed = url.username().is_empty()
            && url.password().is_none()
            && (url.path().starts_with("/commands/") || url.path().starts_with("/actions/"))
            && self
                .origins
                .iter()
                .any(|origin| origin.origin() == url.origin());
        if allowed { Ok(url) } else { Err(refused()) }
    }
}

/// The `/slack/*` routes.
pub fn routes(inbound: Arc<Inbound>) -> Router {
    Router::new()
        .route("/slack/commands", post(slash_command))
        .route("/slack/interactions", post(interaction))
        .with_state(inbound)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn verify(inbound: &Inbound, headers: &HeaderMap, body: &[u8]) -> Result<(), AlerterError> {
    inbound
        .verifier
        .verify(
            header(headers, "x-slack-request-timestamp"),
            header(headers, "x-slack-signature"),
            body,
        )
        .map_err(|err| {
            tracing::warn!(error = %err, "slack request refused");
            AlerterError::from(err)
        })
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

fn required(body: &[u8], name: &str) -> Result<String, AlerterError> {
    form_field(body, name).ok_or_else(|| AlerterError::invalid(name, "missing form field"))
}

fn ephemeral(text: &str) -> Value {
    json!({"response_type": "ephemeral", "text": text})
}

#[tracing::instrument(skip_all)]
async fn slash_command(
    State(inbound): State<Arc<Inbound>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AlerterError> {
    verify(&inbound, &headers, &body)?;
    let invocation = Invocation {
        user_id: required(&body, "user_id")?,
        user_name: form_field(&body, "user_name").unwrap_or_default(),
        channel_id: form_field(&body, "channel_id").unwrap_or_default(),
        channel_name: form_field(&body, "channel_name").unwrap_or_default(),
        source: Source::Command,
        command: required(&body, "command")?,
        text: form_field(&body, "text").unwrap_or_default(),
    };
    let response_url = match form_field(&body, "response_url") {
        Some(raw) if !raw.is_empty() => Some(inbound.response_urls.check(&raw)?),
        _ => None,
    };
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<String>();
    let commands = Arc::clone(&inbound.commands);
    let http = inbound.http.clone();
    tokio::spawn(async move {
        let answer = commands.run(&invocation).await;
        // The handler stopped waiting: the answer goes through response_url instead.
        if let Err(answer) = answer_tx.send(answer) {
            post_response(&http, response_url, &ephemeral(&answer)).await;
        }
    });
    let answer = match tokio::time::timeout(inbound.inline_budget, answer_rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => "⚠️ the command stopped without an answer".to_owned(),
        Err(_) => "⏳ working on it; the answer will follow here".to_owned(),
    };
    Ok(Json(ephemeral(&answer)).into_response())
}

/// A button's `action_id` → the verb it runs.
fn verb_of_action(action_id: &str) -> Option<&'static str> {
    match action_id {
        "retry" => Some("retry"),
        "cancel" => Some("cancel"),
        "revert" => Some("revert"),
        "ack" => Some("ack"),
        "view_summary" => Some("summary"),
        _ => None,
    }
}

#[tracing::instrument(skip_all)]
async fn interaction(
    State(inbound): State<Arc<Inbound>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, AlerterError> {
    verify(&inbound, &headers, &body)?;
    let payload = required(&body, "payload")?;
    let payload: Value = serde_json::from_str(&payload)
        .map_err(|err| AlerterError::invalid("payload", format!("not json: {err}")))?;
    let text_at = |pointer: &str| {
        payload
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if text_at("/type") != "block_actions" {
        tracing::debug!(kind = %text_at("/type"), "interaction ignored");
        return Ok(().into_response());
    }
    let action_id = text_at("/actions/0/action_id");
    let Some(verb) = verb_of_action(&action_id) else {
        return Err(AlerterError::invalid(
            "payload.actions[0].action_id",
            format!("unknown action {action_id:?}"),
        ));
    };
    let user_id = text_at("/user/id");
    if user_id.is_empty() {
        return Err(AlerterError::invalid("payload.user.id", "missing"));
    }
    let invocation = Invocation {
        user_name: payload
            .pointer("/user/username")
            .or_else(|| payload.pointer("/user/name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        user_id,
        channel_id: text_at("/channel/id"),
        channel_name: text_at("/channel/name"),
        source: Source::Button,
        command: "/ghost".to_owned(),
        text: format!("{verb} {}", text_at("/actions/0/value")),
    };
    let response_url = match text_at("/response_url") {
        raw if raw.is_empty() => None,
        raw => Some(inbound.response_urls.check(&raw)?),
    };
    let commands = Arc::clone(&inbound.commands);
    let http = inbound.http.clone();
    tokio::spawn(async move {
        let answer = commands.run(&invocation).await;
        let mut body = ephemeral(&answer);
        if let Some(object) = body.as_object_mut() {
            object.insert("replace_original".to_owned(), json!(false));
        }
        post_response(&http, response_url, &body).await;
    });
    Ok(().into_response())
}

/// Posts `body` to a `response_url`, with a few tries; logs when it cannot.
async fn post_response(http: &reqwest::Client, response_url: Option<reqwest::Url>, body: &Value) {
    let Some(response_url) = response_url else {
        tracing::warn!("no response_url to answer through");
        return;
    };
    for attempt in 1..=RESPONSE_URL_TRIES {
        match http.post(response_url.clone()).json(body).send().await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                tracing::warn!(
                    status = response.status().as_u16(),
                    attempt,
                    "response_url refused the answer"
                );
            }
            Err(err) => tracing::warn!(error = %err, attempt, "response_url unreachable"),
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
    tracing::error!("giving up on answering through response_url");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SlackConfig;

    #[test]
    fn by_default_only_slacks_hook_hosts_are_answered() {
        let urls = ResponseUrls::new(&SlackConfig::default().response_url_origins).unwrap();
        for good in [
            "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN",
            "https://hooks.slack.com:443/actions/T0/1/x",
            "https://hooks.slack-gov.com/commands/T0/1/x",
        ] {
            assert!(urls.check(good).is_ok(), "{good}");
        }
        for bad in [
            "http://hooks.slack.com/commands/T0/1/x",
            "https://hooks.slack.com.evil.example/commands/T0/1/x",
            "https://evil.example/hooks.slack.com/",
            "https://hooks.slack.com/services/T0/B0/other-workspace-webhook",
            "https://hooks.slack.com/commands",
            "https://user:pw@hooks.slack.com/commands/T0/1/x",
            "https://hooks.slack.com:8443/commands/T0/1/x",
            "http://127.0.0.1:8080/commands",
            "http://169.254.169.254/latest/meta-data/",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(urls.check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_configured_origin_must_be_a_bare_origin() {
        assert!(ResponseUrls::new(&["https://hooks.example.com".to_owned()]).is_ok());
        for bad in [
            "hooks.slack.com",
            "https://hooks.slack.com/commands",
            "ftp://x.example",
        ] {
            assert!(ResponseUrls::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
