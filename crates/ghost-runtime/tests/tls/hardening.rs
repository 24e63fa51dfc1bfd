//! What an attacker on the network cannot do to a served service: grow the metrics, starve
//! real clients of handshakes.

use std::net::SocketAddr;

use ghost_runtime::config::{Secret, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

#[tokio::test]
async fn one_address_holding_many_stalled_handshakes_does_not_stop_another_addresses_health_check()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ghost_testkit::pki::Ca::new("ca");
    let mut config = crate::tls_config(dir.path(), &ca.server(1, false));
    // The stalled handshakes outlive the test.
    config.header_read_timeout = PATIENCE * 3;
    let running = start(config).await;

    // More stalled handshakes from 127.0.0.2 than the listener handshakes at once.
    let attacker: SocketAddr = "127.0.0.2:0".parse().expect("addr");
    let mut stalled = Vec::new();
    for _ in 0..ghost_runtime::connections::MAX_HANDSHAKES + 40 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(attacker).expect("bind 127.0.0.2");
        let mut stream = socket.connect(running.grpc).await.expect("connect");
        stream.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
        stalled.push(stream);
    }
    // The listener has seen every one of them once those over its caps are closed (accepts are
    // taken in order): at least the last 40.
    let mut closed = 0;
    for stream in stalled.iter_mut().rev().take(40) {
        let mut rest = Vec::new();
        if tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 40, "connections over the caps are closed at once");

    // 127.0.0.1 still gets its handshake and its answer.
    let answer = crate::check(&mut crate::tls_channel(running.grpc, &ca.pem))
        .await
        .expect("a health check from another address is served");
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(stalled);
}

#[test]
fn a_reload_refuses_an_expired_leaf_and_waits_once_on_a_chain_cut_short() {
    use ghost_runtime::tls::{Reload, ServerTls, not_after};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ghost_testkit::pki::Ca::new("ca");
    let first = ca.server(1, false);
    // Served with its chain: the leaf, then the CA.
    let config = crate::tls_config(dir.path(), &first).tls;
    let cert_file = dir.path().join("server.pem");
    let key_file = dir.path().join("server-key.pem");
    std::fs::write(&cert_file, format!("{}{}", first.pem, ca.pem)).expect("write");
    let tls = ServerTls::load(&config).expect("load").expect("configured");
    let mut pending = None;
    assert_eq!(tls.check(&mut pending), Reload::Unchanged);

    // An expired pair: refused (once), the served one stays.
    let expired = ca.server(2, true);
    std::fs::write(&cert_file, &expired.pem).expect("write");
    std::fs::write(&key_file, &expired.key_pem).expect("write");
    assert_eq!(tls.check(&mut pending), Reload::Pending);
    assert_eq!(tls.check(&mut pending), Reload::Refused);
    assert_eq!(tls.check(&mut pending), Reload::Unchanged);
    assert_eq!(tls.expiry(), not_after(&first.der));

    // A valid leaf without the chain the served one had: one more check first.
    let second = ca.server(3, false);
    std::fs::write(&cert_file, &second.pem).expect("write");
    std::fs::write(&key_file, &second.key_pem).expect("write");
    assert_eq!(tls.check(&mut pending), Reload::Pending);
    assert_eq!(tls.check(&mut pending), Reload::Reloaded);
    assert_eq!(tls.check(&mut pending), Reload::Unchanged);
}
