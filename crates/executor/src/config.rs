//! Executor configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ghost_runtime::config::{Secret, ServerConfig};
use ghost_runtime::telemetry::TelemetryConfig;
use serde::{Deserialize, Serialize};

/// One workspace served by this executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// The target name patches use, e.g. `MAIN`.
    pub target: String,
    /// The directory patches are applied to; must exist.
    pub root: PathBuf,
}

/// Everything the executor reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutorConfig {
    /// Listen addresses (health and metrics only) and drain timings.
    pub server: ServerConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// gRPC URL of the router this executor dials: `https://HOST:PORT` for a router on another
    /// machine (the token crosses the network), `http://` only for a loopback router.
    pub router_url: String,
    /// PEM CA certificate(s) trusted for an `https://` router (e.g. `<data-dir>/tls/ca.pem` of
    /// the router's `ghost up`). Unset: the public web PKI roots.
    pub router_ca: Option<PathBuf>,
    /// Name shown in leases and events.
    pub executor_id: String,
    /// Token presented to the router.
    pub token: Secret,
    /// The executor's own state (journal, ledger); never writable by patches.
    pub state_dir: PathBuf,
    /// The workspaces served.
    pub workspaces: Vec<WorkspaceConfig>,
    /// First wait between reconnect attempts; each failure doubles it (up to
    /// `reconnect_backoff_max`) and the wait is drawn at random below that (full jitter). A
    /// session the router welcomed starts over from here.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_backoff_max: Duration,
    /// Largest file a patch may write.
    pub max_file_bytes: u64,
    /// Largest total a patch may write.
    pub max_patch_bytes: u64,
    /// Deadline of a patch that sets no `timeout_s`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Command policy, limits and agent hand-off per target; targets not listed get the
    /// defaults (commands denied, no agent).
    pub targets: BTreeMap<String, TargetPolicy>,
    /// More than one executor may serve these workspaces, one active and the others on
    /// standby: each workspace's journal, ledger, snapshots and revert records then live in
    /// `<root>/.ghost/` (moved there from `state_dir` at the first start), and an exclusive
    /// lock on `<root>/.ghost/lock` decides which executor is active; a standby takes over
    /// when the lock frees (see `docs/src/executors.md`). Off: everything in `state_dir`.
    pub standby: bool,
}

/// Which commands a target's patches may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandPolicy {
    /// No `commands` or `validate` at all (the default).
    #[default]
    Deny,
    /// Only these program names (the first word of the command).
    Allowlist(Vec<String>),
    /// Any program.
    Any,
}

