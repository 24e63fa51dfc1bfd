//! Spawning the real router, a Work-stream test executor and a recording alerter.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::executor::v1::{
    Assign, Cancel, ExecutorMessage, Heartbeat, Hello, Result as WorkResult, RouterMessage,
    Workspace, executor_message, router_message,
};
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    ApplyReport, CancelRequest, Edit, Patch, PatchState, PatchStatus, Priority, SubmitRequest,
    WriteFile, edit,
};
use ghost_proto::summarizer::v1::summarizer_service_server::{
    SummarizerService, SummarizerServiceServer,
};
use ghost_proto::summarizer::v1::{
    GetRequest, GetResponse, ListRequest, ListResponse, RecordRequest, RecordResponse,
};
use ghost_runtime::config::{Secret, ServerConfig};
pub use ghost_testkit::RecordingAlerter;
use ghost_testkit::grpc::serve_routes;
use ghost_testkit::postgres::TempPostgres;
use ghost_testkit::wait::wait_for;
use router::config::StoreConfig;
use router::{App, RouterConfig};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running router; stops (gracefully) when dropped.
pub struct TestRouter {
    pub client: RouterServiceClient<Channel>,
    /// The channel `client` uses, for the router's other services.
    pub channel: Channel,
    /// The gRPC side.
    pub grpc: std::net::SocketAddr,
    /// The HTTP side: health and `/metrics`.
    pub http: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestRouter {
    /// Stops the router and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

tokio::task_local! {
    /// The PostgreSQL server of a test running on PostgreSQL (see [`on_both_stores`]); unset
    /// or `None`: the test runs on SQLite.
    pub static POSTGRES: Option<Arc<Postgres>>;
}

/// A test's own PostgreSQL server and the database of each router data dir it configured (a
/// router restarted on the same dir finds the same database).
pub struct Postgres {
    pub server: TempPostgres,
    databases: Mutex<HashMap<std::path::PathBuf, String>>,
}

impl Postgres {
    /// Starts one, or prints why the test skips.
    pub fn start_or_skip(test: &str) -> Option<Arc<Self>> {
        let server = TempPostgres::start_or_skip(test)?;
        Some(Arc::new(Self {
            server,
            databases: Mutex::default(),
        }))
    }

    /// The database of `data_dir`, created at its first use.
    pub fn url_for(&self, data_dir: &Path) -> String {
        let mut databases = self.databases.lock().unwrap();
        databases
            .entry(data_dir.to_owned())
            .or_insert_with(|| self.server.create_database())
            .clone()
    }
}

/// The `store.url` of a router on `data_dir` in the running test: a database of the test's
/// PostgreSQL when it runs on PostgreSQL, else unset (SQLite in `data_dir`).
pub fn store_for(data_dir: &Path) -> StoreConfig {
    let url = POSTGRES
        .try_with(|postgres| postgres.as_ref().map(|postgres| postgres.url_for(data_dir)))
        .ok()
        .flatten();
    StoreConfig {
        url: url.map(Secret::new),
    }
}

/// Runs each named `async fn` twice: `<name>::sqlite` and `<name>::postgres` (on a
/// PostgreSQL of its own; skipped, with the reason printed, when PostgreSQL is not installed).
/// The test's routers get their store from [`config`].
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name().await;
                }

                #[tokio::test]
                async fn postgres() {
                    let test = concat!(module_path!(), "::postgres");
                    let Some(server) = $crate::helpers::Postgres::start_or_skip(test) else {
                        return;
                    };
                    $crate::helpers::POSTGRES
                        .scope(Some(server), super::$name())
                        .await;
                }
            }
        )*
    };
}

/// A config for tests: ephemeral ports, short leases and sweeps; the store of the running
/// test ([`store_for`]).
pub fn config(data_dir: &Path) -> RouterConfig {
    RouterConfig {
        server: ServerConfig::ephemeral(),
        data_dir: data_dir.to_owned(),
        store: store_for(data_dir),
        heartbeat_interval: Duration::from_millis(200),
        lease_timeout: Duration::from_secs(30),
        sweep_interval: Duration::from_millis(50),
        ..RouterConfig::default()
    }
}

/// Builds and runs the real router with `config`.
pub async fn spawn_router(config: RouterConfig) -> TestRouter {
    let app = App::build(config).await.expect("build router");
    let addr = app.grpc_addr();
    let http = app.http_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
        .expect("router runs");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("router url")
        .connect()
        .await
        .expect("connect to router");
    let client = RouterServiceClient::new(channel.clone());
    TestRouter {
        client,
        channel,
        grpc: addr,
        http,
        stop: Some(stop),
        done: Some(done),
    }
}

