//! The canonical v1 patch (see DESIGN.md, "The patch").

use serde::{Deserialize, Serialize};

use crate::ids::{PatchId, RelPath, TargetName};

/// One patch: what to change in which workspace, what to run after, and how to report. A
/// submitted document may also be in a legacy shape, normalised into this one (see DESIGN.md).
// Its OpenAPI schema (feature `openapi`) is the v1 document the API promises to accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(examples(crate::openapi::example_patch)))]
#[serde(deny_unknown_fields)]
pub struct Patch {
    /// Unique id, `[A-Za-z0-9._()+-]{1,128}`, not starting with a dot; with the content hash
    /// it is the idempotency key. Left out, the id is derived from the content (`p-` and 16 hex
    /// digits): sending the same patch again is then a replay.
    // Optional in a submitted document (the id is derived), so not `required` in the schema.
    #[cfg_attr(feature = "openapi", schema(required = false))]
    pub id: PatchId,
    /// Workspace name, e.g. `MAIN`: the workspace the patch applies to.
    pub target: TargetName,
    /// Why this change, for the summary and Slack.
    #[serde(default)]
    pub description: String,
    /// Queue priority within the target.
    #[serde(default)]
    pub priority: Priority,
    /// Ids of patches that must have succeeded before this one runs.
    #[serde(default)]
    pub depends_on: Vec<PatchId>,
    /// Optional precondition on the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Base>,
    /// File operations, applied in order: `write`, `replace`, `diff`, `delete`, `rename`,
    /// `chmod`, `mkdir`. (Instead of edits, a document may give a whole V4A or unified-diff
    /// document as `patch`, or only `commands`, `validate` or an `agent` task.)
    // The schema promises the common case, at least one edit; serde also takes none.
    #[cfg_attr(feature = "openapi", schema(required = true, min_items = 1))]
    #[serde(default)]
    pub edits: Vec<Edit>,
    /// A whole V4A or unified-diff document, as an alternative to `edits`.
    // Not in the schema: it excludes `edits`, which the schema requires (named in `edits`).
    #[cfg_attr(feature = "openapi", schema(ignore))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Commands run after the edits, each a non-blank command line.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::command_lines))]
    #[serde(default)]
    pub commands: Vec<String>,
    /// Checks run after the commands; any failure fails the patch.
    #[serde(default)]
    pub validate: Vec<Check>,
    /// Deadline for the whole patch, in seconds (1 to 86,400).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86_400))]
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole_seconds"
    )]
    pub timeout_s: Option<u32>,
    /// What to do with the workspace when the patch fails.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Optional git commit on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSpec>,
    /// Hand the work to a coding agent instead of applying edits directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTask>,
    /// Restore the pre-images of a succeeded patch. Set only by the router's `Revert` (the
    /// gateway refuses it in a submitted document); a revert patch carries nothing else.
    // Not in the schema: a submitted document may not carry it.
    #[cfg_attr(feature = "openapi", schema(ignore))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<RevertSpec>,
    /// A Slack user id (`U…` or `W…`) the alerter tells directly (a DM) when the patch ends.
    /// Absent from the canonical form when unset, so derived ids do not move.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[UW][A-Z0-9]{2,20}$", nullable = false)
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
}

/// Queue priority within one target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Runs after everything else queued.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Runs before normal and low.
    High,
}

/// A precondition on the workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Refuse the patch unless the workspace's git HEAD is this commit.
    pub git_head: String,
}

/// One file operation, named by `op`.
// Deserialised by hand (see `edit_de`) so that an error inside an edit keeps its exact JSON
// pointer, which serde's buffered internally-tagged enums would lose; it refuses unknown
// fields, which `deny_unknown_fields` tells the schema (serialising ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Edit {
    /// Create or overwrite a file.
    Write {
        /// The file.
        path: RelPath,
        /// Its whole new contents.
        contents: String,
    },
    /// Replace one unique occurrence of `search`.
    Replace {
        /// The file.
        path: RelPath,
        /// Text that must occur exactly once (after the matching ladder); not empty.
        #[cfg_attr(feature = "openapi", schema(min_length = 1))]
        search: String,
        /// Its replacement.
        replace: String,
    },
    /// Apply unified-diff hunks to one file.
    Diff {
        /// The file.
        path: RelPath,
        /// The hunks, starting at `@@`.
        diff: String,
    },
    /// Remove a file.
    Delete {
        /// The file.
        path: RelPath,
    },
    /// Move a file.
    Rename {
        /// Current path.
        from: RelPath,
        /// New path.
        to: RelPath,
    },
    /// Change a file's permission bits.
    Chmod {
        /// The file.
        path: RelPath,
        /// Octal mode, e.g. "755".
        #[cfg_attr(feature = "openapi", schema(pattern = "^[0-7]{1,4}$"))]
        mode: String,
    },
    /// Create a directory (and its parents).
    Mkdir {
        /// The directory.
        path: RelPath,
    },
}

