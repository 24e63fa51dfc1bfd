//! TLS serving and the service credential, through real sockets: a service served by
//! `ghost_runtime::serve::run` on port 0, certificates from `ghost_testkit::pki`.

mod hardening;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig, TlsConfig};
use ghost_runtime::serve::{Listeners, Service};
use ghost_testkit::pki::{Ca, Leaf};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

/// A service serving until dropped or stopped.
struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn tls_config(dir: &Path, leaf: &Leaf) -> ServerConfig {
    let (cert, key) = leaf.write(dir);
    ServerConfig {
        tls: TlsConfig {
            cert: Some(cert),
            key: Some(key),
            reload_interval: Duration::from_millis(100),
            ..TlsConfig::default()
        },
        header_read_timeout: Duration::from_secs(2),
        drain_grace: Duration::from_millis(300),
        ..ServerConfig::ephemeral()
    }
}

async fn start(config: ServerConfig) -> Running {
    let listeners = Listeners::bind(&config).await.expect("bind");
    let grpc = listeners.grpc_addr();
    let http = listeners.http_addr();
    let service = Service {
        name: "tlstest",
        grpc_names: vec![],
        grpc: tonic::service::Routes::default(),
        http: axum::Router::new(),
        open_methods: vec![],
        storage: None,
    };
    let stop = CancellationToken::new();
    let done = tokio::spawn({
        let stop = stop.clone();
        async move { ghost_runtime::serve::run(service, listeners, &config, stop).await }
    });
    Running {
        grpc,
        http,
        stop,
        done,
    }
}

fn tls_channel(addr: SocketAddr, ca_pem: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost"),
        )
        .expect("tls config")
        .connect_timeout(PATIENCE)
        .timeout(PATIENCE)
        .connect_lazy();
    HealthClient::new(channel)
}

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
) -> Result<HealthCheckResponse, tonic::Status> {
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(ghost_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(ca_pem, alpn));
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(PATIENCE, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// The certificate a new connection to `addr` is served.
async fn served_cert(addr: SocketAddr, ca_pem: &str) -> Vec<u8> {
    let tls = tls_connect(addr, ca_pem, &[b"h2"])
        .await
        .expect("tls connect");
    let certs = tls.get_ref().1.peer_certificates().expect("peer certs");
    certs[0].to_vec()
}

/// Reads until the peer closes (bounded by PATIENCE).
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_health_check_over_tls_passes_with_the_right_ca_and_fails_with_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("right ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;

    let answer = check(&mut tls_channel(running.grpc, &ca.pem))
        .await
        .expect("health over tls");
    assert_eq!(answer.status, ServingStatus::Serving as i32);

    let other = Ca::new("another ca");
    let refused = check(&mut tls_channel(running.grpc, &other.pem))
        .await
        .expect_err("a certificate from another CA is not trusted");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let detail = format!("{refused:?}");
    assert!(
        detail.contains("UnknownIssuer") || detail.contains("certificate"),
        "{detail}"
    );
}

#[tokio::test]
async fn an_expired_certificate_is_refused_by_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, true))).await;
    let refused = check(&mut tls_channel(running.grpc, &ca.pem))
        .await
        .expect_err("an expired certificate is not accepted");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(format!("{refused:?}").contains("Expired"), "{refused:?}");
}

#[tokio::test]
async fn plaintext_to_a_tls_port_is_unavailable_to_grpc_and_told_to_use_https_over_http1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;

    let channel = Endpoint::from_shared(format!("http://{}", running.grpc))
        .expect("endpoint")
        .timeout(PATIENCE)
        .connect_lazy();
    let refused = check(&mut HealthClient::new(channel))
        .await
        .expect_err("plaintext gRPC to a TLS port fails");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    for addr in [running.grpc, running.http] {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let answer = read_to_close(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.ends_with("this port speaks TLS: use https://"),
            "{answer}"
        );
    }
}

#[tokio::test]
async fn garbage_and_stalled_handshakes_do_not_block_a_good_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;

    // Held open without a byte, and with half a TLS record: both wait on the handshake timeout.
    let mut silent = TcpStream::connect(running.grpc).await.expect("connect");
    let mut stalled = TcpStream::connect(running.grpc).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    // Bytes that are neither TLS nor HTTP: closed at once.
    let mut garbage = TcpStream::connect(running.grpc).await.expect("connect");
    let noise: Vec<u8> = (0..1_000_000_u32).map(|n| (n * 7 + 3) as u8).collect();
    let _ = garbage.write_all(&noise).await;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, garbage.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "a garbage connection is closed");

    let answer = check(&mut tls_channel(running.grpc, &ca.pem))
        .await
        .expect("a good client is served while others stall");
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    let page = http_get(running.http, &ca.pem, "/healthz").await;
    assert!(page.ends_with("ok"), "{page}");

    // The stalled ones are closed by the handshake timeout, not held forever.
    for stream in [&mut silent, &mut stalled] {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a stalled handshake is closed");
    }
    // And nothing crashed.
    assert!(!running.done.is_finished());
}

