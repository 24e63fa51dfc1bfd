//! One attempt at a patch, all or nothing: ledger → plan → journal → write → snapshot →
//! commands → validate → owner checks → commit, with a byte-for-byte rollback on failure,
//! deadline or cancel: the edits from the journal, and whatever the commands and checks
//! changed from the [`snapshot`](crate::snapshot).
//!
//! Order of durability: the journal of originals is sealed (fsync'd) before the first
//! workspace write, and the snapshot is in force (durably) before the first command; the
//! ledger entry is written before the snapshot is released and the journal closed, so a
//! crash at any point either rolls back on restart or finds the patch recorded as applied.
//!
//! The stages of an attempt, each reported once (when it runs) with its wall time:
//! `plan`, `journal`, `write`, `snapshot`, `commands`, `validate`, `checks`, `commit`,
//! `rollback`; a hand-off has `agent`, `validate`, `checks`.
//!
//! Patch checks with `if_allowed` (legacy `postMutationBuild` and `validate`) whose program
//! the target does not allow are not run and do not refuse the patch: each is reported as a
//! command with no exit code, no duration and an `output_tail` starting with `skipped: `.

mod admit;
mod after_write;
mod hand_off;
mod journaling;
mod scrub;
mod stages;

use std::time::{Duration, Instant};

use ghost_core::{ApplyReport, OnFailure, Patch, Rollback, Status};
use ghost_runtime::storage::FaultKind;
use tokio_util::sync::CancellationToken;

use crate::beneath::{self, Dirs, RootId};
use crate::journal::{self, Journal};
use crate::ledger::Ledger;
use crate::plan::Plan;
use crate::revert;
use crate::snapshot::{self, Scope, Snapshot};
use crate::workspace::{Limits, Workspace};

use self::admit::{Admitted, admit, plan_edits};
use self::after_write::{commit, run_after_write};
use self::hand_off::hand_off;
pub use self::hand_off::{
    MAX_AGENT_DIFF_BYTES, MAX_AGENT_FILES, MAX_AGENT_FILES_BYTES, MAX_AGENT_NOTES_BYTES,
    MAX_AGENT_REPORT_BYTES, MAX_TRANSCRIPT_BYTES,
};
use self::journaling::{
    JournalFailed, clear_leftover_journal, close_journal, open_journal, roll_back, rollback_failed,
    write_plan,
};
pub(crate) use self::journaling::{journals_unclosed, rollback_record};
pub(crate) use self::scrub::{scrub, scrub_report};
use self::stages::Attempt;

/// What an attempt needs besides the patch.
#[derive(Debug, Clone)]
pub struct Context {
    /// The workspace.
    pub workspace: Workspace,
    /// Size limits.
    pub limits: Limits,
    /// Deadline of a patch without `timeout_s`.
    pub default_timeout: Duration,
    /// For crash tests only: pause after each file written (zero in production; the binary
    /// sets it from [`crate::TEST_WRITE_DELAY_VAR`] in a debug build only).
    pub write_delay: Duration,
    /// The identity of the workspace root when the executor started; every attempt, command
    /// and git run first checks that the root is still that directory.
    pub root_id: RootId,
}

/// Refuses when the workspace root is no longer the directory recorded at start. Commands
/// and git are given the root as a path (their working directory), so it is checked just
/// before each runs; the file operations go through the handle checked by
/// [`Dirs::open_checked`].
pub(crate) fn root_unchanged(ctx: &Context) -> Result<(), String> {
    let found = RootId::of(&ctx.workspace.root);
    if found.as_ref().is_ok_and(|id| *id == ctx.root_id) {
        return Ok(());
    }
    root_replaced(
        ctx,
        &found.map_or_else(|err| err.to_string(), |id| format!("{id:?}")),
    );
    Err(beneath::replaced_root().to_string())
}

