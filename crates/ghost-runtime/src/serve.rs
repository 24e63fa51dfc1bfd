//! Serving a service's gRPC and HTTP sides with the same health, metrics, tracing and drain
//! behaviour everywhere.
//!
//! While the service's storage is degraded ([`crate::storage`]), `/readyz` answers 503 with the
//! reason and `grpc.health.v1` reports NOT_SERVING; both turn back by themselves when it heals.
//!
//! On the shutdown token: `/readyz` turns 503 and `grpc.health.v1` reports NOT_SERVING, both
//! servers keep answering for `drain_grace` (so load balancers move away), then stop accepting
//! and wait at most `drain_timeout` for in-flight calls.
//!
//! The operations routes (`/healthz`, `/readyz`, `/metrics`) are served on `server.ops_listen`
//! when it is set, and then only there: the public HTTP listener answers 404 for them. Unset,
//! they share the public HTTP listener. A service with no public HTTP routes (router,
//! executor, summarizer: [`Listeners::bind_internal`], [`Listeners::bind_health_only`]) has one
//! HTTP listener, the operations one, at `ops_listen` or else `http_listen`.
//!
//! With `server.tls.cert`/`key` set, both sides serve TLS (each can opt out with `tls.grpc`/
//! `tls.http`; see [`crate::tls`]). Every gRPC call but health, reflection and the service's
//! `open_methods` needs the deployment's service credential ([`crate::credential`]). A service
//! may add one restricted gRPC listener ([`Listeners::bind_restricted`]): TLS always, only its
//! listed methods and health, the same drain.

mod listeners;
mod probes;
mod reflection;
mod servers;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

pub use self::listeners::Listeners;
use self::probes::Readiness;
use self::servers::{Servers, Spawner};
use crate::config::ServerConfig;
use crate::credential::Gate;
use crate::propagation::http_server_span;
use crate::storage::StorageHealth;

/// What one service serves.
pub struct Service {
    /// Short service name (`router`), used in spans and logs.
    pub name: &'static str,
    /// Fully qualified gRPC service names reported by `grpc.health.v1`.
    pub grpc_names: Vec<&'static str>,
    /// The service's own gRPC routes; health and reflection are added here.
    pub grpc: tonic::service::Routes,
    /// The service's own (public) HTTP routes; `/healthz`, `/readyz` and `/metrics` are added
    /// here, or served on the operations listener alone when there is one.
    pub http: axum::Router,
    /// gRPC methods (`/pkg.Service/Method`) callable without the service credential (health
    /// and reflection always are).
    pub open_methods: Vec<&'static str>,
    /// The health of the service's storage, for a service that writes to a disk: while it is
    /// degraded the service is not ready. `None`: nothing of it on a disk.
    pub storage: Option<StorageHealth>,
}

/// Serves `service` until `shutdown` is cancelled, then drains as described in the module doc.
pub async fn run(
    service: Service,
    listeners: Listeners,
    config: &ServerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let name = service.name;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let grpc_routes = reflection::add_reflection(
        service.grpc.add_service(health_service),
        &service.grpc_names,
    );
    let readiness = Readiness::new(service.storage.clone());
    let (http_router, ops_router) =
        http_routers(name, service.http, &listeners, readiness.clone())?;

    probes::set_status(&reporter, &service.grpc_names, ServingStatus::Serving).await;
    let storage_follower = service.storage.clone().map(|storage| {
        tokio::spawn(probes::follow_storage(
            storage,
            reporter.clone(),
            service.grpc_names.clone(),
        ))
    });
    let watching = CancellationToken::new();
    let _stop_watching = watching.clone().drop_guard();
    if let Some(tls) = &listeners.tls {
        tracing::info!(service = name, not_after = %tls.expiry(), grpc = config.tls.grpc, http = config.tls.http, "serving TLS");
        tokio::spawn(tls.clone().watch(watching.clone()));
    }
    let gate = credential_gate(name, &service.grpc_names, &service.open_methods, &listeners);

    let spawner = Spawner {
        name,
        config,
        grpc_routes,
        tls: listeners.tls.clone(),
        stop_accepting: CancellationToken::new(),
    };
    let mut servers = spawn_servers(&spawner, listeners, gate, (http_router, ops_router))?;
    servers.until_shutdown(name, &shutdown).await?;

    tracing::info!(service = name, grace = ?config.drain_grace, "draining");
    readiness.start_draining();
    if let Some(follower) = storage_follower {
        follower.abort();
        let _ = follower.await;
    }
    probes::set_status(&reporter, &service.grpc_names, ServingStatus::NotServing).await;
    tokio::time::sleep(config.drain_grace).await;
    spawner.stop_accepting.cancel();
    servers.drain(name, config).await;
    Ok(())
}

