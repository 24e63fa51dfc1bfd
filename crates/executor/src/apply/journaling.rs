//! The journal's part in an attempt: opening it before the first write, writing the plan,
//! rolling back from it (and the snapshot), and closing it once the outcome is durable.

use std::time::Duration;

use ghost_core::{Patch, Rollback};

use crate::beneath::{self, Dirs};
use crate::journal::{self, Header, Journal, Restored};
use crate::ledger::Ledger;
use crate::plan::{Final, Plan};
use crate::snapshot::{self, Scope, Snapshot};

use super::{Context, Lease};

/// The report's rollback record: what could not be restored, retryable or not, is its error.
pub(crate) fn rollback_record(restored: &Restored, reason: &str) -> Rollback {
    let mut error = restored.errors.clone();
    error.extend(
        restored
            .incomplete
            .iter()
            .map(|what| format!("not restored: {what}")),
    );
    Rollback {
        restored: restored.restored,
        removed: restored.removed,
        reason: reason.to_owned(),
        error: error.join("; "),
    }
}

/// Undoes an attempt: the snapshot first (what the commands and checks changed), then the
/// edits from the journal, through fresh handles when the snapshot made directories again.
pub(super) fn roll_back(
    ctx: &Context,
    scope: &Scope,
    snapshot: Option<&Snapshot>,
    journal: &Journal,
    dirs: &mut Dirs,
    edited_ignore_file: bool,
) -> Restored {
    let mut done = Restored::default();
    if let Some(snapshot) = snapshot {
        done = snapshot.restore(scope);
        // Directories the commands removed may have been made again: the edits are then
        // restored through fresh handles. Otherwise through the handles the edits were
        // written with, so a directory renamed meanwhile is restored where it now is.
        if done.restored + done.removed > 0 {
            match Dirs::open_checked(&ctx.workspace.root, ctx.root_id) {
                Ok(fresh) => *dirs = fresh,
                Err(err) => {
                    done.errors
                        .push(format!("cannot open the workspace: {err}"));
                    return done;
                }
            }
        }
    }
    done.merge(journal.rollback(dirs));
    if let Some(snapshot) = snapshot
        && edited_ignore_file
        && done.errors.is_empty()
    {
        done.merge(snapshot.prune(scope));
    }
    // Released last: a crash before this point restores the snapshot again on restart
    // (restoring is idempotent), then the journal and the prune.
    if snapshot.is_some()
        && done.errors.is_empty()
        && let Err(err) = snapshot::release(scope)
    {
        tracing::error!(target = %ctx.workspace.target, error = %err, "cannot release the snapshot");
        done.errors
            .push(format!("cannot release the snapshot: {err}"));
    }
    done
}

/// Writes the plan's final states through `dirs`: directories first, then files; `delay` is
/// a test knob.
pub(super) fn write_plan(plan: &Plan, dirs: &mut Dirs, delay: Duration) -> Result<(), String> {
    for rel in &plan.dirs {
        let (parent, name) = beneath::split(rel);
        let handle = dirs
            .dir(parent)
            .map_err(|err| format!("cannot create {rel}: {err}"))?;
        beneath::mkdir(&handle, name).map_err(|err| format!("cannot create {rel}: {err}"))?;
        dirs.touch(&handle);
    }
    for (rel, state) in &plan.files {
        let (parent, name) = beneath::split(rel);
        let handle = dirs
            .dir(parent)
            .map_err(|err| format!("cannot open the directory of {rel}: {err}"))?;
        match state {
            Final::File { bytes, mode } => beneath::write(&handle, name, bytes, *mode)
                .map_err(|err| format!("cannot write {rel}: {err}"))?,
            Final::Absent => {
                beneath::remove(&handle, name)
                    .map_err(|err| format!("cannot remove {rel}: {err}"))?;
                dirs.touch(&handle);
            }
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    // Created and removed entries are durable before anything (the ledger) says applied; a
    // written file already synced its own directory.
    dirs.sync_touched()
        .map(|_| ())
        .map_err(|err| format!("cannot sync the workspace's directories: {err}"))
}

/// Why the journal could not be opened: reading the originals in the workspace, or writing
/// it in the state dir (the executor's own storage: a fault that hands the lease back).
pub(super) enum JournalFailed {
    Originals(std::io::Error),
    Seal(std::io::Error),
}

impl std::fmt::Display for JournalFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Originals(err) | Self::Seal(err) => err.fmt(f),
        }
    }
}

