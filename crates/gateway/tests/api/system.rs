//! A whole system in-process on loopback for the dashboard tests: router, summarizer, alerter,
//! an executor serving MAIN (CYOPS has none, so its patches stay queued) and the gateway with
//! its dashboard, all real Apps on port 0, started by ghost-cli's [`SystemBuilder`].

use std::path::PathBuf;
use std::time::Duration;

use gateway::GatewayConfig;
use ghost_cli::system::{LocalOptions, Running, Service, SystemBuilder, SystemConfig};

/// The key with every scope.
pub const ADMIN_KEY: &str = "dashboard-admin-key-0123456789";
/// A key with the read scope only.
pub const READ_KEY: &str = "dashboard-reader-key-012345678";

/// Every service of a system, and its scratch space (held so they live as long as it).
pub struct System {
    pub running: ghost_cli::system::System,
    pub workspace: PathBuf,
    #[allow(dead_code)]
    pub scratch: tempfile::TempDir,
}

fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// No grace before a drain and a short one: a test's system stops at once.
fn drain_fast(config: &mut SystemConfig) {
    for server in config.servers_mut() {
        server.drain_grace = Duration::ZERO;
        server.drain_timeout = Duration::from_secs(2);
    }
}

/// The dashboard's gateway: an admin and a reader key, MAIN and CYOPS, no rate limit to
/// speak of, a fast refresh and a Jaeger link.
fn dashboard_gateway(config: &mut GatewayConfig) {
    // Runtime API keys stay in memory.
    config.data_dir = None;
    config.api_keys = vec![gateway::config::ApiKeyConfig {
        name: "reader".to_owned(),
        sha256: sha256_hex(READ_KEY),
        scopes: vec![gateway::auth::Scope::Read],
        targets: Vec::new(),
    }];
    config.rate_limit.per_minute = 100_000;
    config.rate_limit.burst = 10_000;
    config.ui.refresh = Duration::from_millis(500);
    config.ui.jaeger_url = Some("http://jaeger.invalid:16686".to_owned());
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
        let mut builder = SystemBuilder::new(&LocalOptions {
            data_dir: root,
            workspaces: Vec::new(),
            // The targets patches are sent to: MAIN has an executor, CYOPS none.
            targets: vec!["MAIN".to_owned(), "CYOPS".to_owned()],
            gateway_listen: "127.0.0.1:0".parse().expect("addr"),
            api_key: ADMIN_KEY.to_owned(),
            slack: None,
        });
        if let Some(policy) = policy {
            builder = builder.executor(|executor| {
                executor.executor_id = "dashboard-executor".to_owned();
                executor.workspaces = vec![executor::WorkspaceConfig {
                    target: "MAIN".to_owned(),
                    root: workspace.clone(),
                }];
                executor.targets = [("MAIN".to_owned(), policy)].into_iter().collect();
                executor.reconnect_backoff = Duration::from_millis(100);
            });
        }
        let running = builder
            .configure(drain_fast)
            .gateway(dashboard_gateway)
            .gateway(adjust)
            .start()
            .await
            .expect("system starts");
        Self {
            running,
            workspace,
            scratch,
        }
    }

    /// A running service.
    pub fn service(&self, service: Service) -> &Running {
        self.running.get(service).expect("running")
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.service(Service::Gateway).http)
    }
}
