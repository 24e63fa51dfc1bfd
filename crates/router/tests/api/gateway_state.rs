//! `GatewayStateService`, the gateways' shared sessions and webhook deliveries: only the
//! deployment's service credential may call it, and every field from the wire is checked (a
//! session id only as its SHA-256, bounded names and answers, 2xx answers only).

use std::net::SocketAddr;

use ghost_proto::router::v1::gateway_state_service_client::GatewayStateServiceClient;
use ghost_proto::router::v1::{
    BeginDeliveryRequest, DeliveryOutcome, GetSessionRequest, SettleDeliveryRequest,
    StartSessionRequest, StoredAnswer,
};
use ghost_runtime::config::Secret;
use tonic::transport::{Channel, Endpoint};

use crate::helpers::{PATIENCE, config, spawn_router};

const TOKEN: &str = "s3cret-service-credential";

type Client = GatewayStateServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

fn client(addr: SocketAddr, authorization: Option<&str>) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(PATIENCE)
        .connect_lazy();
    let authorization = authorization.map(str::to_owned);
    GatewayStateServiceClient::with_interceptor(
        channel,
        Box::new(move |mut request: tonic::Request<()>| {
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().expect("ascii"));
            }
            Ok(request)
        }),
    )
}

fn start(id: u8) -> StartSessionRequest {
    StartSessionRequest {
        id_sha256: vec![id; 32],
        credential_sha256: vec![7; 32],
        csrf: "ab".repeat(32),
        ttl_s: 60,
        max_sessions: 10,
    }
}

#[tokio::test]
async fn only_the_service_credential_may_touch_the_gateways_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.server.internal_token = Secret::new(TOKEN);
    let router = spawn_router(config).await;
    for authorization in [None, Some("Bearer wrong")] {
        let refused = client(router.grpc, authorization)
            .get_session(GetSessionRequest {
                id_sha256: vec![1; 32],
            })
            .await
            .expect_err("refused without the credential");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        let refused = client(router.grpc, authorization)
            .start_session(start(1))
            .await
            .expect_err("refused without the credential");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    let mut gateway = client(router.grpc, Some(&format!("Bearer {TOKEN}")));
    assert!(
        gateway
            .start_session(start(1))
            .await
            .expect("start")
            .into_inner()
            .started
    );
    let found = gateway
        .get_session(GetSessionRequest {
            id_sha256: vec![1; 32],
        })
        .await
        .expect("get")
        .into_inner();
    assert!(found.found);
    assert_eq!(found.credential_sha256, vec![7; 32]);
}

#[tokio::test]
async fn malformed_state_requests_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let router = spawn_router(config(dir.path())).await;
    let mut gateway = client(router.grpc, None);
    let cases: Vec<(&str, StartSessionRequest)> = vec![
        (
            "id_sha256",
            StartSessionRequest {
                id_sha256: b"the-session-id-in-clear".to_vec(),
                ..start(1)
            },
        ),
        (
            "csrf",
            StartSessionRequest {
                csrf: String::new(),
                ..start(1)
            },
        ),
        (
            "ttl_s",
            StartSessionRequest {
                ttl_s: 0,
                ..start(1)
            },
        ),
    ];
    for (field, request) in cases {
        let refused = gateway.start_session(request).await.expect_err(field);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
    let refused = gateway
        .begin_delivery(BeginDeliveryRequest {
            sender: "ci".to_owned(),
            id: "m".repeat(257),
            body_sha256: vec![0; 32],
        })
        .await
        .expect_err("a long id");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let begun = gateway
        .begin_delivery(BeginDeliveryRequest {
            sender: "ci".to_owned(),
            id: "msg_1".to_owned(),
            body_sha256: vec![0; 32],
        })
        .await
        .expect("begin")
        .into_inner();
    assert_eq!(begun.outcome(), DeliveryOutcome::Deliver);
    let settle = |answer: StoredAnswer| SettleDeliveryRequest {
        sender: "ci".to_owned(),
        id: "msg_1".to_owned(),
        lease: begun.lease.clone(),
        answer: Some(answer),
        keep_ms: 600_000,
    };
    for (field, answer) in [
        (
            "answer.status",
            StoredAnswer {
                status: 500,
                ..Default::default()
            },
        ),
        (
            "answer.body",
            StoredAnswer {
                status: 202,
                body: vec![b'x'; 256 * 1024 + 1],
                ..Default::default()
            },
        ),
    ] {
        let refused = gateway
            .settle_delivery(settle(answer))
            .await
            .expect_err(field);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(field), "{refused:?}");
    }
    // Another sender does not see ci's delivery, nor its answer once committed.
    let committed = gateway
        .settle_delivery(settle(StoredAnswer {
            status: 202,
            body: b"{\"id\":\"p\"}".to_vec(),
            ..Default::default()
        }))
        .await
        .expect("commit")
        .into_inner();
    assert!(committed.committed);
    let other = gateway
        .begin_delivery(BeginDeliveryRequest {
            sender: "other".to_owned(),
            id: "msg_1".to_owned(),
            body_sha256: vec![0; 32],
        })
        .await
        .expect("begin")
        .into_inner();
    assert_eq!(other.outcome(), DeliveryOutcome::Deliver);
    assert!(other.answer.is_none());
}
