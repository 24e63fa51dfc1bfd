//! Before anything is written: the commands, checks and owner checks a patch will run,
//! admitted by the target's policy, and the plan of its edits made in memory.

use std::time::Duration;

use ghost_core::{CommandKind, Patch, Status, fileops};

use crate::beneath::{self, Dirs};
use crate::plan::{self, Plan};
use crate::revert::{self, Refusal};
use crate::snapshot::Scope;
use crate::{commands, git};

use super::stages::{Attempt, OwnerStep, Step, owner_steps};
use super::{Context, Refused, root_replaced, root_unchanged};

/// What an attempt will run besides its edits, admitted before anything is written.
pub(super) struct Admitted {
    /// The patch's commands.
    pub(super) commands: Vec<Step>,
    /// The patch's checks (`validate`), a check the target does not allow skipped when it
    /// says `if_allowed`.
    pub(super) validate: Vec<Step>,
    /// The target's owner checks.
    pub(super) owners: Vec<OwnerStep>,
    /// What a snapshot of the workspace covers.
    pub(super) scope: Scope,
}

/// Admits what the patch and the target will run (each command line against the target's
/// policy), the snapshot's scope, and the git state the patch expects; only reads.
pub(super) fn admit(ctx: &Context, patch: &Patch) -> Result<Admitted, Refused> {
    let target = ctx.workspace.target.as_str();
    let (commands, validate) = admit_steps(ctx, patch)?;
    let owners = owner_steps(&ctx.workspace.policy).map_err(|reason| {
        (
            Status::Rejected,
            format!("target {target}'s owner checks cannot run: {reason}"),
        )
    })?;
    let scope =
        Scope::new(&ctx.workspace, ctx.root_id, ctx.limits.max_file_bytes).map_err(|reason| {
            (
                Status::Rejected,
                format!("target {target}'s rollback_ignore cannot be used: {reason}"),
            )
        })?;
    // Git may run for a base, an agent's hand-off, or a revert naming a commit.
    let runs_git = patch.base.is_some()
        || patch.agent.is_some()
        || patch
            .revert
            .as_ref()
            .is_some_and(|spec| spec.commit.is_some());
    if runs_git {
        root_unchanged(ctx).map_err(|reason| (Status::Failed, reason))?;
    }
    if let Some(base) = &patch.base {
        git::check_head(&ctx.workspace.root, &base.git_head)
            .map_err(|reason| (Status::Rejected, reason))?;
    }
    Ok(Admitted {
        commands,
        validate,
        owners,
        scope,
    })
}

/// The patch's commands and checks, each admitted by the target's policy; a check the policy
/// does not allow is skipped when it says `if_allowed`, else the patch is refused.
fn admit_steps(ctx: &Context, patch: &Patch) -> Result<(Vec<Step>, Vec<Step>), Refused> {
    let target = ctx.workspace.target.as_str();
    let mut commands = Vec::new();
    for line in &patch.commands {
        match commands::admit(&ctx.workspace.policy, target, line) {
            Ok(argv) => commands.push(Step::Run {
                line: line.clone(),
                argv,
                kind: CommandKind::Command,
                timeout: None,
                name: String::new(),
            }),
            Err(reason) => return Err((Status::Rejected, reason)),
        }
    }
    let mut validate = Vec::new();
    for check in &patch.validate {
        match commands::admit(&ctx.workspace.policy, target, &check.run) {
            Ok(argv) => validate.push(Step::Run {
                line: check.run.clone(),
                argv,
                kind: CommandKind::Validate,
                timeout: check.timeout_s.map(|s| Duration::from_secs(u64::from(s))),
                name: String::new(),
            }),
            Err(reason) if check.if_allowed => validate.push(Step::Skip {
                line: check.run.clone(),
                kind: CommandKind::Validate,
                reason,
            }),
            Err(reason) => return Err((Status::Rejected, reason)),
        }
    }
    Ok((commands, validate))
}

/// Opens the workspace (checked to be the root recorded at start) and plans the edits in
/// memory: from the patch's edits, or from the reverted patch's record (or git).
pub(super) fn plan_edits(attempt: &mut Attempt<'_>) -> Result<(Plan, Dirs), Refused> {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let ops = match patch.revert {
        // A revert's plan comes from the reverted patch's record (or git), not from edits.
        Some(_) => Vec::new(),
        None => fileops::plan(patch).map_err(|err| (Status::Rejected, err.to_string()))?,
    };
    let mut dirs = match Dirs::open_checked(&ctx.workspace.root, ctx.root_id) {
        Ok(dirs) => dirs,
        Err(err) if beneath::is_replaced_root(&err) => {
            root_replaced(ctx, "another directory");
            return Err((Status::Failed, err.to_string()));
        }
        Err(err) => {
            tracing::error!(root = %ctx.workspace.root.display(), error = %err, "cannot open the workspace");
            return Err((Status::Failed, format!("cannot open the workspace: {err}")));
        }
    };
    let planned = attempt.stage("plan", |_| match &patch.revert {
        Some(spec) => revert::plan(ctx, &mut dirs, spec),
        None => plan::build(&ctx.workspace, &mut dirs, &ops, ctx.limits).map_err(Refusal::from),
    });
    match planned {
        Ok(plan) => Ok((plan, dirs)),
        Err(Refusal::Rejected(reason)) => Err((Status::Rejected, reason)),
        Err(Refusal::Failed(reason)) => Err((Status::Failed, reason)),
        Err(Refusal::Conflicts(paths, reason)) => {
            attempt.report.conflicts = paths;
            Err((Status::Rejected, reason))
        }
    }
}
