//! Spawning the real router, a Work-stream test executor and a recording alerter.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_server::{AlerterService, AlerterServiceServer};
use ghost_proto::alerter::v1::{AlertRequest, AlertResponse, NotifyRequest, NotifyResponse};
use ghost_proto::executor::v1::{
    Assign, Cancel, ExecutorMessage, Heartbeat, Hello, Result as WorkResult, RouterMessage,
    Workspace, executor_message, router_message,
};
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    ApplyReport, CancelRequest, Edit, Patch, PatchState, PatchStatus, Priority, SubmitRequest,
    WriteFile, edit,
};
use ghost_runtime::config::ServerConfig;
use router::{App, RouterConfig};
use tokio::sync::{Notify, mpsc, oneshot};
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

/// A config for tests: ephemeral ports, short leases and sweeps.
pub fn config(data_dir: &Path) -> RouterConfig {
    RouterConfig {
        server: ServerConfig::ephemeral(),
        data_dir: data_dir.to_owned(),
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
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let current = state(router, id).await;
        if current.status == status as i32 {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {status:?}; it is {:?} ({})",
            PatchStatus::try_from(current.status),
            current.error
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.inbound.message()).await {
                Err(_) => panic!("the stream was not ended within {PATIENCE:?}"),
                Ok(Err(status)) => return status,
                Ok(Ok(None)) => return tonic::Status::ok("stream closed without a status"),
                Ok(Ok(Some(_))) => {}
            }
        }
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

/// An alert change as the recording alerter received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub key: String,
    pub resolved: bool,
    pub labels: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Recorder {
    alerts: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl AlerterService for Recorder {
    async fn notify(
        &self,
        _request: tonic::Request<NotifyRequest>,
    ) -> Result<tonic::Response<NotifyResponse>, tonic::Status> {
        Ok(tonic::Response::new(NotifyResponse { accepted: true }))
    }

    async fn alert(
        &self,
        request: tonic::Request<AlertRequest>,
    ) -> Result<tonic::Response<AlertResponse>, tonic::Status> {
        let request = request.into_inner();
        self.alerts.lock().unwrap().push(Received {
            key: request.key,
            resolved: request.resolved,
            labels: request.labels,
        });
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(AlertResponse { accepted: true }))
    }
}

/// Serves `routes` (a stand-in for another service) on `listener` until the returned sender
/// is dropped.
pub fn serve_routes(
    routes: tonic::service::Routes,
    listener: tokio::net::TcpListener,
) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    stop
}

/// A gRPC server speaking `AlerterService` that records every alert change; the alerter
/// itself has its own tests, this one checks what the router sends.
pub struct RecordingAlerter {
    pub url: String,
    recorder: Recorder,
    _stop: oneshot::Sender<()>,
}

impl RecordingAlerter {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// Starts on a given loopback port (0: any free one).
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let recorder = Recorder::default();
        let stop = serve_routes(
            tonic::service::Routes::new(AlerterServiceServer::new(recorder.clone())),
            listener,
        );
        Self {
            url,
            recorder,
            _stop: stop,
        }
    }

    /// Every alert change so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.recorder.alerts.lock().unwrap().clone()
    }

    /// Waits until a change of `key` with `resolved` arrived.
    pub async fn wait_for(&self, key: &str, resolved: bool) -> Received {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let arrived = self.recorder.arrived.notified();
            if let Some(found) = self
                .received()
                .into_iter()
                .find(|alert| alert.key == key && alert.resolved == resolved)
            {
                return found;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "alert {key} (resolved={resolved}) never arrived; got {:?}",
                self.received()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), arrived).await;
        }
    }
}
