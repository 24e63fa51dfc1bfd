//! Every service answers gRPC health and /healthz, and reports not-ready while draining.

use std::time::Duration;

use ghost_testkit::wait_until;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::spawn_system;

async fn grpc_health(addr: std::net::SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("grpc reachable");
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("known status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_health_and_turns_unready_while_draining() {
    let mut test = spawn_system(true).await;
    let http = reqwest::Client::new();
    let names: Vec<&'static str> = test.system.services.iter().map(|s| s.name).collect();
    assert_eq!(names.len(), 5, "{names:?}");

    for service in &test.system.services {
        assert_eq!(
            grpc_health(service.grpc).await,
            ServingStatus::Serving,
            "{}",
            service.name
        );
        let healthz = http
            .get(format!("http://{}/healthz", service.http))
            .send()
            .await
            .unwrap();
        assert_eq!(healthz.status().as_u16(), 200, "{}", service.name);
        let readyz = http
            .get(format!("http://{}/readyz", service.http))
            .send()
            .await
            .unwrap();
        assert_eq!(readyz.status().as_u16(), 200, "{}", service.name);
        let metrics = http
            .get(format!("http://{}/metrics", service.http))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status().as_u16(), 200, "{}", service.name);
    }

    // Drain each service in turn: while draining it still answers, but as not ready.
    while let Some(service) = test.system.services.pop() {
        service.begin_stop();
        let unready = format!("{} to turn unready while draining", service.name);
        wait_until(
            &unready,
            Duration::from_secs(5),
            Duration::from_millis(5),
            async || {
                let readyz = http
                    .get(format!("http://{}/readyz", service.http))
                    .send()
                    .await
                    .expect("still serving during the drain grace");
                match readyz.status().as_u16() {
                    503 => Ok(()),
                    other => Err(other),
                }
            },
        )
        .await;
        let healthz = http
            .get(format!("http://{}/healthz", service.http))
            .send()
            .await
            .unwrap();
        assert_eq!(
            healthz.status().as_u16(),
            200,
            "{} alive while draining",
            service.name
        );
        assert_eq!(
            grpc_health(service.grpc).await,
            ServingStatus::NotServing,
            "{}",
            service.name
        );
        service.stop().await.expect("clean stop");
    }
}

/// The services a peer lists through `grpc.reflection.v1` (tonic's client).
async fn reflected_services_v1(addr: std::net::SocketAddr) -> Vec<String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("grpc reachable");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("a reflection answer")
        .expect("one message");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list
            .service
            .into_iter()
            .map(|service| service.name)
            .collect(),
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

/// Reflection (built on a service's first reflection call, not at start) answers both protocol
/// versions: tonic's v1 client, and Python grpcio's reflection client (v1alpha), a foreign peer
/// that also checks health and resolves every listed service to its methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_reflection_v1_and_v1alpha_and_foreign_health_checks() {
    let test = spawn_system(true).await;
    let own: &[(&str, &[&str])] = &[
        (
            "router",
            &[
                "ghost.router.v1.ApiKeyService",
                "ghost.router.v1.ExecutorTokenService",
                "ghost.router.v1.GatewayStateService",
                "ghost.router.v1.RouterService",
                "ghost.router.v1.RouterStatsService",
            ],
        ),
        ("summarizer", &["ghost.summarizer.v1.SummarizerService"]),
        (
            "alerter",
            &[
                "ghost.alerter.v1.AlerterService",
                "ghost.alerter.v1.AlerterReadService",
            ],
        ),
        ("gateway", &[]),
        ("executor", &[]),
    ];
    let expected = |name: &str| -> Vec<String> {
        let (_, names) = own
            .iter()
            .find(|(service, _)| *service == name)
            .unwrap_or_else(|| panic!("unknown service {name}"));
        let mut all: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        all.push("grpc.health.v1.Health".to_owned());
        all.sort();
        all
    };

    for service in &test.system.services {
        let mut listed = reflected_services_v1(service.grpc).await;
        listed.sort();
        assert_eq!(listed, expected(service.name), "{} over v1", service.name);
    }

    let addresses: Vec<String> = test
        .system
        .services
        .iter()
        .map(|service| service.grpc.to_string())
        .collect();
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(ghost_testkit::python())
            .arg(ghost_testkit::repo_root().join("tests/python/grpc_peer.py"))
            .args(&addresses)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("grpc_peer.py ended within 60 s")
    .expect("python runs");
    assert!(
        output.status.success(),
        "grpc_peer.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let probed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for service in &test.system.services {
        let seen = &probed[service.grpc.to_string()];
        assert_eq!(seen["health"], "SERVING", "{}: {seen}", service.name);
        let listed = seen["services"].as_object().expect("services");
        let mut names: Vec<String> = listed.keys().cloned().collect();
        names.sort();
        assert_eq!(
            names,
            expected(service.name),
            "{} over v1alpha",
            service.name
        );
        for (name, methods) in listed {
            assert!(
                !methods.as_array().expect("methods").is_empty(),
                "{}: {name} resolved to no methods",
                service.name
            );
        }
        assert!(
            listed["grpc.health.v1.Health"]
                .as_array()
                .expect("methods")
                .iter()
                .any(|method| method == "Check"),
            "{seen}"
        );
    }
    let router = &probed[test
        .system
        .services
        .iter()
        .find(|service| service.name == "router")
        .expect("router")
        .grpc
        .to_string()];
    assert!(
        router["services"]["ghost.router.v1.RouterService"]
            .as_array()
            .expect("methods")
            .iter()
            .any(|method| method == "Submit"),
        "{router}"
    );
}
