//! The shape of `ghost.toml`: its top-level keys, `[[targets]]` and their `commands`, and
//! `[[subscriptions]]` (the summarizer's push subscriptions).

use std::path::PathBuf;
use std::time::Duration;

use executor::config::{AgentConfig, CommandPolicy, SandboxMode};
use gateway::config::ApiKeyConfig;
use serde::{Deserialize, Serialize};

/// The sections of `ghost.toml` that configure a service, in start order.
pub const SECTIONS: [&str; 5] = ["gateway", "router", "executor", "summarizer", "alerter"];

/// The file `ghost up` reads when `-f` is not given and it exists.
pub const DEFAULT_FILE: &str = "ghost.toml";

/// The data dir when neither `--data-dir` nor `data_dir` in the file names one.
pub const DEFAULT_DATA_DIR: &str = "./.ghost";

/// `ghost.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GhostFile {
    /// Where the services keep their state (`--data-dir` wins).
    pub data_dir: Option<PathBuf>,
    /// The workspaces patches are applied to.
    pub targets: Vec<TargetSpec>,
    /// Run an executor for the targets in this process (`--no-local-executor` turns it off):
    /// set `false` when every executor runs elsewhere (`ghost executor`).
    pub local_executor: Option<bool>,
    /// The certificate of the executor port (and of the gateway's HTTPS when given here).
    pub tls: TlsSpec,
    /// One PostgreSQL database for the router, summarizer and alerter (`--store` wins);
    /// unset: SQLite under the data dir.
    pub store: super::store::StoreSpec,
    /// API keys, stored as SHA-256 hashes (`gateway.api_keys`).
    pub keys: Vec<ApiKeyConfig>,
    /// Push subscriptions: Standard Webhooks for terminal outcomes (`summarizer.subscriptions`,
    /// after any listed in `[summarizer]`). Checked as the file loads (the SSRF guard among
    /// the checks).
    #[serde(deserialize_with = "summarizer::webhooks::subscription::deserialize_checked")]
    pub subscriptions: Vec<summarizer::webhooks::subscription::Subscription>,
    /// The gateway's own keys.
    pub gateway: gateway::GatewayConfig,
    /// The router's own keys.
    pub router: router::RouterConfig,
    /// The executor's own keys.
    pub executor: executor::ExecutorConfig,
    /// The summarizer's own keys.
    pub summarizer: summarizer::SummarizerConfig,
    /// The alerter's own keys.
    pub alerter: alerter::AlerterConfig,
}

/// `[tls]`: without `cert`/`key`, `ghost up` makes a private CA and a server certificate
/// under `<data-dir>/tls/` for the executor port (executors trust its `ca.pem`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSpec {
    /// A PEM certificate chain (e.g. a Let's Encrypt pair) served on the executor port and,
    /// as HTTPS, by the gateway; re-read when it changes.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// DNS names or addresses executors dial, added to the made certificate's names (it
    /// always has `localhost`, the loopback addresses, the executor port's address and the
    /// public URL's host).
    pub names: Vec<String>,
}

/// One `[[targets]]` entry: a workspace and what its patches may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The target name patches use, e.g. `MAIN`.
    pub name: String,
    /// The directory patches are applied to (created when missing).
    pub root: PathBuf,
    /// Other names routed to this target, e.g. the old system's `BRAUN` or `DEV`.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Takes the patches that name no target (else the first target does).
    #[serde(default, rename = "default")]
    pub is_default: bool,
    /// `"deny"` (the default), `"any"`, or the programs allowed, e.g. `["cargo", "npm"]`.
    #[serde(default)]
    pub commands: Commands,
    /// Coding-agent hand-off for patches with `agent.task` (the executor's `agent` settings).
    #[serde(default)]
    pub agent: Option<AgentConfig>,
    /// Owner checks (`[[targets.checks]]`) run after every patch's own commands and checks,
    /// whatever `commands` allows patches; a failing one rolls the patch back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
    /// Globs the complete rollback leaves alone on top of `.gitignore` (`!glob` takes a path
    /// back in); the last matching entry decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollback_ignore: Vec<String>,
    /// Succeeded patches whose pre-images the executor keeps for a revert (default 20, at
    /// most 1000; 0 keeps none, so only a patch that made a git commit can be reverted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_keep: Option<u32>,
    /// Landlock confinement of commands, checks and agents: `"auto"` (the default),
    /// `"required"` or `"off"` (the executor's `sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxMode>,
    /// Absolute paths commands and agents may write besides the workspace and their temp
    /// dir, e.g. a package manager's cache (the executor's `writable`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<PathBuf>,
}

impl TargetSpec {
    /// A target named `name` at `root` (the default one when `is_default`), with no aliases
    /// and none of its own commands, agent, checks or policy.
    pub fn bare(name: &str, root: PathBuf, is_default: bool) -> Self {
        Self {
            name: name.to_owned(),
            root,
            aliases: Vec::new(),
            is_default,
            commands: Commands::default(),
            agent: None,
            checks: Vec::new(),
            rollback_ignore: Vec::new(),
            revert_keep: None,
            sandbox: None,
            writable: Vec::new(),
        }
    }
}

/// One owner check (`[[targets.checks]]`): the executor's `targets.<T>.checks` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Its name, unique in the target.
    pub name: String,
    /// The command line.
    pub run: String,
    /// Its deadline (default: the target's command timeout).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `"always"` (the default) or `"changed:<glob>"`.
    #[serde(default)]
    pub when: Option<String>,
}

/// `commands` of a target: `"deny"`, `"any"` or a list of program names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands(pub CommandPolicy);

impl Serialize for Commands {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            CommandPolicy::Deny => serializer.serialize_str("deny"),
            CommandPolicy::Any => serializer.serialize_str("any"),
            CommandPolicy::Allowlist(programs) => programs.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Commands {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Commands;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"deny\", \"any\" or a list of program names")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Commands, E> {
                match value {
                    "deny" => Ok(Commands(CommandPolicy::Deny)),
                    "any" => Ok(Commands(CommandPolicy::Any)),
                    other => Err(E::custom(format!(
                        "commands = {other:?}: expected \"deny\", \"any\" or a list of program \
                         names, e.g. [\"cargo\"]"
                    ))),
                }
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Commands, A::Error> {
                let mut programs = Vec::new();
                while let Some(program) = seq.next_element::<String>()? {
                    programs.push(program);
                }
                Ok(Commands(CommandPolicy::Allowlist(programs)))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
