//! `POST /v1/patches/{id}/revert` and MCP `revert_patch` through a real gateway and a real
//! router, with an executor played by the test on the Work stream (it advertises `revert`):
//! the scope rule (read-only 403, another target 404 like GET, submit on the target and admin
//! ok), 202 with Location then 200 for a replay, 409 for a patch that did not succeed and 409
//! naming the conflicting files, 400 for a body or a submitted document carrying `revert`, and
//! the tool listed with its annotations.

use std::sync::{Arc, Mutex};

use ghost_proto::executor::v1::{
    DryRunResult, ExecutorMessage, Hello, Result as WorkResult, Workspace, executor_message,
    router_message,
};
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::router::v1::{ApplyReport, Patch, PatchStatus};
use ghost_testkit::wait_until;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;

use crate::helpers::{KEY, MAIN_SUBMITTER, READER, TestGateway, python, read, write_patch};

/// What the test executor was asked to dry-run (the revert patches the router built).
type Asked = Arc<Mutex<Vec<Patch>>>;

/// An executor serving MAIN and CYOPS that says Hello with `revert`, applies every assigned
/// patch (`fail-*` ends failed, the others succeed) and answers every revert check: files
/// changed since for `moved-*`, never for `hang-*`, else the diff.
async fn scripted_executor(gateway: &TestGateway) -> Asked {
    let asked: Asked = Arc::default();
    let mut client = RouterServiceClient::connect(format!("http://{}", gateway.router().grpc))
        .await
        .expect("router reachable");
    let (outbound, receiver) = tokio::sync::mpsc::channel(64);
    outbound
        .send(ExecutorMessage {
            kind: Some(executor_message::Kind::Hello(Hello {
                executor_id: "revert-test-executor".to_owned(),
                workspaces: ["MAIN", "CYOPS"]
                    .into_iter()
                    .map(|target| Workspace {
                        target: target.to_owned(),
                        root: format!("/ws/{target}"),
                    })
                    .collect(),
                capabilities: vec!["dry_run".to_owned(), "revert".to_owned()],
                token: String::new(),
            })),
        })
        .await
        .expect("hello queued");
    let mut inbound = client
        .work(ReceiverStream::new(receiver))
        .await
        .expect("work stream opens")
        .into_inner();
    let seen = Arc::clone(&asked);
    tokio::spawn(async move {
        while let Ok(Some(message)) = inbound.message().await {
            let reply = match message.kind {
                Some(router_message::Kind::Assign(assign)) => {
                    let Some(patch) = assign.patch else { continue };
                    let failed = patch.id.starts_with("fail-");
                    executor_message::Kind::Result(WorkResult {
                        patch_id: patch.id.clone(),
                        attempt: assign.attempt,
                        fencing_token: assign.fencing_token,
                        report: Some(ApplyReport {
                            status: if failed {
                                PatchStatus::Failed as i32
                            } else {
                                PatchStatus::Succeeded as i32
                            },
                            error: if failed {
                                "it broke".to_owned()
                            } else {
                                String::new()
                            },
                            ..ApplyReport::default()
                        }),
                        traceparent: String::new(),
                    })
                }
                Some(router_message::Kind::DryRun(request)) => {
                    let Some(patch) = request.patch else { continue };
                    let moved = patch.revert_of.starts_with("moved-");
                    let hangs = patch.revert_of.starts_with("hang-");
                    seen.lock().expect("asked").push(patch);
                    if hangs {
                        continue;
                    }
                    let report = if moved {
                        ApplyReport {
                            status: PatchStatus::Rejected as i32,
                            dry_run: true,
                            error: "files changed since the patch ended: src/b.ts, a.ts".to_owned(),
                            conflicts: vec!["src/b.ts".to_owned(), "a.ts".to_owned()],
                            ..ApplyReport::default()
                        }
                    } else {
                        ApplyReport {
                            status: PatchStatus::Succeeded as i32,
                            dry_run: true,
                            diff: "--- a/a.txt\n+++ /dev/null\n".to_owned(),
                            ..ApplyReport::default()
                        }
                    };
                    executor_message::Kind::DryRunResult(DryRunResult {
                        request_id: request.request_id,
                        report: Some(report),
                    })
                }
                _ => continue,
            };
            if outbound
                .send(ExecutorMessage { kind: Some(reply) })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    asked
}

/// Submits `id` on `target` (admin key) and waits for it to end `status`.
async fn ended(gateway: &TestGateway, id: &str, target: &str, status: &str) {
    let mut patch = write_patch(id);
    patch["target"] = target.into();
    let (code, body) = gateway.post("/v1/patches", KEY, &patch).await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = gateway
        .get(&format!("/v1/patches/{id}?wait=10s"), KEY)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], status, "{body}");
}

async fn revert(gateway: &TestGateway, id: &str, key: &str) -> (u16, Option<String>, Value) {
    let response = gateway
        .http
        .post(format!("{}/v1/patches/{id}/revert", gateway.url()))
        .bearer_auth(key)
        .send()
        .await
        .expect("gateway reachable");
    let location = response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (code, body) = read(response).await;
    (code, location, body)
}

#[tokio::test]
async fn the_revert_route_keeps_the_scope_rule_and_answers_every_outcome() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let asked = scripted_executor(&gateway).await;
    ended(&gateway, "rv-main", "MAIN", "succeeded").await;
    ended(&gateway, "rv-cyops", "CYOPS", "succeeded").await;
    ended(&gateway, "fail-main", "MAIN", "failed").await;
    ended(&gateway, "moved-main", "MAIN", "succeeded").await;

    // Read-only: 403 before anything is looked up.
    let (code, _, body) = revert(&gateway, "rv-main", READER).await;
    assert_eq!(code, 403, "{body}");
    // Submit scope on MAIN only: a CYOPS patch is answered as GET answers it, 404, the same
    // as a patch that does not exist.
    let (code, _, hidden) = revert(&gateway, "rv-cyops", MAIN_SUBMITTER).await;
    assert_eq!(code, 404, "{hidden}");
    let (get_code, seen_by_get) = gateway.get("/v1/patches/rv-cyops", MAIN_SUBMITTER).await;
    assert_eq!(get_code, 404);
    assert_eq!(hidden["detail"], seen_by_get["detail"]);
    let (code, _, unknown) = revert(&gateway, "no-such-patch", KEY).await;
    assert_eq!(code, 404, "{unknown}");
    assert_eq!(unknown["type"], hidden["type"]);
    assert!(
        asked.lock().expect("asked").is_empty(),
        "an executor was asked for a refused revert"
    );

    // Submit scope on the patch's target: 202, Location, the submit's shape.
    let (code, location, body) = revert(&gateway, "rv-main", MAIN_SUBMITTER).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(location.as_deref(), Some("/v1/patches/revert-rv-main"));
    assert_eq!(body["id"], "revert-rv-main");
    assert_eq!(body["target"], "MAIN");
    assert_eq!(body["replayed"], false);
    assert!(
        body["status"].is_string() && body["warnings"].is_array(),
        "{body}"
    );
    {
        let asked = asked.lock().expect("asked");
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].id, "revert-rv-main");
        assert_eq!(asked[0].revert_of, "rv-main");
    }
    // Again, by the admin key with `{}`: the same revert, 200, no executor asked.
    let response = gateway
        .http
        .post(format!("{}/v1/patches/rv-main/revert", gateway.url()))
        .bearer_auth(KEY)
        .json(&json!({}))
        .send()
        .await
        .expect("gateway reachable");
    let (code, body) = read(response).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["id"], "revert-rv-main");
    assert_eq!(body["replayed"], true);
    assert_eq!(asked.lock().expect("asked").len(), 1);
    // The original's audit trail names the caller and the revert.
    let (code, events) = gateway.get("/v1/patches/rv-main/events", KEY).await;
    assert_eq!(code, 200);
    assert!(
        events.as_array().expect("events").iter().any(|event| {
            event["actor"] == "gateway:main-submitter"
                && event["detail"]
                    .as_str()
                    .unwrap_or("")
                    .contains("revert-rv-main")
        }),
        "{events}"
    );
    // The revert patch's own trail starts with who asked, not "gateway".
    let (code, events) = gateway.get("/v1/patches/revert-rv-main/events", KEY).await;
    assert_eq!(code, 200);
    assert_eq!(events[0]["actor"], "gateway:main-submitter", "{events}");
    // Admin on another target: fine.
    let (code, _, body) = revert(&gateway, "rv-cyops", KEY).await;
    assert_eq!(code, 202, "{body}");

    // Not succeeded: 409 saying so.
    let (code, _, body) = revert(&gateway, "fail-main", KEY).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("only a succeeded patch can be reverted"),
        "{body}"
    );
    // Files changed since: 409 naming them, sorted; nothing stored.
    let (code, _, body) = revert(&gateway, "moved-main", MAIN_SUBMITTER).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["conflicts"], json!(["a.ts", "src/b.ts"]));
    assert!(
        body["error"].as_str().unwrap_or("").contains("src/b.ts"),
        "{body}"
    );
    let (code, _) = gateway.get("/v1/patches/revert-moved-main", KEY).await;
    assert_eq!(code, 404);

    // Only nothing or {} as a body.
    for bad in [json!({"id": "x"}), json!([]), json!("revert")] {
        let (code, body) = gateway.post("/v1/patches/rv-main/revert", KEY, &bad).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let ids = gateway.stored_ids().await;
    assert!(!ids.iter().any(|id| id == "revert-moved-main"), "{ids:?}");
}

