//! One attempt at a patch, all or nothing: ledger → plan → journal → write → commands →
//! validate → commit, with a byte-for-byte rollback on failure, deadline or cancel.
//!
//! Order of durability: the journal of originals is sealed (fsync'd) before the first
//! workspace write; the ledger entry is written before the journal is closed, so a crash at
//! any point either rolls back on restart or finds the patch recorded as applied.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ghost_core::fileops;
use ghost_core::{ApplyReport, CommandKind, OnFailure, Patch, Rollback, StageTiming, Status};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Outcome};
use crate::commands::{self, Argv, Stopped};
use crate::git;
use crate::journal::{self, Header, Journal, Restored};
use crate::ledger::Ledger;
use crate::plan::{self, Final, Plan, PlanError};
use crate::workspace::{Limits, Workspace};

/// What an attempt needs besides the patch.
#[derive(Debug, Clone)]
pub struct Context {
    /// The workspace.
    pub workspace: Workspace,
    /// Size limits.
    pub limits: Limits,
    /// Deadline of a patch without `timeout_s`.
    pub default_timeout: Duration,
    /// For crash tests only: pause after each file written.
    pub write_delay: Duration,
}

/// The router's lease on this attempt.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lease {
    /// Attempt number.
    pub attempt: u32,
    /// Fencing token.
    pub fencing_token: u64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Builds the report as stages complete.
struct Attempt<'a> {
    ctx: &'a Context,
    patch: &'a Patch,
    started: Instant,
    deadline: Instant,
    cancel: &'a CancellationToken,
    report: ApplyReport,
}

impl Attempt<'_> {
    fn stage<T>(&mut self, name: &str, work: impl FnOnce(&mut Self) -> T) -> T {
        let begun = Instant::now();
        let out = work(self);
        self.report.stages.push(StageTiming {
            stage: name.to_owned(),
            duration_ms: millis(begun.elapsed()),
        });
        out
    }

    fn end(mut self, status: Status, error: impl Into<String>) -> ApplyReport {
        self.report.status = status;
        self.report.error = error.into();
        self.report.duration_ms = millis(self.started.elapsed());
        self.report
    }

    /// Why the attempt must stop now, if it must.
    fn interrupted(&self) -> Option<(Status, String)> {
        if self.cancel.is_cancelled() {
            return Some((Status::Cancelled, "cancelled while applying".to_owned()));
        }
        if Instant::now() >= self.deadline {
            return Some((
                Status::TimedOut,
                "the patch ran past its deadline".to_owned(),
            ));
        }
        None
    }

    /// Runs `commands` then `validate`; returns the status and reason of the first failure.
    fn run_commands(
        &mut self,
        admitted: &[(String, Argv, CommandKind, Option<u32>)],
    ) -> Option<(Status, String)> {
        for (line, argv, kind, timeout_s) in admitted {
            let own = timeout_s.map_or(self.ctx.workspace.policy.command_timeout, |s| {
                Duration::from_secs(u64::from(s))
            });
            let deadline = (Instant::now() + own).min(self.deadline);
            let (report, stopped) = commands::run(
                &self.ctx.workspace,
                line,
                argv,
                *kind,
                deadline,
                self.cancel,
            );
            let exit = report.exit_code;
            self.report.commands.push(report);
            match stopped {
                Some(Stopped::Cancelled) => {
                    return Some((
                        Status::Cancelled,
                        format!("cancelled while running {line:?}"),
                    ));
                }
                Some(Stopped::Deadline) => {
                    return Some((
                        Status::TimedOut,
                        format!("{} {line:?} ran past its deadline", kind.as_str()),
                    ));
                }
                None if exit != Some(0) => {
                    return Some((
                        Status::Failed,
                        format!("{} {line:?} failed with exit code {exit:?}", kind.as_str()),
                    ));
                }
                None => {}
            }
        }
        None
    }
}

fn rollback_record(restored: &Restored, reason: &str) -> Rollback {
    Rollback {
        restored: restored.restored,
        removed: restored.removed,
        reason: reason.to_owned(),
        error: restored.errors.join("; "),
    }
}

