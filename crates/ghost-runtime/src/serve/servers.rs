//! The server tasks of one service: each gRPC and HTTP listener served on a task of its own,
//! watched until one stops, then drained.

use tokio::net::TcpListener;
use tokio::task::{JoinError, JoinHandle};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Level;

use super::{MAX_STREAMS, RESTRICTED_MAX_STREAMS};
use crate::config::ServerConfig;
use crate::connections::{HttpLimits, serve_http, tls_incoming};
use crate::credential::Gate;
use crate::peers::PEER_TIMEOUTS;
use crate::propagation::grpc_server_span;
use crate::tls::ServerTls;

/// A gRPC server task.
type GrpcTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// Starts the server tasks of one service; every one stops accepting on `stop_accepting`.
pub(super) struct Spawner<'a> {
    /// Short service name, in spans and logs.
    pub(super) name: &'static str,
    pub(super) config: &'a ServerConfig,
    /// The service's gRPC routes, with health and reflection.
    pub(super) grpc_routes: tonic::service::Routes,
    pub(super) tls: Option<ServerTls>,
    pub(super) stop_accepting: CancellationToken,
}

impl Spawner<'_> {
    /// A TLS acceptor offering `alpn`, when the service has a certificate and `on`.
    fn acceptor(
        &self,
        alpn: &[&[u8]],
        on: bool,
    ) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        match &self.tls {
            Some(tls) if on => Ok(Some(tls.acceptor(alpn)?)),
            _ => Ok(None),
        }
    }

    /// Serves the gRPC routes behind `gate` on `listener` (TLS when `tls_on`).
    pub(super) fn grpc(
        &self,
        gate: Gate,
        listener: TcpListener,
        tls_on: bool,
    ) -> anyhow::Result<GrpcTask> {
        let acceptor = self.acceptor(crate::tls::ALPN_GRPC, tls_on)?;
        let name = self.name;
        // A restricted (executor) listener carries one Work stream and health checks per
        // connection; the main one carries a gateway's calls, one stream per watching client.
        let streams = if gate.only.is_some() {
            RESTRICTED_MAX_STREAMS
        } else {
            MAX_STREAMS
        };
        let server = tonic::transport::Server::builder()
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
            .add_routes(self.grpc_routes.clone());
        let stop = self.stop_accepting.clone();
        Ok(match acceptor {
            Some(acceptor) => tokio::spawn(server.serve_with_incoming_shutdown(
                tls_incoming(
                    listener,
                    acceptor,
                    self.config.header_read_timeout,
                    HttpLimits::from(self.config),
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
        })
    }

    /// Serves `router` on `listener`, when there are both. Each HTTP listener counts its
    /// connections apart: a flood of the public port leaves the operations port answering.
    pub(super) fn http(
        &self,
        listener: Option<TcpListener>,
        router: Option<axum::Router>,
    ) -> anyhow::Result<Option<JoinHandle<()>>> {
        let (Some(listener), Some(router)) = (listener, router) else {
            return Ok(None);
        };
        Ok(Some(tokio::spawn(serve_http(
            listener,
            router,
            HttpLimits::from(self.config),
            self.acceptor(crate::tls::ALPN_HTTP, self.config.tls.http)?,
            self.stop_accepting.clone(),
        ))))
    }
}

/// The running server tasks of one service.
pub(super) struct Servers {
    pub(super) grpc: GrpcTask,
    /// The restricted gRPC listener's, when the service has one.
    pub(super) restricted: Option<GrpcTask>,
    /// The public HTTP listener's, when the service has one.
    pub(super) http: Option<JoinHandle<()>>,
    /// The operations listener's, when it is apart from the public one.
    pub(super) ops: Option<JoinHandle<()>>,
}

/// The end of `task`; never, when there is none.
async fn ended<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

impl Servers {
    /// Returns when `shutdown` is cancelled; an error when a server stopped before.
    pub(super) async fn until_shutdown(
        &mut self,
        name: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown.cancelled() => Ok(()),
            result = &mut self.grpc => {
                Err(anyhow::anyhow!("grpc server of {name} stopped: {result:?}"))
            }
            result = ended(&mut self.restricted) => {
                Err(anyhow::anyhow!("restricted grpc server of {name} stopped: {result:?}"))
            }
            result = ended(&mut self.http) => {
                Err(anyhow::anyhow!("http server of {name} stopped: {result:?}"))
            }
            result = ended(&mut self.ops) => {
                Err(anyhow::anyhow!("operations http server of {name} stopped: {result:?}"))
            }
        }
    }

    /// Waits at most `config.drain_timeout` for every server to end (they have stopped
    /// accepting), logging how each ended.
    pub(super) async fn drain(self, name: &str, config: &ServerConfig) {
        let Self {
            grpc,
            restricted,
            http,
            ops,
        } = self;
        let drained = tokio::time::timeout(config.drain_timeout, async {
            let grpc = grpc.await;
            for (side, task) in [("http", http), ("ops", ops)] {
                if let Some(task) = task
                    && let Err(err) = task.await
                {
                    tracing::warn!(service = name, side, error = %err, "http server task failed");
                }
            }
            if let Some(task) = restricted
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
    }
}
