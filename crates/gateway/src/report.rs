//! What an attempt did, as `GET /v1/patches/{id}` shows it in `report`: the router's
//! `ApplyReport` with plain JSON field names (edits, commands with output head and tail,
//! stage timings, the rollback, and the diagnostics parsed from the checks' output).

use ghost_proto::convert::status_from_wire;
use ghost_proto::router::v1 as wire;
use serde::Serialize;
use utoipa::ToSchema;

/// The report of a patch's latest attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReportView {
    /// The attempt's terminal status, e.g. `succeeded`, `rolled_back`.
    pub status: String,
    /// Why it did not succeed (empty otherwise).
    pub error: String,
    /// Wall time of the attempt, ms.
    pub duration_ms: u64,
    /// The git commit made on success (empty: none).
    pub commit_sha: String,
    /// True when the patch was only checked, nothing written.
    pub dry_run: bool,
    /// One row per edit attempted.
    pub edits: Vec<EditView>,
    /// One row per command or check that ran.
    pub commands: Vec<CommandView>,
    /// Wall time per stage, in the order the stages ran.
    pub stages: Vec<StageView>,
    /// Present when the workspace was restored.
    pub rollback: Option<RollbackView>,
    /// What the checks reported, located: the patch's files first, then errors, warnings and
    /// notes; at most 100 (a last note, `tool` `ghost`, counts the rest).
    pub diagnostics: Vec<DiagnosticView>,
    /// For an agent task: what the coding agent did; null otherwise.
    pub agent: Option<AgentView>,
    /// How the commands and the agent were confined on the file system: `landlock` (writes
    /// only to the workspace and a private temp dir), `landlock-partial` (an older Landlock:
    /// not all of that confined), `none` (the kernel has no Landlock, or the target's
    /// `sandbox = "off"`); empty when nothing ran.
    pub sandbox: String,
}

/// What a coding agent did in the workspace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentView {
    /// The agent: `aider`, `claude-code`, `codex`, `gemini`, `opencode`, `cursor-agent`,
    /// `command`, or `inbox` for the hand-off to an IDE agent.
    pub cli: String,
    /// Its exit code; null when it was killed (or for an inbox hand-off).
    pub exit_code: Option<i32>,
    /// Its wall time, ms.
    pub duration_ms: u64,
    /// Unified diff of the workspace from before the agent ran to after it (bounded).
    pub diff: String,
    /// True when `diff` was cut at its bound (`files` still lists every path).
    pub diff_truncated: bool,
    /// Every workspace-relative path it changed, made or removed.
    pub files: Vec<String>,
    /// Its final message, where its output has one.
    pub final_message: String,
    /// The end of its transcript (its combined output, bounded).
    pub transcript_tail: String,
    /// Tokens the model read; null when the CLI does not report them.
    pub input_tokens: Option<u64>,
    /// Tokens the model wrote; null when the CLI does not report them.
    pub output_tokens: Option<u64>,
    /// Cost in US dollars as the CLI reported it, e.g. `0.0123`; empty: not reported.
    pub cost_usd: String,
}

impl From<wire::AgentRun> for AgentView {
    fn from(agent: wire::AgentRun) -> Self {
        Self {
            cli: agent.cli,
            exit_code: agent.exit_code,
            duration_ms: agent.duration_ms,
            diff: agent.diff,
            diff_truncated: agent.diff_truncated,
            files: agent.files,
            final_message: agent.final_message,
            transcript_tail: agent.transcript_tail,
            input_tokens: agent.input_tokens,
            output_tokens: agent.output_tokens,
            cost_usd: agent.cost_usd,
        }
    }
}

/// One located finding of a check, e.g. `src/a.ts:12:5` `TS2322`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DiagnosticView {
    /// Workspace-relative path (empty for the note counting the diagnostics left out).
    pub path: String,
    /// 1-based line; 0 when the tool gave none.
    pub line: u32,
    /// 1-based column; null when the tool gave none.
    pub column: Option<u32>,
    /// `error`, `warning` or `note`.
    pub severity: String,
    /// The tool's code, e.g. `TS2322`, `no-unused-vars`, `E0308` (empty: none).
    pub code: String,
    /// The message, one line.
    pub message: String,
    /// The parser that read it: `tsc`, `eslint`, `gcc`, `rustc`, `go`, `jest`, `pytest`,
    /// `generic` (or `ghost` for the note counting the rest).
    pub tool: String,
    /// The check (its name or command line) whose output it came from.
    pub check: String,
}

