//! [`App`]: binds the listeners, opens the summary store, connects the alerter client, and
//! serves until the shutdown future resolves.

use std::net::SocketAddr;

use anyhow::Context as _;
use ghost_proto::summarizer::v1::summarizer_service_server::SummarizerServiceServer;
use ghost_runtime::serve::{Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::config::SummarizerConfig;
use crate::grpc::SummarizerGrpc;
use crate::notify::Notifier;
use crate::summaries::Summaries;

/// What every request handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The summary store.
    pub summaries: Summaries,
    /// The alerter client; `None` when no alerter is configured.
    pub notifier: Option<Notifier>,
    /// Tracks background notify tasks so `run` waits for them.
    pub tracker: TaskTracker,
    /// Cancelled when the service stops.
    pub shutdown: CancellationToken,
}

/// The summarizer, built and bound but not yet serving.
pub struct App {
    config: SummarizerConfig,
    listeners: Listeners,
    state: AppState,
}

impl App {
    /// Binds the listeners (port 0 allowed), opens the store under `data_dir` and indexes it.
    pub async fn build(config: SummarizerConfig) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(&config.server)
            .await
            .context("cannot bind the summarizer listeners")?;
        let summaries =
            Summaries::open(config.data_dir.clone(), config.jaeger_url_template.clone())
                .await
                .with_context(|| {
                    format!("cannot open summaries in {}", config.data_dir.display())
                })?;
        let notifier = config
            .alerter_url
            .as_deref()
            .map(Notifier::connect)
            .transpose()
            .context("invalid alerter_url")?;
        let state = AppState {
            summaries,
            notifier,
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        };
        Ok(Self {
            config,
            listeners,
            state,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// Serves until `shutdown` resolves, drains, then waits for background notify tasks.
    pub async fn run<F: std::future::Future<Output = ()> + Send>(
        self,
        shutdown: F,
    ) -> anyhow::Result<()> {
        let token = self.state.shutdown.clone();
        let tracker = self.state.tracker.clone();
        let service = Service {
            name: SERVICE,
            grpc_names: vec!["ghost.summarizer.v1.SummarizerService"],
            grpc: tonic::service::Routes::new(SummarizerServiceServer::new(SummarizerGrpc::new(
                self.state,
            ))),
            http: axum::Router::new(),
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
