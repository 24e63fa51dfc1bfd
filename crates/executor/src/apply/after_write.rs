//! After the write: the snapshot, the patch's commands and checks, the owner checks, the
//! `.git` guard and the commit, each adding to the attempt's failure.

use std::path::PathBuf;

use ghost_core::{OnFailure, Status};
use ghost_runtime::storage::FaultKind;

use crate::plan::Plan;
use crate::snapshot::{self, Scope, Snapshot};
use crate::{git, journal};

use super::admit::Admitted;
use super::stages::{Attempt, OwnerStep, Step};
use super::{HandBack, Lease, Refused, root_unchanged};

/// What ran after the write: the snapshot (when something ran), whether its storage failed
/// (handed back once the workspace is whole), and whether an owner check failed.
pub(super) struct AfterWrite {
    /// The snapshot the commands and checks are rolled back from.
    pub(super) taken: Option<Snapshot>,
    /// The hand-back of a storage fault while taking the snapshot.
    pub(super) snapshot_fault: Option<HandBack>,
    /// An owner check failed: the patch is rolled back even with `on_failure = "keep"`.
    pub(super) checks_failed: bool,
}

/// After the write: the snapshot, the patch's commands and checks, the owner checks and the
/// `.git` guard, each adding to `failure`.
pub(super) fn run_after_write(
    attempt: &mut Attempt<'_>,
    admitted: &Admitted,
    plan: &Plan,
    lease: Lease,
    failure: &mut Option<Refused>,
) -> AfterWrite {
    let Admitted {
        commands,
        validate,
        owners,
        scope,
    } = admitted;
    let runs_something = validate.iter().any(|step| matches!(step, Step::Run { .. }))
        || !commands.is_empty()
        || !owners.is_empty();
    let (taken, snapshot_fault) = if failure.is_none() && runs_something {
        take_snapshot(attempt, scope, lease, failure)
    } else {
        (None, None)
    };
    if failure.is_none() && !commands.is_empty() {
        *failure = attempt.stage("commands", |a| a.run_steps(commands));
    }
    if failure.is_none() && !validate.is_empty() {
        *failure = attempt.stage("validate", |a| a.run_steps(validate));
    }
    let checks_failed = check_owners(attempt, owners, plan, taken.as_ref(), scope, failure);
    refuse_git_changes(attempt, taken.as_ref(), scope, failure);
    AfterWrite {
        taken,
        snapshot_fault,
        checks_failed,
    }
}

/// Takes the snapshot the commands and checks are rolled back from. A failure to take it is
/// put in `failure`; a storage fault also gives the hand-back to report once the workspace
/// is whole (it is never kept, `on_failure = "keep"` or not).
fn take_snapshot(
    attempt: &mut Attempt<'_>,
    scope: &Scope,
    lease: Lease,
    failure: &mut Option<Refused>,
) -> (Option<Snapshot>, Option<HandBack>) {
    let ctx = attempt.ctx;
    let target = ctx.workspace.target.as_str();
    let label = format!("patch {} attempt {}", attempt.patch.id, lease.attempt);
    match attempt.stage("snapshot", |_| snapshot::take(scope, &label)) {
        Ok(snapshot) => {
            tracing::debug!(
                entries = snapshot.taken.entries,
                hashed = snapshot.taken.hashed,
                stored = snapshot.taken.stored,
                collected = snapshot.taken.collected,
                "workspace snapshot taken"
            );
            (Some(snapshot), None)
        }
        Err(err) => {
            tracing::error!(%target, error = %err, "cannot snapshot the workspace");
            let mut snapshot_fault = None;
            let status = if FaultKind::from_io(&err).is_some() || journal::is_unsynced(&err) {
                snapshot_fault = Some(HandBack::of("cannot snapshot the workspace", &err));
                Status::RolledBack
            } else {
                Status::Failed
            };
            *failure = Some((
                status,
                format!("cannot snapshot the workspace before the patch's commands: {err}"),
            ));
            (None, snapshot_fault)
        }
    }
}

/// Runs the target's owner checks whenever the edits could be kept: on success, and after a
/// failure `on_failure = "keep"` would keep. A failing check is added to `failure` (it rolls
/// back whatever the patch asked); returns whether one failed.
fn check_owners(
    attempt: &mut Attempt<'_>,
    owners: &[OwnerStep],
    plan: &Plan,
    taken: Option<&Snapshot>,
    scope: &Scope,
    failure: &mut Option<Refused>,
) -> bool {
    let ctx = attempt.ctx;
    let target = ctx.workspace.target.as_str();
    let keep_asked = attempt.patch.on_failure == OnFailure::Keep;
    let checks_due = match failure.as_ref() {
        None => true,
        Some((status, _)) => *status == Status::Failed && keep_asked,
    };
    if !checks_due || owners.is_empty() {
        return false;
    }
    let edited = plan.files.keys().chain(&plan.dirs).map(PathBuf::from);
    let changed = || {
        let mut paths: Vec<PathBuf> = edited.collect();
        match taken.map(|snapshot| snapshot.changed(scope)) {
            Some(Ok(found)) => paths.extend(snapshot::as_paths(&found)),
            Some(Err(err)) => {
                tracing::warn!(%target, error = %err,
                    "cannot list what the commands changed; every changed: check runs");
                return None;
            }
            None => {}
        }
        Some(paths)
    };
    let checked = attempt.stage("checks", |a| a.run_owner_checks(owners, changed));
    let Some((status, reason)) = checked else {
        return false;
    };
    *failure = Some(match failure.take() {
        Some((_, first)) => (status, format!("{first}; then {reason}")),
        None => (status, reason),
    });
    true
}

/// Commands may run git, but not change what git obeys: the commit and the rollback's
/// listing run git on this repository. Such a patch is rolled back, keep or not.
fn refuse_git_changes(
    attempt: &Attempt<'_>,
    taken: Option<&Snapshot>,
    scope: &Scope,
    failure: &mut Option<Refused>,
) {
    let Some(what) = taken.and_then(|snapshot| snapshot.git_changed(scope)) else {
        return;
    };
    let ctx = attempt.ctx;
    let target = ctx.workspace.target.as_str();
    tracing::warn!(%target, change = what, "a command changed the repository's .git");
    let reason = format!("{what} by the patch's commands, which is not allowed");
    *failure = Some(match failure.take() {
        None => (Status::RolledBack, reason),
        Some((Status::Failed, first)) => (Status::RolledBack, format!("{first}; {reason}")),
        Some(other) => other,
    });
}

/// Commits the written files when the patch asks for a commit; a failure rolls back.
pub(super) fn commit(attempt: &mut Attempt<'_>, plan: &Plan) -> Option<Refused> {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let spec = patch.commit.as_ref()?;
    let touched: Vec<PathBuf> = plan
        .files
        .keys()
        .map(|rel| ctx.workspace.root.join(rel))
        .collect();
    if let Err(reason) = root_unchanged(ctx) {
        return Some((Status::RolledBack, reason));
    }
    match attempt.stage("commit", |_| {
        git::commit(
            &ctx.workspace.root,
            &touched,
            &spec.message,
            patch.id.as_str(),
        )
    }) {
        Ok(sha) => {
            attempt.report.commit_sha = sha;
            None
        }
        Err(reason) => Some((Status::RolledBack, reason)),
    }
}