/// One edit of a report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EditView {
    /// `write`, `replace`, `diff`, `delete`, `rename`, `chmod`, `mkdir`.
    pub op: String,
    /// Workspace-relative path (the new one for a rename).
    pub path: String,
    /// The matching-ladder step that matched (replace and diff).
    pub match_step: String,
    /// Lines added.
    pub added: u32,
    /// Lines removed.
    pub removed: u32,
    /// For a rename: the old path.
    pub from: String,
}

impl From<wire::EditReport> for EditView {
    fn from(edit: wire::EditReport) -> Self {
        Self {
            op: edit.op,
            path: edit.path,
            match_step: edit.match_step,
            added: edit.added,
            removed: edit.removed,
            from: edit.from,
        }
    }
}

/// The name of a report's status (`unknown` for a value this gateway does not know).
pub fn status_name(raw: i32) -> String {
    status_from_wire("report.status", raw)
        .map(|status| status.as_str().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// One command of a report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandView {
    /// The command line.
    pub command: String,
    /// `command` or `validate`.
    pub kind: String,
    /// Exit code; null when the command was killed.
    pub exit_code: Option<i32>,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// True when killed at its deadline.
    pub timed_out: bool,
    /// The start of the output when it was too long to keep whole (empty otherwise).
    pub output_head: String,
    /// The end of the combined output.
    pub output_tail: String,
    /// Bytes dropped between head and tail.
    pub omitted_bytes: u64,
}

/// Wall time of one stage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StageView {
    /// `journal`, `edits`, `commands`, `validate`, `commit`, `rollback` or `agent`.
    pub stage: String,
    /// Wall time, ms.
    pub duration_ms: u64,
}

/// How the workspace was restored.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RollbackView {
    /// Files written back.
    pub restored: u32,
    /// Files the patch had created, removed again.
    pub removed: u32,
    /// Why the rollback happened.
    pub reason: String,
    /// Empty when the workspace is byte-identical to before.
    pub error: String,
}

impl From<wire::ApplyReport> for ReportView {
    fn from(report: wire::ApplyReport) -> Self {
        Self {
            status: status_name(report.status),
            error: report.error,
            duration_ms: report.duration_ms,
            commit_sha: report.commit_sha,
            dry_run: report.dry_run,
            edits: report.edits.into_iter().map(EditView::from).collect(),
            commands: report
                .commands
                .into_iter()
                .map(|command| CommandView {
                    command: command.command,
                    kind: command.kind,
                    exit_code: command.exit_code,
                    duration_ms: command.duration_ms,
                    timed_out: command.timed_out,
                    output_head: command.output_head,
                    output_tail: command.output_tail,
                    omitted_bytes: command.omitted_bytes,
                })
                .collect(),
            stages: report
                .stages
                .into_iter()
                .map(|stage| StageView {
                    stage: stage.stage,
                    duration_ms: stage.duration_ms,
                })
                .collect(),
            rollback: report.rollback.map(|rollback| RollbackView {
                restored: rollback.restored,
                removed: rollback.removed,
                reason: rollback.reason,
                error: rollback.error,
            }),
            diagnostics: report
                .diagnostics
                .into_iter()
                .map(|found| DiagnosticView {
                    path: found.path,
                    line: found.line,
                    column: (found.column != 0).then_some(found.column),
                    severity: found.severity,
                    code: found.code,
                    message: found.message,
                    tool: found.tool,
                    check: found.check,
                })
                .collect(),
            agent: report.agent.map(AgentView::from),
            sandbox: report.sandbox,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diagnostics_are_shown_with_a_null_column_when_none_was_given() {
        let report = wire::ApplyReport {
            status: wire::PatchStatus::RolledBack as i32,
            diagnostics: vec![
                wire::Diagnostic {
                    path: "src/a.ts".to_owned(),
                    line: 12,
                    column: 5,
                    severity: "error".to_owned(),
                    code: "TS2322".to_owned(),
                    message: "Type 'string' is not assignable to type 'number'.".to_owned(),
                    tool: "tsc".to_owned(),
                    check: "tsc --noEmit -p .".to_owned(),
                },
                wire::Diagnostic {
                    path: "tests/test_a.py".to_owned(),
                    severity: "error".to_owned(),
                    tool: "pytest".to_owned(),
                    ..wire::Diagnostic::default()
                },
            ],
            ..wire::ApplyReport::default()
        };
        let view = serde_json::to_value(ReportView::from(report)).unwrap();
        assert_eq!(view["status"], "rolled_back");
        assert_eq!(
            view["diagnostics"][0],
            serde_json::json!({"path": "src/a.ts", "line": 12, "column": 5, "severity": "error",
                "code": "TS2322", "message": "Type 'string' is not assignable to type 'number'.",
                "tool": "tsc", "check": "tsc --noEmit -p ."})
        );
        assert_eq!(view["diagnostics"][1]["column"], serde_json::Value::Null);
    }
}