/// What one target's patches may do beyond editing files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TargetPolicy {
    /// Which programs may run.
    pub commands: CommandPolicy,
    /// Run command lines through `/bin/sh -c` instead of splitting them with shell-words.
    pub shell: bool,
    /// Environment variables passed through to commands; everything else is dropped.
    pub env_allowlist: Vec<String>,
    /// Deadline of one command or check without its own `timeout_s`.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Wait between SIGTERM and SIGKILL to a command's process group.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// CPU seconds a command may use (RLIMIT_CPU).
    pub max_cpu_seconds: u64,
    /// Address space a command may map, in bytes (RLIMIT_AS).
    pub max_memory_bytes: u64,
    /// Open files a command may hold (RLIMIT_NOFILE).
    pub max_open_files: u64,
    /// Processes (threads included) the executor's user may have while a command runs
    /// (RLIMIT_NPROC: counted over all of that user's processes on the machine, so raise it
    /// when the user runs much else); the kernel does not enforce it for root.
    pub max_processes: u64,
    /// A cgroup directory with the `pids` controller (a cgroup v1 `pids` hierarchy directory,
    /// or a cgroup v2 subtree delegated to the executor with `pids` enabled for its children)
    /// in which each command gets a cgroup of its own with `pids.max` = `max_processes`, a cap
    /// on its whole tree that also binds root. Unset (the default): none. Set but not usable
    /// (the command's cgroup cannot be created or joined): the command is refused.
    pub pids_cgroup: Option<PathBuf>,
    /// Output bytes kept from the start of a command's output.
    pub output_head_bytes: usize,
    /// Output bytes kept from the end of a command's output.
    pub output_tail_bytes: usize,
    /// Coding-agent hand-off for patches with `agent.task`; `None`: refused.
    pub agent: Option<AgentConfig>,
    /// Owner checks: run after every patch's own `commands` and `validate`, whatever the
    /// patch says and whatever `commands` allows (the owner wrote them, so the allowlist is
    /// for patches only); a failing one fails the patch like a failing `validate`.
    pub checks: Vec<OwnerCheck>,
    /// Globs of workspace paths the complete rollback leaves alone, on top of what
    /// `.gitignore` ignores; `!glob` takes a path back in, even one `.gitignore` ignores. The
    /// last matching entry decides, as in `.gitignore`; `**`, `*` (not across `/`), `?` and
    /// `{a,b}` are understood.
    pub rollback_ignore: Vec<String>,
    /// The complete rollback's snapshot refuses a workspace with more files, directories and
    /// symlinks in scope than this: the patch fails before any of its commands runs.
    pub max_snapshot_files: u64,
    /// ...and one whose files in scope hold more bytes than this (the snapshot's store keeps
    /// each file's bytes once).
    pub max_snapshot_bytes: u64,
    /// Revert records kept for this target: the pre-images of its last `revert_keep`
    /// succeeded patches (the oldest pruned when a new one is written); 0 keeps none, so only
    /// a patch that made a git commit can be reverted. At most 1000.
    pub revert_keep: u32,
    /// Landlock confinement of commands, checks and agents: `"auto"` (the default: write
    /// access only to the workspace, a private temp dir and `writable`, where the kernel has
    /// Landlock; a warning and `sandbox = "none"` in the report where it has not),
    /// `"required"` (refuse to run anything on a kernel without it), `"off"`.
    pub sandbox: SandboxMode,
    /// Directories (or files) commands and agents may write besides the workspace and their
    /// temp dir, e.g. a package manager's cache.
    pub writable: Vec<PathBuf>,
}

/// Whether commands and agents run under Landlock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Where the kernel supports it.
    #[default]
    Auto,
    /// Always; nothing runs on a kernel without it.
    Required,
    /// Never.
    Off,
}

/// One owner check of a target (`targets.<T>.checks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerCheck {
    /// Its name, unique in the target; reported with its result and in the error of a patch
    /// it fails.
    pub name: String,
    /// The command line: split with shell-words, or given to `/bin/sh -c` when the target
    /// sets `shell = true`.
    pub run: String,
    /// Its deadline; default the target's `command_timeout`. The patch's deadline still
    /// applies.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// `"always"` (the default) or `"changed:<glob>"`: only when the patch changed a
    /// matching path.
    #[serde(default)]
    pub when: When,
}

/// When an owner check runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum When {
    /// After every patch.
    #[default]
    Always,
    /// Only when a changed path (edited by the patch, or changed by its commands) matches
    /// this glob.
    Changed(String),
}

impl TryFrom<String> for When {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if value == "always" {
            return Ok(Self::Always);
        }
        match value.strip_prefix("changed:") {
            Some(glob) if !glob.is_empty() => {
                compile_changed_glob(glob)?;
                Ok(Self::Changed(glob.to_owned()))
            }
            _ => Err(format!(
                "when = {value:?}: expected \"always\" or \"changed:<glob>\", e.g. \
                 \"changed:src/**/*.ts\""
            )),
        }
    }
}

impl From<When> for String {
    fn from(when: When) -> Self {
        match when {
            When::Always => "always".to_owned(),
            When::Changed(glob) => format!("changed:{glob}"),
        }
    }
}

/// Compiles a workspace-path glob: `*` and `?` stay within one path component, `**` crosses
/// them, `{a,b}` is an alternative.
pub fn compile_glob(glob: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|err| format!("glob {glob:?}: {err}"))
}