impl Edit {
    /// The operation name, as written in the patch.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Write { .. } => "write",
            Self::Replace { .. } => "replace",
            Self::Diff { .. } => "diff",
            Self::Delete { .. } => "delete",
            Self::Rename { .. } => "rename",
            Self::Chmod { .. } => "chmod",
            Self::Mkdir { .. } => "mkdir",
        }
    }

    /// The path the operation changes (the destination for a rename).
    pub fn path(&self) -> &RelPath {
        match self {
            Self::Write { path, .. }
            | Self::Replace { path, .. }
            | Self::Diff { path, .. }
            | Self::Delete { path }
            | Self::Chmod { path, .. }
            | Self::Mkdir { path } => path,
            Self::Rename { to, .. } => to,
        }
    }
}

/// A validation step: a command and its own deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CheckSpec", into = "CheckSpec")]
pub struct Check {
    /// The command line.
    pub run: String,
    /// Its deadline in seconds, if shorter than the patch's.
    pub timeout_s: Option<u32>,
    /// Run only when the target's command policy allows its program; otherwise it is skipped
    /// with a note in the report instead of refusing the patch. Set for the checks of legacy
    /// documents (`postMutationBuild`, `validate`); a v1 document may set it too.
    pub if_allowed: bool,
}

/// The two accepted spellings of a check: a bare command or `{run, timeout_s, if_allowed}`.
/// Other keys are refused, as everywhere else in a patch (a `timeout` for `timeout_s` would
/// otherwise be dropped without a word).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = "a command string or an object {\"run\": ..., \"timeout_s\": ..., \"if_allowed\": ...} with no other keys"
)]
enum CheckSpec {
    Plain(String),
    Full {
        run: String,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "whole_seconds"
        )]
        timeout_s: Option<u32>,
        #[serde(default, skip_serializing_if = "is_false")]
        if_allowed: bool,
    },
}

/// A number of seconds as JSON Schema's `integer` has it: `30` or `30.0` (a number with no
/// fractional part is an integer there, and schema-driven clients send it so), or null.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|seconds| seconds.fract() == 0.0 && *seconds >= 0.0)
            .and_then(|seconds| format!("{seconds:.0}").parse().ok())
    });
    whole
        .and_then(|seconds| u32::try_from(seconds).ok())
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a whole number of seconds from 0 to {}, got {number}",
                u32::MAX
            ))
        })
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(value: &bool) -> bool {
    !*value
}

impl From<CheckSpec> for Check {
    fn from(spec: CheckSpec) -> Self {
        match spec {
            CheckSpec::Plain(run) => Self {
                run,
                timeout_s: None,
                if_allowed: false,
            },
            CheckSpec::Full {
                run,
                timeout_s,
                if_allowed,
            } => Self {
                run,
                timeout_s,
                if_allowed,
            },
        }
    }
}

impl From<Check> for CheckSpec {
    fn from(check: Check) -> Self {
        Self::Full {
            run: check.run,
            timeout_s: check.timeout_s,
            if_allowed: check.if_allowed,
        }
    }
}

/// What happens to the workspace when a patch fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Restore every touched file byte for byte (the default).
    #[default]
    Rollback,
    /// Leave the workspace as the failure left it.
    Keep,
}

/// A git commit made when the patch succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitSpec {
    /// The commit message; the patch id is added as a trailer.
    pub message: String,
}

/// What a revert patch undoes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertSpec {
    /// The succeeded patch whose pre-images are restored.
    pub of: PatchId,
    /// The git commit that patch made, when it made one (lowercase hex): the executor reads
    /// the pre-images from git when it no longer keeps them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Work handed to a coding agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentTask {
    /// Prose instructions, not blank.
    #[cfg_attr(feature = "openapi", schema(pattern = r"\S"))]
    pub task: String,
}

impl Patch {
    /// The canonical JSON form: fixed field order, defaults spelled out.
    pub fn canonical_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical form, lowercase hex: with the id, the idempotency key.
    pub fn content_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.canonical_json().as_bytes());
        digest.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The canonical form without the id: [`Patch::canonical_json`] (fields in declaration
    /// order, defaults spelled out, no whitespace) with its leading `"id":"…",` member left
    /// out, e.g. `{"target":"MAIN","description":"",...}`.
    pub fn canonical_json_without_id(&self) -> String {
        let full = self.canonical_json();
        // `id` is the first field and a valid id needs no JSON escaping.
        let head = format!("{{\"id\":\"{}\",", self.id);
        match full.strip_prefix(&head) {
            Some(rest) => format!("{{{rest}"),
            None => full,
        }
    }

    /// The id of a patch submitted without one: `p-` and the first 16 lowercase hex digits of
    /// the SHA-256 of [`Patch::canonical_json_without_id`]. The same content, however it was
    /// spelled (whitespace, key order, legacy shape), always gets the same id, so sending it
    /// again is a replay.
    ///
    /// Derived ids are stored and retried against, so this rule (and the canonical form it
    /// hashes) is versioned by the test `derived_ids_are_pinned` in `tests/intake.rs`: any
    /// change to a field, its order or its default moves every derived id and fails that test.
    pub fn derived_id(&self) -> PatchId {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.canonical_json_without_id().as_bytes());
        let hex: String = digest
            .iter()
            .take(8)
            .map(|byte| format!("{byte:02x}"))
            .collect();
        PatchId::from_derived(format!("p-{hex}"))
    }
}

