//! The outbox's delivery rounds: several Slack calls in flight at once (`slack.concurrency`),
//! order per thread kept under concurrency, a `429 Retry-After` holding its whole channel, and
//! a throughput figure (printed, not asserted).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alerter::store::{Kind, NewMessage};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ghost_runtime::clock::SystemClock;
use ghost_testkit::{FakeResponse, FakeSlack, SlackRequest};
use serde_json::json;
use tokio::sync::oneshot;

use crate::helpers::{TestApp, WAIT, config, drained, open_store, spawn_with};

/// A slow front for the fake Slack: each Web API call waits (`delay(n)` for the n-th call)
/// before it is passed on, and the most calls in flight at once is recorded.
struct SlowSlack {
    base_url: String,
    max_in_flight: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone)]
struct Front {
    target: String,
    http: reqwest::Client,
    delay: fn(usize) -> Duration,
    calls: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl SlowSlack {
    async fn start(slack: &FakeSlack, delay: fn(usize) -> Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let front = Front {
            target: slack.base_url(),
            http: reqwest::Client::new(),
            delay,
            calls: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::clone(&max_in_flight),
        };
        let router = axum::Router::new()
            .route("/api/{method}", axum::routing::post(pass_on))
            .with_state(front);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            base_url: format!("http://{addr}/api"),
            max_in_flight,
            _stop: stop,
        }
    }

    fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn pass_on(
    State(front): State<Front>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let now = front.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    front.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let n = front.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep((front.delay)(n)).await;
    let mut request = front
        .http
        .post(format!("{}/{method}", front.target))
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) {
            request = request.header(name.as_str(), value);
        }
    }
    let answer = request.send().await.expect("fake slack reachable");
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = answer.bytes().await.unwrap_or_default();
    front.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = (status, bytes.to_vec()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, value.parse().unwrap());
    }
    response
}

/// Unix ms now.
fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A post or update of `thread` to `channel` saying `text`.
fn message(thread: &str, channel: &str, kind: Kind, text: &str) -> NewMessage {
    NewMessage {
        thread: thread.to_owned(),
        channel: channel.to_owned(),
        kind,
        body: json!({ "text": text }),
        traceparent: None,
        priority: alerter::store::Priority::Thread,
    }
}

/// Stores `messages` in a fresh database under `dir` before any alerter runs, so the loop finds
/// them all at once when it starts.
async fn prefill(dir: &std::path::Path, messages: Vec<NewMessage>) {
    let store = open_store(dir).await;
    store.enqueue(messages, 1).await.unwrap();
}

/// Waits (bounded by `limit`) until nothing is pending; returns (sent, dead, pending).
async fn drain(app: &TestApp, limit: Duration) -> (u64, u64, u64) {
    let counts = drained(app, limit).await;
    (counts.sent, counts.dead, counts.pending)
}

async fn several_slack_calls_are_in_flight_at_once_up_to_the_configured_concurrency() {
    const CONCURRENCY: u32 = 4;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    let messages = (0..16)
        .map(|n| message(&format!("t/{n}"), "#c", Kind::Post, &format!("m{n}")))
        .collect();
    prefill(&dir, messages).await;
    let slack = FakeSlack::start().await;
    let slow = SlowSlack::start(&slack, |_| Duration::from_millis(50)).await;
    let mut cfg = config(Some(slow.base_url.clone()));
    cfg.data_dir = Some(dir);
    cfg.slack.concurrency = CONCURRENCY;
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;

    assert_eq!(drain(&app, WAIT).await, (16, 0, 0));
    assert_eq!(slack.posts().await.len(), 16);
    let most = slow.max_in_flight();
    assert!(
        most >= 2,
        "slack calls were never in flight together (at most {most})"
    );
    assert!(
        most <= CONCURRENCY as usize,
        "{most} calls in flight, more than slack.concurrency = {CONCURRENCY}"
    );
    app.stop().await;
}

async fn with_pacing_a_round_sends_at_most_one_message_per_channel() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    let messages = (0..6)
        .map(|n| {
            let channel = if n % 2 == 0 { "#even" } else { "#odd" };
            message(&format!("t/{n}"), channel, Kind::Post, &format!("m{n}"))
        })
        .collect();
    prefill(&dir, messages).await;
    let slack = FakeSlack::start().await;
    let slow = SlowSlack::start(&slack, |_| Duration::from_millis(40)).await;
    let mut cfg = config(Some(slow.base_url.clone()));
    cfg.data_dir = Some(dir);
    cfg.slack.concurrency = 8;
    cfg.slack.pacing = Duration::from_millis(20);
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;

    assert_eq!(drain(&app, WAIT).await, (6, 0, 0));
    // One call per channel at a time, both channels at once.
    assert_eq!(slow.max_in_flight(), 2);
    let texts: Vec<String> = slack
        .posts()
        .await
        .iter()
        .map(|r| r.text().to_owned())
        .collect();
    for channel in [["m0", "m2", "m4"], ["m1", "m3", "m5"]] {
        let positions: Vec<usize> = channel
            .iter()
            .map(|m| texts.iter().position(|t| t == m).expect("delivered"))
            .collect();
        assert!(positions.is_sorted(), "{texts:?}");
    }
    app.stop().await;
}

/// The position of the first successful request satisfying `is`.
fn position(requests: &[SlackRequest], is: impl Fn(&SlackRequest) -> bool) -> usize {
    requests
        .iter()
        .position(|r| r.succeeded() && is(r))
        .expect("request present")
}

