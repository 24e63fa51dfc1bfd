//! The OpenAPI 3.1 document, generated from the handlers' annotations and finished for import as
//! a Custom GPT Action: an https server URL, a bearer API-key scheme, and
//! `x-openai-isConsequential` on every operation (true on the mutating ones). The answers the
//! guard in front of every route can give (408, 413, 429 and 503, the last two with
//! `Retry-After`) are added to every operation here, once, rather than repeated by hand on each
//! handler; a patch's `target` is the enum of the configured targets when unknown ones are
//! refused; and each edit op's schema is closed to its own fields. The patch and status schemas
//! are ghost-core's own types (`Patch`, `Status`, with its `openapi` feature).

use ghost_core::TargetName;
use utoipa::ToSchema;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Content, Info, Object, OpenApi, OpenApiVersion, Ref, RefOr, Response, Schema, Server, Type,
};

/// What the guard in front of every route may answer before (or instead of) the handler:
/// status, description, and whether the answer carries `Retry-After`.
const GUARD_ANSWERS: [(&str, &str, bool); 4] = [
    (
        "408",
        "The request body did not arrive within the body deadline",
        false,
    ),
    ("413", "Request body over the size limit", false),
    (
        "429",
        "Rate limited, or too many requests in flight or failed credentials from this address; retry after Retry-After seconds",
        true,
    ),
    (
        "503",
        "The gateway is shedding load or an upstream is unavailable; nothing was stored; retry after Retry-After seconds when given",
        true,
    ),
];

/// Finishes the generated document; `public_url` is the advertised server (empty: none);
/// `targets`, when not empty, are the only targets a patch may name.
///
/// Works on the typed document and leaves serialising to the caller (once, at start): a
/// `serde_json::Value` copy of it would be a second tree of maps the size of the first.
pub fn document(mut doc: OpenApi, public_url: &str, targets: &[String]) -> OpenApi {
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
                add_guard_answers(&mut operation.responses.responses);
            }
        }
    }
    if let Some(components) = doc.components.as_mut() {
        ghost_core::openapi::close_edit_variants(&mut components.schemas);
    }
    if !targets.is_empty() {
        restrict_targets(&mut doc, targets);
    }
    doc
}

/// Documents [`GUARD_ANSWERS`] on one operation: added when missing, given `Retry-After` when
/// the answer carries it.
fn add_guard_answers(responses: &mut std::collections::BTreeMap<String, RefOr<Response>>) {
    for (status, description, retry_after) in GUARD_ANSWERS {
        let entry = responses.entry(status.to_owned()).or_insert_with(|| {
            let mut response = Response::new(description);
            response.content.insert(
                "application/problem+json".to_owned(),
                Content::new(Some(Ref::from_schema_name("Problem"))).into(),
            );
            RefOr::T(response)
        });
        if let (RefOr::T(response), true) = (entry, retry_after) {
            let mut seconds = Object::with_type(Type::Integer);
            seconds.minimum = Some(1.into());
            response.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(Some(seconds))
                    .description(Some("Seconds to wait before retrying"))
                    .build()
                    .into(),
            );
        }
    }
}

/// Makes a patch's `target` (ghost-core's `TargetName`, which only a patch names in the
/// document) the enum of `targets` (the configured names and aliases).
fn restrict_targets(doc: &mut OpenApi, targets: &[String]) {
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let Some(RefOr::T(Schema::Object(target))) =
        components.schemas.get_mut(TargetName::name().as_ref())
    else {
        return;
    };
    target.enum_values = Some(
        targets
            .iter()
            .map(|name| serde_json::Value::String(name.clone()))
            .collect(),
    );
}