/// `GET path` over TLS with HTTP/1.1.
async fn http_get(addr: SocketAddr, ca_pem: &str, path: &str) -> String {
    let mut tls = tls_connect(addr, ca_pem, &[b"http/1.1"])
        .await
        .expect("tls connect");
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    read_to_close(&mut tls).await
}

#[tokio::test]
async fn the_http_side_serves_its_probes_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;
    let page = http_get(running.http, &ca.pem, "/healthz").await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.ends_with("ok"), "{page}");
    let ready = http_get(running.http, &ca.pem, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200 OK\r\n"), "{ready}");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_while_an_open_stream_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let first = ca.server(1, false);
    let running = start(tls_config(dir.path(), &first)).await;
    assert_eq!(served_cert(running.grpc, &ca.pem).await, first.der);

    let mut client = tls_channel(running.grpc, &ca.pem);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let now = watch.message().await.expect("watch").expect("a status");
    assert_eq!(now.status, ServingStatus::Serving as i32);

    let second = ca.server(2, false);
    second.write(dir.path());
    let mut served = Vec::new();
    for _ in 0..100 {
        served = served_cert(running.grpc, &ca.pem).await;
        if served == second.der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(served, second.der, "new connections get serial 2");

    // A pair that does not belong together is not taken: the good one stays.
    let third = ca.server(3, false);
    std::fs::write(dir.path().join("server.pem"), &third.pem).expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served_cert(running.grpc, &ca.pem).await, second.der);
    std::fs::write(dir.path().join("server.pem"), "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(served_cert(running.grpc, &ca.pem).await, second.der);

    // The connection made before the rotation still answers, and its stream still streams:
    // the drain's NOT_SERVING arrives on it.
    let answer = check(&mut client)
        .await
        .expect("the old connection answers");
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    running.stop.cancel();
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the stream is alive")
        .expect("watch")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn bad_certificate_files_fail_the_build_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let leaf = ca.server(1, false);
    let other = ca.server(2, false);
    let (cert, key) = leaf.write(dir.path());
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").expect("write");
    let other_key = dir.path().join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).expect("write");

    let cases = [
        (
            missing.clone(),
            key.clone(),
            "cannot read the TLS certificate",
            &missing,
        ),
        (
            garbage.clone(),
            key.clone(),
            "is not a PEM certificate chain",
            &garbage,
        ),
        (
            cert.clone(),
            cert.clone(),
            "holds no PEM private key",
            &cert,
        ),
        (
            cert.clone(),
            other_key.clone(),
            "does not match the certificate",
            &other_key,
        ),
    ];
    for (cert, key, expected, named) in cases {
        let config = ServerConfig {
            tls: TlsConfig {
                cert: Some(cert),
                key: Some(key),
                ..TlsConfig::default()
            },
            ..ServerConfig::ephemeral()
        };
        let err = Listeners::bind(&config)
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(err.contains(&named.display().to_string()), "{err}");
    }
    let half = ServerConfig {
        tls: TlsConfig {
            cert: Some(cert),
            ..TlsConfig::default()
        },
        ..ServerConfig::ephemeral()
    };
    let err = Listeners::bind(&half)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("must be set together"), "{err}");
}

#[tokio::test]
async fn a_listener_off_loopback_needs_a_service_credential() {
    let open = ServerConfig {
        grpc_listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        ..ServerConfig::ephemeral()
    };
    let err = Listeners::bind(&open)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(err.contains("server.internal_token"), "{err}");

    let with_token = ServerConfig {
        internal_token: Secret::new("s3cret"),
        ..open.clone()
    };
    Listeners::bind(&with_token)
        .await
        .expect("a credential allows it");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "\n").expect("write");
    let empty_file = ServerConfig {
        internal_token_file: Some(file.clone()),
        ..open.clone()
    };
    let err = Listeners::bind(&empty_file)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("empty"), "{err}");
    std::fs::write(&file, "  t0ken  \nignored\n").expect("write");
    let token = empty_file.internal_token().expect("token");
    assert_eq!(token.expose(), "t0ken");
    let unreadable = ServerConfig {
        internal_token_file: Some(dir.path().join("nope")),
        ..open
    };
    let err = Listeners::bind(&unreadable)
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("cannot read it"), "{err}");
}