async fn order_per_thread_holds_under_concurrency() {
    const THREADS: usize = 30;
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    let mut messages = Vec::new();
    for n in 0..THREADS {
        let thread = format!("t/{n}");
        messages.push(message(&thread, "#c", Kind::Post, &format!("post {n}")));
        messages.push(message(&thread, "#c", Kind::Update, &format!("update {n}")));
        messages.push(message(&thread, "#c", Kind::Reply, &format!("reply {n}")));
    }
    prefill(&dir, messages).await;
    let slack = FakeSlack::start().await;
    // Uneven answer times, so calls of one round come back in shuffled order.
    let slow = SlowSlack::start(&slack, |n| Duration::from_millis((n as u64 * 7) % 5 * 4)).await;
    let mut cfg = config(Some(slow.base_url.clone()));
    cfg.data_dir = Some(dir);
    cfg.slack.concurrency = 8;
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;

    assert_eq!(drain(&app, WAIT).await, (3 * THREADS as u64, 0, 0));
    assert!(slow.max_in_flight() >= 2, "no concurrency was exercised");
    let requests = slack.requests().await;
    let messages = slack.messages();
    let parents: Vec<_> = messages.iter().filter(|m| m.thread_ts.is_none()).collect();
    assert_eq!(parents.len(), THREADS, "an update or reply lost its thread");
    for n in 0..THREADS {
        let parent = parents
            .iter()
            .find(|m| m.text() == format!("update {n}"))
            .expect("the thread's parent, updated");
        assert_eq!(parent.updates, 1, "thread {n}");
        let post = position(&requests, |r| r.text() == format!("post {n}"));
        let update = position(&requests, |r| r.text() == format!("update {n}"));
        let reply = position(&requests, |r| r.text() == format!("reply {n}"));
        assert!(
            post < update && update < reply,
            "thread {n}: {post} {update} {reply}"
        );
        assert_eq!(requests[update].method, "chat.update");
        assert_eq!(requests[update].body["ts"], parent.ts.as_str());
        assert_eq!(requests[reply].body["thread_ts"], parent.ts.as_str());
    }
    app.stop().await;
}

async fn a_retry_after_holds_every_message_of_that_channel() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    prefill(&dir, vec![message("a/1", "#a", Kind::Post, "a1")]).await;
    // Due a little later, once the first try has been answered with the 429: another thread of
    // the held channel, and a thread of another channel.
    let later = vec![
        message("a/2", "#a", Kind::Post, "a2"),
        message("b/1", "#b", Kind::Post, "b post"),
        message("b/1", "#b", Kind::Update, "b update"),
        message("b/1", "#b", Kind::Reply, "b reply"),
    ];
    let store = open_store(&dir).await;
    store.enqueue(later, now_ms() + 800).await.unwrap();
    drop(store);
    let slack = FakeSlack::start().await;
    slack.push_response(FakeResponse::RateLimited { retry_after_s: 2 });
    let mut cfg = config(Some(slack.base_url()));
    cfg.data_dir = Some(dir);
    cfg.slack.concurrency = 8;
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;

    assert_eq!(drain(&app, WAIT).await, (5, 0, 0));
    let requests = slack.requests().await;
    assert_eq!(
        (requests[0].text(), requests[0].answer.as_str()),
        ("a1", "http 429"),
        "{requests:#?}"
    );
    let order: Vec<&str> = requests
        .iter()
        .filter(|r| r.succeeded())
        .map(SlackRequest::text)
        .collect();
    // #b goes on while #a waits; a2 is held with a1 although it was never refused.
    assert_eq!(&order[..3], ["b post", "b update", "b reply"], "{order:?}");
    let mut held: Vec<&str> = order[3..].to_vec();
    held.sort_unstable();
    assert_eq!(held, ["a1", "a2"], "{order:?}");
    app.stop().await;
}

/// Figure, not assertion: messages per second for 5,000 queued messages (2,500 threads, each a
/// post then an update of it) to the fake Slack on loopback, `synchronous=FULL` database.
/// Prints the rate (a figure, not asserted); `GHOST_OUTBOX_THREADS` sets the size (default
/// 500 threads = 1,000 messages; the README figure used 2,500). Run:
/// `cargo nextest run -p alerter --no-capture backlog_is_delivered`.
async fn a_backlog_is_delivered_each_message_once_and_the_rate_is_printed() {
    let threads: usize = std::env::var("GHOST_OUTBOX_THREADS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(500);
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("alerter");
    let mut messages = Vec::with_capacity(threads * 2);
    for n in 0..threads {
        messages.push(message(&format!("t/{n}"), "#bench", Kind::Post, "queued"));
    }
    for n in 0..threads {
        messages.push(message(&format!("t/{n}"), "#bench", Kind::Update, "done"));
    }
    prefill(&dir, messages).await;
    let slack = FakeSlack::start().await;
    let mut cfg = config(Some(slack.base_url()));
    cfg.data_dir = Some(dir);
    let started = Instant::now();
    let app = spawn_with(cfg, Arc::new(SystemClock)).await;
    let (sent, dead, pending) = drain(&app, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    let total = threads * 2;
    eprintln!(
        "outbox throughput: {sent} of {total} sent ({dead} dead, {pending} pending) in {:.2} s = {:.0} messages/s",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    assert_eq!((sent, dead, pending), (total as u64, 0, 0));
    app.stop().await;
}

on_both_stores!(
    several_slack_calls_are_in_flight_at_once_up_to_the_configured_concurrency,
    with_pacing_a_round_sends_at_most_one_message_per_channel,
    order_per_thread_holds_under_concurrency,
    a_retry_after_holds_every_message_of_that_channel,
    a_backlog_is_delivered_each_message_once_and_the_rate_is_printed,
);
