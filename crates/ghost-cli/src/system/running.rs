//! A started system: each service the real `App` in a task of this process, talking real gRPC
//! to the others; each can be stopped and started again on the same ports (the router restart
//! test does), and the whole drains entry first, sinks last.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::ServerConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Service;
use super::config::{SystemConfig, executor_config, router_config, url};

/// One running service.
pub struct Running {
    /// Which service.
    pub service: Service,
    /// Service name (`router`).
    pub name: &'static str,
    /// Bound gRPC address.
    pub grpc: SocketAddr,
    /// Bound HTTP address.
    pub http: SocketAddr,
    /// Bound address of `/healthz`, `/readyz` and `/metrics`: `server.ops_listen`, or the HTTP
    /// address when they share it.
    pub ops: SocketAddr,
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

macro_rules! spawn_app {
    ($service:expr, $app:expr) => {{
        let app = $app;
        let stop = CancellationToken::new();
        let grpc = app.grpc_addr();
        let http = app.http_addr();
        let ops = app.ops_addr();
        let token = stop.clone();
        let task = tokio::spawn(async move { app.run(token.cancelled_owned()).await });
        Running {
            service: $service,
            name: $service.name(),
            grpc,
            http,
            ops,
            stop,
            task,
        }
    }};
}

/// Builds `service`'s App from its section of `config` and runs it in a task.
async fn spawn_service(service: Service, config: &SystemConfig) -> anyhow::Result<Running> {
    Ok(match service {
        Service::Alerter => spawn_app!(service, alerter::App::build(config.alerter.clone()).await?),
        Service::Summarizer => spawn_app!(
            service,
            summarizer::App::build(config.summarizer.clone()).await?
        ),
        Service::Router => spawn_app!(service, router::App::build(config.router.clone()).await?),
        Service::Executor => {
            let Some(executor) = &config.executor else {
                anyhow::bail!("no executor is configured");
            };
            for workspace in &executor.workspaces {
                std::fs::create_dir_all(&workspace.root)?;
            }
            spawn_app!(service, executor::App::build(executor.clone()).await?)
        }
        Service::Gateway => spawn_app!(service, gateway::App::build(config.gateway.clone()).await?),
    })
}

/// Services whose HTTP side serves TLS, with their certificate.
fn https_of(config: &SystemConfig) -> Vec<(&'static str, PathBuf)> {
    let https = |name: &'static str, server: &ServerConfig| {
        (server.tls.http && server.tls.key.is_some())
            .then(|| server.tls.cert.clone().map(|cert| (name, cert)))
            .flatten()
    };
    [
        https("gateway", &config.gateway.server),
        https("router", &config.router.server),
        https("summarizer", &config.summarizer.server),
        https("alerter", &config.alerter.server),
        config
            .executor
            .as_ref()
            .and_then(|executor| https("executor", &executor.server)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The services of one system, started by [`super::SystemBuilder::start`].
pub struct System {
    /// Where the services keep their state (restarted services too).
    data_dir: PathBuf,
    /// Services whose HTTP side serves TLS, with their certificate (readiness is asked over
    /// HTTPS, accepting exactly that certificate).
    https: Vec<(&'static str, PathBuf)>,
    /// The configs the services were started with (listen addresses bound, URLs wired).
    config: SystemConfig,
    /// Running services, in start order.
    pub services: Vec<Running>,
}

impl System {
    /// Starts `services` of `config` (listeners pre-bound, URLs wired), downstream first, and
    /// waits until all are ready. On error the listeners no service took are released.
    pub(super) async fn start(
        data_dir: PathBuf,
        config: SystemConfig,
        services: &[Service],
    ) -> anyhow::Result<Self> {
        let mut system = Self {
            data_dir,
            https: https_of(&config),
            config,
            services: Vec::new(),
        };
        let started = system.start_each(services).await;
        match started {
            Ok(()) => Ok(system),
            Err(err) => {
                // The services not built yet never took their pre-bound listeners: drop them
                // (releasing one a service took is a no-op).
                system.config.release_only(services);
                Err(err)
            }
        }
    }

    async fn start_each(&mut self, services: &[Service]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir)?;
        for service in Service::ALL {
            if services.contains(&service) {
                let running = spawn_service(service, &self.config).await?;
                self.services.push(running);
            }
        }
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// The configs the services were started with: bound addresses, wired URLs.
    pub fn config(&self) -> &SystemConfig {
        &self.config
    }

    /// A running service.
    pub fn get(&self, service: Service) -> anyhow::Result<&Running> {
        self.services
            .iter()
            .find(|running| running.service == service)
            .ok_or_else(|| anyhow::anyhow!("service {} is not running", service.name()))
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
        Ok(url(self.get(Service::Gateway)?.http))
    }

    /// Starts the router on the given addresses (its SQLite file under the data dir).
    pub async fn start_router(&mut self, grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<()> {
        let summarizer_grpc = self.get(Service::Summarizer)?.grpc;
        let alerter_grpc = self.get(Service::Alerter)?.grpc;
        let server = ServerConfig {
            grpc_listen: grpc,
            http_listen: http,
            ..ServerConfig::ephemeral()
        };
        let config = router::RouterConfig {
            summarizer_url: Some(url(summarizer_grpc)),
            alerter_url: Some(url(alerter_grpc)),
            ..router_config(&self.data_dir, server)
        };
        let router = spawn_app!(Service::Router, router::App::build(config).await?);
        self.services.push(router);
        Ok(())
    }

    /// Starts an executor serving `workspaces` against the running router.
    pub async fn add_executor(&mut self, workspaces: Vec<(String, PathBuf)>) -> anyhow::Result<()> {
        let router_grpc = self.get(Service::Router)?.grpc;
        let ephemeral = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = executor::ExecutorConfig {
            router_url: url(router_grpc),
            ..executor_config(&self.data_dir, workspaces, ephemeral)
        };
        for workspace in &config.workspaces {
            std::fs::create_dir_all(&workspace.root)?;
        }
        let executor = spawn_app!(Service::Executor, executor::App::build(config).await?);
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

    /// Starts `service` again, after [`System::stop_service`], from the config the system
    /// started it with (the same addresses, the same state), and waits until it is ready.
    pub async fn start_again(&mut self, service: Service) -> anyhow::Result<()> {
        if self.get(service).is_ok() {
            anyhow::bail!("{} is running", service.name());
        }
        let running = spawn_service(service, &self.config).await?;
        self.services.push(running);
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// True when `service` answers `/readyz` on its operations address with 200.
    async fn is_ready(&self, client: &reqwest::Client, service: &Running) -> bool {
        let cert = self
            .https
            .iter()
            .find(|(name, _)| *name == service.name)
            .map(|(_, cert)| cert.clone());
        match cert {
            Some(cert) => {
                let addr = service.ops;
                tokio::task::spawn_blocking(move || {
                    ghost_runtime::probe::readyz_tls(addr, &cert, Duration::from_secs(1))
                })
                .await
                .is_ok_and(|probed| probed.is_ok())
            }
            None => client
                .get(format!("http://{}/readyz", service.ops))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success()),
        }
    }

    /// Waits until every service answers `/readyz` (on its operations address) with 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        for service in &self.services {
            while !self.is_ready(&client, service).await {
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

impl Drop for System {
    /// A system dropped without [`System::shutdown`] (a test that ends, a start that failed
    /// partway) asks every service still running to drain; nothing waits for it.
    fn drop(&mut self) {
        self.services.iter().for_each(Running::begin_stop);
    }
}
