//! A fake Slack speaking Slack's wire formats, recording every call and answering from a script
//! (default: success).
//!
//! - Web API `POST /api/chat.postMessage` and `/api/chat.update`: `Authorization: Bearer xoxb-…`
//!   required (`not_authed` / `invalid_auth` otherwise, as HTTP 200 `{"ok":false,…}`); channel
//!   names are mapped to stable ids (`C0001`…), messages are kept so `chat.update` of an unknown
//!   `ts` answers `message_not_found`.
//! - Incoming webhook `POST /services/T…/B…/…`: `200 ok` as text; errors as text codes.
//! - `response_url` endpoints `POST /commands/…` and `/actions/…`: recorded, always `200 ok`
//!   (not scripted).
//!
//! A scripted answer ([`FakeResponse`]) applies to the next Web API or webhook call.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::{Notify, oneshot};

/// The `method` recorded for incoming-webhook calls.
pub const WEBHOOK_METHOD: &str = "incoming-webhook";
/// The `method` recorded for `response_url` calls.
pub const RESPONSE_URL_METHOD: &str = "response_url";

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackRequest {
    /// The Web API method, e.g. `chat.postMessage`; [`WEBHOOK_METHOD`] or
    /// [`RESPONSE_URL_METHOD`] for the other endpoints.
    pub method: String,
    /// The `Authorization` header as sent (e.g. `Bearer xoxb-…`), if any.
    pub authorization: Option<String>,
    /// The `traceparent` header as sent, if any.
    pub traceparent: Option<String>,
    /// The parsed JSON body (`Null` when the body was not JSON).
    pub body: serde_json::Value,
    /// The request path, e.g. `/api/chat.postMessage`.
    pub path: String,
    /// What the fake answered: `ok`, or the error code / HTTP status it used.
    pub answer: String,
    /// Wall-clock time the request arrived (after its body was read), for latency measurements
    /// against timestamps taken in other processes.
    pub received_at: std::time::SystemTime,
}

impl SlackRequest {
    /// The body's `text` field, or an empty string.
    pub fn text(&self) -> &str {
        self.body
            .get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }

    /// True when the fake answered success.
    pub fn succeeded(&self) -> bool {
        self.answer == "ok"
    }
}

/// A message as it stands in the fake's channels (after updates).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeMessage {
    /// Channel id.
    pub channel: String,
    /// Its `ts`.
    pub ts: String,
    /// The parent's `ts` for a thread reply.
    pub thread_ts: Option<String>,
    /// Current body (the last post or update).
    pub body: serde_json::Value,
    /// How many times it was updated.
    pub updates: u32,
}

impl FakeMessage {
    /// The body's `text` field, or an empty string.
    pub fn text(&self) -> &str {
        self.body
            .get("text")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    }
}

/// A scripted answer to the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeResponse {
    /// `200 {"ok":true,"channel":"C…","ts":"<increasing>"}` (webhook: `200 ok`).
    Ok,
    /// `429` with `Retry-After: <retry_after_s>`.
    RateLimited {
        /// Seconds the client is asked to wait.
        retry_after_s: u64,
    },
    /// `200 {"ok":false,"error":<code>}`, e.g. `invalid_auth` (webhook: `400 <code>`).
    SlackError(String),
    /// `500` with an empty body.
    ServerError,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<SlackRequest>>,
    script: Mutex<VecDeque<FakeResponse>>,
    next_ts: Mutex<u64>,
    channels: Mutex<HashMap<String, String>>,
    messages: Mutex<Vec<FakeMessage>>,
    arrived: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test thread that panicked while holding the lock has already failed the test.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fake Slack on `127.0.0.1:<free port>`; stops when dropped.
