//! The OpenAPI schemas of the types whose serde form the derive cannot see (feature `openapi`):
//! the validated strings [`PatchId`], [`TargetName`] and [`RelPath`] (`try_from = "String"`)
//! and [`Check`] (`from = "CheckSpec"`, two spellings). Every other patch type derives
//! `utoipa::ToSchema` beside its serde derive, so the gateway's document is these types' own.
//!
//! A pattern here is what the API promises to accept, which may be narrower than what
//! `parse` takes (a path's pattern leaves out spellings that are valid but unusual); the tests
//! check that every string a pattern matches is accepted.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::ids::{PatchId, RelPath, TargetName};
use crate::patch::{Check, Edit};

/// What a patch id promises: `[A-Za-z0-9._()+-]{1,128}`, not starting with a dot.
pub const PATCH_ID_PATTERN: &str = r"^[A-Za-z0-9_()+-][A-Za-z0-9._()+-]{0,127}$";

/// What a target name promises: `[A-Za-z0-9_-]{1,64}`.
pub const TARGET_PATTERN: &str = r"^[A-Za-z0-9_-]{1,64}$";

/// The workspace-relative paths the API promises to accept: up to five `/`-separated names of
/// letters, digits, `_` and `-`, each with at most one short extension. [`RelPath::parse`]
/// takes more (dots anywhere, spaces, non-ASCII, `./` and `a/../b`), which the schema leaves
/// out so that every path a client builds from it is one the executor can use as written.
pub const PATH_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,30}(\.[A-Za-z0-9_-]{1,8})?(/[A-Za-z0-9_][A-Za-z0-9_-]{0,30}(\.[A-Za-z0-9_-]{1,8})?){0,4}$";

/// A command line or a check: at least one character that is not white space.
pub const COMMAND_PATTERN: &str = r"\S";

/// A string schema with `pattern` and `description`.
fn pattern_string(pattern: &str, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
}

impl PartialSchema for PatchId {
    fn schema() -> RefOr<Schema> {
        pattern_string(
            PATCH_ID_PATTERN,
            "A patch id: letters, digits and . _ ( ) + -, 1 to 128 characters, not starting with a dot.",
        )
        .into()
    }
}

impl ToSchema for PatchId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PatchId")
    }
}

impl PartialSchema for TargetName {
    fn schema() -> RefOr<Schema> {
        pattern_string(TARGET_PATTERN, "Workspace name, e.g. `MAIN`.").into()
    }
}

impl ToSchema for TargetName {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("TargetName")
    }
}

impl PartialSchema for RelPath {
    fn schema() -> RefOr<Schema> {
        pattern_string(PATH_PATTERN, "Workspace-relative path, `/`-separated.").into()
    }
}

impl ToSchema for RelPath {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("RelPath")
    }
}

impl PartialSchema for Check {
    fn schema() -> RefOr<Schema> {
        let run = pattern_string(COMMAND_PATTERN, "The command line.");
        let timeout = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(u32::MAX))
            .description(Some(
                "Its deadline in seconds, if shorter than the patch's.",
            ));
        let if_allowed = ObjectBuilder::new().schema_type(Type::Boolean).description(Some(
            "Skip it (with a note) when the target's command policy does not allow its program, \
             instead of refusing the patch.",
        ));
        let full = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("run", run)
            .required("run")
            .property("timeout_s", timeout)
            .property("if_allowed", if_allowed)
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        OneOfBuilder::new()
            .item(pattern_string(COMMAND_PATTERN, "The command line."))
            .item(full)
            .description(Some(
                "A check: a command line, or `{run, timeout_s, if_allowed}`; any failure fails the patch.",
            ))
            .into()
    }
}

impl ToSchema for Check {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Check")
    }
}

/// The schema of `commands`: non-blank command lines ([`COMMAND_PATTERN`]).
pub(crate) fn command_lines() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::Array::new(pattern_string(COMMAND_PATTERN, "A command line."))
}

/// The example of a patch the document shows; the tests submit it.
pub(crate) fn example_patch() -> serde_json::Value {
    serde_json::json!({
        "id": "fix-greeting",
        "target": "MAIN",
        "description": "Say hello to the world",
        "edits": [
            {"op": "write", "path": "hello.txt", "contents": "hello, world\n"},
            {"op": "replace", "path": "src/main.rs", "search": "hello", "replace": "hello, world"}
        ],
        "validate": ["test -s hello.txt"]
    })
}