/// Compiles a `changed:<glob>`: like a `.gitignore` pattern, one without `/` (`*.ts`)
/// matches the file name at any depth; one with `/` is anchored at the workspace root.
pub fn compile_changed_glob(glob: &str) -> Result<globset::GlobMatcher, String> {
    let anchored = compile_glob(glob)?;
    if glob.contains('/') {
        return Ok(anchored);
    }
    compile_glob(&format!("**/{glob}"))
}

impl TargetPolicy {
    /// Refuses owner checks without a name or a command, names used twice, and bad
    /// `rollback_ignore` globs; the message names the target and what is wrong.
    pub fn validate(&self, target: &str) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for check in &self.checks {
            if check.name.trim().is_empty() {
                return Err(format!(
                    "target {target}: an owner check has an empty name (run = {:?})",
                    check.run
                ));
            }
            if !names.insert(check.name.as_str()) {
                return Err(format!(
                    "target {target}: owner check name {:?} is used twice",
                    check.name
                ));
            }
            if check.run.trim().is_empty() {
                return Err(format!(
                    "target {target}: owner check {:?} has an empty run",
                    check.name
                ));
            }
            if !self.shell {
                shell_words::split(&check.run).map_err(|err| {
                    format!(
                        "target {target}: owner check {:?}: cannot split {:?}: {err}",
                        check.name, check.run
                    )
                })?;
            }
            if check.timeout.is_some_and(|t| t.is_zero()) {
                return Err(format!(
                    "target {target}: owner check {:?} has a zero timeout",
                    check.name
                ));
            }
        }
        if self.revert_keep > crate::revert::MAX_KEEP {
            return Err(format!(
                "target {target}: revert_keep = {} is over the maximum of {}",
                self.revert_keep,
                crate::revert::MAX_KEEP
            ));
        }
        if let Some(agent) = &self.agent {
            agent.validate(target)?;
        }
        for path in &self.writable {
            if !path.is_absolute() {
                return Err(format!(
                    "target {target}: writable path {} is not absolute",
                    path.display()
                ));
            }
        }
        for glob in &self.rollback_ignore {
            let bare = glob.strip_prefix('!').unwrap_or(glob);
            if bare.is_empty() {
                return Err(format!(
                    "target {target}: rollback_ignore has an empty glob"
                ));
            }
            compile_glob(bare).map_err(|err| format!("target {target}: rollback_ignore: {err}"))?;
        }
        Ok(())
    }
}

impl Default for TargetPolicy {
    fn default() -> Self {
        Self {
            commands: CommandPolicy::Deny,
            shell: false,
            env_allowlist: ["PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER"]
                .map(str::to_owned)
                .to_vec(),
            command_timeout: Duration::from_secs(300),
            kill_grace: Duration::from_secs(2),
            max_cpu_seconds: 600,
            max_memory_bytes: 8 * 1024 * 1024 * 1024,
            max_open_files: 1024,
            max_processes: 4096,
            pids_cgroup: None,
            output_head_bytes: 4 * 1024,
            output_tail_bytes: 16 * 1024,
            agent: None,
            checks: Vec::new(),
            rollback_ignore: Vec::new(),
            max_snapshot_files: 1_000_000,
            max_snapshot_bytes: 2 * 1024 * 1024 * 1024,
            revert_keep: crate::revert::DEFAULT_KEEP,
            sandbox: SandboxMode::Auto,
            writable: Vec::new(),
        }
    }
}

/// How a target's coding agent receives tasks: a known CLI (`cli`), any program
/// (`cli = "command"`), or, without `cli`, the hand-off to an IDE agent through `inbox`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent CLI run in the workspace: one of [`crate::agent::CLIS`] or `"command"`.
    /// Unset: the inbox hand-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<String>,
    /// Inbox hand-off only: the directory the task file `<patch id>.task.md` is written to;
    /// the agent signals completion by creating `<patch id>.done` there (a first line starting
    /// with `failed` fails it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox: Option<PathBuf>,
    /// With `cli = "command"`: the command line run (split with shell-words). With a known
    /// CLI: the program to run instead of the CLI's own name looked up in `PATH` (e.g. the
    /// `aider` of a venv). Inbox hand-off: run this command (its last argument is the task
    /// file) instead of waiting for a completion file; exit 0 completes the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// How long to wait for the agent when the patch sets no `timeout_s`.
    #[serde(default = "default_agent_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Environment variables passed through to the agent (its API key, ...), on top of the
    /// target's `env_allowlist`; everything else is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The model a known CLI is asked to use (its `--model` flag); unset: the CLI's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Extra arguments put after a known CLI's built-in flags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

