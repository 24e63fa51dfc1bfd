//! The `outputSchema` of every MCP tool: JSON Schema objects describing the structured result
//! (`structuredContent`) each tool answers with. Written out here, not derived: the answer
//! types carry OpenAPI schemas (utoipa), and an MCP client validates the result against this.
//! Extra properties are allowed, so a field added to an answer does not break old clients.

use std::sync::Arc;

use serde_json::{Value, json};

type Schema = Arc<serde_json::Map<String, Value>>;

fn object(properties: Value, required: &[&str]) -> Schema {
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
    });
    match schema {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(serde_json::Map::new()),
    }
}

fn patch_view_properties() -> Value {
    json!({
        "id": {"type": "string"},
        "target": {"type": "string"},
        "status": {"type": "string", "description": "e.g. queued, applying, succeeded, rolled_back"},
        "attempt": {"type": "integer"},
        "description": {"type": "string"},
        "error": {"type": "string"},
        "trace_id": {"type": "string"},
        "created_unix_ms": {"type": "integer"},
        "updated_unix_ms": {"type": "integer"},
    })
}

const PATCH_VIEW_REQUIRED: [&str; 4] = ["id", "target", "status", "attempt"];

/// `submit_patch`: the accepted patch; with a progressToken, its state when the call returns.
pub fn submitted() -> Schema {
    object(
        json!({
            "id": {"type": "string"},
            "target": {"type": "string"},
            "status": {"type": "string"},
            "attempt": {"type": "integer"},
            "trace_id": {"type": "string"},
            "replayed": {"type": "boolean"},
            "shape": {"type": "string"},
            "ignored": {"type": "array", "items": {"type": "string"}},
            "warnings": {"type": "array", "items": {"type": "string"}},
            "id_derived": {"type": "boolean"},
            "error": {"type": "string", "description": "why it did not succeed (after waiting)"},
            "follow_error": {"type": "string", "description": "why the patch, queued, could not be followed (no read scope, the router did not answer)"},
        }),
        &["id", "target", "status"],
    )
}

/// `get_patch`: the patch with its summary and report.
pub fn detail() -> Schema {
    let mut properties = patch_view_properties();
    properties["summary"] = json!({"type": ["string", "null"]});
    properties["report"] = json!({"type": ["object", "null"]});
    object(properties, &PATCH_VIEW_REQUIRED)
}

/// `list_patches`: a page.
pub fn page() -> Schema {
    let view = json!({
        "type": "object",
        "properties": patch_view_properties(),
        "required": PATCH_VIEW_REQUIRED,
    });
    object(
        json!({
            "patches": {"type": "array", "items": view},
            "next_page_token": {"type": "string"},
        }),
        &["patches", "next_page_token"],
    )
}

/// `cancel_patch`: the state after cancelling.
pub fn view() -> Schema {
    object(patch_view_properties(), &PATCH_VIEW_REQUIRED)
}

/// `check_patch`: the dry run's answer.
pub fn dry_run() -> Schema {
    let edit = json!({
        "type": "object",
        "properties": {
            "op": {"type": "string"},
            "path": {"type": "string"},
            "match_step": {"type": "string"},
            "added": {"type": "integer"},
            "removed": {"type": "integer"},
            "from": {"type": "string"},
        },
        "required": ["op", "path"],
    });
    object(
        json!({
            "dry_run": {"type": "boolean"},
            "id": {"type": "string"},
            "target": {"type": "string"},
            "status": {"type": "string", "description": "succeeded, rejected or failed"},
            "error": {"type": "string"},
            "diff": {"type": "string"},
            "diff_truncated": {"type": "boolean"},
            "edits": {"type": "array", "items": edit},
            "note": {"type": "string"},
            "shape": {"type": "string"},
            "warnings": {"type": "array", "items": {"type": "string"}},
        }),
        &["dry_run", "status", "error", "diff", "edits"],
    )
}
