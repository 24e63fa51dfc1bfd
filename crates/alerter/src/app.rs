//! [`App`]: opens the database, binds the listeners, wires the outbox, the alert lifecycle,
//! the health monitor and the Slack routes, and serves until the shutdown future resolves.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use ghost_proto::alerter::v1::alerter_read_service_server::AlerterReadServiceServer;
use ghost_proto::alerter::v1::alerter_service_server::AlerterServiceServer;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::{TracedChannel, Upstream, traced_channel};
use ghost_runtime::serve::{Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::commands::{Commands, CommandsParts};
use crate::config::AlerterConfig;
use crate::grpc::AlerterGrpc;
use crate::health::{HealthBoard, HealthMonitor};
use crate::inbound::{Inbound, ResponseUrls, routes};
use crate::leader::Leader;
use crate::lifecycle::Lifecycle;
use crate::listing::AlerterRead;
use crate::outbox::{DeliveryPolicy, Outbox, deliver_loop};
use crate::patches::Patches;
use crate::routing::Router;
use crate::signing::Verifier;
use crate::slack::SlackClient;
use crate::store::Store;
use ghost_runtime::clock::{SharedClock, SystemClock};

/// Opens the store `config` names: PostgreSQL at `store.url`, else SQLite in `data_dir` (in
/// memory when unset).
async fn open_store(config: &AlerterConfig) -> anyhow::Result<Store> {
    if let Some(url) = config.store.postgres_url().map_err(anyhow::Error::msg)? {
        return Ok(Store::open_postgres(url).await?);
    }
    let path = match &config.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Some(dir.join("alerter.db"))
        }
        None => {
            tracing::warn!("alerter data_dir is not set; the outbox lives in memory only");
            None
        }
    };
    Ok(Store::open(path.as_deref())?)
}

/// The HTTP client for Slack's API, webhooks and response URLs.
fn slack_http() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(crate::slack::REQUEST_TIMEOUT)
        // Slack's API, webhooks and response_urls answer where they are: a redirect could
        // only carry a message (and the bot token's request) somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot build the http client")
}

/// Opens the database and the outbox over it, with the backlog switch as it was stored.
async fn open_outbox(config: &AlerterConfig, clock: SharedClock) -> anyhow::Result<Outbox> {
    let store = open_store(config)
        .await
        .context("cannot open the alerter database")?;
    let counts = store.outbox_counts().await?;
    if counts.pending > 0 {
        tracing::info!(
            pending = counts.pending,
            "resuming pending slack deliveries"
        );
    }
    let outbox = Outbox::new(store, clock).with_backlog_threshold(config.routing.backlog_threshold);
    outbox
        .restore_backlog()
        .await
        .context("cannot read the backlog switch state")?;
    Ok(outbox)
}

/// The router and summarizer clients, each when configured.
type PeerClients = (
    Option<RouterServiceClient<TracedChannel>>,
    Option<SummarizerServiceClient<TracedChannel>>,
);

/// The router and summarizer clients the `/ghost` verbs call, for those configured.
fn peer_clients(config: &AlerterConfig, upstream: &Upstream) -> anyhow::Result<PeerClients> {
    let router = match &config.router_url {
        Some(url) => Some(RouterServiceClient::new(
            traced_channel(url, upstream).context("invalid router_url")?,
        )),
        None => None,
    };
    let summarizer = match &config.summarizer_url {
        Some(url) => Some(SummarizerServiceClient::new(
            traced_channel(url, upstream).context("invalid summarizer_url")?,
        )),
        None => None,
    };
    Ok((router, summarizer))
}

/// The alerter, built and bound but not yet serving.
pub struct App {
    config: AlerterConfig,
    /// Where the alerter's own storage alert is posted directly.
    ops_channel: String,
    clock: SharedClock,
    listeners: Listeners,
    outbox: Outbox,
    patches: Patches,
    lifecycle: Arc<Lifecycle>,
    monitor: HealthMonitor,
    inbound: Arc<Inbound>,
    slack: Option<SlackClient>,
}

