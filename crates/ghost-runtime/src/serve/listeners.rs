//! The bound sockets of a service ([`Listeners`]): bound in `App::build`, before the service
//! runs, so tests use port 0 and read the real addresses, and a bad certificate, credential or
//! address fails the build.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use tokio::net::TcpListener;

use crate::config::{Secret, ServerConfig};
use crate::tls::ServerTls;

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
    pub(super) grpc: TcpListener,
    /// The public HTTP listener (`http_listen`); `None` for a service with no public HTTP routes.
    pub(super) http: Option<TcpListener>,
    /// The operations listener (`ops_listen`, or `http_listen` for a service with no public
    /// HTTP routes); `None`: the operations routes share `http`.
    pub(super) ops: Option<TcpListener>,
    pub(super) restricted: Option<Restricted>,
    pub(super) tls: Option<ServerTls>,
    pub(super) credential: Secret,
}

/// A gRPC listener that serves only some methods (and health), always over TLS.
#[derive(Debug)]
pub(super) struct Restricted {
    pub(super) listener: TcpListener,
    pub(super) methods: Vec<&'static str>,
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
