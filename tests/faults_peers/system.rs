//! The parts the fault tests share: the real service binaries as child processes (stoppable
//! with SIGSTOP), a TCP relay that can freeze its connections, a black-hole listener, and the
//! patch helpers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use ghost_e2e::{ReservedPort, binary, reserve_port};
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{
    Edit, EventsRequest, GetRequest, Patch, PatchState, PatchStatus, ReplaceText, SubmitRequest,
    edit,
};
use ghost_testkit::{POLL_INTERVAL, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// One service process: its binary, config file, log and extra environment; killed on drop.
pub struct Service {
    name: &'static str,
    config: PathBuf,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Its ports, held for it while it lives (see [`ReservedPort`]).
    reserved: Vec<ReservedPort>,
}

impl Service {
    /// A service configured by `toml`, not yet started.
    pub fn new(dir: &Path, name: &'static str, toml: &str) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml).expect("write config");
        Self {
            name,
            config,
            log: dir.join(format!("{name}.log")),
            env: Vec::new(),
            child: None,
            reserved: Vec::new(),
        }
    }

    /// Holds `port` (one in its config) for it while it lives: no other socket takes the port
    /// before it binds, or between a kill and a restart.
    pub fn holding(mut self, port: ReservedPort) -> Self {
        self.reserved.push(port);
        self
    }

    /// Adds an environment variable for the next start.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the process.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(binary(self.name));
        command
            .env("GHOST_CONFIG", &self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("service starts"));
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the service is running");
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts and buffers) but
    /// answers nothing.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL, waited for.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Continued before kill_on_drop's SIGKILL, so no stopped process is left behind
        // whatever the platform does with signals to stopped processes.
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// The router config of these tests: short leases, fast sweeps.
pub fn router_toml(dir: &Path, grpc_port: u16, summarizer_url: &str) -> String {
    format!(
        r#"data_dir = "{data}"
summarizer_url = "{summarizer_url}"
heartbeat_interval = "200ms"
lease_timeout = "2s"
sweep_interval = "200ms"
max_attempts = 50
[server]
grpc_listen = "127.0.0.1:{grpc_port}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
        data = dir.join("router").display()
    )
}

/// The summarizer config.
pub fn summarizer_toml(dir: &Path, grpc_port: u16) -> String {
    format!(
        r#"data_dir = "{data}"
[server]
grpc_listen = "127.0.0.1:{grpc_port}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
        data = dir.join("summarizer").display()
    )
}

/// A summarizer and a router that sends it outcomes, each on a free port, neither started yet;
/// with the router's gRPC port.
pub fn summarizer_and_router(dir: &Path) -> (Service, Service, u16) {
    let (router_reserved, summarizer_reserved) = (reserve_port(), reserve_port());
    let (router_port, summarizer_port) = (router_reserved.port, summarizer_reserved.port);
    let summarizer = Service::new(dir, "summarizer", &summarizer_toml(dir, summarizer_port))
        .holding(summarizer_reserved);
    let router = Service::new(
        dir,
        "router",
        &router_toml(
            dir,
            router_port,
            &format!("http://127.0.0.1:{summarizer_port}"),
        ),
    )
    .holding(router_reserved);
    (summarizer, router, router_port)
}

/// An executor serving target MAIN in `workspace` (commands allowed: patches may `sleep`).
pub fn executor_toml(dir: &Path, router_url: &str, workspace: &Path) -> String {
    format!(
        r#"router_url = "{router_url}"
executor_id = "faults"
state_dir = "{state}"
reconnect_backoff = "100ms"
reconnect_backoff_max = "1s"
[[workspaces]]
target = "MAIN"
root = "{workspace}"
[targets.MAIN]
commands = "any"
[server]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
        state = dir.join("executor-state").display(),
        workspace = workspace.display()
    )
}

/// A workspace whose `log.txt` holds only the `END` marker.
pub fn workspace(dir: &Path) -> PathBuf {
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    std::fs::write(workspace.join("log.txt"), "END\n").expect("log.txt");
    workspace
}

/// A patch appending its id to `log.txt` before the `END` marker (so a patch applied twice
/// leaves its id twice), then running `commands`.
pub fn append_patch(id: &str, commands: &[&str]) -> Patch {
    Patch {
        id: id.to_owned(),
        target: "MAIN".to_owned(),
        description: format!("append {id} to the log"),
        edits: vec![Edit {
            op: Some(edit::Op::Replace(ReplaceText {
                path: "log.txt".to_owned(),
                search: "END\n".to_owned(),
                replace: format!("{id}\nEND\n"),
            })),
        }],
        commands: commands.iter().map(|c| (*c).to_owned()).collect(),
        ..Patch::default()
    }
}

/// A router client on a channel of its own.
pub fn router_client(router_url: &str) -> RouterServiceClient<Channel> {
    RouterServiceClient::new(
        Endpoint::from_shared(router_url.to_owned())
            .expect("router url")
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    )
}

/// Submits `patch`, retrying while the router is starting (bounded: 60 s).
pub async fn submit(client: &mut RouterServiceClient<Channel>, patch: Patch) {
    let what = format!("{} accepted by the router", patch.id);
    wait_until(&what, Duration::from_secs(60), POLL_INTERVAL, async || {
        let request = SubmitRequest {
            patch: Some(patch.clone()),
            ..Default::default()
        };
        client.submit(request).await.map(drop)
    })
    .await;
}

/// The patch's state, once `done` says so (polled every 50 ms, at most `bound`).
pub async fn state_when(
    client: &mut RouterServiceClient<Channel>,
    id: &str,
    bound: Duration,
    what: &str,
    done: impl Fn(&PatchState) -> bool,
) -> PatchState {
    wait_until(&format!("{id} {what}"), bound, POLL_INTERVAL, async || {
        let state = client
            .get(GetRequest { id: id.to_owned() })
            .await
            .ok()
            .and_then(|answer| answer.into_inner().state);
        state.clone().filter(|s| done(s)).ok_or(state)
    })
    .await
}

/// True for a terminal status.
pub fn is_terminal(state: &PatchState) -> bool {
    !matches!(
        PatchStatus::try_from(state.status),
        Ok(PatchStatus::Queued | PatchStatus::Leased | PatchStatus::Applying) | Err(_)
    )
}

/// Waits (at most `bound`) for `id` to succeed; returns its state.
pub async fn succeeded(
    client: &mut RouterServiceClient<Channel>,
    id: &str,
    bound: Duration,
) -> PatchState {
    let state = state_when(client, id, bound, "terminal", is_terminal).await;
    assert_eq!(
        state.status,
        PatchStatus::Succeeded as i32,
        "{id} ended otherwise: {state:?}"
    );
    state
}

/// The patch's events' statuses, oldest first.
pub async fn event_statuses(client: &mut RouterServiceClient<Channel>, id: &str) -> Vec<String> {
    client
        .events(EventsRequest { id: id.to_owned() })
        .await
        .expect("events")
        .into_inner()
        .events
        .into_iter()
        .map(|event| event.status)
        .collect()
}

/// Asserts `log.txt` holds each of `ids` exactly once (and nothing else) before `END`.
pub fn assert_each_once(workspace: &Path, ids: &[String]) {
    let log = std::fs::read_to_string(workspace.join("log.txt")).expect("log.txt");
    let mut lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.pop(), Some("END"), "the marker stays last: {log}");
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in &lines {
        *counts.entry(line).or_default() += 1;
    }
    for id in ids {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "{id} applied other than once: {log}"
        );
    }
    assert_eq!(lines.len(), ids.len(), "only these patches: {log}");
}

