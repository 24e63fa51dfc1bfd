//! The deployment's service credential on the router's control RPCs, and the executor port
//! (`executor_listen`): TLS always, the Work stream and health only.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ghost_proto::executor::v1::{
    ExecutorMessage, Hello, Workspace, executor_message, router_message,
};
use ghost_proto::router::v1::PauseRequest;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_runtime::config::{Secret, ServerConfig, TlsConfig};
use ghost_runtime::propagation::{Upstream, traced_channel};
use ghost_testkit::pki::Ca;
use ghost_testkit::wait::wait_for;
use router::App;
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{PATIENCE, TestExecutor, config, spawn_router};

const TOKEN: &str = "s3cret-service-credential";

fn pause_request() -> PauseRequest {
    PauseRequest {
        target: "MAIN".to_owned(),
        actor: "test".to_owned(),
    }
}

/// A plaintext channel whose calls carry `authorization` (when given).
fn channel_with(
    addr: SocketAddr,
    authorization: Option<&str>,
) -> RouterServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl tonic::service::Interceptor + use<>,
    >,
> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(PATIENCE)
        .connect_lazy();
    let authorization = authorization.map(str::to_owned);
    RouterServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if let Some(value) = &authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("ascii"));
        }
        Ok(request)
    })
}

#[tokio::test]
async fn control_calls_need_the_service_credential_while_health_and_work_stay_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.server.internal_token = Secret::new(TOKEN);
    let router = spawn_router(config).await;
    let addr = router.grpc;

    for authorization in [None, Some("Bearer wrong"), Some(TOKEN)] {
        let refused = channel_with(addr, authorization)
            .pause(pause_request())
            .await
            .expect_err("refused without the credential");
        assert_eq!(
            refused.code(),
            tonic::Code::Unauthenticated,
            "{authorization:?}: {refused:?}"
        );
        assert_eq!(
            refused.message(),
            "this call needs the deployment's service credential"
        );
    }
    channel_with(addr, Some(&format!("Bearer {TOKEN}")))
        .pause(pause_request())
        .await
        .expect("the credential opens Pause");
    let metrics = reqwest::get(format!("http://{}/metrics", router.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|line| line == "ghost_grpc_unauthenticated_total{service=\"router\"} 3"),
        "{metrics}"
    );

    // What a service dials with: traced_channel sends the credential from the config.
    let server = ServerConfig {
        internal_token: Secret::new(TOKEN),
        ..ServerConfig::ephemeral()
    };
    let upstream = Upstream::new(&server).expect("upstream");
    let mut traced = RouterServiceClient::new(
        traced_channel(&format!("http://{addr}"), &upstream).expect("channel"),
    );
    traced
        .resume(ghost_proto::router::v1::ResumeRequest {
            target: "MAIN".to_owned(),
            actor: "test".to_owned(),
        })
        .await
        .expect("traced_channel carries the credential");

    let health = HealthClient::new(
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy(),
    )
    .check(HealthCheckRequest {
        service: String::new(),
    })
    .await
    .expect("health needs no credential")
    .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    // Work needs no service credential in its metadata, only a credential in Hello (here the
    // service credential itself, which opens every target).
    let _executor = TestExecutor::connect_with(&router, "exec-1", &["MAIN"], TOKEN)
        .await
        .expect("work stream opens");
}

#[tokio::test]
async fn no_credential_on_every_interface_fails_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.server.grpc_listen = SocketAddr::from(([0, 0, 0, 0], 0));
    let Err(err) = App::build(config).await else {
        panic!("a router on 0.0.0.0 without a service credential was built");
    };
    let message = err.to_string();
    assert!(message.contains("not a loopback address"), "{message}");
    assert!(message.contains("server.internal_token"), "{message}");
}

/// A router config serving TLS with a fresh CA's certificate.
fn tls_config(dir: &Path, ca: &Ca) -> router::RouterConfig {
    let (cert, key) = ca.server(1, false).write(dir);
    let mut config = config(dir);
    config.server.tls = TlsConfig {
        cert: Some(cert),
        key: Some(key),
        ..TlsConfig::default()
    };
    config.server.internal_token = Secret::new(TOKEN);
    config
}

