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
    /// What the checks reported, parsed from their output: files the patch touched first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
    /// For a dry run: the unified diff the patch would apply (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
    /// For a revert: workspace-relative paths changed since the reverted patch ended, which
    /// refuse the revert (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// For an agent task: what the agent did (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRun>,
    /// How the commands and the agent were confined on the file system: `"landlock"` (write
    /// access only to the workspace and a private temp dir, signals and abstract sockets
    /// scoped), `"landlock-partial"` (a Landlock ABI below 6: not all of that confined),
    /// `"none"` (the kernel has no Landlock, or the target turned it off), empty when nothing
    /// ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// What a coding agent did in the workspace, as the executor saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRun {
    /// The agent: a known CLI (`"aider"`, `"claude-code"`, ...), `"command"`, or `"inbox"`
    /// for the hand-off to an IDE agent.
    pub cli: String,
    /// Its exit code (absent: killed, or an inbox hand-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wall time of the agent in milliseconds.
    pub duration_ms: u64,
    /// Unified diff of the workspace from before the agent ran to after it (bounded).
    #[serde(default)]
    pub diff: String,
    /// True when `diff` was cut at its bound (`files` still lists every path).
    #[serde(default)]
    pub diff_truncated: bool,
    /// Every workspace-relative path the agent changed, made or removed.
    #[serde(default)]
    pub files: Vec<String>,
    /// The agent's final message, where its output has one.
    #[serde(default)]
    pub final_message: String,
    /// The end of its transcript (its combined output, bounded).
    #[serde(default)]
    pub transcript_tail: String,
    /// Tokens the model read, where the CLI reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Tokens the model wrote, where the CLI reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// Cost in US dollars as the CLI reported it (e.g. `"0.0123"`); empty: not reported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cost_usd: String,
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
            diagnostics: Vec::new(),
            diff: String::new(),
            conflicts: Vec::new(),
            agent: None,
            sandbox: String::new(),
        }
    }
}

/// How long one stage of an attempt took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage's name; each appears once per attempt, in this order, when it runs:
    /// `plan` (every edit computed in memory), `journal` (originals recorded and synced),
    /// `write` (the edits written), `snapshot` (the workspace recorded before the first
    /// command), `commands` (the patch's own), `validate` (the patch's checks), `checks` (the
    /// target owner's checks), `commit` (git), `rollback`; a hand-off has `agent`, `validate`
    /// and `checks`. Reports from before issue 20 named both `plan` and `write` `edits`.
    pub stage: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The same wall time in microseconds.
    #[serde(default)]
    pub duration_us: u64,
}

/// How serious a [`Diagnostic`] is.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails the build or the test.
    #[default]
    Error,
    /// Reported, does not fail.
    Warning,
    /// Context for another diagnostic.
    Note,
}

impl Severity {
    /// The name used on the wire and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Note => "note",
        }
    }

    /// The severity named `name` (`error`, `warning`, `note`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "error" => Some(Self::Error),
            "warning" => Some(Self::Warning),
            "note" => Some(Self::Note),
            _ => None,
        }
    }
}

/// One located finding of a check: a compiler error, a lint warning, a failed test.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Workspace-relative path.
    pub path: String,
    /// 1-based line; 0 when the tool gave none.
    pub line: u32,
    /// 1-based column, when the tool gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    /// How serious it is.
    pub severity: Severity,
    /// The tool's code, e.g. `TS2322`, `no-unused-vars`, `E0308` (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// The message, one line.
    pub message: String,
    /// The parser that recognised it: `tsc`, `eslint`, `gcc`, `rustc`, `go`, `jest`, `pytest`
    /// or `generic`; `ghost` for the executor's last note counting the diagnostics left out.
    pub tool: String,
    /// The name of the check (or the command line) whose output it came from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub check: String,
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
    /// One of the target's owner checks, which every patch runs.
    Check,
}

impl CommandKind {
    /// The name used on the wire and in summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Validate => "validate",
            Self::Check => "check",
        }
    }
}

/// One command or check that ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReport {
    /// The command line.
    pub command: String,
    /// Its exit code; `None` when it was killed (see `signal`), or when it did not run: an
    /// `if_allowed` check whose program the target does not allow is reported with no exit
    /// code, no duration and an `output_tail` that starts with `skipped: ` and says why.
    pub exit_code: Option<i32>,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// The end of its combined output.
    pub output_tail: String,
    /// Whether it came from `commands`, `validate` or the target owner's `checks`.
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
    /// The owner check's name (empty for the patch's own commands and checks).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// True when it was not run: a legacy check whose program the target's policy does not
    /// allow (no exit code then, and it did not fail; `output_tail` says why).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// What the executor's parser found in the whole output as it streamed (also in the part
    /// between head and tail that is not kept). Never serialised or sent: the executor moves
    /// it into [`ApplyReport::diagnostics`], sorted and capped.
    #[serde(skip)]
    pub diagnostics: crate::diagnostics::Found,
}