/// Logs (with the paths, for the operator) and counts a replaced root.
fn root_replaced(ctx: &Context, found: &str) {
    metrics::counter!("ghost_executor_root_replaced_total", "target" => ctx.workspace.target.clone())
        .increment(1);
    tracing::error!(target = %ctx.workspace.target, root = %ctx.workspace.root.display(),
        expected = ?ctx.root_id, %found,
        "the workspace root is no longer the directory it was at start; refusing to use it");
}

/// The router's lease on this attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lease {
    /// Attempt number.
    pub attempt: u32,
    /// Fencing token.
    pub fencing_token: u64,
}

/// The executor's own storage (its state dir: journal, ledger, snapshots) failed while an
/// attempt needed it. The attempt left the workspace as it was, and its lease is handed back
/// with no result: the router requeues the patch, and the executor reconnects only once a
/// probe write in its state dir succeeds (see the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandBack {
    /// What the disk did.
    pub kind: FaultKind,
    /// What failed, for the executor's log (may name paths; never reported).
    pub detail: String,
}

impl HandBack {
    fn of(what: &str, err: &std::io::Error) -> Self {
        let kind = if journal::is_unsynced(err) {
            FaultKind::Fsync
        } else {
            FaultKind::from_io(err).unwrap_or(FaultKind::Io)
        };
        Self {
            kind,
            detail: format!("{what}: {err}"),
        }
    }
}

/// How an attempt ended: with a report for the router, or handed back.
#[derive(Debug)]
pub enum Ended {
    /// The attempt's report.
    Report(Box<ApplyReport>),
    /// The executor's storage failed; nothing of the patch stayed in the workspace.
    HandBack(HandBack),
}

/// Applies `patch` once, or hands its lease back when the executor's own storage fails.
///
/// What happens at each point where the state dir can fail:
///
/// - **Reading the ledger, clearing an earlier journal**: reads and removals, which a full disk
///   does not refuse; a leftover journal that cannot be rolled back refuses the patch as
///   before (reported, with the `workspace_not_restored` alert).
/// - **Sealing the journal** (write, fsync, rename, folder fsync): nothing was written to the
///   workspace yet and the unsealed file is removed: handed back.
/// - **Writing the workspace**: the workspace's own disk, not the state dir: rolled back from
///   the journal and reported as before.
/// - **Taking the snapshot** before the commands (under `<state_dir>/snapshots`): a storage
///   fault rolls the edits back from the journal (never kept, whatever `on_failure` says);
///   once the workspace is whole again: handed back.
/// - **Commands, checks, commit**: no state-dir writes.
/// - **Recording the ledger entry** of a kept effect (write, fsync, rename, folder fsync): the
///   entry is removed if the rename happened, then the patch is rolled back from the journal
///   and the snapshot, the journal closed: handed back. Should the entry not be removable it
///   stays, and the effect with it: what the ledger says is what the workspace holds.
/// - **Releasing the snapshot, keeping the revert record, closing the journal**: after the
///   ledger entry, so the outcome is decided; a failure is logged, and a journal left behind
///   is counted in `ghost_executor_journals_unclosed{target}` until the next patch clears it.
///
/// A rollback that cannot restore everything is never handed back: its report (and the kept
/// journal that blocks the target) says what is not restored.
pub fn apply_or_hand_back(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    cancel: &CancellationToken,
) -> Ended {
    let mut fault = None;
    let mut report = apply_once(ctx, patch, lease, false, cancel, &mut fault);
    if let Some(fault) = fault {
        return Ended::HandBack(fault);
    }
    scrub_report(&mut report, &ctx.workspace);
    Ended::Report(Box::new(report))
}

/// Applies `patch` once. Never panics on bad input; every outcome is a report, and no text in
/// it names the workspace root or the state dir (they stay in the executor's own logs).
pub fn apply(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    dry_run: bool,
    cancel: &CancellationToken,
) -> ApplyReport {
    let mut report = apply_once(ctx, patch, lease, dry_run, cancel, &mut None);
    scrub_report(&mut report, &ctx.workspace);
    report
}

/// A stage's refusal: the status the attempt ends with, and why.
type Refused = (Status, String);

