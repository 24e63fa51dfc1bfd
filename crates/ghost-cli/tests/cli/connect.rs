//! `ghost connect <client>` against a real system: every client's snippet parses in its own
//! format with that client's documented keys, `--key-scope` makes a key that submits and reads
//! but is refused admin routes, the generic snippet's URL and header connect the `mcp` Python
//! SDK, ChatGPT gets its import URL, auth, privacy page and instructions, and an unknown
//! client is a usage error naming the known ones.

use serde_json::Value;

use crate::helpers::{API_KEY, Env, TestSystem, spawn_system};

const CLIENTS: [&str; 7] = [
    "chatgpt",
    "claude-desktop",
    "claude-code",
    "cursor",
    "codex",
    "vscode",
    "generic-mcp",
];

async fn connect(system: &TestSystem, args: &[&str]) -> Value {
    let mut argv = vec!["--json", "connect"];
    argv.extend_from_slice(args);
    let run = system.ghost(&argv).await;
    run.expect(0);
    assert!(
        !run.stdout.contains(API_KEY),
        "the caller's own key leaked: {run:?}"
    );
    run.json()
}

/// `Authorization: Bearer <key>` in a JSON `headers` object.
fn bearer(headers: &Value) -> &str {
    headers["Authorization"]
        .as_str()
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("no bearer header in {headers}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_a_snippet_in_its_own_format() {
    let system = spawn_system().await;
    let mcp_url = format!("{}/mcp", system.url);
    for client in CLIENTS {
        let out = connect(&system, &[client]).await;
        assert_eq!(out["client"], client, "{out}");
        assert_eq!(out["url"], system.url.as_str(), "{out}");
        assert_eq!(out["mcp_url"], mcp_url.as_str(), "{out}");
        assert_eq!(
            out["openapi_url"],
            format!("{}/openapi.json", system.url),
            "{out}"
        );
        assert_eq!(
            out["privacy_url"],
            format!("{}/privacy", system.url),
            "{out}"
        );
        assert!(
            out["path_hint"].as_str().is_some_and(|h| !h.is_empty()),
            "{out}"
        );
        assert!(out.get("key").is_none(), "{out}");
        let snippet = out["snippet"].as_str().expect("snippet");
        match out["format"].as_str().expect("format") {
            "json" => {
                let parsed: Value = serde_json::from_str(snippet).expect("the snippet is JSON");
                match client {
                    // Claude Desktop: mcpServers.<name>.command/args/env, through mcp-remote.
                    "claude-desktop" => {
                        let server = &parsed["mcpServers"]["ghost"];
                        assert_eq!(server["command"], "npx");
                        let args: Vec<&str> = server["args"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|a| a.as_str().unwrap())
                            .collect();
                        assert!(args.contains(&"mcp-remote") && args.contains(&mcp_url.as_str()));
                        assert!(args.contains(&"--header"), "{args:?}");
                        assert_eq!(server["env"]["AUTH_HEADER"], "Bearer <YOUR_API_KEY>");
                    }
                    // Claude Code's .mcp.json and Cursor: mcpServers.<name>.url/headers.
                    "claude-code" | "cursor" => {
                        let server = &parsed["mcpServers"]["ghost"];
                        assert_eq!(server["url"], mcp_url.as_str());
                        assert_eq!(bearer(&server["headers"]), "<YOUR_API_KEY>");
                        if client == "claude-code" {
                            assert_eq!(server["type"], "http");
                            let command = out["command"].as_str().expect("command line");
                            assert_eq!(
                                command,
                                format!(
                                    "claude mcp add --transport http ghost '{mcp_url}' --header 'Authorization: Bearer <YOUR_API_KEY>'"
                                ),
                            );
                        }
                    }
                    // VS Code: servers.<name> with type http.
                    "vscode" => {
                        let server = &parsed["servers"]["ghost"];
                        assert_eq!(server["type"], "http");
                        assert_eq!(server["url"], mcp_url.as_str());
                        assert_eq!(bearer(&server["headers"]), "<YOUR_API_KEY>");
                    }
                    "generic-mcp" => {
                        assert_eq!(parsed["url"], mcp_url.as_str());
                        assert_eq!(bearer(&parsed["headers"]), "<YOUR_API_KEY>");
                    }
                    other => panic!("{other} should not be JSON"),
                }
            }
            "toml" => {
                assert_eq!(client, "codex");
                let parsed: toml::Table = toml::from_str(snippet).expect("the snippet is TOML");
                let server = &parsed["mcp_servers"]["ghost"];
                assert_eq!(server["url"].as_str(), Some(mcp_url.as_str()));
                assert_eq!(
                    server["http_headers"]["Authorization"].as_str(),
                    Some("Bearer <YOUR_API_KEY>")
                );
            }
            "markdown" => {
                assert_eq!(client, "chatgpt");
                assert!(!snippet.trim().is_empty());
                assert_eq!(out["auth"]["type"], "API Key");
                assert_eq!(out["auth"]["auth_type"], "Bearer");
                assert_eq!(out["scopes"], serde_json::json!(["submit", "read"]));
            }
            other => panic!("unknown format {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatgpt_gets_the_import_url_auth_privacy_page_and_instructions() {
    let system = spawn_system().await;
    let run = system.ghost(&["connect", "chatgpt"]).await;
    run.expect(0);
    for text in [
        format!("{}/openapi.json", system.url),
        "API Key, Auth Type Bearer".to_owned(),
        format!("{}/privacy", system.url),
        "Instructions to paste".to_owned(),
        "<YOUR_API_KEY>".to_owned(),
    ] {
        assert!(run.stdout.contains(&text), "{text}: {}", run.stdout);
    }
    // The instructions come from the gateway's guide when it serves one, else built in.
    let http = reqwest::Client::new();
    let guide = http
        .get(format!("{}/v1/guide?format=gpt", system.url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    let out = connect(&system, &["chatgpt"]).await;
    if guide.status().is_success() {
        assert_eq!(out["instructions_source"], "gateway");
        assert_eq!(out["snippet"], guide.text().await.unwrap().as_str());
    } else {
        assert_eq!(out["instructions_source"], "built-in");
        assert!(out["snippet"].as_str().unwrap().contains("/v1/guide"));
    }
    let privacy = reqwest::get(out["privacy_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(privacy.status().as_u16(), 200);
    assert!(privacy.text().await.unwrap().contains("What it stores"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_scope_key_submits_and_reads_but_is_refused_admin_routes() {
    let system = spawn_system().await;
    let out = connect(&system, &["cursor", "--key-scope", "submit,read"]).await;
    let name = out["key"]["name"].as_str().expect("key name");
    assert!(name.starts_with("cursor-"), "{out}");
    let key = out["key"]["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("gr_"), "{out}");
    let parsed: Value = serde_json::from_str(out["snippet"].as_str().unwrap()).unwrap();
    assert_eq!(bearer(&parsed["mcpServers"]["ghost"]["headers"]), key);

    let http = reqwest::Client::new();
    let patch: Value = serde_json::from_str(&crate::helpers::write_patch(
        "connect-1",
        "MAIN",
        "c.txt",
        "hi",
    ))
    .unwrap();
    let submitted = http
        .post(format!("{}/v1/patches", system.url))
        .bearer_auth(&key)
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status().as_u16(), 202);
    let read = http
        .get(format!("{}/v1/patches/connect-1", system.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    for admin in ["/v1/keys", "/v1/executor-tokens"] {
        let refused = http
            .get(format!("{}{admin}", system.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 403, "{admin}");
    }
    let cancel = http
        .post(format!("{}/v1/patches/connect-1/cancel", system.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status().as_u16(), 403);
    // The key cannot make a wider one either.
    let run = system
        .env
        .ghost_with(
            &["connect", "codex", "--key-scope", "admin"],
            &[("GHOST_API_KEY", key.as_str())],
            b"",
        )
        .await;
    run.expect(11);
    // A bad scope is refused by name before any call.
    let run = system
        .ghost(&["connect", "cursor", "--key-scope", "root"])
        .await;
    run.expect(10);
    assert!(run.stderr.contains("root"), "{run:?}");
}

const MCP_CLIENT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(snippet):
    config = json.loads(snippet)
    async with httpx2.AsyncClient(headers=config["headers"]) as http:
        async with streamable_http_client(config["url"], http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = sorted(tool.name for tool in (await session.list_tools()).tools)
                print(json.dumps({"tools": tools}))

asyncio.run(main(sys.argv[1]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_snippet_connects_the_python_mcp_sdk() {
    let system = spawn_system().await;
    let out = connect(&system, &["generic-mcp", "--key-scope", "submit,read"]).await;
    let snippet = out["snippet"].as_str().expect("snippet");
    let output = tokio::process::Command::new(ghost_testkit::python())
        .arg("-c")
        .arg(MCP_CLIENT)
        .arg(snippet)
        .output()
        .await
        .expect("python runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mcp client failed: {stderr}");
    let listed: Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("json");
    let tools: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tools.contains(&"submit_patch") && tools.contains(&"get_patch"),
        "{tools:?}"
    );
}

#[tokio::test]
async fn an_unknown_client_exits_2_naming_the_known_ones() {
    let env = Env::empty();
    let run = env.ghost(&["connect", "copilot-chat"]).await;
    run.expect(2);
    for client in CLIENTS {
        assert!(run.stderr.contains(client), "{client}: {run:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_public_url_is_the_one_given_to_the_client() {
    let env = Env::empty();
    let data_dir = env.scratch.path().join("state");
    let options = ghost_cli::system::LocalOptions {
        data_dir,
        workspaces: Vec::new(),
        targets: vec!["MAIN".to_owned()],
        gateway_listen: "127.0.0.1:0".parse().unwrap(),
        api_key: API_KEY.to_owned(),
        slack: None,
    };
    let system = ghost_cli::system::SystemBuilder::new(&options)
        .gateway(|gateway| gateway.public_url = "https://ghost.example.com/".to_owned())
        .start()
        .await
        .expect("system starts");
    let url = system.gateway_url().expect("gateway");
    let run = env
        .ghost_with(
            &["--json", "connect", "vscode"],
            &[("GHOST_URL", url.as_str()), ("GHOST_API_KEY", API_KEY)],
            b"",
        )
        .await;
    run.expect(0);
    let out = run.json();
    assert_eq!(out["url"], "https://ghost.example.com", "{out}");
    assert_eq!(out["mcp_url"], "https://ghost.example.com/mcp", "{out}");
    assert_eq!(
        out["privacy_url"], "https://ghost.example.com/privacy",
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_limited_to_targets_makes_a_key_limited_to_the_same_targets() {
    let system = spawn_system().await;
    let http = reqwest::Client::new();
    let issued: Value = http
        .post(format!("{}/v1/keys", system.url))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({"name": "main-admin", "scopes": ["admin"], "targets": ["MAIN"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = issued["key"].as_str().expect("admin key").to_owned();
    let run = system
        .env
        .ghost_with(
            &["--json", "connect", "cursor", "--key-scope", "submit,read"],
            &[("GHOST_API_KEY", admin.as_str())],
            b"",
        )
        .await;
    run.expect(0);
    let out = run.json();
    assert_eq!(out["key"]["targets"], serde_json::json!(["MAIN"]), "{out}");
    let key = out["key"]["key"].as_str().expect("key");
    let refused = http
        .get(format!("{}/v1/patches?target=LOCKED", system.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403, "limited like its creator");
}
