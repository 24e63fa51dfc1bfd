//! A fake Slack Web API: records every `chat.postMessage` / `chat.update` call and answers from
//! a script (default: success).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::sync::{Notify, oneshot};

/// One request the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackRequest {
    /// The Web API method, e.g. `chat.postMessage`.
    pub method: String,
    /// The `Authorization` header as sent (e.g. `Bearer xoxb-…`), if any.
    pub authorization: Option<String>,
    /// The `traceparent` header as sent, if any.
    pub traceparent: Option<String>,
    /// The parsed JSON body (`Null` when the body was not JSON).
    pub body: serde_json::Value,
}

impl SlackRequest {
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
    /// `200 {"ok":true,"channel":"C123","ts":"<increasing>"}`.
    Ok,
    /// `429` with `Retry-After: <retry_after_s>`.
    RateLimited {
        /// Seconds the client is asked to wait.
        retry_after_s: u64,
    },
    /// `200 {"ok":false,"error":<code>}`, e.g. `invalid_auth`.
    SlackError(String),
    /// `500` with an empty body.
    ServerError,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<SlackRequest>>,
    script: Mutex<VecDeque<FakeResponse>>,
    next_ts: Mutex<u64>,
    arrived: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test thread that panicked while holding the lock has already failed the test.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fake Slack Web API on `127.0.0.1:<free port>`; stops when dropped.
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
            .route("/api/{method}", post(handle))
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

    /// The Web API base URL to configure, e.g. `http://127.0.0.1:PORT/api`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Queues the answer to the next unanswered request (FIFO); an empty script answers `Ok`.
    pub fn push_response(&self, response: FakeResponse) {
        lock(&self.shared.script).push_back(response);
    }

    /// Every request received so far, in arrival order.
    pub async fn requests(&self) -> Vec<SlackRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The `chat.postMessage` requests received so far.
    pub async fn posts(&self) -> Vec<SlackRequest> {
        self.posts_now()
    }

    /// Waits until at least `n` `chat.postMessage` requests arrived or `timeout` passed, then
    /// returns the posts received (possibly fewer than `n`).
    pub async fn wait_for_posts(&self, n: usize, timeout: Duration) -> Vec<SlackRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.shared.arrived.notified();
            let posts = self.posts_now();
            if posts.len() >= n {
                return posts;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.posts_now();
            }
        }
    }

    fn posts_now(&self) -> Vec<SlackRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|request| request.method == "chat.postMessage")
            .cloned()
            .collect()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if method != "chat.postMessage" && method != "chat.update" {
        return Json(serde_json::json!({"ok": false, "error": "unknown_method"})).into_response();
    }
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let request = SlackRequest {
        method,
        authorization: header_text(header::AUTHORIZATION.as_str()),
        traceparent: header_text("traceparent"),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    };
    let scripted = lock(&shared.script).pop_front().unwrap_or(FakeResponse::Ok);
    lock(&shared.requests).push(request);
    shared.arrived.notify_waiters();
    match scripted {
        FakeResponse::Ok => {
            let ts = {
                let mut next = lock(&shared.next_ts);
                *next += 1;
                format!("1700000000.{:06}", *next)
            };
            Json(serde_json::json!({"ok": true, "channel": "C123", "ts": ts})).into_response()
        }
        FakeResponse::RateLimited { retry_after_s } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_s.to_string())],
            Json(serde_json::json!({"ok": false, "error": "ratelimited"})),
        )
            .into_response(),
        FakeResponse::SlackError(code) => {
            Json(serde_json::json!({"ok": false, "error": code})).into_response()
        }
        FakeResponse::ServerError => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
