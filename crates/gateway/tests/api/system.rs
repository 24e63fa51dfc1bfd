//! A whole system in-process on loopback for the dashboard tests: router, summarizer, alerter,
//! an executor serving MAIN (CYOPS has none, so its patches stay queued) and the gateway with
//! its dashboard, all real Apps on port 0.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway::GatewayConfig;
use ghost_runtime::config::{Secret, ServerConfig};

use crate::helpers::{Running, spawn, spawn_gateway};

/// The key with every scope.
pub const ADMIN_KEY: &str = "dashboard-admin-key-0123456789";
/// A key with the read scope only.
pub const READ_KEY: &str = "dashboard-reader-key-012345678";

fn server(grpc: SocketAddr) -> ServerConfig {
    ServerConfig {
        grpc_listen: grpc,
        drain_grace: Duration::ZERO,
        drain_timeout: Duration::from_secs(2),
        ..ServerConfig::ephemeral()
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// A free loopback port, released again for a service to bind a moment later (the router
/// and summarizer must know each other's address before either runs).
fn reserve_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
}

/// Every service of a system, and its scratch space (held so they live as long as it).
#[allow(dead_code)]
pub struct System {
    pub gateway: Running,
    pub services: Vec<Running>,
    pub workspace: PathBuf,
    pub scratch: tempfile::TempDir,
}

fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl System {
    /// Starts everything; `adjust` may change the gateway's config.
    pub async fn start(with_executor: bool, adjust: impl FnOnce(&mut GatewayConfig)) -> Self {
        let policy = with_executor.then(|| executor::config::TargetPolicy {
            commands: executor::config::CommandPolicy::Any,
            ..Default::default()
        });
        Self::start_with(policy, adjust).await
    }

    /// Starts everything, with an executor for MAIN under `policy` (none: no executor);
    /// `adjust` may change the gateway's config.
    pub async fn start_with(
        policy: Option<executor::config::TargetPolicy>,
        adjust: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let scratch = tempfile::tempdir().expect("tempdir");
        let root = scratch.path().to_owned();
        let workspace = root.join("workspace");
        std::fs::create_dir_all(&workspace).expect("workspace");
        let mut services = Vec::new();

        let alerter = alerter::App::build(alerter::AlerterConfig {
            server: server(any_port()),
            data_dir: Some(root.join("alerter")),
            ..Default::default()
        })
        .await
        .expect("alerter builds");
        let alerter_grpc = alerter.grpc_addr();
        let (alerter_grpc_addr, alerter_http_addr) = (alerter.grpc_addr(), alerter.http_addr());
        services.push(spawn(
            alerter_grpc_addr,
            alerter_http_addr,
            |stopped| async move {
                alerter
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            },
        ));

        let summarizer = summarizer::App::build(summarizer::SummarizerConfig {
            server: server(reserve_port()),
            data_dir: root.join("summarizer"),
            alerter_url: Some(format!("http://{alerter_grpc}")),
            ..Default::default()
        })
        .await
        .expect("summarizer builds");
        let summarizer_grpc = summarizer.grpc_addr();
        let (summarizer_grpc_addr, summarizer_http_addr) =
            (summarizer.grpc_addr(), summarizer.http_addr());
        services.push(spawn(
            summarizer_grpc_addr,
            summarizer_http_addr,
            |stopped| async move {
                summarizer
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            },
        ));

        let router = router::App::build(router::RouterConfig {
            server: server(any_port()),
            data_dir: root.join("router"),
            summarizer_url: Some(format!("http://{summarizer_grpc}")),
            alerter_url: Some(format!("http://{alerter_grpc}")),
            ..Default::default()
        })
        .await
        .expect("router builds");
        let router_grpc = router.grpc_addr();
        let (router_grpc_addr, router_http_addr) = (router.grpc_addr(), router.http_addr());
        services.push(spawn(
            router_grpc_addr,
            router_http_addr,
            |stopped| async move {
                router
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            },
        ));

        if let Some(policy) = policy {
            let mut targets = BTreeMap::new();
            targets.insert("MAIN".to_owned(), policy);
            let executor = executor::App::build(executor::ExecutorConfig {
                server: server(any_port()),
                router_url: format!("http://{router_grpc}"),
                executor_id: "dashboard-executor".to_owned(),
                state_dir: root.join("executor"),
                workspaces: vec![executor::WorkspaceConfig {
                    target: "MAIN".to_owned(),
                    root: workspace.clone(),
                }],
                targets,
                reconnect_backoff: Duration::from_millis(100),
                ..Default::default()
            })
            .await
            .expect("executor builds");
            let (executor_grpc_addr, executor_http_addr) =
                (executor.grpc_addr(), executor.http_addr());
            services.push(spawn(
                executor_grpc_addr,
                executor_http_addr,
                |stopped| async move {
                    executor
                        .run(async {
                            let _ = stopped.await;
                        })
                        .await
                },
            ));
        }

        let mut config = GatewayConfig {
            server: server(any_port()),
            router_url: format!("http://{router_grpc}"),
            summarizer_url: format!("http://{summarizer_grpc}"),
            alerter_url: Some(format!("http://{alerter_grpc}")),
            api_key: Secret::new(ADMIN_KEY),
            api_keys: vec![gateway::config::ApiKeyConfig {
                name: "reader".to_owned(),
                sha256: sha256_hex(READ_KEY),
                scopes: vec![gateway::auth::Scope::Read],
                targets: Vec::new(),
            }],
            // The targets patches are sent to: MAIN has an executor, CYOPS none.
            targets: ["MAIN", "CYOPS"]
                .into_iter()
                .map(|name| gateway::config::TargetConfig {
                    name: name.to_owned(),
                    aliases: Vec::new(),
                    legacy_roots: Vec::new(),
                })
                .collect(),
            ..Default::default()
        };
        config.rate_limit.per_minute = 100_000;
        config.rate_limit.burst = 10_000;
        config.ui.refresh = Duration::from_millis(500);
        config.ui.jaeger_url = Some("http://jaeger.invalid:16686".to_owned());
        adjust(&mut config);
        let gateway = spawn_gateway(config).await;
        Self {
            gateway,
            services,
            workspace,
            scratch,
        }
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.gateway.http)
    }
}
