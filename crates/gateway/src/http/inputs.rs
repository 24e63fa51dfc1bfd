//! What callers send and what a refusal looks like: the problem document, the request bodies,
//! headers and query parameters the OpenAPI document describes.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::GatewayError;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Problem type, e.g. `/problems/invalid-patch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// HTTP reason phrase.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What is wrong, precisely.
    pub detail: String,
    /// JSON pointer of the offending field (invalid patches).
    pub pointer: Option<String>,
    /// 1-based line of a syntax error.
    pub line: Option<usize>,
    /// 1-based column of a syntax error.
    pub column: Option<usize>,
    /// The repeated key (duplicate keys).
    pub key: Option<String>,
    /// JSON pointers of the first and the repeated occurrence (duplicate keys).
    pub pointers: Option<Vec<String>>,
    /// Every known target (an unknown target's refusal).
    pub known_targets: Option<Vec<String>>,
    /// The known target nearest to the unknown one, when one is close ("did you mean").
    pub nearest: Option<String>,
    /// A refused revert: why, naming the files (the same text as `detail`).
    pub error: Option<String>,
    /// A refused revert: workspace-relative paths changed since the patch ended, sorted.
    pub conflicts: Option<Vec<String>>,
}

/// A v1 patch. The common fields are described here; every other v1 field (`commands`,
/// `timeout_s`, `validate`, `patch`, `agent`, `depends_on`, `base`, `commit`) and the legacy shapes are also
/// accepted: see the project's DESIGN.md.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PatchInput {
    /// Unique id, `[A-Za-z0-9._()+-]{1,128}`, not starting with a dot. Left out, the id is
    /// derived from the content (`p-` and 16 hex digits): sending the same patch again is then
    /// a replay.
    #[schema(
        pattern = r"^[A-Za-z0-9_()+-][A-Za-z0-9._()+-]{0,127}$",
        nullable = false
    )]
    id: Option<String>,
    /// Workspace name, e.g. `MAIN`.
    #[schema(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    target: String,
    /// Why this change.
    #[serde(default)]
    description: String,
    /// Queue priority.
    #[serde(default)]
    priority: PriorityInput,
    /// File operations, applied in order (`write` shown; also `replace`, `diff`, `delete`,
    /// `rename`, `chmod`, `mkdir`).
    #[schema(min_items = 1)]
    edits: Vec<EditInput>,
    /// What happens to the workspace on failure.
    #[serde(default)]
    on_failure: OnFailureInput,
    /// A Slack user id (`U…` or `W…`) told directly (a DM) when the patch ends.
    #[schema(pattern = r"^[UW][A-Z0-9]{2,20}$", nullable = false)]
    notify: Option<String>,
}

/// Queue priority.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum PriorityInput {
    /// Last.
    Low,
    /// Default.
    #[default]
    Normal,
    /// First.
    High,
}

/// Failure policy.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum OnFailureInput {
    /// Restore every touched file (default).
    #[default]
    Rollback,
    /// Leave the workspace as it is.
    Keep,
}

/// One `write` edit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct EditInput {
    /// Operation.
    #[schema(pattern = "^write$")]
    op: String,
    /// Workspace-relative path.
    #[schema(
        pattern = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,30}(\.[A-Za-z0-9_-]{1,8})?(/[A-Za-z0-9_][A-Za-z0-9_-]{0,30}(\.[A-Za-z0-9_-]{1,8})?){0,4}$"
    )]
    path: String,
    /// New file contents.
    contents: String,
}

/// The body of `POST /v1/patches/{id}/revert`: empty, or an empty object.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevertInput {}

/// Refuses a revert body other than nothing or `{}`.
pub(super) fn empty_object(body: &[u8]) -> Result<(), GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let refused = || {
        GatewayError::BadRequest(
            "the body of a revert is empty or {}: the patch is named in the path".to_owned(),
        )
    };
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(members)) if members.is_empty() => Ok(()),
        _ => Err(refused()),
    }
}