/// Closes every variant of the [`Edit`](crate::Edit) schema in `schemas` (the document's
/// components) to the fields its op takes. An edit refuses unknown fields (see `edit_de`), but
/// utoipa reads `deny_unknown_fields` only on a struct, not on each variant of a tagged enum:
/// without this a client (or a schema-driven test generator) would be told extra fields are
/// fine.
pub fn close_edit_variants(schemas: &mut std::collections::BTreeMap<String, RefOr<Schema>>) {
    let Some(RefOr::T(Schema::OneOf(edit))) = schemas.get_mut(Edit::name().as_ref()) else {
        return;
    };
    for variant in &mut edit.items {
        if let RefOr::T(Schema::Object(object)) = variant {
            object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;
    use utoipa::{PartialSchema, ToSchema};

    use super::{PATCH_ID_PATTERN, PATH_PATTERN, TARGET_PATTERN};
    use crate::{LegacyOptions, Patch, PatchId, RelPath, TargetName};

    fn schema_of<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("a schema serialises")
    }

    /// proptest's regex strategies take no anchors; the document's patterns are anchored.
    fn unanchored(pattern: &str) -> &str {
        pattern.trim_start_matches('^').trim_end_matches('$')
    }

    #[test]
    fn every_documented_example_is_a_patch_as_the_api_reads_it() {
        let examples = schema_of::<Patch>()["examples"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(!examples.is_empty(), "the patch schema shows no example");
        for example in examples {
            let patch = crate::patch_from_value(example.clone())
                .unwrap_or_else(|err| panic!("{example}: {err}"));
            let normalised = crate::normalise(example.clone(), &LegacyOptions::default())
                .unwrap_or_else(|err| panic!("{example}: {err}"));
            assert_eq!(normalised.patch, patch, "{example}");
        }
    }

    #[test]
    fn the_schema_requires_what_a_submitted_patch_needs_and_no_more() {
        let schema = schema_of::<Patch>();
        assert_eq!(schema["required"], serde_json::json!(["target", "edits"]));
        assert_eq!(schema["additionalProperties"], false);
        for refused in ["revert", "patch"] {
            assert!(schema["properties"][refused].is_null(), "{refused}");
        }
        assert_eq!(
            schema["properties"]["timeout_s"]["maximum"],
            crate::parse::MAX_TIMEOUT_S
        );
    }

    #[test]
    fn the_edit_schema_names_every_op_the_reader_takes() {
        let mut schemas = Vec::new();
        Patch::schemas(&mut schemas);
        let edit = schemas
            .into_iter()
            .find(|(name, _)| name == "Edit")
            .map(|(_, schema)| serde_json::to_value(schema).expect("serialises"))
            .expect("the patch schema names Edit");
        let documented: Vec<&str> = edit["oneOf"]
            .as_array()
            .expect("one schema per op")
            .iter()
            .filter_map(|variant| variant["properties"]["op"]["enum"][0].as_str())
            .collect();
        assert_eq!(documented, crate::edit_de::OPS);
    }

    #[test]
    fn an_edit_schema_closed_by_close_edit_variants_refuses_other_fields() {
        let mut schemas: std::collections::BTreeMap<_, _> =
            [(Patch::name().into_owned(), Patch::schema())]
                .into_iter()
                .collect();
        let mut named = Vec::new();
        Patch::schemas(&mut named);
        schemas.extend(named);
        super::close_edit_variants(&mut schemas);
        let edit = serde_json::to_value(&schemas["Edit"]).expect("serialises");
        for variant in edit["oneOf"].as_array().expect("variants") {
            assert_eq!(variant["additionalProperties"], false, "{variant}");
        }
    }

    proptest! {
        #[test]
        fn every_id_target_and_path_the_patterns_match_is_accepted(
            id in proptest::string::string_regex(unanchored(PATCH_ID_PATTERN)).expect("a regex"),
            target in proptest::string::string_regex(unanchored(TARGET_PATTERN)).expect("a regex"),
            path in proptest::string::string_regex(unanchored(PATH_PATTERN)).expect("a regex"),
            mode in "[0-7]{1,4}",
        ) {
            prop_assert!(PatchId::parse(&id).is_ok(), "{id}");
            prop_assert!(TargetName::parse(&target).is_ok(), "{target}");
            prop_assert!(RelPath::parse(&path).is_ok(), "{path}");
            let chmod = serde_json::json!({
                "id": id, "target": target,
                "edits": [{"op": "chmod", "path": path, "mode": mode}],
            });
            prop_assert!(crate::patch_from_value(chmod.clone()).is_ok(), "{chmod}");
        }
    }
}
