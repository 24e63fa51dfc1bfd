//! The manual's API reference (issue 27): `docs/src/reference/api.md` is rendered from the
//! OpenAPI document a running gateway serves at `GET /openapi.json`, so the page cannot drift
//! from the API. `GHOST_BLESS=1 cargo nextest run -p gateway reference` rewrites the page;
//! otherwise the test fails when the committed page differs from what the document renders to.
//!
//! Per operation: method, path, operation id, description, the scope a key needs, parameters,
//! request body and response codes with their schema names.

use std::fmt::Write as _;

use serde_json::Value;

use crate::helpers::{KEY, TestGateway};

/// The scope a key needs per operation. The document says only "bearer" (scopes are checked in
/// the handlers: `caller.require(Scope::…)` in `gateway::patches`, `api_keys`,
/// `executor_tokens`), so they are listed here; an operation missing from this table fails
/// the test, so a new route cannot be published without saying who may call it.
const SCOPES: &[(&str, &str)] = &[
    ("getGuide", "none: public"),
    (
        "submitPatch",
        "`submit` (with `dry_run=true`: `submit` and `read`)",
    ),
    ("listPatches", "`read`"),
    ("getPatch", "`read`"),
    ("getPatchEvents", "`read`"),
    ("cancelPatch", "`admin`"),
    ("retryPatch", "`admin`"),
    ("revertPatch", "`admin`, or `submit` on the patch's target"),
    ("submitMessage", "`submit`"),
    ("listTargets", "`read`"),
    ("pauseTarget", "`admin`"),
    ("resumeTarget", "`admin`"),
    ("listExecutors", "`read`"),
    ("listAlerts", "`read`"),
    (
        "createApiKey",
        "`admin` (the new key is never wider than its creator's)",
    ),
    ("listApiKeys", "`admin`"),
    ("deleteApiKey", "`admin`"),
    ("createExecutorToken", "`admin`"),
    ("listExecutorTokens", "`admin`"),
    ("revokeExecutorToken", "`admin`"),
];

