//! The system under test: the five real binaries, each in its own network namespace
//! ([`crate::netns`]), started with `ip netns exec`, talking over the bridge with the service
//! credential (`server.internal_token`, `allow_plaintext_peers`: the bridge is a private
//! network); a fake Slack in the test's namespace, reached by the alerter over the bridge.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ghost_e2e::{TERMINAL, binary};
use ghost_proto::alerter::v1::alerter_read_service_client::AlerterReadServiceClient;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::summarizer::v1::GetRequest as SummaryRequest;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_testkit::{FakeSlack, try_wait_until, wait_until};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::netns::Net;

/// The gateway's API key.
const API_KEY: &str = "faults-net-key-0123456789abcdef";
/// The deployment's service credential (also the executor's Work stream token).
const INTERNAL_TOKEN: &str = "faults-net-internal-token-0123456789abcdef";
/// The services, in address order (`.1` … `.5`).
pub const SERVICES: [&str; 5] = ["gateway", "router", "executor", "summarizer", "alerter"];
/// Each service's gRPC and HTTP ports (each namespace has its own ports: no clashes).
fn ports(service: &str) -> (u16, u16) {
    match service {
        "gateway" => (50050, 8080),
        "router" => (50051, 8081),
        "executor" => (50052, 8082),
        "summarizer" => (50053, 8083),
        _ => (50054, 8084),
    }
}

type Authed =
    InterceptedService<Channel, fn(tonic::Request<()>) -> tonic::Result<tonic::Request<()>>>;

fn authorize(mut request: tonic::Request<()>) -> tonic::Result<tonic::Request<()>> {
    let value = format!("Bearer {INTERNAL_TOKEN}")
        .parse()
        .map_err(|_| tonic::Status::internal("token"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Forwards connections on `listener` to `upstream` until `stop`: the fake Slack listens on
/// the test's loopback, the alerter reaches it through this on the bridge.
fn forward(listener: TcpListener, upstream: std::net::SocketAddr, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let (mut downstream, _) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
            };
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    () = stop.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut downstream, &mut up) => {}
                }
            });
        }
    });
}

/// What one submission got.
#[derive(Debug)]
pub enum Submitted {
    Accepted,
    /// 503 with `Retry-After` and problem+json (the loud refusal).
    Unavailable,
    /// No HTTP answer, or another status.
    Other(String),
}

