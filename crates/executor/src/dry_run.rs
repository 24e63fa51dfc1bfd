//! A dry run: the plan of a patch, read-only. Every path, ladder rung and `base` is checked
//! as an apply would check them, and the answer carries the edits (with the rung each used)
//! and the unified diff the apply would write ([`crate::diff`]).
//!
//! Nothing is written: no ledger entry, no journal, and a journal left open by an earlier
//! patch is not rolled back (the target answers "blocked" instead). Commands and checks are
//! not run. The caller serialises a dry run with the target's applies ([`TargetLocks`]), so it
//! never plans against a half-written workspace; it does not wait for patches still queued at
//! the router, which may change the outcome once they run. Dry runs share the lock (readers),
//! an apply takes it alone (writer) and, the lock being fair, an apply waiting for it goes
//! before any dry run that comes after it. A dry run holds the lock only while it plans and
//! reads the files it touches; the diff is built after it has let go.
//!
//! A revert patch is checked the same way: its record (or git commit) is read and every path
//! compared with its post-image; the answer is the diff that restores the pre-images, or
//! `rejected` with the `conflicts`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghost_core::fileops;
use ghost_core::{ApplyReport, Patch, StageTiming, Status};

use crate::apply::Context;
use crate::beneath::{self, Dirs, RootId};
use crate::commands;
use crate::diff::{self, FileChange, MAX_DIFF_BYTES, Side};
use crate::git;
use crate::journal;
use crate::plan::{self, Final};
use crate::revert::{self, Refusal};

/// One lock per target, held alone by an apply while it runs and shared by dry runs while
/// they plan and read.
#[derive(Clone, Default)]
pub struct TargetLocks {
    locks: Arc<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

impl TargetLocks {
    /// A lock for each of `targets`.
    pub fn new<'a>(targets: impl IntoIterator<Item = &'a String>) -> Self {
        Self {
            locks: Arc::new(
                targets
                    .into_iter()
                    .map(|target| (target.clone(), Arc::default()))
                    .collect(),
            ),
        }
    }

    /// The lock of `target`, if this executor serves it.
    pub fn of(&self, target: &str) -> Option<Arc<tokio::sync::RwLock<()>>> {
        self.locks.get(target).cloned()
    }
}

/// How long a dry run waits for the apply running on its target before it answers "busy"
/// (below the router's 30 s deadline, so the caller gets this answer, not a timeout).
pub const BUSY_WAIT: Duration = Duration::from_secs(20);
/// How long a dry run may take in all before the executor gives it up: below the router's
/// 30 s deadline (executor < router < gateway < HTTP request).
pub const GIVE_UP: Duration = Duration::from_secs(25);

