//! The system under test: the real alerter, router, executor and gateway binaries as child
//! processes (so one of them can run under `LD_PRELOAD`), their configs and logs in a scratch
//! directory, and the calls the scenarios make on them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ghost_e2e::{ReservedPort, binary, reserve_port};
use ghost_proto::alerter::v1::alerter_read_service_client::AlerterReadServiceClient;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_testkit::wait_for;
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

pub const API_KEY: &str = "faults-test-key-0123456789abcdef";

/// The target whose executor runs from the start (slowed, so patches queue behind it).
pub const MAIN: &str = "MAIN";
/// The target whose executor is started only once the fault has begun: its first leases are
/// tried on the failing disk while the target is free.
pub const LATE: &str = "LATE";

/// The executor serving `target` (its workspace is `<dir>/<target>`).
fn executor(dir: &Path, router_grpc: u16, target: &str) -> Child {
    spawn(
        dir,
        &format!("executor-{target}"),
        "executor",
        &format!(
            r#"router_url = "http://127.0.0.1:{router_grpc}"
executor_id = "faults-{target}"
state_dir = "{state}"
reconnect_backoff = "100ms"
[[workspaces]]
target = "{target}"
root = "{workspace}"
[server]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#,
            state = dir.join(format!("executor-state-{target}")).display(),
            workspace = dir.join(target).display()
        ),
        // Slow enough that patches are still queued when a fault starts (150 ms after each
        // file written: the debug build's test-only pause, not a config key).
        &[(executor::TEST_WRITE_DELAY_VAR.to_owned(), "150".to_owned())],
    )
}

/// How the router's process is started: extra environment (the fault shim).
#[derive(Default, Clone)]
pub struct RouterEnv {
    pub vars: Vec<(String, String)>,
}

/// The four services of one scenario; dropping it kills them.
pub struct System {
    pub dir: PathBuf,
    router_grpc: u16,
    gateway_url: String,
    router_http: String,
    router: RouterServiceClient<Channel>,
    alerts: AlerterReadServiceClient<Channel>,
    http: reqwest::Client,
    children: Vec<Child>,
    /// The ports of the services, held while it lives (see [`ReservedPort`]).
    _ports: Vec<ReservedPort>,
}

