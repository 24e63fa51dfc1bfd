//! The OpenAPI 3.1 document, generated from the handlers' annotations and finished for import as
//! a Custom GPT Action: an https server URL, a bearer API-key scheme, and
//! `x-openai-isConsequential` on every operation (true on the mutating ones).

use serde_json::{Value, json};

/// Finishes the generated document; `public_url` is the advertised server (empty: none).
pub fn document(generated: utoipa::openapi::OpenApi, public_url: &str) -> Value {
    let mut doc = serde_json::to_value(&generated).unwrap_or_else(|_| json!({}));
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": "Ghost Runner",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Submit code patches to workspaces and read what happened. Patches are applied atomically by executors; every patch gets a status and a summary.",
    });
    if !public_url.is_empty() {
        doc["servers"] = json!([{ "url": public_url.trim_end_matches('/') }]);
    }
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key, as Authorization: Bearer <key> (X-Api-Key also works)."
        }
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                let mutating = matches!(method.as_str(), "post" | "put" | "patch" | "delete");
                operation["x-openai-isConsequential"] = json!(mutating);
            }
        }
    }
    doc
}
