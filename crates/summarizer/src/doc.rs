//! [`SummaryDoc`], the facts of a summary (`summary-<id>.json`, schema [`SCHEMA_VERSION`]), and
//! [`merge`], which adds one attempt's [`Outcome`] to them. Pure functions, no I/O.

use ghost_core::{
    AgentRun, ApplyReport, CommandReport, Diagnostic, EditReport, PatchId, Status, TargetName,
};
use serde::{Deserialize, Serialize};

/// Version of the `summary-<id>.json` schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// One terminal outcome of one attempt, as the router reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// Which attempt this was, from 1; 0 when the patch ended before any attempt started.
    pub attempt: u32,
    /// The patch's description.
    pub description: String,
    /// What the executor reported.
    pub report: ApplyReport,
    /// The patch's trace id (32 hex digits), empty when untraced.
    pub trace_id: String,
    /// When the patch was accepted, unix milliseconds.
    pub created_unix_ms: i64,
    /// When this attempt ended, unix milliseconds.
    pub finished_unix_ms: i64,
    /// What the gateway forgave while reading the submitted document.
    pub intake_warnings: Vec<String>,
    /// The patch's `notify` (a Slack user id), empty when none.
    pub notify: String,
    /// The patch's priority (`low`, `normal`, `high`), empty when unknown.
    pub priority: String,
    /// The credential that submitted the patch (an API key's name), empty when unknown.
    pub key_name: String,
}

/// One attempt in a summary's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptEntry {
    /// The attempt number, from 1; 0 when the patch ended before any attempt started.
    pub attempt: u32,
    /// How it ended.
    pub status: Status,
    /// Why it did not succeed; empty on success.
    pub error: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Its trace id.
    pub trace_id: String,
    /// When it ended, unix milliseconds.
    pub finished_unix_ms: i64,
    /// Edits reported by this attempt.
    #[serde(default)]
    pub edits: u32,
    /// Commands and validations that ran in this attempt.
    #[serde(default)]
    pub commands: u32,
    /// True when this attempt's workspace changes were rolled back.
    #[serde(default)]
    pub rolled_back: bool,
}

/// How long one stage of the latest attempt took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDoc {
    /// `journal`, `edits`, `commands`, `validate`, `commit`, `rollback` or `agent`.
    pub stage: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// One edit of the latest attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditDoc {
    /// The operation, e.g. `replace`.
    pub op: String,
    /// The path it changed (the new path for a rename).
    pub path: String,
    /// For a rename, the old path; empty otherwise.
    pub from: String,
    /// The matching-ladder step that found the text; empty when not applicable.
    pub match_step: String,
    /// Lines added.
    pub added: u32,
    /// Lines removed.
    pub removed: u32,
}

/// One command or validation of the latest attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandDoc {
    /// Position among the attempt's commands and validations, from 1.
    pub n: u32,
    /// `command` or `validate`.
    pub kind: String,
    /// The command line.
    pub command: String,
    /// Its exit code; `None` when it was killed.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// True when it was killed at its deadline.
    pub timed_out: bool,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// The start of its output when the executor could not keep it whole.
    pub output_head: String,
    /// The end of its output.
    pub output_tail: String,
    /// Bytes the executor dropped between head and tail.
    pub omitted_bytes: u64,
    /// True when it was not run (a legacy check the target does not allow): not a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// The output as received, relative to the summary's folder (`artifacts/<id>/<attempt>-<n>.log`);
    /// `None` when there was no output.
    pub artifact: Option<String>,
}

impl CommandDoc {
    /// True when the command ran and did not end with exit code 0.
    pub fn failed(&self) -> bool {
        !self.skipped && self.exit_code != Some(0)
    }

    /// The full output as received: head, a marker for the omitted middle, tail.
    pub fn full_output(&self) -> String {
        if self.output_head.is_empty() && self.omitted_bytes == 0 {
            return self.output_tail.clone();
        }
        let mut out = self.output_head.clone();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!(
            "[… {} bytes omitted by the executor …]\n",
            self.omitted_bytes
        ));
        out.push_str(&self.output_tail);
        out
    }
}