impl AgentConfig {
    /// Refuses an unknown `cli`, a `command` agent without a command, an inbox hand-off
    /// without an inbox, and bad variable names; the message names the target.
    pub fn validate(&self, target: &str) -> Result<(), String> {
        match self.cli.as_deref() {
            None => {
                if self.inbox.is_none() {
                    return Err(format!(
                        "target {target}: agent needs cli = \"<name>\" (one of {}) or an inbox \
                         for an IDE agent",
                        crate::agent::cli_names()
                    ));
                }
            }
            Some("command") => {
                let Some(command) = self.command.as_deref() else {
                    return Err(format!(
                        "target {target}: agent cli = \"command\" needs command = \"...\""
                    ));
                };
                let argv = shell_words::split(command).map_err(|err| {
                    format!("target {target}: agent command {command:?} cannot be split: {err}")
                })?;
                if argv.is_empty() {
                    return Err(format!("target {target}: agent command is empty"));
                }
            }
            Some(cli) => {
                if crate::agent::invocation(cli).is_none() {
                    return Err(format!(
                        "target {target}: agent cli = {cli:?} is not known; expected one of {} \
                         or \"command\"",
                        crate::agent::cli_names()
                    ));
                }
                if self.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
                    return Err(format!("target {target}: agent command is empty"));
                }
            }
        }
        if self.cli.is_some() && self.inbox.is_some() {
            return Err(format!(
                "target {target}: agent inbox is for the IDE hand-off only; remove it or cli"
            ));
        }
        if self.timeout.is_zero() {
            return Err(format!("target {target}: agent timeout is zero"));
        }
        for name in &self.env {
            let good = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !good {
                return Err(format!(
                    "target {target}: agent env {name:?} is not a variable name (letters, digits \
                     and _)"
                ));
            }
        }
        Ok(())
    }
}

