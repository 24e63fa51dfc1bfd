//! Must-show 6: the `mcp` Python SDK, as a real client, lists the tools, submits a patch and
//! reads its status over streamable HTTP at /mcp.

use crate::helpers::{KEY, TestGateway, python};

const CLIENT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = sorted(tool.name for tool in (await session.list_tools()).tools)
                patch = {"id": "mcp-1", "target": "MAIN",
                         "edits": [{"op": "write", "path": "m.txt", "contents": "hi"}]}
                submitted = await session.call_tool("submit_patch", {"patch": patch})
                status = await session.call_tool("get_patch", {"id": "mcp-1"})
                listed = await session.call_tool("list_patches", {"target": "MAIN"})
                print(json.dumps({
                    "tools": tools,
                    "submitted": json.loads(submitted.content[0].text),
                    "status": json.loads(status.content[0].text),
                    "listed": json.loads(listed.content[0].text),
                }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn the_python_mcp_sdk_lists_tools_submits_and_reads_status() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let url = format!("{}/mcp", gateway.url());
    let (ok, stdout, stderr) = python(CLIENT, &[&url, KEY]).await;
    assert!(ok, "mcp client failed: {stderr}");
    // The SDK ends its session with a DELETE when the client closes; an answer other than 200
    // or 204 is printed to the user as a failure.
    assert!(
        !stderr.contains("Session termination failed"),
        "the session end was reported as a failure: {stderr}"
    );
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        out["tools"],
        serde_json::json!([
            "cancel_patch",
            "check_patch",
            "get_patch",
            "list_patches",
            "revert_patch",
            "submit_patch"
        ])
    );
    assert_eq!(out["submitted"]["id"], "mcp-1");
    assert_eq!(out["status"]["id"], "mcp-1");
    assert_eq!(out["status"]["status"], "queued");
    assert_eq!(out["listed"]["patches"][0]["id"], "mcp-1");
    assert_eq!(gateway.stored_ids().await, ["mcp-1"]);
    // Without a valid key the endpoint refuses before any MCP exchange.
    let response = gateway
        .http
        .post(&url)
        .bearer_auth("not-a-valid-key-0123456789")
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
