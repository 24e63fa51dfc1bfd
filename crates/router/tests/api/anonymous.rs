//! Anonymous Work streams: only with no credential of any kind, only from loopback, never
//! through the executor port, and cut when the first executor token is created. The service
//! credential counts whether it is set inline or in `server.internal_token_file`.

use std::net::SocketAddr;

use ghost_proto::executor::v1::{ExecutorMessage, Hello, Workspace, executor_message};
use ghost_proto::router::v1::CreateExecutorTokenRequest;
use ghost_proto::router::v1::executor_token_service_client::ExecutorTokenServiceClient;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_runtime::config::TlsConfig;
use ghost_testkit::pki::Ca;
use router::App;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{PATIENCE, TestExecutor, config, spawn_router};
use crate::service_credential::{run, tls_endpoint};

const TOKEN: &str = "file-held-service-credential";

/// Says Hello for MAIN with `token` over `channel`; the router's refusal, if it refuses.
async fn hello_over(channel: Channel, token: &str) -> Result<(), tonic::Status> {
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
                token: token.to_owned(),
            })),
        })
        .await
        .expect("hello");
    let mut inbound = tokio::time::timeout(
        PATIENCE,
        RouterServiceClient::new(channel).work(ReceiverStream::new(receiver)),
    )
    .await
    .expect("answered in time")?
    .into_inner();
    tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("in time")?
        .expect("welcome");
    Ok(())
}

#[tokio::test]
async fn the_service_credential_from_a_file_opens_work_and_closes_anonymous_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("internal-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let mut cfg = config(dir.path());
    cfg.server.internal_token_file = Some(file);
    let router = spawn_router(cfg).await;

    let anonymous = TestExecutor::connect_with(&router, "anon", &["MAIN"], "")
        .await
        .err()
        .expect("no anonymous stream while a service credential exists");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    TestExecutor::connect_with(&router, "exec-1", &["MAIN"], TOKEN)
        .await
        .expect("the file's credential opens the Work stream");
}

#[tokio::test]
async fn the_executor_port_never_opens_an_anonymous_stream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ghost test ca");
    let (cert, key) = ca.server(1, false).write(dir.path());
    let mut cfg = config(dir.path());
    cfg.server.tls = TlsConfig {
        cert: Some(cert),
        key: Some(key),
        ..TlsConfig::default()
    };
    cfg.executor_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = App::build(cfg).await.expect("build");
    let executor_port = app.executor_addr().expect("executor port");
    let grpc = app.grpc_addr();
    let _stop = run(app);

    let refused = hello_over(tls_endpoint(executor_port, &ca).connect_lazy(), "")
        .await
        .expect_err("anonymous through the executor port");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    // The same Hello on the loopback gRPC port is a local executor.
    hello_over(tls_endpoint(grpc, &ca).connect_lazy(), "")
        .await
        .expect("anonymous on the loopback gRPC port");
}

#[tokio::test]
async fn an_executor_port_off_loopback_without_a_service_credential_fails_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("ghost test ca");
    let (cert, key) = ca.server(1, false).write(dir.path());
    let mut cfg = config(dir.path());
    cfg.server.tls = TlsConfig {
        cert: Some(cert),
        key: Some(key),
        ..TlsConfig::default()
    };
    cfg.executor_listen = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
    let Err(err) = App::build(cfg).await else {
        panic!("an executor port on 0.0.0.0 without a service credential was built");
    };
    let message = err.to_string();
    assert!(message.contains("executor_listen"), "{message}");
    assert!(message.contains("server.internal_token_file"), "{message}");
}

#[tokio::test]
async fn anonymous_streams_are_cut_when_the_first_token_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let router = spawn_router(config(dir.path())).await;
    let mut anonymous = TestExecutor::connect(&router, "anon", &["MAIN"]).await;
    ExecutorTokenServiceClient::new(router.channel.clone())
        .create_executor_token(CreateExecutorTokenRequest {
            name: "first".to_owned(),
            targets: vec!["MAIN".to_owned()],
            actor: "admin".to_owned(),
        })
        .await
        .expect("token created");
    let cut = anonymous.ended().await;
    assert_eq!(cut.code(), Code::Unauthenticated, "{cut:?}");
    assert!(cut.message().contains("anonymous"), "{cut:?}");
}
