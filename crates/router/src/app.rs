//! Builds the router from its config and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient;
use ghost_proto::router::v1::api_key_service_server::ApiKeyServiceServer;
use ghost_proto::router::v1::executor_token_service_server::ExecutorTokenServiceServer;
use ghost_proto::router::v1::gateway_state_service_server::GatewayStateServiceServer;
use ghost_proto::router::v1::router_service_server::RouterServiceServer;
use ghost_proto::router::v1::router_stats_service_server::RouterStatsServiceServer;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::config::Secret;
use ghost_runtime::propagation::{Upstream, traced_channel};
use ghost_runtime::serve::{Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api_keys::{ApiKeyGrpc, ApiKeys};
use crate::config::RouterConfig;
use crate::gateway_state::GatewayStateGrpc;
use crate::grpc::RouterGrpc;
use crate::routing::{Policy, Routing};
use crate::stats::RouterStats;
use crate::store::{GatewayStateStore, RouterStore, STALL_AFTER, SqliteStore};
use crate::tokens::{ExecutorTokens, TokenService};
use crate::{SERVICE, outbox};

/// The executors' stream: the one router method open without the service credential (it
/// authenticates executors itself), and the only one the executor port serves.
pub const WORK_METHOD: &str = "/ghost.router.v1.RouterService/Work";

/// A built router, listening but not yet serving.
pub struct App {
    config: RouterConfig,
    listeners: Listeners,
    upstream: Upstream,
    routing: Arc<Routing>,
    /// The store itself, for its storage health and probe.
    store: SqliteStore,
    /// The gateways' shared sessions and webhook deliveries (the same database).
    gateway_state: Arc<dyn GatewayStateStore>,
    /// The service credential, resolved once from `internal_token` or `internal_token_file`.
    internal_token: Secret,
}

impl App {
    /// Opens the database, requeues work that was in flight, and binds the listeners.
    pub async fn build(config: RouterConfig) -> anyhow::Result<Self> {
        // The rule clock reads the wall clock at its first use: make that the start, not the
        // first lease or sweep (a jump in between would be read as the truth).
        let _ = ghost_runtime::clock::Clock::process();
        std::fs::create_dir_all(&config.data_dir)?;
        anyhow::ensure!(config.max_attempts >= 1, "max_attempts must be at least 1");
        anyhow::ensure!(
            !config.sweep_interval.is_zero() && !config.lease_timeout.is_zero(),
            "sweep_interval and lease_timeout must be positive"
        );
        let internal_token = config
            .server
            .internal_token()
            .map_err(|err| anyhow::anyhow!("cannot read the router's service credential: {err}"))?;
        if let Some(addr) = config.executor_listen {
            anyhow::ensure!(
                addr.ip().is_loopback() || !internal_token.is_empty(),
                "executor_listen {addr} is not a loopback address and no service credential is \
                 set (server.internal_token or server.internal_token_file): executors on other \
                 machines must present a credential"
            );
        }
        let store = SqliteStore::open(&config.data_dir.join("router.db"))?;
        let interrupted = store
            .end_all_leases("router restarted".to_owned(), config.max_attempts)
            .await?;
        if !interrupted.is_empty() {
            tracing::warn!(
                interrupted = interrupted.len(),
                "attempts in flight at the last stop were interrupted and their patches requeued or lost"
            );
        }
        let gateway_state: Arc<dyn GatewayStateStore> = Arc::new(store.clone());
        let routing = Arc::new(
            Routing::new(
                Arc::new(store.clone()),
                Policy {
                    lease: config.lease_timeout,
                    max_attempts: config.max_attempts,
                    stale_after: config.stale_after,
                },
            )
            .with_storage(store.health().clone()),
        );
        let mut listeners = Listeners::bind_internal(&config.server)
            .await
            .map_err(|err| anyhow::anyhow!("cannot bind the router listeners: {err}"))?;
        if let Some(addr) = config.executor_listen {
            listeners
                .bind_restricted("executor_listen", addr, vec![WORK_METHOD])
                .await
                .map_err(|err| anyhow::anyhow!("cannot bind the router's executor port: {err}"))?;
        }
        let upstream = Upstream::new(&config.server)?;
        Ok(Self {
            config,
            listeners,
            upstream,
            routing,
            store,
            gateway_state,
            internal_token,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The bound HTTP address: the operations listener (`/healthz`, `/readyz`, `/metrics`), at
    /// `server.ops_listen` when set, else at `server.http_listen`; this service has no public
    /// HTTP routes.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// The bound operations address (`/healthz`, `/readyz`, `/metrics`): the same as
    /// [`App::http_addr`], named as in the gateway and the alerter.
    pub fn ops_addr(&self) -> SocketAddr {
        self.listeners.ops_addr()
    }

    /// The bound executor port (`executor_listen`), when there is one.
    pub fn executor_addr(&self) -> Option<SocketAddr> {
        self.listeners.restricted_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let summarizer = match &self.config.summarizer_url {
            Some(url) => Some(outbox::Summarizer(SummarizerServiceClient::new(
                traced_channel(url, &self.upstream)?,
            ))),
            None => None,
        };
        let alerter = match &self.config.alerter_url {
            Some(url) => Some(outbox::Alerter(AlerterServiceClient::new(traced_channel(
                url,
                &self.upstream,
            )?))),
            None => None,
        };
        tasks.spawn(outbox::run(
            Arc::clone(self.routing.store()),
            summarizer,
            Arc::clone(&self.routing.outbox_wake),
            token.clone(),
        ));
        tasks.spawn(outbox::run(
            Arc::clone(self.routing.store()),
            alerter,
            Arc::clone(&self.routing.alert_wake),
            token.clone(),
        ));
        let storage_alerter = match &self.config.alerter_url {
            Some(url) => Some(AlerterServiceClient::new(traced_channel(
                url,
                &self.upstream,
            )?)),
            None => None,
        };
        tasks.spawn(ghost_runtime::storage::report_faults(
            self.store.health().clone(),
            storage_alerter,
            token.clone(),
        ));
        tasks.spawn(watch_storage(
            self.store.clone(),
            Arc::clone(&self.routing),
            token.clone(),
        ));
        tasks.spawn(Arc::clone(&self.routing).run_dispatch_retries(token.clone()));
        let routing = Arc::clone(&self.routing);
        let sweep_token = token.clone();
        let sweep_every = self.config.sweep_interval;
        tasks.spawn(async move {
            let mut outbox_ages = crate::queue_ages::QueueAges::default();
            loop {
                tokio::select! {
                    () = sweep_token.cancelled() => return,
                    () = tokio::time::sleep(sweep_every) => {
                        routing.expire_leases().await;
                        routing.check_stale().await;
                        outbox::publish_backlog(routing.store().as_ref(), &mut outbox_ages).await;
                    }
                }
            }
        });
        let api_keys = Arc::new(
            ApiKeys::open(Arc::clone(self.routing.store()), token.clone())
                .await
                .map_err(|err| anyhow::anyhow!("cannot read the runtime api keys: {err}"))?,
        );
        let tokens = Arc::new(ExecutorTokens::new(Arc::clone(&self.routing)));
        let grpc = RouterGrpc {
            routing: Arc::clone(&self.routing),
            tasks: tasks.clone(),
            shutdown: token.clone(),
            executor_token: self.config.executor_token.clone(),
            internal_token: self.internal_token.clone(),
            tokens: Arc::clone(&tokens),
            heartbeat_interval: self.config.heartbeat_interval,
            executor_addr: self.listeners.restricted_addr(),
            refusal_audit: Arc::default(),
        };
        let service = Service {
            name: SERVICE,
            grpc_names: vec![
                "ghost.router.v1.RouterService",
                "ghost.router.v1.RouterStatsService",
                "ghost.router.v1.ExecutorTokenService",
                "ghost.router.v1.ApiKeyService",
                "ghost.router.v1.GatewayStateService",
            ],
            grpc: tonic::service::Routes::new(RouterServiceServer::new(grpc))
                .add_service(RouterStatsServiceServer::new(RouterStats {
                    store: Arc::clone(self.routing.store()),
                }))
                .add_service(ExecutorTokenServiceServer::new(TokenService { tokens }))
                .add_service(ApiKeyServiceServer::new(ApiKeyGrpc { keys: api_keys }))
                .add_service(GatewayStateServiceServer::new(GatewayStateGrpc {
                    store: Arc::clone(&self.gateway_state),
                })),
            http: axum::Router::new(),
            open_methods: vec![WORK_METHOD],
            storage: Some(self.store.health().clone()),
        };
        let routing = Arc::clone(&self.routing);
        let close_token = token.clone();
        tasks.spawn(async move {
            close_token.cancelled().await;
            routing.close_sessions().await;
        });
        ghost_runtime::serve::serve_until(
            service,
            self.listeners,
            &self.config.server,
            shutdown,
            token,
            tasks,
        )
        .await
    }
}

/// How often the storage watch looks at the writer.
const STORAGE_WATCH: Duration = Duration::from_millis(250);
/// The longest wait between two probes of a degraded store.
const MAX_PROBE_WAIT: Duration = Duration::from_secs(1);

/// Notices a commit that hangs (degraded after [`STALL_AFTER`]) and, while the store is
/// degraded, probes it with one real write at growing intervals (up to [`MAX_PROBE_WAIT`]) until
/// one commits: the store heals by itself when the disk does, once the leases of the
/// executors still connected are renewed (their renewals were not stored meanwhile).
async fn watch_storage(store: SqliteStore, routing: Arc<Routing>, shutdown: CancellationToken) {
    let mut wait = STORAGE_WATCH;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if let Some(busy) = store.committing_for()
            && busy >= STALL_AFTER
        {
            store.health().fault(
                ghost_runtime::storage::FaultKind::Stall,
                format!("a commit has been running for {} ms", busy.as_millis()),
            );
        }
        if !store.health().is_degraded() {
            wait = STORAGE_WATCH;
            continue;
        }
        // A probe behind a hanging commit waits with it; the watch goes on meanwhile.
        let healed = async {
            store.probe().await?;
            routing.renew_live_leases().await
        };
        match tokio::time::timeout(MAX_PROBE_WAIT, healed).await {
            Ok(Ok(())) => {
                store.health().healed();
                routing.dispatch_after_heal().await;
                wait = STORAGE_WATCH;
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "storage probe failed; the store stays degraded");
                wait = (wait * 2).min(MAX_PROBE_WAIT);
            }
            Err(_) => wait = MAX_PROBE_WAIT,
        }
    }
}