/// Chat text whose fenced patch blocks are submitted.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MessageInput {
    /// The message, e.g. a model's answer with ```json blocks.
    pub text: String,
}

/// Filters of `GET /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this target.
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub target: Option<String>,
    /// Only this status, e.g. `queued`, `failed`.
    // Its pattern, every `Status` by name, is set from the enum by `openapi::document`.
    pub status: Option<String>,
    /// Page size, 1 to 500.
    #[param(minimum = 1, maximum = 500)]
    pub page_size: Option<u32>,
    /// Token from the previous page (`next_page_token`).
    #[param(pattern = "^[0-9]{1,18}$")]
    pub page_token: Option<String>,
}

/// Headers of `POST /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct SubmitHeaders {
    /// Optional; the patch id. A document with an id must carry this one (another id is a
    /// 409); a document without one takes this as its id (so `GET /v1/patches/{key}` finds
    /// it). A `p-` + 16 hex key must be the document's own derived id (400 otherwise). The
    /// same key with the same content again is a replay; with other content, a 409.
    #[serde(rename = "Idempotency-Key")]
    #[param(pattern = r"^[A-Za-z0-9_()+-][A-Za-z0-9._()+-]{0,127}$")]
    pub idempotency_key: Option<String>,
}

/// Query of `POST /v1/patches`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SubmitQuery {
    /// `true`: only check the patch. The executor plans every edit against the workspace as it
    /// is now and writes nothing; the answer is 200 with the unified diff it would apply and
    /// the matching rung of every edit (a patch that would not apply is still a 200, with
    /// `status` rejected or failed and the `error`). Nothing is queued or stored; commands and
    /// checks are not run; it does not wait behind the target's queue.
    pub dry_run: Option<bool>,
}

/// Query of `GET /v1/patches/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct GetQuery {
    /// Long-poll: hold the answer until the patch ends (answered within 100 ms of its end),
    /// at most this long, then answer its current state. `30s`, `1500ms` or `30` (seconds),
    /// at most `60s`. A GPT Action may wait 45 s per call: use `wait=40s` or less. Each
    /// credential holds at most 16 waits at once (HTTP and MCP together); beyond, the current
    /// state is answered at once (poll again).
    #[param(
        pattern = r"^(([0-9]|[1-5][0-9]|60)s?|([0-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|60000)ms)$",
        example = "40s"
    )]
    pub wait: Option<String>,
}

