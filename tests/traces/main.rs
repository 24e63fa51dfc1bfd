//! Trace ids always exist: with no OTLP endpoint configured, every patch gets a W3C trace id,
//! and a caller's `traceparent` (HTTP API or MCP) is continued, so the patch's trace id is the
//! caller's, and the trace crosses every gRPC hop. Its own test binary: it installs the
//! process-wide subscriber as `ghost up` does.

use std::time::Duration;

use ghost_cli::system::{LocalOptions, SystemBuilder};
use ghost_runtime::telemetry::TelemetryConfig;
use ghost_testkit::wait_for;
use serde_json::{Value, json};

const API_KEY: &str = "traces-test-key-0123456789abcdef";

struct Gateway {
    url: String,
    http: reqwest::Client,
}

impl Gateway {
    /// `POST /v1/patches`, with `traceparent` when given; the 202 body.
    async fn submit(&self, id: &str, traceparent: Option<&str>) -> Value {
        let mut request = self
            .http
            .post(format!("{}/v1/patches", self.url))
            .bearer_auth(API_KEY)
            .json(&patch(id));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.expect("gateway reachable");
        assert_eq!(response.status().as_u16(), 202, "submit {id}");
        response.json().await.expect("202 body")
    }

    /// `GET /v1/patches/{id}`.
    async fn get(&self, id: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/v1/patches/{id}", self.url))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("gateway reachable");
        assert_eq!(response.status().as_u16(), 200, "get {id}");
        response.json().await.expect("json")
    }

    /// `GET /v1/patches/{id}`'s `trace_id`.
    async fn trace_id_of(&self, id: &str) -> String {
        let body = self.get(id).await;
        body["trace_id"].as_str().expect("trace_id").to_owned()
    }

    /// Polls until the patch has succeeded and has a summary.
    async fn wait_succeeded(&self, id: &str) {
        wait_for(
            &format!("patch {id} to succeed with a summary"),
            async || {
                let body = self.get(id).await;
                if body["status"] == "succeeded" && !body["summary"].is_null() {
                    Ok(())
                } else {
                    Err(body)
                }
            },
        )
        .await;
    }

    /// One JSON-RPC message to `/mcp`; the answer to `id` (if it has one) out of the SSE or
    /// JSON response, and the session id the server names.
    async fn mcp(
        &self,
        session: Option<&str>,
        traceparent: Option<&str>,
        message: Value,
    ) -> (Option<Value>, Option<String>) {
        let mut request = self
            .http
            .post(format!("{}/mcp", self.url))
            .bearer_auth(API_KEY)
            .header("accept", "application/json, text/event-stream")
            .json(&message);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.expect("gateway reachable");
        assert!(response.status().is_success(), "{message}: {response:?}");
        let session = response
            .headers()
            .get("mcp-session-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if message.get("id").is_none() {
            return (None, session);
        }
        let text = tokio::time::timeout(Duration::from_secs(20), response.text())
            .await
            .expect("mcp answered within 20 s")
            .expect("mcp body");
        let answer = text
            .lines()
            .map(|line| line.strip_prefix("data:").unwrap_or(line).trim())
            .filter_map(|data| serde_json::from_str::<Value>(data).ok())
            .find(|value| value.get("id") == message.get("id"));
        (answer, session)
    }
}

fn patch(id: &str) -> Value {
    json!({
        "id": id,
        "target": "MAIN",
        "edits": [{"op": "write", "path": format!("{id}.txt"), "contents": "hi\n"}],
    })
}

fn is_trace_id(value: &str) -> bool {
    value.len() == 32
        && value
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && value.bytes().any(|b| b != b'0')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_carry_the_callers_trace_id_or_a_fresh_one_without_an_exporter() {
    // As `ghost up` does, with nothing configured: no OTLP endpoint.
    let telemetry =
        ghost_runtime::telemetry::init_local(&TelemetryConfig::default()).expect("telemetry");
    let scratch = tempfile::tempdir().expect("tempdir");
    let workspace = scratch.path().join("workspace");
    std::fs::create_dir_all(&workspace).expect("workspace");
    let data_dir = scratch.path().join("state");
    let system = SystemBuilder::new(&LocalOptions {
        data_dir: data_dir.clone(),
        workspaces: vec![("MAIN".to_owned(), workspace)],
        gateway_listen: "127.0.0.1:0".parse().expect("addr"),
        api_key: API_KEY.to_owned(),
        targets: Vec::new(),
        slack: None,
    })
    .start()
    .await
    .expect("system starts");
    let gateway = Gateway {
        url: system.gateway_url().expect("gateway"),
        http: reqwest::Client::new(),
    };

    // No traceparent: a fresh, valid trace id, a different one per patch.
    let first = gateway.submit("fresh-1", None).await;
    let second = gateway.submit("fresh-2", None).await;
    let fresh = gateway.trace_id_of("fresh-1").await;
    assert!(is_trace_id(&fresh), "not a trace id: {fresh:?}");
    assert_eq!(first["trace_id"], fresh.as_str(), "{first}");
    let other = gateway.trace_id_of("fresh-2").await;
    assert!(is_trace_id(&other), "not a trace id: {other:?}");
    assert_ne!(fresh, other, "{second}");

    // The caller's traceparent is continued: the patch's trace id is the caller's, whether or
    // not the caller sampled it.
    for (id, caller_trace) in [
        ("continued-1", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("continued-2", "0af7651916cd43dd8448eb211c80319c"),
    ] {
        let flags = if id.ends_with('1') { "01" } else { "00" };
        let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-{flags}");
        let accepted = gateway.submit(id, Some(&traceparent)).await;
        assert_eq!(accepted["trace_id"], caller_trace, "{accepted}");
        assert_eq!(gateway.trace_id_of(id).await, caller_trace, "{traceparent}");
    }

    // The trace crossed every gRPC hop (gateway → router → executor → router → summarizer)
    // without an exporter: the summary, written by the summarizer, names the caller's trace.
    gateway.wait_succeeded("continued-1").await;
    let summary: Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("summarizer/summaries/MAIN/summary-continued-1.json"))
            .expect("summary written"),
    )
    .expect("summary json");
    assert_eq!(
        summary["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{summary}"
    );

    // A malformed traceparent starts a trace of its own rather than failing the request.
    gateway.submit("malformed", Some("00-not-a-trace-01")).await;
    assert!(is_trace_id(&gateway.trace_id_of("malformed").await));

    // MCP: the traceparent of the HTTP request carrying `tools/call` is continued too.
    let (initialized, session) = gateway
        .mcp(
            None,
            None,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "traces-test", "version": "1"},
            }}),
        )
        .await;
    assert!(initialized.is_some_and(|answer| answer.get("result").is_some()));
    let session = session.expect("mcp-session-id");
    gateway
        .mcp(
            Some(&session),
            None,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
    let mcp_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let (called, _) = gateway
        .mcp(
            Some(&session),
            Some(&format!("00-{mcp_trace}-051581bf3cb55c13-01")),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "submit_patch",
                "arguments": {"patch": patch("via-mcp")},
            }}),
        )
        .await;
    let called = called.expect("tools/call answered");
    let text = called["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no tool result: {called}"));
    let accepted: Value = serde_json::from_str(text).expect("tool result is JSON");
    assert_eq!(accepted["id"], "via-mcp", "{accepted}");
    assert_eq!(accepted["trace_id"], mcp_trace, "{accepted}");
    assert_eq!(gateway.trace_id_of("via-mcp").await, mcp_trace);

    system.shutdown().await.expect("clean shutdown");
    telemetry.shutdown();
}
