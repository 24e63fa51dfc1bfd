//! MCP fit for each client, with the `mcp` Python SDK against a whole system (a real executor
//! serves MAIN): every tool lists its annotations and an `outputSchema` (the SDK validates
//! each structured result against it), `submit_patch` with a progress callback gets progress
//! notifications while the patch runs, `check_patch` is a dry run, and `get_patch` waits.

use ghost_testkit::wait_for;

use crate::helpers::python;
use crate::system::{ADMIN_KEY, System};

const CLIENT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    progress = []
    async def on_progress(value, total, message):
        progress.append({"progress": value, "message": message})
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}, timeout=120) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                listed = (await session.list_tools()).tools
                tools = {}
                for tool in listed:
                    a = tool.annotations
                    tools[tool.name] = {
                        "readOnlyHint": a.read_only_hint if a else None,
                        "destructiveHint": a.destructive_hint if a else None,
                        "idempotentHint": a.idempotent_hint if a else None,
                        "openWorldHint": a.open_world_hint if a else None,
                        "outputSchema": tool.output_schema,
                    }
                patch = {"id": "mcp-fit-1", "target": "MAIN",
                         "edits": [{"op": "write", "path": "m.txt", "contents": "hi\n"}],
                         "commands": ["sleep 1"]}
                checked = await session.call_tool("check_patch", {"patch": patch})
                submitted = await session.call_tool("submit_patch", {"patch": patch},
                                                    progress_callback=on_progress)
                waited = await session.call_tool("get_patch", {"id": "mcp-fit-1", "wait": "5s"})
                waited_number = await session.call_tool("get_patch", {"id": "mcp-fit-1", "wait": 2})
                bad_wait = await session.call_tool("get_patch", {"id": "mcp-fit-1", "wait": "2m"})
                listed_patches = await session.call_tool("list_patches", {"target": "MAIN"})
                print(json.dumps({
                    "tools": tools,
                    "checked": checked.structured_content,
                    "submitted": submitted.structured_content,
                    "progress": progress,
                    "waited": waited.structured_content,
                    "waited_number": waited_number.structured_content,
                    "bad_wait": {"is_error": bad_wait.is_error, "text": bad_wait.content[0].text},
                    "listed": listed_patches.structured_content,
                }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn every_tool_is_annotated_with_an_output_schema_and_submit_reports_progress() {
    let system = System::start(true, |_| {}).await;
    // The executor serving MAIN must be connected before the dry run.
    wait_for("an executor for MAIN online", async || {
        let targets: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/targets", system.url()))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
        let online = targets.as_array().is_some_and(|all| {
            all.iter()
                .any(|t| t["target"] == "MAIN" && t["executor_online"] == true)
        });
        if online { Ok(()) } else { Err(targets) }
    })
    .await;
    let url = format!("{}/mcp", system.url());
    let (ok, stdout, stderr) = python(CLIENT, &[&url, ADMIN_KEY]).await;
    assert!(ok, "mcp client failed: {stderr}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");

    let tools = out["tools"].as_object().expect("tools");
    for name in [
        "submit_patch",
        "check_patch",
        "get_patch",
        "list_patches",
        "cancel_patch",
    ] {
        let tool = &tools[name];
        for hint in ["readOnlyHint", "destructiveHint", "idempotentHint"] {
            assert!(tool[hint].is_boolean(), "{name} has no {hint}: {tool}");
        }
        assert_eq!(tool["openWorldHint"], false, "{name}");
        assert_eq!(tool["outputSchema"]["type"], "object", "{name}: {tool}");
    }
    for read_only in ["check_patch", "get_patch", "list_patches"] {
        assert_eq!(tools[read_only]["readOnlyHint"], true, "{read_only}");
    }
    assert_eq!(tools["submit_patch"]["readOnlyHint"], false);
    assert_eq!(tools["cancel_patch"]["destructiveHint"], true);

    assert_eq!(out["checked"]["dry_run"], true, "{}", out["checked"]);
    assert_eq!(out["checked"]["status"], "succeeded");
    assert!(
        out["checked"]["diff"]
            .as_str()
            .unwrap_or("")
            .contains("+++ b/m.txt"),
        "{}",
        out["checked"]
    );
    assert_eq!(out["submitted"]["id"], "mcp-fit-1");
    assert_eq!(
        out["submitted"]["status"], "succeeded",
        "{}",
        out["submitted"]
    );
    let progress = out["progress"].as_array().expect("progress");
    assert!(!progress.is_empty(), "no progress notification arrived");
    assert!(
        progress
            .last()
            .and_then(|p| p["message"].as_str())
            .unwrap_or("")
            .contains("succeeded"),
        "{progress:?}"
    );
    assert_eq!(out["waited"]["status"], "succeeded");
    assert_eq!(out["waited_number"]["status"], "succeeded");
    assert_eq!(out["bad_wait"]["is_error"], true);
    assert!(
        out["bad_wait"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("wait")
    );
    assert_eq!(out["listed"]["patches"][0]["id"], "mcp-fit-1");
}
