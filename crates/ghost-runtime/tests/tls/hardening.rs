//! What an attacker on the network cannot do to a served service: grow the metrics, starve
//! real clients of handshakes.

use std::net::SocketAddr;

use ghost_runtime::config::{Secret, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::Endpoint;

use crate::{PATIENCE, read_to_close, start};

/// `/metrics` of the HTTP side at `addr` (plaintext).
async fn metrics(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    read_to_close(&mut stream).await
}

fn grpc_series(page: &str) -> Vec<&str> {
    page.lines()
        .filter(|line| line.starts_with("ghost_grpc_requests_total{"))
        .collect()
}

#[tokio::test]
async fn invented_paths_refused_by_the_credential_add_no_metric_series() {
    let running = start(ServerConfig {
        internal_token: Secret::new("s3cret-service-credential"),
        ..ServerConfig::ephemeral()
    })
    .await;
    let channel = Endpoint::from_shared(format!("http://{}", running.grpc))
        .expect("endpoint")
        .timeout(PATIENCE)
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    for n in 0..200 {
        grpc.ready().await.expect("ready");
        let path = format!("/a{n}.Invented/b{n}")
            .parse()
            .expect("path and query");
        let answer = grpc
            .unary(
                tonic::Request::new(()),
                path,
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await;
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    let page = metrics(running.http).await;
    let series = grpc_series(&page);
    assert!(
        series.iter().all(|line| !line.contains("Invented")),
        "{series:#?}"
    );
    assert!(
        series
            .iter()
            .any(|line| line.contains("(refused)") && line.contains("} 200")),
        "{series:#?}"
    );
}
