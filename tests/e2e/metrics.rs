//! Every service's `/metrics` is valid Prometheus text with help and type for each metric
//! (checked by Prometheus' own `promtool`), and carries RED metrics for HTTP and gRPC.

use crate::helpers::{spawn_system, write_patch};

/// Runs `promtool check metrics` on `text`; the failure message is promtool's own.
fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let output = child.wait_with_output().expect("promtool ran");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn every_service_exports_metrics_promtool_accepts_with_red_metrics() {
    let system = spawn_system(true).await;
    let response = system
        .submit(&write_patch("metrics-1", "m.txt", "m\n"))
        .await;
    assert_eq!(response.status(), 202);
    system.wait_finished("metrics-1").await;

    for name in ["gateway", "router", "executor", "summarizer", "alerter"] {
        let (_, http) = system.system.addr_of(name).expect("running");
        let text = system
            .http
            .get(format!("http://{http}/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        promtool_check(&text);
        for family in [
            "ghost_patches_total",
            "ghost_http_requests_total",
            "ghost_grpc_requests_total",
            "ghost_grpc_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(family), "{name}: no {family} in\n{text}");
        }
        assert!(
            text.contains(r#"route="/v1/patches""#),
            "{name}: HTTP requests are labelled by matched route"
        );
        assert!(
            text.contains(r#"grpc_service="ghost.router.v1.RouterService",grpc_method="Submit""#),
            "{name}: gRPC calls are labelled by service and method"
        );
    }
}
