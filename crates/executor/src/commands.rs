//! Running a patch's `commands` and `validate` checks under the target's policy.
//!
//! A command line is split with shell-words (no shell) unless the target allows a shell and
//! runs any program. The child gets a scrubbed environment (plus the command's tag,
//! `GHOST_COMMAND_TAG`, which tells its orphans from another command's), the workspace as
//! its working directory, a session (and so a process group) of its own and rlimits (CPU,
//! address space, open files, processes). At its deadline, or on cancel, its whole process
//! tree ([`tree`]) — also the descendants that left its group or session — gets SIGTERM, then
//! is stopped and killed after a grace period; when it ends by itself, whatever it left
//! running is killed the same way, so no daemonised grandchild outlives its patch. Where the
//! target names a pids cgroup, each command also runs in a cgroup of its own ([`cgroup`])
//! capping its process count, or does not run at all. The leader is reaped only after the
//! sweep, so its pid (and group id) cannot be reused while the sweep signals them, and the
//! wait for it is bounded: a leader that cannot be killed is left to the janitor rather than
//! hang the patch. Output is captured with bounded memory: the head and the tail are kept,
//! the middle is counted; all of it goes through a bounded diagnostics parser as it streams,
//! so a compiler error in the omitted middle is still reported.
//!
//! Each command gets a private temp dir of its own (mode 0700, `TMPDIR` points at it,
//! removed when it ends) and, where the kernel has Landlock, may write only there, in the
//! workspace and in the target's `writable` paths ([`sandbox`]).

mod cgroup;
mod confinement;
pub mod sandbox;
mod tmp;
mod tree;

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use ghost_core::{CommandKind, CommandReport, diagnostics};
use nix::sys::signal::Signal;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::config::{CommandPolicy, TargetPolicy};
use crate::workspace::Workspace;

pub use tree::{become_subreaper, kill_leftovers};

use self::confinement::{Confinement, confine, confinement};
pub use self::tmp::{private_tmp, sweep_tmp};

/// How a command is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argv {
    /// `program args…`, no shell.
    Direct(Vec<String>),
    /// `/bin/sh -c line`.
    Shell(String),
}

/// Checks `line` against the policy; returns how to start it or why it is refused.
pub fn admit(policy: &TargetPolicy, target: &str, line: &str) -> Result<Argv, String> {
    if matches!(policy.commands, CommandPolicy::Deny) {
        return Err(format!(
            "commands are denied by target {target}'s policy (refused: {line:?})"
        ));
    }
    if policy.shell && matches!(policy.commands, CommandPolicy::Any) {
        return Ok(Argv::Shell(line.to_owned()));
    }
    let argv =
        shell_words::split(line).map_err(|err| format!("cannot split command {line:?}: {err}"))?;
    let Some(program) = argv.first() else {
        return Err("empty command".to_owned());
    };
    if let CommandPolicy::Allowlist(allowed) = &policy.commands
        && !allowed.iter().any(|name| name == program)
    {
        return Err(format!(
            "program {program:?} is not on target {target}'s allowlist ({})",
            allowed.join(", ")
        ));
    }
    Ok(Argv::Direct(argv))
}

/// Output kept from a command: the first bytes, the last bytes, and a count of the rest.
struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    total: u64,
}

impl Capture {
    fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.head_cap.saturating_sub(self.head.len());
        let take = room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..take]);
        bytes = &bytes[take..];
        if self.tail_cap == 0 {
            return;
        }
        if bytes.len() >= self.tail_cap {
            bytes = &bytes[bytes.len() - self.tail_cap..];
            self.tail.clear();
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(bytes);
    }

    /// (head, tail, omitted): whole output in `tail` when nothing was dropped.
    fn finish(&self) -> (String, String, u64) {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        if kept == self.total {
            let mut all = self.head.clone();
            all.extend_from_slice(&tail);
            return (String::new(), String::from_utf8_lossy(&all).into_owned(), 0);
        }
        (
            String::from_utf8_lossy(&self.head).into_owned(),
            String::from_utf8_lossy(&tail).into_owned(),
            self.total - kept,
        )
    }
}

/// Why a command was stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It reached its deadline (or the patch's).
    Deadline,
    /// The patch was cancelled.
    Cancelled,
}

