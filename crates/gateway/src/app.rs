//! Builds the gateway from its config and runs it until shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::middleware;
use axum::routing::get;
use ghost_core::{LegacyOptions, TargetName};
use ghost_proto::alerter::v1::alerter_read_service_client::AlerterReadServiceClient;
use ghost_proto::router::v1::api_key_service_client::ApiKeyServiceClient;
use ghost_proto::router::v1::executor_token_service_client::ExecutorTokenServiceClient;
use ghost_proto::router::v1::gateway_state_service_client::GatewayStateServiceClient;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::router_stats_service_client::RouterStatsServiceClient;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::{Upstream, traced_channel};
use ghost_runtime::serve::{self, Listeners, Service};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::SERVICE;
use crate::auth::Credentials;
use crate::config::GatewayConfig;
use crate::executor_tokens::ExecutorTokens;
use crate::guard::{self, Guard};
use crate::http::{self, AppState};
use crate::inbox::Inbox;
use crate::known_targets::KnownTargets;
use crate::patches::{PatchQueue, Patches};
use crate::upstream::{GrpcAlerter, GrpcGatewayState, GrpcRouter, GrpcSummaries};

/// A built gateway, listening but not yet serving.
pub struct App {
    config: GatewayConfig,
    listeners: Listeners,
    state: AppState,
    /// `/privacy` and `/v1/info` (no credentials).
    public_pages: axum::Router,
    /// Dashboard sessions and webhook ids, kept by the router for every replica.
    shared_state: Arc<GrpcGatewayState>,
}

/// Aliases, legacy roots and the default target from config.
fn legacy_options(config: &GatewayConfig) -> anyhow::Result<LegacyOptions> {
    let parse = |raw: &str| {
        TargetName::parse(raw).map_err(|err| anyhow::anyhow!("gateway target {raw:?}: {err}"))
    };
    let mut options = LegacyOptions {
        default_target: config.default_target.as_deref().map(parse).transpose()?,
        aliases: BTreeMap::new(),
        roots: BTreeMap::new(),
    };
    for target in &config.targets {
        let name = parse(&target.name)?;
        for alias in &target.aliases {
            options.aliases.insert(alias.clone(), name.clone());
        }
        for root in &target.legacy_roots {
            if !root.starts_with('/') {
                anyhow::bail!("legacy root {root:?} of target {name} must be absolute");
            }
        }
        options.roots.insert(name, target.legacy_roots.clone());
    }
    Ok(options)
}

