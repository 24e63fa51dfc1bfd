//! A patch, wire <-> domain: the wire's empty strings and zeros are the domain's `None`, and a
//! wire patch must pass ghost-core's validation.

use ghost_core::{
    AgentTask, Base, Check, CommitSpec, Edit, OnFailure, Patch, PatchId, Priority, RelPath,
    RevertSpec, TargetName,
};

use super::ConversionError;
use crate::router::v1 as wire;

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
        let depends_on = depends_on_from_wire(&patch.depends_on)?;
        let priority = priority_from_wire(patch.priority)?;
        let on_failure = on_failure_from_wire(patch.on_failure)?;
        let revert = revert_from_wire(patch.revert_of, patch.revert_commit)?;
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
            validate: patch.validate.into_iter().map(Check::from).collect(),
            timeout_s: (patch.timeout_s > 0).then_some(patch.timeout_s),
            on_failure,
            commit: non_empty(patch.commit_message).map(|message| CommitSpec { message }),
            agent: non_empty(patch.agent_task).map(|task| AgentTask { task }),
            revert,
            notify: non_empty(patch.notify),
        };
        validated(domain)
    }
}

/// `domain` when it passes ghost-core's cross-field rules, else the first rule it breaks,
/// named like a wire field.
fn validated(domain: Patch) -> Result<Patch, ConversionError> {
    ghost_core::validate(&domain).map_err(|err| match err {
        ghost_core::PatchError::Invalid { pointer, message } => {
            ConversionError::new(pointer_to_field(&pointer), message)
        }
        other => ConversionError::new("patch", other.to_string()),
    })?;
    Ok(domain)
}

fn depends_on_from_wire(depends_on: &[String]) -> Result<Vec<PatchId>, ConversionError> {
    depends_on
        .iter()
        .enumerate()
        .map(|(i, dep)| {
            PatchId::parse(dep)
                .map_err(|e| ConversionError::new(format!("depends_on[{i}]"), e.to_string()))
        })
        .collect()
}

/// Unspecified reads as normal.
fn priority_from_wire(raw: i32) -> Result<Priority, ConversionError> {
    match wire::Priority::try_from(raw) {
        Ok(wire::Priority::Low) => Ok(Priority::Low),
        Ok(wire::Priority::Unspecified | wire::Priority::Normal) => Ok(Priority::Normal),
        Ok(wire::Priority::High) => Ok(Priority::High),
        Err(_) => Err(ConversionError::new(
            "priority",
            format!("unknown priority {raw}"),
        )),
    }
}

/// Unspecified reads as rollback.
fn on_failure_from_wire(raw: i32) -> Result<OnFailure, ConversionError> {
    match wire::OnFailure::try_from(raw) {
        Ok(wire::OnFailure::Unspecified | wire::OnFailure::Rollback) => Ok(OnFailure::Rollback),
        Ok(wire::OnFailure::Keep) => Ok(OnFailure::Keep),
        Err(_) => Err(ConversionError::new(
            "on_failure",
            format!("unknown on_failure {raw}"),
        )),
    }
}

/// The revert a patch is, from `revert_of` (empty: none) and `revert_commit` (which needs it).
fn revert_from_wire(
    revert_of: String,
    revert_commit: String,
) -> Result<Option<RevertSpec>, ConversionError> {
    match non_empty(revert_of) {
        Some(of) => Ok(Some(RevertSpec {
            of: PatchId::parse(&of)
                .map_err(|e| ConversionError::new("revert_of", e.to_string()))?,
            commit: non_empty(revert_commit),
        })),
        None if !revert_commit.is_empty() => Err(ConversionError::new(
            "revert_commit",
            "revert_commit needs revert_of",
        )),
        None => Ok(None),
    }
}

impl From<wire::Check> for Check {
    fn from(check: wire::Check) -> Self {
        Self {
            run: check.run,
            timeout_s: (check.timeout_s > 0).then_some(check.timeout_s),
            if_allowed: check.if_allowed,
        }
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
        Self {
            id: patch.id.to_string(),
            target: patch.target.to_string(),
            description: patch.description.clone(),
            priority: wire::Priority::from(patch.priority) as i32,
            depends_on: patch.depends_on.iter().map(ToString::to_string).collect(),
            base_git_head: patch
                .base
                .as_ref()
                .map(|base| base.git_head.clone())
                .unwrap_or_default(),
            edits: patch.edits.iter().map(wire::Edit::from).collect(),
            patch_document: patch.patch.clone().unwrap_or_default(),
            commands: patch.commands.clone(),
            validate: patch.validate.iter().map(wire::Check::from).collect(),
            timeout_s: patch.timeout_s.unwrap_or(0),
            on_failure: wire::OnFailure::from(patch.on_failure) as i32,
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

impl From<&Edit> for wire::Edit {
    fn from(edit: &Edit) -> Self {
        use wire::edit::Op;
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
        Self { op: Some(op) }
    }
}

impl From<&Check> for wire::Check {
    fn from(check: &Check) -> Self {
        Self {
            run: check.run.clone(),
            timeout_s: check.timeout_s.unwrap_or(0),
            if_allowed: check.if_allowed,
        }
    }
}

impl From<Priority> for wire::Priority {
    fn from(priority: Priority) -> Self {
        match priority {
            Priority::Low => Self::Low,
            Priority::Normal => Self::Normal,
            Priority::High => Self::High,
        }
    }
}

impl From<OnFailure> for wire::OnFailure {
    fn from(on_failure: OnFailure) -> Self {
        match on_failure {
            OnFailure::Rollback => Self::Rollback,
            OnFailure::Keep => Self::Keep,
        }
    }
}