/// What a run adds to a plain command: its stdin, variables, a temp dir, a longer tail.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// A file given on stdin (default: `/dev/null`).
    pub stdin: Option<PathBuf>,
    /// Variables set on top of the scrubbed environment.
    pub env: Vec<(String, String)>,
    /// More variable names passed through from the executor's environment.
    pub pass: Vec<String>,
    /// The private temp dir to use, made by the caller (default: one is made, and removed
    /// when the command ends).
    pub tmp: Option<PathBuf>,
    /// Output bytes kept from the end instead of the target's `output_tail_bytes`.
    pub tail_bytes: Option<usize>,
    /// An agent CLI: under `sandbox = "auto"` it is refused where there is no Landlock.
    pub agent: bool,
}

fn spawn(
    workspace: &Workspace,
    argv: &Argv,
    procs: Option<Arc<File>>,
    tag: &str,
    extra: &Extra,
    tmp: &Path,
    ruleset: Option<landlock::RulesetCreated>,
) -> std::io::Result<Child> {
    let mut command = match argv {
        Argv::Direct(argv) => {
            let mut command = Command::new(&argv[0]);
            command.args(&argv[1..]);
            command
        }
        Argv::Shell(line) => {
            let mut command = Command::new("/bin/sh");
            command.arg("-c").arg(line);
            command
        }
    };
    command
        .current_dir(&workspace.root)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| {
            workspace
                .policy
                .env_allowlist
                .iter()
                .chain(&extra.pass)
                .any(|allowed| name.to_str() == Some(allowed.as_str()))
        }))
        .env("TMPDIR", tmp)
        .envs(extra.env.iter().map(|(name, value)| (name, value)))
        .env(tree::TAG_VAR, tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match &extra.stdin {
        Some(path) => command.stdin(File::open(path)?),
        None => command.stdin(Stdio::null()),
    };
    confine(&mut command, &workspace.policy, procs, ruleset);
    command.spawn()
}

/// Copies `source` into `capture` and, whole, into a diagnostics parser of its own (one per
/// stream, so the lines of stdout and stderr never mix); sends what it found at the end, with
/// `stream` (0 stdout, 1 stderr) so the report lists them in the same order every time.
fn pump(
    mut source: impl Read + Send + 'static,
    capture: Arc<Mutex<Capture>>,
    stream: usize,
    line: &str,
    done: mpsc::Sender<(usize, diagnostics::Found)>,
) {
    let mut parser = diagnostics::Parser::new(line);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match source.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Ok(mut capture) = capture.lock() {
                        capture.push(&buffer[..n]);
                    }
                    parser.feed(&buffer[..n]);
                }
            }
        }
        let _ = done.send((stream, parser.finish()));
    });
}

/// Whether the leader has ended, without reaping it: until its `Child` reaps it, its pid and
/// group id cannot be reused, so the sweep may still signal them. An error (it is not our
/// child any more) counts as ended.
fn leader_ended(leader: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    !matches!(
        waitid(Id::Pid(leader), flags),
        Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR)
    )
}

/// How long the leader, SIGKILLed, may take to be reaped before it is left to the janitor.
const REAP_BUDGET: Duration = Duration::from_secs(5);

/// Reaps the leader within [`REAP_BUDGET`]; past it (a process stuck in the kernel), hands it
/// to the janitor and to a thread that reaps it whenever it ends, and reports no status.
fn reap_leader(
    mut child: Child,
    tree: &tree::Tree,
    line: &str,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    let mut poll = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if started.elapsed() >= REAP_BUDGET {
            let (pid, start) = tree.leader();
            tree::abandon(pid, start, line);
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return None;
        }
        std::thread::sleep(poll);
        poll = (poll * 2).min(Duration::from_millis(50));
    }
}

/// How often the tree is walked while the command runs: often enough to see most children
/// before they are orphaned, rarely enough to cost nothing next to the command.
const TRACK_EVERY: Duration = Duration::from_millis(50);

/// Kills what is left of the command's tree and says so when there was something.
fn kill_tree(tree: &mut tree::Tree, line: &str) {
    let sweep = tree.kill_all(line);
    if sweep.killed > 0 || !sweep.gone {
        tracing::info!(
            killed = sweep.killed,
            gone = sweep.gone,
            took_ms = u64::try_from(sweep.took.as_millis()).unwrap_or(u64::MAX),
            command = %line,
            "killed the command's remaining processes"
        );
    }
}

