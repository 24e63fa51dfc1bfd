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
use ghost_runtime::clock::SystemClock;
use ghost_runtime::config::Secret;
use ghost_runtime::outbox::Delivery;
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
use crate::store::{GatewayStateStore, PgStore, RouterStore, STALL_AFTER, SqliteStore, StoreError};
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
    store: Store,
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
        let store = Store::open(&config).await?;
        let routing = Routing::new(
            store.router_store(),
            Policy {
                lease: config.lease_timeout,
                max_attempts: config.max_attempts,
                stale_after: config.stale_after,
            },
        )
        .with_storage(store.health().clone())
        .with_clock(ghost_runtime::clock::SystemClock::shared());
        let routing = Arc::new(match &store {
            Store::Sqlite(_) => routing,
            Store::Postgres(_) => routing.shared(),
        });
        let gateway_state = store.gateway_state();
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

    /// Serves until `shutdown` resolves, then drains: the outboxes, the storage watch and the
    /// sweep run beside the gRPC services until then.
    pub async fn run<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        self.spawn_outboxes(&tasks, &token)?;
        self.spawn_storage_watch(&tasks, &token)?;
        self.spawn_sweep(&tasks, &token);
        let service = self.service(&tasks, &token).await?;
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

    /// Starts the delivery of both outboxes: outcomes to the summarizer, alerts to the
    /// alerter (each only when its URL is configured; else its rows wait).
    fn spawn_outboxes(&self, tasks: &TaskTracker, token: &CancellationToken) -> anyhow::Result<()> {
        let store = self.routing.store();
        let summarizer = match &self.config.summarizer_url {
            Some(url) => Some(outbox::Summarizer {
                client: SummarizerServiceClient::new(traced_channel(url, &self.upstream)?),
                store: Arc::clone(store),
            }),
            None => None,
        };
        let alerter = match &self.config.alerter_url {
            Some(url) => Some(outbox::Alerter(AlerterServiceClient::new(traced_channel(
                url,
                &self.upstream,
            )?))),
            None => None,
        };
        let claims = outbox::Claims {
            store: Arc::clone(store),
            shared: match &self.store {
                Store::Sqlite(_) => None,
                Store::Postgres(store) => Some(store.clone()),
            },
        };
        let claim_timeout = self.config.outbox_claim_timeout;
        let continuous = Delivery::Continuous {
            at_once: outbox::AT_ONCE,
        };
        tasks.spawn(outbox::run(
            outbox::OutcomeRows(claims.clone()),
            summarizer,
            outbox::policy("outcomes", continuous, claim_timeout),
            SystemClock::shared(),
            Arc::clone(&self.routing.outbox_wake),
            token.clone(),
        ));
        tasks.spawn(outbox::run(
            outbox::AlertRows(claims),
            alerter,
            outbox::policy("alerts", Delivery::Ordered, claim_timeout),
            SystemClock::shared(),
            Arc::clone(&self.routing.alert_wake),
            token.clone(),
        ));
        Ok(())
    }

    /// Starts what watches the store: storage faults reported to the alerter, the probe of a
    /// degraded store, and (on a store shared by replicas) the notes of the other replicas.
    fn spawn_storage_watch(
        &self,
        tasks: &TaskTracker,
        token: &CancellationToken,
    ) -> anyhow::Result<()> {
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
        if let Store::Postgres(store) = &self.store {
            tasks.spawn(follow_replicas(
                store.clone(),
                Arc::clone(&self.routing),
                token.clone(),
            ));
        }
        Ok(())
    }

    /// Starts the sweep: every `sweep_interval`, expired leases, stale queues and the outbox
    /// backlog gauges.
    fn spawn_sweep(&self, tasks: &TaskTracker, token: &CancellationToken) {
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
    }

    /// The router's gRPC services (routing, stats, executor tokens, API keys, gateway state)
    /// over the one routing state.
    async fn service(
        &self,
        tasks: &TaskTracker,
        token: &CancellationToken,
    ) -> anyhow::Result<Service> {
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
        Ok(Service {
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
        })
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
async fn watch_storage(store: Store, routing: Arc<Routing>, shutdown: CancellationToken) {
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

/// The router's store: the embedded SQLite database, or PostgreSQL shared by replicas.
#[derive(Clone)]
enum Store {
    /// `store.url` unset: `<data_dir>/router.db`.
    Sqlite(SqliteStore),
    /// `store.url = "postgres://…"`.
    Postgres(PgStore),
}

impl Store {
    /// Opens the store `config` names. On SQLite (one router) every attempt in flight at the
    /// last stop is interrupted; on PostgreSQL other replicas may hold leases, and only their
    /// expiry (or their own replica) ends them.
    async fn open(config: &RouterConfig) -> anyhow::Result<Self> {
        let url = config.store.postgres_url().map_err(anyhow::Error::msg)?;
        let Some(url) = url else {
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
            return Ok(Self::Sqlite(store));
        };
        let store = PgStore::connect(url)
            .await
            .map_err(|err| anyhow::anyhow!("cannot open the router's store: {err}"))?
            .with_claim_timeout(config.outbox_claim_timeout);
        tracing::info!("router state on PostgreSQL (store.url); replicas may share it");
        Ok(Self::Postgres(store))
    }

    fn router_store(&self) -> Arc<dyn RouterStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    fn gateway_state(&self) -> Arc<dyn GatewayStateStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    fn health(&self) -> &ghost_runtime::storage::StorageHealth {
        match self {
            Self::Sqlite(store) => store.health(),
            Self::Postgres(store) => store.health(),
        }
    }

    /// How long the batch being committed has been at it (SQLite's writer; PostgreSQL calls
    /// time out on their own).
    fn committing_for(&self) -> Option<Duration> {
        match self {
            Self::Sqlite(store) => store.committing_for(),
            Self::Postgres(_) => None,
        }
    }

    async fn probe(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(store) => store.probe().await,
            Self::Postgres(store) => store.probe().await,
        }
    }
}

/// How often a replica on a shared store reads again what the notes of the others may have
/// told it (the fallback when a note is missed).
const REPLICA_POLL: Duration = Duration::from_secs(1);

/// Acts on the notes of the other replicas sharing the store (work to hand out, patches
/// ended, Cancels for executors connected here) and polls every [`REPLICA_POLL`] for what a
/// lost note would have said.
async fn follow_replicas(store: PgStore, routing: Arc<Routing>, shutdown: CancellationToken) {
    let mut notes = store.subscribe(shutdown.clone());
    let mut poll = tokio::time::interval(REPLICA_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            note = notes.recv() => match note {
                Some(note) => routing.apply_note(note).await,
                None => return,
            },
            _ = poll.tick() => {
                if !store.health().is_degraded() {
                    routing.poll_shared().await;
                }
            }
        }
    }
}
