//! Cross-service tests live in `e2e/`, `chaos/`, `faults/` and `faults_peers/`; this library
//! holds only what the test binaries that run the real service processes share: finding the
//! binaries, reserved ports, and reading a patch's outcome from the router.

use std::path::{Path, PathBuf};

use ghost_proto::alerter::v1::ListAlertsRequest;
use ghost_proto::alerter::v1::alerter_read_service_client::AlerterReadServiceClient;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{EventsRequest, GetRequest, PatchStatus};
use tonic::codegen::{Body, Bytes, StdError};

/// What the generated gRPC clients run over: a `Channel`, or one behind an interceptor.
pub trait Transport:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    >
{
}

impl<T> Transport for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        >
{
}

/// Terminal patch states (as the router's Events name them).
pub const TERMINAL: [&str; 7] = [
    "succeeded",
    "failed",
    "rolled_back",
    "cancelled",
    "timed_out",
    "rejected",
    "lost",
];

/// The workspace's binary `name`, next to the running test's own `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first (cargo build --workspace --bins; scripts/test does)",
        path.display()
    );
    path
}

/// A loopback port held for a service process started later: a socket bound to it with
/// `SO_REUSEADDR` that never listens. While it lives the kernel gives the port to no other
/// socket (binding port 0 or connecting out), yet the service can bind it and listen (its
/// listener sets `SO_REUSEADDR` too, and no socket listens there). A port merely found free
/// and released may be taken by anyone before the service binds it.
pub struct ReservedPort {
    _socket: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

/// See [`ReservedPort`]; keep it until the service listens (or for the whole test).
pub fn reserve_port() -> ReservedPort {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("addr").port();
    ReservedPort {
        _socket: socket,
        port,
    }
}

/// The router's status of `id` (`succeeded`, …) and its count of terminal events; `None` while
/// the router cannot answer.
pub async fn outcome(
    router: &mut RouterServiceClient<impl Transport>,
    id: &str,
) -> Option<(String, usize)> {
    let state = router
        .get(GetRequest { id: id.to_owned() })
        .await
        .ok()?
        .into_inner()
        .state?;
    let status = PatchStatus::try_from(state.status)
        .ok()?
        .as_str_name()
        .trim_start_matches("PATCH_STATUS_")
        .to_lowercase();
    let events = router
        .events(EventsRequest { id: id.to_owned() })
        .await
        .ok()?
        .into_inner()
        .events;
    let terminal = events
        .iter()
        .filter(|e| TERMINAL.contains(&e.status.as_str()))
        .count();
    Some((status, terminal))
}

/// True while the alerter lists `key` as firing (false while it cannot answer).
pub async fn alert_firing(
    alerts: &mut AlerterReadServiceClient<impl Transport>,
    key: &str,
) -> bool {
    match alerts.list_alerts(ListAlertsRequest {}).await {
        Ok(listed) => listed
            .into_inner()
            .alerts
            .iter()
            .any(|alert| alert.key == key && alert.state != "resolved"),
        Err(_) => false,
    }
}
