//! Hand-off to a coding agent: a task file in the target's agent inbox, then a wait — with
//! `notify` — for the agent's completion file (or for the configured agent command to exit),
//! bounded by a deadline and a cancel. The lease keeps heartbeating meanwhile because the
//! connection heartbeats every lease it still holds.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ghost_core::{CommandKind, CommandReport, Patch};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::commands::{self, Argv, Stopped};
use crate::config::AgentConfig;
use crate::workspace::Workspace;

/// How a hand-off ended.
#[derive(Debug)]
pub enum Outcome {
    /// The agent reported completion.
    Done,
    /// The agent reported failure.
    Failed(String),
    /// No completion before the deadline.
    TimedOut,
    /// Cancelled by the router.
    Cancelled,
}

/// The completion file an agent creates for `patch_id`.
pub fn completion_path(agent: &AgentConfig, patch_id: &str) -> PathBuf {
    agent.inbox.join(format!("{patch_id}.done"))
}

fn task_text(workspace: &Workspace, patch: &Patch, task: &str, done: &Path) -> String {
    format!(
        "# Ghost Runner task {id}\n\nWorkspace: {root}\nTarget: {target}\n\n{description}\n\n## Task\n\n{task}\n\n\
## When you are done\n\nCreate the file `{done}`. Write `failed: <reason>` as its first line if you could not \
complete the task.\n",
        id = patch.id,
        root = workspace.root.display(),
        target = workspace.target,
        description = patch.description,
        done = done.display(),
    )
}

/// Writes the task and waits for the agent. The command report is `Some` when an agent
/// command ran.
pub fn hand_off(
    workspace: &Workspace,
    agent: &AgentConfig,
    patch: &Patch,
    task: &str,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<(Outcome, Option<CommandReport>), String> {
    fs::create_dir_all(&agent.inbox)
        .map_err(|err| format!("cannot create agent inbox {}: {err}", agent.inbox.display()))?;
    let done = completion_path(agent, patch.id.as_str());
    let _ = fs::remove_file(&done);
    let task_file = agent.inbox.join(format!("{}.task.md", patch.id));
    crate::journal::write_atomically(
        &task_file,
        task_text(workspace, patch, task, &done).as_bytes(),
        0o644,
    )
    .map_err(|err| format!("cannot write task file {}: {err}", task_file.display()))?;
    if let Some(command) = &agent.command {
        let mut argv = shell_words::split(command)
            .map_err(|err| format!("agent command {command:?} cannot be split: {err}"))?;
        argv.push(task_file.display().to_string());
        let (report, stopped) = commands::run(
            workspace,
            command,
            &Argv::Direct(argv),
            CommandKind::Command,
            deadline,
            cancel,
        );
        let outcome = match (stopped, report.exit_code) {
            (Some(Stopped::Cancelled), _) => Outcome::Cancelled,
            (Some(Stopped::Deadline), _) => Outcome::TimedOut,
            (None, Some(0)) => Outcome::Done,
            (None, code) => Outcome::Failed(format!("agent command exited with {code:?}")),
        };
        return Ok((outcome, Some(report)));
    }
    Ok((wait_for(&done, &agent.inbox, deadline, cancel)?, None))
}

/// Most of a completion file that is read (its first line is the outcome).
const MAX_COMPLETION_BYTES: u64 = 64 * 1024;

/// Reads the completion file relative to a handle of the inbox, following no symlink and
/// refusing anything but a regular file: the agent may not make the executor read (and
/// report) a file it cannot read itself.
fn read_outcome(done: &Path) -> Outcome {
    let inbox = done.parent().unwrap_or(Path::new("."));
    let name = done
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    let read = rustix::fs::openat(
        rustix::fs::CWD,
        inbox,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .and_then(|handle| crate::beneath::read(&handle, name, MAX_COMPLETION_BYTES));
    let text = match read {
        Ok(Some((bytes, _))) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(None) => String::new(),
        Err(err) => {
            tracing::warn!(path = %done.display(), error = %err, "completion file refused");
            return Outcome::Failed(
                "the completion file is not a regular file of at most 64 KiB (a symlink is \
                 never followed)"
                    .to_owned(),
            );
        }
    };
    let first = text.lines().next().unwrap_or("").trim();
    match first.strip_prefix("failed") {
        Some(reason) => Outcome::Failed(format!(
            "the agent reported failure: {}",
            reason.trim_start_matches(':').trim()
        )),
        None => Outcome::Done,
    }
}

fn wait_for(
    done: &Path,
    inbox: &Path,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<Outcome, String> {
    let (events_tx, events_rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = events_tx.send(event);
    })
    .map_err(|err| format!("cannot watch the agent inbox: {err}"))?;
    watcher
        .watch(inbox, RecursiveMode::NonRecursive)
        .map_err(|err| format!("cannot watch {}: {err}", inbox.display()))?;
    loop {
        // Checked after the watch started, so a file created in between is not missed.
        // Without following a symlink: whatever is there is judged by `read_outcome`.
        if done.symlink_metadata().is_ok() {
            return Ok(read_outcome(done));
        }
        if cancel.is_cancelled() {
            return Ok(Outcome::Cancelled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::TimedOut);
        }
        // Wake on any inbox event, and at least every 200 ms to notice a cancel.
        let _ = events_rx.recv_timeout(left.min(Duration::from_millis(200)));
    }
}
