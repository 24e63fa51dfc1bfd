//! [`App`]: binds the listeners, opens the summary store, connects the alerter client, and
//! serves until the shutdown future resolves, running the notify outbox, the webhook outbox
//! and the archiver beside the servers.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use ghost_proto::summarizer::v1::summarizer_service_server::SummarizerServiceServer;
use ghost_runtime::serve::{Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::config::SummarizerConfig;
use crate::grpc::SummarizerGrpc;
use crate::notify::{Notifier, NotifySink};
use crate::outbox::{Backoff, notify_policy};
use crate::summaries::{Clock, StoreOptions, Summaries, system_clock};
use crate::webhooks::Webhooks;
use crate::webhooks::deliver::{Deliverer, Policy};
use crate::webhooks::subscription::prepare_all;

/// What every request handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The summary store.
    pub summaries: Summaries,
    /// The alerter client; `None` when no alerter is configured.
    pub notifier: Option<Notifier>,
    /// The webhook sender; `None` when no subscription is configured.
    pub deliverer: Option<Deliverer>,
    /// Tracks background tasks so `run` waits for them.
    pub tracker: TaskTracker,
    /// Cancelled when the service stops.
    pub shutdown: CancellationToken,
}

/// The summarizer, built and bound but not yet serving.
pub struct App {
    config: SummarizerConfig,
    listeners: Listeners,
    upstream: ghost_runtime::propagation::Upstream,
    state: AppState,
}

impl App {
    /// Binds the listeners (port 0 allowed), opens the store under `data_dir` and indexes it.
    pub async fn build(config: SummarizerConfig) -> anyhow::Result<Self> {
        Self::build_with_clock(config, system_clock()).await
    }

    /// [`App::build`] with the clock the store and archiver use (tests inject one).
    pub async fn build_with_clock(config: SummarizerConfig, clock: Clock) -> anyhow::Result<Self> {
        let listeners = Listeners::bind_internal(&config.server)
            .await
            .context("cannot bind the summarizer listeners")?;
        let upstream = ghost_runtime::propagation::Upstream::new(&config.server)?;
        let notifier = config
            .alerter_url
            .as_deref()
            .map(|url| Notifier::connect(url, &upstream, config.notify_timeout))
            .transpose()
            .context("invalid alerter_url")?;
        // Config files were checked as they loaded; a config built in code is checked here.
        let subscriptions = prepare_all(&config.subscriptions).map_err(anyhow::Error::msg)?;
        let webhooks = (!subscriptions.is_empty()).then(|| {
            Arc::new(Webhooks {
                subscriptions,
                summary_url_template: config.summary_url_template.clone(),
                outbox_max: config.webhook_outbox_max,
            })
        });
        let deliverer = webhooks
            .as_deref()
            .map(|webhooks| {
                Deliverer::new(
                    webhooks,
                    Policy {
                        backoff: Backoff::exponential(
                            config.webhook_initial_backoff,
                            config.webhook_max_backoff,
                        ),
                        give_up_after: config.webhook_give_up_after,
                        timeout: config.webhook_timeout,
                        dead_letter_max: config.webhook_dead_letter_max,
                        dead_letter_max_age: config.webhook_dead_letter_max_age,
                        claim_timeout: config.outbox_claim_timeout,
                    },
                )
            })
            .transpose()?;
        let postgres_url = config
            .store
            .postgres_url()
            .map_err(anyhow::Error::msg)?
            .map(ghost_runtime::config::Secret::new);
        let options = StoreOptions {
            postgres_url,
            jaeger_url_template: config.jaeger_url_template.clone(),
            model_text_chars: config.model_text_chars,
            changelog_len: config.changelog_len.max(1),
            notify: notifier.is_some(),
            manifest_delay: config.manifest_delay,
            webhooks,
        };
        let summaries = Summaries::open(config.data_dir.clone(), options, clock)
            .await
            .with_context(|| format!("cannot open summaries in {}", config.data_dir.display()))?;
        let state = AppState {
            summaries,
            notifier,
            deliverer,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        };
        Ok(Self {
            config,
            listeners,
            upstream,
            state,
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

    /// The summary store (tests call its archive function with their own clock).
    pub fn summaries(&self) -> Summaries {
        self.state.summaries.clone()
    }

    /// Serves until `shutdown` resolves, drains, then waits for the background tasks.
    pub async fn run<F: std::future::Future<Output = ()> + Send>(
        self,
        shutdown: F,
    ) -> anyhow::Result<()> {
        let token = self.state.shutdown.clone();
        let tracker = self.state.tracker.clone();
        let summaries = self.state.summaries.clone();
        let health = summaries.health().clone();
        // This process's name on the outbox rows it claims.
        let claimant = ghost_runtime::outbox::claimant();
        if let Some(notifier) = self.state.notifier.clone() {
            let backoff = Backoff::exponential(
                self.config.notify_initial_backoff,
                self.config.notify_max_backoff,
            );
            tracker.spawn(crate::notify::run(
                summaries.clone(),
                NotifySink { notifier },
                notify_policy(backoff, self.config.outbox_claim_timeout),
                Arc::clone(&claimant),
                token.clone(),
            ));
        }
        if let Some(deliverer) = self.state.deliverer.clone() {
            tracker.spawn(crate::webhooks::deliver::run(
                deliverer,
                summaries.clone(),
                claimant,
                token.clone(),
            ));
        }
        let storage_alerter = match &self.config.alerter_url {
            Some(url) => Some(
                ghost_proto::alerter::v1::alerter_service_client::AlerterServiceClient::new(
                    ghost_runtime::propagation::traced_channel(url, &self.upstream)?,
                ),
            ),
            None => None,
        };
        tracker.spawn(ghost_runtime::storage::report_faults(
            health.clone(),
            storage_alerter,
            token.clone(),
        ));
        tracker.spawn(summaries.clone().run_storage_probe(token.clone()));
        tracker.spawn(summaries.clone().run_manifest_writer(token.clone()));
        tracker.spawn(summaries.run_archiver(
            self.config.archive_interval,
            self.config.archive_after,
            self.config.retention,
            token.clone(),
        ));
        let service = Service {
            name: SERVICE,
            grpc_names: vec!["ghost.summarizer.v1.SummarizerService"],
            grpc: tonic::service::Routes::new(SummarizerServiceServer::new(SummarizerGrpc::new(
                self.state,
            ))),
            http: axum::Router::new(),
            open_methods: Vec::new(),
            storage: Some(health),
        };
        ghost_runtime::serve::serve_until(
            service,
            self.listeners,
            &self.config.server,
            shutdown,
            token,
            tracker,
        )
        .await
    }
}
