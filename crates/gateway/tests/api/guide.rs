//! The guide for models (issue 27): `GET /v1/guide` in its three versions, public and in the
//! OpenAPI document; the MCP prompt `ghost_patch_guide` and resource `ghost://guide` as the
//! Python SDK lists and reads them; and the docs/ templates rendered from the same source.

use gateway::guide::{self, Version};

use crate::helpers::{KEY, TestGateway, python};

async fn fetch(gateway: &TestGateway, query: &str) -> (u16, String, String) {
    let response = gateway
        .http
        .get(format!("{}/v1/guide{query}", gateway.url()))
        .send()
        .await
        .expect("gateway reachable");
    let code = response.status().as_u16();
    let media = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap_or("").to_owned())
        .unwrap_or_default();
    (code, media, response.text().await.expect("text"))
}

#[tokio::test]
async fn the_guide_is_served_without_a_credential_in_three_versions() {
    let gateway = TestGateway::start(|_, _| {}).await;

    let (code, media, long) = fetch(&gateway, "").await;
    assert_eq!(
        (code, media.as_str()),
        (200, "text/markdown; charset=utf-8")
    );
    for needle in [
        "\"op\": \"write\"",
        "\"op\": \"replace\"",
        "\"op\": \"diff\"",
        "\"op\": \"delete\"",
        "\"op\": \"rename\"",
        "\"op\": \"chmod\"",
        "\"op\": \"mkdir\"",
        "*** Begin Patch",
        "--- a/src/app.py",
        "Idempotency-Key",
        "depends_on",
        "dry_run=true",
        "wait=40s",
        "revert-",
        "diagnostics",
        "conflicts",
        "trailing whitespace",
        "45 s",
        "100,000 characters",
    ] {
        assert!(long.contains(needle), "the long guide lacks {needle:?}");
    }
    // The source's maintainer note and example attributes are not served.
    assert!(!long.contains("ghost-example"), "attributes leaked");
    assert!(!long.contains("<!--"), "markers leaked");
    assert_eq!(fetch(&gateway, "?format=long").await.2, long);

    let (code, media, gpt) = fetch(&gateway, "?format=gpt").await;
    assert_eq!(
        (code, media.as_str()),
        (200, "text/markdown; charset=utf-8")
    );
    assert!(
        gpt.chars().count() <= guide::GPT_MAX_CHARS,
        "the GPT version has {} characters, over {}",
        gpt.chars().count(),
        guide::GPT_MAX_CHARS
    );
    assert!(
        gpt.contains("wait=40s") && gpt.contains("submitPatch"),
        "{gpt}"
    );
    assert!(
        !gpt.contains("submit_patch"),
        "MCP tool names in the GPT version"
    );

    let (code, _, system) = fetch(&gateway, "?format=system-prompt").await;
    assert_eq!(code, 200);
    assert!(system.chars().count() <= guide::GPT_MAX_CHARS);
    assert!(system.contains("get_patch") && system.contains("ghost_patch_guide"));
    assert!(
        !system.contains("submitPatch"),
        "GPT operation names in the MCP version"
    );

    let (code, media, problem) = fetch(&gateway, "?format=tiny").await;
    assert_eq!((code, media.as_str()), (400, "application/problem+json"));
    assert!(
        problem.contains("format=\\\"tiny\\\"") && problem.contains("system-prompt"),
        "{problem}"
    );
}

#[tokio::test]
async fn the_guide_is_a_public_operation_of_the_openapi_document() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, document) = gateway.get("/openapi.json", KEY).await;
    assert_eq!(code, 200);
    let operation = &document["paths"]["/v1/guide"]["get"];
    assert_eq!(operation["operationId"], "getGuide", "{operation}");
    assert!(operation["security"].is_null(), "the guide needs no key");
    assert!(
        operation["responses"]["200"]["content"]["text/markdown; charset=utf-8"].is_object(),
        "{operation}"
    );
    assert_eq!(operation["parameters"][0]["name"], "format", "{operation}");
}

/// A generated template: a note naming its source, then the rendered version.
fn template(version: Version, what: &str) -> String {
    format!(
        "<!-- {what} Generated from docs/guide/guide.md ({} version): do not edit; after changing the source run `GHOST_BLESS=1 cargo nextest run -p gateway guide` to rewrite this file. -->\n\n{}",
        version.as_str(),
        guide::render(guide::SOURCE, version)
    )
}

#[test]
fn the_docs_templates_are_rendered_from_the_guide_source() {
    let root = ghost_testkit::repo_root();
    let bless = std::env::var_os("GHOST_BLESS").is_some_and(|value| value == "1");
    let files = [
        (
            "docs/gpt-instructions.md",
            template(
                Version::Gpt,
                "The instructions of a Custom GPT: paste everything below this comment into its Instructions field.",
            ),
        ),
        (
            "docs/mcp-system-prompt.md",
            template(
                Version::SystemPrompt,
                "A system-prompt snippet for MCP clients connected to Ghost Runner: paste everything below this comment.",
            ),
        ),
    ];
    for (path, expected) in files {
        let file = root.join(path);
        if bless {
            std::fs::write(&file, &expected).expect("write the template");
        }
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            committed == expected,
            "{path} differs from the guide's source: run GHOST_BLESS=1 cargo nextest run -p gateway guide"
        );
    }
    // The committed source is the one the gateway serves.
    let source = std::fs::read_to_string(root.join("docs/guide/guide.md")).expect("source");
    assert_eq!(source, guide::SOURCE);
}

const MCP_CLIENT: &str = r#"
import sys, json, asyncio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

async def main(url, key):
    async with httpx2.AsyncClient(headers={"Authorization": "Bearer " + key}) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                init = await session.initialize()
                prompts = (await session.list_prompts()).prompts
                prompt = await session.get_prompt("ghost_patch_guide")
                resources = (await session.list_resources()).resources
                read = await session.read_resource("ghost://guide")
                try:
                    await session.get_prompt("nope")
                    missing = "no error"
                except Exception as err:
                    missing = str(err)
                print(json.dumps({
                    "capabilities": {"prompts": init.capabilities.prompts is not None,
                                     "resources": init.capabilities.resources is not None},
                    "prompts": [p.name for p in prompts],
                    "prompt": [m.content.text for m in prompt.messages],
                    "roles": [m.role for m in prompt.messages],
                    "resources": [[str(r.uri), r.mime_type] for r in resources],
                    "read": [c.text for c in read.contents],
                    "missing": missing,
                }))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

#[tokio::test]
async fn the_python_mcp_sdk_lists_and_reads_the_guide_prompt_and_resource() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let url = format!("{}/mcp", gateway.url());
    let (ok, stdout, stderr) = python(MCP_CLIENT, &[&url, KEY]).await;
    assert!(ok, "mcp client failed: {stderr}");
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    let long = guide::render(guide::SOURCE, Version::Long);
    assert_eq!(
        out["capabilities"],
        serde_json::json!({"prompts": true, "resources": true})
    );
    assert_eq!(out["prompts"], serde_json::json!(["ghost_patch_guide"]));
    assert_eq!(out["prompt"], serde_json::json!([long]));
    assert_eq!(out["roles"], serde_json::json!(["user"]));
    assert_eq!(
        out["resources"],
        serde_json::json!([["ghost://guide", "text/markdown"]])
    );
    assert_eq!(out["read"], serde_json::json!([long]));
    assert!(
        out["missing"]
            .as_str()
            .unwrap_or("")
            .contains("ghost_patch_guide"),
        "{out}"
    );
}