/// Runs one command to completion, its deadline or a cancel. Never panics; spawn failures
/// are reported as a failed command.
pub fn run(
    workspace: &Workspace,
    line: &str,
    argv: &Argv,
    kind: CommandKind,
    deadline: Instant,
    cancel: &CancellationToken,
) -> (CommandReport, Option<Stopped>) {
    let ran = run_with(
        workspace,
        line,
        argv,
        kind,
        deadline,
        cancel,
        &Extra::default(),
    );
    (ran.report, ran.stopped)
}

/// How a command ran.
#[derive(Debug)]
pub struct Ran {
    /// Its report.
    pub report: CommandReport,
    /// Why it was stopped early, if it was.
    pub stopped: Option<Stopped>,
    /// `"landlock"`, `"landlock-partial"` or `"none"`.
    pub sandbox: &'static str,
}

/// [`run`] with more: stdin, variables, a given temp dir, a longer output tail.
pub fn run_with(
    workspace: &Workspace,
    line: &str,
    argv: &Argv,
    kind: CommandKind,
    deadline: Instant,
    cancel: &CancellationToken,
    extra: &Extra,
) -> Ran {
    let started = Instant::now();
    let mut report = CommandReport {
        command: line.to_owned(),
        kind,
        ..CommandReport::default()
    };
    let refused = |mut report: CommandReport, why: String| {
        report.output_tail = why;
        report.exit_code = Some(127);
        Ran {
            report,
            stopped: None,
            sandbox: "none",
        }
    };
    let Confinement {
        tmp,
        tmp_guard: _tmp_guard,
        ruleset,
        sandbox: sandbox_name,
        cgroup,
    } = match confinement(workspace, line, extra) {
        Ok(confinement) => confinement,
        Err(why) => return refused(report, why),
    };
    let in_cgroup = cgroup.is_some();
    let procs = cgroup.as_ref().map(cgroup::CommandCgroup::procs);
    let (mut child, mut tree) = match tree::Tree::spawn(cgroup, |tag| {
        spawn(workspace, argv, procs, tag, extra, &tmp, ruleset)
    }) {
        Ok(spawned) => spawned,
        Err(err) if in_cgroup => {
            tracing::error!(error = %err, command = %line, "cannot start the command in its pids cgroup");
            return refused(
                report,
                format!("cannot start command (or move it into its pids cgroup): {err}"),
            );
        }
        Err(err) => {
            return refused(report, format!("cannot start command: {err}"));
        }
    };
    let leader = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let (capture, done_rx) = capture_output(&mut child, workspace, extra, line);
    let kill_grace = workspace.policy.kill_grace;
    let stopped = wait_for_leader(leader, &mut tree, deadline, cancel, kill_grace);
    // Whatever the command left running, in its group or not, goes with it; the leader too,
    // when it is stopped early or only its main thread ended.
    kill_tree(&mut tree, line);
    let status = reap_leader(child, &tree, line);
    // Only now, with its leader reaped, may another command's sweep treat the pid as free.
    drop(tree);
    gather_diagnostics(&done_rx, &mut report);
    if let Some(status) = status {
        report.exit_code = status.code();
        report.signal = status.signal();
    }
    report.timed_out = stopped == Some(Stopped::Deadline);
    report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if let Ok(capture) = capture.lock() {
        let (head, tail, omitted) = capture.finish();
        report.output_head = head;
        report.output_tail = tail;
        report.omitted_bytes = omitted;
    }
    Ran {
        report,
        stopped,
        sandbox: sandbox_name,
    }
}

/// Starts reading the child's stdout and stderr into one capture (its head and tail within
/// the target's bounds, or `extra`'s longer tail), each stream's diagnostics parsed as it
/// goes and sent on the receiver when the stream ends.
fn capture_output(
    child: &mut Child,
    workspace: &Workspace,
    extra: &Extra,
    line: &str,
) -> (
    Arc<Mutex<Capture>>,
    mpsc::Receiver<(usize, diagnostics::Found)>,
) {
    let capture = Arc::new(Mutex::new(Capture {
        head: Vec::new(),
        tail: VecDeque::new(),
        head_cap: workspace.policy.output_head_bytes,
        tail_cap: extra
            .tail_bytes
            .unwrap_or(workspace.policy.output_tail_bytes),
        total: 0,
    }));
    let (done_tx, done_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        pump(stdout, Arc::clone(&capture), 0, line, done_tx.clone());
    }
    if let Some(stderr) = child.stderr.take() {
        pump(stderr, Arc::clone(&capture), 1, line, done_tx.clone());
    }
    drop(done_tx);
    (capture, done_rx)
}