fn spawn(dir: &Path, name: &str, program: &str, toml: &str, env: &[(String, String)]) -> Child {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).expect("write config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("log file");
    let mut command = Command::new(binary(program));
    command
        .env("GHOST_CONFIG", &config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("service starts")
}

impl System {
    /// Starts the services with the router's data in `router_data` (made by the caller: it may
    /// be a mount) and `router_env` in the router's environment; answers once the router and
    /// the gateway are ready.
    pub async fn start(dir: &Path, router_data: &Path, router_env: &RouterEnv) -> Self {
        for target in [MAIN, LATE] {
            let workspace = dir.join(target);
            std::fs::create_dir_all(&workspace).expect("workspace");
            std::fs::write(workspace.join("log.txt"), "END\n").expect("log.txt");
        }
        let ports: Vec<ReservedPort> = (0..4).map(|_| reserve_port()).collect();
        let [alerter_grpc, router_grpc, router_http, gateway_http] =
            [0, 1, 2, 3].map(|n| ports[n].port);
        let mut children = Vec::new();
        children.push(spawn(
            dir,
            "alerter",
            "alerter",
            &format!(
                r#"[health]
watch_executors = false
[server]
grpc_listen = "127.0.0.1:{alerter_grpc}"
http_listen = "127.0.0.1:0"
drain_grace = "0s"
"#
            ),
            &[],
        ));
        children.push(spawn(
            dir,
            "router",
            "router",
            &format!(
                r#"data_dir = "{data}"
alerter_url = "http://127.0.0.1:{alerter_grpc}"
heartbeat_interval = "200ms"
lease_timeout = "10s"
sweep_interval = "200ms"
max_attempts = 50
[server]
grpc_listen = "127.0.0.1:{router_grpc}"
http_listen = "127.0.0.1:{router_http}"
drain_grace = "0s"
"#,
                data = router_data.display()
            ),
            &router_env.vars,
        ));
        children.push(executor(dir, router_grpc, MAIN));
        children.push(spawn(
            dir,
            "gateway",
            "gateway",
            &format!(
                r#"router_url = "http://127.0.0.1:{router_grpc}"
summarizer_url = "http://127.0.0.1:9"
api_key = "{API_KEY}"
upstream_timeout = "3s"
[[targets]]
name = "MAIN"
[[targets]]
name = "LATE"
[rate_limit]
per_minute = 100000
burst = 10000
[server]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:{gateway_http}"
drain_grace = "0s"
"#
            ),
            &[],
        ));
        let lazy = |port: u16| {
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("endpoint")
                .connect_lazy()
        };
        let system = Self {
            dir: dir.to_path_buf(),
            router_grpc,
            gateway_url: format!("http://127.0.0.1:{gateway_http}"),
            router_http: format!("http://127.0.0.1:{router_http}"),
            router: RouterServiceClient::new(lazy(router_grpc)),
            alerts: AlerterReadServiceClient::new(lazy(alerter_grpc)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            children,
            _ports: ports,
        };
        for url in [&system.router_http, &system.gateway_url] {
            let what = format!("{url} ready (logs in {})", system.dir.display());
            wait_for(&what, async || match system.ready(url).await {
                (200, _) => Ok(()),
                other => Err(other),
            })
            .await;
        }
        system
    }

    async fn ready(&self, base: &str) -> (u16, String) {
        match self.http.get(format!("{base}/readyz")).send().await {
            Ok(response) => {
                let code = response.status().as_u16();
                (code, response.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// The router's `/readyz`: status and body.
    pub async fn router_ready(&self) -> (u16, String) {
        self.ready(&self.router_http).await
    }

    /// Starts the executor of [`LATE`].
    pub fn start_late_executor(&mut self) {
        let child = executor(&self.dir, self.router_grpc, LATE);
        self.children.push(child);
    }

    /// `POST /v1/patches` to `target` of a patch appending `id` to its `log.txt` (before the
    /// `END` marker).
    pub async fn submit(&self, target: &str, id: &str) -> Submitted {
        let body = serde_json::json!({
            "id": id,
            "target": target,
            "description": format!("append {id} to the log"),
            "edits": [{"op": "replace", "path": "log.txt", "search": "END\n", "replace": format!("{id}\nEND\n")}],
        });
        let response = self
            .http
            .post(format!("{}/v1/patches", self.gateway_url))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let Ok(response) = response else {
            return Submitted::NoAnswer;
        };
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        match code {
            202 => Submitted::Accepted,
            503 => Submitted::Unavailable {
                retry_after,
                problem: content_type.starts_with("application/problem+json"),
                detail: body["detail"].as_str().unwrap_or_default().to_owned(),
            },
            other => Submitted::Other(other, body.to_string()),
        }
    }

    /// True while the alerter lists `key` as firing.
    pub async fn alert_firing(&self, key: &str) -> bool {
        ghost_e2e::alert_firing(&mut self.alerts.clone(), key).await
    }

    /// The router's status of `id` (`succeeded`, …) and its terminal events.
    pub async fn outcome(&self, id: &str) -> Option<(String, usize)> {
        ghost_e2e::outcome(&mut self.router.clone(), id).await
    }

    /// The ids in `target`'s `log.txt`, in the order their patches were applied.
    pub fn applied(&self, target: &str) -> Vec<String> {
        let log =
            std::fs::read_to_string(self.dir.join(target).join("log.txt")).unwrap_or_default();
        log.lines()
            .filter(|line| *line != "END")
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
    }
}

/// What one submission got.
#[derive(Debug)]
pub enum Submitted {
    Accepted,
    Unavailable {
        retry_after: Option<String>,
        problem: bool,
        detail: String,
    },
    /// No HTTP answer (a connection cut).
    NoAnswer,
    Other(u16, String),
}