/// Runs `app` until the returned sender is dropped or fired.
pub(crate) fn run(app: App) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = app
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    stop
}

pub(crate) fn tls_endpoint(addr: SocketAddr, ca: &Ca) -> Endpoint {
    Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("endpoint")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca.pem))
                .domain_name("localhost"),
        )
        .expect("tls")
        .timeout(PATIENCE)
}

#[tokio::test]
async fn the_executor_port_serves_work_and_health_over_tls_and_refuses_control_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ghost test ca");
    let mut config = tls_config(dir.path(), &ca);
    config.executor_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = App::build(config).await.expect("build");
    let executor_port = app.executor_addr().expect("executor port bound");
    assert_ne!(executor_port.port(), 0);
    let _stop = run(app);

    let channel = tls_endpoint(executor_port, &ca).connect_lazy();
    let authorization: tonic::metadata::AsciiMetadataValue =
        format!("Bearer {TOKEN}").parse().expect("ascii");
    let mut control = RouterServiceClient::with_interceptor(
        channel.clone(),
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            Ok(request)
        },
    );
    let refused = control
        .pause(pause_request())
        .await
        .expect_err("Pause is not served on the executor port");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("Work stream"), "{refused:?}");

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over TLS")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let _work = work_stream(channel).await;
}

#[tokio::test]
async fn the_executor_port_without_a_certificate_fails_the_build() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.executor_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let Err(err) = App::build(config).await else {
        panic!("an executor port without TLS was built");
    };
    let message = err.to_string();
    assert!(message.contains("executor_listen"), "{message}");
    assert!(message.contains("server.tls.cert"), "{message}");
}

#[tokio::test]
async fn a_foreign_grpcio_client_passes_health_over_tls_and_is_refused_pause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ghost test ca");
    let config = tls_config(dir.path(), &ca);
    let app = App::build(config).await.expect("build");
    let addr = app.grpc_addr();
    let _stop = run(app);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write ca");

    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(ghost_testkit::python())
            .arg(ghost_testkit::repo_root().join("tests/python/tls_peer.py"))
            .arg(addr.to_string())
            .arg(&ca_file)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tls_peer.py ended within 60 s")
    .expect("python runs");
    assert!(
        output.status.success(),
        "tls_peer.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(seen["health"], "SERVING", "{seen}");
    assert_eq!(seen["pause"], "UNAUTHENTICATED", "{seen}");
    assert_eq!(
        seen["detail"], "this call needs the deployment's service credential",
        "{seen}"
    );
}

/// Says Hello for MAIN on a Work stream over `channel` and waits for Welcome.
async fn work_stream(
    channel: Channel,
) -> (
    tokio::sync::mpsc::Sender<ExecutorMessage>,
    tonic::Streaming<ghost_proto::executor::v1::RouterMessage>,
) {
    let (outbound, receiver) = tokio::sync::mpsc::channel(4);
    outbound
        .send(ExecutorMessage {
            kind: Some(executor_message::Kind::Hello(Hello {
                executor_id: "remote-1".to_owned(),
                workspaces: vec![Workspace {
                    target: "MAIN".to_owned(),
                    root: "/ws/MAIN".to_owned(),
                }],
                capabilities: Vec::new(),
                token: TOKEN.to_owned(),
            })),
        })
        .await
        .expect("hello");
    let mut inbound = RouterServiceClient::new(channel)
        .work(ReceiverStream::new(receiver))
        .await
        .expect("the Work stream opens")
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("in time")
        .expect("stream healthy")
        .expect("welcome");
    assert!(
        matches!(first.kind, Some(router_message::Kind::Welcome(_))),
        "{first:?}"
    );
    (outbound, inbound)
}