pub struct FakeSlack {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl FakeSlack {
    /// Starts the fake on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken test machine).
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the fake slack");
        let addr = listener.local_addr().expect("fake slack local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let router = axum::Router::new()
            .route("/api/{method}", post(web_api))
            .route("/services/{*path}", post(webhook))
            .route("/commands/{*path}", post(response_url))
            .route("/actions/{*path}", post(response_url))
            .with_state(shared.clone());
        tokio::spawn(async move {
            // Ends when the FakeSlack (and so the sender) is dropped.
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            addr,
            shared,
            _stop: stop,
        }
    }

    /// The id the fake gave channel `name` (e.g. `#web` → `C0002`), once something was posted
    /// to it.
    pub fn channel_id_of(&self, name: &str) -> Option<String> {
        lock(&self.shared.channels).get(name).cloned()
    }

    /// The Web API base URL to configure, e.g. `http://127.0.0.1:PORT/api`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// An incoming-webhook URL on the fake.
    pub fn webhook_url(&self) -> String {
        format!(
            "http://{}/services/T0001/B0001/fakewebhooksecret000000",
            self.addr
        )
    }

    /// A `response_url` on the fake, distinct per `name`.
    pub fn response_url(&self, name: &str) -> String {
        format!("http://{}/commands/T0001/{name}/xyz", self.addr)
    }

    /// Queues the answer to the next unanswered Web API or webhook request (FIFO); an empty
    /// script answers `Ok`.
    pub fn push_response(&self, response: FakeResponse) {
        lock(&self.shared.script).push_back(response);
    }

    /// Queues several answers, in order.
    pub fn push_responses(&self, responses: impl IntoIterator<Item = FakeResponse>) {
        lock(&self.shared.script).extend(responses);
    }

    /// Scripted answers not used yet.
    pub fn script_left(&self) -> usize {
        lock(&self.shared.script).len()
    }

    /// Every request received so far, in arrival order.
    pub async fn requests(&self) -> Vec<SlackRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The requests received after the first `start` ones, in arrival order (cheap polling for
    /// a benchmark that has already seen `start` requests).
    pub fn requests_since(&self, start: usize) -> Vec<SlackRequest> {
        lock(&self.shared.requests)
            .get(start..)
            .map(<[SlackRequest]>::to_vec)
            .unwrap_or_default()
    }

    /// The `chat.postMessage` requests received so far.
    pub async fn posts(&self) -> Vec<SlackRequest> {
        self.of_method("chat.postMessage")
    }

    /// The messages as they stand now, in posting order (updates applied).
    pub fn messages(&self) -> Vec<FakeMessage> {
        lock(&self.shared.messages).clone()
    }

    /// Waits until at least `n` `chat.postMessage` requests arrived or `timeout` passed, then
    /// returns the posts received (possibly fewer than `n`).
    pub async fn wait_for_posts(&self, n: usize, timeout: Duration) -> Vec<SlackRequest> {
        self.wait_for("chat.postMessage", n, timeout).await
    }

    /// Waits until at least `n` requests of `method` arrived or `timeout` passed, then returns
    /// those received (possibly fewer than `n`).
    pub async fn wait_for(&self, method: &str, n: usize, timeout: Duration) -> Vec<SlackRequest> {
        self.wait_until(timeout, |requests| {
            requests.iter().filter(|r| r.method == method).count() >= n
        })
        .await;
        self.of_method(method)
    }

    /// Waits until `done(all requests)` holds or `timeout` passed; returns all requests.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[SlackRequest]) -> bool,
    ) -> Vec<SlackRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let requests = lock(&self.shared.requests).clone();
            if done(&requests) {
                return requests;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return lock(&self.shared.requests).clone();
            }
        }
    }

    fn of_method(&self, method: &str) -> Vec<SlackRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|request| request.method == method)
            .cloned()
            .collect()
    }
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn record(
    shared: &Shared,
    method: &str,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
    answer: &str,
) {
    let request = SlackRequest {
        method: method.to_owned(),
        authorization: header_text(headers, header::AUTHORIZATION.as_str()),
        traceparent: header_text(headers, "traceparent"),
        body: serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
        path,
        answer: answer.to_owned(),
        received_at: std::time::SystemTime::now(),
    };
    lock(&shared.requests).push(request);
    shared.arrived.notify_waiters();
}

fn slack_error(code: &str) -> Response {
    Json(serde_json::json!({"ok": false, "error": code})).into_response()
}

fn channel_id(shared: &Shared, channel: &str) -> String {
    let looks_like_id = channel.len() >= 2
        && channel.starts_with(['C', 'G', 'D'])
        && channel
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if looks_like_id {
        return channel.to_owned();
    }
    let mut channels = lock(&shared.channels);
    let next = channels.len() + 1;
    channels
        .entry(channel.to_owned())
        .or_insert_with(|| format!("C{next:04}"))
        .clone()
}