/// What a rollback of the latest attempt restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackDoc {
    /// Files whose original contents or mode were written back.
    pub restored: u32,
    /// Files and directories the patch had created, removed again.
    pub removed: u32,
    /// Why the rollback happened.
    pub reason: String,
    /// Empty when the workspace is byte-identical to before; otherwise what could not be restored.
    pub error: String,
}

/// `summary-<id>.json`: the latest attempt in full, and every attempt in `attempts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDoc {
    /// [`SCHEMA_VERSION`] when written.
    #[serde(default)]
    pub schema_version: u32,
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// Status of the latest attempt.
    pub status: Status,
    /// The latest attempt number (0: ended before any attempt started).
    pub attempt: u32,
    /// The patch's description.
    pub description: String,
    /// Why the latest attempt did not succeed; empty on success.
    pub error: String,
    /// Trace id of the latest attempt.
    pub trace_id: String,
    /// Link to the trace (from the configured template); empty when untraced.
    #[serde(default)]
    pub trace_url: String,
    /// Wall time of the latest attempt in milliseconds.
    pub duration_ms: u64,
    /// When the patch was accepted, unix milliseconds.
    pub created_unix_ms: i64,
    /// When the latest attempt ended, unix milliseconds.
    pub finished_unix_ms: i64,
    /// True when the latest attempt only checked the patch and wrote nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// The git commit the latest attempt made; empty when none.
    #[serde(default)]
    pub commit_sha: String,
    /// Stage timings of the latest attempt, in the order they ran.
    #[serde(default)]
    pub stages: Vec<StageDoc>,
    /// Edits of the latest attempt.
    pub edits: Vec<EditDoc>,
    /// Commands and validations of the latest attempt, in the order they ran.
    pub commands: Vec<CommandDoc>,
    /// The latest attempt's rollback, when the workspace was restored.
    #[serde(default)]
    pub rollback: Option<RollbackDoc>,
    /// What the latest attempt's checks reported, located (`src/a.ts:12:5 TS2322 …`): the
    /// patch's files first, as the executor ordered and capped them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
    /// Every recorded attempt, by attempt number; never shrinks.
    pub attempts: Vec<AttemptEntry>,
    /// What the gateway forgave while reading the submitted document ("line L, column C: a
    /// trailing comma ... was ignored"); absent when nothing was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intake_warnings: Vec<String>,
    /// For an agent task: what the agent did in the latest attempt (its diff, final message,
    /// transcript tail, exit status, tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentRun>,
    /// The patch's `notify` (a Slack user id the alerter tells when it ends); absent when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notify: String,
    /// The patch's priority, for the alerter's routes; absent when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub priority: String,
    /// The credential that submitted the patch (an API key's name), which the alerter may map
    /// to a Slack user to tell (`routing.notify_users`); absent when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_name: String,
}

impl SummaryDoc {
    /// True when `attempt` is already in the history.
    pub fn has_attempt(&self, attempt: u32) -> bool {
        self.attempts.iter().any(|entry| entry.attempt == attempt)
    }
}

/// The link to `trace_id` from `template` (`{trace_id}` replaced); empty when untraced.
pub fn trace_url(template: &str, trace_id: &str) -> String {
    if trace_id.is_empty() {
        String::new()
    } else {
        template.replace("{trace_id}", trace_id)
    }
}

/// Where a command's output artifact goes, relative to the summary's folder.
pub fn artifact_path(patch_id: &PatchId, attempt: u32, n: u32) -> String {
    format!("artifacts/{patch_id}/{attempt}-{n}.log")
}

fn edit_doc(edit: EditReport) -> EditDoc {
    EditDoc {
        op: edit.op,
        path: edit.path,
        from: edit.from,
        match_step: edit.match_step,
        added: edit.added,
        removed: edit.removed,
    }
}

fn command_doc(patch_id: &PatchId, attempt: u32, n: u32, command: CommandReport) -> CommandDoc {
    let has_output = !(command.output_head.is_empty()
        && command.output_tail.is_empty()
        && command.omitted_bytes == 0);
    CommandDoc {
        n,
        kind: command.kind.as_str().to_owned(),
        command: command.command,
        exit_code: command.exit_code,
        signal: command.signal,
        timed_out: command.timed_out,
        duration_ms: command.duration_ms,
        output_head: command.output_head,
        output_tail: command.output_tail,
        omitted_bytes: command.omitted_bytes,
        skipped: command.skipped,
        artifact: has_output.then(|| artifact_path(patch_id, attempt, n)),
    }
}

