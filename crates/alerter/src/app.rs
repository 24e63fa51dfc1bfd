//! [`App`]: binds the listeners, builds the Slack client and the alert queue, and serves until
//! the shutdown future resolves.

use std::net::SocketAddr;

use anyhow::Context as _;
use ghost_proto::alerter::v1::alerter_service_server::AlerterServiceServer;
use ghost_runtime::serve::{Listeners, Service};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::alerts::{Alerts, Queued, deliver_loop};
use crate::config::AlerterConfig;
use crate::grpc::AlerterGrpc;
use crate::slack::SlackClient;

/// The alerter, built and bound but not yet serving.
pub struct App {
    config: AlerterConfig,
    listeners: Listeners,
    alerts: Alerts,
    queue: mpsc::Receiver<Queued>,
    slack: Option<SlackClient>,
}

impl App {
    /// Binds the listeners (port 0 allowed) and prepares the Slack client and the queue.
    pub async fn build(config: AlerterConfig) -> anyhow::Result<Self> {
        let listeners = Listeners::bind(&config.server)
            .await
            .context("cannot bind the alerter listeners")?;
        let slack = SlackClient::new(&config.slack).context("cannot build the slack client")?;
        if slack.is_none() {
            tracing::info!("slack.api_base_url is not set; alerts will only be logged");
        }
        let (alerts, queue) = Alerts::new();
        Ok(Self {
            config,
            listeners,
            alerts,
            queue,
            slack,
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

    /// Serves and delivers until `shutdown` resolves, drains, then waits for the delivery loop.
    pub async fn run<F: std::future::Future<Output = ()> + Send>(
        self,
        shutdown: F,
    ) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(deliver_loop(self.queue, self.slack, token.clone()));
        let service = Service {
            name: SERVICE,
            grpc_names: vec!["ghost.alerter.v1.AlerterService"],
            grpc: tonic::service::Routes::new(AlerterServiceServer::new(AlerterGrpc::new(
                self.alerts,
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