/// Every target name config gives: names, aliases and the default target.
fn configured_targets(config: &GatewayConfig) -> Vec<String> {
    let mut names: Vec<String> = config
        .targets
        .iter()
        .flat_map(|target| std::iter::once(&target.name).chain(&target.aliases))
        .chain(&config.default_target)
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The targets the OpenAPI document may list as the only valid ones: the configured names
/// when unknown targets are refused. None (any name) when they are accepted, or when no
/// target is configured and the known ones are only those executors serve, which change
/// while the document does not.
fn documented_targets(config: &GatewayConfig) -> Vec<String> {
    if config.accept_unknown_targets {
        return Vec::new();
    }
    configured_targets(config)
}

/// Imports an old key file into the router once, then reads the keys the router holds now.
/// The router may not be up yet: then the long poll started by `run` learns them (config
/// keys work meanwhile).
async fn load_runtime_keys(
    config: &GatewayConfig,
    credentials: &Credentials,
    api_keys: &crate::api_keys::RuntimeKeys,
) -> anyhow::Result<()> {
    crate::api_keys::import::import_old_file(
        config.data_dir.as_deref(),
        &api_keys.client,
        config.upstream_timeout,
    )
    .await?;
    if let Err(status) = crate::api_keys::snapshot::refresh(
        credentials.store(),
        &api_keys.client,
        config.upstream_timeout,
    )
    .await
    {
        tracing::warn!(code = ?status.code(), error = %status.message(), "cannot read the runtime api keys from the router yet");
    }
    Ok(())
}

impl App {
    /// Checks the config, prepares upstream channels (lazily connected) and binds listeners.
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let credentials = Credentials::from_config(&config)?;
        let runtime_keys = credentials.shared_store();
        let upstream = Upstream::new(&config.server)?;
        let router_channel = traced_channel(&config.router_url, &upstream)?;
        let executor_tokens = ExecutorTokens {
            client: ExecutorTokenServiceClient::new(router_channel.clone()),
            timeout: config.upstream_timeout,
        };
        let api_keys = crate::api_keys::RuntimeKeys {
            // The router keeps the largest key set under 2 MiB (1,000 keys, 10,000 targets in
            // all); tonic's default 4 MiB would be the only margin, so it is raised.
            client: ApiKeyServiceClient::new(router_channel.clone())
                .max_decoding_message_size(crate::api_keys::MAX_KEYS_MESSAGE),
            timeout: config.upstream_timeout,
        };
        load_runtime_keys(&config, &credentials, &api_keys).await?;
        let queue = GrpcRouter {
            client: RouterServiceClient::new(router_channel.clone()),
            stats: RouterStatsServiceClient::new(router_channel.clone()),
            timeout: config.upstream_timeout,
        };
        let summaries = GrpcSummaries {
            client: SummarizerServiceClient::new(traced_channel(
                &config.summarizer_url,
                &upstream,
            )?),
            timeout: config.upstream_timeout,
        };
        // Sessions and webhook ids live in the router, shared by every gateway replica.
        let shared_state = Arc::new(GrpcGatewayState {
            client: GatewayStateServiceClient::new(router_channel),
            timeout: config.upstream_timeout,
        });
        let guard = Guard::new(credentials, &config, shared_state.clone());
        let queue: Arc<dyn PatchQueue> = Arc::new(queue);
        let known_targets = KnownTargets::new(
            configured_targets(&config),
            config.accept_unknown_targets,
            Arc::clone(&queue),
        );
        let mut patches = Patches::new(
            queue,
            Arc::new(summaries),
            config.summary_max_chars,
            legacy_options(&config)?,
            ghost_core::ParseBudget::new(config.max_body_bytes),
        )
        .with_known_targets(known_targets)
        .with_max_wait(config.long_poll_max_wait)
        .with_revocations(runtime_keys);
        if let Some(url) = &config.alerter_url {
            patches = patches.with_alerts(Arc::new(GrpcAlerter {
                client: AlerterReadServiceClient::new(traced_channel(url, &upstream)?),
                timeout: config.upstream_timeout,
            }));
        }
        let state = AppState {
            patches,
            guard: Arc::new(guard),
            max_body_bytes: config.max_body_bytes,
            max_patches_per_message: config.max_patches_per_message,
            executor_tokens,
            api_keys,
        };
        let listeners = Listeners::bind(&config.server)
            .await
            .map_err(|err| anyhow::anyhow!("cannot bind the gateway listeners: {err}"))?;
        let public_pages = crate::public_pages::routes(&config)?;
        Ok(Self {
            config,
            listeners,
            state,
            public_pages,
            shared_state,
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

    /// The bound operations address (`/healthz`, `/readyz`, `/metrics`): `server.ops_listen`
    /// when set, else the HTTP address (they share it).
    pub fn ops_addr(&self) -> SocketAddr {
        self.listeners.ops_addr()
    }

    /// The OpenAPI document, finished, as the JSON text it is served as: the document's tree
    /// would hold ~0.5 MB of maps for the process's lifetime and be cloned and serialised
    /// again for every request.
    fn openapi_json(
        &self,
        generated: utoipa::openapi::OpenApi,
    ) -> anyhow::Result<axum::body::Bytes> {
        Ok(axum::body::Bytes::from(
            serde_json::to_vec(&crate::openapi::document(
                generated,
                &self.config.public_url,
                &documented_targets(&self.config),
            ))
            .context("serialising the OpenAPI document")?,
        ))
    }

    /// `/mcp` behind the guard, with strict JSON and its session handling.
    fn mcp_routes(&self, guard_state: &Arc<Guard>, token: &CancellationToken) -> axum::Router {
        let allowed_hosts = public_host(&self.config.public_url).into_iter().collect();
        axum::Router::new()
            .nest_service(
                "/mcp",
                crate::mcp::service(
                    self.state.patches.clone(),
                    allowed_hosts,
                    token.child_token(),
                ),
            )
            // Inside the guard, so only authenticated bodies are read. Twice the body limit:
            // a number may render longer than it is written, and this check is for keys.
            .layer(middleware::from_fn_with_state(
                ghost_core::ParseBudget::new(self.config.max_body_bytes.saturating_mul(2)),
                crate::mcp::strict_json,
            ))
            .layer(middleware::from_fn_with_state(
                Arc::clone(guard_state),
                guard::authenticate,
            ))
            .layer(middleware::from_fn(crate::mcp::keep_request_span))
            .layer(middleware::from_fn(crate::mcp::session_end_no_content))
    }

    /// The runtime keys' long poll and, when configured, the inbox watcher, on `tasks`.
    fn spawn_background(&self, tasks: &TaskTracker, token: &CancellationToken) {
        let key_sync_guard = Arc::clone(&self.state.guard);
        let key_sync_client = self.state.api_keys.client.clone();
        let key_sync_timeout = self.state.api_keys.timeout;
        let key_sync_token = token.clone();
        tasks.spawn(async move {
            crate::api_keys::snapshot::sync(
                key_sync_guard.credentials.store(),
                key_sync_client,
                key_sync_timeout,
                key_sync_token,
            )
            .await;
        });
        if let Some(root) = &self.config.inbox {
            let inbox = Inbox::new(
                root.clone(),
                self.config.inbox_settle,
                self.state.patches.clone(),
            );
            let inbox_token = token.clone();
            let inbox_tasks = tasks.clone();
            tasks.spawn(async move {
                if let Err(err) = inbox.run(inbox_token, inbox_tasks).await {
                    tracing::error!(error = %err, "the inbox watcher stopped");
                }
            });
        }
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run<F>(self, shutdown: F) -> anyhow::Result<()>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let token = CancellationToken::new();
        let tasks = TaskTracker::new();
        let guard_state = Arc::clone(&self.state.guard);
        let (api, mut generated) = http::api(self.state.clone());
        let (guide, guide_document) = crate::guide::routes();
        generated.merge(guide_document);
        let document = self.openapi_json(generated)?;
        let mcp = self.mcp_routes(&guard_state, &token);
        self.spawn_background(&tasks, &token);
        let mut http = api.merge(mcp).merge(self.public_pages).merge(guide);
        if self.config.ui.enabled {
            let ui_state = crate::ui::UiState {
                patches: self.state.patches.clone(),
                guard: Arc::clone(&guard_state),
                sessions: Arc::new(crate::ui::Sessions::new(
                    self.shared_state.clone(),
                    self.config.ui.session_ttl,
                    self.config.ui.max_sessions,
                )),
                config: Arc::new(self.config.ui.clone()),
                public_origin: public_origin(&self.config.public_url),
                secure_cookie: self.config.public_url.starts_with("https://"),
            };
            http = http.merge(crate::ui::routes(ui_state));
        }
        let http = http
            .route(
                "/openapi.json",
                get(move || {
                    let document = document.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            document,
                        )
                    }
                }),
            )
            .layer(middleware::from_fn_with_state(
                guard_state,
                guard::shed_and_time,
            ));
        let service = Service {
            name: SERVICE,
            grpc_names: Vec::new(),
            grpc: tonic::service::Routes::default(),
            http,
            open_methods: Vec::new(),
            storage: None,
        };
        serve::serve_until(
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

/// `scheme://host[:port]` of the public URL, for the dashboard's Origin check.
fn public_origin(public_url: &str) -> Option<String> {
    let scheme = public_url.split_once("://")?.0;
    Some(format!("{scheme}://{}", public_host(public_url)?))
}

/// `host[:port]` of the public URL, for MCP's Host check.
fn public_host(public_url: &str) -> Option<String> {
    let rest = public_url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    (!authority.is_empty()).then(|| authority.to_owned())
}
