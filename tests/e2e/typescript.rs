//! The loop a model relies on, with real TypeScript (issue 20, must show): a patch that
//! introduces a type error is rolled back, and the report (`GET /v1/patches/{id}`, the MCP
//! `get_patch` result), the summary and the Slack message say where: `src/a.ts:3:9 TS2322`.
//! The fixing patch then succeeds. tsc is the pinned one `scripts/node-env` installs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use executor::{CommandPolicy, OwnerCheck, TargetPolicy, When};
use serde_json::{Value, json};

use crate::helpers::{API_KEY, TestSystem, spawn_system_with};

/// The pinned tsc (absolute, symlinks resolved); `None`, and the test is skipped, only when
/// node itself is missing.
fn tsc() -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("skipped: node is not installed, so tsc cannot run");
        return None;
    }
    let bin = ghost_testkit::repo_root().join("tests/node/node_modules/.bin/tsc");
    let path: PathBuf = bin
        .canonicalize()
        .unwrap_or_else(|err| panic!("{} is missing ({err}): run scripts/node-env", bin.display()));
    Some(path.display().to_string())
}

const TSCONFIG: &str = r#"{
  "compilerOptions": { "strict": true, "noEmit": true, "target": "es2020", "module": "commonjs" },
  "include": ["src"]
}
"#;

const GOOD: &str = "export const a: number = 1;\n\nexport function f(): number {\n  return a;\n}\n";
/// Line 3, column 9: `b` is declared a number and given a string.
const TYPE_ERROR: &str = "export const a: number = 1;\nexport function f(): number {\n  const b: number = \"two\";\n  return a + b;\n}\n";
const FIXED: &str = "export const a: number = 1;\nexport function f(): number {\n  const b: number = 2;\n  return a + b;\n}\n";

/// A patch writing `src/a.ts`. It names no check: tsc is the target's owner check, which the
/// patch can neither skip nor change.
fn ts_patch(id: &str, contents: &str) -> Value {
    json!({
        "id": id,
        "target": "MAIN",
        "description": format!("typescript {id}"),
        "edits": [{"op": "write", "path": "src/a.ts", "contents": contents}],
    })
}

async fn start(tsc: &str) -> TestSystem {
    let allowed = tsc.to_owned();
    let system = spawn_system_with(true, move |config| {
        let executor = config.executor.as_mut().expect("an executor");
        executor.targets.insert(
            "MAIN".to_owned(),
            TargetPolicy {
                // Patches may run nothing; the owner's check runs all the same.
                commands: CommandPolicy::Deny,
                checks: vec![OwnerCheck {
                    name: "tsc".to_owned(),
                    run: format!("{allowed} --noEmit -p ."),
                    timeout: None,
                    when: When::Changed("src/**/*.ts".to_owned()),
                }],
                ..TargetPolicy::default()
            },
        );
    })
    .await;
    std::fs::create_dir_all(system.workspace.join("src")).expect("src dir");
    std::fs::write(system.workspace.join("tsconfig.json"), TSCONFIG).expect("tsconfig");
    std::fs::write(system.workspace.join("src/a.ts"), GOOD).expect("a.ts");
    system
}

/// `get_patch` through the MCP endpoint with the Python SDK, as a model's client calls it.
async fn mcp_get_patch(system: &TestSystem, id: &str) -> Value {
    const CLIENT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key, id):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                got = await session.call_tool("get_patch", {"id": id})
                print(got.content[0].text)

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
"#;
    let url = format!("{}/mcp", system.gateway());
    let output = tokio::process::Command::new(ghost_testkit::python())
        .arg("-c")
        .arg(CLIENT)
        .args([url.as_str(), API_KEY, id])
        .output()
        .await
        .expect("python runs");
    assert!(
        output.status.success(),
        "mcp client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("get_patch answers JSON")
}

#[tokio::test]
async fn a_type_error_is_rolled_back_with_its_tsc_diagnostic_and_the_fix_succeeds() {
    let Some(tsc) = tsc() else {
        return;
    };
    let system = start(&tsc).await;

    let response = system.submit(&ts_patch("ts-break", TYPE_ERROR)).await;
    assert_eq!(
        response.status().as_u16(),
        202,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let broken = system.wait_finished("ts-break").await;
    assert_eq!(broken["status"], "rolled_back", "{broken}");
    assert_eq!(
        std::fs::read_to_string(system.workspace.join("src/a.ts")).expect("a.ts"),
        GOOD,
        "the type error was rolled back"
    );
    let expected = json!({
        "path": "src/a.ts", "line": 3, "column": 9, "severity": "error", "code": "TS2322",
        "message": "Type 'string' is not assignable to type 'number'.", "tool": "tsc",
        "check": "tsc",
    });
    assert_eq!(
        broken["report"]["diagnostics"],
        json!([expected]),
        "{broken}"
    );
    let summary = broken["summary"].as_str().expect("summary markdown");
    assert!(
        summary.contains(
            "| `src/a.ts:3:9` | TS2322 | Type 'string' is not assignable to type 'number'. |"
        ),
        "{summary}"
    );
    let through_mcp = mcp_get_patch(&system, "ts-break").await;
    assert_eq!(
        through_mcp["report"]["diagnostics"],
        json!([expected]),
        "{through_mcp}"
    );

    // Slack: the thread's message lists it, in mrkdwn (no `#` heading, no table).
    let posts = system
        .slack
        .wait_until(Duration::from_secs(20), |requests| {
            requests
                .iter()
                .any(|request| request.body.to_string().contains("TS2322"))
        })
        .await;
    let post = posts
        .iter()
        .find(|request| request.body.to_string().contains("TS2322"))
        .expect("a Slack message with the diagnostic");
    let texts: Vec<String> = post.body["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|block| block["text"]["text"].as_str().map(str::to_owned))
        .collect();
    let excerpt = texts
        .iter()
        .find(|text| text.contains("TS2322"))
        .expect("the excerpt block");
    assert!(
        excerpt
            .contains("• `src/a.ts:3:9` TS2322 Type 'string' is not assignable to type 'number'."),
        "{excerpt}"
    );
    assert!(
        !excerpt.lines().any(|line| line.starts_with('#')),
        "{excerpt}"
    );

    let response = system.submit(&ts_patch("ts-fix", FIXED)).await;
    assert_eq!(response.status().as_u16(), 202);
    let fixed = system.wait_finished("ts-fix").await;
    assert_eq!(fixed["status"], "succeeded", "{fixed}");
    assert_eq!(fixed["report"]["diagnostics"], json!([]), "{fixed}");
    assert_eq!(
        std::fs::read_to_string(system.workspace.join("src/a.ts")).expect("a.ts"),
        FIXED
    );
    system.system.shutdown().await.expect("clean shutdown");
}
