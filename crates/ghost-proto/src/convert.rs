//! Wire <-> domain conversions. Wire to domain is fallible and names the field that is wrong.
//!
//! [`patch`]: a patch and its edits, checks, priority and revert; [`report`]: an apply report
//! and its commands, diagnostics, stages, rollback and agent run. Statuses are here.

mod patch;
mod report;

use ghost_core::Status;

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

#[cfg(test)]
mod tests {
    use ghost_core::{AgentRun, ApplyReport, Patch};

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
