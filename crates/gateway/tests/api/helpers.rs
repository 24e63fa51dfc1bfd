//! Spawning a real router and a real gateway for a test: [`TestGateway`] starts both with
//! ghost-cli's [`SystemBuilder`] (the one builder `ghost up` uses); the `spawn_*` helpers
//! start one service alone, for tests that arrange several gateways or restarts themselves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gateway::GatewayConfig;
use gateway::auth::Scope;
use gateway::config::{ApiKeyConfig, TargetConfig, WebhookConfig};
use ghost_cli::system::{LocalOptions, Service, System, SystemBuilder};
use ghost_runtime::config::{Secret, ServerConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The all-scopes key (the old single `api_key` field).
pub const KEY: &str = "gateway-test-key-0123456789";
/// A key with the read scope only.
pub const READER: &str = "reader-key-0123456789abcdef";
/// A key that may submit to MAIN only.
pub const MAIN_SUBMITTER: &str = "main-submitter-0123456789ab";
/// The Standard Webhooks secret of the test sender.
pub const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A running service; dropping it stops it.
pub struct Running {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops the service and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs a service: `run` gets the stop signal; dropping the handle sends it.
pub fn spawn<F>(
    grpc: SocketAddr,
    http: SocketAddr,
    run: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F,
) -> Running
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let future = run(stopped);
    let task = tokio::spawn(async move {
        if let Err(err) = future.await {
            panic!("service failed: {err:#}");
        }
    });
    Running {
        grpc,
        http,
        stop: Some(stop),
        task: Some(task),
    }
}

fn ephemeral() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn fast_server(grpc: SocketAddr) -> ServerConfig {
    ServerConfig {
        grpc_listen: grpc,
        drain_grace: std::time::Duration::ZERO,
        drain_timeout: std::time::Duration::from_secs(2),
        ..ServerConfig::ephemeral()
    }
}

/// The tests' router: its database in `data_dir`, on `grpc` (port 0: any).
fn router_config(data_dir: &Path, grpc: SocketAddr) -> router::RouterConfig {
    router::RouterConfig {
        server: fast_server(grpc),
        data_dir: data_dir.to_owned(),
        ..Default::default()
    }
}

/// A real router with its database in `data_dir`, on `grpc` (port 0: any).
pub async fn spawn_router_on(data_dir: &Path, grpc: SocketAddr) -> Running {
    let config = router_config(data_dir, grpc);
    let app = router::App::build(config).await.expect("router builds");
    let (grpc, http) = (app.grpc_addr(), app.http_addr());
    spawn(grpc, http, |stopped| async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
    })
}

/// A real alerter (in-memory database, Slack off) on free ports.
pub async fn spawn_alerter() -> (Running, std::sync::Arc<alerter::lifecycle::Lifecycle>) {
    spawn_alerter_with(|_| {}).await
}

/// [`spawn_alerter`] with its config changed by `adjust` first (a Slack to post to, say).
pub async fn spawn_alerter_with(
    adjust: impl FnOnce(&mut alerter::AlerterConfig),
) -> (Running, std::sync::Arc<alerter::lifecycle::Lifecycle>) {
    let mut config = alerter::AlerterConfig {
        server: fast_server("127.0.0.1:0".parse().expect("addr")),
        ..Default::default()
    };
    adjust(&mut config);
    let app = alerter::App::build(config).await.expect("alerter builds");
    let lifecycle = app.lifecycle();
    let (grpc, http) = (app.grpc_addr(), app.http_addr());
    let running = spawn(grpc, http, |stopped| async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
    });
    (running, lifecycle)
}

/// A real router on a free port.
pub async fn spawn_router(data_dir: &Path) -> Running {
    spawn_router_on(data_dir, "127.0.0.1:0".parse().expect("addr")).await
}

fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The test configuration: every kind of credential, MAIN/CYOPS with aliases and legacy roots.
pub fn config(router_grpc: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        router_url: format!("http://{router_grpc}"),
        ..test_config()
    }
}