/// The (public, operations) HTTP routers, each traced: the probes go to the operations
/// listener when there is one, else beside the public routes. An error for public routes bound
/// without a public listener.
fn http_routers(
    name: &'static str,
    public: axum::Router,
    listeners: &Listeners,
    readiness: Readiness,
) -> anyhow::Result<(Option<axum::Router>, Option<axum::Router>)> {
    let probes = probes::routes(readiness);
    let traced = |router: axum::Router| {
        router
            .layer(axum::middleware::from_fn(crate::red::http))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(move |request: &http::Request<axum::body::Body>| {
                        http_server_span(name, request)
                    })
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            )
    };
    Ok(match (&listeners.http, &listeners.ops) {
        (Some(_), None) => (Some(traced(public.merge(probes))), None),
        (Some(_), Some(_)) => (Some(traced(public)), Some(traced(probes))),
        (None, _) => {
            if public.has_routes() {
                anyhow::bail!(
                    "{name} has public HTTP routes but was bound without a public HTTP listener \
                     (Listeners::bind_internal): they would never be served"
                );
            }
            (None, Some(traced(probes)))
        }
    })
}

/// The gate of the gRPC listeners of service `name`: the service credential (when set) on every
/// call but `open_methods`. Warns when there is no credential to check.
fn credential_gate(
    name: &'static str,
    grpc_names: &[&'static str],
    open_methods: &[&'static str],
    listeners: &Listeners,
) -> Gate {
    let token = (!listeners.credential.is_empty())
        .then(|| std::sync::Arc::from(listeners.credential.expose().as_bytes()));
    // A service with no gRPC service of its own (the executor: health only) takes no control
    // calls, so it has nothing a credential would protect.
    if token.is_none() && !grpc_names.is_empty() {
        tracing::warn!(
            service = name,
            grpc_addr = %listeners.grpc_addr(),
            "no service credential (server.internal_token) is set: control RPCs are open to local processes"
        );
    }
    Gate {
        service: name,
        token,
        open: open_methods.into(),
        only: None,
    }
}

/// Starts a server on each of `listeners` (the restricted one allows only its methods), with
/// the (public, operations) HTTP `routers`.
fn spawn_servers(
    spawner: &Spawner<'_>,
    listeners: Listeners,
    gate: Gate,
    (http_router, ops_router): (Option<axum::Router>, Option<axum::Router>),
) -> anyhow::Result<Servers> {
    let (grpc_addr, http_addr, ops_addr, restricted_addr) = (
        listeners.grpc_addr(),
        listeners.http_addr(),
        listeners.ops_addr(),
        listeners.restricted_addr(),
    );
    let grpc = spawner.grpc(gate.clone(), listeners.grpc, spawner.config.tls.grpc)?;
    let restricted = match listeners.restricted {
        Some(restricted) => {
            let only = Gate {
                only: Some(restricted.methods.into()),
                ..gate
            };
            Some(spawner.grpc(only, restricted.listener, true)?)
        }
        None => None,
    };
    let http = spawner.http(listeners.http, http_router)?;
    let ops = spawner.http(listeners.ops, ops_router)?;
    tracing::info!(service = spawner.name, %grpc_addr, %http_addr, %ops_addr, restricted_addr = ?restricted_addr, "serving");
    Ok(Servers {
        grpc,
        restricted,
        http,
        ops,
    })
}

/// How every `App::run` ends: serves `service` until `shutdown` resolves, then cancels `token`
/// (ending the service's background loops and streams) and waits for every task in `tasks`.
pub async fn serve_until<F>(
    service: Service,
    listeners: Listeners,
    config: &ServerConfig,
    shutdown: F,
    token: CancellationToken,
    tasks: TaskTracker,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = ()> + Send,
{
    let stop_on_signal = async {
        tokio::select! {
            () = shutdown => token.cancel(),
            () = token.cancelled() => {}
        }
    };
    let (served, ()) = tokio::join!(
        run(service, listeners, config, token.clone()),
        stop_on_signal
    );
    token.cancel();
    tasks.close();
    tasks.wait().await;
    served
}

/// HTTP/2 streams open at once on one connection to a restricted (executor) listener.
pub const RESTRICTED_MAX_STREAMS: u32 = 64;

/// HTTP/2 streams open at once on one connection to a main gRPC listener (a gateway holds one
/// per watching client on its channel).
pub const MAX_STREAMS: u32 = 1024;

/// A short pause used when a background loop must retry after an error.
pub const LOOP_BACKOFF: Duration = Duration::from_millis(500);
