//! All five services in one process on loopback: what `ghost up` runs and what the
//! cross-service tests start. Each service is the real `App`, talking real gRPC to the others;
//! each can be stopped and started again on the same ports (the router restart test does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Slack settings for the alerter.
#[derive(Debug, Clone)]
pub struct SlackOptions {
    /// Web API base URL, e.g. `https://slack.com/api` or a test fake.
    pub api_base_url: String,
    /// Bot token.
    pub bot_token: String,
    /// Channel to post to.
    pub channel: String,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// State of router, summarizer and executor live under this directory.
    pub data_dir: PathBuf,
    /// Workspaces served by the local executor (target, root); empty: no executor.
    pub workspaces: Vec<(String, PathBuf)>,
    /// Targets the gateway accepts patches for besides the workspaces' (served elsewhere, or
    /// not yet): any other target is refused with 422.
    pub targets: Vec<String>,
    /// The gateway's public HTTP address.
    pub gateway_listen: SocketAddr,
    /// The API key the gateway accepts.
    pub api_key: String,
    /// Slack, or `None` to log messages instead.
    pub slack: Option<SlackOptions>,
}

/// One running service.
pub struct Running {
    /// Service name.
    pub name: &'static str,
    /// Bound gRPC address.
    pub grpc: SocketAddr,
    /// Bound HTTP address.
    pub http: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Asks the service to drain and waits until it has stopped.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }

    /// Starts draining without waiting (to observe the drain from outside).
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// True once the service task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The five services of one local system.
pub struct LocalSystem {
    options: LocalOptions,
    /// Running services, in start order.
    pub services: Vec<Running>,
}

fn server_on(grpc: SocketAddr, http: SocketAddr) -> ServerConfig {
    ServerConfig {
        grpc_listen: grpc,
        http_listen: http,
        ..ServerConfig::ephemeral()
    }
}

/// A free loopback port, released again so a service can bind it a moment later.
fn reserve_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

macro_rules! spawn_app {
    ($name:expr, $app:expr) => {{
        let app = $app;
        let stop = CancellationToken::new();
        let grpc = app.grpc_addr();
        let http = app.http_addr();
        let token = stop.clone();
        let task = tokio::spawn(async move { app.run(token.cancelled_owned()).await });
        Running {
            name: $name,
            grpc,
            http,
            stop,
            task,
        }
    }};
}

/// The gateway's known targets: every workspace's and every extra target, once each.
fn gateway_targets(options: &LocalOptions) -> Vec<gateway::config::TargetConfig> {
    let names: std::collections::BTreeSet<&String> = options
        .workspaces
        .iter()
        .map(|(target, _)| target)
        .chain(&options.targets)
        .collect();
    names
        .into_iter()
        .map(|name| gateway::config::TargetConfig {
            name: name.clone(),
            aliases: Vec::new(),
            legacy_roots: Vec::new(),
        })
        .collect()
}

impl LocalSystem {
    /// Builds and starts every service, downstream first, and waits until all are ready.
    pub async fn start(options: LocalOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&options.data_dir)?;
        let ephemeral = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut system = Self {
            options,
            services: Vec::new(),
        };

        // The alerter and the router call each other (verbs and health one way, alerts the
        // other), and the summarizer sits between them: reserve their gRPC ports first so each
        // can be told where the others are.
        let router_grpc = reserve_port()?;
        let summarizer_grpc = reserve_port()?;
        let mut alerter_config = alerter::AlerterConfig {
            server: server_on(ephemeral, ephemeral),
            data_dir: Some(system.options.data_dir.join("alerter")),
            router_url: Some(url(router_grpc)),
            summarizer_url: Some(url(summarizer_grpc)),
            ..Default::default()
        };
        alerter_config.health.services = [
            ("router".to_owned(), url(router_grpc)),
            ("summarizer".to_owned(), url(summarizer_grpc)),
        ]
        .into_iter()
        .collect();
        if let Some(slack) = &system.options.slack {
            alerter_config.slack.api_base_url = Some(slack.api_base_url.clone());
            alerter_config.slack.bot_token = Secret::new(slack.bot_token.clone());
            alerter_config.slack.channel = slack.channel.clone();
        }
        let alerter = spawn_app!("alerter", alerter::App::build(alerter_config).await?);

