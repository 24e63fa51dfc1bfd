//! Workspaces in temp dirs, patches from JSON, byte-exact snapshots, and a test router that
//! feeds patches to a real executor over the Work stream.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use executor::apply::{self, Context, Lease};
use executor::workspace::{Limits, Workspace};
use executor::{ExecutorConfig, TargetPolicy, WorkspaceConfig};
use ghost_core::{ApplyReport, Patch};
use ghost_proto::executor::v1::{
    Assign, ExecutorMessage, RouterMessage, Welcome, executor_message, router_message,
};
use ghost_proto::router::v1 as wire;
use ghost_proto::router::v1::router_service_server::{RouterService, RouterServiceServer};
use ghost_testkit::{try_wait_until, wait_for};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status as RpcStatus, Streaming};

/// A workspace with its state dir beside it; both vanish on drop.
pub struct TestWorkspace {
    pub _dir: tempfile::TempDir,
    pub ctx: Context,
}

impl TestWorkspace {
    pub fn root(&self) -> &Path {
        &self.ctx.workspace.root
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.root().join(rel)).unwrap()
    }

    pub fn apply(&self, patch: &Patch) -> ApplyReport {
        apply::apply(
            &self.ctx,
            patch,
            Lease::default(),
            false,
            &CancellationToken::new(),
        )
    }
}

pub const LIMITS: Limits = Limits {
    max_file_bytes: 1024 * 1024,
    max_patch_bytes: 4 * 1024 * 1024,
};

pub fn workspace_with(policy: TargetPolicy) -> TestWorkspace {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir_all(base.join("ws")).unwrap();
    fs::create_dir_all(base.join("state")).unwrap();
    TestWorkspace {
        ctx: Context {
            workspace: Workspace {
                target: "MAIN".to_owned(),
                root: base.join("ws"),
                state_dir: base.join("state"),
                policy,
            },
            limits: LIMITS,
            default_timeout: Duration::from_secs(30),
            write_delay: Duration::ZERO,
            root_id: executor::beneath::RootId::of(&base.join("ws")).unwrap(),
        },
        _dir: dir,
    }
}

pub fn workspace() -> TestWorkspace {
    workspace_with(TargetPolicy::default())
}

/// A v1 patch for target MAIN from the JSON of its other fields.
pub fn patch(id: &str, fields: &str) -> Patch {
    let body = format!(r#"{{"id":"{id}","target":"MAIN",{fields}}}"#);
    ghost_core::parse_json(body.as_bytes()).unwrap_or_else(|err| panic!("{err}: {body}"))
}

/// Every file (bytes and mode) and directory under `root`, `.git` excluded.
pub fn snapshot(root: &Path) -> BTreeMap<String, (Option<Vec<u8>>, u32)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if rel == ".git" {
                continue;
            }
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                found.insert(
                    rel,
                    (Some(target.display().to_string().into_bytes()), 0o120000),
                );
            } else if meta.is_dir() {
                found.insert(rel, (None, mode));
                stack.push(path);
            } else {
                found.insert(rel, (Some(fs::read(&path).unwrap()), mode));
            }
        }
    }
    found
}

/// One executor session: where to send router messages, and what the executor sent.
pub struct Session {
    pub to_executor: mpsc::Sender<Result<RouterMessage, RpcStatus>>,
    pub from_executor: mpsc::Receiver<ExecutorMessage>,
}

pub struct TestRouter {
    sessions: mpsc::Sender<Session>,
}

#[tonic::async_trait]
impl RouterService for TestRouter {
    async fn dry_run(
        &self,
        _: Request<wire::DryRunRequest>,
    ) -> Result<Response<wire::DryRunResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn revert(
        &self,
        _: Request<wire::RevertRequest>,
    ) -> Result<Response<wire::RevertResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn wait(
        &self,
        _: Request<wire::WaitRequest>,
    ) -> Result<Response<wire::GetResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn submit(
        &self,
        _: Request<wire::SubmitRequest>,
    ) -> Result<Response<wire::SubmitResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn get(
        &self,
        _: Request<wire::GetRequest>,
    ) -> Result<Response<wire::GetResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn events(
        &self,
        _: Request<wire::EventsRequest>,
    ) -> Result<Response<wire::EventsResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn list(
        &self,
        _: Request<wire::ListRequest>,
    ) -> Result<Response<wire::ListResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn cancel(
        &self,
        _: Request<wire::CancelRequest>,
    ) -> Result<Response<wire::CancelResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn retry(
        &self,
        _: Request<wire::RetryRequest>,
    ) -> Result<Response<wire::RetryResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn pause(
        &self,
        _: Request<wire::PauseRequest>,
    ) -> Result<Response<wire::PauseResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn resume(
        &self,
        _: Request<wire::ResumeRequest>,
    ) -> Result<Response<wire::ResumeResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn list_targets(
        &self,
        _: Request<wire::ListTargetsRequest>,
    ) -> Result<Response<wire::ListTargetsResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    async fn list_executors(
        &self,
        _: Request<wire::ListExecutorsRequest>,
    ) -> Result<Response<wire::ListExecutorsResponse>, RpcStatus> {
        Err(RpcStatus::unimplemented("test router"))
    }

