//! An agent hand-off: the target's coding agent (or an IDE through the inbox) is given the
//! task, what it changed is read back as a diff under the agent bounds below, then validated
//! and checked like any patch, and rolled back from the snapshot on failure.

use std::time::{Duration, Instant};

use ghost_core::{ApplyReport, Status};
use ghost_runtime::storage::FaultKind;

use crate::agent::{self, Outcome};
use crate::beneath::{self, Dirs};
use crate::config::AgentConfig;
use crate::journal;
use crate::ledger::Ledger;
use crate::plan::Plan;
use crate::snapshot::{self, Scope, Snapshot};

use super::journaling::{JournalFailed, close_journal, open_journal};
use super::stages::{Attempt, OwnerStep, Step, millis};
use super::{Context, HandBack, Kept, Lease, Refused, roll_back_attempt, unrecorded};

/// Most bytes of the agent's diff in the report.
pub const MAX_AGENT_DIFF_BYTES: usize = 256 * 1024;

/// Most paths the agent changed listed in the report (every one up to this).
pub const MAX_AGENT_FILES: usize = 10_000;

/// Most bytes of the agent's transcript tail in the report.
pub const MAX_TRANSCRIPT_BYTES: usize = 8 * 1024;

/// Most bytes of the agent's changed-paths list (then counted, not listed).
pub const MAX_AGENT_FILES_BYTES: usize = 512 * 1024;

/// Most bytes of the notes on files too big to diff, after the diff.
pub const MAX_AGENT_NOTES_BYTES: usize = 64 * 1024;

/// What the agent's part of a report holds at most, in bytes: its diff, the notes after it,
/// its paths, transcript tail and final message (redaction marks included).
pub const MAX_AGENT_REPORT_BYTES: usize = 1024 * 1024;

/// The unified diff of what the agent changed (`changed`: paths differing from the
/// snapshot), bounded, and every changed path.
fn agent_diff(
    ctx: &Context,
    scope: &Scope,
    snapshot: &Snapshot,
    changed: &[Vec<u8>],
) -> (crate::diff::Diff, Vec<String>) {
    let mut paths: Vec<String> = changed
        .iter()
        .map(|rel| String::from_utf8_lossy(rel).into_owned())
        .collect();
    paths.sort();
    paths.dedup();
    let read = read_sides(ctx, scope, snapshot, &paths);
    let changes: Vec<crate::diff::FileChange<'_>> = read
        .sides
        .iter()
        .map(|(rel, before, after)| crate::diff::FileChange {
            old_path: rel,
            path: rel,
            before: before
                .as_ref()
                .map(|(bytes, mode)| crate::diff::Side { bytes, mode: *mode }),
            after: after
                .as_ref()
                .map(|(bytes, mode)| crate::diff::Side { bytes, mode: *mode }),
        })
        .collect();
    let mut diff = crate::diff::render(&changes, MAX_AGENT_DIFF_BYTES);
    bound_paths(&mut paths);
    if read.budget == 0 && !diff.truncated {
        diff.truncated = true;
        diff.text
            .push_str("# diff cut: the files changed hold too many bytes to diff them all\n");
    }
    note_unreadable(&mut diff.text, &read.unreadable);
    (diff, paths)
}

/// A file's bytes and mode on one side of a diff.
type SideBytes = Option<(Vec<u8>, u32)>;

/// Both sides of each changed file, read within a budget of bytes.
struct Sides {
    /// Each changed file's path, its bytes before (from the snapshot) and after.
    sides: Vec<(String, SideBytes, SideBytes)>,
    /// The files too big to read (over `max_file_bytes`).
    unreadable: Vec<String>,
    /// What is left of the budget: zero when files were left out.
    budget: usize,
}

