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
}

/// One applied (or attempted) edit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditReport {
    /// The operation, e.g. `write`.
    pub op: String,
    /// The path it changed.
    pub path: String,
    /// The matching-ladder step that found the text, for `replace` and `diff`.
    pub match_step: String,
    /// Lines added.
    pub added: u32,
    /// Lines removed.
    pub removed: u32,
}

/// One command or check that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReport {
    /// The command line.
    pub command: String,
    /// Its exit code; `None` when it was killed.
    pub exit_code: Option<i32>,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// The end of its combined output.
    pub output_tail: String,
}