    type WorkStream = Pin<Box<dyn Stream<Item = Result<RouterMessage, RpcStatus>> + Send>>;

    async fn work(
        &self,
        request: Request<Streaming<ExecutorMessage>>,
    ) -> Result<Response<Self::WorkStream>, RpcStatus> {
        let mut inbound = request.into_inner();
        let (to_executor, outbound) = mpsc::channel(16);
        let (seen, from_executor) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if seen.send(message).await.is_err() {
                    break;
                }
            }
        });
        let _ = self
            .sessions
            .send(Session {
                to_executor,
                from_executor,
            })
            .await;
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }
}

impl TestRouter {
    /// Serves on a loopback port; each executor session arrives on the receiver.
    pub async fn start() -> (SocketAddr, mpsc::Receiver<Session>) {
        let (sessions_tx, sessions) = mpsc::channel(4);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RouterServiceServer::new(TestRouter {
                    sessions: sessions_tx,
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (addr, sessions)
    }
}

/// The real executor `App` (port 0) serving a test workspace, dialled into a [`TestRouter`]
/// that assigns one patch at a time, as the router does per target.
pub struct RunningExecutor {
    /// The capabilities its Hello advertised.
    pub capabilities: Vec<String>,
    session: Session,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    next_token: u64,
}

impl RunningExecutor {
    /// Starts an executor for `ws` (its root, state dir and policy) and waits for its Hello.
    pub async fn start(ws: &TestWorkspace) -> Self {
        let (router_addr, mut sessions) = TestRouter::start().await;
        let workspace = &ws.ctx.workspace;
        let config = ExecutorConfig {
            server: ghost_runtime::config::ServerConfig::ephemeral(),
            router_url: format!("http://{router_addr}"),
            state_dir: workspace.state_dir.clone(),
            workspaces: vec![WorkspaceConfig {
                target: workspace.target.clone(),
                root: workspace.root.clone(),
            }],
            reconnect_backoff: Duration::from_millis(50),
            targets: [(workspace.target.clone(), workspace.policy.clone())]
                .into_iter()
                .collect(),
            ..ExecutorConfig::default()
        };
        let app = executor::App::build(config).await.unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move { app.run(token.cancelled_owned()).await });
        let mut session = tokio::time::timeout(Duration::from_secs(20), sessions.recv())
            .await
            .expect("the executor dialled the router within 20 s")
            .unwrap();
        // The executor says Hello before anything else.
        let first = tokio::time::timeout(Duration::from_secs(20), session.from_executor.recv())
            .await
            .expect("the executor said Hello within 20 s")
            .expect("the executor is still connected");
        let Some(executor_message::Kind::Hello(hello)) = first.kind else {
            panic!("the executor's first message is not a Hello: {first:?}");
        };
        session
            .to_executor
            .send(Ok(RouterMessage {
                kind: Some(router_message::Kind::Welcome(Welcome {
                    heartbeat_interval_ms: 1000,
                })),
            }))
            .await
            .unwrap();
        Self {
            capabilities: hello.capabilities,
            session,
            stop,
            task,
            next_token: 1,
        }
    }

    /// Assigns a patch as the router would and returns the executor's report.
    pub async fn apply(&mut self, patch: &Patch) -> ApplyReport {
        self.apply_wire(wire::Patch::from(patch)).await
    }

    /// Assigns a wire patch as it arrives over gRPC (no gateway validation on the way).
    pub async fn apply_wire(&mut self, patch: wire::Patch) -> ApplyReport {
        let token = self.next_token;
        self.next_token += 1;
        let assign = Assign {
            patch: Some(patch),
            attempt: 1,
            fencing_token: token,
            deadline_unix_ms: 0,
            traceparent: String::new(),
        };
        self.session
            .to_executor
            .send(Ok(RouterMessage {
                kind: Some(router_message::Kind::Assign(assign)),
            }))
            .await
            .unwrap();
        loop {
            let next =
                tokio::time::timeout(Duration::from_secs(60), self.session.from_executor.recv())
                    .await
                    .expect("a result within 60 s")
                    .expect("the executor is still connected");
            if let Some(executor_message::Kind::Result(result)) = next.kind
                && result.fencing_token == token
            {
                return ApplyReport::try_from(result.report.unwrap()).unwrap();
            }
        }
    }

    /// Asks for a dry run as the router would and returns the executor's answer.
    pub async fn dry_run(&mut self, patch: &Patch) -> ApplyReport {
        let request_id = self.next_token;
        self.next_token += 1;
        self.session
            .to_executor
            .send(Ok(RouterMessage {
                kind: Some(router_message::Kind::DryRun(
                    ghost_proto::executor::v1::DryRun {
                        request_id,
                        patch: Some(wire::Patch::from(patch)),
                    },
                )),
            }))
            .await
            .unwrap();
        loop {
            let next =
                tokio::time::timeout(Duration::from_secs(60), self.session.from_executor.recv())
                    .await
                    .expect("an answer within 60 s")
                    .expect("the executor is still connected");
            if let Some(executor_message::Kind::DryRunResult(answer)) = next.kind
                && answer.request_id == request_id
            {
                return ApplyReport::try_from(answer.report.unwrap()).unwrap();
            }
        }
    }

    /// Assigns a patch as the router would, without waiting; returns its fencing token.
    pub async fn assign(&mut self, patch: &Patch) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let assign = Assign {
            patch: Some(wire::Patch::from(patch)),
            attempt: 1,
            fencing_token: token,
            deadline_unix_ms: 0,
            traceparent: String::new(),
        };
        // After a stop the executor reads no more: the send may fail, which is the point.
        let _ = self
            .session
            .to_executor
            .send(Ok(RouterMessage {
                kind: Some(router_message::Kind::Assign(assign)),
            }))
            .await;
        token
    }