/// Answers a Web API call as Slack would, given a successful script step.
fn answer_ok(shared: &Shared, method: &str, body: &serde_json::Value) -> Result<Response, String> {
    let text_of = |field: &str| body.get(field).and_then(serde_json::Value::as_str);
    let Some(channel) = text_of("channel").filter(|c| !c.is_empty()) else {
        return Err("channel_not_found".to_owned());
    };
    if text_of("text").is_none() && body.get("blocks").is_none() {
        return Err("no_text".to_owned());
    }
    let channel = channel_id(shared, channel);
    let mut messages = lock(&shared.messages);
    if method == "chat.update" {
        let ts = text_of("ts").unwrap_or_default();
        let Some(message) = messages
            .iter_mut()
            .find(|m| m.channel == channel && m.ts == ts)
        else {
            return Err("message_not_found".to_owned());
        };
        message.body = body.clone();
        message.updates += 1;
        return Ok(Json(
            serde_json::json!({"ok": true, "channel": channel, "ts": ts, "text": text_of("text")}),
        )
        .into_response());
    }
    let ts = {
        let mut next = lock(&shared.next_ts);
        *next += 1;
        format!("1700000000.{:06}", *next)
    };
    messages.push(FakeMessage {
        channel: channel.clone(),
        ts: ts.clone(),
        thread_ts: text_of("thread_ts").map(str::to_owned),
        body: body.clone(),
        updates: 0,
    });
    Ok(
        Json(serde_json::json!({"ok": true, "channel": channel, "ts": ts, "message": body}))
            .into_response(),
    )
}

async fn web_api(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let path = format!("/api/{method}");
    if method != "chat.postMessage" && method != "chat.update" {
        record(&shared, &method, path, &headers, &body, "unknown_method");
        return slack_error("unknown_method");
    }
    let auth = header_text(&headers, header::AUTHORIZATION.as_str());
    let auth_error = match auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
        None => Some("not_authed"),
        Some(token) if token.trim().is_empty() => Some("not_authed"),
        Some(token) if !token.starts_with("xoxb-") => Some("invalid_auth"),
        Some(_) => None,
    };
    let scripted = lock(&shared.script).pop_front().unwrap_or(FakeResponse::Ok);
    let (answer, response) = match scripted {
        FakeResponse::Ok => match auth_error {
            Some(code) => (code.to_owned(), slack_error(code)),
            None => {
                let json: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                match answer_ok(&shared, &method, &json) {
                    Ok(response) => ("ok".to_owned(), response),
                    Err(code) => (code.clone(), slack_error(&code)),
                }
            }
        },
        FakeResponse::RateLimited { retry_after_s } => (
            "http 429".to_owned(),
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_s.to_string())],
                Json(serde_json::json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response(),
        ),
        FakeResponse::SlackError(code) => (code.clone(), slack_error(&code)),
        FakeResponse::ServerError => (
            "http 500".to_owned(),
            StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        ),
    };
    record(&shared, &method, path, &headers, &body, &answer);
    response
}

async fn webhook(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let scripted = lock(&shared.script).pop_front().unwrap_or(FakeResponse::Ok);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let (answer, response) = match scripted {
        FakeResponse::Ok if json.get("text").is_none() && json.get("blocks").is_none() => (
            "invalid_payload".to_owned(),
            (StatusCode::BAD_REQUEST, "invalid_payload").into_response(),
        ),
        FakeResponse::Ok => ("ok".to_owned(), (StatusCode::OK, "ok").into_response()),
        FakeResponse::RateLimited { retry_after_s } => (
            "http 429".to_owned(),
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_s.to_string())],
                "rate_limited",
            )
                .into_response(),
        ),
        FakeResponse::SlackError(code) => (
            code.clone(),
            (StatusCode::BAD_REQUEST, code).into_response(),
        ),
        FakeResponse::ServerError => (
            "http 500".to_owned(),
            StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        ),
    };
    record(
        &shared,
        WEBHOOK_METHOD,
        format!("/services/{path}"),
        &headers,
        &body,
        &answer,
    );
    response
}

async fn response_url(
    State(shared): State<Arc<Shared>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    record(
        &shared,
        RESPONSE_URL_METHOD,
        format!("/{path}"),
        &headers,
        &body,
        "ok",
    );
    (StatusCode::OK, "ok").into_response()
}