        let summarizer_config = summarizer::SummarizerConfig {
            server: server_on(summarizer_grpc, ephemeral),
            data_dir: system.options.data_dir.join("summarizer"),
            alerter_url: Some(url(alerter.grpc)),
            ..Default::default()
        };
        let summarizer = spawn_app!(
            "summarizer",
            summarizer::App::build(summarizer_config).await?
        );
        system.services.push(alerter);
        system.services.push(summarizer);

        system.start_router(router_grpc, ephemeral).await?;

        let workspaces = system.options.workspaces.clone();
        if !workspaces.is_empty() {
            system.add_executor(workspaces).await?;
        }

        let gateway_config = gateway::GatewayConfig {
            server: server_on(ephemeral, system.options.gateway_listen),
            router_url: url(router_grpc),
            summarizer_url: url(summarizer_grpc),
            alerter_url: Some(url(system.addr_of("alerter")?.0)),
            api_key: Secret::new(system.options.api_key.clone()),
            targets: gateway_targets(&system.options),
            ..Default::default()
        };
        let gateway = spawn_app!("gateway", gateway::App::build(gateway_config).await?);
        system.services.push(gateway);
        system.wait_ready(Duration::from_secs(20)).await?;
        Ok(system)
    }

    /// (gRPC, HTTP) addresses of a running service.
    pub fn addr_of(&self, name: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        self.services
            .iter()
            .find(|s| s.name == name)
            .map(|s| (s.grpc, s.http))
            .ok_or_else(|| anyhow::anyhow!("service {name} is not running"))
    }

    /// The gateway's base URL.
    pub fn gateway_url(&self) -> anyhow::Result<String> {
        Ok(url(self.addr_of("gateway")?.1))
    }

    /// Starts the router on the given addresses (its SQLite file under the data dir).
    pub async fn start_router(&mut self, grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<()> {
        let summarizer_grpc = self.addr_of("summarizer")?.0;
        let alerter_grpc = self.addr_of("alerter")?.0;
        let config = router::RouterConfig {
            server: server_on(grpc, http),
            data_dir: self.options.data_dir.join("router"),
            summarizer_url: Some(url(summarizer_grpc)),
            alerter_url: Some(url(alerter_grpc)),
            heartbeat_interval: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let router = spawn_app!("router", router::App::build(config).await?);
        self.services.push(router);
        Ok(())
    }

    /// Starts an executor serving `workspaces` against the running router.
    pub async fn add_executor(&mut self, workspaces: Vec<(String, PathBuf)>) -> anyhow::Result<()> {
        let router_grpc = self.addr_of("router")?.0;
        let ephemeral = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = executor::ExecutorConfig {
            server: server_on(ephemeral, ephemeral),
            router_url: url(router_grpc),
            executor_id: "local-executor".to_owned(),
            state_dir: self.options.data_dir.join("executor"),
            workspaces: workspaces
                .into_iter()
                .map(|(target, root)| executor::WorkspaceConfig { target, root })
                .collect(),
            reconnect_backoff: Duration::from_millis(200),
            ..Default::default()
        };
        for workspace in &config.workspaces {
            std::fs::create_dir_all(&workspace.root)?;
        }
        let executor = spawn_app!("executor", executor::App::build(config).await?);
        self.services.push(executor);
        Ok(())
    }

    /// Stops one service and waits for its drain; returns its addresses for a restart.
    pub async fn stop_service(&mut self, name: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let index = self
            .services
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| anyhow::anyhow!("service {name} is not running"))?;
        let running = self.services.remove(index);
        let addrs = (running.grpc, running.http);
        running.stop().await?;
        Ok(addrs)
    }

    /// Waits until every service answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        for service in &self.services {
            let probe = format!("http://{}/readyz", service.http);
            loop {
                let ready = client
                    .get(&probe)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    break;
                }
                if service.is_finished() {
                    anyhow::bail!("{} stopped while starting", service.name);
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("{} not ready after {timeout:?}", service.name);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Drains every service, entry first (gateway) and sinks last (alerter).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        while let Some(running) = self.services.pop() {
            let name = running.name;
            if let Err(err) = running.stop().await {
                tracing::error!(service = name, error = %err, "service stopped with an error");
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