/// The output artifacts of `outcome`'s commands (paths relative to the summary's folder) with
/// their contents; commands without output have none.
pub fn artifacts_of(outcome: &Outcome) -> Vec<(String, String)> {
    outcome
        .report
        .commands
        .iter()
        .zip(1..)
        .map(|(command, n)| command_doc(&outcome.patch_id, outcome.attempt, n, command.clone()))
        .filter_map(|command| {
            let output = command.full_output();
            command.artifact.map(|path| (path, output))
        })
        .collect()
}

/// The document after recording `outcome` over `previous`: the history gains the attempt, and
/// the top-level fields follow the highest attempt (a late redelivery of an older attempt only
/// adds history). `jaeger_url_template` builds `trace_url`.
pub fn merge(
    previous: Option<SummaryDoc>,
    outcome: Outcome,
    jaeger_url_template: &str,
) -> SummaryDoc {
    let report = outcome.report;
    let entry = AttemptEntry {
        attempt: outcome.attempt,
        status: report.status,
        error: report.error.clone(),
        duration_ms: report.duration_ms,
        trace_id: outcome.trace_id.clone(),
        finished_unix_ms: outcome.finished_unix_ms,
        edits: u32::try_from(report.edits.len()).unwrap_or(u32::MAX),
        commands: u32::try_from(report.commands.len()).unwrap_or(u32::MAX),
        rolled_back: report.rollback.is_some(),
    };
    let mut attempts = previous
        .as_ref()
        .map(|doc| doc.attempts.clone())
        .unwrap_or_default();
    attempts.retain(|existing| existing.attempt != outcome.attempt);
    attempts.push(entry);
    attempts.sort_by_key(|existing| existing.attempt);
    if let Some(doc) = previous
        .as_ref()
        .filter(|doc| doc.attempt > outcome.attempt)
    {
        return SummaryDoc {
            attempts,
            schema_version: SCHEMA_VERSION,
            ..doc.clone()
        };
    }
    let created_unix_ms = previous
        .map(|doc| doc.created_unix_ms)
        .filter(|created| *created > 0)
        .unwrap_or(outcome.created_unix_ms);
    let commands = report
        .commands
        .into_iter()
        .zip(1..)
        .map(|(command, n)| command_doc(&outcome.patch_id, outcome.attempt, n, command))
        .collect();
    SummaryDoc {
        schema_version: SCHEMA_VERSION,
        trace_url: trace_url(jaeger_url_template, &outcome.trace_id),
        patch_id: outcome.patch_id,
        target: outcome.target,
        status: report.status,
        attempt: outcome.attempt,
        description: outcome.description,
        error: report.error,
        trace_id: outcome.trace_id,
        duration_ms: report.duration_ms,
        created_unix_ms,
        finished_unix_ms: outcome.finished_unix_ms,
        dry_run: report.dry_run,
        commit_sha: report.commit_sha,
        stages: report
            .stages
            .into_iter()
            .map(|stage| StageDoc {
                stage: stage.stage,
                duration_ms: stage.duration_ms,
            })
            .collect(),
        edits: report.edits.into_iter().map(edit_doc).collect(),
        commands,
        rollback: report.rollback.map(|rollback| RollbackDoc {
            restored: rollback.restored,
            removed: rollback.removed,
            reason: rollback.reason,
            error: rollback.error,
        }),
        diagnostics: report.diagnostics,
        attempts,
        intake_warnings: outcome.intake_warnings,
        agent: report.agent,
        notify: outcome.notify,
        priority: outcome.priority,
        key_name: outcome.key_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghost_core::CommandKind;

    fn outcome(status: Status, attempt: u32) -> Outcome {
        Outcome {
            notify: String::new(),
            priority: String::new(),
            key_name: String::new(),
            patch_id: PatchId::parse("fix-login").unwrap(),
            target: TargetName::parse("MAIN").unwrap(),
            attempt,
            description: "make login faster".to_owned(),
            report: ApplyReport {
                commands: vec![
                    CommandReport {
                        command: "npm test".to_owned(),
                        exit_code: Some(0),
                        output_tail: "ok".to_owned(),
                        ..Default::default()
                    },
                    CommandReport {
                        command: "true".to_owned(),
                        exit_code: Some(0),
                        kind: CommandKind::Validate,
                        ..Default::default()
                    },
                ],
                ..ApplyReport::ended(status, "")
            },
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            created_unix_ms: 1,
            finished_unix_ms: 2,
            intake_warnings: Vec::new(),
        }
    }

    #[test]
    fn notify_priority_and_key_name_reach_the_alerter_request() {
        let plain = merge(None, outcome(Status::Failed, 1), "t/{trace_id}");
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("notify"), "{json}");
        let mut told = outcome(Status::Failed, 1);
        told.notify = "U0ALICE".to_owned();
        told.priority = "high".to_owned();
        told.key_name = "alice-gpt".to_owned();
        let doc = merge(None, told, "t/{trace_id}");
        let again: SummaryDoc =
            serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        let request = crate::notify::notify_request(&again, 1, Status::Failed);
        assert_eq!(request.notify, "U0ALICE");
        assert_eq!(request.priority, "high");
        assert_eq!(request.key_name, "alice-gpt");
        assert_eq!(request.duration_ms, doc.duration_ms);
    }

    #[test]
    fn later_attempts_append_history_and_take_the_top() {
        let first = merge(None, outcome(Status::RolledBack, 1), "t/{trace_id}");
        let second = merge(Some(first), outcome(Status::Succeeded, 2), "t/{trace_id}");
        assert_eq!(second.attempt, 2);
        assert_eq!(second.status, Status::Succeeded);
        assert_eq!(second.attempts.len(), 2);
        assert!(second.has_attempt(1) && second.has_attempt(2));
        let late = merge(
            Some(second.clone()),
            outcome(Status::Failed, 1),
            "t/{trace_id}",
        );
        assert_eq!(late.status, Status::Succeeded);
        assert_eq!(late.attempts.len(), 2);
        assert_eq!(second.trace_url, "t/4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn intake_warnings_are_kept_and_shown_only_when_there_are_some() {
        let plain = merge(None, outcome(Status::Succeeded, 1), "");
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("intake_warnings"), "{json}");
        assert!(!crate::render::markdown(&plain).contains("Intake warnings"));
        let warned = Outcome {
            intake_warnings: vec![
                "line 7, column 17: a trailing comma before '}' was ignored".to_owned(),
            ],
            ..outcome(Status::Succeeded, 1)
        };
        let doc = merge(None, warned, "");
        let markdown = crate::render::markdown(&doc);
        assert!(
            markdown.contains("## Intake warnings\n\nForgiven while reading the submitted document:\n\n- line 7, column 17: a trailing comma before '}' was ignored\n"),
            "{markdown}"
        );
        let again: SummaryDoc =
            serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(again.intake_warnings, doc.intake_warnings);
    }

    #[test]
    fn only_commands_with_output_get_an_artifact() {
        let doc = merge(None, outcome(Status::Succeeded, 3), "");
        assert_eq!(
            doc.commands[0].artifact.as_deref(),
            Some("artifacts/fix-login/3-1.log")
        );
        assert_eq!(doc.commands[1].artifact, None);
        assert_eq!(doc.commands[1].kind, "validate");
        let artifacts = artifacts_of(&outcome(Status::Succeeded, 3));
        assert_eq!(
            artifacts,
            vec![("artifacts/fix-login/3-1.log".to_owned(), "ok".to_owned())]
        );
    }

    #[test]
    fn full_output_marks_the_omitted_middle() {
        let command = CommandDoc {
            n: 1,
            kind: "command".to_owned(),
            command: "make".to_owned(),
            exit_code: Some(2),
            signal: None,
            timed_out: false,
            duration_ms: 1,
            output_head: "start".to_owned(),
            output_tail: "end\n".to_owned(),
            omitted_bytes: 42,
            skipped: false,
            artifact: None,
        };
        assert!(command.failed());
        let skipped = CommandDoc {
            exit_code: None,
            skipped: true,
            ..command.clone()
        };
        assert!(
            !skipped.failed(),
            "a skipped check is not a failure (nor a kill)"
        );
        assert_eq!(
            command.full_output(),
            "start\n[… 42 bytes omitted by the executor …]\nend\n"
        );
    }
}