#[tokio::test]
async fn a_restricted_listener_needs_tls() {
    let mut listeners = Listeners::bind(&ServerConfig::ephemeral())
        .await
        .expect("bind");
    let err = listeners
        .bind_restricted(
            "executor_listen",
            SocketAddr::from(([127, 0, 0, 1], 0)),
            vec!["/ghost.router.v1.RouterService/Work"],
        )
        .await
        .expect_err("refused")
        .to_string();
    assert!(err.contains("server.tls.cert"), "{err}");
}

#[tokio::test]
async fn the_healthcheck_probe_speaks_tls_to_a_tls_http_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;
    let addr = running.http;
    let cert = dir.path().join("server.pem");
    let plain = tokio::task::spawn_blocking(move || {
        ghost_runtime::probe::readyz(addr, Duration::from_secs(3))
    })
    .await
    .expect("probe");
    assert!(plain.is_err(), "plain HTTP gets the TLS port's 400");
    let probed = tokio::task::spawn_blocking(move || {
        ghost_runtime::probe::readyz_tls(addr, &cert, Duration::from_secs(3))
    })
    .await
    .expect("probe");
    probed.expect("ready over TLS");
}

#[test]
fn a_bad_new_pair_is_refused_once_and_the_served_one_stays() {
    use ghost_runtime::tls::{Reload, ServerTls};
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let first = ca.server(1, false);
    let config = tls_config(dir.path(), &first).tls;
    let tls = ServerTls::load(&config).expect("load").expect("configured");
    let mut pending = None;
    assert_eq!(tls.check(&mut pending), Reload::Unchanged);

    // Only the certificate replaced so far (a rotation half done): not an error yet.
    let second = ca.server(2, false);
    std::fs::write(dir.path().join("server.pem"), &second.pem).expect("write");
    assert_eq!(tls.check(&mut pending), Reload::Pending);
    std::fs::write(dir.path().join("server-key.pem"), &second.key_pem).expect("write");
    assert_eq!(tls.check(&mut pending), Reload::Reloaded);

    // A pair that stays bad is refused once, then left alone.
    std::fs::write(dir.path().join("server.pem"), "garbage").expect("write");
    assert_eq!(tls.check(&mut pending), Reload::Pending);
    assert_eq!(tls.check(&mut pending), Reload::Refused);
    assert_eq!(tls.check(&mut pending), Reload::Unchanged);
    assert_eq!(tls.check(&mut pending), Reload::Unchanged);
    assert_eq!(tls.expiry(), ghost_runtime::tls::not_after(&second.der));
    assert_eq!(tls.expiry(), "4096-01-01T00:00:00Z");
    assert_eq!(
        ghost_runtime::tls::not_after(&ca.server(3, true).der),
        "2021-01-01T00:00:00Z"
    );
    assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
}

#[tokio::test]
async fn each_side_can_keep_plaintext_with_its_toggle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let mut config = tls_config(dir.path(), &ca.server(1, false));
    config.tls.http = false;
    let running = start(config).await;
    let mut stream = TcpStream::connect(running.http).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let page = read_to_close(&mut stream).await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    let answer = check(&mut tls_channel(running.grpc, &ca.pem))
        .await
        .expect("gRPC still over TLS");
    assert_eq!(answer.status, ServingStatus::Serving as i32);
}

/// Log lines written while a test runs (this test binary's one subscriber per process).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn plaintext_and_garbage_from_one_peer_are_logged_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .try_init();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;
    for round in 0..3 {
        let mut plain = TcpStream::connect(running.grpc).await.expect("connect");
        plain
            .write_all(b"POST /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .expect("write");
        let answer = read_to_close(&mut plain).await;
        assert!(answer.contains("400 Bad Request"), "{round}: {answer}");
        let mut garbage = TcpStream::connect(running.grpc).await.expect("connect");
        let _ = garbage.write_all(&[0xff; 64]).await;
        let _ = read_to_close(&mut garbage).await;
    }
    let answer = check(&mut tls_channel(running.grpc, &ca.pem))
        .await
        .expect("still serving");
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    let logs = String::from_utf8_lossy(
        &captured
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned();
    let lines = logs
        .lines()
        .filter(|line| line.contains("sent to a TLS port"))
        .count();
    assert_eq!(lines, 1, "{logs}");
}

#[tokio::test]
async fn a_client_that_negotiates_h2_is_served_http2_on_the_http_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ca");
    let running = start(tls_config(dir.path(), &ca.server(1, false))).await;
    let tls = tls_connect(running.http, &ca.pem, &[b"h2", b"http/1.1"])
        .await
        .expect("tls connect");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::get("https://localhost/healthz")
        .body(axum::body::Body::empty())
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("in time")
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1024)
        .await
        .expect("body");
    assert_eq!(&body[..], b"ok");
}
