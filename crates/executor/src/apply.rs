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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ghost_core::fileops;
use ghost_core::{ApplyReport, CommandKind, OnFailure, Patch, Rollback, StageTiming, Status};
use ghost_runtime::storage::FaultKind;
use globset::GlobMatcher;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Outcome};
use crate::beneath::{self, Dirs, RootId};
use crate::commands::{self, Argv, Stopped};
use crate::git;
use crate::journal::{self, Header, Journal, Restored};
use crate::ledger::Ledger;
use crate::plan::{self, Final, Plan};
use crate::revert::{self, Refusal};
use crate::snapshot::{self, Scope, Snapshot};
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

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One command an attempt runs, or a patch check it skips.
#[derive(Debug, Clone)]
enum Step {
    /// Run it.
    Run {
        line: String,
        argv: Argv,
        kind: CommandKind,
        timeout: Option<Duration>,
        /// The owner check's name (empty for the patch's own).
        name: String,
    },
    /// An `if_allowed` check whose program the policy does not allow.
    Skip {
        line: String,
        kind: CommandKind,
        reason: String,
    },
}

/// An owner check ready to run, and the glob of its `changed:` condition.
#[derive(Debug, Clone)]
struct OwnerStep {
    step: Step,
    changed: Option<GlobMatcher>,
}

