//! Spawning the real alerter (and, for the verbs, the real router and summarizer) on loopback,
//! pointed at a fake Slack; signing Slack requests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alerter::lifecycle::Lifecycle;
use alerter::store::Store;
use alerter::{AlerterConfig, App, SlackConfig};
use ghost_proto::alerter::v1::NotifyRequest;
use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::PatchStatus;
use ghost_runtime::clock::{RuleClock, SharedClock, SystemClock};
use ghost_runtime::config::{Secret, ServerConfig};
use ghost_testkit::postgres::TempPostgres;
use ghost_testkit::{POLL_INTERVAL, wait_until};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The bot token the tests configure.
pub const TOKEN: &str = "xoxb-test-token";
/// The signing secret the tests configure.
pub const SIGNING_SECRET: &str = "test-signing-secret-0123456789";
/// The one operator.
pub const OPERATOR: &str = "UOPERATOR1";
/// Someone who is not an operator.
pub const BYSTANDER: &str = "UBYSTANDER";
/// Generous bound on waiting for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// Waits (at most `within`) until the alerter's outbox has nothing pending (the fake Slack
/// records a request before the alerter has read the answer and marked the message sent);
/// returns the outbox's counts then.
pub async fn drained(app: &TestApp, within: Duration) -> alerter::store::OutboxCounts {
    wait_until(
        "the alerter's outbox to drain",
        within,
        POLL_INTERVAL,
        async || {
            let counts = app.store.outbox_counts().await.unwrap();
            if counts.pending == 0 {
                Ok(counts)
            } else {
                Err(counts)
            }
        },
    )
    .await
}

/// A running alerter; stops when dropped.
pub struct TestApp {
    pub client: AlerterServiceClient<Channel>,
    pub http: String,
    /// `http://<gRPC address>` (`grpc.health.v1` too).
    pub grpc_url: String,
    pub store: Store,
    pub lifecycle: Arc<Lifecycle>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        (&mut self.task)
            .await
            .expect("alerter task")
            .expect("alerter run");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// A rule clock that moves only when a test sets it: for a test that must jump minutes ahead
/// while the real app keeps serving (paused tokio time would also fire its servers' idle
/// timeouts).
#[derive(Debug, Default)]
pub struct PinnedClock(std::sync::atomic::AtomicI64);

impl PinnedClock {
    /// A clock reading `now_ms` until set.
    pub fn at(now_ms: i64) -> Arc<Self> {
        Arc::new(Self(std::sync::atomic::AtomicI64::new(now_ms)))
    }

    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: i64) {
        self.0.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl RuleClock for PinnedClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// An origin nothing listens on, allowed as a `response_url` where no follow-up is expected.
pub const DISCARD_ORIGIN: &str = "http://127.0.0.1:9";

/// The test configuration: fast retries, no pacing, a signing secret and one operator.
pub fn config(slack_base_url: Option<String>) -> AlerterConfig {
    // response_urls may point to Slack's hosts, the fake Slack and the discard address `slash` uses.
    let mut response_url_origins = SlackConfig::default().response_url_origins;
    response_url_origins.push(DISCARD_ORIGIN.to_owned());
    if let Some(base) = &slack_base_url {
        let url = reqwest::Url::parse(base).expect("fake Slack URL");
        response_url_origins.push(url.origin().ascii_serialization());
    }
    AlerterConfig {
        server: ServerConfig {
            drain_grace: Duration::from_millis(50),
            ..ServerConfig::ephemeral()
        },
        slack: SlackConfig {
            api_base_url: slack_base_url,
            bot_token: Secret::new(TOKEN),
            channel: "#ghost-test".to_owned(),
            signing_secret: Secret::new(SIGNING_SECRET),
            operators: vec![OPERATOR.to_owned()],
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            pacing: Duration::ZERO,
            response_url_origins,
            ..SlackConfig::default()
        },
        ..AlerterConfig::default()
    }
}

/// Builds and runs the real alerter on ephemeral ports; Slack at `slack_base_url`, if any.
pub async fn spawn_alerter(slack_base_url: Option<String>) -> TestApp {
    spawn_with(config(slack_base_url), Arc::new(SystemClock)).await
}

tokio::task_local! {
    /// The PostgreSQL database the alerters a test spawns share, while it runs on PostgreSQL
    /// (see `on_both_stores!`); unset: SQLite, as the test's config says.
    static STORE_URL: String;
}

/// Runs `test` with every alerter it spawns on a fresh database of a PostgreSQL server of its
/// own; prints why and returns when PostgreSQL is not installed.
pub async fn on_postgres(name: &str, test: impl std::future::Future<Output = ()>) {
    let Some(server) = TempPostgres::start_or_skip(name) else {
        return;
    };
    STORE_URL.scope(server.create_database(), test).await;
    drop(server);
}

/// Runs each named `async fn()` test twice: on SQLite (as written) and with every alerter it
/// spawns on a real PostgreSQL ([`on_postgres`]). A restart in the test (a second spawn)
/// finds the same database, as it finds the same `data_dir` on SQLite.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let test = concat!(module_path!(), "::postgres");
                    $crate::helpers::on_postgres(test, super::$name()).await;
                }
            }
        )*
    };
}