/// The five services of one test, in their namespaces; dropping it kills them, stops the
/// fakes and removes the namespaces (in that order: fields drop in declaration order).
pub struct Cluster {
    children: Vec<(&'static str, Child)>,
    stop: CancellationToken,
    pub slack: FakeSlack,
    pub dir: PathBuf,
    /// Kept (not deleted) when the test fails, for its logs.
    scratch: Option<tempfile::TempDir>,
    http: reqwest::Client,
    router: RouterServiceClient<Authed>,
    summarizer: SummarizerServiceClient<Authed>,
    alerts: AlerterReadServiceClient<Authed>,
    pub net: Net,
}

impl Cluster {
    /// Starts the five services with the router's `lease_timeout`; answers once each is ready.
    pub async fn start(lease_timeout: &str) -> Self {
        let net = Net::create(&SERVICES);
        let scratch = tempfile::tempdir().expect("tempdir");
        let dir = scratch.path().to_path_buf();
        let workspace = dir.join("workspace");
        std::fs::create_dir_all(&workspace).expect("workspace");
        std::fs::write(workspace.join("log.txt"), "END\n").expect("log.txt");

        let slack = FakeSlack::start().await;
        let stop = CancellationToken::new();
        let relay = TcpListener::bind((net.test_address(), 0))
            .await
            .expect("bind on the bridge");
        let relay_addr = relay.local_addr().expect("relay addr");
        let slack_addr: std::net::SocketAddr = slack
            .base_url()
            .trim_start_matches("http://")
            .trim_end_matches("/api")
            .parse()
            .expect("slack addr");
        forward(relay, slack_addr, stop.clone());

        let url = |service: &str| format!("http://{}:{}", net.ip(service), ports(service).0);
        let server = |service: &str| {
            let (grpc, http) = ports(service);
            let ip = net.ip(service);
            format!(
                r#"[server]
grpc_listen = "{ip}:{grpc}"
http_listen = "{ip}:{http}"
drain_grace = "0s"
internal_token = "{INTERNAL_TOKEN}"
allow_plaintext_peers = true
"#
            )
        };
        let configs = [
            (
                "alerter",
                format!(
                    r##"data_dir = "{data}"
router_url = "{router}"
summarizer_url = "{summarizer}"
[slack]
api_base_url = "http://{relay_addr}/api"
bot_token = "xoxb-faults-net"
channel = "#ghost"
initial_backoff = "100ms"
[health]
watch_executors = true
interval = "500ms"
check_timeout = "1s"
failures_before_alert = 2
# Every patch its own thread (successes would go to a 15-minute digest): one parent message
# per patch, counted by the tests.
[[routing.routes]]
thread = "own"
{server}"##,
                    data = dir.join("alerter").display(),
                    router = url("router"),
                    summarizer = url("summarizer"),
                    server = server("alerter"),
                ),
            ),
            (
                "summarizer",
                format!(
                    r#"data_dir = "{data}"
alerter_url = "{alerter}"
notify_initial_backoff = "200ms"
notify_max_backoff = "2s"
notify_timeout = "2s"
{server}"#,
                    data = dir.join("summarizer").display(),
                    alerter = url("alerter"),
                    server = server("summarizer"),
                ),
            ),
            (
                "router",
                format!(
                    r#"data_dir = "{data}"
summarizer_url = "{summarizer}"
alerter_url = "{alerter}"
heartbeat_interval = "200ms"
lease_timeout = "{lease_timeout}"
sweep_interval = "200ms"
max_attempts = 50
{server}"#,
                    data = dir.join("router").display(),
                    summarizer = url("summarizer"),
                    alerter = url("alerter"),
                    server = server("router"),
                ),
            ),
            (
                "executor",
                format!(
                    r#"router_url = "{router}"
executor_id = "faults-net"
token = "{INTERNAL_TOKEN}"
state_dir = "{state}"
reconnect_backoff = "100ms"
reconnect_backoff_max = "1s"
[[workspaces]]
target = "MAIN"
root = "{workspace}"
[targets.MAIN]
commands = "any"
{server}"#,
                    router = url("router"),
                    state = dir.join("executor-state").display(),
                    workspace = workspace.display(),
                    server = server("executor"),
                ),
            ),
            (
                "gateway",
                format!(
                    r#"router_url = "{router}"
summarizer_url = "{summarizer}"
api_key = "{API_KEY}"
upstream_timeout = "3s"
[[targets]]
name = "MAIN"
[rate_limit]
per_minute = 100000
burst = 10000
{server}"#,
                    router = url("router"),
                    summarizer = url("summarizer"),
                    server = server("gateway"),
                ),
            ),
        ];
        let mut children = Vec::new();
        for (service, toml) in configs {
            children.push((service, spawn(&net, &dir, service, &toml)));
        }
        let lazy = |service: &str| {
            Endpoint::from_shared(url(service))
                .expect("endpoint")
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect_lazy()
        };
        let auth: fn(tonic::Request<()>) -> tonic::Result<tonic::Request<()>> = authorize;
        let cluster = Self {
            children,
            stop,
            slack,
            router: RouterServiceClient::with_interceptor(lazy("router"), auth),
            summarizer: SummarizerServiceClient::with_interceptor(lazy("summarizer"), auth),
            alerts: AlerterReadServiceClient::with_interceptor(lazy("alerter"), auth),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            dir,
            scratch: Some(scratch),
            net,
        };
        let started = Instant::now();
        for service in SERVICES {
            let what = format!("{service} ready");
            let left = Duration::from_secs(60).saturating_sub(started.elapsed());
            let ready =
                try_wait_until(
                    &what,
                    left,
                    Duration::from_millis(100),
                    async || match cluster.ready(service).await {
                        200 => Ok(()),
                        status => Err(status),
                    },
                )
                .await;
            assert!(
                ready.is_ok(),
                "{service} not ready within 60 s; its log:\n{}",
                cluster.log(service)
            );
        }
        cluster
    }

    fn http_base(&self, service: &str) -> String {
        format!("http://{}:{}", self.net.ip(service), ports(service).1)
    }