/// The target's owner checks: whatever the patch's command policy says (the owner wrote
/// them), split with shell-words unless the target runs commands through a shell.
fn owner_steps(policy: &crate::config::TargetPolicy) -> Result<Vec<OwnerStep>, String> {
    policy
        .checks
        .iter()
        .map(|check| {
            let argv = if policy.shell {
                Argv::Shell(check.run.clone())
            } else {
                let argv = shell_words::split(&check.run).map_err(|err| {
                    format!(
                        "owner check {:?}: cannot split {:?}: {err}",
                        check.name, check.run
                    )
                })?;
                if argv.is_empty() {
                    return Err(format!("owner check {:?} has an empty run", check.name));
                }
                Argv::Direct(argv)
            };
            let changed = match &check.when {
                crate::config::When::Always => None,
                crate::config::When::Changed(glob) => {
                    Some(crate::config::compile_changed_glob(glob)?)
                }
            };
            Ok(OwnerStep {
                step: Step::Run {
                    line: check.run.clone(),
                    argv,
                    kind: CommandKind::Check,
                    timeout: check.timeout,
                    name: check.name.clone(),
                },
                changed,
            })
        })
        .collect()
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
        let took = begun.elapsed();
        self.report.stages.push(StageTiming {
            stage: name.to_owned(),
            duration_ms: millis(took),
            duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        });
        out
    }

    fn end(mut self, status: Status, error: impl Into<String>) -> ApplyReport {
        crate::diagnose::fill(&mut self.report, &self.ctx.workspace);
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

    /// Runs `steps` in order; returns the status and reason of the first failure.
    fn run_steps(&mut self, steps: &[Step]) -> Option<(Status, String)> {
        for step in steps {
            let (line, argv, kind, timeout, name) = match step {
                Step::Skip { line, kind, reason } => {
                    self.report.commands.push(ghost_core::CommandReport {
                        command: line.clone(),
                        kind: *kind,
                        output_tail: format!("skipped: {reason}"),
                        skipped: true,
                        ..ghost_core::CommandReport::default()
                    });
                    continue;
                }
                Step::Run {
                    line,
                    argv,
                    kind,
                    timeout,
                    name,
                } => (line, argv, *kind, *timeout, name),
            };
            if let Err(reason) = root_unchanged(self.ctx) {
                return Some((Status::Failed, reason));
            }
            let own = timeout.unwrap_or(self.ctx.workspace.policy.command_timeout);
            let deadline = (Instant::now() + own).min(self.deadline);
            let ran = commands::run_with(
                &self.ctx.workspace,
                line,
                argv,
                kind,
                deadline,
                self.cancel,
                &commands::Extra::default(),
            );
            if self.report.sandbox.is_empty() || ran.sandbox == "none" {
                self.report.sandbox = ran.sandbox.to_owned();
            }
            let (mut report, stopped) = (ran.report, ran.stopped);
            report.name.clone_from(name);
            let exit = report.exit_code;
            let signal = report.signal;
            self.report.commands.push(report);
            crate::diagnose::trim(&mut self.report);
            let what = if name.is_empty() {
                format!("{} {line:?}", kind.as_str())
            } else {
                format!("owner check {name:?} ({line:?})")
            };
            match stopped {
                Some(Stopped::Cancelled) => {
                    return Some((Status::Cancelled, format!("cancelled while running {what}")));
                }
                Some(Stopped::Deadline) => {
                    return Some((Status::TimedOut, format!("{what} ran past its deadline")));
                }
                None if exit != Some(0) => {
                    let how = match (exit, signal) {
                        (Some(code), _) => format!("with exit code {code}"),
                        (None, Some(signal)) => format!("killed by signal {signal}"),
                        (None, None) => "without an exit status".to_owned(),
                    };
                    return Some((Status::Failed, format!("{what} failed {how}")));
                }
                None => {}
            }
        }
        None
    }

    /// Runs the owner checks whose condition holds; `changed` lists the paths the patch
    /// changed (`None`: unknown, so every `changed:` check runs).
    fn run_owner_checks(
        &mut self,
        owners: &[OwnerStep],
        changed: impl FnOnce() -> Option<Vec<PathBuf>>,
    ) -> Option<(Status, String)> {
        let mut changed = Some(changed);
        let mut paths: Option<Option<Vec<PathBuf>>> = None;
        let mut steps = Vec::new();
        for owner in owners {
            if let Some(glob) = &owner.changed {
                let known = paths.get_or_insert_with(|| changed.take().and_then(|f| f()));
                if let Some(known) = known
                    && !known.iter().any(|path| glob.is_match(path))
                {
                    continue;
                }
            }
            steps.push(owner.step.clone());
        }
        self.run_steps(&steps)
    }
}

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
fn roll_back(
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
fn write_plan(plan: &Plan, dirs: &mut Dirs, delay: Duration) -> Result<(), String> {
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
enum JournalFailed {
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

fn open_journal(
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

/// Replaces the server's own paths in `text`: the workspace root becomes relative, the state
/// dir a generic name.
pub(crate) fn scrub(text: &mut String, workspace: &Workspace) {
    let root = workspace.root.display().to_string();
    let state = workspace.state_dir.display().to_string();
    let inbox = workspace
        .policy
        .agent
        .as_ref()
        .and_then(|agent| agent.inbox.as_ref())
        .map(|inbox| inbox.display().to_string())
        .unwrap_or_default();
    // The longer path first, in case one lies inside another.
    let mut paths = [
        (state, "<executor state>"),
        (inbox, "<agent inbox>"),
        (root, "."),
    ];
    paths.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    for (path, name) in paths {
        if path.len() < 2 || !text.contains(&path) {
            continue;
        }
        if name == "." {
            *text = text.replace(&format!("{path}/"), "");
        }
        *text = replace_whole_path(text, &path, name);
    }
    redact(text, &secrets(workspace));
}

/// Variables whose values are never taken for secrets: the default allowlist's, which name
/// the machine rather than a credential (and would redact every path under `HOME`).
const NOT_SECRET: [&str; 10] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER", "LOGNAME", "SHELL", "PWD",
];

/// Shortest value taken for a secret (shorter ones would redact ordinary words).
const MIN_SECRET_BYTES: usize = 8;

/// The values (≥ [`MIN_SECRET_BYTES`]) of the variables a command or the agent is given from
/// the executor's environment: the target's `env_allowlist` and the agent's `env`, with the
/// variable's name, longest value first.
pub(crate) fn secrets(workspace: &Workspace) -> Vec<(String, String)> {
    let agent_env = workspace
        .policy
        .agent
        .iter()
        .flat_map(|agent| agent.env.iter());
    let mut found: Vec<(String, String)> = workspace
        .policy
        .env_allowlist
        .iter()
        .chain(agent_env)
        .filter(|name| !NOT_SECRET.contains(&name.as_str()))
        .filter_map(|name| {
            let value = std::env::var_os(name)?.to_string_lossy().into_owned();
            (value.len() >= MIN_SECRET_BYTES).then(|| (name.clone(), value))
        })
        .collect();
    found.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    found.dedup_by(|a, b| a.1 == b.1);
    found
}

/// Replaces every secret value in `text` with `[redacted:NAME]`, and a piece of one (≥ 4 bytes)
/// where a cut to a tail or head left it at the text's start or end.
pub(crate) fn redact(text: &mut String, secrets: &[(String, String)]) {
    for (name, value) in secrets {
        let mark = format!("[redacted:{name}]");
        if text.contains(value.as_str()) {
            *text = text.replace(value.as_str(), &mark);
        }
        // A tail starting inside the value, or a head ending inside it.
        if let Some(len) = (4..value.len()).rev().find(|len| {
            value.is_char_boundary(value.len() - len)
                && text.starts_with(&value[value.len() - len..])
        }) {
            text.replace_range(..len, &mark);
        }
        if let Some(len) = (4..value.len())
            .rev()
            .find(|len| value.is_char_boundary(*len) && text.ends_with(&value[..*len]))
        {
            let at = text.len() - len;
            text.replace_range(at.., &mark);
        }
    }
}

/// `text` with every occurrence of `path` that is a whole path (not the start of a longer
/// name: `/srv/ws` in `/srv/ws2` stays) replaced by `name`.
fn replace_whole_path(text: &str, path: &str, name: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(path) {
        let after = &rest[at + path.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|next| next.is_alphanumeric() || matches!(next, '_' | '-' | '.' | '~'));
        out.push_str(&rest[..at]);
        out.push_str(if whole { name } else { path });
        rest = after;
    }
    out.push_str(rest);
    out
}

pub(crate) fn scrub_report(report: &mut ApplyReport, workspace: &Workspace) {
    scrub(&mut report.error, workspace);
    if let Some(rollback) = &mut report.rollback {
        scrub(&mut rollback.reason, workspace);
        scrub(&mut rollback.error, workspace);
    }
    for command in &mut report.commands {
        scrub(&mut command.output_head, workspace);
        scrub(&mut command.output_tail, workspace);
    }
    if let Some(agent) = &mut report.agent {
        scrub(&mut agent.final_message, workspace);
        scrub(&mut agent.transcript_tail, workspace);
    }
    // The secrets only (paths in these are the user's own text): command lines, diffs,
    // file lists, diagnostics.
    let secrets = secrets(workspace);
    if secrets.is_empty() {
        return;
    }
    for command in &mut report.commands {
        redact(&mut command.command, &secrets);
    }
    for diagnostic in &mut report.diagnostics {
        redact(&mut diagnostic.path, &secrets);
        redact(&mut diagnostic.message, &secrets);
    }
    redact(&mut report.diff, &secrets);
    if let Some(agent) = &mut report.agent {
        redact(&mut agent.diff, &secrets);
        for file in &mut agent.files {
            redact(file, &secrets);
        }
        bound_agent(agent);
    }
}

/// Keeps the agent's part of a report within [`MAX_AGENT_REPORT_BYTES`] once redaction marks
/// (longer than what they replace) are in: the diff is cut first, then the paths.
fn bound_agent(agent: &mut ghost_core::AgentRun) {
    let size = |agent: &ghost_core::AgentRun| {
        agent.diff.len()
            + agent.files.iter().map(String::len).sum::<usize>()
            + agent.transcript_tail.len()
            + agent.final_message.len()
    };
    let over = size(agent).saturating_sub(MAX_AGENT_REPORT_BYTES);
    if over == 0 {
        return;
    }
    let mut keep = agent.diff.len().saturating_sub(over + 64);
    while !agent.diff.is_char_boundary(keep) {
        keep -= 1;
    }
    agent.diff.truncate(keep);
    agent
        .diff
        .push_str("\n# diff cut: the report's size limit\n");
    agent.diff_truncated = true;
    while size(agent) > MAX_AGENT_REPORT_BYTES && agent.files.len() > 1 {
        agent.files.pop();
    }
}

/// Rolls back a journal an earlier attempt could not close (its rollback failed, or the file
/// could not be removed). `Err` says why this target must refuse patches for now.
fn clear_leftover_journal(ctx: &Context, ledger: &Ledger) -> Result<(), String> {
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

fn apply_once(
    ctx: &Context,
    patch: &Patch,
    lease: Lease,
    dry_run: bool,
    cancel: &CancellationToken,
    fault: &mut Option<HandBack>,
) -> ApplyReport {
    let started = Instant::now();
    let timeout = patch
        .timeout_s
        .map_or(ctx.default_timeout, |s| Duration::from_secs(u64::from(s)));
    let ledger = Ledger::new(&ctx.workspace.state_dir);
    let hash = patch.content_hash();
    let target = ctx.workspace.target.as_str();
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
    if let Some(recorded) = ledger.get(target, patch.id.as_str(), &hash) {
        tracing::info!(patch_id = %patch.id, "patch already applied; returning the recorded result");
        return recorded;
    }

    // Everything below until the journal is sealed only reads.
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
            Err(reason) => return attempt.end(Status::Rejected, reason),
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
            Err(reason) => return attempt.end(Status::Rejected, reason),
        }
    }
    let owners = match owner_steps(&ctx.workspace.policy) {
        Ok(owners) => owners,
        Err(reason) => {
            return attempt.end(
                Status::Rejected,
                format!("target {target}'s owner checks cannot run: {reason}"),
            );
        }
    };
    let scope = match Scope::new(&ctx.workspace, ctx.root_id, ctx.limits.max_file_bytes) {
        Ok(scope) => scope,
        Err(reason) => {
            return attempt.end(
                Status::Rejected,
                format!("target {target}'s rollback_ignore cannot be used: {reason}"),
            );
        }
    };
    // Git may run for a base, an agent's hand-off, or a revert naming a commit.
    let runs_git = patch.base.is_some()
        || patch.agent.is_some()
        || patch
            .revert
            .as_ref()
            .is_some_and(|spec| spec.commit.is_some());
    if runs_git && let Err(reason) = root_unchanged(ctx) {
        return attempt.end(Status::Failed, reason);
    }
    if let Some(base) = &patch.base
        && let Err(reason) = git::check_head(&ctx.workspace.root, &base.git_head)
    {
        return attempt.end(Status::Rejected, reason);
    }
    if let Some(task) = &patch.agent {
        validate.splice(0..0, commands);
        return hand_off(
            attempt, &task.task, &validate, &owners, &scope, &ledger, &hash, lease, dry_run, fault,
        );
    }
    let ops = match patch.revert {
        // A revert's plan comes from the reverted patch's record (or git), not from edits.
        Some(_) => Vec::new(),
        None => match fileops::plan(patch) {
            Ok(ops) => ops,
            Err(err) => return attempt.end(Status::Rejected, err.to_string()),
        },
    };
    let mut dirs = match Dirs::open_checked(&ctx.workspace.root, ctx.root_id) {
        Ok(dirs) => dirs,
        Err(err) if beneath::is_replaced_root(&err) => {
            root_replaced(ctx, "another directory");
            return attempt.end(Status::Failed, err.to_string());
        }
        Err(err) => {
            tracing::error!(root = %ctx.workspace.root.display(), error = %err, "cannot open the workspace");
            return attempt.end(Status::Failed, format!("cannot open the workspace: {err}"));
        }
    };
    let planned = attempt.stage("plan", |_| match &patch.revert {
        Some(spec) => revert::plan(ctx, &mut dirs, spec),
        None => plan::build(&ctx.workspace, &mut dirs, &ops, ctx.limits).map_err(Refusal::from),
    });
    let plan = match planned {
        Ok(plan) => plan,
        Err(Refusal::Rejected(reason)) => return attempt.end(Status::Rejected, reason),
        Err(Refusal::Failed(reason)) => return attempt.end(Status::Failed, reason),
        Err(Refusal::Conflicts(paths, reason)) => {
            attempt.report.conflicts = paths;
            return attempt.end(Status::Rejected, reason);
        }
    };
    attempt.report.edits = plan.reports.clone();
    if dry_run {
        return attempt.end(Status::Succeeded, "");
    }

    let journal = match attempt.stage("journal", |_| {
        open_journal(ctx, patch, lease, &plan, &mut dirs)
    }) {
        Ok(journal) => journal,
        Err(err) => {
            // Nothing was written; a half-made journal is removed by the next recovery.
            if let JournalFailed::Seal(err) = &err {
                *fault = Some(HandBack::of("cannot write the journal", err));
            }
            return attempt.end(Status::Failed, format!("cannot write the journal: {err}"));
        }
    };
    let written = attempt.stage("write", |_| write_plan(&plan, &mut dirs, ctx.write_delay));
    let mut failure = written.err().map(|reason| (Status::RolledBack, reason));
    if failure.is_none() {
        failure = attempt.interrupted();
    }
    let runs_something = validate.iter().any(|step| matches!(step, Step::Run { .. }))
        || !commands.is_empty()
        || !owners.is_empty();
    let mut taken = None;
    let mut snapshot_fault = None;
    if failure.is_none() && runs_something {
        let label = format!("patch {} attempt {}", patch.id, lease.attempt);
        match attempt.stage("snapshot", |_| snapshot::take(&scope, &label)) {
            Ok(snapshot) => {
                tracing::debug!(
                    entries = snapshot.taken.entries,
                    hashed = snapshot.taken.hashed,
                    stored = snapshot.taken.stored,
                    collected = snapshot.taken.collected,
                    "workspace snapshot taken"
                );
                taken = Some(snapshot);
            }
            Err(err) => {
                tracing::error!(%target, error = %err, "cannot snapshot the workspace");
                // A storage fault is never kept (`on_failure = "keep"` or not): rolled back,
                // then handed back once the workspace is whole.
                let status = if FaultKind::from_io(&err).is_some() || journal::is_unsynced(&err) {
                    snapshot_fault = Some(HandBack::of("cannot snapshot the workspace", &err));
                    Status::RolledBack
                } else {
                    Status::Failed
                };
                failure = Some((
                    status,
                    format!("cannot snapshot the workspace before the patch's commands: {err}"),
                ));
            }
        }
    }
    if failure.is_none() && !commands.is_empty() {
        failure = attempt.stage("commands", |a| a.run_steps(&commands));
    }
    if failure.is_none() && !validate.is_empty() {
        failure = attempt.stage("validate", |a| a.run_steps(&validate));
    }
    // The owner checks run whenever the edits could be kept: on success, and after a failure
    // `on_failure = "keep"` would keep. A failing check rolls back whatever the patch asked.
    let keep_asked = patch.on_failure == OnFailure::Keep;
    let checks_due = match &failure {
        None => true,
        Some((status, _)) => *status == Status::Failed && keep_asked,
    };
    let mut checks_failed = false;
    if checks_due && !owners.is_empty() {
        let edited = plan.files.keys().chain(&plan.dirs).map(PathBuf::from);
        let changed = || {
            let mut paths: Vec<PathBuf> = edited.collect();
            match taken.as_ref().map(|snapshot| snapshot.changed(&scope)) {
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
        let checked = attempt.stage("checks", |a| a.run_owner_checks(&owners, changed));
        if let Some((status, reason)) = checked {
            checks_failed = true;
            failure = Some(match failure {
                Some((_, first)) => (status, format!("{first}; then {reason}")),
                None => (status, reason),
            });
        }
    }
    // Commands may run git, but not change what git obeys: the commit and the rollback's
    // listing run git on this repository. Such a patch is rolled back, keep or not.
    if let Some(what) = taken
        .as_ref()
        .and_then(|snapshot| snapshot.git_changed(&scope))
    {
        tracing::warn!(%target, change = what, "a command changed the repository's .git");
        let reason = format!("{what} by the patch's commands, which is not allowed");
        failure = Some(match failure {
            None => (Status::RolledBack, reason),
            Some((Status::Failed, first)) => (Status::RolledBack, format!("{first}; {reason}")),
            Some(other) => other,
        });
    }
    let failure = failure.or_else(|| {
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
    });
    let edited_ignore_file = plan.files.keys().any(|rel| snapshot::is_ignore_file(rel));
    let kept = Kept {
        journal,
        scope: &scope,
        snapshot: taken.as_ref(),
        edited_ignore_file,
        touched: plan.files.keys().cloned().collect(),
    };
    let Some((status, reason)) = failure else {
        return finish(
            attempt,
            kept,
            &mut dirs,
            &ledger,
            &hash,
            Status::Succeeded,
            String::new(),
            fault,
        );
    };
    let keep = status == Status::Failed && keep_asked && !checks_failed;
    if keep {
        return finish(
            attempt,
            kept,
            &mut dirs,
            &ledger,
            &hash,
            Status::Failed,
            reason,
            fault,
        );
    }
    let Kept {
        journal, snapshot, ..
    } = kept;
    let restored = attempt.stage("rollback", |_| {
        roll_back(
            ctx,
            &scope,
            snapshot,
            &journal,
            &mut dirs,
            edited_ignore_file,
        )
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

/// Counts and logs a rollback that left the workspace different from before.
fn rollback_failed(target: &str, patch: &Patch, restored: &Restored) {
    metrics::counter!("ghost_executor_rollback_failures_total", "target" => target.to_owned())
        .increment(1);
    metrics::gauge!("ghost_executor_journal_blocked", "target" => target.to_owned()).set(1.0);
    journals_unclosed(target, true);
    tracing::error!(patch_id = %patch.id, %target, errors = ?restored.errors,
        "rollback incomplete; the journal is kept");
}

/// Removes the journal; one that cannot be removed is rolled back (or dropped, when the
/// ledger has the patch) before the target's next patch.
fn close_journal(target: &str, journal: Journal) {
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
    let mut dirs = Dirs::open_checked(&ctx.workspace.root, ctx.root_id).ok();
    let mut sides = Vec::new();
    let mut unreadable = Vec::new();
    let mut budget = MAX_AGENT_DIFF_BYTES.saturating_mul(4);
    for rel in &paths {
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
    let changes: Vec<crate::diff::FileChange<'_>> = sides
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
    // The report must stay within a gRPC message (and the agent's part within
    // MAX_AGENT_REPORT_BYTES): the rest is counted, not listed.
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
    if budget == 0 && !diff.truncated {
        diff.truncated = true;
        diff.text
            .push_str("# diff cut: the files changed hold too many bytes to diff them all\n");
    }
    let mut noted = 0usize;
    for (index, rel) in unreadable.iter().enumerate() {
        let note = format!("# {rel}: changed; over max_file_bytes, so not diffed\n");
        noted += note.len();
        if noted > MAX_AGENT_NOTES_BYTES {
            diff.text.push_str(&format!(
                "# … and {} more files over max_file_bytes, not diffed\n",
                unreadable.len() - index
            ));
            break;
        }
        diff.text.push_str(&note);
    }
    (diff, paths)
}

/// Hands the patch to the target's agent (a CLI it runs, or the inbox), with a snapshot of
/// the workspace before; then the patch's checks and the owner's. Any failure, timeout or
/// cancel restores the snapshot byte for byte (the agent's new files removed). The report
/// carries what the agent did: its diff, final message, transcript tail, exit status, tokens.
#[allow(clippy::too_many_arguments)]
fn hand_off(
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
    let (deadline, cancel, patch) = (attempt.deadline, attempt.cancel, attempt.patch);
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
    let cli = agent.cli.clone().unwrap_or_else(|| "inbox".to_owned());
    let mut run = ghost_core::AgentRun {
        cli: cli.clone(),
        ..ghost_core::AgentRun::default()
    };
    let outcome = if agent.cli.is_some() {
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
            agent::run_cli(&ctx.workspace, &agent, &prompt, &files, deadline, cancel)
        });
        match ran {
            Ok(ran) => {
                attempt.report.sandbox = ran.sandbox.to_owned();
                let parsed = agent::parse_output(&ran.report.output_tail);
                run.exit_code = ran.report.exit_code;
                run.duration_ms = ran.report.duration_ms;
                run.final_message = parsed.final_message;
                run.transcript_tail =
                    agent::tail_chars(&ran.report.output_tail, MAX_TRANSCRIPT_BYTES);
                run.input_tokens = parsed.input_tokens;
                run.output_tokens = parsed.output_tokens;
                run.cost_usd = parsed.cost_usd;
                ran.outcome
            }
            Err(reason) => Outcome::Failed(reason),
        }
    } else {
        let begun = Instant::now();
        let waited = attempt.stage("agent", |_| {
            agent::hand_off(&ctx.workspace, &agent, patch, task, deadline, cancel)
        });
        run.duration_ms = millis(begun.elapsed());
        match waited {
            Ok((outcome, command)) => {
                if let Some(command) = &command {
                    run.exit_code = command.exit_code;
                    run.transcript_tail =
                        agent::tail_chars(&command.output_tail, MAX_TRANSCRIPT_BYTES);
                    run.final_message = agent::parse_output(&command.output_tail).final_message;
                }
                attempt.report.commands.extend(command);
                outcome
            }
            Err(reason) => Outcome::Failed(reason),
        }
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
        let (diff, files) = agent_diff(ctx, scope, &snapshot, changed);
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
    let Some((status, reason)) = failure else {
        let mut report = attempt.end(Status::Succeeded, "");
        let mut journal = journal;
        if let Err(err) = ledger.record(target, patch.id.as_str(), hash, &report) {
            // Without the entry a re-delivery would run the agent again: undo instead.
            match unrecorded(
                ctx,
                scope,
                Some(&snapshot),
                journal,
                &mut dirs,
                false,
                ledger,
                patch,
                hash,
                report,
                &err,
                fault,
            ) {
                Ok(failed) => return failed,
                Err(kept) => (journal, report) = *kept,
            }
        }
        if let Err(err) = snapshot::release(scope) {
            tracing::error!(%target, error = %err, "cannot release the snapshot");
        }
        close_journal(target, journal);
        return report;
    };
    let restored = attempt.stage("rollback", |_| {
        roll_back(ctx, scope, Some(&snapshot), &journal, &mut dirs, false)
    });
    attempt.report.rollback = Some(rollback_record(&restored, &reason));
    let status = if status == Status::Failed {
        Status::RolledBack
    } else {
        status
    };
    if !restored.errors.is_empty() {
        rollback_failed(target, patch, &restored);
        let error = format!(
            "{reason}; the rollback could not restore everything ({}), so this target \
             refuses patches until it can",
            restored.errors.join("; ")
        );
        return attempt.end(status, error);
    }
    close_journal(target, journal);
    attempt.end(status, reason)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