/// Reads each path before (from the snapshot) and after (from the workspace), until four
/// times [`MAX_AGENT_DIFF_BYTES`] are held; directories and symlinks are listed, not read.
fn read_sides(ctx: &Context, scope: &Scope, snapshot: &Snapshot, paths: &[String]) -> Sides {
    let mut dirs = Dirs::open_checked(&ctx.workspace.root, ctx.root_id).ok();
    let mut sides = Vec::new();
    let mut unreadable = Vec::new();
    let mut budget = MAX_AGENT_DIFF_BYTES.saturating_mul(4);
    for rel in paths {
        if budget == 0 {
            break;
        }
        let before = match snapshot.original(scope, rel.as_bytes()) {
            Ok(found) => found,
            Err(_) => {
                unreadable.push(rel.clone());
                continue;
            }
        };
        let (parent, name) = beneath::split(rel);
        let after = dirs
            .as_mut()
            .and_then(|dirs| dirs.dir(parent).ok())
            .and_then(|handle| match beneath::stat(&handle, name) {
                Ok(Some(beneath::Kind::File(_))) => {
                    beneath::read(&handle, name, ctx.limits.max_file_bytes)
                        .ok()
                        .flatten()
                }
                _ => None,
            });
        if before.is_none() && after.is_none() {
            // A directory or a symlink: listed, not diffed.
            continue;
        }
        let held = before.as_ref().map_or(0, |(b, _)| b.len())
            + after.as_ref().map_or(0, |(b, _)| b.len());
        budget = budget.saturating_sub(held);
        sides.push((rel.clone(), before, after));
    }
    Sides {
        sides,
        unreadable,
        budget,
    }
}

/// The report must stay within a gRPC message (and the agent's part within
/// [`MAX_AGENT_REPORT_BYTES`]): paths past the bounds are counted, not listed.
fn bound_paths(paths: &mut Vec<String>) {
    let mut listed_bytes = 0usize;
    let listed = paths
        .iter()
        .take(MAX_AGENT_FILES)
        .take_while(|rel| {
            listed_bytes += rel.len();
            listed_bytes <= MAX_AGENT_FILES_BYTES
        })
        .count();
    if listed < paths.len() {
        let more = paths.len() - listed;
        paths.truncate(listed);
        paths.push(format!("… and {more} more paths not listed"));
    }
}

/// Notes after the diff the files too big to diff, within [`MAX_AGENT_NOTES_BYTES`].
fn note_unreadable(text: &mut String, unreadable: &[String]) {
    let mut noted = 0usize;
    for (index, rel) in unreadable.iter().enumerate() {
        let note = format!("# {rel}: changed; over max_file_bytes, so not diffed\n");
        noted += note.len();
        if noted > MAX_AGENT_NOTES_BYTES {
            text.push_str(&format!(
                "# … and {} more files over max_file_bytes, not diffed\n",
                unreadable.len() - index
            ));
            break;
        }
        text.push_str(&note);
    }
}

/// Hands the patch to the target's agent (a CLI it runs, or the inbox), with a snapshot of
/// the workspace before; then the patch's checks and the owner's. Any failure, timeout or
/// cancel restores the snapshot byte for byte (the agent's new files removed). The report
/// carries what the agent did: its diff, final message, transcript tail, exit status, tokens.
#[allow(clippy::too_many_arguments)]
pub(super) fn hand_off(
    mut attempt: Attempt<'_>,
    task: &str,
    steps: &[Step],
    owners: &[OwnerStep],
    scope: &Scope,
    ledger: &Ledger,
    hash: &str,
    lease: Lease,
    dry_run: bool,
    fault: &mut Option<HandBack>,
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
    let patch = attempt.patch;
    let target = ctx.workspace.target.as_str();
    let mut dirs = match Dirs::open_checked(&ctx.workspace.root, ctx.root_id) {
        Ok(dirs) => dirs,
        Err(err) => {
            return attempt.end(Status::Failed, format!("cannot open the workspace: {err}"));
        }
    };
    // An empty journal with the snapshot: a crash while the agent runs is rolled back on
    // restart (the snapshot restored) like a crash during a patch's commands.
    let journal = match attempt.stage("journal", |_| {
        open_journal(ctx, patch, lease, &Plan::default(), &mut dirs)
    }) {
        Ok(journal) => journal,
        Err(err) => {
            if let JournalFailed::Seal(err) = &err {
                *fault = Some(HandBack::of("cannot write the journal", err));
            }
            return attempt.end(Status::Failed, format!("cannot write the journal: {err}"));
        }
    };
    let label = format!("patch {} attempt {} (agent)", patch.id, lease.attempt);
    let snapshot = match attempt.stage("snapshot", |_| snapshot::take(scope, &label)) {
        Ok(snapshot) => snapshot,
        Err(err) => {
            tracing::error!(%target, error = %err, "cannot snapshot the workspace");
            close_journal(target, journal);
            // Nothing ran yet: a storage fault hands the lease back.
            if FaultKind::from_io(&err).is_some() || journal::is_unsynced(&err) {
                *fault = Some(HandBack::of("cannot snapshot the workspace", &err));
            }
            return attempt.end(
                Status::Failed,
                format!("cannot snapshot the workspace before the agent runs: {err}"),
            );
        }
    };
    let failure = run_and_check(&mut attempt, &agent, task, steps, owners, scope, &snapshot);
    let kept = Kept {
        journal,
        scope,
        snapshot: Some(&snapshot),
        edited_ignore_file: false,
        touched: Vec::new(),
    };
    match failure {
        None => record_agent_work(attempt, kept, &mut dirs, ledger, hash, fault),
        Some(failed) => roll_back_attempt(attempt, kept, &mut dirs, failed, None, fault),
    }
}