/// The document's patch schema ([`PatchInput`], [`EditInput`], [`PriorityInput`],
/// [`OnFailureInput`]) is narrower than ghost-core's [`ghost_core::Patch`] on purpose (it is
/// what a Custom GPT Action is shown: the common fields, `write` edits); these tests fail when
/// ghost-core gains a field, an edit op or a variant the document neither describes nor names.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use ghost_core::{Edit, OnFailure, Priority};
    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::{EditInput, OnFailureInput, PatchInput, PriorityInput};

    /// Fields of a v1 patch the document names in `PatchInput`'s description rather than
    /// describing them as properties (accepted as they are).
    const NAMED_ONLY: [&str; 8] = [
        "commands",
        "timeout_s",
        "validate",
        "patch",
        "agent",
        "depends_on",
        "base",
        "commit",
    ];

    /// Set by the router's revert only: refused in a submitted document, so not documented.
    const REFUSED: &str = "revert";

    fn schema_of<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).expect("a schema serialises")
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value
            .as_object()
            .map(|object| object.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A patch with every optional field set, so that every field is serialised.
    fn full_patch() -> ghost_core::Patch {
        let mut patch = ghost_core::parse_json(
            br#"{"id":"p1","target":"MAIN","depends_on":["p0"],"base":{"git_head":"abc"},
                "patch":"","commands":["true"],"validate":["true"],"timeout_s":5,
                "commit":{"message":"m"},"agent":{"task":"t"},"notify":"U123"}"#,
        )
        .expect("a full patch parses");
        patch.revert = Some(ghost_core::RevertSpec {
            of: ghost_core::PatchId::parse("p0").expect("an id"),
            commit: None,
        });
        patch
    }

    #[test]
    fn every_field_of_ghost_cores_patch_is_described_named_or_refused() {
        let fields = keys(&serde_json::to_value(full_patch()).expect("a patch serialises"));
        let schema = schema_of::<PatchInput>();
        let described = keys(&schema["properties"]);
        let description = schema["description"].as_str().unwrap_or_default();
        for field in &fields {
            let named =
                NAMED_ONLY.contains(&field.as_str()) && description.contains(&format!("`{field}`"));
            assert!(
                described.contains(field) || named || field == REFUSED,
                "ghost-core's Patch has `{field}`, which the OpenAPI PatchInput neither describes \
                 nor names in its description: add it to one of them (crates/gateway/src/http/inputs.rs)"
            );
        }
        for property in &described {
            assert!(
                fields.contains(property),
                "PatchInput describes `{property}`, which ghost-core's Patch does not have"
            );
        }
        for named in NAMED_ONLY {
            assert!(
                fields.contains(named),
                "`{named}` is no longer a Patch field"
            );
        }
    }

    #[test]
    fn every_edit_op_is_shown_or_named_and_write_has_the_fields_of_ghost_core() {
        let path = ghost_core::RelPath::parse("a.txt").expect("a path");
        let text = String::new;
        // Exhaustive: a new `Edit` variant does not compile until it is listed here.
        let edits = [
            Edit::Write {
                path: path.clone(),
                contents: text(),
            },
            Edit::Replace {
                path: path.clone(),
                search: text(),
                replace: text(),
            },
            Edit::Diff {
                path: path.clone(),
                diff: text(),
            },
            Edit::Delete { path: path.clone() },
            Edit::Rename {
                from: path.clone(),
                to: path.clone(),
            },
            Edit::Chmod {
                path: path.clone(),
                mode: text(),
            },
            Edit::Mkdir { path: path.clone() },
        ];
        for edit in &edits {
            match edit {
                Edit::Write { .. }
                | Edit::Replace { .. }
                | Edit::Diff { .. }
                | Edit::Delete { .. }
                | Edit::Rename { .. }
                | Edit::Chmod { .. }
                | Edit::Mkdir { .. } => {}
            }
        }
        let patch = schema_of::<PatchInput>();
        let edits_description = patch["properties"]["edits"]["description"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for edit in &edits {
            let op = edit.op();
            assert!(
                edits_description.contains(&format!("`{op}`")),
                "the edit op `{op}` is not named in PatchInput's `edits`: {edits_description}"
            );
        }
        let write = serde_json::to_value(&edits[0]).expect("an edit serialises");
        assert_eq!(
            keys(&write),
            keys(&schema_of::<EditInput>()["properties"]),
            "EditInput is ghost-core's `write` edit"
        );
    }

    #[test]
    fn priority_and_on_failure_list_every_variant_of_ghost_core() {
        let names = |values: Vec<Value>| -> BTreeSet<String> {
            values
                .iter()
                .filter_map(|value| value.as_str().map(str::to_owned))
                .collect()
        };
        // Exhaustive matches: a new variant does not compile until it is listed here.
        let priorities: Vec<Value> = [Priority::Low, Priority::Normal, Priority::High]
            .into_iter()
            .map(|priority| match priority {
                Priority::Low | Priority::Normal | Priority::High => {
                    serde_json::to_value(priority).expect("serialises")
                }
            })
            .collect();
        let on_failure: Vec<Value> = [OnFailure::Rollback, OnFailure::Keep]
            .into_iter()
            .map(|policy| match policy {
                OnFailure::Rollback | OnFailure::Keep => {
                    serde_json::to_value(policy).expect("serialises")
                }
            })
            .collect();
        let documented =
            |schema: Value| names(schema["enum"].as_array().cloned().unwrap_or_default());
        assert_eq!(names(priorities), documented(schema_of::<PriorityInput>()));
        assert_eq!(names(on_failure), documented(schema_of::<OnFailureInput>()));
    }
}
