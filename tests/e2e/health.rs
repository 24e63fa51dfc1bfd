//! Every service answers gRPC health and /healthz, and reports not-ready while draining.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let readyz = http
                .get(format!("http://{}/readyz", service.http))
                .send()
                .await
                .expect("still serving during the drain grace");
            if readyz.status().as_u16() == 503 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never turned unready",
                service.name
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