/// Runs the agent, reads what it changed into the report, then the patch's checks and the
/// owner checks (with a deadline of their own); what failed, if anything.
fn run_and_check(
    attempt: &mut Attempt<'_>,
    agent: &AgentConfig,
    task: &str,
    steps: &[Step],
    owners: &[OwnerStep],
    scope: &Scope,
    snapshot: &Snapshot,
) -> Option<Refused> {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let target = ctx.workspace.target.as_str();
    let cli = agent.cli.clone().unwrap_or_else(|| "inbox".to_owned());
    let mut run = ghost_core::AgentRun {
        cli: cli.clone(),
        ..ghost_core::AgentRun::default()
    };
    let outcome = if agent.cli.is_some() {
        run_agent_cli(attempt, agent, task, steps, owners, &mut run)
    } else {
        wait_for_inbox(attempt, agent, task, &mut run)
    };
    let changed = match snapshot.changed(scope) {
        Ok(changed) => Some(changed),
        Err(err) => {
            tracing::warn!(%target, error = %err,
                "cannot list what the agent changed; every changed: check runs");
            None
        }
    };
    if let Some(changed) = &changed {
        let (diff, files) = agent_diff(ctx, scope, snapshot, changed);
        run.diff = diff.text;
        run.diff_truncated = diff.truncated;
        run.files = files;
    }
    let mut failure = match outcome {
        Outcome::Done => None,
        Outcome::Failed(reason) => Some((Status::Failed, reason)),
        Outcome::TimedOut => Some((
            Status::TimedOut,
            "the agent did not complete the task before the deadline".to_owned(),
        )),
        Outcome::Cancelled => Some((
            Status::Cancelled,
            "cancelled while waiting for the agent".to_owned(),
        )),
    };
    attempt.report.agent = Some(run);
    // The checks get a deadline of their own (the patch's timeout, or the default), not
    // whatever the agent left of its own.
    attempt.deadline = Instant::now()
        + patch
            .timeout_s
            .map_or(ctx.default_timeout, |s| Duration::from_secs(u64::from(s)));
    if failure.is_none() && !steps.is_empty() {
        failure = attempt.stage("validate", |a| a.run_steps(steps));
    }
    if failure.is_none() && !owners.is_empty() {
        let paths = changed.as_ref().map(|found| snapshot::as_paths(found));
        failure = attempt.stage("checks", |a| a.run_owner_checks(owners, || paths));
    }
    if let Some(what) = snapshot.git_changed(scope) {
        tracing::warn!(%target, change = what, "the agent changed the repository's .git");
        let reason = format!("{what} by the agent, which is not allowed");
        failure = Some(match failure {
            None => (Status::RolledBack, reason),
            Some((status, first)) => (status, format!("{first}; {reason}")),
        });
    }
    failure
}