pub(super) fn open_journal(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    plan: &Plan,
    dirs: &mut Dirs,
) -> Result<Journal, JournalFailed> {
    let header = Header {
        patch_id: patch.id.to_string(),
        content_hash: patch.content_hash(),
        attempt: lease.attempt,
        fencing_token: lease.fencing_token,
        root: Some(ctx.root_id),
    };
    let mut journal = Journal::begin(&ctx.workspace.state_dir, &ctx.workspace.target, &header)
        .map_err(JournalFailed::Originals)?;
    for dir in &plan.dirs {
        journal.record_dir(dir);
    }
    for (rel, state) in &plan.files {
        if matches!(state, Final::File { .. }) {
            journal
                .record_file(dirs, &journal::temp_rel(rel), ctx.limits.max_file_bytes)
                .map_err(JournalFailed::Originals)?;
        }
        journal
            .record_file(dirs, rel, ctx.limits.max_file_bytes)
            .map_err(JournalFailed::Originals)?;
    }
    journal.seal().map_err(JournalFailed::Seal)?;
    Ok(journal)
}

/// Rolls back a journal an earlier attempt could not close (its rollback failed, or the file
/// could not be removed). `Err` says why this target must refuse patches for now.
pub(super) fn clear_leftover_journal(ctx: &Context, ledger: &Ledger) -> Result<(), String> {
    let workspace = &ctx.workspace;
    let target = workspace.target.as_str();
    if !journal::is_open(&workspace.state_dir, target) {
        return Ok(());
    }
    let applied = |header: &Header| {
        ledger
            .get(target, &header.patch_id, &header.content_hash)
            .is_some()
    };
    let blocked = |reason: String| {
        metrics::gauge!("ghost_executor_journal_blocked", "target" => target.to_owned()).set(1.0);
        tracing::error!(%target, state_dir = %workspace.state_dir.display(), %reason,
            "the journal of an earlier patch cannot be cleared; refusing patches for this target");
        Err(format!(
            "target {target} refuses patches until its workspace is restored: {reason}. Fix \
             the paths named (every new patch for this target tries the rollback again), or \
             restore the workspace by hand and remove the target's journal in the executor's \
             state dir"
        ))
    };
    let allowed =
        |rel: &str| crate::workspace::check_path(workspace, rel).map_err(|err| err.to_string());
    let scope = Scope::new(workspace, ctx.root_id, ctx.limits.max_file_bytes)
        .map_err(|err| format!("target {target}'s rollback_ignore cannot be used: {err}"))?;
    match journal::recover(
        &workspace.state_dir,
        target,
        &workspace.root,
        ctx.root_id,
        allowed,
        applied,
        Some(&scope),
    ) {
        Ok(Some(found)) if !found.restored.errors.is_empty() => blocked(format!(
            "the rollback of patch {} could not restore {}",
            found.header.patch_id,
            found.restored.errors.join("; ")
        )),
        Ok(found) => {
            if let Some(found) = found {
                tracing::warn!(patch_id = %found.header.patch_id, restored = found.restored.restored,
                    removed = found.restored.removed, "journal left open by an earlier patch rolled back");
            }
            metrics::gauge!("ghost_executor_journal_blocked", "target" => target.to_owned())
                .set(0.0);
            journals_unclosed(target, false);
            Ok(())
        }
        Err(err) => blocked(err.to_string()),
    }
}

/// Counts and logs a rollback that left the workspace different from before.
pub(super) fn rollback_failed(target: &str, patch: &Patch, restored: &Restored) {
    metrics::counter!("ghost_executor_rollback_failures_total", "target" => target.to_owned())
        .increment(1);
    metrics::gauge!("ghost_executor_journal_blocked", "target" => target.to_owned()).set(1.0);
    journals_unclosed(target, true);
    tracing::error!(patch_id = %patch.id, %target, errors = ?restored.errors,
        "rollback incomplete; the journal is kept");
}

/// Removes the journal; one that cannot be removed is rolled back (or dropped, when the
/// ledger has the patch) before the target's next patch.
pub(super) fn close_journal(target: &str, journal: Journal) {
    if let Err(err) = journal.close() {
        metrics::gauge!("ghost_executor_journal_blocked", "target" => target.to_owned()).set(1.0);
        journals_unclosed(target, true);
        tracing::error!(%target, error = %err, "cannot remove the journal; the next patch retries");
    }
}

/// Sets `ghost_executor_journals_unclosed{target}`: 1 while a journal of an attempt that ended
/// is still on disk (it could not be removed, or its rollback was incomplete), 0 once the
/// target's journal is cleared.
pub(crate) fn journals_unclosed(target: &str, unclosed: bool) {
    metrics::gauge!("ghost_executor_journals_unclosed", "target" => target.to_owned())
        .set(if unclosed { 1.0 } else { 0.0 });
}