/// Writes the plan's final states: directories first, then files; `delay` is a test knob.
fn write_plan(plan: &Plan, delay: Duration) -> Result<(), String> {
    for dir in &plan.dirs {
        fs::create_dir(dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    for (path, state) in &plan.files {
        match state {
            Final::File { bytes, mode } => journal::write_atomically(path, bytes, *mode)
                .map_err(|err| format!("cannot write {}: {err}", path.display()))?,
            Final::Absent => match fs::remove_file(path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(format!("cannot remove {}: {err}", path.display())),
            },
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
    Ok(())
}

fn open_journal(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    plan: &Plan,
) -> std::io::Result<Journal> {
    let header = Header {
        patch_id: patch.id.to_string(),
        content_hash: patch.content_hash(),
        attempt: lease.attempt,
        fencing_token: lease.fencing_token,
    };
    let mut journal = Journal::begin(&ctx.workspace.state_dir, &ctx.workspace.target, &header)?;
    for dir in &plan.dirs {
        journal.record_dir(dir);
    }
    for (path, state) in &plan.files {
        if matches!(state, Final::File { .. }) {
            journal.record_file(&journal::temp_path(path))?;
        }
        journal.record_file(path)?;
    }
    journal.seal()?;
    Ok(journal)
}

/// Applies `patch` once. Never panics on bad input; every outcome is a report.
pub fn apply(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    dry_run: bool,
    cancel: &CancellationToken,
) -> ApplyReport {
    let started = Instant::now();
    let timeout = patch
        .timeout_s
        .map_or(ctx.default_timeout, |s| Duration::from_secs(u64::from(s)));
    let ledger = Ledger::new(&ctx.workspace.state_dir);
    let hash = patch.content_hash();
    let target = ctx.workspace.target.as_str();
    if let Some(recorded) = ledger.get(target, patch.id.as_str(), &hash) {
        tracing::info!(patch_id = %patch.id, "patch already applied; returning the recorded result");
        return recorded;
    }
    let mut attempt = Attempt {
        ctx,
        patch,
        started,
        deadline: started + timeout,
        cancel,
        report: ApplyReport {
            dry_run,
            ..ApplyReport::ended(Status::Succeeded, "")
        },
    };

    // Everything below until the journal is sealed only reads.
    let mut admitted = Vec::new();
    let checks = patch
        .commands
        .iter()
        .map(|c| (c, CommandKind::Command, None));
    let checks = checks.chain(
        patch
            .validate
            .iter()
            .map(|c| (&c.run, CommandKind::Validate, c.timeout_s)),
    );
    for (line, kind, timeout_s) in checks {
        match commands::admit(&ctx.workspace.policy, target, line) {
            Ok(argv) => admitted.push((line.clone(), argv, kind, timeout_s)),
            Err(reason) => return attempt.end(Status::Rejected, reason),
        }
    }
    if let Some(base) = &patch.base
        && let Err(reason) = git::check_head(&ctx.workspace.root, &base.git_head)
    {
        return attempt.end(Status::Rejected, reason);
    }
    if let Some(task) = &patch.agent {
        return hand_off(attempt, &task.task, &admitted, dry_run);
    }
    let ops = match fileops::plan(patch) {
        Ok(ops) => ops,
        Err(err) => return attempt.end(Status::Rejected, err.to_string()),
    };
    let planned = attempt.stage("edits", |_| plan::build(&ctx.workspace, &ops, ctx.limits));
    let plan = match planned {
        Ok(plan) => plan,
        Err(PlanError::Refused(reason)) => return attempt.end(Status::Rejected, reason),
        Err(PlanError::Mismatch(reason)) => return attempt.end(Status::Failed, reason),
    };
    attempt.report.edits = plan.reports.clone();
    if dry_run {
        return attempt.end(Status::Succeeded, "");
    }

    let journal = match attempt.stage("journal", |_| open_journal(ctx, patch, lease, &plan)) {
        Ok(journal) => journal,
        Err(err) => {
            // Nothing was written; a half-made journal is removed by the next recovery.
            return attempt.end(Status::Failed, format!("cannot write the journal: {err}"));
        }
    };
    let written = attempt.stage("edits", |_| write_plan(&plan, ctx.write_delay));
    let failure = match written {
        Err(reason) => Some((Status::RolledBack, reason)),
        Ok(()) => attempt
            .interrupted()
            .or_else(|| attempt.stage("commands", |a| a.run_commands(&admitted))),
    };
    let failure = failure.or_else(|| {
        let spec = patch.commit.as_ref()?;
        let touched: Vec<PathBuf> = plan.files.keys().cloned().collect();
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
    });
    let Some((status, reason)) = failure else {
        return finish(
            attempt,
            journal,
            &ledger,
            &hash,
            Status::Succeeded,
            String::new(),
        );
    };
    let keep = status == Status::Failed && patch.on_failure == OnFailure::Keep;
    if keep {
        return finish(attempt, journal, &ledger, &hash, Status::Failed, reason);
    }
    let restored = attempt.stage("rollback", |_| journal.rollback());
    attempt.report.rollback = Some(rollback_record(&restored, &reason));
    let status = if status == Status::Failed {
        Status::RolledBack
    } else {
        status
    };
    if restored.errors.is_empty()
        && let Err(err) = journal.close()
    {
        tracing::warn!(error = %err, "cannot remove the journal after rollback");
    }
    attempt.end(status, reason)
}

/// Records a kept effect in the ledger, then closes the journal.
fn finish(
    attempt: Attempt<'_>,
    journal: Journal,
    ledger: &Ledger,
    hash: &str,
    status: Status,
    error: String,
) -> ApplyReport {
    let target = attempt.ctx.workspace.target.clone();
    let patch_id = attempt.patch.id.to_string();
    let report = attempt.end(status, error);
    if let Err(err) = ledger.record(&target, &patch_id, hash, &report) {
        // Without the ledger entry a re-delivery would apply again; keep the journal so a
        // restart rolls back rather than leaving an unrecorded effect.
        tracing::error!(patch_id = %patch_id, error = %err, "cannot record the patch in the ledger");
        let restored = journal.rollback();
        let mut failed = report;
        failed.status = Status::RolledBack;
        failed.error = format!("cannot record the patch in the ledger: {err}");
        failed.rollback = Some(rollback_record(&restored, &failed.error));
        return failed;
    }
    if let Err(err) = journal.close() {
        tracing::warn!(patch_id = %patch_id, error = %err, "cannot remove the journal");
    }
    report
}

/// Hands the patch to the target's agent, then validates.
fn hand_off(
    mut attempt: Attempt<'_>,
    task: &str,
    admitted: &[(String, Argv, CommandKind, Option<u32>)],
    dry_run: bool,
) -> ApplyReport {
    let ctx = attempt.ctx;
    let Some(agent) = ctx.workspace.policy.agent.clone() else {
        return attempt.end(
            Status::Rejected,
            format!(
                "target {} has no agent configured; the task was not handed off",
                ctx.workspace.target
            ),
        );
    };
    if dry_run {
        return attempt.end(Status::Succeeded, "");
    }
    if attempt.patch.timeout_s.is_none() {
        attempt.deadline = attempt.started + agent.timeout;
    }
    let (deadline, cancel, patch) = (attempt.deadline, attempt.cancel, attempt.patch);
    let waited = attempt.stage("agent", |_| {
        agent::hand_off(&ctx.workspace, &agent, patch, task, deadline, cancel)
    });
    let (outcome, command) = match waited {
        Ok(done) => done,
        Err(reason) => return attempt.end(Status::Failed, reason),
    };
    attempt.report.commands.extend(command);
    match outcome {
        Outcome::Done => {}
        Outcome::Failed(reason) => return attempt.end(Status::Failed, reason),
        Outcome::TimedOut => {
            return attempt.end(
                Status::TimedOut,
                "the agent did not complete the task before the deadline",
            );
        }
        Outcome::Cancelled => {
            return attempt.end(Status::Cancelled, "cancelled while waiting for the agent");
        }
    }
    match attempt.stage("validate", |a| a.run_commands(admitted)) {
        None => attempt.end(Status::Succeeded, ""),
        Some((status, reason)) => attempt.end(status, reason),
    }
}
