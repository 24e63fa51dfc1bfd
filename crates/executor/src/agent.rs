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

/// How one known agent CLI is run unattended. `{task}` in an argument is replaced by the task
/// file's path, `{tmp}` by the agent's private temp dir.
#[derive(Debug, Clone, Copy)]
pub struct Invocation {
    /// The `cli` name in the target's policy.
    pub cli: &'static str,
    /// The program looked up in `PATH` (unless the policy's `command` names one).
    pub program: &'static str,
    /// Its documented non-interactive flags: auto-approval, JSON output where it has it.
    pub args: &'static [&'static str],
    /// The flag that picks the model (`model` in the policy).
    pub model_flag: &'static str,
    /// Arguments after the flags, the model and the policy's `args` (a prompt argument).
    pub tail: &'static [&'static str],
    /// The files the task names are given as arguments (aider adds them to its chat).
    pub files_as_args: bool,
}

/// Every known agent CLI, in one table. The task is also on stdin for all of them.
pub const CLIS: &[Invocation] = &[
    // `claude -p`: print mode, the prompt on stdin; one JSON result object at the end.
    Invocation {
        cli: "claude-code",
        program: "claude",
        args: &[
            "-p",
            "--output-format",
            "json",
            "--dangerously-skip-permissions",
            // The user's settings only: none from the workspace (`.claude/`), which a
            // patch or an earlier run could have written to redirect it.
            "--setting-sources",
            "user",
        ],
        model_flag: "--model",
        tail: &[],
        files_as_args: false,
    },
    // `codex exec`: non-interactive (it never asks for approval); `-` reads the prompt from
    // stdin; JSON Lines events. `--sandbox workspace-write` is what `--full-auto` meant until
    // codex removed that flag: its own sandbox, writes to the workspace only.
    Invocation {
        cli: "codex",
        program: "codex",
        args: &[
            "exec",
            "--json",
            "--sandbox",
            "workspace-write",
            "--skip-git-repo-check",
        ],
        model_flag: "--model",
        tail: &["-"],
        files_as_args: false,
    },
    // `gemini` with piped stdin runs non-interactively; `--yolo` approves every tool;
    // `--skip-trust` trusts the workspace for this run (in an untrusted folder gemini would
    // ignore `--yolo`).
    Invocation {
        cli: "gemini",
        program: "gemini",
        args: &["--yolo", "--skip-trust", "--output-format", "json"],
        model_flag: "--model",
        tail: &[],
        files_as_args: false,
    },
    // `opencode run MESSAGE`: non-interactive; `--auto` approves what its permissions do
    // not deny (without it a tool asking for approval is refused unattended); JSON events.
    Invocation {
        cli: "opencode",
        program: "opencode",
        args: &["run", "--auto", "--format", "json"],
        model_flag: "--model",
        tail: &["Carry out the task in the file {task} (the same text is on stdin)."],
        files_as_args: false,
    },
    // `aider --message-file`: one message, then exit; no git of its own (the executor's
    // snapshot is the undo), no shell commands, no lint or test command, no URL scraping, no
    // update check, no `.env` file, its history files in the temp dir rather than the
    // workspace.
    Invocation {
        cli: "aider",
        program: "aider",
        args: &[
            "--message-file",
            "{task}",
            "--yes-always",
            "--no-git",
            "--no-auto-commits",
            "--no-dirty-commits",
            "--no-gitignore",
            "--no-suggest-shell-commands",
            "--no-detect-urls",
            "--no-auto-lint",
            "--no-auto-test",
            "--no-watch-files",
            "--no-notifications",
            // No `.env` of the workspace (it could set `AIDER_*` options).
            "--env-file",
            "/dev/null",
            "--no-check-update",
            "--no-show-release-notes",
            "--analytics-disable",
            "--no-show-model-warnings",
            "--no-stream",
            "--no-pretty",
            "--no-fancy-input",
            "--map-tokens",
            "0",
            "--no-restore-chat-history",
            "--chat-history-file",
            "{tmp}/aider.chat.history.md",
            "--input-history-file",
            "{tmp}/aider.input.history",
        ],
        model_flag: "--model",
        tail: &[],
        files_as_args: true,
    },
    // `cursor-agent -p PROMPT`: print mode; `--force` allows every command; JSON result.
    Invocation {
        cli: "cursor-agent",
        program: "cursor-agent",
        args: &["-p", "--output-format", "json", "--force"],
        model_flag: "--model",
        tail: &["Carry out the task in the file {task} (the same text is on stdin)."],
        files_as_args: false,
    },
];

