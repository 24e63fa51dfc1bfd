//! What an executor reports about one attempt at a patch.

use serde::{Deserialize, Serialize};

use crate::status::Status;

/// The result of one attempt, as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The terminal status of the attempt.
    pub status: Status,
    /// Why it did not succeed; empty on success.
    pub error: String,
    /// One row per edit that was attempted.
    pub edits: Vec<EditReport>,
    /// One row per command or check that ran.
    pub commands: Vec<CommandReport>,
    /// Wall time of the attempt in milliseconds.
    pub duration_ms: u64,
    /// Wall time per stage, in the order the stages ran.
    #[serde(default)]
    pub stages: Vec<StageTiming>,
    /// Present when the workspace was restored after a failure, timeout or cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// The git commit made on success (empty: none).
    #[serde(default)]
    pub commit_sha: String,
    /// True when the patch was only checked and nothing was written.
    #[serde(default)]
    pub dry_run: bool,
}

impl ApplyReport {
    /// A report for an attempt that ended before touching anything.
    pub fn ended(status: Status, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            edits: Vec::new(),
            commands: Vec::new(),
            duration_ms: 0,
            stages: Vec::new(),
            rollback: None,
            commit_sha: String::new(),
            dry_run: false,
        }
    }
}

/// How long one stage of an attempt took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    /// `journal`, `edits`, `commands`, `validate`, `commit`, `rollback` or `agent`.
    pub stage: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// What a rollback restored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// Files whose original contents or mode were written back.
    pub restored: u32,
    /// Files and directories the patch had created, removed again.
    pub removed: u32,
    /// Why the rollback happened.
    pub reason: String,
    /// Empty when the workspace is byte-identical to before; otherwise what could not be restored.
    #[serde(default)]
    pub error: String,
}

/// One applied (or attempted) edit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditReport {
    /// The operation, e.g. `write`.
    pub op: String,
    /// The path it changed (the new path for a rename).
    pub path: String,
    /// The matching-ladder step that found the text, for `replace` and `diff`.
    pub match_step: String,
    /// Lines added.
    pub added: u32,
    /// Lines removed.
    pub removed: u32,
    /// For a rename: the old path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from: String,
}

/// Whether a command came from `commands` or from `validate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandKind {
    /// Listed in the patch's `commands`.
    #[default]
    Command,
    /// Listed in the patch's `validate`.
    Validate,
}

impl CommandKind {
    /// The name used on the wire and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Validate => "validate",
        }
    }
}

/// One command or check that ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReport {
    /// The command line.
    pub command: String,
    /// Its exit code; `None` when it was killed.
    pub exit_code: Option<i32>,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// The end of its combined output.
    pub output_tail: String,
    /// Whether it came from `commands` or `validate`.
    #[serde(default)]
    pub kind: CommandKind,
    /// The start of its output when it was too long to keep whole (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_head: String,
    /// Bytes of output dropped between `output_head` and `output_tail`.
    #[serde(default)]
    pub omitted_bytes: u64,
    /// True when it was killed at its deadline.
    #[serde(default)]
    pub timed_out: bool,
    /// The signal that ended it, when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}
