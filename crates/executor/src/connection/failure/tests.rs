//! The classifier on real failures: real TLS servers (tonic's, with certificates made here by
//! rcgen) and the real router, dialled by the executor's own session code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ghost_runtime::config::{Secret, ServerConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use super::*;
use crate::config::ExecutorConfig;
use crate::connection::{Worker, session};
use crate::ledger::Outbox;

/// A private CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("ca cert");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate and key for `names`, signed by `ca`; expired in 2021 if asked.
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> Identity {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf cert");
    Identity {
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// A server's certificate and key.
struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// A TLS gRPC server (tonic's, no services; rustls with ring, ALPN h2) on loopback port 0;
/// stops when the sender drops.
async fn tls_server(identity: Identity) -> (SocketAddr, oneshot::Sender<()>) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![identity.cert], identity.key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (streams, incoming) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let streams = streams.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = streams.send(Ok::<_, std::io::Error>(tls)).await;
                }
            });
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder()
        .add_routes(tonic::service::Routes::default())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(incoming),
            async {
                let _ = stopped.await;
            },
        );
    tokio::spawn(server);
    (addr, stop)
}

/// The executor's own session against `url` with `token`, serving no workspace; its error.
async fn fail(url: String, ca: Option<PathBuf>, token: &str, state: &std::path::Path) -> Failure {
    let config = ExecutorConfig {
        router_url: url.clone(),
        router_ca: ca,
        token: Secret::new(token.to_owned()),
        ..ExecutorConfig::default()
    };
    let worker = Worker {
        config: Arc::new(config),
        contexts: Arc::new(HashMap::new()),
        outbox: Outbox::new(state),
        storage: ghost_runtime::storage::StorageHealth::new("executor"),
        active: Arc::default(),
        held: Arc::default(),
        old_state: state.to_path_buf(),
    };
    let mut welcomed = false;
    let shutdown = CancellationToken::new();
    let session = session(&worker, &shutdown, &mut welcomed);
    let err = tokio::time::timeout(std::time::Duration::from_secs(20), session)
        .await
        .expect("the session ended within 20 s")
        .expect_err("the session fails");
    assert!(!welcomed);
    diagnose(&err, &["MAIN".to_owned()], &url).await
}

/// What the run loop concludes: the classification, with the plaintext probe when nothing
/// answered.
async fn diagnose(err: &ExecutorError, targets: &[String], url: &str) -> Failure {
    let failure = classify(err, targets);
    if failure.maybe_plaintext() && url_speaks_tls(url).await {
        return Failure::PlaintextToTls;
    }
    failure
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_an_unknown_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = tls_server(leaf(&ca("server ca"), &["127.0.0.1"], false)).await;
    let other = write(dir.path(), "other.pem", &ca("another ca").pem);
    let url = format!("https://127.0.0.1:{}", addr.port());
    let failure = fail(url.clone(), Some(other), "t", dir.path()).await;
    assert_eq!(failure, Failure::UnknownCa);
    assert!(failure.to_string().contains("--ca FILE"), "{failure}");
    // Without --ca: the web PKI roots, which do not know a private CA either.
    assert_eq!(fail(url, None, "t", dir.path()).await, Failure::UnknownCa);
}

#[tokio::test]
async fn an_expired_certificate_is_named_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("server ca");
    let (addr, _stop) = tls_server(leaf(&ca, &["127.0.0.1"], true)).await;
    let trusted = write(dir.path(), "ca.pem", &ca.pem);
    let url = format!("https://127.0.0.1:{}", addr.port());
    let failure = fail(url, Some(trusted), "t", dir.path()).await;
    assert_eq!(failure, Failure::Expired);
    assert!(failure.to_string().contains("expired"), "{failure}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_name_mismatch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("server ca");
    let (addr, _stop) = tls_server(leaf(&ca, &["router.example"], false)).await;
    let trusted = write(dir.path(), "ca.pem", &ca.pem);
    let url = format!("https://127.0.0.1:{}", addr.port());
    assert_eq!(
        fail(url, Some(trusted), "t", dir.path()).await,
        Failure::NameMismatch
    );
}

#[tokio::test]
async fn plaintext_to_a_tls_port_is_named_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("server ca");
    let (addr, _stop) = tls_server(leaf(&ca, &["127.0.0.1"], false)).await;
    let url = format!("http://127.0.0.1:{}", addr.port());
    let failure = fail(url, None, "t", dir.path()).await;
    assert_eq!(failure, Failure::PlaintextToTls);
    assert!(failure.to_string().contains("https://"), "{failure}");
}

/// The real router, plaintext on loopback, with a shared executor token.
async fn router(dir: &std::path::Path, token: &str) -> (SocketAddr, oneshot::Sender<()>) {
    let app = router::App::build(router::RouterConfig {
        server: ServerConfig::ephemeral(),
        data_dir: dir.join("router"),
        executor_token: Secret::new(token.to_owned()),
        ..router::RouterConfig::default()
    })
    .await
    .expect("router builds");
    let addr = app.grpc_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn a_refused_token_is_unauthenticated_and_a_closed_port_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, stop) = router(dir.path(), "the-right-token").await;
    let url = format!("http://{addr}");
    let failure = fail(url.clone(), None, "a-wrong-token", dir.path()).await;
    assert!(
        matches!(failure, Failure::TokenRefused(_)),
        "{failure:?}: {failure}"
    );
    assert!(
        failure.to_string().contains("ghost token create"),
        "{failure}"
    );
    // The plaintext probe of a plaintext router says no: the router stopped, nothing listens.
    drop(stop);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let failure = fail(url.clone(), None, "the-right-token", dir.path()).await;
        if let Failure::Unreachable(_) = failure {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{failure:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn revoked_and_forbidden_name_what_to_do() {
    let err = ExecutorError::Rpc(tonic::Status::unauthenticated(
        "executor token laptop was revoked",
    ));
    let failure = classify(&err, &["MAIN".to_owned()]);
    assert!(failure.is_final());
    assert!(failure.to_string().contains("revoked"), "{failure}");
    let err = ExecutorError::Rpc(tonic::Status::permission_denied("not for MAIN"));
    let failure = classify(&err, &["CYOPS".to_owned(), "MAIN".to_owned()]);
    assert!(
        failure.to_string().contains("targets CYOPS, MAIN"),
        "{failure}"
    );
}

#[test]
fn each_cause_is_reported_once_until_it_changes() {
    let mut reporter = Reporter::default();
    let wait = std::time::Duration::from_secs(1);
    let refused = Failure::TokenRefused("no".to_owned());
    assert!(reporter.report(&refused, wait));
    assert!(!reporter.report(&refused, wait));
    assert!(!reporter.report(&refused, wait));
    assert!(reporter.report(&Failure::UnknownCa, wait));
    assert!(reporter.report(&refused, wait));
    reporter.clear();
    assert!(reporter.report(&refused, wait));
}