fn apply_once(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    dry_run: bool,
    cancel: &CancellationToken,
    fault: &mut Option<HandBack>,
) -> ApplyReport {
    let ledger = Ledger::new(&ctx.workspace.state_dir);
    let hash = patch.content_hash();
    let mut attempt = start_attempt(ctx, patch, dry_run, cancel);
    if let Err(reason) = clear_leftover_journal(ctx, &ledger) {
        // As a rollback record, so the router keeps its `workspace_not_restored` alert up.
        attempt.report.rollback = Some(Rollback {
            restored: 0,
            removed: 0,
            reason: "the journal of an earlier patch is still open".to_owned(),
            error: reason.clone(),
        });
        return attempt.end(Status::Rejected, reason);
    }
    // After the journal check: a re-delivered patch must not report success (and clear the
    // router's `workspace_not_restored` alert) while the workspace is not restored.
    if let Some(recorded) = ledger.get(ctx.workspace.target.as_str(), patch.id.as_str(), &hash) {
        tracing::info!(patch_id = %patch.id, "patch already applied; returning the recorded result");
        return recorded;
    }
    // Everything below until the journal is sealed only reads.
    let admitted = match admit(ctx, patch) {
        Ok(admitted) => admitted,
        Err((status, reason)) => return attempt.end(status, reason),
    };
    if let Some(task) = &patch.agent {
        let Admitted {
            commands,
            mut validate,
            owners,
            scope,
        } = admitted;
        validate.splice(0..0, commands);
        return hand_off(
            attempt, &task.task, &validate, &owners, &scope, &ledger, &hash, lease, dry_run, fault,
        );
    }
    let (plan, mut dirs) = match plan_edits(&mut attempt) {
        Ok(planned) => planned,
        Err((status, reason)) => return attempt.end(status, reason),
    };
    attempt.report.edits = plan.reports.clone();
    if dry_run {
        return attempt.end(Status::Succeeded, "");
    }
    let (journal, mut failure) = match write_journaled(&mut attempt, &plan, &mut dirs, lease) {
        Ok(written) => written,
        Err(err) => {
            // Nothing was written; a half-made journal is removed by the next recovery.
            if let JournalFailed::Seal(err) = &err {
                *fault = Some(HandBack::of("cannot write the journal", err));
            }
            return attempt.end(Status::Failed, format!("cannot write the journal: {err}"));
        }
    };
    let after = run_after_write(&mut attempt, &admitted, &plan, lease, &mut failure);
    let failure = failure.or_else(|| commit(&mut attempt, &plan));
    let kept = Kept {
        journal,
        scope: &admitted.scope,
        snapshot: after.taken.as_ref(),
        edited_ignore_file: plan.files.keys().any(|rel| snapshot::is_ignore_file(rel)),
        touched: plan.files.keys().cloned().collect(),
    };
    let keep_asked = patch.on_failure == OnFailure::Keep;
    let (status, reason) = match failure {
        None => (Status::Succeeded, String::new()),
        Some((Status::Failed, reason)) if keep_asked && !after.checks_failed => {
            (Status::Failed, reason)
        }
        Some(failed) => {
            let snapshot_fault = after.snapshot_fault;
            return roll_back_attempt(attempt, kept, &mut dirs, failed, snapshot_fault, fault);
        }
    };
    finish(
        attempt, kept, &mut dirs, &ledger, &hash, status, reason, fault,
    )
}

/// Opens the journal of originals (durable before the first write), then writes the plan;
/// a failure to write (or a deadline or cancel reached by then) is the attempt's failure.
fn write_journaled(
    attempt: &mut Attempt<'_>,
    plan: &Plan,
    dirs: &mut Dirs,
    lease: Lease,
) -> Result<(Journal, Option<Refused>), JournalFailed> {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let journal = attempt.stage("journal", |_| open_journal(ctx, patch, lease, plan, dirs))?;
    let written = attempt.stage("write", |_| write_plan(plan, dirs, ctx.write_delay));
    let mut failure = written.err().map(|reason| (Status::RolledBack, reason));
    if failure.is_none() {
        failure = attempt.interrupted();
    }
    Ok((journal, failure))
}

