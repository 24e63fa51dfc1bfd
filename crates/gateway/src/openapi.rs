//! The OpenAPI 3.1 document, generated from the handlers' annotations and finished for import as
//! a Custom GPT Action: an https server URL, a bearer API-key scheme, and
//! `x-openai-isConsequential` on every operation (true on the mutating ones).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Info, OpenApi, OpenApiVersion, Server};

/// Finishes the generated document; `public_url` is the advertised server (empty: none).
///
/// Works on the typed document and leaves serialising to the caller (once, at start): a
/// `serde_json::Value` copy of it would be a second tree of maps the size of the first.
pub fn document(mut doc: OpenApi, public_url: &str) -> OpenApi {
    doc.openapi = OpenApiVersion::Version31;
    let mut info = Info::new("Ghost Runner", env!("CARGO_PKG_VERSION"));
    info.description = Some(
        "Submit code patches to workspaces and read what happened. Patches are applied atomically by executors; every patch gets a status and a summary."
            .to_owned(),
    );
    doc.info = info;
    doc.servers =
        (!public_url.is_empty()).then(|| vec![Server::new(public_url.trim_end_matches('/'))]);
    doc.components
        .get_or_insert_with(Default::default)
        .security_schemes = [(
        "bearer".to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API key, as Authorization: Bearer <key> (X-Api-Key also works).",
                ))
                .build(),
        )
        .into(),
    )]
    .into_iter()
    .collect();
    for item in doc.paths.paths.values_mut() {
        let operations = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.options, false),
            (&mut item.trace, false),
            (&mut item.query, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (operation, mutating) in operations {
            if let Some(operation) = operation {
                operation
                    .extensions
                    .get_or_insert_with(Default::default)
                    .insert(
                        "x-openai-isConsequential".to_owned(),
                        serde_json::Value::Bool(mutating),
                    );
            }
        }
    }
    doc
}