fn default_agent_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig::loopback(50052, 8082),
            telemetry: TelemetryConfig::default(),
            router_url: "http://127.0.0.1:50051".to_owned(),
            router_ca: None,
            executor_id: "executor-1".to_owned(),
            token: Secret::default(),
            state_dir: PathBuf::from("./.ghost/executor"),
            workspaces: vec![WorkspaceConfig {
                target: "MAIN".to_owned(),
                root: PathBuf::from("./workspace"),
            }],
            reconnect_backoff: Duration::from_secs(1),
            reconnect_backoff_max: Duration::from_secs(30),
            max_file_bytes: 10 * 1024 * 1024,
            max_patch_bytes: 50 * 1024 * 1024,
            default_timeout: Duration::from_secs(600),
            targets: BTreeMap::new(),
            standby: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Result<TargetPolicy, String> {
        let policy: TargetPolicy = toml::from_str(toml_text).map_err(|err| err.to_string())?;
        policy.validate("MAIN")?;
        Ok(policy)
    }

    #[test]
    fn owner_checks_load_with_their_defaults_and_bad_ones_are_refused_clearly() {
        let loaded = policy(
            "commands = \"deny\"\n[[checks]]\nname = \"tsc\"\nrun = \"npx tsc\"\n\
             when = \"changed:src/**/*.{ts,tsx}\"\ntimeout = \"90s\"\n\
             [[checks]]\nname = \"test\"\nrun = \"npm test\"\n",
        )
        .unwrap();
        assert_eq!(
            loaded.checks[0].when,
            When::Changed("src/**/*.{ts,tsx}".to_owned())
        );
        assert_eq!(loaded.checks[0].timeout, Some(Duration::from_secs(90)));
        assert_eq!(loaded.checks[1].when, When::Always);
        assert_eq!(loaded.checks[1].timeout, None);
        for (text, expected) in [
            (
                "[[checks]]\nname = \"a\"\nrun = \"x\"\nwhen = \"never\"\n",
                "expected \"always\" or \"changed:<glob>\"",
            ),
            (
                "[[checks]]\nname = \"a\"\nrun = \"x\"\nwhen = \"changed:\"\n",
                "expected \"always\"",
            ),
            (
                "[[checks]]\nname = \"a\"\nrun = \"x\"\nwhen = \"changed:src/{a\"\n",
                "glob \"src/{a\"",
            ),
            (
                "[[checks]]\nname = \"a\"\nrun = \"x\"\n[[checks]]\nname = \"a\"\nrun = \"y\"\n",
                "\"a\" is used twice",
            ),
            ("[[checks]]\nname = \" \"\nrun = \"x\"\n", "empty name"),
            ("[[checks]]\nname = \"a\"\nrun = \"\"\n", "empty run"),
            (
                "[[checks]]\nname = \"a\"\nrun = \"x 'open\"\n",
                "cannot split",
            ),
            ("rollback_ignore = [\"!\"]\n", "empty glob"),
        ] {
            let err = policy(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn agents_load_with_their_defaults_and_bad_ones_are_refused_clearly() {
        let loaded = policy(
            "sandbox = \"required\"\nwritable = [\"/var/cache/npm\"]\n\
             agent = { cli = \"codex\", env = [\"OPENAI_API_KEY\"], model = \"o3\" }\n",
        )
        .unwrap();
        let agent = loaded.agent.unwrap();
        assert_eq!(agent.cli.as_deref(), Some("codex"));
        assert_eq!(agent.timeout, Duration::from_secs(3600));
        assert_eq!(loaded.sandbox, SandboxMode::Required);
        assert_eq!(policy("").unwrap().sandbox, SandboxMode::Auto);
        for (text, expected) in [
            (
                "agent = { cli = \"vim\" }\n",
                "agent cli = \"vim\" is not known",
            ),
            ("agent = { cli = \"command\" }\n", "needs command"),
            ("agent = { timeout = \"1m\" }\n", "or an inbox"),
            (
                "agent = { cli = \"aider\", inbox = \"/tmp/x\" }\n",
                "inbox is for the IDE hand-off only",
            ),
            (
                "agent = { cli = \"aider\", env = [\"A=B\"] }\n",
                "\"A=B\" is not a variable name",
            ),
            (
                "writable = [\"cache\"]\n",
                "writable path cache is not absolute",
            ),
            ("sandbox = \"maybe\"\n", "unknown variant"),
        ] {
            let err = policy(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn revert_keep_defaults_to_20_and_is_held_to_1000() {
        assert_eq!(policy("").unwrap().revert_keep, 20);
        assert_eq!(policy("revert_keep = 0\n").unwrap().revert_keep, 0);
        assert_eq!(policy("revert_keep = 1000\n").unwrap().revert_keep, 1000);
        let err = policy("revert_keep = 1001\n").unwrap_err();
        assert_eq!(
            err,
            "target MAIN: revert_keep = 1001 is over the maximum of 1000"
        );
        assert!(policy("revert_keep = -1\n").is_err());
    }

    #[test]
    fn globs_keep_star_inside_a_component_and_let_double_star_cross() {
        let glob = compile_glob("src/**/*.ts").unwrap();
        assert!(glob.is_match("src/a.ts"));
        assert!(glob.is_match("src/x/y/a.ts"));
        assert!(!glob.is_match("lib/a.ts"));
        assert!(!glob.is_match("src/a.tsx"));
        let star = compile_glob("*.md").unwrap();
        assert!(star.is_match("README.md"));
        assert!(!star.is_match("docs/a.md"));
        let braces = compile_glob("{a,b}/?.txt").unwrap();
        assert!(braces.is_match("b/1.txt"));
        assert!(!braces.is_match("c/1.txt"));
    }
}