fn ended(mut report: ApplyReport, started: Instant, status: Status, error: String) -> ApplyReport {
    report.status = status;
    report.error = error;
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// Plans `patch` against `ctx`'s workspace as it is now and writes nothing. No text in the
/// report names the workspace root or the state dir.
pub fn dry_run(ctx: &Context, patch: &Patch) -> ApplyReport {
    dry_run_holding(ctx, patch, ())
}

/// [`dry_run`] holding `guard` (the target's lock) while it plans and reads the workspace,
/// and dropping it before the diff is built.
pub fn dry_run_holding<G>(ctx: &Context, patch: &Patch, guard: G) -> ApplyReport {
    let mut report = plan_only(ctx, patch, guard);
    crate::apply::scrub_report(&mut report, &ctx.workspace);
    report
}

/// What refuses a dry run before anything is planned: an open journal (the target is
/// blocked), a command or check the target does not allow, a replaced root, a git HEAD that
/// is not the patch's base, or an agent hand-off (whose changes cannot be known before).
fn admit(ctx: &Context, patch: &Patch) -> Result<(), (Status, String)> {
    let target = ctx.workspace.target.as_str();
    if journal::is_open(&ctx.workspace.state_dir, target) {
        return Err((
            Status::Rejected,
            format!(
                "target {target} is blocked: the journal of an earlier patch is still open (its \
                 rollback has not completed); the next real patch retries the rollback, a dry \
                 run does not"
            ),
        ));
    }
    let lines = patch.commands.iter().map(|line| (line, false));
    let lines = lines.chain(
        patch
            .validate
            .iter()
            .map(|check| (&check.run, check.if_allowed)),
    );
    for (line, if_allowed) in lines {
        if let Err(reason) = commands::admit(&ctx.workspace.policy, target, line)
            && !if_allowed
        {
            return Err((Status::Rejected, reason));
        }
    }
    if RootId::of(&ctx.workspace.root).ok() != Some(ctx.root_id) {
        return Err((Status::Failed, beneath::replaced_root().to_string()));
    }
    if let Some(base) = &patch.base {
        git::check_head(&ctx.workspace.root, &base.git_head)
            .map_err(|reason| (Status::Rejected, reason))?;
    }
    if patch.agent.is_some() {
        return Err((
            Status::Rejected,
            "a dry run plans file edits; this patch hands a task to the target's agent, whose \
             changes cannot be known before it runs"
                .to_owned(),
        ));
    }
    Ok(())
}

fn plan_only<G>(ctx: &Context, patch: &Patch, guard: G) -> ApplyReport {
    let started = Instant::now();
    let report = ApplyReport {
        dry_run: true,
        ..ApplyReport::ended(Status::Succeeded, "")
    };
    if let Err((status, reason)) = admit(ctx, patch) {
        return ended(report, started, status, reason);
    }
    let ops = match patch.revert {
        Some(_) => Vec::new(),
        None => match fileops::plan(patch) {
            Ok(ops) => ops,
            Err(err) => return ended(report, started, Status::Rejected, err.to_string()),
        },
    };
    let mut dirs = match Dirs::open_checked(&ctx.workspace.root, ctx.root_id) {
        Ok(dirs) => dirs,
        Err(err) => {
            return ended(
                report,
                started,
                Status::Failed,
                format!("cannot open the workspace: {err}"),
            );
        }
    };
    let planning = Instant::now();
    let planned = match &patch.revert {
        Some(spec) => revert::plan(ctx, &mut dirs, spec),
        None => plan::build(&ctx.workspace, &mut dirs, &ops, ctx.limits).map_err(Refusal::from),
    };
    let mut report = report;
    report.stages.push(stage("plan", planning.elapsed()));
    let plan = match planned {
        Ok(plan) => plan,
        Err(Refusal::Rejected(reason)) => {
            return ended(report, started, Status::Rejected, reason);
        }
        Err(Refusal::Failed(reason)) => {
            return ended(report, started, Status::Failed, reason);
        }
        Err(Refusal::Conflicts(paths, reason)) => {
            report.conflicts = paths;
            return ended(report, started, Status::Rejected, reason);
        }
    };
    report.edits = plan.reports.clone();
    let diffing = Instant::now();
    match plan_diff(ctx, &mut dirs, &plan, guard) {
        Ok(rendered) => {
            report.diff = rendered.text;
            report.stages.push(stage("diff", diffing.elapsed()));
        }
        Err(reason) => return ended(report, started, Status::Failed, reason),
    }
    ended(report, started, Status::Succeeded, String::new())
}

fn stage(name: &str, took: Duration) -> StageTiming {
    StageTiming {
        stage: name.to_owned(),
        duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
    }
}

/// What is on disk at `rel` now: bytes and mode, or None.
fn on_disk(ctx: &Context, dirs: &mut Dirs, rel: &str) -> Result<Option<(Vec<u8>, u32)>, String> {
    let (parent, name) = beneath::split(rel);
    let handle = match dirs.dir(parent) {
        Ok(handle) => handle,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read {rel}: {err}")),
    };
    beneath::read(&handle, name, ctx.limits.max_file_bytes)
        .map_err(|err| format!("cannot read {rel}: {err}"))
}

/// The diff from the workspace now to the plan's final states. A rename whose source the
/// plan removes is shown as a rename (with its content change, if any).
fn plan_diff<G>(
    ctx: &Context,
    dirs: &mut Dirs,
    plan: &plan::Plan,
    guard: G,
) -> Result<diff::Diff, String> {
    let mut current: HashMap<&str, Option<(Vec<u8>, u32)>> = HashMap::new();
    for rel in plan.files.keys() {
        current.insert(rel.as_str(), on_disk(ctx, dirs, rel)?);
    }
    // Everything is read: applies may go on while the diff is built.
    drop(guard);
    // new path -> old path, for renames whose source ends absent and target was absent.
    let mut renamed: HashMap<&str, &str> = HashMap::new();
    for edit in plan.reports.iter().filter(|edit| edit.op == "rename") {
        let source_gone = matches!(plan.files.get(&edit.from), Some(Final::Absent));
        let target_new = matches!(current.get(edit.path.as_str()), Some(None));
        let source_there = matches!(current.get(edit.from.as_str()), Some(Some(_)));
        let target_kept = matches!(plan.files.get(&edit.path), Some(Final::File { .. }));
        if source_gone && target_new && source_there && target_kept {
            renamed.insert(edit.path.as_str(), edit.from.as_str());
        }
    }
    let sources: Vec<&str> = renamed.values().copied().collect();
    let mut changes = Vec::new();
    for (rel, state) in &plan.files {
        if sources.contains(&rel.as_str()) {
            continue;
        }
        let old_path = renamed.get(rel.as_str()).copied().unwrap_or(rel.as_str());
        let before = current
            .get(old_path)
            .and_then(|found| found.as_ref())
            .map(|(bytes, mode)| Side {
                bytes: bytes.as_slice(),
                mode: *mode,
            });
        let after = match state {
            Final::File { bytes, mode } => Some(Side {
                bytes: bytes.as_slice(),
                mode: *mode,
            }),
            Final::Absent => None,
        };
        let unchanged = match (before, after) {
            (None, None) => true,
            (Some(b), Some(a)) => old_path == rel && b.bytes == a.bytes && b.mode == a.mode,
            _ => false,
        };
        if unchanged {
            continue;
        }
        changes.push(FileChange {
            old_path,
            path: rel.as_str(),
            before,
            after,
        });
    }
    Ok(diff::render(&changes, MAX_DIFF_BYTES))
}

/// The report of a dry run that could not run at all.
pub fn refused(error: String) -> ApplyReport {
    ApplyReport {
        dry_run: true,
        ..ApplyReport::ended(Status::Rejected, error)
    }
}
