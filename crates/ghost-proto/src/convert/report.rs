//! An apply report, wire <-> domain: a wire report needs a terminal status, and its command
//! kinds and diagnostic severities must be ones the domain knows.

use ghost_core::{
    AgentRun, ApplyReport, CommandKind, CommandReport, Diagnostic, EditReport, Rollback, Severity,
    StageTiming,
};

use super::{ConversionError, status_from_wire};
use crate::router::v1 as wire;

impl From<&ApplyReport> for wire::ApplyReport {
    fn from(report: &ApplyReport) -> Self {
        Self {
            status: wire::PatchStatus::from(report.status) as i32,
            error: report.error.clone(),
            edits: report.edits.iter().map(wire::EditReport::from).collect(),
            commands: report
                .commands
                .iter()
                .map(wire::CommandReport::from)
                .collect(),
            duration_ms: report.duration_ms,
            stages: report.stages.iter().map(wire::StageTiming::from).collect(),
            rollback: report.rollback.as_ref().map(wire::Rollback::from),
            commit_sha: report.commit_sha.clone(),
            dry_run: report.dry_run,
            diagnostics: report
                .diagnostics
                .iter()
                .map(wire::Diagnostic::from)
                .collect(),
            diff: report.diff.clone(),
            conflicts: report.conflicts.clone(),
            agent: report.agent.as_ref().map(wire::AgentRun::from),
            sandbox: report.sandbox.clone(),
        }
    }
}

impl From<&EditReport> for wire::EditReport {
    fn from(edit: &EditReport) -> Self {
        Self {
            op: edit.op.clone(),
            path: edit.path.clone(),
            match_step: edit.match_step.clone(),
            added: edit.added,
            removed: edit.removed,
            from: edit.from.clone(),
        }
    }
}

impl From<&CommandReport> for wire::CommandReport {
    fn from(command: &CommandReport) -> Self {
        Self {
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
        }
    }
}

impl From<&StageTiming> for wire::StageTiming {
    fn from(stage: &StageTiming) -> Self {
        Self {
            stage: stage.stage.clone(),
            duration_ms: stage.duration_ms,
            duration_us: stage.duration_us,
        }
    }
}

impl From<&Rollback> for wire::Rollback {
    fn from(rollback: &Rollback) -> Self {
        Self {
            restored: rollback.restored,
            removed: rollback.removed,
            reason: rollback.reason.clone(),
            error: rollback.error.clone(),
        }
    }
}

impl From<&Diagnostic> for wire::Diagnostic {
    fn from(found: &Diagnostic) -> Self {
        Self {
            path: found.path.clone(),
            line: found.line,
            column: found.column.unwrap_or(0),
            severity: found.severity.as_str().to_owned(),
            code: found.code.clone(),
            message: found.message.clone(),
            tool: found.tool.clone(),
            check: found.check.clone(),
        }
    }
}

impl From<&AgentRun> for wire::AgentRun {
    fn from(agent: &AgentRun) -> Self {
        Self {
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
        let commands = report
            .commands
            .into_iter()
            .enumerate()
            .map(|(index, command)| command_from_wire(index, command))
            .collect::<Result<Vec<_>, _>>()?;
        let diagnostics = report
            .diagnostics
            .into_iter()
            .enumerate()
            .map(|(index, found)| diagnostic_from_wire(index, found))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            status,
            error: report.error,
            edits: report.edits.into_iter().map(EditReport::from).collect(),
            commands,
            duration_ms: report.duration_ms,
            stages: report.stages.into_iter().map(StageTiming::from).collect(),
            rollback: report.rollback.map(Rollback::from),
            commit_sha: report.commit_sha,
            dry_run: report.dry_run,
            diagnostics,
            diff: report.diff,
            conflicts: report.conflicts,
            agent: report.agent.map(AgentRun::from),
            sandbox: report.sandbox,
        })
    }
}

/// `report.commands[index]`; its `kind` must be one the domain knows (empty reads as command).
fn command_from_wire(
    index: usize,
    command: wire::CommandReport,
) -> Result<CommandReport, ConversionError> {
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
    Ok(CommandReport {
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
    })
}

/// `report.diagnostics[index]`; its `severity` must be one the domain knows.
fn diagnostic_from_wire(
    index: usize,
    found: wire::Diagnostic,
) -> Result<Diagnostic, ConversionError> {
    let severity = Severity::parse(&found.severity).ok_or_else(|| {
        ConversionError::new(
            format!("report.diagnostics[{index}].severity"),
            format!(
                "expected \"error\", \"warning\" or \"note\", got {:?}",
                found.severity
            ),
        )
    })?;
    Ok(Diagnostic {
        path: found.path,
        line: found.line,
        column: (found.column > 0).then_some(found.column),
        severity,
        code: found.code,
        message: found.message,
        tool: found.tool,
        check: found.check,
    })
}

impl From<wire::EditReport> for EditReport {
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

impl From<wire::StageTiming> for StageTiming {
    fn from(stage: wire::StageTiming) -> Self {
        Self {
            stage: stage.stage,
            duration_ms: stage.duration_ms,
            duration_us: stage.duration_us,
        }
    }
}

impl From<wire::Rollback> for Rollback {
    fn from(rollback: wire::Rollback) -> Self {
        Self {
            restored: rollback.restored,
            removed: rollback.removed,
            reason: rollback.reason,
            error: rollback.error,
        }
    }
}

impl From<wire::AgentRun> for AgentRun {
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