const METHODS: [&str; 8] = [
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// Markdown text from the document: `<` and `>` outside code spans escaped, so a `<key>` in a
/// description is shown, not read as an HTML tag.
fn prose(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// One line of table text: no newline, no unescaped `|`.
fn cell(text: &str) -> String {
    prose(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The name of a schema: `$ref`'s last component, `X[]` for an array of them, else its type.
fn schema_name(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        return reference.rsplit('/').next().unwrap_or(reference).to_owned();
    }
    if let Some(choices) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        return choices
            .iter()
            .map(schema_name)
            .collect::<Vec<_>>()
            .join(" or ");
    }
    match &schema["type"] {
        Value::String(kind) if kind == "array" => format!("{}[]", schema_name(&schema["items"])),
        Value::String(kind) => kind.clone(),
        Value::Array(kinds) => kinds
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "object".to_owned(),
    }
}

/// `media: Schema` for each media type of a `content` map.
fn content(content: &Value) -> String {
    content
        .as_object()
        .map(|media| {
            media
                .iter()
                .map(|(kind, body)| format!("`{kind}`: {}", schema_name(&body["schema"])))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

/// The page the document renders to.
fn render(document: &Value) -> String {
    let mut page = String::from(
        "<!-- Generated from the gateway's OpenAPI document (GET /openapi.json) by crates/gateway/tests/api/reference.rs: do not edit; run `GHOST_BLESS=1 cargo nextest run -p gateway reference` to rewrite it. -->\n\n# API reference\n\n",
    );
    page.push_str(
        "The gateway's REST API, rendered from the OpenAPI 3.1 document it serves at `GET /openapi.json` \
         (the one a Custom GPT Action imports). Every operation but `getGuide` takes an API key as \
         `Authorization: Bearer <key>` (`X-Api-Key: <key>` also works); the scope it needs is listed \
         with it (`admin` implies the others). Errors are `application/problem+json` documents. \
         Schemas are named as in the document's `components.schemas`: read them there, or import the \
         document into any OpenAPI viewer.\n\n",
    );
    if let Some(description) =
        document["components"]["securitySchemes"]["bearer"]["description"].as_str()
    {
        let _ = writeln!(page, "Authentication (`bearer`): {}\n", prose(description));
    }
    let paths = document["paths"].as_object().expect("paths");
    let mut index = String::new();
    let mut body = String::new();
    for (path, item) in paths {
        for method in METHODS {
            let operation = &item[method];
            if !operation.is_object() {
                continue;
            }
            let id = operation["operationId"].as_str().expect("an operationId");
            let scope = SCOPES
                .iter()
                .find(|(name, _)| *name == id)
                .map(|(_, scope)| *scope)
                .unwrap_or_else(|| {
                    panic!(
                        "operation {id} ({method} {path}) is not in SCOPES: add the scope it needs"
                    )
                });
            let upper = method.to_uppercase();
            let summary = operation["summary"]
                .as_str()
                .or(operation["description"].as_str())
                .unwrap_or("");
            let first = summary
                .split(". ")
                .next()
                .unwrap_or(summary)
                .trim_end_matches('.');
            let _ = writeln!(
                index,
                "| [`{upper} {path}`](#{}) | {} |",
                anchor(id),
                cell(first)
            );
            let _ = writeln!(body, "## {id}\n\n`{upper} {path}`\n");
            if let Some(description) = operation["description"].as_str() {
                let _ = writeln!(body, "{}\n", prose(description.trim()));
            }
            let public = operation["security"].is_null();
            let _ = writeln!(
                body,
                "**Scope:** {scope}{}\n",
                if public {
                    ""
                } else {
                    " (API key as a Bearer token)"
                }
            );
            if let Some(parameters) = operation["parameters"].as_array().filter(|p| !p.is_empty()) {
                body.push_str("**Parameters:**\n\n| name | in | required | schema | description |\n|---|---|---|---|---|\n");
                for parameter in parameters {
                    let mut schema = schema_name(&parameter["schema"]);
                    if let Some(pattern) = parameter["schema"]["pattern"].as_str() {
                        let _ = write!(schema, ", pattern `{pattern}`");
                    }
                    let _ = writeln!(
                        body,
                        "| `{}` | {} | {} | {} | {} |",
                        parameter["name"].as_str().unwrap_or(""),
                        parameter["in"].as_str().unwrap_or(""),
                        if parameter["required"] == true {
                            "yes"
                        } else {
                            "no"
                        },
                        cell(&schema),
                        cell(parameter["description"].as_str().unwrap_or(""))
                    );
                }
                body.push('\n');
            }
            if operation["requestBody"].is_object() {
                let _ = writeln!(
                    body,
                    "**Request body**{}: {}\n",
                    if operation["requestBody"]["required"] == true {
                        " (required)"
                    } else {
                        ""
                    },
                    content(&operation["requestBody"]["content"])
                );
            }
            if let Some(responses) = operation["responses"].as_object() {
                body.push_str("**Responses:**\n\n| code | description | body |\n|---|---|---|\n");
                for (code, response) in responses {
                    let mut description = response["description"].as_str().unwrap_or("").to_owned();
                    if let Some(headers) = response["headers"].as_object().filter(|h| !h.is_empty())
                    {
                        let names: Vec<String> = headers.keys().map(|h| format!("`{h}`")).collect();
                        let _ = write!(description, " (headers: {})", names.join(", "));
                    }
                    let _ = writeln!(
                        body,
                        "| {code} | {} | {} |",
                        cell(&description),
                        cell(&content(&response["content"]))
                    );
                }
                body.push('\n');
            }
        }
    }
    page.push_str("| operation | what it does |\n|---|---|\n");
    page.push_str(&index);
    page.push('\n');
    page.push_str(&body);
    page.truncate(page.trim_end().len());
    page.push('\n');
    page
}

/// The id mdBook gives a heading made of one operation id: lowercase.
fn anchor(id: &str) -> String {
    id.to_lowercase()
}

#[tokio::test]
async fn the_manuals_api_reference_is_rendered_from_the_openapi_document() {
    let gateway = TestGateway::start(|_, _| {}).await;
    let (code, document) = gateway.get("/openapi.json", KEY).await;
    assert_eq!(code, 200, "{document}");
    let rendered = render(&document);

    // Every operation of the document is on the page, and every listed scope is still used.
    let mut operations = 0;
    for item in document["paths"].as_object().expect("paths").values() {
        for method in METHODS {
            if let Some(id) = item[method]["operationId"].as_str() {
                operations += 1;
                assert!(
                    rendered.contains(&format!("## {id}\n")),
                    "{id} is not on the page"
                );
            }
        }
    }
    assert!(
        operations >= 20,
        "only {operations} operations in the document"
    );
    for (id, _) in SCOPES {
        assert!(
            rendered.contains(&format!("## {id}\n")),
            "SCOPES lists {id}, which the document no longer has"
        );
    }

    let file = ghost_testkit::repo_root().join("docs/src/reference/api.md");
    if std::env::var_os("GHOST_BLESS").is_some_and(|value| value == "1") {
        std::fs::create_dir_all(file.parent().expect("a parent")).expect("reference dir");
        std::fs::write(&file, &rendered).expect("write the reference");
    }
    let committed = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/src/reference/api.md differs from the OpenAPI document: run GHOST_BLESS=1 cargo nextest run -p gateway reference"
    );
}