/// A TCP proxy to `upstream` on a loopback port; sending on the returned channel cuts every
/// connection open then (new ones are served).
fn cutting_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<u32>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let (cut, cuts) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cuts = cuts.clone();
            cuts.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cuts.changed() => {}
                }
            });
        }
    });
    (addr, cut)
}

/// The router's answer to a revert cut (connection lost) is a 503 saying the revert may have
/// been queued, not that nothing was stored.
#[tokio::test]
async fn a_revert_whose_router_call_is_cut_is_a_503_saying_it_may_have_been_queued() {
    let mut proxy = None;
    let gateway = TestGateway::start(|config, _| {
        let upstream = config
            .router_url
            .trim_start_matches("http://")
            .parse()
            .expect("router address");
        let (addr, cut) = cutting_proxy(upstream);
        config.router_url = format!("http://{addr}");
        proxy = Some(cut);
    })
    .await;
    let cut = proxy.expect("proxy");
    let asked = scripted_executor(&gateway).await;
    ended(&gateway, "hang-main", "MAIN", "succeeded").await;
    let url = gateway.url();
    let call = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/patches/hang-main/revert"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("gateway reachable");
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let (code, body) = read(response).await;
        (code, retry_after, body)
    });
    // Cut once the router is waiting for the executor's check.
    wait_until(
        "the executor to be asked",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(20),
        async || match asked.lock().expect("asked").is_empty() {
            true => Err("not asked"),
            false => Ok(()),
        },
    )
    .await;
    cut.send_modify(|cuts| *cuts += 1);
    let (code, retry_after, body) = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(code, 503, "{body}");
    assert_eq!(retry_after.as_deref(), Some("2"));
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("it may have been queued; ask again"),
        "{detail}"
    );
    assert!(!detail.contains("nothing was stored"), "{detail}");
}

