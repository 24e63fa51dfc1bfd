//! Spawning the real summarizer on loopback, outcomes to record, and a recording fake alerter
//! that can be started late on a reserved port ("the alerter comes back").

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_server::{AlerterService, AlerterServiceServer};
use ghost_proto::alerter::v1::{NotifyRequest, NotifyResponse};
use ghost_proto::router::v1::{
    ApplyReport, CommandReport, EditReport, PatchStatus, Rollback, StageTiming,
};
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_proto::summarizer::v1::{
    GetRequest, ListRequest, ListResponse, Outcome, RecordRequest, Summary,
};
use ghost_runtime::config::ServerConfig;
use ghost_testkit::{POLL_INTERVAL, TEST_TIMEOUT, try_wait_until, wait_for};
use summarizer::{App, SummarizerConfig};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The trace id every test outcome carries.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000_000;

/// A running summarizer; stops when dropped.
pub struct TestApp {
    pub client: SummarizerServiceClient<Channel>,
    pub summaries: summarizer::summaries::Summaries,
    /// The HTTP side (`/metrics`).
    pub http_addr: SocketAddr,
    /// The gRPC side (`grpc.health.v1` too).
    pub grpc_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Stops the service and waits until it has drained.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        (&mut self.task)
            .await
            .expect("summarizer task")
            .expect("summarizer run");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// The config tests use: ephemeral ports, a test Jaeger template, fast notify retries.
pub fn test_config(data_dir: &Path, alerter_url: Option<String>) -> SummarizerConfig {
    SummarizerConfig {
        server: ServerConfig::ephemeral(),
        data_dir: data_dir.to_owned(),
        alerter_url,
        jaeger_url_template: "http://jaeger.test/trace/{trace_id}".to_owned(),
        notify_initial_backoff: Duration::from_millis(20),
        notify_max_backoff: Duration::from_millis(200),
        notify_timeout: Duration::from_secs(2),
        // Test outcomes are dated 2023: archive only when a test asks.
        archive_after: None,
        // Tests read the manifest right after a record; the deferred writer has its own test.
        manifest_delay: Duration::ZERO,
        ..SummarizerConfig::default()
    }
}

/// Builds and runs the real summarizer over `data_dir` on ephemeral ports.
pub async fn spawn_summarizer(data_dir: &Path, alerter_url: Option<String>) -> TestApp {
    spawn_with(test_config(data_dir, alerter_url)).await
}

/// Builds and runs the real summarizer with `config`.
pub async fn spawn_with(config: SummarizerConfig) -> TestApp {
    let app = App::build(config).await.expect("build summarizer");
    let addr = app.grpc_addr();
    let http_addr = app.http_addr();
    let summaries = app.summaries();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let client = SummarizerServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to summarizer");
    TestApp {
        client,
        summaries,
        http_addr,
        grpc_addr: addr,
        stop: Some(stop),
        task,
    }
}

/// The summary of `patch_id`, which must be served.
pub async fn summary(client: &mut SummarizerServiceClient<Channel>, patch_id: &str) -> Summary {
    client
        .get(GetRequest {
            patch_id: patch_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .summary
        .unwrap()
}

/// The error `Get` answers for `patch_id`, which must not be served.
pub async fn get_error(
    client: &mut SummarizerServiceClient<Channel>,
    patch_id: &str,
) -> tonic::Status {
    client
        .get(GetRequest {
            patch_id: patch_id.into(),
        })
        .await
        .unwrap_err()
}

/// Whether `Record` took `request` as a new attempt (`false`: it had it already).
pub async fn created(
    client: &mut SummarizerServiceClient<Channel>,
    request: RecordRequest,
) -> bool {
    client.record(request).await.unwrap().into_inner().created
}

/// The error `Record` answers for `request`, which must be refused.
pub async fn record_error(
    client: &mut SummarizerServiceClient<Channel>,
    request: RecordRequest,
) -> tonic::Status {
    client.record(request).await.unwrap_err()
}

/// The page of MAIN's summaries at `page_token`, one summary a page.
pub async fn main_one_per_page(
    client: &mut SummarizerServiceClient<Channel>,
    page_token: String,
) -> ListResponse {
    client
        .list(ListRequest {
            target: "MAIN".into(),
            page_size: 1,
            page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// A loopback address that refuses every connection for as long as the guard lives: its socket
/// is bound but never listens, so no other test's listener can take the port meanwhile (a port
/// merely reserved and released was once taken by another test's HTTP/2 server, and the "closed"
/// subscription got "invalid HTTP version" instead of a refusal).
pub struct ClosedPort {
    _socket: socket2::Socket,
    /// The address that refuses connections.
    pub addr: SocketAddr,
}

/// See [`ClosedPort`].
pub fn closed_port() -> ClosedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    ClosedPort {
        _socket: socket,
        addr,
    }
}

/// A free loopback port, released for someone to bind later.
pub fn reserve_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A record request for `patch_id` on MAIN with a small report.
pub fn record(patch_id: &str, attempt: u32, status: PatchStatus) -> RecordRequest {
    let succeeded = status == PatchStatus::Succeeded;
    RecordRequest {
        outcome: Some(Outcome {
            notify: String::new(),
            priority: String::new(),
            key_name: String::new(),
            patch_id: patch_id.to_owned(),
            target: "MAIN".to_owned(),
            attempt,
            description: "make login faster".to_owned(),
            report: Some(ApplyReport {
                status: status as i32,
                error: if succeeded {
                    String::new()
                } else {
                    "validation failed: tsc exited 2".to_owned()
                },
                edits: vec![EditReport {
                    op: "replace".to_owned(),
                    path: "src/login.ts".to_owned(),
                    match_step: "exact".to_owned(),
                    added: 4,
                    removed: 2,
                    ..Default::default()
                }],
                commands: vec![CommandReport {
                    command: "tsc --noEmit".to_owned(),
                    exit_code: Some(if succeeded { 0 } else { 2 }),
                    duration_ms: 812,
                    output_tail: "done".to_owned(),
                    kind: "validate".to_owned(),
                    ..Default::default()
                }],
                duration_ms: 1_234,
                ..Default::default()
            }),
            trace_id: TRACE_ID.to_owned(),
            created_unix_ms: T0,
            finished_unix_ms: T0 + i64::from(attempt) * 1_000,
            intake_warnings: Vec::new(),
        }),
    }
}

/// A realistic, complete report for an attempt that ended `status` (fixed times and ids).
pub fn full_report(status: PatchStatus) -> ApplyReport {
    use PatchStatus as S;
    let stage = |stage: &str, ms: u64| StageTiming {
        stage: stage.to_owned(),
        duration_ms: ms,
        duration_us: ms * 1000,
    };
    let edits = vec![
        EditReport {
            op: "replace".to_owned(),
            path: "src/login.ts".to_owned(),
            match_step: "trim".to_owned(),
            added: 4,
            removed: 2,
            ..Default::default()
        },
        EditReport {
            op: "diff".to_owned(),
            path: "src/session.ts".to_owned(),
            match_step: "indent_offset".to_owned(),
            added: 10,
            removed: 3,
            ..Default::default()
        },
        EditReport {
            op: "rename".to_owned(),
            path: "src/new-name.ts".to_owned(),
            from: "src/old-name.ts".to_owned(),
            ..Default::default()
        },
    ];
    let install = CommandReport {
        command: "npm install".to_owned(),
        exit_code: Some(0),
        duration_ms: 3_456,
        output_head: "added 1 package\n".to_owned(),
        output_tail: "found 0 vulnerabilities\n".to_owned(),
        omitted_bytes: 12_345,
        kind: "command".to_owned(),
        ..Default::default()
    };
    let tsc = |exit: Option<i32>| {
        CommandReport {
        command: "tsc --noEmit".to_owned(),
        exit_code: exit,
        duration_ms: 812,
        output_tail: match exit {
            Some(0) => String::new(),
            _ => "src/login.ts(3,7): error TS2322: Type 'string' is not assignable to type 'number'.\n"
                .to_owned(),
        },
        kind: "validate".to_owned(),
        ..Default::default()
    }
    };
    let rollback = |reason: &str, error: &str| {
        Some(Rollback {
            restored: 2,
            removed: 1,
            reason: reason.to_owned(),
            error: error.to_owned(),
        })
    };
    let base = ApplyReport {
        status: status as i32,
        duration_ms: 4_321,
        ..Default::default()
    };
    match status {
        S::Succeeded => ApplyReport {
            edits,
            commands: vec![install, tsc(Some(0))],
            stages: vec![
                stage("journal", 3),
                stage("edits", 12),
                stage("commands", 3_456),
                stage("validate", 812),
                stage("commit", 38),
            ],
            commit_sha: "9fceb02d0ae598e95dc970b74767f19372d61af8".to_owned(),
            ..base
        },
        S::Failed => ApplyReport {
            error: "validation failed: tsc --noEmit exited 2".to_owned(),
            edits,
            commands: vec![install, tsc(Some(2))],
            stages: vec![
                stage("journal", 3),
                stage("edits", 12),
                stage("validate", 812),
            ],
            ..base
        },
        S::RolledBack => ApplyReport {
            error: "validation failed: tsc --noEmit exited 2".to_owned(),
            edits,
            commands: vec![install, tsc(Some(2))],
            stages: vec![
                stage("journal", 3),
                stage("edits", 12),
                stage("commands", 3_456),
                stage("validate", 812),
                stage("rollback", 5),
            ],
            rollback: rollback("validation failed", ""),
            ..base
        },
        S::Cancelled => ApplyReport {
            error: "cancelled by U123 from Slack".to_owned(),
            edits,
            commands: vec![CommandReport {
                command: "npm install".to_owned(),
                exit_code: None,
                signal: 15,
                duration_ms: 950,
                output_tail: "fetching…\n".to_owned(),
                kind: "command".to_owned(),
                ..Default::default()
            }],
            stages: vec![
                stage("journal", 3),
                stage("edits", 12),
                stage("rollback", 4),
            ],
            rollback: rollback("cancelled", ""),
            ..base
        },
        S::TimedOut => ApplyReport {
            error: "patch deadline of 600 s passed".to_owned(),
            edits,
            commands: vec![CommandReport {
                command: "npm test -- --watch=false".to_owned(),
                exit_code: None,
                signal: 9,
                timed_out: true,
                duration_ms: 600_000,
                output_tail: "RUNS src/login.test.ts\n".to_owned(),
                kind: "command".to_owned(),
                ..Default::default()
            }],
            stages: vec![
                stage("journal", 3),
                stage("edits", 12),
                stage("commands", 600_000),
            ],
            rollback: rollback("timed out", ""),
            ..base
        },
        S::Rejected => ApplyReport {
            error: "command `curl` is not in the allowlist of target MAIN".to_owned(),
            duration_ms: 2,
            ..base
        },
        S::Interrupted => ApplyReport {
            error: "executor restarted mid-apply; journal rolled back".to_owned(),
            edits,
            stages: vec![stage("rollback", 7)],
            rollback: rollback(
                "interrupted",
                "src/new-name.ts: permission denied while removing",
            ),
            ..base
        },
        S::Lost => ApplyReport {
            error: "executor vanished; 3 attempts spent".to_owned(),
            duration_ms: 0,
            ..base
        },
        other => panic!("not terminal: {other:?}"),
    }
}

#[derive(Default)]
struct Received {
    requests: Mutex<Vec<NotifyRequest>>,
    /// System alerts (`Alert`): the summarizer raises only `storage_unavailable/summarizer`.
    alerts: Mutex<Vec<ghost_proto::alerter::v1::AlertRequest>>,
    /// How long each Notify takes to answer.
    delay: Duration,
    /// Whether each Notify is held ([`FakeAlerter::start_holding`]).
    holding: bool,
    /// Set by [`FakeAlerter::release`].
    released: tokio::sync::watch::Sender<bool>,
    /// The Notify calls being answered now.
    in_flight: tokio::sync::watch::Sender<usize>,
    most_in_flight: std::sync::atomic::AtomicUsize,
}

/// How long a held Notify waits for a second one once released (see
/// [`FakeAlerter::start_holding`]).
const PAIR_WAIT: Duration = Duration::from_millis(500);

impl Received {
    /// Holds a Notify until the test releases them all, then until a second Notify is being
    /// answered or [`PAIR_WAIT`] passed.
    async fn hold(&self) {
        let mut released = self.released.subscribe();
        let released = tokio::time::timeout(TEST_TIMEOUT, released.wait_for(|open| *open))
            .await
            .is_ok_and(|open| open.is_ok());
        assert!(released, "the test never released the held notifications");
        // Alone after PAIR_WAIT: answered all the same (a serial sender shows as one at a time).
        let mut in_flight = self.in_flight.subscribe();
        let _paired = tokio::time::timeout(PAIR_WAIT, in_flight.wait_for(|now| *now >= 2))
            .await
            .is_ok();
    }
}

#[derive(Clone, Default)]
struct RecordingAlerter {
    received: Arc<Received>,
}

#[tonic::async_trait]
impl AlerterService for RecordingAlerter {
    async fn notify(
        &self,
        request: tonic::Request<NotifyRequest>,
    ) -> Result<tonic::Response<NotifyResponse>, tonic::Status> {
        use std::sync::atomic::Ordering;
        let mut now = 0;
        self.received.in_flight.send_modify(|in_flight| {
            *in_flight += 1;
            now = *in_flight;
        });
        self.received
            .most_in_flight
            .fetch_max(now, Ordering::SeqCst);
        self.received
            .requests
            .lock()
            .unwrap()
            .push(request.into_inner());
        if self.received.holding {
            self.received.hold().await;
        }
        tokio::time::sleep(self.received.delay).await;
        self.received
            .in_flight
            .send_modify(|in_flight| *in_flight -= 1);
        Ok(tonic::Response::new(NotifyResponse { accepted: true }))
    }

    async fn alert(
        &self,
        request: tonic::Request<ghost_proto::alerter::v1::AlertRequest>,
    ) -> Result<tonic::Response<ghost_proto::alerter::v1::AlertResponse>, tonic::Status> {
        self.received
            .alerts
            .lock()
            .unwrap()
            .push(request.into_inner());
        Ok(tonic::Response::new(
            ghost_proto::alerter::v1::AlertResponse { accepted: true },
        ))
    }
}

/// A fake alerter on loopback that records every Notify; stops when dropped.
pub struct FakeAlerter {
    pub url: String,
    received: Arc<Received>,
    _stop: oneshot::Sender<()>,
}

impl FakeAlerter {
    /// On a free port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// On `addr` (e.g. one from [`reserve_port`]).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::start_with(addr, Duration::ZERO).await
    }

    /// On a free port, answering each Notify after `delay`.
    pub async fn start_slow(delay: Duration) -> Self {
        Self::start_with("127.0.0.1:0".parse().unwrap(), delay).await
    }

    /// On a free port, holding every Notify until [`FakeAlerter::release`], then each until a
    /// second one is being answered (at most [`PAIR_WAIT`]): a sender that sends several at
    /// a time shows it whatever the timing, one that sends one at a time never has two.
    pub async fn start_holding() -> Self {
        let received = Received {
            holding: true,
            ..Received::default()
        };
        Self::start_receiving("127.0.0.1:0".parse().unwrap(), received).await
    }

    /// Lets the held notifications go (see [`FakeAlerter::start_holding`]).
    pub fn release(&self) {
        self.received.released.send_replace(true);
    }

    async fn start_with(addr: SocketAddr, delay: Duration) -> Self {
        let received = Received {
            delay,
            ..Received::default()
        };
        Self::start_receiving(addr, received).await
    }

    async fn start_receiving(addr: SocketAddr, received: Received) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let alerter = RecordingAlerter {
            received: Arc::new(received),
        };
        let received = alerter.received.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AlerterServiceServer::new(alerter))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            url,
            received,
            _stop: stop,
        }
    }

    /// The most Notify calls that were being answered at one time.
    pub fn most_in_flight(&self) -> usize {
        self.received
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The system alerts that arrived so far.
    pub fn alerts(&self) -> Vec<ghost_proto::alerter::v1::AlertRequest> {
        self.received.alerts.lock().unwrap().clone()
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<NotifyRequest> {
        self.received.requests.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` notifications arrived; returns what arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<NotifyRequest> {
        let what = format!("{n} notifications at the alerter");
        let arrived = try_wait_until(&what, TEST_TIMEOUT, POLL_INTERVAL, async || {
            let now = self.received();
            if now.len() >= n {
                Ok(now)
            } else {
                Err(now.len())
            }
        })
        .await;
        arrived.unwrap_or_else(|_| self.received())
    }
}

/// A pool on the summarizer's own schema of the database at `url` (where its tables are), for
/// tests that look at or change the rows themselves.
pub async fn summarizer_pool(url: &str) -> sqlx::PgPool {
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    sqlx::PgPool::connect_with(options.options([("search_path", "summarizer")]))
        .await
        .expect("PostgreSQL answers")
}

/// Waits (bounded) until every notification in the app's outbox has been tried at least
/// `times` times; returns them. The index is read from a blocking thread, as the store does.
pub async fn outbox_tried(app: &TestApp, times: u32) -> Vec<summarizer::index::OutboxRow> {
    let what = format!("every outbox row tried {times} times");
    wait_for(&what, async || {
        let index = app.summaries.index().clone();
        let rows = tokio::task::spawn_blocking(move || index.outbox_due(i64::MAX, 10).unwrap())
            .await
            .unwrap();
        if rows.iter().all(|row| row.tries >= times) {
            Ok(rows)
        } else {
            Err(rows)
        }
    })
    .await
}
