//! Hand-off to a coding agent, two ways:
//!
//! - **An agent CLI** (`cli = "aider"`, `"claude-code"`, ..., or `"command"`): run in the
//!   workspace under the same confinement as commands (scrubbed environment plus the agent's
//!   `env`, its own process tree, deadline, kill, output caps, Landlock), with the task as a
//!   file (`GHOST_TASK_FILE`, in a private temp dir that is also its `TMPDIR`) and on stdin.
//!   Each known CLI's non-interactive invocation is in ONE table, [`CLIS`]. Its final message,
//!   tokens and cost are read from its output where it reports them ([`parse_output`]).
//! - **The inbox** (no `cli`): a task file in the target's agent inbox, then a wait — with
//!   `notify` — for the agent's completion file (or for the configured agent command to
//!   exit), for an IDE agent.
//!
//! Both are bounded by a deadline and a cancel; the lease keeps heartbeating meanwhile
//! because the connection heartbeats every lease it still holds. The snapshot before, the
//! checks after and the rollback are [`crate::apply`]'s.

mod clis;
mod output;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ghost_core::{CommandKind, CommandReport, Patch};
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::commands::{self, Argv, Extra, Stopped};
use crate::config::AgentConfig;
use crate::workspace::Workspace;

pub use self::clis::{CLIS, Invocation, argv, cli_names, invocation, shown};
pub use self::output::{Output, parse_output, tail_chars};

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
pub fn completion_path(inbox: &Path, patch_id: &str) -> PathBuf {
    inbox.join(format!("{patch_id}.done"))
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
    let Some(inbox) = agent.inbox.as_deref() else {
        return Err("the target's agent has neither a cli nor an inbox".to_owned());
    };
    fs::create_dir_all(inbox)
        .map_err(|err| format!("cannot create agent inbox {}: {err}", inbox.display()))?;
    let done = completion_path(inbox, patch.id.as_str());
    let _ = fs::remove_file(&done);
    let task_file = inbox.join(format!("{}.task.md", patch.id));
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
        // Like an agent CLI: the task on stdin and in GHOST_TASK_FILE, the agent's `env`.
        let extra = Extra {
            stdin: Some(task_file.clone()),
            env: vec![(
                "GHOST_TASK_FILE".to_owned(),
                task_file.display().to_string(),
            )],
            pass: agent.env.clone(),
            ..Extra::default()
        };
        let ran = commands::run_with(
            workspace,
            command,
            &Argv::Direct(argv),
            CommandKind::Command,
            deadline,
            cancel,
            &extra,
        );
        let (report, stopped) = (ran.report, ran.stopped);
        let outcome = match (stopped, report.exit_code) {
            (Some(Stopped::Cancelled), _) => Outcome::Cancelled,
            (Some(Stopped::Deadline), _) => Outcome::TimedOut,
            (None, Some(0)) => Outcome::Done,
            (None, code) => Outcome::Failed(format!("agent command exited with {code:?}")),
        };
        return Ok((outcome, Some(report)));
    }
    Ok((wait_for(&done, inbox, deadline, cancel)?, None))
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

/// Most files named in a task that are given to the agent.
const MAX_NAMED_FILES: usize = 100;

/// Workspace files the task text names: words that look like relative paths (a `/` or a
/// `.` in them, no leading `-`) and are regular files of the workspace, in the order named,
/// each once.
pub fn files_named(workspace: &Workspace, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(mut dirs) = crate::beneath::Dirs::open(&workspace.root) else {
        return found;
    };
    for word in text.split(|c: char| c.is_whitespace() || "`'\"(),;:<>[]{}*".contains(c)) {
        let word = word.trim_end_matches(['.', '!', '?']);
        let word = word.strip_prefix("./").unwrap_or(word);
        // A name starting with `-` would be read as an option by a CLI given the files.
        if word.is_empty()
            || word.starts_with('-')
            || word.len() > 1024
            || !(word.contains('/') || word.contains('.'))
            || found.iter().any(|seen| seen == word)
            || crate::workspace::check_path(workspace, word).is_err()
        {
            continue;
        }
        // Never following a symlink, on the way or at the end: only a regular file of the
        // workspace counts (the agent reads what it is given, and may send it to its model).
        let (parent, name) = crate::beneath::split(word);
        let regular = dirs.dir(parent).is_ok_and(|handle| {
            matches!(
                crate::beneath::stat(&handle, name),
                Ok(Some(crate::beneath::Kind::File(_)))
            )
        });
        if regular {
            found.push(word.to_owned());
            if found.len() == MAX_NAMED_FILES {
                break;
            }
        }
    }
    found
}