#[tokio::test]
async fn a_certificate_replaced_under_a_live_work_stream_serves_new_connections_and_keeps_the_stream()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let old_ca = Ca::new("old ca");
    let mut config = tls_config(dir.path(), &old_ca);
    config.server.tls.reload_interval = Duration::from_millis(100);
    config.executor_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = App::build(config).await.expect("build");
    let executor_port = app.executor_addr().expect("executor port");
    let grpc = app.grpc_addr();
    let _stop = run(app);
    let (_outbound, mut inbound) =
        work_stream(tls_endpoint(executor_port, &old_ca).connect_lazy()).await;

    // A certificate from another CA: only a client trusting it can connect from now on.
    let new_ca = Ca::new("new ca");
    new_ca.server(2, false).write(dir.path());
    wait_for("new connections to get the new certificate", async || {
        HealthClient::new(tls_endpoint(executor_port, &new_ca).connect_lazy())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop)
            .map_err(|status| status.code())
    })
    .await;
    let refused = HealthClient::new(tls_endpoint(executor_port, &old_ca).connect_lazy())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("the old certificate is no longer served");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");

    // A service dialling https:// with the new CA and the credential submits; the stream
    // opened before the rotation receives the lease.
    let ca_file = dir.path().join("new-ca.pem");
    std::fs::write(&ca_file, &new_ca.pem).expect("write ca");
    let server = ServerConfig {
        internal_token: Secret::new(TOKEN),
        tls: TlsConfig {
            ca: Some(ca_file),
            ..TlsConfig::default()
        },
        ..ServerConfig::ephemeral()
    };
    let upstream = Upstream::new(&server).expect("upstream");
    let mut control = RouterServiceClient::new(
        traced_channel(&format!("https://localhost:{}", grpc.port()), &upstream).expect("channel"),
    );
    control
        .submit(ghost_proto::router::v1::SubmitRequest {
            patch: Some(crate::helpers::patch("rotated-1", "MAIN")),
            ..Default::default()
        })
        .await
        .expect("submit over https with the credential");
    let assigned = tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("a lease in time")
        .expect("the stream survived the rotation")
        .expect("open");
    match assigned.kind {
        Some(router_message::Kind::Assign(assign)) => {
            assert_eq!(assign.patch.expect("patch").id, "rotated-1");
        }
        other => panic!("expected an assignment, got {other:?}"),
    }
}

/// An executor token is a credential for the Work stream only: as a bearer on Pause or Submit
/// it is refused like no credential at all, and nothing it sent is queued or paused.
#[tokio::test]
async fn an_executor_token_cannot_call_pause_or_submit() {
    use ghost_proto::router::v1::executor_token_service_client::ExecutorTokenServiceClient;
    use ghost_proto::router::v1::{CreateExecutorTokenRequest, GetRequest, SubmitRequest};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.server.internal_token = Secret::new(TOKEN);
    let router = spawn_router(config).await;
    let addr = router.grpc;
    let bearer = format!("Bearer {TOKEN}");
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    let admin = bearer.clone();
    let secret = ExecutorTokenServiceClient::with_interceptor(
        channel,
        move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", admin.parse().expect("ascii"));
            Ok(request)
        },
    )
    .create_executor_token(CreateExecutorTokenRequest {
        name: "laptop".to_owned(),
        targets: vec!["MAIN".to_owned()],
        actor: "test".to_owned(),
    })
    .await
    .expect("the service credential issues tokens")
    .into_inner()
    .secret;

    for authorization in [format!("Bearer {secret}"), secret.clone()] {
        let mut client = channel_with(addr, Some(&authorization));
        let paused = client.pause(pause_request()).await.expect_err("refused");
        assert_eq!(paused.code(), tonic::Code::Unauthenticated, "{paused:?}");
        let submitted = client
            .submit(SubmitRequest {
                patch: Some(crate::helpers::patch("by-executor", "MAIN")),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            submitted.code(),
            tonic::Code::Unauthenticated,
            "{submitted:?}"
        );
    }
    let mut admin = channel_with(addr, Some(&bearer));
    let missing = admin
        .get(GetRequest {
            id: "by-executor".to_owned(),
        })
        .await
        .expect_err("never queued");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let targets = admin
        .list_targets(ghost_proto::router::v1::ListTargetsRequest {})
        .await
        .expect("targets")
        .into_inner();
    assert!(
        targets.targets.iter().all(|t| !t.paused),
        "nothing paused: {targets:?}"
    );
    // The same token still opens its own Work stream.
    let _executor = TestExecutor::connect_with(&router, "laptop", &["MAIN"], &secret)
        .await
        .expect("the token opens Work for MAIN");
}
