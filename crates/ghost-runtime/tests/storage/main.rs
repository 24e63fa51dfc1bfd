//! Storage health at a service's edges, through real sockets: a service served by
//! `ghost_runtime::serve::run` on port 0 with a [`StorageHealth`]; a fault makes `/readyz`
//! answer 503 with the reason and `grpc.health.v1` NOT_SERVING, healing turns both back, and
//! `/metrics` shows the gauge and the counter.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ghost_runtime::config::ServerConfig;
use ghost_runtime::serve::{Listeners, Service};
use ghost_runtime::storage::{FaultKind, StorageHealth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

/// `GET path` over HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

async fn grpc_status(addr: SocketAddr) -> i32 {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "ghost.test.v1.StoreService".to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

/// Polls until `check` holds (bounded by [`PATIENCE`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "{what} not within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn degraded_storage_is_not_ready_with_the_reason_and_heals_by_itself() {
    ghost_runtime::metrics::handle();
    let config = ServerConfig::ephemeral();
    let listeners = Listeners::bind(&config).await.expect("bind");
    let (grpc, http) = (listeners.grpc_addr(), listeners.http_addr());
    let health = StorageHealth::new("storetest");
    let service = Service {
        name: "storetest",
        grpc_names: vec!["ghost.test.v1.StoreService"],
        grpc: tonic::service::Routes::default(),
        http: axum::Router::new(),
        open_methods: vec![],
        storage: Some(health.clone()),
    };
    let stop = CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    tokio::spawn(async move { ghost_runtime::serve::run(service, listeners, &config, stop).await });

    eventually("ready at start", || async {
        get(http, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(grpc_status(grpc).await, ServingStatus::Serving as i32);

    assert!(health.fault(FaultKind::Full, "database or disk is full"));
    let (status, body) = get(http, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body, "degraded: the storetest's disk is full");
    eventually("grpc health NOT_SERVING", || async {
        grpc_status(grpc).await == ServingStatus::NotServing as i32
    })
    .await;
    let (_, metrics) = get(http, "/metrics").await;
    assert!(
        metrics.contains(r#"ghost_storage_degraded{service="storetest"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ghost_storage_faults_total{service="storetest",kind="full"} 1"#),
        "{metrics}"
    );

    assert!(health.healed());
    assert_eq!(get(http, "/readyz").await, (200, "ready".to_owned()));
    eventually("grpc health SERVING again", || async {
        grpc_status(grpc).await == ServingStatus::Serving as i32
    })
    .await;
    let (_, metrics) = get(http, "/metrics").await;
    assert!(
        metrics.contains(r#"ghost_storage_degraded{service="storetest"} 0"#),
        "{metrics}"
    );
}