/// A new attempt at `patch`, its deadline the patch's `timeout_s` (or the default) from now.
fn start_attempt<'a>(
    ctx: &'a Context,
    patch: &'a Patch,
    dry_run: bool,
    cancel: &'a CancellationToken,
) -> Attempt<'a> {
    let started = Instant::now();
    let timeout = patch
        .timeout_s
        .map_or(ctx.default_timeout, |s| Duration::from_secs(u64::from(s)));
    Attempt {
        ctx,
        patch,
        started,
        deadline: started + timeout,
        cancel,
        report: ApplyReport {
            dry_run,
            ..ApplyReport::ended(Status::Succeeded, "")
        },
    }
}

/// Rolls a failed attempt back from the journal and the snapshot. When everything is
/// restored the journal is closed; else it stays, and the target refuses patches until a
/// later rollback restores everything. A snapshot's storage fault is handed back (`fault`)
/// only once the workspace is whole.
fn roll_back_attempt(
    mut attempt: Attempt<'_>,
    kept: Kept<'_>,
    dirs: &mut Dirs,
    (status, reason): Refused,
    snapshot_fault: Option<HandBack>,
    fault: &mut Option<HandBack>,
) -> ApplyReport {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let target = ctx.workspace.target.as_str();
    let Kept {
        journal,
        scope,
        snapshot,
        edited_ignore_file,
        ..
    } = kept;
    let restored = attempt.stage("rollback", |_| {
        roll_back(ctx, scope, snapshot, &journal, dirs, edited_ignore_file)
    });
    attempt.report.rollback = Some(rollback_record(&restored, &reason));
    let status = if status == Status::Failed {
        Status::RolledBack
    } else {
        status
    };
    if !restored.errors.is_empty() {
        // The journal stays: the next patch for this target (or a restart) tries again, and
        // refuses loudly while it cannot.
        rollback_failed(target, patch, &restored);
        let error = format!(
            "{reason}; the rollback could not restore everything ({}), so this target \
             refuses patches until it can",
            restored.errors.join("; ")
        );
        return attempt.end(status, error);
    }
    close_journal(target, journal);
    *fault = snapshot_fault;
    attempt.end(status, reason)
}

/// The ledger entry of a kept effect could not be written: the entry is removed (a failed
/// fsync after the rename may have left it), the patch rolled back from the journal and the
/// snapshot, and the lease handed back. If the entry cannot be removed, the effect stays with
/// it (`Err`: the caller goes on as recorded).
#[allow(clippy::too_many_arguments)]
fn unrecorded(
    ctx: &Context,
    scope: &Scope,
    snapshot: Option<&Snapshot>,
    journal: Journal,
    dirs: &mut Dirs,
    edited_ignore_file: bool,
    ledger: &Ledger,
    patch: &Patch,
    hash: &str,
    report: ApplyReport,
    err: &std::io::Error,
    fault: &mut Option<HandBack>,
) -> Result<ApplyReport, Box<(Journal, ApplyReport)>> {
    let target = ctx.workspace.target.as_str();
    tracing::error!(patch_id = %patch.id, %target, error = %err, "cannot record the patch in the ledger");
    if !ledger.forget(target, patch.id.as_str(), hash) {
        return Err(Box::new((journal, report)));
    }
    let restored = roll_back(ctx, scope, snapshot, &journal, dirs, edited_ignore_file);
    let mut failed = report;
    failed.status = Status::RolledBack;
    failed.error = format!("cannot record the patch in the ledger: {err}");
    failed.rollback = Some(rollback_record(&restored, &failed.error));
    if restored.errors.is_empty() {
        close_journal(target, journal);
        *fault = Some(HandBack::of("cannot record the patch in the ledger", err));
    } else {
        rollback_failed(target, patch, &restored);
    }
    Ok(failed)
}

/// What an attempt that wrote holds until it ends.
struct Kept<'a> {
    journal: Journal,
    scope: &'a Scope,
    snapshot: Option<&'a Snapshot>,
    edited_ignore_file: bool,
    /// The file paths the plan wrote or removed (the revert record's paths).
    touched: Vec<String>,
}