/// True for a Slack user id as `notify` takes it: `U` or `W`, then 2 to 20 capital letters or
/// digits (`^[UW][A-Z0-9]{2,20}$`).
pub fn is_slack_user_id(id: &str) -> bool {
    id.starts_with(['U', 'W'])
        && (3..=21).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// What every id [`revert_id`] gives starts with. Ids starting with it (in any letter case) are
/// the router's own: a submitted patch may not take one (see [`is_revert_form`]).
pub const REVERT_ID_PREFIX: &str = "revert-";

/// Why a submitted patch whose id starts with `revert-` is refused.
pub const RESERVED_REVERT_ID: &str = "ids starting with revert- are reserved for the reverts the \
                                      router builds; choose another id (ask for a revert with \
                                      POST /v1/patches/{id}/revert)";

/// True for an id starting with [`REVERT_ID_PREFIX`] in any letter case: the form of the ids
/// the router gives the reverts it builds. Anyone could otherwise store `revert-X` ahead of
/// time and block (or impersonate) the revert of X. Ids stored already stay readable.
pub fn is_revert_form(id: &str) -> bool {
    id.get(..REVERT_ID_PREFIX.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(REVERT_ID_PREFIX))
}

/// The id of the patch that reverts `of`: `revert-<of>`, or, when that would pass 128
/// characters, `revert-` and the first 32 lowercase hex digits of the SHA-256 of `of`. The
/// same original always gets the same revert id, so asking twice is a replay.
pub fn revert_id(of: &PatchId) -> PatchId {
    let plain = format!("revert-{of}");
    if plain.len() <= 128 {
        return PatchId::from_derived(plain);
    }
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(of.as_str().as_bytes());
    let hex: String = digest
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    PatchId::from_derived(format!("revert-{hex}"))
}

#[cfg(test)]
mod tests {
    use crate::parse_json;

    #[test]
    fn the_revert_form_is_the_prefix_in_any_case() {
        for id in ["revert-x", "REVERT-x", "Revert-", "rEvErT-abc"] {
            assert!(super::is_revert_form(id), "{id}");
        }
        for id in ["revert", "revertx", "x-revert-x", "", "reverté-"] {
            assert!(!super::is_revert_form(id), "{id}");
        }
        let of = crate::PatchId::parse("some-patch").unwrap();
        assert!(super::is_revert_form(super::revert_id(&of).as_str()));
    }

    #[test]
    fn a_check_object_with_an_unknown_key_is_refused_at_its_pointer() {
        let refused = parse_json(
            br#"{"id":"a","target":"MAIN","validate":["true",{"run":"make","timeout":5}]}"#,
        );
        match refused {
            Err(crate::PatchError::Invalid { pointer, message }) => {
                assert_eq!(pointer, "/validate/1");
                assert!(message.contains("no other keys"), "{message}");
            }
            other => panic!("expected an invalid check, got {other:?}"),
        }
        let accepted = parse_json(
            br#"{"id":"a","target":"MAIN","validate":[{"run":"make","timeout_s":5,"if_allowed":true}]}"#,
        )
        .expect("every key of a check");
        assert!(accepted.validate[0].if_allowed);
    }

    #[test]
    fn a_timeout_is_a_whole_number_of_seconds_however_written() {
        let patch = parse_json(
            br#"{"id":"a","target":"MAIN","commands":["true"],"timeout_s":60.0,
                "validate":[{"run":"make","timeout_s":30.0},{"run":"make","timeout_s":null}]}"#,
        )
        .expect("whole numbers");
        assert_eq!(patch.timeout_s, Some(60));
        assert_eq!(patch.validate[0].timeout_s, Some(30));
        assert_eq!(patch.validate[1].timeout_s, None);
        assert!(patch.canonical_json().contains(r#""timeout_s":60,"#));
        for refused in ["60.5", "-1", "4294967296", "\"60\""] {
            let body = format!(
                r#"{{"id":"a","target":"MAIN","commands":["true"],"timeout_s":{refused}}}"#
            );
            assert!(parse_json(body.as_bytes()).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_derived_id_ignores_the_id_and_nothing_else() {
        let one = parse_json(br#"{"id":"a","target":"MAIN","commands":["true"]}"#).unwrap();
        let two = parse_json(br#"{"id":"bb","target":"MAIN","commands":["true"]}"#).unwrap();
        let other = parse_json(br#"{"id":"a","target":"MAIN","commands":["false"]}"#).unwrap();
        assert_eq!(one.derived_id(), two.derived_id());
        assert_ne!(one.derived_id(), other.derived_id());
        assert!(
            one.canonical_json_without_id()
                .starts_with("{\"target\":\"MAIN\",")
        );
        let id = one.derived_id();
        assert_eq!(id.as_str().len(), 18);
        assert!(
            id.as_str()[2..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
