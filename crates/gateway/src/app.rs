//! Builds the gateway from its config and runs it until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::traced_channel;
use ghost_runtime::serve::{self, Listeners, Service};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::config::GatewayConfig;
use crate::http::{self, AppState};
use crate::patches::Patches;
use crate::upstream::{GrpcRouter, GrpcSummaries};

/// A built gateway, listening but not yet serving.
pub struct App {
    config: GatewayConfig,
    listeners: Listeners,
    state: AppState,
}

impl App {
    /// Checks the config, prepares upstream channels (lazily connected) and binds listeners.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        if config.api_key.expose().len() < 16 {
            anyhow::bail!(
                "gateway api_key must be set and at least 16 characters (GHOST_GATEWAY__API_KEY)"
            );
        }
        let queue = GrpcRouter {
            client: RouterServiceClient::new(traced_channel(&config.router_url)?),
            timeout: config.upstream_timeout,
        };
        let summaries = GrpcSummaries {
            client: SummarizerServiceClient::new(traced_channel(&config.summarizer_url)?),
            timeout: config.upstream_timeout,
        };
        let state = AppState {
            patches: Patches::new(
                Arc::new(queue),
                Arc::new(summaries),
                config.summary_max_chars,
            ),
            api_key_hash: Sha256::digest(config.api_key.expose().as_bytes()).into(),
            max_body_bytes: config.max_body_bytes,
        };
        let listeners = Listeners::bind(&config.server).await?;
        Ok(Self {
            config,
            listeners,
            state,
        })
    }

    /// The bound gRPC address (health and reflection).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.listeners.grpc_addr()
    }

    /// The bound HTTP address: the public API.
    pub fn http_addr(&self) -> SocketAddr {
        self.listeners.http_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let token = CancellationToken::new();
        let service = Service {
            name: SERVICE,
            grpc_names: Vec::new(),
            grpc: tonic::service::Routes::default(),
            http: http::router(self.state),
        };
        serve::serve_until(
            service,
            self.listeners,
            &self.config.server,
            shutdown,
            token,
            TaskTracker::new(),
        )
        .await
    }
}