/// The prompt an agent CLI gets (as the task file and on stdin): the patch's description,
/// its task (notes, phases and steps, validation and success criteria for a legacy
/// document), the checks that will judge the work, and the files named.
pub fn prompt(patch: &Patch, task: &str, checks: &[String], files: &[String]) -> String {
    let mut out = format!("# Ghost Runner task {}\n\n", patch.id);
    if !patch.description.trim().is_empty() {
        out.push_str(&format!("{}\n\n", patch.description.trim()));
    }
    out.push_str(&format!("## Task\n\n{}\n", task.trim_end()));
    if !checks.is_empty() {
        out.push_str(
            "\n## Checks\n\nWhen you are done these run in the workspace; if one fails, \
             everything you changed is undone:\n\n",
        );
        for check in checks {
            out.push_str(&format!("- `{check}`\n"));
        }
    }
    if !files.is_empty() {
        out.push_str("\n## Files named\n\n");
        for file in files {
            out.push_str(&format!("- {file}\n"));
        }
    }
    out.push_str(
        "\n## Rules\n\nWork only in the current directory (the workspace). Do not commit, push \
         or change git settings. End with a short summary of what you changed.\n",
    );
    out
}

/// Bytes of output kept from the end of an agent's run (its final JSON result is there).
pub const AGENT_TAIL_BYTES: usize = 64 * 1024;

/// How an agent CLI ran.
#[derive(Debug)]
pub struct CliRun {
    /// How the hand-off ended.
    pub outcome: Outcome,
    /// The agent as a command: its line, exit status, output.
    pub report: CommandReport,
    /// `"landlock"`, `"landlock-partial"` or `"none"`.
    pub sandbox: &'static str,
}

/// Runs the target's agent CLI on `prompt` in the workspace until it exits, the deadline or
/// a cancel; its temp dir (with the task file) is removed after.
pub fn run_cli(
    workspace: &Workspace,
    agent: &AgentConfig,
    prompt: &str,
    files: &[String],
    deadline: Instant,
    cancel: &CancellationToken,
) -> Result<CliRun, String> {
    let tmp = commands::private_tmp("ghost-agent")
        .map_err(|err| format!("cannot make the agent's temp dir: {err}"))?;
    let ran = run_in(workspace, agent, prompt, files, deadline, cancel, &tmp);
    if let Err(err) = fs::remove_dir_all(&tmp) {
        tracing::warn!(dir = %tmp.display(), error = %err, "cannot remove the agent's temp dir");
    }
    ran
}