/// Log lines written while the guard of [`capture_logs`] lives, on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every JSON log line of this (current-thread) test's gateway, router and all.
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn the_audit_line_of_a_revert_states_its_outcome() {
    let (logs, _guard) = capture_logs();
    let gateway = TestGateway::start(|_, _| {}).await;
    let _asked = scripted_executor(&gateway).await;
    ended(&gateway, "log-main", "MAIN", "succeeded").await;
    ended(&gateway, "moved-log", "MAIN", "succeeded").await;
    ended(&gateway, "fail-log", "MAIN", "failed").await;
    for (id, code) in [
        ("log-main", 202),
        ("log-main", 200),
        ("moved-log", 409),
        ("fail-log", 409),
    ] {
        let (got, _, body) = revert(&gateway, id, KEY).await;
        assert_eq!(got, code, "{id}: {body}");
    }
    let text = String::from_utf8(logs.0.lock().expect("log").clone()).expect("utf-8");
    let outcomes: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "audit" && line["fields"]["message"] == "revert answered")
        .map(|line| {
            (
                line["fields"]["patch_id"].as_str().unwrap_or("").to_owned(),
                line["fields"]["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("log-main", "queued"),
        ("log-main", "replay"),
        ("moved-log", "conflict"),
        ("fail-log", "refused"),
    ]
    .iter()
    .map(|(id, outcome)| ((*id).to_owned(), (*outcome).to_owned()))
    .collect();
    assert_eq!(outcomes, expected, "{text}");
}

#[tokio::test]
async fn a_submitted_document_asking_for_a_revert_is_refused_400_everywhere() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let document = json!({"id": "sneaky", "target": "MAIN", "revert": {"of": "rv-main"}});
    let (code, body) = gateway.post("/v1/patches", KEY, &document).await;
    assert_eq!(code, 400, "{body}");
    let detail = body["detail"].as_str().unwrap_or("");
    assert!(detail.contains("POST /v1/patches/{id}/revert"), "{detail}");
    let (code, body) = gateway
        .post("/v1/patches?dry_run=true", KEY, &document)
        .await;
    assert_eq!(code, 400, "{body}");
    // With edits too (which a revert may not carry): still the same answer, not a 422.
    let mut with_edits = write_patch("sneaky-2");
    with_edits["revert"] = json!({"of": "rv-main"});
    let (code, body) = gateway.post("/v1/patches", KEY, &with_edits).await;
    assert_eq!(code, 400, "{body}");
    // In a chat message the block is refused with the same reason.
    let text = format!("here:\n```json\n{document}\n```\n");
    let (code, body) = gateway
        .post("/v1/messages", KEY, &json!({"text": text}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["submitted"], 0, "{body}");
    assert_eq!(body["blocks"][0]["outcome"], "refused", "{body}");
    assert!(
        body["blocks"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("/revert"),
        "{body}"
    );
    assert!(gateway.stored_ids().await.is_empty());
}

/// `revert-<id>` is the router's: a submitted patch may not take such an id, in any letter
/// case, by any intake (its own id, an Idempotency-Key, a dry run, a chat message block).
#[tokio::test]
async fn a_submitted_patch_may_not_take_a_revert_id_anywhere() {
    let gateway = TestGateway::start(|_, _| {}).await;
    for id in ["revert-rv-main", "REVERT-rv-main", "Revert-x"] {
        for path in ["/v1/patches", "/v1/patches?dry_run=true"] {
            let (code, body) = gateway.post(path, KEY, &write_patch(id)).await;
            assert_eq!(code, 400, "{path} {id}: {body}");
            let detail = body["detail"].as_str().unwrap_or("");
            assert!(detail.contains("reserved"), "{detail}");
        }
    }
    let response = reqwest::Client::new()
        .post(format!("{}/v1/patches", gateway.url()))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("idempotency-key", "revert-keyed")
        .body(r#"{"target":"MAIN","commands":["make test"]}"#)
        .send()
        .await
        .expect("gateway reachable");
    let (code, body) = read(response).await;
    assert_eq!(code, 400, "{body}");
    let text = format!("here:\n```json\n{}\n```\n", write_patch("revert-chat"));
    let (code, body) = gateway
        .post("/v1/messages", KEY, &json!({"text": text}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["submitted"], 0, "{body}");
    assert_eq!(body["blocks"][0]["outcome"], "refused", "{body}");
    assert!(gateway.stored_ids().await.is_empty());
}

const MCP_CLIENT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}, timeout=60) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tool = [t for t in (await session.list_tools()).tools if t.name == "revert_patch"][0]
                a = tool.annotations
                reverted = await session.call_tool("revert_patch", {"id": "mcp-rv"})
                conflicted = await session.call_tool("revert_patch", {"id": "moved-mcp"})
                squatted = await session.call_tool("submit_patch", {"patch": {
                    "id": "revert-mcp-rv", "target": "MAIN",
                    "edits": [{"op": "write", "path": "a.txt", "contents": "x"}]}})
                print(json.dumps({
                    "annotations": {
                        "readOnlyHint": a.read_only_hint,
                        "destructiveHint": a.destructive_hint,
                        "idempotentHint": a.idempotent_hint,
                        "openWorldHint": a.open_world_hint,
                    },
                    "outputSchema": tool.output_schema,
                    "inputSchema": tool.input_schema,
                    "reverted": {"is_error": reverted.is_error, "structured": reverted.structured_content},
                    "conflicted": {"is_error": conflicted.is_error,
                                   "structured": conflicted.structured_content,
                                   "text": conflicted.content[0].text},
                    "squatted": {"is_error": squatted.is_error, "text": squatted.content[0].text},
                }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn the_mcp_revert_patch_tool_is_annotated_and_returns_conflicts_as_an_error_result() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let _asked = scripted_executor(&gateway).await;
    ended(&gateway, "mcp-rv", "MAIN", "succeeded").await;
    ended(&gateway, "moved-mcp", "MAIN", "succeeded").await;
    let url = format!("{}/mcp", gateway.url());
    let (ok, stdout, stderr) = python(MCP_CLIENT, &[&url, KEY]).await;
    assert!(ok, "mcp client failed: {stderr}");
    let out: Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        out["annotations"],
        json!({"readOnlyHint": false, "destructiveHint": true, "idempotentHint": true, "openWorldHint": false})
    );
    assert_eq!(out["outputSchema"]["type"], "object", "{out}");
    assert_eq!(out["inputSchema"]["required"], json!(["id"]), "{out}");
    assert_ne!(out["reverted"]["is_error"], true, "{out}");
    assert_eq!(
        out["reverted"]["structured"]["id"], "revert-mcp-rv",
        "{out}"
    );
    assert_eq!(out["reverted"]["structured"]["replayed"], false, "{out}");
    assert_eq!(out["conflicted"]["is_error"], true, "{out}");
    // No structuredContent that the outputSchema (a patch's view) would not fit: the
    // `{error, conflicts}` JSON is the text, as every other error result is text.
    assert_eq!(out["conflicted"]["structured"], Value::Null, "{out}");
    let conflict: Value =
        serde_json::from_str(out["conflicted"]["text"].as_str().unwrap_or("")).expect("json text");
    assert_eq!(conflict["conflicts"], json!(["a.ts", "src/b.ts"]), "{out}");
    assert!(
        conflict["error"]
            .as_str()
            .unwrap_or("")
            .contains("src/b.ts"),
        "{out}"
    );
    // A submitted patch may not take a revert id here either.
    assert_eq!(out["squatted"]["is_error"], true, "{out}");
    assert!(
        out["squatted"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("reserved"),
        "{out}"
    );
}
