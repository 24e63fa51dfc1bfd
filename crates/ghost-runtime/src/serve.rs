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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use crate::config::{Secret, ServerConfig};
use crate::connections::{HttpLimits, serve_http, tls_incoming};
use crate::credential::Gate;
use crate::peers::PEER_TIMEOUTS;
use crate::propagation::{grpc_server_span, http_server_span};
use crate::storage::StorageHealth;
use crate::tls::{ALPN_GRPC, ALPN_HTTP, ServerTls};

/// Listeners bound ahead of their service by [`Listeners::prebind`], keyed by their real address.
fn prebound() -> &'static Mutex<HashMap<SocketAddr, std::net::TcpListener>> {
    static PREBOUND: OnceLock<Mutex<HashMap<SocketAddr, std::net::TcpListener>>> = OnceLock::new();
    PREBOUND.get_or_init(|| Mutex::new(HashMap::new()))
}

/// `error` with the side and the address that could not be bound, e.g.
/// `grpc 127.0.0.1:50051: Address already in use (os error 98)`.
fn bind_error(side: &str, addr: SocketAddr, error: &std::io::Error) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{side} {addr}: {error}"))
}

/// The bound sockets of a service, with the TLS certificate and the service credential they
/// serve with. Bound in `App::build` so tests can use port 0 and read the real addresses before
/// the service runs, and so a bad certificate or credential fails the build.
#[derive(Debug)]
pub struct Listeners {
    grpc: TcpListener,
    /// The public HTTP listener (`http_listen`); `None` for a service with no public HTTP routes.
    http: Option<TcpListener>,
    /// The operations listener (`ops_listen`, or `http_listen` for a service with no public
    /// HTTP routes); `None`: the operations routes share `http`.
    ops: Option<TcpListener>,
    restricted: Option<Restricted>,
    tls: Option<ServerTls>,
    credential: Secret,
}

/// A gRPC listener that serves only some methods (and health), always over TLS.
#[derive(Debug)]
struct Restricted {
    listener: TcpListener,
    methods: Vec<&'static str>,
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

impl Listeners {
    /// Binds `addr` now and keeps the listener until a service's [`Listeners::bind`] asks for
    /// exactly the returned address (port 0 gets a free port). A process that runs several
    /// services binds every port first this way, so no port is released and bound again
    /// later, where an outgoing connection could take it meanwhile.
    /// `what` names the listener in a bind error, e.g. `router grpc`.
    pub fn prebind(what: &str, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener =
            std::net::TcpListener::bind(addr).map_err(|err| bind_error(what, addr, &err))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        prebound()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(bound, listener);
        Ok(bound)
    }

    /// Drops a listener kept by [`Listeners::prebind`] that no service took.
    pub fn release(addr: SocketAddr) {
        prebound()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&addr);
    }

