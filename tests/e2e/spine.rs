//! One patch through all five services: file written, summary on disk, Slack told, one trace.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ghost_runtime::telemetry::{Telemetry, TelemetryConfig};
use ghost_testkit::{OtlpReceiver, ReceivedSpan, TEST_TIMEOUT, wait_until};

use crate::helpers::{spawn_system_with, write_patch};

const SERVICES: [&str; 5] = ["gateway", "router", "executor", "summarizer", "alerter"];

/// Which service produced a span: the server spans carry `ghost.service`; spans made inside a
/// service crate carry its module path.
fn service_of(span: &ReceivedSpan) -> Option<String> {
    if let Some(service) = span.attributes.get("ghost.service") {
        return Some(service.clone());
    }
    let module = span.attributes.get("code.module.name")?;
    let krate = module.split("::").next()?;
    SERVICES.contains(&krate).then(|| krate.to_owned())
}

fn covers_all_services(spans: &[ReceivedSpan]) -> bool {
    let seen: HashSet<String> = spans.iter().filter_map(service_of).collect();
    SERVICES.iter().all(|s| seen.contains(*s))
        && spans
            .iter()
            .any(|s| s.name == "slack.post" || s.name.contains("slack"))
}

async fn flush(telemetry: &Arc<Telemetry>) {
    let telemetry = Arc::clone(telemetry);
    tokio::task::spawn_blocking(move || telemetry.flush())
        .await
        .expect("flush task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_patch_flows_through_all_five_services_in_one_trace() {
    let receiver = OtlpReceiver::start().await.expect("otlp receiver");
    let telemetry = Arc::new(
        ghost_runtime::telemetry::init(
            "ghost-e2e",
            &TelemetryConfig {
                otlp_endpoint: Some(receiver.endpoint()),
                ..TelemetryConfig::default()
            },
        )
        .expect("telemetry"),
    );
    // Successes in a thread of their own: by default they go to a digest, a message for many
    // patches and so in no one patch's trace.
    let test = spawn_system_with(true, |config| {
        let own_thread = serde_json::json!({"thread": "own"});
        config.alerter.routing.routes = vec![serde_json::from_value(own_thread).expect("a route")];
    })
    .await;

    let response = test
        .submit(&write_patch(
            "spine-1",
            "hello/world.txt",
            "hello from the spine\n",
        ))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let accepted: serde_json::Value = response.json().await.unwrap();
    assert_eq!(accepted["id"], "spine-1");
    assert_eq!(accepted["status"], "queued");

    let finished = test.wait_finished("spine-1").await;
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["attempt"], 1);
    assert_eq!(
        std::fs::read_to_string(test.workspace.join("hello/world.txt")).unwrap(),
        "hello from the spine\n"
    );

    // Summary files, with the right status.
    let dir = test.summaries_dir("MAIN");
    let markdown = std::fs::read_to_string(dir.join("summary-spine-1.md")).expect("summary .md");
    assert!(markdown.contains("spine-1"), "{markdown}");
    assert!(markdown.contains("patchName: spine-1"), "{markdown}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary-spine-1.json")).unwrap())
            .expect("summary .json");
    assert_eq!(json["status"], "succeeded", "{json}");
    assert_eq!(finished["summary"].as_str().unwrap(), markdown);

    // Slack: one chat.postMessage naming the patch.
    let posts = test.slack.wait_for_posts(1, Duration::from_secs(20)).await;
    let naming: Vec<_> = posts
        .iter()
        .filter(|p| {
            p.method.ends_with("chat.postMessage") && p.body.to_string().contains("spine-1")
        })
        .collect();
    assert_eq!(naming.len(), 1, "posts: {posts:?}");
    assert_eq!(
        naming[0].authorization.as_deref(),
        Some("Bearer xoxb-e2e-token")
    );

    // One trace across all five services, forming one tree.
    let trace_id = finished["trace_id"].as_str().expect("trace id").to_owned();
    assert_eq!(trace_id.len(), 32, "{finished}");
    assert_eq!(json["trace_id"], trace_id.as_str());
    let spans = wait_until(
        "spans of every service and the Slack post in the trace",
        TEST_TIMEOUT,
        Duration::ZERO,
        async || {
            flush(&telemetry).await;
            let spans = receiver
                .wait_for_trace(&trace_id, Duration::from_millis(500), covers_all_services)
                .await;
            if covers_all_services(&spans) {
                Ok(spans)
            } else {
                Err(spans)
            }
        },
    )
    .await;
    let services: HashSet<String> = spans.iter().filter_map(service_of).collect();
    for service in SERVICES {
        assert!(
            services.contains(service),
            "no span from {service}; got {services:?} in {spans:#?}"
        );
    }
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let roots: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| !by_id.contains_key(s.parent_span_id.as_str()))
        .collect();
    assert_eq!(roots.len(), 1, "one root expected, got {roots:#?}");
    assert!(
        roots[0].parent_span_id.is_empty(),
        "root has a parent outside the trace: {:?}",
        roots[0]
    );
    assert_eq!(
        service_of(roots[0]).as_deref(),
        Some("gateway"),
        "{:?}",
        roots[0]
    );
    let apply = spans
        .iter()
        .find(|s| s.name == "executor.apply")
        .expect("executor.apply span");
    let parent = by_id[apply.parent_span_id.as_str()];
    assert_eq!(
        service_of(parent).as_deref(),
        Some("router"),
        "the executor's span must hang under the router's stored context, got {parent:?}"
    );

    test.system.shutdown().await.expect("clean shutdown");
    flush(&telemetry).await;
}