/// [`config`] with no router URL (the system builder wires it).
fn test_config() -> GatewayConfig {
    GatewayConfig {
        server: fast_server("127.0.0.1:0".parse().expect("addr")),
        // Nothing listens there: summaries are simply absent.
        summarizer_url: "http://127.0.0.1:9".to_owned(),
        api_key: Secret::new(KEY),
        api_keys: vec![
            ApiKeyConfig {
                name: "reader".to_owned(),
                sha256: sha256_hex(READER),
                scopes: vec![Scope::Read],
                targets: Vec::new(),
            },
            ApiKeyConfig {
                name: "main-submitter".to_owned(),
                sha256: sha256_hex(MAIN_SUBMITTER),
                scopes: vec![Scope::Submit, Scope::Read],
                targets: vec!["MAIN".to_owned()],
            },
        ],
        webhooks: vec![WebhookConfig {
            name: "ci".to_owned(),
            secrets: vec![
                Secret::new("whsec_b2xkLXNlY3JldC1yb3RhdGVkLW91dA=="),
                Secret::new(WEBHOOK_SECRET),
            ],
            scopes: vec![Scope::Submit],
            targets: Vec::new(),
        }],
        default_target: Some("MAIN".to_owned()),
        targets: vec![
            TargetConfig {
                name: "MAIN".to_owned(),
                aliases: vec!["BRAUN".to_owned()],
                legacy_roots: vec!["/Users/sawyer/gitSync/tm-mobile-cursor".to_owned()],
            },
            TargetConfig {
                name: "CYOPS".to_owned(),
                aliases: vec!["DEV".to_owned()],
                legacy_roots: vec!["/Users/sawyer/gitSync/gpt-cursor-runner".to_owned()],
            },
        ],
        ..Default::default()
    }
}

/// A real gateway from `config`.
pub async fn spawn_gateway(config: GatewayConfig) -> Running {
    let app = gateway::App::build(config).await.expect("gateway builds");
    let (grpc, http) = (app.grpc_addr(), app.http_addr());
    spawn(grpc, http, |stopped| async move {
        app.run(async {
            let _ = stopped.await;
        })
        .await
    })
}

/// A router and a gateway in front of it, with scratch space.
pub struct TestGateway {
    /// The two services, started by ghost-cli's [`SystemBuilder`].
    pub system: System,
    pub scratch: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl TestGateway {
    /// Starts both with the test config, changed by `adjust` (which sees the router's URL
    /// wired in, and the scratch dir).
    pub async fn start(adjust: impl FnOnce(&mut GatewayConfig, &Path)) -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        let mut builder = SystemBuilder::new(&LocalOptions {
            data_dir: scratch.path().to_owned(),
            workspaces: Vec::new(),
            targets: Vec::new(),
            gateway_listen: "127.0.0.1:0".parse().expect("addr"),
            api_key: KEY.to_owned(),
            slack: None,
        })
        .only([Service::Gateway, Service::Router])
        .router(|router| *router = router_config(&scratch.path().join("router"), ephemeral()))
        .gateway(|gateway| *gateway = test_config());
        builder.bind().expect("router and gateway bind");
        let system = builder
            .gateway(|gateway| adjust(gateway, scratch.path()))
            .start()
            .await
            .expect("router and gateway start");
        Self {
            system,
            scratch,
            http: reqwest::Client::new(),
        }
    }

    /// The running gateway (its `http`, `grpc` and `ops` addresses).
    pub fn gateway(&self) -> &ghost_cli::system::Running {
        self.system.get(Service::Gateway).expect("gateway running")
    }

    /// The running router.
    pub fn router(&self) -> &ghost_cli::system::Running {
        self.system.get(Service::Router).expect("router running")
    }

    /// Stops the router (drained) and waits until it has stopped.
    pub async fn stop_router(&mut self) {
        self.system
            .stop_service("router")
            .await
            .expect("router stops");
    }

    /// Starts the router again on its address with its database, after
    /// [`TestGateway::stop_router`].
    pub async fn start_router_again(&mut self) {
        self.system
            .start_again(Service::Router)
            .await
            .expect("router starts again");
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.gateway().http)
    }

    /// `POST path` with a JSON body and `key`.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url()))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("gateway reachable");
        read(response).await
    }

    /// `GET path` with `key`.
    pub async fn get(&self, path: &str, key: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url()))
            .bearer_auth(key)
            .send()
            .await
            .expect("gateway reachable");
        read(response).await
    }

    /// Ids of every patch the router holds (read with the all-scopes key).
    pub async fn stored_ids(&self) -> Vec<String> {
        let (code, body) = self.get("/v1/patches?page_size=500", KEY).await;
        assert_eq!(code, 200, "{body}");
        body["patches"]
            .as_array()
            .expect("patches")
            .iter()
            .map(|p| p["id"].as_str().expect("id").to_owned())
            .collect()
    }

    /// A scratch path.
    pub fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }
}

/// Status code and JSON body (null when not JSON).
pub async fn read(response: reqwest::Response) -> (u16, Value) {
    let code = response.status().as_u16();
    (code, response.json().await.unwrap_or(Value::Null))
}

/// A one-file write patch for MAIN.
pub fn write_patch(id: &str) -> Value {
    serde_json::json!({
        "id": id,
        "target": "MAIN",
        "edits": [{"op": "write", "path": "a.txt", "contents": id}],
    })
}

/// Runs a Python script with the test venv; returns (success, stdout, stderr).
pub async fn python(script: &str, args: &[&str]) -> (bool, String, String) {
    let output = tokio::process::Command::new(ghost_testkit::python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