/// The built-in invocation of `cli`.
pub fn invocation(cli: &str) -> Option<&'static Invocation> {
    CLIS.iter().find(|known| known.cli == cli)
}

/// The known CLI names, for error messages.
pub fn cli_names() -> String {
    CLIS.iter()
        .map(|known| format!("{:?}", known.cli))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The agent's command line: the CLI's program (or the policy's `command`), its built-in
/// flags, the model, the policy's `args`, its tail, then the files (for aider).
pub fn argv(
    agent: &AgentConfig,
    task_file: &Path,
    tmp: &Path,
    files: &[String],
) -> Result<Vec<String>, String> {
    let fill = |arg: &str| {
        arg.replace("{task}", &task_file.display().to_string())
            .replace("{tmp}", &tmp.display().to_string())
    };
    let cli = agent.cli.as_deref().unwrap_or("command");
    if cli == "command" {
        let line = agent.command.as_deref().unwrap_or_default();
        let argv = shell_words::split(line)
            .map_err(|err| format!("agent command {line:?} cannot be split: {err}"))?;
        if argv.is_empty() {
            return Err("the agent command is empty".to_owned());
        }
        return Ok(argv.into_iter().chain(agent.args.iter().cloned()).collect());
    }
    let known = invocation(cli).ok_or_else(|| format!("agent cli {cli:?} is not known"))?;
    let mut argv = vec![
        agent
            .command
            .clone()
            .unwrap_or_else(|| known.program.to_owned()),
    ];
    argv.extend(known.args.iter().map(|arg| fill(arg)));
    if let Some(model) = &agent.model {
        argv.push(known.model_flag.to_owned());
        argv.push(model.clone());
    }
    argv.extend(agent.args.iter().cloned());
    argv.extend(known.tail.iter().map(|arg| fill(arg)));
    if known.files_as_args {
        argv.extend(files.iter().cloned());
    }
    Ok(argv)
}

/// The command line as reported: the value after a flag naming a key, token or secret (and
/// `--flag=value` of one) is masked.
pub fn shown(argv: &[String]) -> String {
    let secret = |flag: &str| {
        let flag = flag.to_ascii_lowercase();
        flag.starts_with('-')
            && ["key", "token", "secret", "password"]
                .iter()
                .any(|word| flag.contains(word))
    };
    let mut out = Vec::with_capacity(argv.len());
    let mut mask_next = false;
    for arg in argv {
        if mask_next {
            out.push("***".to_owned());
            mask_next = false;
            continue;
        }
        match arg.split_once('=') {
            Some((flag, _)) if secret(flag) => out.push(format!("{flag}=***")),
            _ => {
                mask_next = secret(arg);
                out.push(arg.clone());
            }
        }
    }
    shell_words::join(out)
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

/// What an agent's output says about its run, where it says it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Its final message.
    pub final_message: String,
    /// Tokens read by the model.
    pub input_tokens: Option<u64>,
    /// Tokens written by the model.
    pub output_tokens: Option<u64>,
    /// Cost in US dollars as reported.
    pub cost_usd: String,
}

/// Most bytes of a final message reported.
const MAX_FINAL_MESSAGE: usize = 8 * 1024;

fn json_u64(value: Option<&serde_json::Value>) -> Option<u64> {
    value.and_then(serde_json::Value::as_u64)
}

/// Reads one JSON event or result object of a known CLI into `out`.
fn read_json(object: &serde_json::Value, out: &mut Output) {
    use serde_json::Value;
    // claude-code and cursor-agent: {"result": ..., "usage": {...}, "total_cost_usd": ...};
    // gemini: {"response": ..., "stats": ...}; codex: {"type": "item.completed", "item":
    // {"type": "agent_message", "text": ...}} and {"type": "turn.completed", "usage": ...};
    // opencode: {"type": "text", "part": {"text": ...}}.
    let text = object
        .get("result")
        .or_else(|| object.get("response"))
        .or_else(|| {
            object
                .get("item")
                .filter(|item| item.get("type").and_then(Value::as_str) == Some("agent_message"))
                .and_then(|item| item.get("text"))
        })
        .or_else(|| {
            (object.get("type").and_then(Value::as_str) == Some("text"))
                .then(|| object.get("part").and_then(|part| part.get("text")))
                .flatten()
        });
    if let Some(Value::String(text)) = text
        && !text.trim().is_empty()
    {
        out.final_message = text.clone();
    }
    if let Some(usage) = object.get("usage") {
        let input = json_u64(usage.get("input_tokens"));
        let output = json_u64(usage.get("output_tokens"));
        if input.is_some() {
            out.input_tokens = Some(out.input_tokens.unwrap_or(0) + input.unwrap_or(0));
        }
        if output.is_some() {
            out.output_tokens = Some(out.output_tokens.unwrap_or(0) + output.unwrap_or(0));
        }
    }
    if let Some(cost) = object.get("total_cost_usd").and_then(Value::as_f64) {
        out.cost_usd = format!("{cost}");
    }
    if let Some(Value::Object(models)) = object.get("stats").and_then(|stats| stats.get("models")) {
        for model in models.values() {
            let tokens = model.get("tokens");
            if let Some(prompt) = json_u64(tokens.and_then(|t| t.get("prompt"))) {
                out.input_tokens = Some(out.input_tokens.unwrap_or(0) + prompt);
            }
            if let Some(written) = json_u64(tokens.and_then(|t| t.get("candidates"))) {
                out.output_tokens = Some(out.output_tokens.unwrap_or(0) + written);
            }
        }
    }
}

/// `2.3k` → 2300, `1.1M` → 1100000, `120` → 120.
fn count(text: &str) -> Option<u64> {
    let text = text.trim().replace(',', "");
    let (number, scale) = match text.chars().last()? {
        'k' => (&text[..text.len() - 1], 1_000.0),
        'M' => (&text[..text.len() - 1], 1_000_000.0),
        _ => (text.as_str(), 1.0),
    };
    let value: f64 = number.parse().ok()?;
    // Token counts are far below 2^53: the cast is exact enough for a report.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((value * scale).round() as u64)
}

/// Reads aider's `Tokens: 2.3k sent, 150 received. Cost: $0.01 message, $0.02 session.`
fn read_aider_line(line: &str, out: &mut Output) -> bool {
    let Some(rest) = line.trim().strip_prefix("Tokens:") else {
        return false;
    };
    let counts = rest.split("Cost:").next().unwrap_or_default();
    for part in counts
        .split(',')
        .map(|part| part.trim().trim_end_matches('.'))
    {
        if let Some(sent) = part.strip_suffix(" sent").and_then(count) {
            out.input_tokens = Some(out.input_tokens.unwrap_or(0) + sent);
        } else if let Some(received) = part.strip_suffix(" received").and_then(count) {
            out.output_tokens = Some(out.output_tokens.unwrap_or(0) + received);
        }
    }
    if let Some((_, cost)) = rest.split_once("Cost: $")
        && let Some((_, session)) = cost.split_once(", $")
        && let Some(session) = session.split_whitespace().next()
    {
        out.cost_usd = session.to_owned();
    }
    true
}

/// The final message, tokens and cost from an agent's output (the tail kept of it): JSON
/// results and events of the known CLIs, aider's token lines; otherwise the final message
/// is the last lines of plain output.
pub fn parse_output(output: &str) -> Output {
    let mut out = Output::default();
    let mut plain = Vec::new();
    if let Ok(whole) = serde_json::from_str::<serde_json::Value>(output.trim())
        && whole.is_object()
    {
        read_json(&whole, &mut out);
    } else {
        for line in output.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('{')
                && let Ok(value) = serde_json::from_str::<serde_json::Value>(trimmed)
            {
                read_json(&value, &mut out);
                continue;
            }
            if read_aider_line(trimmed, &mut out) {
                continue;
            }
            plain.push(line);
        }
    }
    if out.final_message.is_empty() {
        let lines: Vec<&str> = plain
            .iter()
            .rev()
            .skip_while(|line| line.trim().is_empty())
            .take(20)
            .copied()
            .collect();
        out.final_message = lines.into_iter().rev().collect::<Vec<_>>().join("\n");
    }
    out.final_message = tail_chars(&out.final_message, MAX_FINAL_MESSAGE);
    out
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail_chars(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
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