/// Runs the agent's CLI with a prompt naming the task, the files it names and the checks
/// that will run; its exit, transcript tail, final message and tokens go into `run`.
fn run_agent_cli(
    attempt: &mut Attempt<'_>,
    agent: &AgentConfig,
    task: &str,
    steps: &[Step],
    owners: &[OwnerStep],
    run: &mut ghost_core::AgentRun,
) -> Outcome {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let (deadline, cancel) = (attempt.deadline, attempt.cancel);
    let mut checks: Vec<String> = steps
        .iter()
        .filter_map(|step| match step {
            Step::Run { line, .. } => Some(line.clone()),
            Step::Skip { .. } => None,
        })
        .collect();
    checks.extend(owners.iter().filter_map(|owner| match &owner.step {
        Step::Run { line, .. } => Some(line.clone()),
        Step::Skip { .. } => None,
    }));
    let files = agent::files_named(&ctx.workspace, &format!("{}\n{task}", patch.description));
    let prompt = agent::prompt(patch, task, &checks, &files);
    let ran = attempt.stage("agent", |_| {
        agent::run_cli(&ctx.workspace, agent, &prompt, &files, deadline, cancel)
    });
    match ran {
        Ok(ran) => {
            attempt.report.sandbox = ran.sandbox.to_owned();
            let parsed = agent::parse_output(&ran.report.output_tail);
            run.exit_code = ran.report.exit_code;
            run.duration_ms = ran.report.duration_ms;
            run.final_message = parsed.final_message;
            run.transcript_tail = agent::tail_chars(&ran.report.output_tail, MAX_TRANSCRIPT_BYTES);
            run.input_tokens = parsed.input_tokens;
            run.output_tokens = parsed.output_tokens;
            run.cost_usd = parsed.cost_usd;
            ran.outcome
        }
        Err(reason) => Outcome::Failed(reason),
    }
}

/// Hands the task to an IDE through the inbox and waits for its completion file (or the
/// hand-off command's end); what the command printed goes into `run` and the report.
fn wait_for_inbox(
    attempt: &mut Attempt<'_>,
    agent: &AgentConfig,
    task: &str,
    run: &mut ghost_core::AgentRun,
) -> Outcome {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let (deadline, cancel) = (attempt.deadline, attempt.cancel);
    let begun = Instant::now();
    let waited = attempt.stage("agent", |_| {
        agent::hand_off(&ctx.workspace, agent, patch, task, deadline, cancel)
    });
    run.duration_ms = millis(begun.elapsed());
    match waited {
        Ok((outcome, command)) => {
            if let Some(command) = &command {
                run.exit_code = command.exit_code;
                run.transcript_tail = agent::tail_chars(&command.output_tail, MAX_TRANSCRIPT_BYTES);
                run.final_message = agent::parse_output(&command.output_tail).final_message;
            }
            attempt.report.commands.extend(command);
            outcome
        }
        Err(reason) => Outcome::Failed(reason),
    }
}

/// The agent's work passed: it is recorded in the ledger (or, when the entry cannot be
/// written, rolled back so a re-delivery runs the agent again), the snapshot released and
/// the journal closed.
fn record_agent_work(
    attempt: Attempt<'_>,
    kept: Kept<'_>,
    dirs: &mut Dirs,
    ledger: &Ledger,
    hash: &str,
    fault: &mut Option<HandBack>,
) -> ApplyReport {
    let (ctx, patch) = (attempt.ctx, attempt.patch);
    let target = ctx.workspace.target.as_str();
    let Kept {
        mut journal,
        scope,
        snapshot,
        ..
    } = kept;
    let mut report = attempt.end(Status::Succeeded, "");
    if let Err(err) = ledger.record(target, patch.id.as_str(), hash, &report) {
        // Without the entry a re-delivery would run the agent again: undo instead.
        match unrecorded(
            ctx, scope, snapshot, journal, dirs, false, ledger, patch, hash, report, &err, fault,
        ) {
            Ok(failed) => return failed,
            Err(kept) => (journal, report) = *kept,
        }
    }
    if let Err(err) = snapshot::release(scope) {
        tracing::error!(%target, error = %err, "cannot release the snapshot");
    }
    close_journal(target, journal);
    report
}