    /// The next result the executor sends within `within` (its token and report); `None` when
    /// none came or the stream ended.
    pub async fn next_result(&mut self, within: Duration) -> Option<(u64, ApplyReport)> {
        let from_executor = &mut self.session.from_executor;
        let next = try_wait_until(
            "a result from the executor",
            within,
            Duration::ZERO,
            async || match from_executor.recv().await {
                Some(ExecutorMessage {
                    kind: Some(executor_message::Kind::Result(result)),
                }) => Ok(Some((
                    result.fencing_token,
                    ApplyReport::try_from(result.report.unwrap()).unwrap(),
                ))),
                Some(other) => Err(other.kind),
                None => Ok(None),
            },
        )
        .await;
        next.ok().flatten()
    }

    /// Waits (at most `within`) for a heartbeat listing `token`: the executor holds that lease,
    /// its attempt is running. Results seen meanwhile are dropped.
    pub async fn wait_held(&mut self, token: u64, within: Duration) -> bool {
        let from_executor = &mut self.session.from_executor;
        let what = format!("a heartbeat holding lease {token}");
        let held = try_wait_until(&what, within, Duration::ZERO, async || match from_executor
            .recv()
            .await
        {
            Some(ExecutorMessage {
                kind: Some(executor_message::Kind::Heartbeat(beat)),
            }) if beat.fencing_tokens.contains(&token) => Ok(true),
            Some(other) => Err(other.kind),
            None => Ok(false),
        })
        .await;
        held.unwrap_or(false)
    }

    /// Signals the stop (what SIGTERM does) without waiting for the executor to end.
    pub fn signal_stop(&self) {
        self.stop.cancel();
    }

    /// Whether the executor's run has ended.
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Drains the executor and waits for it to stop.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The real executor binary on `config`, its output dropped.
pub fn start_executor(config: &Path) -> Child {
    start_executor_with_write_delay(config, Duration::ZERO)
}

/// Starts the real executor binary, pausing `delay` after each file it writes while applying
/// (the debug build's [`executor::TEST_WRITE_DELAY_VAR`]), so a kill lands between writes.
pub fn start_executor_with_write_delay(config: &Path, delay: Duration) -> Child {
    Command::new(env!("CARGO_BIN_EXE_executor"))
        .arg("--config")
        .arg(config)
        .env(
            executor::TEST_WRITE_DELAY_VAR,
            delay.as_millis().to_string(),
        )
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until `path` exists, which shows `what` happened.
pub async fn file_appears(path: &Path, what: &str) {
    let what = format!("{what} ({} to appear)", path.display());
    wait_for(&what, async || if path.exists() { Ok(()) } else { Err(()) }).await;
}
