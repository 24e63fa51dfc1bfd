//! The coding-agent CLIs the executor knows: how each is invoked (its flags for a model, a
//! prompt and a non-interactive run) and how an argv is shown.

use std::path::Path;

use crate::config::AgentConfig;

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