/// Records a kept effect in the ledger, then releases the snapshot and closes the journal,
/// or, for a success, keeps it as the patch's revert record ([`revert::keep`]).
#[allow(clippy::too_many_arguments)]
fn finish(
    attempt: Attempt<'_>,
    kept: Kept<'_>,
    dirs: &mut Dirs,
    ledger: &Ledger,
    hash: &str,
    status: Status,
    error: String,
    fault: &mut Option<HandBack>,
) -> ApplyReport {
    let Kept {
        journal,
        scope,
        snapshot,
        edited_ignore_file,
        touched,
    } = kept;
    let ctx = attempt.ctx;
    let target = attempt.ctx.workspace.target.clone();
    let patch_id = attempt.patch.id.to_string();
    let attempt_patch = attempt.patch;
    let mut report = attempt.end(status, error);
    let mut journal = journal;
    if let Err(err) = ledger.record(&target, &patch_id, hash, &report) {
        // Without the ledger entry a re-delivery would apply again: undone, and handed back.
        match unrecorded(
            ctx,
            scope,
            snapshot,
            journal,
            dirs,
            edited_ignore_file,
            ledger,
            attempt_patch,
            hash,
            report,
            &err,
            fault,
        ) {
            Ok(failed) => return failed,
            Err(kept) => (journal, report) = *kept,
        }
    }
    if snapshot.is_some()
        && let Err(err) = snapshot::release(scope)
    {
        // Recorded applied: a restart finds the patch in the ledger and only drops it.
        tracing::error!(%target, error = %err, "cannot release the snapshot");
    }
    let unkept = if status == Status::Succeeded {
        revert::keep(ctx, &patch_id, hash, journal, &touched)
    } else {
        Some(journal)
    };
    if let Some(journal) = unkept {
        close_journal(&target, journal);
    }
    report
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::scrub::redact;
    use super::*;
    use crate::config::TargetPolicy;

    #[test]
    fn a_secret_is_redacted_whole_and_where_a_cut_left_a_piece_of_it() {
        let secrets = vec![("API_KEY".to_owned(), "sk-0123456789abcdef".to_owned())];
        let mut text =
            "6789abcdef starts; sk-0123456789abcdef in the middle; ends sk-0123".to_owned();
        redact(&mut text, &secrets);
        assert_eq!(
            text,
            "[redacted:API_KEY] starts; [redacted:API_KEY] in the middle; ends [redacted:API_KEY]"
        );
        let mut plain = "nothing secret here".to_owned();
        redact(&mut plain, &secrets);
        assert_eq!(plain, "nothing secret here");
    }

    #[test]
    fn reported_text_names_workspace_paths_relatively_and_no_server_path() {
        let workspace = Workspace {
            target: "MAIN".to_owned(),
            root: PathBuf::from("/srv/ghost/ws"),
            state_dir: PathBuf::from("/srv/ghost/ws/.ghost/executor"),
            policy: TargetPolicy::default(),
        };
        let mut text = "cannot write /srv/ghost/ws/src/a.rs; journal in \
                        /srv/ghost/ws/.ghost/executor/journal; cwd /srv/ghost/ws"
            .to_owned();
        scrub(&mut text, &workspace);
        assert_eq!(
            text,
            "cannot write src/a.rs; journal in <executor state>/journal; cwd ."
        );
    }

    #[test]
    fn a_sibling_whose_name_starts_like_the_root_is_left_whole() {
        let workspace = Workspace {
            target: "MAIN".to_owned(),
            root: PathBuf::from("/srv/ws"),
            state_dir: PathBuf::from("/var/lib/ghost"),
            policy: TargetPolicy::default(),
        };
        let mut text = "see /srv/ws2/a and /srv/ws.bak, not /srv/ws: done".to_owned();
        scrub(&mut text, &workspace);
        assert_eq!(text, "see /srv/ws2/a and /srv/ws.bak, not .: done");
    }
}