impl App {
    /// Builds with the system clock.
    pub async fn build(config: AlerterConfig) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Opens the database, loads alerts and silences, binds the listeners (port 0 allowed);
    /// every time rule reads `clock`.
    pub async fn build_with_clock(
        config: AlerterConfig,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let outbox = open_outbox(&config, Arc::clone(&clock)).await?;
        let store = outbox.store().clone();
        let listeners = Listeners::bind(&config.server)
            .await
            .context("cannot bind the alerter listeners")?;
        let http = slack_http()?;
        let slack = SlackClient::new(&config.slack, http.clone());
        if slack.is_none() {
            tracing::info!("slack is not configured; messages will only be logged");
        }
        let router_tree = Arc::new(
            Router::new(&config.routing, &config.slack.channel)
                .map_err(|err| anyhow::anyhow!("invalid alerter config: {err}"))?,
        );
        let patches = Patches::new(
            outbox.clone(),
            Arc::clone(&router_tree),
            config.routing.clone(),
            Arc::clone(&clock),
        );
        let lifecycle = Arc::new(
            Lifecycle::load(
                outbox.clone(),
                Arc::clone(&clock),
                config.alerts.clone(),
                router_tree.ops_channel().to_owned(),
            )
            .await?,
        );
        let board = HealthBoard::default();
        let upstream = Upstream::new(&config.server)?;
        let monitor = HealthMonitor::new(
            &config.health,
            &upstream,
            config.router_url.as_deref(),
            Arc::clone(&lifecycle),
            board.clone(),
            Arc::clone(&clock),
        )
        .context("health monitor")?;
        let (router, summarizer) = peer_clients(&config, &upstream)?;
        let commands = Arc::new(Commands::new(CommandsParts {
            router,
            summarizer,
            lifecycle: Arc::clone(&lifecycle),
            patches: patches.clone(),
            board,
            store,
            operators: config.slack.operators.clone(),
            clock: Arc::clone(&clock),
        }));
        let inbound = Arc::new(Inbound {
            verifier: Verifier::new(config.slack.signing_secret.clone(), Arc::clone(&clock)),
            commands,
            http,
            inline_budget: config.slack.inline_answer_budget,
            response_urls: ResponseUrls::new(&config.slack.response_url_origins)
                .map_err(anyhow::Error::msg)?,
        });
        Ok(Self {
            ops_channel: router_tree.ops_channel().to_owned(),
            clock: Arc::clone(&clock),
            config,
            listeners,
            outbox,
            patches,
            lifecycle,
            monitor,
            inbound,
            slack,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The bound HTTP address (`/slack/commands`, `/slack/interactions`, and the probes while
    /// `server.ops_listen` is unset).
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// The bound operations address (`/healthz`, `/readyz`, `/metrics`): `server.ops_listen`
    /// when set, else the HTTP address (they share it).
    pub fn ops_addr(&self) -> SocketAddr {
        self.listeners.ops_addr()
    }

    /// The database (outbox, alerts, audit log).
    pub fn store(&self) -> Store {
        self.outbox.store().clone()
    }

    /// The alert lifecycle.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        Arc::clone(&self.lifecycle)
    }

    /// Serves and delivers until `shutdown` resolves, drains, then waits for the loops.
    pub async fn run<F: std::future::Future<Output = ()> + Send>(
        self,
        shutdown: F,
    ) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let store = self.outbox.store().clone();
        tracker.spawn(crate::storage::report_to_slack(
            store.health().clone(),
            self.slack.clone(),
            self.ops_channel.clone(),
            token.clone(),
        ));
        tracker.spawn(crate::storage::probe_until_healed(
            store.clone(),
            Arc::clone(&self.clock),
            token.clone(),
        ));
        tracker.spawn(deliver_loop(
            self.outbox.clone(),
            self.slack,
            DeliveryPolicy::from_config(&self.config.slack),
            token.clone(),
        ));
        let (leader, election) = Leader::elect(&store, token.clone());
        if let Some(election) = election {
            tracker.spawn(election.run());
        }
        tracker.spawn(Arc::clone(&self.lifecycle).run(leader.clone(), token.clone()));
        if !self.monitor.is_idle() {
            tracker.spawn(self.monitor.run(leader, token.clone()));
        }
        let read = AlerterRead::new(Arc::clone(&self.lifecycle), self.outbox.store().clone());
        let grpc = AlerterGrpc::new(self.patches, self.lifecycle, self.outbox.store().clone());
        let service = Service {
            name: SERVICE,
            grpc_names: vec![
                "ghost.alerter.v1.AlerterService",
                "ghost.alerter.v1.AlerterReadService",
            ],
            grpc: tonic::service::Routes::new(AlerterServiceServer::new(grpc))
                .add_service(AlerterReadServiceServer::new(read)),
            http: routes(self.inbound),
            open_methods: Vec::new(),
            storage: Some(store.health().clone()),
        };
        let served = ghost_runtime::serve::serve_until(
            service,
            self.listeners,
            &self.config.server,
            shutdown,
            token,
            tracker,
        )
        .await;
        // Every loop has stopped: another replica may take this one's channels and lead now.
        if let Err(err) = store.release_leases().await {
            tracing::warn!(error = %err, "cannot give up the leases; they expire by themselves");
        }
        served
    }
}
