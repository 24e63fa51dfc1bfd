//! Wire <-> domain conversions. Wire to domain is fallible and names the field that is wrong.

use ghost_core::{
    AgentRun, AgentTask, ApplyReport, Base, Check, CommandKind, CommandReport, CommitSpec,
    Diagnostic, Edit, EditReport, OnFailure, Patch, PatchId, Priority, RelPath, RevertSpec,
    Rollback, Severity, StageTiming, Status, TargetName,
};

use crate::router::v1 as wire;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field {field}: {message}")]
pub struct ConversionError {
    /// Dotted path of the field, e.g. `patch.edits[2].path`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl ConversionError {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn rel_path(field: String, raw: String) -> Result<RelPath, ConversionError> {
    RelPath::parse(&raw).map_err(|err| ConversionError::new(field, err.to_string()))
}

fn non_empty(raw: String) -> Option<String> {
    (!raw.is_empty()).then_some(raw)
}

impl TryFrom<wire::Patch> for Patch {
    type Error = ConversionError;

    fn try_from(patch: wire::Patch) -> Result<Self, Self::Error> {
        let id =
            PatchId::parse(&patch.id).map_err(|e| ConversionError::new("id", e.to_string()))?;
        let target = TargetName::parse(&patch.target)
            .map_err(|e| ConversionError::new("target", e.to_string()))?;
        let depends_on = patch
            .depends_on
            .iter()
            .enumerate()
            .map(|(i, dep)| {
                PatchId::parse(dep)
                    .map_err(|e| ConversionError::new(format!("depends_on[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let priority = match wire::Priority::try_from(patch.priority) {
            Ok(wire::Priority::Low) => Priority::Low,
            Ok(wire::Priority::Unspecified | wire::Priority::Normal) => Priority::Normal,
            Ok(wire::Priority::High) => Priority::High,
            Err(_) => {
                return Err(ConversionError::new(
                    "priority",
                    format!("unknown priority {}", patch.priority),
                ));
            }
        };
        let on_failure = match wire::OnFailure::try_from(patch.on_failure) {
            Ok(wire::OnFailure::Unspecified | wire::OnFailure::Rollback) => OnFailure::Rollback,
            Ok(wire::OnFailure::Keep) => OnFailure::Keep,
            Err(_) => {
                return Err(ConversionError::new(
                    "on_failure",
                    format!("unknown on_failure {}", patch.on_failure),
                ));
            }
        };
        let revert = match non_empty(patch.revert_of) {
            Some(of) => Some(RevertSpec {
                of: PatchId::parse(&of)
                    .map_err(|e| ConversionError::new("revert_of", e.to_string()))?,
                commit: non_empty(patch.revert_commit),
            }),
            None if !patch.revert_commit.is_empty() => {
                return Err(ConversionError::new(
                    "revert_commit",
                    "revert_commit needs revert_of",
                ));
            }
            None => None,
        };
        let edits = patch
            .edits
            .into_iter()
            .enumerate()
            .map(|(i, edit)| edit_from_wire(i, edit))
            .collect::<Result<Vec<_>, _>>()?;
        let domain = Patch {
            id,
            target,
            description: patch.description,
            priority,
            depends_on,
            base: non_empty(patch.base_git_head).map(|git_head| Base { git_head }),
            edits,
            patch: non_empty(patch.patch_document),
            commands: patch.commands,
            validate: patch
                .validate
                .into_iter()
                .map(|check| Check {
                    run: check.run,
                    timeout_s: (check.timeout_s > 0).then_some(check.timeout_s),
                    if_allowed: check.if_allowed,
                })
                .collect(),
            timeout_s: (patch.timeout_s > 0).then_some(patch.timeout_s),
            on_failure,
            commit: non_empty(patch.commit_message).map(|message| CommitSpec { message }),
            agent: non_empty(patch.agent_task).map(|task| AgentTask { task }),
            revert,
            notify: non_empty(patch.notify),
        };
        ghost_core::validate(&domain).map_err(|err| match err {
            ghost_core::PatchError::Invalid { pointer, message } => {
                ConversionError::new(pointer_to_field(&pointer), message)
            }
            other => ConversionError::new("patch", other.to_string()),
        })?;
        Ok(domain)
    }
}

/// `/edits/2/path` -> `edits[2].path`, so wire errors read like wire fields.
fn pointer_to_field(pointer: &str) -> String {
    let mut field = String::new();
    for part in pointer.split('/').filter(|part| !part.is_empty()) {
        if part.chars().all(|c| c.is_ascii_digit()) {
            field.push_str(&format!("[{part}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(part);
        }
    }
    field
}

fn edit_from_wire(index: usize, edit: wire::Edit) -> Result<Edit, ConversionError> {
    use wire::edit::Op;
    let at = |name: &str| format!("edits[{index}].{name}");
    match edit.op {
        Some(Op::Write(w)) => Ok(Edit::Write {
            path: rel_path(at("path"), w.path)?,
            contents: w.contents,
        }),
        Some(Op::Replace(r)) => Ok(Edit::Replace {
            path: rel_path(at("path"), r.path)?,
            search: r.search,
            replace: r.replace,
        }),
        Some(Op::Diff(d)) => Ok(Edit::Diff {
            path: rel_path(at("path"), d.path)?,
            diff: d.diff,
        }),
        Some(Op::Delete(d)) => Ok(Edit::Delete {
            path: rel_path(at("path"), d.path)?,
        }),
        Some(Op::Rename(r)) => Ok(Edit::Rename {
            from: rel_path(at("from"), r.from)?,
            to: rel_path(at("to"), r.to)?,
        }),
        Some(Op::Chmod(c)) => Ok(Edit::Chmod {
            path: rel_path(at("path"), c.path)?,
            mode: c.mode,
        }),
        Some(Op::Mkdir(m)) => Ok(Edit::Mkdir {
            path: rel_path(at("path"), m.path)?,
        }),
        None => Err(ConversionError::new(
            format!("edits[{index}]"),
            "edit has no operation",
        )),
    }
}

impl From<&Patch> for wire::Patch {
    fn from(patch: &Patch) -> Self {
        use wire::edit::Op;
        let edits = patch
            .edits
            .iter()
            .map(|edit| {
                let op = match edit.clone() {
                    Edit::Write { path, contents } => Op::Write(wire::WriteFile {
                        path: path.into(),
                        contents,
                    }),
                    Edit::Replace {
                        path,
                        search,
                        replace,
                    } => Op::Replace(wire::ReplaceText {
                        path: path.into(),
                        search,
                        replace,
                    }),
                    Edit::Diff { path, diff } => Op::Diff(wire::DiffFile {
                        path: path.into(),
                        diff,
                    }),
                    Edit::Delete { path } => Op::Delete(wire::DeleteFile { path: path.into() }),
                    Edit::Rename { from, to } => Op::Rename(wire::RenameFile {
                        from: from.into(),
                        to: to.into(),
                    }),
                    Edit::Chmod { path, mode } => Op::Chmod(wire::ChmodFile {
                        path: path.into(),
                        mode,
                    }),
                    Edit::Mkdir { path } => Op::Mkdir(wire::MakeDir { path: path.into() }),
                };
                wire::Edit { op: Some(op) }
            })
            .collect();
        Self {
            id: patch.id.to_string(),
            target: patch.target.to_string(),
            description: patch.description.clone(),
            priority: match patch.priority {
                Priority::Low => wire::Priority::Low,
                Priority::Normal => wire::Priority::Normal,
                Priority::High => wire::Priority::High,
            } as i32,
            depends_on: patch.depends_on.iter().map(ToString::to_string).collect(),
            base_git_head: patch
                .base
                .as_ref()
                .map(|base| base.git_head.clone())
                .unwrap_or_default(),
            edits,
            patch_document: patch.patch.clone().unwrap_or_default(),
            commands: patch.commands.clone(),
            validate: patch
                .validate
                .iter()
                .map(|check| wire::Check {
                    run: check.run.clone(),
                    timeout_s: check.timeout_s.unwrap_or(0),
                    if_allowed: check.if_allowed,
                })
                .collect(),
            timeout_s: patch.timeout_s.unwrap_or(0),
            on_failure: match patch.on_failure {
                OnFailure::Rollback => wire::OnFailure::Rollback,
                OnFailure::Keep => wire::OnFailure::Keep,
            } as i32,
            commit_message: patch
                .commit
                .as_ref()
                .map(|commit| commit.message.clone())
                .unwrap_or_default(),
            agent_task: patch
                .agent
                .as_ref()
                .map(|agent| agent.task.clone())
                .unwrap_or_default(),
            revert_of: patch
                .revert
                .as_ref()
                .map(|revert| revert.of.to_string())
                .unwrap_or_default(),
            revert_commit: patch
                .revert
                .as_ref()
                .and_then(|revert| revert.commit.clone())
                .unwrap_or_default(),
            notify: patch.notify.clone().unwrap_or_default(),
        }
    }
}

impl From<Status> for wire::PatchStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Received => Self::Received,
            Status::Queued => Self::Queued,
            Status::Leased => Self::Leased,
            Status::Applying => Self::Applying,
            Status::Validating => Self::Validating,
            Status::Succeeded => Self::Succeeded,
            Status::Failed => Self::Failed,
            Status::RolledBack => Self::RolledBack,
            Status::Cancelled => Self::Cancelled,
            Status::TimedOut => Self::TimedOut,
            Status::Rejected => Self::Rejected,
            Status::Lost => Self::Lost,
            Status::Interrupted => Self::Interrupted,
        }
    }
}

/// Reads a wire status (`i32`) as a domain status; `field` names it in the error.
pub fn status_from_wire(field: &str, raw: i32) -> Result<Status, ConversionError> {
    let status = match wire::PatchStatus::try_from(raw) {
        Ok(wire::PatchStatus::Received) => Status::Received,
        Ok(wire::PatchStatus::Queued) => Status::Queued,
        Ok(wire::PatchStatus::Leased) => Status::Leased,
        Ok(wire::PatchStatus::Applying) => Status::Applying,
        Ok(wire::PatchStatus::Validating) => Status::Validating,
        Ok(wire::PatchStatus::Succeeded) => Status::Succeeded,
        Ok(wire::PatchStatus::Failed) => Status::Failed,
        Ok(wire::PatchStatus::RolledBack) => Status::RolledBack,
        Ok(wire::PatchStatus::Cancelled) => Status::Cancelled,
        Ok(wire::PatchStatus::TimedOut) => Status::TimedOut,
        Ok(wire::PatchStatus::Rejected) => Status::Rejected,
        Ok(wire::PatchStatus::Lost) => Status::Lost,
        Ok(wire::PatchStatus::Interrupted) => Status::Interrupted,
        Ok(wire::PatchStatus::Unspecified) | Err(_) => {
            return Err(ConversionError::new(
                field,
                format!("unknown or unspecified status {raw}"),
            ));
        }
    };
    Ok(status)
}

impl From<&ApplyReport> for wire::ApplyReport {
    fn from(report: &ApplyReport) -> Self {
        Self {
            status: wire::PatchStatus::from(report.status) as i32,
            error: report.error.clone(),
            edits: report
                .edits
                .iter()
                .map(|edit| wire::EditReport {
                    op: edit.op.clone(),
                    path: edit.path.clone(),
                    match_step: edit.match_step.clone(),
                    added: edit.added,
                    removed: edit.removed,
                    from: edit.from.clone(),
                })
                .collect(),
            commands: report
                .commands
                .iter()
                .map(|command| wire::CommandReport {
                    command: command.command.clone(),
                    exit_code: command.exit_code,
                    duration_ms: command.duration_ms,
                    output_tail: command.output_tail.clone(),
                    kind: command.kind.as_str().to_owned(),
                    output_head: command.output_head.clone(),
                    omitted_bytes: command.omitted_bytes,
                    timed_out: command.timed_out,
                    signal: command.signal.unwrap_or(0),
                    name: command.name.clone(),
                    skipped: command.skipped,
                })
                .collect(),
            duration_ms: report.duration_ms,
            stages: report
                .stages
                .iter()
                .map(|stage| wire::StageTiming {
                    stage: stage.stage.clone(),
                    duration_ms: stage.duration_ms,
                    duration_us: stage.duration_us,
                })
                .collect(),
            rollback: report.rollback.as_ref().map(|rollback| wire::Rollback {
                restored: rollback.restored,
                removed: rollback.removed,
                reason: rollback.reason.clone(),
                error: rollback.error.clone(),
            }),
            commit_sha: report.commit_sha.clone(),
            dry_run: report.dry_run,
            diagnostics: report
                .diagnostics
                .iter()
                .map(|found| wire::Diagnostic {
                    path: found.path.clone(),
                    line: found.line,
                    column: found.column.unwrap_or(0),
                    severity: found.severity.as_str().to_owned(),
                    code: found.code.clone(),
                    message: found.message.clone(),
                    tool: found.tool.clone(),
                    check: found.check.clone(),
                })
                .collect(),
            diff: report.diff.clone(),
            conflicts: report.conflicts.clone(),
            agent: report.agent.as_ref().map(|agent| wire::AgentRun {
                cli: agent.cli.clone(),
                exit_code: agent.exit_code,
                duration_ms: agent.duration_ms,
                diff: agent.diff.clone(),
                diff_truncated: agent.diff_truncated,
                files: agent.files.clone(),
                final_message: agent.final_message.clone(),
                transcript_tail: agent.transcript_tail.clone(),
                input_tokens: agent.input_tokens,
                output_tokens: agent.output_tokens,
                cost_usd: agent.cost_usd.clone(),
            }),
            sandbox: report.sandbox.clone(),
        }
    }
}

impl TryFrom<wire::ApplyReport> for ApplyReport {
    type Error = ConversionError;

    fn try_from(report: wire::ApplyReport) -> Result<Self, Self::Error> {
        let status = status_from_wire("report.status", report.status)?;
        if !status.is_terminal() {
            return Err(ConversionError::new(
                "report.status",
                format!("a report needs a terminal status, got {status}"),
            ));
        }
        let mut commands = Vec::with_capacity(report.commands.len());
        for (index, command) in report.commands.into_iter().enumerate() {
            let kind = match command.kind.as_str() {
                "" | "command" => CommandKind::Command,
                "validate" => CommandKind::Validate,
                "check" => CommandKind::Check,
                other => {
                    return Err(ConversionError::new(
                        format!("report.commands[{index}].kind"),
                        format!("expected \"command\", \"validate\" or \"check\", got {other:?}"),
                    ));
                }
            };
            commands.push(CommandReport {
                command: command.command,
                exit_code: command.exit_code,
                duration_ms: command.duration_ms,
                output_tail: command.output_tail,
                kind,
                output_head: command.output_head,
                omitted_bytes: command.omitted_bytes,
                timed_out: command.timed_out,
                signal: (command.signal != 0).then_some(command.signal),
                name: command.name,
                skipped: command.skipped,
                ..CommandReport::default()
            });
        }
        let mut diagnostics = Vec::with_capacity(report.diagnostics.len());
        for (index, found) in report.diagnostics.into_iter().enumerate() {
            let severity = Severity::parse(&found.severity).ok_or_else(|| {
                ConversionError::new(
                    format!("report.diagnostics[{index}].severity"),
                    format!(
                        "expected \"error\", \"warning\" or \"note\", got {:?}",
                        found.severity
                    ),
                )
            })?;
            diagnostics.push(Diagnostic {
                path: found.path,
                line: found.line,
                column: (found.column > 0).then_some(found.column),
                severity,
                code: found.code,
                message: found.message,
                tool: found.tool,
                check: found.check,
            });
        }
        Ok(Self {
            status,
            error: report.error,
            edits: report
                .edits
                .into_iter()
                .map(|edit| EditReport {
                    op: edit.op,
                    path: edit.path,
                    match_step: edit.match_step,
                    added: edit.added,
                    removed: edit.removed,
                    from: edit.from,
                })
                .collect(),
            commands,
            duration_ms: report.duration_ms,
            stages: report
                .stages
                .into_iter()
                .map(|stage| StageTiming {
                    stage: stage.stage,
                    duration_ms: stage.duration_ms,
                    duration_us: stage.duration_us,
                })
                .collect(),
            rollback: report.rollback.map(|rollback| Rollback {
                restored: rollback.restored,
                removed: rollback.removed,
                reason: rollback.reason,
                error: rollback.error,
            }),
            commit_sha: report.commit_sha,
            dry_run: report.dry_run,
            diagnostics,
            diff: report.diff,
            conflicts: report.conflicts,
            agent: report.agent.map(|agent| AgentRun {
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
            }),
            sandbox: report.sandbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Patch {
        ghost_core::parse_json(
            br#"{"id":"p1","target":"MAIN","description":"d","priority":"high","depends_on":["p0"],
                "base":{"git_head":"abc"},
                "edits":[{"op":"write","path":"a","contents":"x"},{"op":"rename","from":"b","to":"c"},
                         {"op":"chmod","path":"d","mode":"755"}],
                "commands":["make"],"validate":[{"run":"make test","timeout_s":9}],
                "timeout_s":60,"on_failure":"keep","commit":{"message":"m"}}"#,
        )
        .unwrap()
    }

    #[test]
    fn patches_round_trip_through_the_wire() {
        let patch = sample();
        let back = Patch::try_from(wire::Patch::from(&patch)).unwrap();
        assert_eq!(back, patch);
        assert_eq!(back.content_hash(), patch.content_hash());
    }

    #[test]
    fn an_agent_run_and_the_sandbox_round_trip_through_the_wire() {
        let report = ApplyReport {
            agent: Some(AgentRun {
                cli: "aider".to_owned(),
                exit_code: Some(0),
                duration_ms: 12,
                diff: "diff --git a/a b/a\n".to_owned(),
                diff_truncated: true,
                files: vec!["a".to_owned()],
                final_message: "done".to_owned(),
                transcript_tail: "tail".to_owned(),
                input_tokens: Some(3),
                output_tokens: None,
                cost_usd: "0.01".to_owned(),
            }),
            sandbox: "landlock".to_owned(),
            ..ApplyReport::ended(Status::Succeeded, "")
        };
        let back = ApplyReport::try_from(wire::ApplyReport::from(&report)).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn bad_wire_paths_name_the_field() {
        let mut bad = wire::Patch::from(&sample());
        bad.edits[1] = wire::Edit {
            op: Some(wire::edit::Op::Write(wire::WriteFile {
                path: "../../etc/passwd".into(),
                contents: String::new(),
            })),
        };
        let err = Patch::try_from(bad).unwrap_err();
        assert_eq!(err.field, "edits[1].path");
    }

    #[test]
    fn cross_field_rules_apply_on_the_wire_too() {
        let mut bad = wire::Patch::from(&sample());
        bad.edits.clear();
        bad.commands.clear();
        bad.validate.clear();
        let err = Patch::try_from(bad).unwrap_err();
        assert_eq!(err.field, "edits");
    }

    #[test]
    fn statuses_round_trip() {
        for status in Status::ALL {
            let raw = wire::PatchStatus::from(status) as i32;
            assert_eq!(status_from_wire("s", raw).unwrap(), status);
        }
        assert!(status_from_wire("s", 0).is_err());
        assert!(status_from_wire("s", 99).is_err());
    }
}