/// A listener that accepts connections and never reads or writes: a peer that is "up" to
/// TCP and silent to everything above it. Counts and keeps its connections until dropped.
pub struct BlackHole {
    /// Where it listens.
    pub addr: SocketAddr,
    /// When each connection was accepted.
    pub accepted: Arc<std::sync::Mutex<Vec<Instant>>>,
    stop: CancellationToken,
}

impl BlackHole {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen, stopped) = (Arc::clone(&accepted), stop.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    () = stopped.cancelled() => return,
                    connection = listener.accept() => {
                        if let Ok((stream, _)) = connection {
                            seen.lock().expect("lock").push(Instant::now());
                            held.push(stream);
                        }
                    }
                }
            }
        });
        Self {
            addr,
            accepted,
            stop,
        }
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP relay to `upstream` that counts connections and can freeze the ones open: a frozen
/// connection stays open and forwards nothing more, in either direction (a half-dead path, a
/// silent peer); connections opened after a freeze are forwarded. It can also hold every
/// chunk it forwards for a while, either way (a slow path: this kernel has no `tc netem`).
pub struct Relay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// When each connection was accepted.
    pub accepted: Arc<std::sync::Mutex<Vec<Instant>>>,
    generation: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Relay {
    /// Relays a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let generation = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (seen, generations, delays, stopped) = (
            Arc::clone(&accepted),
            Arc::clone(&generation),
            Arc::clone(&delay_ms),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (downstream, _) = tokio::select! {
                    () = stopped.cancelled() => return,
                    connection = listener.accept() => match connection {
                        Ok(connection) => connection,
                        Err(_) => continue,
                    },
                };
                seen.lock().expect("lock").push(Instant::now());
                let born = generations.load(Ordering::SeqCst);
                let (generations, delays, stopped) = (
                    Arc::clone(&generations),
                    Arc::clone(&delays),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (down_read, down_write) = downstream.into_split();
                    let (up_read, up_write) = upstream.into_split();
                    let live = || generations.load(Ordering::SeqCst) == born;
                    let delay = || delays.load(Ordering::SeqCst);
                    let forward =
                        |mut from: tokio::net::tcp::OwnedReadHalf,
                         mut to: tokio::net::tcp::OwnedWriteHalf| {
                            async move {
                                let mut buffer = vec![0_u8; 16 * 1024];
                                loop {
                                    let Ok(read) = from.read(&mut buffer).await else {
                                        return (from, to);
                                    };
                                    if read == 0 {
                                        let _ = to.shutdown().await;
                                        return (from, to);
                                    }
                                    if !live() {
                                        // Frozen: hold both ends, forward nothing.
                                        return (from, to);
                                    }
                                    let wait = delay();
                                    if wait > 0 {
                                        tokio::time::sleep(Duration::from_millis(wait)).await;
                                    }
                                    if to.write_all(&buffer[..read]).await.is_err() {
                                        return (from, to);
                                    }
                                }
                            }
                        };
                    let (a, b) =
                        tokio::join!(forward(down_read, up_write), forward(up_read, down_write));
                    // Kept open until the relay stops: a frozen connection is silent, not closed.
                    stopped.cancelled().await;
                    drop((a, b));
                });
            }
        });
        Self {
            addr,
            accepted,
            generation,
            delay_ms,
            stop,
        }
    }

    /// Holds every chunk forwarded from now on for `delay`, either way (zero: none).
    pub fn delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn count(&self) -> usize {
        self.accepted.lock().expect("lock").len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