/// A router running on a runtime of its own, so a test can kill it as a crash would: every
/// task, connection and stream of it gone at once, nothing drained.
pub struct KillableRouter {
    pub router: TestRouter,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KillableRouter {
    /// Drops the router's runtime without draining anything (its executors' streams and its
    /// database connections break).
    pub fn kill(mut self) {
        self.router.stop.take();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for KillableRouter {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Builds and runs the real router with `config` on a runtime of its own (see
/// [`KillableRouter`]).
pub async fn spawn_killable_router(config: RouterConfig) -> KillableRouter {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the router");
    let (bound, addresses) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = runtime.spawn(async move {
        let app = App::build(config).await.expect("build router");
        let _ = bound.send((app.grpc_addr(), app.http_addr()));
        let _ = app
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    let (addr, http) = addresses.await.expect("the router bound its ports");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("router url")
        .connect()
        .await
        .expect("connect to router");
    let client = RouterServiceClient::new(channel.clone());
    drop(done);
    KillableRouter {
        router: TestRouter {
            client,
            channel,
            grpc: addr,
            http,
            stop: Some(stop),
            done: None,
        },
        runtime: Some(runtime),
    }
}

/// A patch writing one file on `target`.
pub fn patch(id: &str, target: &str) -> Patch {
    Patch {
        id: id.to_owned(),
        target: target.to_owned(),
        description: format!("test patch {id}"),
        priority: Priority::Normal as i32,
        edits: vec![Edit {
            op: Some(edit::Op::Write(WriteFile {
                path: format!("{id}.txt"),
                contents: format!("{id}\n"),
            })),
        }],
        ..Patch::default()
    }
}

/// Submits `patch`, panicking on refusal.
pub async fn submit(router: &TestRouter, patch: Patch) -> PatchState {
    router
        .client
        .clone()
        .submit(SubmitRequest {
            patch: Some(patch),
            ..Default::default()
        })
        .await
        .expect("submit accepted")
        .into_inner()
        .state
        .expect("state")
}

/// Cancels `id` as `actor`, panicking on refusal; the state the router answered with.
pub async fn cancel(router: &TestRouter, id: &str, actor: &str) -> PatchState {
    router
        .client
        .clone()
        .cancel(CancelRequest {
            id: id.to_owned(),
            actor: actor.to_owned(),
        })
        .await
        .expect("cancel accepted")
        .into_inner()
        .state
        .expect("state")
}

/// The stored state of `id`.
pub async fn state(router: &TestRouter, id: &str) -> PatchState {
    router
        .client
        .clone()
        .get(ghost_proto::router::v1::GetRequest { id: id.to_owned() })
        .await
        .expect("get")
        .into_inner()
        .state
        .expect("state")
}

/// Polls until `id` reaches `status`.
pub async fn wait_for_status(router: &TestRouter, id: &str, status: PatchStatus) -> PatchState {
    wait_for(&format!("{id} to reach {status:?}"), async || {
        let current = state(router, id).await;
        if current.status == status as i32 {
            Ok(current)
        } else {
            Err((PatchStatus::try_from(current.status), current.error))
        }
    })
    .await
}

/// An executor played by the test: it speaks the Work stream by hand.
pub struct TestExecutor {
    outbound: mpsc::Sender<ExecutorMessage>,
    inbound: Streaming<RouterMessage>,
}

impl TestExecutor {
    /// Dials `router`, says Hello for `targets` and waits for Welcome.
    pub async fn connect(router: &TestRouter, executor_id: &str, targets: &[&str]) -> Self {
        Self::connect_with(router, executor_id, targets, "")
            .await
            .expect("work stream opens")
    }

    /// Dials `router` with credential `token`; the router's refusal, if it refuses.
    pub async fn connect_with(
        router: &TestRouter,
        executor_id: &str,
        targets: &[&str],
        token: &str,
    ) -> Result<Self, tonic::Status> {
        Self::say_hello(
            router,
            Hello {
                executor_id: executor_id.to_owned(),
                workspaces: targets
                    .iter()
                    .map(|target| Workspace {
                        target: (*target).to_owned(),
                        root: format!("/ws/{target}"),
                    })
                    .collect(),
                capabilities: vec!["dry_run".to_owned()],
                token: token.to_owned(),
            },
        )
        .await
    }

    /// Opens a Work stream with `hello`; the router's refusal, if it refuses.
    pub async fn say_hello(router: &TestRouter, hello: Hello) -> Result<Self, tonic::Status> {
        let (outbound, receiver) = mpsc::channel(64);
        outbound
            .send(ExecutorMessage {
                kind: Some(executor_message::Kind::Hello(hello)),
            })
            .await
            .expect("queue hello");
        let mut inbound = tokio::time::timeout(
            PATIENCE,
            router.client.clone().work(ReceiverStream::new(receiver)),
        )
        .await
        .expect("the router answers the Hello in time")?
        .into_inner();
        let first = tokio::time::timeout(PATIENCE, inbound.message())
            .await
            .expect("welcome in time")?
            .expect("welcome");
        assert!(matches!(first.kind, Some(router_message::Kind::Welcome(_))));
        Ok(Self { outbound, inbound })
    }

    /// Waits for the router to end the stream; the status it ended it with.
    pub async fn ended(&mut self) -> tonic::Status {
        let end = async {
            loop {
                match self.inbound.message().await {
                    Err(status) => return status,
                    Ok(None) => return tonic::Status::ok("stream closed without a status"),
                    Ok(Some(_)) => {}
                }
            }
        };
        tokio::time::timeout(PATIENCE, end)
            .await
            .unwrap_or_else(|_| panic!("the stream was not ended within {PATIENCE:?}"))
    }

    /// The next message from the router.
    pub async fn next(&mut self) -> router_message::Kind {
        tokio::time::timeout(PATIENCE, self.inbound.message())
            .await
            .expect("a router message in time")
            .expect("stream healthy")
            .expect("stream open")
            .kind
            .expect("message has a kind")
    }

    /// The next Assign (panics on anything else).
    pub async fn assignment(&mut self) -> Assign {
        match self.next().await {
            router_message::Kind::Assign(assign) => assign,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    /// The next Cancel (panics on anything else).
    pub async fn cancellation(&mut self) -> Cancel {
        match self.next().await {
            router_message::Kind::Cancel(cancel) => cancel,
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    /// The next message within `wait`, if one comes (panics if the stream broke).
    pub async fn try_next(&mut self, wait: Duration) -> Option<router_message::Kind> {
        let message = tokio::time::timeout(wait, self.inbound.message())
            .await
            .ok()?;
        message.expect("stream healthy").expect("stream open").kind
    }

    /// Ends the executor's side of the stream, as an executor going away does: what it sent
    /// is still read first, then the router ends the session (the router's side stays open
    /// for reading). Not after [`Self::keep_alive`]: its heartbeats hold the stream open.
    pub fn stop_sending(&mut self) {
        self.outbound = mpsc::channel(1).0;
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Ok(message) = tokio::time::timeout(quiet, self.inbound.message()).await {
            panic!("expected no message, got {message:?}");
        }
    }

    /// Reports `status` for `assign`.
    pub async fn finish(&self, assign: &Assign, status: PatchStatus) {
        self.report(
            assign,
            ApplyReport {
                status: status as i32,
                error: if status == PatchStatus::Succeeded {
                    String::new()
                } else {
                    format!("test executor says {status:?}")
                },
                ..ApplyReport::default()
            },
        )
        .await;
    }

    /// Reports `report` for `assign`.
    pub async fn report(&self, assign: &Assign, report: ApplyReport) {
        self.send(executor_message::Kind::Result(WorkResult {
            patch_id: assign.patch.as_ref().expect("patch").id.clone(),
            attempt: assign.attempt,
            fencing_token: assign.fencing_token,
            report: Some(report),
            traceparent: String::new(),
        }))
        .await;
    }

    /// Sends an empty heartbeat every `period` from now on, like a healthy idle executor.
    pub fn keep_alive(&mut self, period: Duration) {
        let outbound = self.outbound.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let beat = ExecutorMessage {
                    kind: Some(executor_message::Kind::Heartbeat(Heartbeat {
                        fencing_tokens: Vec::new(),
                    })),
                };
                if outbound.send(beat).await.is_err() {
                    return;
                }
            }
        });
    }

    /// Sends any message on the stream, as a (possibly lying) executor would.
    pub async fn send(&self, kind: executor_message::Kind) {
        self.outbound
            .send(ExecutorMessage { kind: Some(kind) })
            .await
            .expect("stream open");
    }
}

/// The router's `/metrics` page at `http`.
pub async fn metrics_text(http: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// The value of `series` (its name and labels as `/metrics` prints them, e.g.
/// `ghost_outbox_depth{outbox="outcomes"}`) on the page `text`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        if name == series {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// Waits until `/metrics` at `http` shows `series` at `value`; the page then.
pub async fn metric_becomes(http: std::net::SocketAddr, series: &str, value: f64) -> String {
    wait_for(&format!("{series} {value} in /metrics"), async || {
        let text = metrics_text(http).await;
        match metric_value(&text, series) {
            Some(seen) if seen == value => Ok(text),
            seen => Err(seen),
        }
    })
    .await
}

/// Waits until every row of the outbox `outbox` (`outcomes`, `alerts`) is settled as
/// delivered: none can be claimed, so none is sent again.
pub async fn outbox_settled(router: &TestRouter, outbox: &str) {
    let depth = format!("ghost_outbox_depth{{outbox=\"{outbox}\"}}");
    metric_becomes(router.http, &depth, 0.0).await;
}

/// Waits until `count` executors are connected for `target`: the router has handled every
/// session that ended before (and every message such a session sent before it ended).
pub async fn executors_connected(router: &TestRouter, target: &str, count: u32) {
    let series = format!("ghost_executors_connected{{target=\"{target}\"}}");
    metric_becomes(router.http, &series, f64::from(count)).await;
}

/// What an outcome passed on: notify, priority, key name.
pub type Told = (String, String, String);

/// A stand-in summarizer that takes `delay` over every record and notes how many were in flight, holds
/// the record of `held` until `gate` lets it through, and counts the calls per patch as they
/// arrive (a second call while the first is out would be a duplicate delivery).
#[derive(Clone)]
pub struct TestSummarizer {
    pub delay: Duration,
    pub held: &'static str,
    pub gate: Arc<tokio::sync::Semaphore>,
    pub in_flight: Arc<AtomicUsize>,
    pub most_in_flight: Arc<AtomicUsize>,
    pub calls: Arc<Mutex<HashMap<String, u32>>>,
    pub recorded: Arc<Mutex<HashMap<(String, u32), u32>>>,
    /// `notify` and `priority` of each recorded outcome, by patch.
    pub told: Arc<Mutex<HashMap<String, Told>>>,
}

impl TestSummarizer {
    pub fn new(delay: Duration, held: &'static str) -> Self {
        Self {
            delay,
            held,
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            in_flight: Arc::default(),
            most_in_flight: Arc::default(),
            calls: Arc::default(),
            recorded: Arc::default(),
            told: Arc::default(),
        }
    }

    pub fn was_recorded(&self, id: &str) -> bool {
        self.recorded
            .lock()
            .unwrap()
            .keys()
            .any(|(patch, _)| patch == id)
    }

    /// Waits until an outcome of `id` was recorded.
    pub async fn wait_recorded(&self, id: &str) {
        wait_for(&format!("{id} recorded"), async || {
            if self.was_recorded(id) {
                Ok(())
            } else {
                Err(self.recorded.lock().unwrap().clone())
            }
        })
        .await;
    }

    /// Waits until outcomes of `count` attempts were recorded.
    pub async fn wait_records(&self, count: usize) {
        wait_for(&format!("{count} outcomes recorded"), async || {
            let recorded = self.recorded.lock().unwrap().clone();
            if recorded.len() < count {
                Err(recorded)
            } else {
                Ok(())
            }
        })
        .await;
    }

    /// Serves it on `listener` until the returned sender is dropped.
    pub fn serve(&self, listener: tokio::net::TcpListener) -> oneshot::Sender<()> {
        serve_routes(
            tonic::service::Routes::new(SummarizerServiceServer::new(self.clone())),
            listener,
        )
    }
}

#[tonic::async_trait]
impl SummarizerService for TestSummarizer {
    async fn record(
        &self,
        request: tonic::Request<RecordRequest>,
    ) -> Result<tonic::Response<RecordResponse>, tonic::Status> {
        let outcome = request.into_inner().outcome.unwrap_or_default();
        *self
            .calls
            .lock()
            .unwrap()
            .entry(outcome.patch_id.clone())
            .or_default() += 1;
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        if outcome.patch_id == self.held {
            let _pass = self.gate.acquire().await.expect("gate open");
        }
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.told.lock().unwrap().insert(
            outcome.patch_id.clone(),
            (
                outcome.notify.clone(),
                outcome.priority.clone(),
                outcome.key_name.clone(),
            ),
        );
        *self
            .recorded
            .lock()
            .unwrap()
            .entry((outcome.patch_id, outcome.attempt))
            .or_default() += 1;
        Ok(tonic::Response::new(RecordResponse { created: true }))
    }

    async fn get(
        &self,
        _request: tonic::Request<GetRequest>,
    ) -> Result<tonic::Response<GetResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn list(
        &self,
        _request: tonic::Request<ListRequest>,
    ) -> Result<tonic::Response<ListResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}