fn run_in(
    workspace: &Workspace,
    agent: &AgentConfig,
    prompt: &str,
    files: &[String],
    deadline: Instant,
    cancel: &CancellationToken,
    tmp: &Path,
) -> Result<CliRun, String> {
    // An agent CLI runs confined unless the operator turned the sandbox off: refused here,
    // with the reason as the patch's error, rather than as a command that exited 127.
    let abi = if commands::sandbox::available() {
        commands::sandbox::abi().max(1)
    } else {
        0
    };
    commands::sandbox::decide(workspace.policy.sandbox, abi, true)?;
    let task_file = tmp.join("task.md");
    crate::journal::write_atomically(&task_file, prompt.as_bytes(), 0o600)
        .map_err(|err| format!("cannot write the agent's task file: {err}"))?;
    let argv = argv(agent, &task_file, tmp, files)?;
    let line = shown(&argv);
    let extra = Extra {
        stdin: Some(task_file.clone()),
        env: vec![(
            "GHOST_TASK_FILE".to_owned(),
            task_file.display().to_string(),
        )],
        pass: agent.env.clone(),
        tmp: Some(tmp.to_owned()),
        tail_bytes: Some(AGENT_TAIL_BYTES.max(workspace.policy.output_tail_bytes)),
        agent: true,
    };
    let ran = commands::run_with(
        workspace,
        &line,
        &Argv::Direct(argv),
        CommandKind::Command,
        deadline,
        cancel,
        &extra,
    );
    let outcome = match (ran.stopped, ran.report.exit_code, ran.report.signal) {
        (Some(Stopped::Cancelled), _, _) => Outcome::Cancelled,
        (Some(Stopped::Deadline), _, _) => Outcome::TimedOut,
        (None, Some(0), _) => Outcome::Done,
        (None, Some(code), _) => Outcome::Failed(format!("the agent exited with code {code}")),
        (None, None, Some(signal)) => {
            Outcome::Failed(format!("the agent was killed by signal {signal}"))
        }
        (None, None, None) => Outcome::Failed("the agent ended without an exit status".to_owned()),
    };
    Ok(CliRun {
        outcome,
        report: ran.report,
        sandbox: ran.sandbox,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_cli_has_a_distinct_name_and_a_model_flag() {
        let mut names: Vec<&str> = CLIS.iter().map(|known| known.cli).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CLIS.len());
        for known in CLIS {
            assert!(known.model_flag.starts_with("--"), "{}", known.cli);
        }
    }

    #[test]
    fn outputs_of_the_known_clis_give_their_final_message_and_tokens() {
        let claude = r#"{"type":"result","is_error":false,"result":"Renamed it.","total_cost_usd":0.0123,"usage":{"input_tokens":100,"output_tokens":20}}"#;
        let found = parse_output(claude);
        assert_eq!(found.final_message, "Renamed it.");
        assert_eq!(
            (found.input_tokens, found.output_tokens),
            (Some(100), Some(20))
        );
        assert_eq!(found.cost_usd, "0.0123");
        let codex = "{\"type\":\"item.completed\",\"item\":{\"type\":\"agent_message\",\"text\":\"Done.\"}}\n\
                     {\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":5,\"output_tokens\":7}}\n";
        let found = parse_output(codex);
        assert_eq!(found.final_message, "Done.");
        assert_eq!(
            (found.input_tokens, found.output_tokens),
            (Some(5), Some(7))
        );
        let aider = "Applied edit to a.txt\nTokens: 2.3k sent, 150 received. Cost: $0.01 message, $0.02 session.\n";
        let found = parse_output(aider);
        assert_eq!(found.final_message, "Applied edit to a.txt");
        assert_eq!(
            (found.input_tokens, found.output_tokens),
            (Some(2300), Some(150))
        );
        assert_eq!(found.cost_usd, "0.02");
    }

    #[test]
    fn only_regular_files_of_the_workspace_are_named_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap().join("ws");
        let outside = root.parent().unwrap().join("outside");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("src/a.ts"), "a").unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("s.txt")).unwrap();
        let workspace = Workspace {
            target: "MAIN".to_owned(),
            root: root.clone(),
            state_dir: dir.path().join("state"),
            policy: crate::config::TargetPolicy::default(),
        };
        let text = "Edit `src/a.ts` and ./src/a.ts, link/secret.txt, s.txt, ../outside/secret.txt, \
                    /etc/passwd and src/missing.ts.";
        assert_eq!(files_named(&workspace, text), ["src/a.ts"]);
    }

    #[test]
    fn secrets_in_the_reported_command_line_are_masked() {
        let argv: Vec<String> = ["aider", "--openai-api-key", "sk-1", "--api-key=x", "a.txt"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(
            shown(&argv),
            "aider --openai-api-key '***' '--api-key=***' a.txt"
        );
    }
}