/// Waits for the command's leader to end, tracking its process tree as it goes. At the
/// deadline or on cancel, SIGTERM to the whole tree and up to `kill_grace` for it to end;
/// which of the two stopped it, if either.
fn wait_for_leader(
    leader: Pid,
    tree: &mut tree::Tree,
    deadline: Instant,
    cancel: &CancellationToken,
    kill_grace: Duration,
) -> Option<Stopped> {
    let mut stopped = None;
    let mut next_track = Instant::now();
    loop {
        if leader_ended(leader) {
            break;
        }
        if Instant::now() >= next_track {
            let walk = Instant::now();
            tree.track();
            // A big tree (a fork bomb) is walked less often, so tracking stays a small share.
            next_track = Instant::now() + TRACK_EVERY.max(walk.elapsed() * 4);
        }
        if cancel.is_cancelled() {
            stopped = Some(Stopped::Cancelled);
        } else if Instant::now() >= deadline {
            stopped = Some(Stopped::Deadline);
        }
        if stopped.is_some() {
            tree.signal_all(Signal::SIGTERM);
            let grace_end = Instant::now() + kill_grace;
            while Instant::now() < grace_end {
                // The group cannot tell (the unreaped leader stays in it): what is tracked can.
                if Instant::now() >= next_track {
                    let walk = Instant::now();
                    tree.track();
                    next_track = Instant::now() + TRACK_EVERY.max(walk.elapsed() * 4);
                }
                if leader_ended(leader) && !tree.any_running() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stopped
}

/// Takes what the output streams' parsers found (waiting a second at most for both), in
/// stream order, into the report's diagnostics.
fn gather_diagnostics(
    done_rx: &mpsc::Receiver<(usize, diagnostics::Found)>,
    report: &mut CommandReport,
) {
    let output_deadline = Instant::now() + Duration::from_secs(1);
    let mut streams = Vec::with_capacity(2);
    for _ in 0..2 {
        let left = output_deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(found) => streams.push(found),
            Err(_) => break,
        }
    }
    streams.sort_by_key(|(stream, _)| *stream);
    for (_, found) in streams {
        report.diagnostics.dropped += found.dropped;
        report.diagnostics.diagnostics.extend(found.diagnostics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_head_and_tail_within_bounds() {
        let mut capture = Capture {
            head: Vec::new(),
            tail: VecDeque::new(),
            head_cap: 4,
            tail_cap: 4,
            total: 0,
        };
        capture.push(b"abc");
        assert_eq!(capture.finish(), (String::new(), "abc".to_owned(), 0));
        for chunk in [&b"defgh"[..], b"ijklmnopqrstuvwxyz"] {
            capture.push(chunk);
        }
        assert_eq!(capture.finish(), ("abcd".to_owned(), "wxyz".to_owned(), 18));
    }

    #[test]
    fn temp_dirs_of_a_dead_executor_are_swept_and_live_ones_kept() {
        let stale = std::env::temp_dir().join("ghost-cmd-4294967-sweeptest");
        std::fs::create_dir_all(stale.join("inner")).unwrap();
        let live = private_tmp("ghost-cmd").unwrap();
        sweep_tmp();
        assert!(!stale.exists(), "a dead executor's temp dir is removed");
        assert!(live.exists(), "this executor's own temp dir is kept");
        std::fs::remove_dir_all(live).unwrap();
    }

    #[test]
    fn policies_admit_only_what_they_allow() {
        let mut policy = TargetPolicy::default();
        assert!(admit(&policy, "MAIN", "ls").unwrap_err().contains("denied"));
        policy.commands = CommandPolicy::Allowlist(vec!["cargo".to_owned()]);
        assert_eq!(
            admit(&policy, "MAIN", "cargo test 'a b'").unwrap(),
            Argv::Direct(vec!["cargo".into(), "test".into(), "a b".into()])
        );
        assert!(
            admit(&policy, "MAIN", "rm -rf /")
                .unwrap_err()
                .contains("allowlist")
        );
        policy.shell = true;
        assert!(
            admit(&policy, "MAIN", "cargo x; rm -rf /").is_ok_and(|a| matches!(a, Argv::Direct(_)))
        );
        policy.commands = CommandPolicy::Any;
        assert_eq!(
            admit(&policy, "MAIN", "a | b").unwrap(),
            Argv::Shell("a | b".to_owned())
        );
    }
}