    /// `service`'s `/readyz` status (0: no answer).
    pub async fn ready(&self, service: &str) -> u16 {
        match self
            .http
            .get(format!("{}/readyz", self.http_base(service)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// The value `service`'s `/metrics` shows for `name{outbox="<outbox>"}` (None: no answer
    /// or no such series yet).
    pub async fn outbox_gauge(&self, service: &str, name: &str, outbox: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.http_base(service)))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let series = format!("{name}{{outbox=\"{outbox}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.trim().parse().ok())
    }

    /// `service`'s log so far.
    pub fn log(&self, service: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{service}.log"))).unwrap_or_default()
    }

    /// `POST /v1/patches` of a patch appending `id` to `log.txt` (before the `END` marker),
    /// then running `commands`.
    pub async fn submit(&self, id: &str, commands: &[&str]) -> Submitted {
        let body = serde_json::json!({
            "id": id,
            "target": "MAIN",
            "description": format!("append {id} to the log"),
            "edits": [{"op": "replace", "path": "log.txt", "search": "END\n", "replace": format!("{id}\nEND\n")}],
            "commands": commands,
        });
        let response = self
            .http
            .post(format!("{}/v1/patches", self.http_base("gateway")))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(err) => return Submitted::Other(format!("no answer: {err}")),
        };
        let code = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let problem = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        let text = response.text().await.unwrap_or_default();
        match code {
            202 => Submitted::Accepted,
            503 if retry_after && problem => Submitted::Unavailable,
            other => Submitted::Other(format!("{other}: {text}")),
        }
    }

    /// Submits `id` until it is accepted (same id each time), at most `bound`.
    pub async fn submit_until_accepted(&self, id: &str, commands: &[&str], bound: Duration) {
        let what = format!("{id} accepted");
        wait_until(
            &what,
            bound,
            Duration::from_millis(200),
            async || match self.submit(id, commands).await {
                Submitted::Accepted => Ok(()),
                Submitted::Unavailable => Err("503 with Retry-After".to_owned()),
                Submitted::Other(why) => Err(why),
            },
        )
        .await;
    }

    /// The router's status of `id` (`succeeded`, …) and its count of terminal events.
    pub async fn outcome(&self, id: &str) -> Option<(String, usize)> {
        ghost_e2e::outcome(&mut self.router.clone(), id).await
    }

    /// True once `id` has a terminal status at the router.
    pub async fn ended(&self, id: &str) -> bool {
        self.outcome(id)
            .await
            .is_some_and(|(status, _)| TERMINAL.contains(&status.as_str()))
    }

    /// True once the summarizer has `id`'s summary.
    pub async fn summarized(&self, id: &str) -> bool {
        self.summarizer
            .clone()
            .get(SummaryRequest {
                patch_id: id.to_owned(),
            })
            .await
            .is_ok_and(|answer| answer.into_inner().summary.is_some())
    }

    /// Slack parent messages (as they stand, thread replies left out) of the patch `id`: alert
    /// messages naming it in their key (`patch_interrupted/MAIN/<id>/<attempt>`, raised when a
    /// partition outlived a lease and the attempt was given again) are not its messages.
    pub fn slack_messages_of(&self, id: &str) -> usize {
        // The tests' ids are never substrings of one another.
        let alert_key = format!("/MAIN/{id}/");
        self.slack
            .messages()
            .iter()
            .filter(|message| message.thread_ts.is_none())
            .map(|message| message.body.to_string())
            .filter(|body| body.contains(id) && !body.contains(&alert_key))
            .count()
    }

    /// True while the alerter lists `key` as firing.
    pub async fn alert_firing(&self, key: &str) -> bool {
        ghost_e2e::alert_firing(&mut self.alerts.clone(), key).await
    }

    /// The ids in `log.txt`, in the order their patches were applied.
    pub fn applied(&self) -> Vec<String> {
        let log =
            std::fs::read_to_string(self.dir.join("workspace").join("log.txt")).unwrap_or_default();
        log.lines()
            .filter(|line| *line != "END")
            .map(str::to_owned)
            .collect()
    }

    /// A file outside the workspace (for commands that wait on it).
    pub fn scratch_file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn spawn(net: &Net, dir: &Path, service: &'static str, toml: &str) -> Child {
    let config = dir.join(format!("{service}.toml"));
    std::fs::write(&config, toml).expect("write config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{service}.log")))
        .expect("log file");
    // `ip netns exec` execs the binary in place: the child's pid is the service's.
    Command::new("ip")
        .args(["netns", "exec", net.namespace(service)])
        .arg(binary(service))
        .env("GHOST_CONFIG", &config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("service starts")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.start_kill();
        }
        // Reaped before the namespaces go (the net field drops after this).
        for (_, child) in &mut self.children {
            let _ = child.try_wait();
        }
        self.stop.cancel();
        if std::thread::panicking()
            && let Some(scratch) = self.scratch.take()
        {
            eprintln!("logs kept in {}", scratch.keep().display());
        }
    }
}
