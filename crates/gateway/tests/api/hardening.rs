//! After an attacker review of dry run, long-poll and MCP:
//! - a dry run needs the read scope as well as the submit scope (it shows the workspace), on
//!   the HTTP API and through MCP `check_patch`;
//! - `wait` is read by the documented pattern only (no leading zeros);
//! - `cancel_patch` is idempotent.

use serde_json::{Value, json};

use crate::helpers::{KEY, TestGateway, python};

/// A key that may submit to MAIN but not read.
const SUBMIT_ONLY: &str = "submit-only-key-0123456789ab";

fn sha256_hex(key: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn with_submit_only_key() -> TestGateway {
    TestGateway::start(|config, _| {
        config.api_keys.push(gateway::config::ApiKeyConfig {
            name: "submit-only".to_owned(),
            sha256: sha256_hex(SUBMIT_ONLY),
            scopes: vec![gateway::auth::Scope::Submit],
            targets: vec!["MAIN".to_owned()],
        });
    })
    .await
}

fn deleting(id: &str) -> Value {
    json!({"id": id, "target": "MAIN", "edits": [{"op": "delete", "path": ".env"}]})
}

#[tokio::test]
async fn a_dry_run_needs_the_read_scope_too_over_http_and_mcp() {
    let gateway = with_submit_only_key().await;
    let response = gateway
        .http
        .post(format!("{}/v1/patches?dry_run=true", gateway.url()))
        .bearer_auth(SUBMIT_ONLY)
        .json(&deleting("peek"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("json");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("Read"),
        "{body}"
    );
    // The same key may still submit.
    let (status, body) = gateway
        .post("/v1/patches", SUBMIT_ONLY, &deleting("real"))
        .await;
    assert_eq!(status, 202, "{body}");

    let url = format!("{}/mcp", gateway.url());
    let (ok, stdout, stderr) = python(MCP_CHECK, &[&url, SUBMIT_ONLY]).await;
    assert!(ok, "mcp client failed: {stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(out["is_error"], true, "{out}");
    assert!(out["text"].as_str().unwrap_or("").contains("Read"), "{out}");
    assert!(
        out["description"]
            .as_str()
            .unwrap_or("")
            .contains("reads the workspace"),
        "{out}"
    );
    assert_eq!(out["cancel_idempotent"], true, "{out}");
}

const MCP_CHECK: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = {t.name: t for t in (await session.list_tools()).tools}
                patch = {"id": "mcp-peek", "target": "MAIN",
                         "edits": [{"op": "delete", "path": ".env"}]}
                checked = await session.call_tool("check_patch", {"patch": patch})
                print(json.dumps({
                    "is_error": checked.is_error,
                    "text": checked.content[0].text,
                    "description": tools["check_patch"].description,
                    "cancel_idempotent": tools["cancel_patch"].annotations.idempotent_hint,
                }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn wait_with_leading_zeros_is_refused_as_the_documented_pattern_says() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (status, body) = gateway
        .post("/v1/patches", KEY, &crate::helpers::write_patch("zeros"))
        .await;
    assert_eq!(status, 202, "{body}");
    for wait in ["007", "01s", "0500ms"] {
        let (status, body) = gateway
            .get(&format!("/v1/patches/zeros?wait={wait}"), KEY)
            .await;
        assert_eq!(status, 400, "wait={wait}: {body}");
        assert!(
            body["detail"].as_str().unwrap_or("").contains("wait"),
            "{body}"
        );
    }
    for wait in ["0", "0s", "1", "500ms"] {
        let (status, body) = gateway
            .get(&format!("/v1/patches/zeros?wait={wait}"), KEY)
            .await;
        assert_eq!(status, 200, "wait={wait}: {body}");
    }
}

/// The router's `ghost_router_waiters` gauge, polled (bounded) until it reads `expected`.
async fn router_waiters_become(gateway: &TestGateway, expected: f64) {
    ghost_testkit::http::wait_for_metric(gateway.router().http, "ghost_router_waiters", expected)
        .await;
}

const MCP_WAIT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}, timeout=120) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                waited = await session.call_tool("get_patch", {"id": "held", "wait": 30})
                print(json.dumps({"is_error": waited.is_error, "result": waited.structured_content}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn long_polls_are_capped_per_credential_not_per_address_and_over_the_cap_answer_at_once() {
    let gateway = TestGateway::start(|config, _| {
        // Four requests in flight per address; long polls are not counted among them.
        config.client_limits.max_in_flight = 4;
        config.rate_limit.per_minute = 100_000;
        config.rate_limit.burst = 10_000;
    })
    .await;
    // No executor serves MAIN: the patch stays queued and every wait runs its full length.
    let (status, body) = gateway
        .post("/v1/patches", KEY, &crate::helpers::write_patch("held"))
        .await;
    assert_eq!(status, 202, "{body}");
    let cap = gateway::patches::MAX_LONG_POLLS_PER_CALLER;
    let mut waiting = Vec::new();
    for _ in 0..cap {
        let (http, url) = (
            gateway.http.clone(),
            format!("{}/v1/patches/held?wait=30s", gateway.url()),
        );
        waiting.push(tokio::spawn(async move {
            http.get(url)
                .bearer_auth(KEY)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    router_waiters_become(&gateway, cap as f64).await;
    // The same address is still served.
    let (status, body) = gateway.get("/v1/patches/held", KEY).await;
    assert_eq!(status, 200, "{body}");
    // One more long poll of the same credential: its current state at once, not a 429/503.
    let (status, body) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gateway.get("/v1/patches/held?wait=30s", KEY),
    )
    .await
    .expect("a long poll over the credential's cap is answered at once");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    // The cap is shared with MCP: get_patch with a wait answers at once too.
    let url = format!("{}/mcp", gateway.url());
    let (ok, stdout, stderr) = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        python(MCP_WAIT, &[&url, KEY]),
    )
    .await
    .expect("MCP get_patch over the credential's cap is answered at once");
    assert!(ok, "mcp client failed: {stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(out["is_error"], false, "{out}");
    assert_eq!(out["result"]["status"], "queued", "{out}");
    // Another credential from the same address still waits.
    let (http, url) = (
        gateway.http.clone(),
        format!("{}/v1/patches/held?wait=30s", gateway.url()),
    );
    let other = tokio::spawn(async move {
        http.get(url)
            .bearer_auth(crate::helpers::MAIN_SUBMITTER)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    router_waiters_become(&gateway, cap as f64 + 1.0).await;
    other.abort();
    for task in waiting {
        task.abort();
    }
    router_waiters_become(&gateway, 0.0).await;
}

const MCP_SUBMIT_FOLLOWING: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    async def on_progress(value, total, message):
        pass
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}, timeout=120) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                patch = {"id": "mcp-followed", "target": "MAIN",
                         "edits": [{"op": "write", "path": "f.txt", "contents": "f\n"}]}
                submitted = await session.call_tool("submit_patch", {"patch": patch},
                                                    progress_callback=on_progress)
                print(json.dumps({"is_error": submitted.is_error,
                                  "result": submitted.structured_content,
                                  "text": submitted.content[0].text}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn a_queued_patch_is_never_an_mcp_error_when_following_it_cannot_be_done() {
    let gateway = with_submit_only_key().await;
    let url = format!("{}/mcp", gateway.url());
    let (ok, stdout, stderr) = python(MCP_SUBMIT_FOLLOWING, &[&url, SUBMIT_ONLY]).await;
    assert!(ok, "mcp client failed: {stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(out["is_error"], false, "{out}");
    assert_eq!(out["result"]["id"], "mcp-followed", "{out}");
    assert_eq!(out["result"]["status"], "queued", "{out}");
    assert!(
        out["result"]["follow_error"]
            .as_str()
            .unwrap_or("")
            .contains("read scope"),
        "{out}"
    );
    assert_eq!(gateway.stored_ids().await, ["mcp-followed"]);
}