/// The store an alerter spawned with `data_dir` = `dir` would open: the test's PostgreSQL
/// database when it runs on one, else the SQLite file under `dir`.
pub async fn open_store(dir: &Path) -> Store {
    if let Ok(url) = STORE_URL.try_with(Clone::clone) {
        return Store::open_postgres(&url)
            .await
            .expect("open the test's database");
    }
    std::fs::create_dir_all(dir).unwrap();
    Store::open(Some(&dir.join("alerter.db"))).unwrap()
}

/// Builds and runs the real alerter with `config` and `clock` (on the test's PostgreSQL
/// database when it runs on one).
pub async fn spawn_with(mut config: AlerterConfig, clock: SharedClock) -> TestApp {
    if let Ok(url) = STORE_URL.try_with(Clone::clone) {
        config.store.url = Some(Secret::new(url));
    }
    let app = App::build_with_clock(config, clock)
        .await
        .expect("build alerter");
    let addr = app.grpc_addr();
    let http = format!("http://{}", app.http_addr());
    let store = app.store();
    let lifecycle = app.lifecycle();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = AlerterServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to alerter");
    TestApp {
        client,
        http,
        grpc_url: format!("http://{addr}"),
        store,
        lifecycle,
        stop: Some(stop),
        task,
    }
}

/// A Notify for `patch_id`, attempt 1, failed on MAIN.
pub fn notify(patch_id: &str) -> NotifyRequest {
    NotifyRequest {
        patch_id: patch_id.to_owned(),
        target: "MAIN".to_owned(),
        attempt: 1,
        status: PatchStatus::RolledBack as i32,
        description: "make login faster".to_owned(),
        excerpt: format!("# ❌ {patch_id} rolled_back\n\npatchName: {patch_id}\n"),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
        error: "validation failed".to_owned(),
        ..NotifyRequest::default()
    }
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// Posts a form body to `url` with the given signing headers (either may be absent).
pub async fn post_signed(
    url: &str,
    body: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(timestamp) = timestamp {
        request = request.header("x-slack-request-timestamp", timestamp);
    }
    if let Some(signature) = signature {
        request = request.header("x-slack-signature", signature);
    }
    let response = request.send().await.expect("alerter reachable");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A fresh `trigger_id`, as Slack sends one per request (so equal commands are not replays).
fn next_trigger_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{n}.47445629121.803a0bc887a14d10d2c447fce8b6703c")
}

/// A slash-command form body.
pub fn command_body(command: &str, text: &str, user_id: &str, response_url: &str) -> String {
    command_body_in("C0TEST", command, text, user_id, response_url)
}

/// A slash-command form body as sent from channel `channel_id`.
pub fn command_body_in(
    channel_id: &str,
    command: &str,
    text: &str,
    user_id: &str,
    response_url: &str,
) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "ignored")
        .append_pair("team_id", "T0001")
        .append_pair("channel_id", channel_id)
        .append_pair("user_id", user_id)
        .append_pair("user_name", "tester")
        .append_pair("command", command)
        .append_pair("text", text)
        .append_pair("response_url", response_url)
        .append_pair("trigger_id", &next_trigger_id())
        .finish()
}

/// Runs a slash command signed with the test secret now; returns the answer's text.
pub async fn slash(app: &TestApp, command: &str, text: &str, user_id: &str) -> String {
    slash_in(app, "C0TEST", command, text, user_id).await
}

/// [`slash`] from channel `channel_id`.
pub async fn slash_in(
    app: &TestApp,
    channel_id: &str,
    command: &str,
    text: &str,
    user_id: &str,
) -> String {
    let body = command_body_in(
        channel_id,
        command,
        text,
        user_id,
        &format!("{DISCARD_ORIGIN}/commands/unused"),
    );
    let timestamp = now_secs().to_string();
    let signature = alerter::signing::sign(SIGNING_SECRET, &timestamp, body.as_bytes());
    let (status, answer) = post_signed(
        &format!("{}/slack/commands", app.http),
        &body,
        Some(&timestamp),
        Some(&signature),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("json answer");
    assert_eq!(answer["response_type"], "ephemeral", "{answer}");
    answer["text"].as_str().unwrap_or_default().to_owned()
}

/// A data dir for one test.
pub fn data_dir(scratch: &Path, name: &str) -> std::path::PathBuf {
    scratch.join(name)
}
