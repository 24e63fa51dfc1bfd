//! Issue 18, build point 4: a patch to a target nobody knows is refused with 422 naming the
//! known targets and the nearest one, on every intake path (REST, signed webhook,
//! `/v1/messages`, MCP, the inbox), unless `accept_unknown_targets` is set; a target an
//! executor serves is known without being configured.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{KEY, TestGateway, python};
use crate::system::{ADMIN_KEY, System};

/// A one-file write patch for `target`.
fn patch_for(id: &str, target: &str) -> Value {
    json!({
        "id": id,
        "target": target,
        "edits": [{"op": "write", "path": "a.txt", "contents": id}],
    })
}

/// The refusal of a patch to MIAN, as every path must phrase it.
fn assert_names_main(detail: &str) {
    assert!(detail.contains("unknown target \"MIAN\""), "{detail}");
    assert!(detail.contains("did you mean MAIN?"), "{detail}");
    assert!(detail.contains("known targets: "), "{detail}");
    for known in ["MAIN", "CYOPS", "BRAUN", "DEV"] {
        assert!(detail.contains(known), "{known} not named: {detail}");
    }
}

#[tokio::test]
async fn a_typo_target_over_rest_is_422_naming_the_nearest_and_nothing_is_stored() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = gateway
        .post("/v1/patches", KEY, &patch_for("typo-1", "MIAN"))
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["type"], "/problems/unknown-target");
    assert_eq!(body["pointer"], "/target");
    assert_eq!(body["nearest"], "MAIN");
    assert_eq!(
        body["known_targets"],
        json!(["BRAUN", "CYOPS", "DEV", "MAIN"])
    );
    assert_names_main(body["detail"].as_str().unwrap_or(""));
    // Case differs: still unknown (targets are case-sensitive), the nearest is the real name.
    let (code, body) = gateway
        .post("/v1/patches", KEY, &patch_for("typo-2", "main"))
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["nearest"], "MAIN");
    // Nothing like any known name: no guess, the known ones still listed.
    let (code, body) = gateway
        .post("/v1/patches", KEY, &patch_for("typo-3", "ZZZZZZZZ"))
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["nearest"], Value::Null);
    assert!(
        !body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("did you mean")
    );
    // Configured names and aliases are known.
    for (id, target) in [
        ("known-1", "MAIN"),
        ("known-2", "CYOPS"),
        ("known-3", "DEV"),
    ] {
        let (code, body) = gateway
            .post("/v1/patches", KEY, &patch_for(id, target))
            .await;
        assert_eq!(code, 202, "{target}: {body}");
    }
    let mut stored = gateway.stored_ids().await;
    stored.sort();
    assert_eq!(stored, ["known-1", "known-2", "known-3"]);
}

#[tokio::test]
async fn a_typo_target_in_a_signed_webhook_is_422() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, body) = crate::hostile::deliver(
        &gateway.http,
        &gateway.url(),
        "msg_typo",
        &patch_for("wh-typo", "MIAN"),
    )
    .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["type"], "/problems/unknown-target");
    assert_names_main(body["detail"].as_str().unwrap_or(""));
    assert!(gateway.stored_ids().await.is_empty());
}

#[tokio::test]
async fn a_typo_target_in_a_chat_message_is_a_refused_block_naming_the_nearest() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let text = format!(
        "Two patches:\n```json\n{}\n```\n```json\n{}\n```\n",
        patch_for("msg-typo", "MIAN"),
        patch_for("msg-ok", "MAIN"),
    );
    let (code, body) = gateway
        .post("/v1/messages", KEY, &json!({ "text": text }))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["submitted"], 1, "{body}");
    assert_eq!(body["blocks"][0]["outcome"], "refused", "{body}");
    assert_names_main(body["blocks"][0]["reason"].as_str().unwrap_or(""));
    assert_eq!(body["blocks"][1]["outcome"], "submitted", "{body}");
    assert_eq!(gateway.stored_ids().await, ["msg-ok"]);
}

const MCP_SUBMIT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key, patch):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                result = await session.call_tool("submit_patch", {"patch": json.loads(patch)})
                print(json.dumps({"is_error": result.is_error, "text": result.content[0].text}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"#;

#[tokio::test]
async fn a_typo_target_through_mcp_is_a_tool_error_naming_the_nearest() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let url = format!("{}/mcp", gateway.url());
    let patch = patch_for("mcp-typo", "MIAN").to_string();
    let (ok, stdout, stderr) = python(MCP_SUBMIT, &[&url, KEY, &patch]).await;
    assert!(ok, "mcp client failed: {stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(out["is_error"], true, "{out}");
    assert_names_main(out["text"].as_str().unwrap_or(""));
    assert!(gateway.stored_ids().await.is_empty());
}

#[tokio::test]
async fn a_file_in_an_unknown_inbox_directory_is_rejected_naming_the_nearest() {
    let gateway = TestGateway::start(|config, scratch| {
        config.inbox = Some(scratch.join("inbox"));
        config.inbox_settle = Duration::from_millis(100);
    })
    .await;
    let typo = gateway.path("inbox/MIAN");
    std::fs::create_dir_all(&typo).expect("inbox dir");
    std::fs::write(
        typo.join("p.json"),
        patch_for("inbox-typo", "MIAN").to_string(),
    )
    .expect("write");
    let note = typo.join(".rejected/p.json.error.txt");
    for _ in 0..200 {
        if note.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = std::fs::read_to_string(&note).expect("a rejection note");
    assert_names_main(&reason);
    assert!(gateway.stored_ids().await.is_empty());
}

#[tokio::test]
async fn accept_unknown_targets_queues_a_patch_for_a_target_nobody_knows() {
    let gateway = TestGateway::start(|config, _| {
        config.accept_unknown_targets = true;
    })
    .await;
    let (code, body) = gateway
        .post("/v1/patches", KEY, &patch_for("later-1", "NOT_YET_SERVED"))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["target"], "NOT_YET_SERVED");
    assert_eq!(gateway.stored_ids().await, ["later-1"]);
}

#[tokio::test]
async fn a_target_an_executor_serves_is_known_without_being_configured() {
    // No `targets` configured at all: MAIN is known only because the executor serves it.
    let system = System::start(true, |config| {
        config.targets.clear();
        config.default_target = None;
    })
    .await;
    let base = system.url();
    let http = reqwest::Client::new();
    let mut online = false;
    for _ in 0..200 {
        let targets: Value = http
            .get(format!("{base}/v1/targets"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("gateway reachable")
            .json()
            .await
            .expect("json");
        if targets.as_array().is_some_and(|list| {
            list.iter()
                .any(|t| t["target"] == "MAIN" && t["executor_online"] == true)
        }) {
            online = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(online, "the executor never served MAIN");
    let submit = |body: Value| {
        http.post(format!("{base}/v1/patches"))
            .bearer_auth(ADMIN_KEY)
            .json(&body)
            .send()
    };
    let answer = submit(patch_for("served-1", "MAIN"))
        .await
        .expect("reachable");
    assert_eq!(answer.status().as_u16(), 202);
    let answer = submit(patch_for("served-2", "MIAN"))
        .await
        .expect("reachable");
    assert_eq!(answer.status().as_u16(), 422);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["nearest"], "MAIN", "{body}");
    assert_eq!(body["known_targets"], json!(["MAIN"]), "{body}");
}