    /// The listener for `addr`: the one [`Listeners::prebind`] kept for it, else bound now.
    async fn take_or_bind(side: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
        let kept = (addr.port() != 0)
            .then(|| {
                prebound()
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&addr)
            })
            .flatten();
        match kept {
            Some(listener) => TcpListener::from_std(listener),
            None => TcpListener::bind(addr).await,
        }
        .map_err(|err| bind_error(side, addr, &err))
    }

    /// Binds both listeners from the server config (or takes the ones pre-bound for exactly
    /// those addresses). A bind error names the side and the address. Also loads the TLS
    /// certificate (`server.tls`) and the service credential (`server.internal_token`), refusing
    /// a gRPC listener off loopback without a credential, and installs the metrics recorder, so
    /// counters a service bumps while it builds are not lost.
    pub async fn bind(config: &ServerConfig) -> std::io::Result<Self> {
        Self::bind_with(config, true, true).await
    }

    /// [`Listeners::bind`] for a service with no public HTTP routes (the router, the
    /// summarizer): its one HTTP listener is the operations listener, at `server.ops_listen`
    /// when set, else at `server.http_listen`.
    pub async fn bind_internal(config: &ServerConfig) -> std::io::Result<Self> {
        Self::bind_with(config, true, false).await
    }

    /// [`Listeners::bind`] for a service whose gRPC side serves health and reflection only (the
    /// executor): it takes no control calls, so it needs no service credential off loopback,
    /// and a process that runs untrusted commands never has to hold one. It has no public HTTP
    /// routes either: its one HTTP listener is the operations listener, as
    /// [`Listeners::bind_internal`].
    pub async fn bind_health_only(config: &ServerConfig) -> std::io::Result<Self> {
        Self::bind_with(config, false, false).await
    }

    async fn bind_with(
        config: &ServerConfig,
        control: bool,
        public_http: bool,
    ) -> std::io::Result<Self> {
        crate::metrics::handle();
        let tls = ServerTls::load(&config.tls).map_err(|err| invalid(err.to_string()))?;
        let credential = config
            .internal_token()
            .map_err(|err| invalid(err.to_string()))?;
        if control && credential.is_empty() && !config.grpc_listen.ip().is_loopback() {
            return Err(invalid(format!(
                "server.grpc_listen {} is not a loopback address and no service credential is \
                 set: set server.internal_token or server.internal_token_file, or every control \
                 call (Submit, Pause, …) would be open to the network",
                config.grpc_listen
            )));
        }
        if let Some(ops) = config.ops_listen
            && ops.port() != 0
        {
            // A service with no public HTTP routes does not bind `http_listen` then.
            let shared = [
                ("server.grpc_listen", config.grpc_listen),
                ("server.http_listen", config.http_listen),
            ]
            .into_iter()
            .take(if public_http { 2 } else { 1 })
            .find(|(_, addr)| *addr == ops);
            if let Some((key, _)) = shared {
                return Err(invalid(format!(
                    "server.ops_listen {ops} is also {key}: give the operations listener a \
                     port of its own, or leave ops_listen unset to serve /healthz, /readyz \
                     and /metrics on the HTTP port"
                )));
            }
        }
        let grpc = Self::take_or_bind("grpc", config.grpc_listen).await?;
        let (http, ops) = match (public_http, config.ops_listen) {
            (true, None) => (
                Some(Self::take_or_bind("http", config.http_listen).await?),
                None,
            ),
            (true, Some(ops)) => (
                Some(Self::take_or_bind("http", config.http_listen).await?),
                Some(Self::take_or_bind("ops", ops).await?),
            ),
            (false, ops) => (
                None,
                Some(Self::take_or_bind("ops", ops.unwrap_or(config.http_listen)).await?),
            ),
        };
        Ok(Self {
            grpc,
            http,
            ops,
            restricted: None,
            tls,
            credential,
        })
    }

    /// Binds one more gRPC listener, `what` at `addr`, that serves only `methods` (full paths,
    /// `/pkg.Service/Method`) and health, always over TLS: other calls are answered
    /// PERMISSION_DENIED. Fails when `server.tls.cert`/`key` are not set.
    pub async fn bind_restricted(
        &mut self,
        what: &str,
        addr: SocketAddr,
        methods: Vec<&'static str>,
    ) -> std::io::Result<()> {
        if self.tls.is_none() {
            return Err(invalid(format!(
                "{what} {addr} always serves TLS: set server.tls.cert and server.tls.key"
            )));
        }
        let listener = Self::take_or_bind(what, addr).await?;
        self.restricted = Some(Restricted { listener, methods });
        Ok(())
    }

    /// The bound address of the listener added by [`Listeners::bind_restricted`].
    pub fn restricted_addr(&self) -> Option<SocketAddr> {
        self.restricted
            .as_ref()
            .and_then(|restricted| restricted.listener.local_addr().ok())
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound HTTP address: the public one, or for a service with no public HTTP routes its
    /// one HTTP listener (the operations listener).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .as_ref()
            .or(self.ops.as_ref())
            .and_then(|listener| listener.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The bound address serving `/healthz`, `/readyz` and `/metrics`: the operations listener,
    /// or the HTTP listener when they share it.
    pub fn ops_addr(&self) -> SocketAddr {
        self.ops
            .as_ref()
            .or(self.http.as_ref())
            .and_then(|listener| listener.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Readiness as both edges report it.
#[derive(Clone)]
struct Readiness {
    /// False once draining.
    ready: Arc<AtomicBool>,
    /// The service's storage, when it has any: degraded storage is not ready either.
    storage: Option<StorageHealth>,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    if !readiness.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining".to_owned());
    }
    match readiness.storage.as_ref().and_then(StorageHealth::reason) {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("degraded: {reason}"),
        ),
        None => (StatusCode::OK, "ready".to_owned()),
    }
}

/// Keeps `grpc.health.v1` in step with the storage health: NOT_SERVING while degraded, SERVING
/// again when it heals (the drain aborts this task before it reports NOT_SERVING for good).
async fn follow_storage(
    storage: StorageHealth,
    reporter: tonic_health::server::HealthReporter,
    names: Vec<&'static str>,
) {
    let mut changes = storage.subscribe();
    loop {
        let status = if changes.borrow_and_update().is_some() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        for grpc_name in std::iter::once("").chain(names.iter().copied()) {
            reporter.set_service_status(grpc_name, status).await;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::handle().render(),
    )
}

/// A gRPC service built on its first call. Reflection decodes every descriptor it serves when
/// it is built (about 150 KB a service, once per protocol version), and few clients ever ask:
/// built at start, that memory stayed resident in every idle service.
struct Lazy<S, F> {
    built: Arc<OnceLock<Result<S, String>>>,
    make: Arc<F>,
}

impl<S, F> Lazy<S, F> {
    fn new(make: F) -> Self {
        Self {
            built: Arc::new(OnceLock::new()),
            make: Arc::new(make),
        }
    }
}

impl<S, F> Clone for Lazy<S, F> {
    fn clone(&self) -> Self {
        Self {
            built: Arc::clone(&self.built),
            make: Arc::clone(&self.make),
        }
    }
}

impl<S: tonic::server::NamedService, F> tonic::server::NamedService for Lazy<S, F> {
    const NAME: &'static str = S::NAME;
}

type LazyFuture<E> =
    std::pin::Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send>>;

impl<S, F, E, B> tower::Service<http::Request<B>> for Lazy<S, F>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    F: Fn() -> Result<S, E>,
    E: std::fmt::Display,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = LazyFuture<S::Error>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // The service may not be built yet: its own readiness is awaited in `call`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let built = self.built.get_or_init(|| {
            (self.make)().map_err(|err| {
                tracing::error!(service = S::NAME, error = %err, "cannot build this gRPC service");
                err.to_string()
            })
        });
        match built {
            Ok(service) => {
                let mut service = service.clone();
                Box::pin(async move {
                    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
                    service.call(request).await
                })
            }
            Err(err) => {
                let status = tonic::Status::internal(format!("cannot build this service: {err}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

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
    // Both reflection versions: grpcurl speaks v1, many clients (Python grpcio) still v1alpha.
    // Advertise only this service's own gRPC services, not every Ghost Runner proto.
    let grpc_names = service.grpc_names.clone();
    let reflection = move || {
        let builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ghost_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        grpc_names.iter().fold(builder, |builder, grpc_name| {
            builder.with_service_name(*grpc_name)
        })
    };
    let grpc_routes = service
        .grpc
        .add_service(health_service)
        .add_service(Lazy::new({
            let reflection = reflection.clone();
            move || reflection().build_v1()
        }))
        .add_service(Lazy::new(move || reflection().build_v1alpha()));

    let readiness = Readiness {
        ready: Arc::new(AtomicBool::new(true)),
        storage: service.storage.clone(),
    };
    let probes = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(readiness.clone());
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
    // (public router, operations router): the probes go to the operations listener when there
    // is one, else beside the public routes.
    let (http_router, ops_router) = match (&listeners.http, &listeners.ops) {
        (Some(_), None) => (Some(traced(service.http.merge(probes))), None),
        (Some(_), Some(_)) => (Some(traced(service.http)), Some(traced(probes))),
        (None, _) => {
            if service.http.has_routes() {
                anyhow::bail!(
                    "{name} has public HTTP routes but was bound without a public HTTP listener \
                     (Listeners::bind_internal): they would never be served"
                );
            }
            (None, Some(traced(probes)))
        }
    };

    for grpc_name in std::iter::once("").chain(service.grpc_names.iter().copied()) {
        reporter
            .set_service_status(grpc_name, ServingStatus::Serving)
            .await;
    }
    let storage_follower = service.storage.clone().map(|storage| {
        tokio::spawn(follow_storage(
            storage,
            reporter.clone(),
            service.grpc_names.clone(),
        ))
    });

    let tls = listeners.tls.clone();
    let watching = CancellationToken::new();
    let _stop_watching = watching.clone().drop_guard();
    if let Some(tls) = &tls {
        tracing::info!(service = name, not_after = %tls.expiry(), grpc = config.tls.grpc, http = config.tls.http, "serving TLS");
        tokio::spawn(tls.clone().watch(watching.clone()));
    }
    let token = (!listeners.credential.is_empty())
        .then(|| Arc::from(listeners.credential.expose().as_bytes()));
    // A service with no gRPC service of its own (the executor: health only) takes no control
    // calls, so it has nothing a credential would protect.
    if token.is_none() && !service.grpc_names.is_empty() {
        tracing::warn!(
            service = name,
            grpc_addr = %listeners.grpc_addr(),
            "no service credential (server.internal_token) is set: control RPCs are open to local processes"
        );
    }
    let gate = Gate {
        service: name,
        token,
        open: service.open_methods.clone().into(),
        only: None,
    };
    let handshake_timeout = config.header_read_timeout;
    let grpc_limits = HttpLimits::from(config);
    // A restricted (executor) listener carries one Work stream and health checks per
    // connection; the main one carries a gateway's calls, one stream per watching client.
    let grpc_server = |gate: Gate| {
        let streams = if gate.only.is_some() {
            RESTRICTED_MAX_STREAMS
        } else {
            MAX_STREAMS
        };
        tonic::transport::Server::builder()
            // A dead or stopped peer (a laptop that slept, a dropped NAT mapping, a process
            // under SIGSTOP) is noticed and its connection closed within the silent-peer
            // bound, instead of held until the OS gives up.
            .http2_keepalive_interval(Some(PEER_TIMEOUTS.ping_interval))
            .http2_keepalive_timeout(Some(PEER_TIMEOUTS.ping_timeout))
            .max_concurrent_streams(Some(streams))
            .layer(
                TraceLayer::new_for_grpc()
                    .make_span_with(move |request: &http::Request<tonic::body::Body>| {
                        grpc_server_span(name, request)
                    })
                    .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
            )
            .layer(crate::red::GrpcLayer)
            .layer(gate)
            .add_routes(grpc_routes.clone())
    };
    let spawn_grpc = |gate: Gate,
                      listener: TcpListener,
                      acceptor: Option<tokio_rustls::TlsAcceptor>,
                      stop: CancellationToken| {
        let server = grpc_server(gate);
        match acceptor {
            Some(acceptor) => tokio::spawn(server.serve_with_incoming_shutdown(
                tls_incoming(
                    listener,
                    acceptor,
                    handshake_timeout,
                    grpc_limits.clone(),
                    stop.clone(),
                ),
                stop.cancelled_owned(),
            )),
            None => tokio::spawn(server.serve_with_incoming_shutdown(
                // Small gRPC messages (Assign, Result) must not wait for a delayed ACK.
                TcpListenerStream::new(listener).map(|connection| {
                    if let Ok(stream) = &connection {
                        let _ = stream.set_nodelay(true);
                        PEER_TIMEOUTS.tcp_keepalive_on(stream);
                    }
                    connection
                }),
                stop.cancelled_owned(),
            )),
        }
    };
    let acceptor =
        |alpn: &[&[u8]], on: bool| -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
            match &tls {
                Some(tls) if on => Ok(Some(tls.acceptor(alpn)?)),
                _ => Ok(None),
            }
        };

    let stop_accepting = CancellationToken::new();
    let grpc_addr = listeners.grpc_addr();
    let http_addr = listeners.http_addr();
    let ops_addr = listeners.ops_addr();
    let restricted_addr = listeners.restricted_addr();
    let mut grpc_task = spawn_grpc(
        gate.clone(),
        listeners.grpc,
        acceptor(ALPN_GRPC, config.tls.grpc)?,
        stop_accepting.clone(),
    );
    let mut restricted_task = match listeners.restricted {
        Some(restricted) => {
            let only = Gate {
                only: Some(restricted.methods.into()),
                ..gate.clone()
            };
            Some(spawn_grpc(
                only,
                restricted.listener,
                acceptor(ALPN_GRPC, true)?,
                stop_accepting.clone(),
            ))
        }
        None => None,
    };
    // Each HTTP listener counts its connections apart: a flood of the public port leaves the
    // operations port answering.
    let spawn_http = |listener: Option<TcpListener>,
                      router: Option<axum::Router>|
     -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
        let (Some(listener), Some(router)) = (listener, router) else {
            return Ok(None);
        };
        Ok(Some(tokio::spawn(serve_http(
            listener,
            router,
            HttpLimits::from(config),
            acceptor(ALPN_HTTP, config.tls.http)?,
            stop_accepting.clone(),
        ))))
    };
    let mut http_task = spawn_http(listeners.http, http_router)?;
    let mut ops_task = spawn_http(listeners.ops, ops_router)?;
    tracing::info!(service = name, %grpc_addr, %http_addr, %ops_addr, restricted_addr = ?restricted_addr, "serving");

    let restricted_ended = async {
        match &mut restricted_task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let http_ended = async {
        match &mut http_task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let ops_ended = async {
        match &mut ops_task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        result = &mut grpc_task => {
            return Err(anyhow::anyhow!("grpc server of {name} stopped: {result:?}"));
        }
        result = restricted_ended => {
            return Err(anyhow::anyhow!("restricted grpc server of {name} stopped: {result:?}"));
        }
        result = http_ended => {
            return Err(anyhow::anyhow!("http server of {name} stopped: {result:?}"));
        }
        result = ops_ended => {
            return Err(anyhow::anyhow!("operations http server of {name} stopped: {result:?}"));
        }
    }

    tracing::info!(service = name, grace = ?config.drain_grace, "draining");
    readiness.ready.store(false, Ordering::SeqCst);
    if let Some(follower) = storage_follower {
        follower.abort();
        let _ = follower.await;
    }
    for grpc_name in std::iter::once("").chain(service.grpc_names.iter().copied()) {
        reporter
            .set_service_status(grpc_name, ServingStatus::NotServing)
            .await;
    }
    tokio::time::sleep(config.drain_grace).await;
    stop_accepting.cancel();
    let drained = tokio::time::timeout(config.drain_timeout, async {
        let grpc = grpc_task.await;
        for (side, task) in [("http", http_task), ("ops", ops_task)] {
            if let Some(task) = task
                && let Err(err) = task.await
            {
                tracing::warn!(service = name, side, error = %err, "http server task failed");
            }
        }
        if let Some(task) = restricted_task
            && let Ok(Err(err)) = task.await
        {
            tracing::warn!(service = name, error = %err, "restricted grpc server ended with an error");
        }
        grpc
    })
    .await;
    match drained {
        Ok(grpc) => {
            if let Ok(Err(err)) = grpc {
                tracing::warn!(service = name, error = %err, "grpc server ended with an error");
            }
            tracing::info!(service = name, "drained");
        }
        Err(_) => tracing::warn!(
            service = name,
            deadline = ?config.drain_timeout,
            "drain deadline passed; closing remaining connections"
        ),
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prebound_listener_is_handed_over_and_a_taken_port_is_named() {
        let grpc = Listeners::prebind("test grpc", SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let http = Listeners::prebind("test http", SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        assert_ne!(grpc.port(), 0);
        let config = ServerConfig {
            grpc_listen: grpc,
            http_listen: http,
            ..ServerConfig::ephemeral()
        };
        // The ports are held until the service takes them: binding them anew would fail.
        let err = Listeners::prebind("again", grpc).unwrap_err().to_string();
        assert!(err.contains(&format!("again {grpc}")), "{err}");
        let listeners = Listeners::bind(&config).await.unwrap();
        assert_eq!((listeners.grpc_addr(), listeners.http_addr()), (grpc, http));
        let err = Listeners::bind(&config).await.unwrap_err().to_string();
        assert!(err.contains(&format!("grpc {grpc}: ")), "{err}");
    }

    #[tokio::test]
    async fn a_service_without_public_routes_binds_only_its_operations_listener() {
        // `http_listen` is held by someone else: binding it would fail.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = ServerConfig {
            http_listen: held.local_addr().unwrap(),
            ops_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..ServerConfig::ephemeral()
        };
        let listeners = Listeners::bind_internal(&config).await.unwrap();
        assert_eq!(listeners.http_addr(), listeners.ops_addr());
        assert_ne!(listeners.ops_addr(), config.http_listen);
        // Unset, its one listener is at `http_listen`.
        let config = ServerConfig {
            ops_listen: None,
            ..ServerConfig::ephemeral()
        };
        let listeners = Listeners::bind_health_only(&config).await.unwrap();
        assert_eq!(listeners.http_addr(), listeners.ops_addr());
        // A public service binds both, and refuses one port for both.
        let listeners = Listeners::bind(&ServerConfig {
            ops_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..ServerConfig::ephemeral()
        })
        .await
        .unwrap();
        assert_ne!(listeners.http_addr(), listeners.ops_addr());
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let err = Listeners::bind(&ServerConfig {
            http_listen: free,
            ops_listen: Some(free),
            ..ServerConfig::ephemeral()
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.ops_listen") && err.contains("server.http_listen"),
            "{err}"
        );
    }
}
