//! Under `ghost up` (five services in one process, one subscriber) each service reports its
//! own `service.name`: spans reach a real OTLP receiver under five resources, not one. Its own
//! test binary: it installs the process-wide subscriber as `ghost up` does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ghost_cli::system::{LocalOptions, SlackOptions, SystemBuilder};
use ghost_runtime::telemetry::{SERVICE_ATTRIBUTE, SERVICES, Telemetry, TelemetryConfig};
use ghost_testkit::{FakeSlack, OtlpReceiver, ReceivedSpan, TEST_TIMEOUT, wait_for, wait_until};
use serde_json::{Value, json};

const API_KEY: &str = "names-test-key-0123456789abcdef";

fn names(spans: &[ReceivedSpan]) -> BTreeSet<&str> {
    spans
        .iter()
        .map(|span| span.service_name.as_str())
        .collect()
}

fn all_five(spans: &[ReceivedSpan]) -> bool {
    let seen = names(spans);
    SERVICES.iter().all(|service| seen.contains(service))
}

async fn flush(telemetry: &Arc<Telemetry>) {
    let telemetry = Arc::clone(telemetry);
    tokio::task::spawn_blocking(move || telemetry.flush())
        .await
        .expect("flush task");
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    http.get(url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("gateway reachable")
        .json()
        .await
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_services_in_one_process_export_under_five_service_names() {
    let receiver = OtlpReceiver::start().await.expect("otlp receiver");
    let telemetry = Arc::new(
        ghost_runtime::telemetry::init_local(&TelemetryConfig {
            otlp_endpoint: Some(receiver.endpoint()),
            ..TelemetryConfig::default()
        })
        .expect("telemetry"),
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let workspace = scratch.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let slack = FakeSlack::start().await;
    let system = SystemBuilder::new(&LocalOptions {
        data_dir: scratch.path().join("state"),
        workspaces: vec![("MAIN".to_owned(), workspace.clone())],
        gateway_listen: "127.0.0.1:0".parse().expect("addr"),
        api_key: API_KEY.to_owned(),
        targets: Vec::new(),
        slack: Some(SlackOptions {
            api_base_url: slack.base_url(),
            bot_token: "xoxb-names-token".to_owned(),
            channel: "#ghost-names".to_owned(),
        }),
    })
    .start()
    .await
    .expect("system starts");
    let gateway = system.gateway_url().expect("gateway");
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{gateway}/v1/patches"))
        .bearer_auth(API_KEY)
        .json(&json!({
            "id": "named-1",
            "target": "MAIN",
            "edits": [{"op": "write", "path": "named.txt", "contents": "hi\n"}],
        }))
        .send()
        .await
        .expect("gateway reachable");
    assert_eq!(response.status().as_u16(), 202);
    let finished = wait_for("named-1 to succeed with a summary", async || {
        let body = get(&http, &format!("{gateway}/v1/patches/named-1")).await;
        if body["status"] == "succeeded" && !body["summary"].is_null() {
            Ok(body)
        } else {
            Err(body)
        }
    })
    .await;
    slack.wait_for_posts(1, Duration::from_secs(20)).await;
    let trace_id = finished["trace_id"].as_str().expect("trace id").to_owned();

    let spans = wait_until(
        "spans of all five services in the trace",
        TEST_TIMEOUT,
        Duration::ZERO,
        async || {
            flush(&telemetry).await;
            let spans = receiver
                .wait_for_trace(&trace_id, Duration::from_millis(500), all_five)
                .await;
            if all_five(&spans) {
                Ok(spans)
            } else {
                Err(names(&spans)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>())
            }
        },
    )
    .await;

    // Five services, each span under the resource of the service it says it belongs to, and
    // no span of the patch's trace left to the process's own name.
    let seen = names(&spans);
    assert_eq!(
        seen,
        SERVICES.into_iter().collect::<BTreeSet<_>>(),
        "service names in the trace: {spans:#?}"
    );
    for span in &spans {
        assert_eq!(
            span.attributes.get(SERVICE_ATTRIBUTE),
            Some(&span.service_name),
            "{span:?}"
        );
    }
    // Spans from shared crates belong to the service that ran them: each gRPC server span (built
    // in ghost-runtime) to the service of the RPC, and spans inside it that name no service
    // inherit it.
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let server_of = |rpc: &str| {
        spans
            .iter()
            .find(|s| s.name.contains(rpc))
            .unwrap_or_else(|| panic!("no span for {rpc}: {spans:#?}"))
            .service_name
            .as_str()
    };
    assert_eq!(server_of("RouterService/Submit"), "router");
    assert_eq!(server_of("SummarizerService/Record"), "summarizer");
    let root = spans
        .iter()
        .find(|s| !by_id.contains_key(s.parent_span_id.as_str()))
        .expect("a root span");
    assert_eq!(root.service_name, "gateway", "{root:?}");
    let apply = spans
        .iter()
        .find(|s| s.name == "executor.apply")
        .expect("executor.apply span");
    assert_eq!(apply.service_name, "executor");

    system.shutdown().await.expect("clean shutdown");
    flush(&telemetry).await;
}
