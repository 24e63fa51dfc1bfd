//! `ghost up`'s one config file (`ghost.toml`) and how it becomes the five services' configs.
//!
//! Layers, each over the one before: `ghost up`'s built-in defaults (state under the data dir,
//! the README's ports, every service pointed at the others) → `[[targets]]` and `[[keys]]` →
//! the file's `[gateway]`, `[router]`, `[executor]`, `[summarizer]` and `[alerter]` sections
//! (the same keys as each service's own config file) → `GHOST_<SERVICE>__KEY` environment
//! variables → flags; `[[subscriptions]]` are added to the summarizer's own. A key no service knows fails with `FILE:LINE:COL` (or the variable's
//! name) and the nearest valid key. Relative paths in the file are relative to the file's
//! directory (as in a compose file), so `ghost up -f DIR/ghost.toml` means the same directories
//! from anywhere; those from flags and the environment are relative to the working directory.
//!
//! Here: the flags, the defaults, the layering of each service section and [`load`], step by
//! step. `up_config/file.rs` is the file's shape, `up_config/read.rs` reads it and anchors its
//! paths, `up_config/targets.rs` turns `[[targets]]` into the gateway's and executor's keys,
//! [`store`] is `[store]`.

mod file;
mod read;
pub mod store;
mod targets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ghost_runtime::config::{self as layers, EnvVar, Secret, ServerConfig};
use ghost_runtime::telemetry::LogFormat;
use serde::Serialize;

use crate::error::CliError;
use crate::system::{Explicit, SystemConfig, url};

pub use file::{
    CheckSpec, Commands, DEFAULT_DATA_DIR, DEFAULT_FILE, GhostFile, SECTIONS, TargetSpec, TlsSpec,
};

/// What `ghost up` was given on its command line.
#[derive(Debug, Clone, Default)]
pub struct UpFlags {
    /// `-f FILE` / `GHOST_CONFIG`.
    pub file: Option<PathBuf>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--workspace TARGET=DIR` (adds a target, or moves the file's target of that name).
    pub workspaces: Vec<String>,
    /// `--listen`: the gateway's HTTP address.
    pub listen: Option<SocketAddr>,
    /// `--public-url`.
    pub public_url: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--api-key` given on `ghost up`'s command line (never `GHOST_API_KEY`, the client's
    /// variable): an extra all-scopes key.
    pub api_key: Option<String>,
    /// Slack flags, each applied only when given.
    pub slack: SlackFlags,
    /// `--executor-listen`: the router's executor port (TLS always).
    pub executor_listen: Option<SocketAddr>,
    /// `--tls-cert`: a certificate chain for the executor port and the gateway's HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: its private key.
    pub tls_key: Option<PathBuf>,
    /// `--no-local-executor`: the control plane only.
    pub no_local_executor: bool,
    /// `--store` / `GHOST_STORE`: the PostgreSQL URL of the router, summarizer and alerter.
    pub store: Option<String>,
}

/// `--slack-api-url`, `--slack-token` and `--slack-channel` (or their `GHOST_SLACK_*`
/// variables): each, when given, overrides `[alerter.slack]`.
#[derive(Debug, Clone, Default)]
pub struct SlackFlags {
    /// The Slack Web API base URL (Slack is off unless set here or in `[alerter.slack]`).
    pub api_base_url: Option<String>,
    /// The bot token.
    pub bot_token: Option<String>,
    /// The channel.
    pub channel: Option<String>,
}

/// The effective configuration of `ghost up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Where the services keep their state.
    pub data_dir: PathBuf,
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// The targets, default first.
    pub targets: Vec<TargetSpec>,
    /// The five services.
    pub system: SystemConfig,
    /// Which service-to-service URLs were set by hand.
    pub explicit: Explicit,
    /// `[tls]` with `--tls-cert`/`--tls-key` over it.
    pub tls: TlsSpec,
    /// The PostgreSQL URL of the router, summarizer and alerter (`--store` over `[store]`);
    /// `None`: SQLite under the data dir.
    pub store: Option<Secret>,
}

/// Rendered by `--print-config`.
#[derive(Serialize)]
struct Printed<'a> {
    data_dir: &'a Path,
    /// The store as `postgres://user@host:port/db` (no password); absent for SQLite.
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<PrintedStore>,
    targets: &'a [TargetSpec],
    tls: &'a TlsSpec,
    gateway: &'a gateway::GatewayConfig,
    router: &'a router::RouterConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    executor: Option<&'a executor::ExecutorConfig>,
    summarizer: &'a summarizer::SummarizerConfig,
    alerter: &'a alerter::AlerterConfig,
}

/// `[store]` as `--print-config` shows it.
#[derive(Serialize)]
struct PrintedStore {
    /// `postgres://user@host:port/db`: the password and query left out.
    url: String,
}

impl UpConfig {
    /// The effective config as TOML, secrets redacted.
    pub fn render(&self) -> Result<String, CliError> {
        let printed = Printed {
            data_dir: &self.data_dir,
            store: self.store.as_ref().map(|url| PrintedStore {
                url: store::shown(url),
            }),
            targets: &self.targets,
            tls: &self.tls,
            gateway: &self.system.gateway,
            router: &self.system.router,
            executor: self.system.executor.as_ref(),
            summarizer: &self.system.summarizer,
            alerter: &self.system.alerter,
        };
        layers::render(&printed).map_err(|err| CliError::Other(err.into()))
    }
}

fn server(grpc: u16, http: u16) -> ServerConfig {
    ServerConfig {
        drain_grace: Duration::from_millis(500),
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::loopback(grpc, http)
    }
}

/// `ghost up`'s built-in defaults: state under `data_dir`, the README's ports, every service
/// pointed at the others.
pub fn defaults(data_dir: &Path) -> SystemConfig {
    let mut system = SystemConfig {
        gateway: gateway::GatewayConfig {
            server: server(50050, 8080),
            data_dir: Some(data_dir.join("gateway")),
            ..Default::default()
        },
        router: crate::system::router_config(data_dir, server(50051, 8081)),
        executor: Some(executor::ExecutorConfig {
            server: server(50052, 8082),
            ..crate::system::executor_config(
                data_dir,
                Vec::new(),
                SocketAddr::from(([127, 0, 0, 1], 0)),
            )
        }),
        summarizer: summarizer::SummarizerConfig {
            server: server(50053, 8083),
            data_dir: data_dir.join("summarizer"),
            ..Default::default()
        },
        alerter: alerter::AlerterConfig {
            server: server(50054, 8084),
            data_dir: Some(data_dir.join("alerter")),
            ..Default::default()
        },
    };
    system.wire(Explicit::default());
    system
}

/// A config file or environment value that does not fit (exit 10, like a refused input).
fn invalid(message: String) -> CliError {
    CliError::Input(message)
}

fn to_tree<T: Serialize>(value: &T) -> Result<toml::Value, CliError> {
    layers::tree(value).map_err(|err| CliError::Other(err.into()))
}

/// True when `key` was set in the file's `section` or by an environment variable.
fn set_by_hand(section: Option<&toml::Value>, env: &[EnvVar], key: &str) -> bool {
    section.and_then(|s| s.get(key)).is_some()
        || env
            .iter()
            .any(|var| var.path.first().is_some_and(|k| k == key))
}

fn config_error(err: layers::ConfigError) -> CliError {
    invalid(err.to_string())
}

/// One service's config: its `base` tree, the derived tree, the file's section, the
/// environment.
fn layered<T>(
    base: &T,
    derived: Option<&toml::Value>,
    section: Option<&toml::Value>,
    env: &[EnvVar],
) -> Result<T, CliError>
where
    T: serde::de::DeserializeOwned + Serialize,
{
    let mut tree = layers::tree(base).map_err(config_error)?;
    if let Some(derived) = derived {
        layers::merge(&mut tree, derived.clone());
    }
    if let Some(section) = section {
        layers::merge(&mut tree, section.clone());
    }
    layers::build(tree, env).map_err(config_error)
}

/// The file `ghost up` reads: `-f`/`GHOST_CONFIG`, else `./ghost.toml` when it exists.
pub fn file_to_read(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        let default = PathBuf::from(DEFAULT_FILE);
        default.is_file().then_some(default)
    })
}

/// The file's service sections and the `GHOST_<SERVICE>__*` variables, per service: the two
/// layers a user sets by hand.
struct HandLayers {
    sections: toml::Table,
    env: HashMap<&'static str, Vec<EnvVar>>,
}

impl HandLayers {
    fn new(sections: toml::Table, env: &HashMap<String, String>) -> Self {
        let env = SECTIONS
            .iter()
            .map(|service| (*service, layers::env_layer(service, env)))
            .collect();
        Self { sections, env }
    }

    /// The file's `[service]` section.
    fn section(&self, service: &str) -> Option<toml::Value> {
        self.sections.get(service).cloned()
    }

    /// The variables of `service`.
    fn env(&self, service: &str) -> &[EnvVar] {
        self.env.get(service).map_or(&[][..], Vec::as_slice)
    }

    /// True when `service`'s `key` was set in the file or by a variable.
    fn by_hand(&self, service: &str, key: &str) -> bool {
        set_by_hand(self.sections.get(service), self.env(service), key)
    }

    /// `service`'s config: `base`, then `derived`, then the file's section, then the variables.
    fn layered<T>(
        &self,
        service: &str,
        base: &T,
        derived: Option<&toml::Value>,
    ) -> Result<T, CliError>
    where
        T: serde::de::DeserializeOwned + Serialize,
    {
        layered(base, derived, self.sections.get(service), self.env(service))
    }

    /// Which service-to-service URLs (and the alerter's health list) were set by hand: those
    /// keep their value when ports move.
    fn explicit(&self) -> Explicit {
        let alerter_health = self
            .sections
            .get("alerter")
            .and_then(|s| s.get("health"))
            .and_then(|h| h.get("services"))
            .is_some()
            || self.env("alerter").iter().any(|v| {
                v.path
                    .starts_with(&["health".to_owned(), "services".to_owned()])
            });
        Explicit {
            gateway_router: self.by_hand("gateway", "router_url"),
            gateway_summarizer: self.by_hand("gateway", "summarizer_url"),
            gateway_alerter: self.by_hand("gateway", "alerter_url"),
            router_summarizer: self.by_hand("router", "summarizer_url"),
            router_alerter: self.by_hand("router", "alerter_url"),
            executor_router: self.by_hand("executor", "router_url"),
            summarizer_alerter: self.by_hand("summarizer", "alerter_url"),
            alerter_router: self.by_hand("alerter", "router_url"),
            alerter_summarizer: self.by_hand("alerter", "summarizer_url"),
            alerter_health,
        }
    }

    /// The five services: `base` with the trees derived from `[[targets]]` and `[[keys]]`
    /// (gateway, executor) or the store (router, summarizer, alerter), then the hand layers.
    fn services(
        &self,
        base: &SystemConfig,
        derived: &HashMap<&'static str, toml::Value>,
        store: Option<&toml::Value>,
    ) -> Result<SystemConfig, CliError> {
        let base_executor = base.executor.clone().unwrap_or_default();
        Ok(SystemConfig {
            gateway: self.layered("gateway", &base.gateway, derived.get("gateway"))?,
            router: self.layered("router", &base.router, store)?,
            executor: Some(self.layered("executor", &base_executor, derived.get("executor"))?),
            summarizer: self.layered("summarizer", &base.summarizer, store)?,
            alerter: self.layered("alerter", &base.alerter, store)?,
        })
    }
}

/// `[tls]` with `--tls-cert`/`--tls-key` over it (both or neither).
fn tls(file: TlsSpec, flags: &UpFlags) -> Result<TlsSpec, CliError> {
    let mut tls = file;
    if flags.tls_cert.is_some() || flags.tls_key.is_some() {
        tls.cert.clone_from(&flags.tls_cert);
        tls.key.clone_from(&flags.tls_key);
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(invalid(
            "[tls] needs both cert and key (or neither: a private CA is made)".to_owned(),
        ));
    }
    Ok(tls)
}

/// Reads the file (if any), the environment (`GHOST_*` variables in `env`) and the flags into
/// the effective configuration.
pub fn load(flags: UpFlags, env: &HashMap<String, String>) -> Result<UpConfig, CliError> {
    let file = file_to_read(flags.file.clone());
    let (parsed, sections) = read::read_file(file.as_deref())?;
    let data_dir = flags
        .data_dir
        .clone()
        .or(parsed.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let targets = targets::targets(parsed.targets, &flags.workspaces)?;
    let derived = targets::derived(&targets, &parsed.keys)?;
    let store_url = store::resolve(flags.store.clone(), &parsed.store)?;
    let store_tree = store_url.as_ref().map(store::tree);
    let base = defaults(&data_dir);
    let hand = HandLayers::new(sections, env);
    let section = |name: &str| hand.section(name);
    let env_for = |name: &str| hand.env(name).to_vec();
    targets::refuse_keys_owned_by_targets(section, env_for)?;
    if store_url.is_some() {
        store::refuse_service_stores(section, env_for)?;
    }
    let explicit = hand.explicit();
    let mut system = hand.services(&base, &derived, store_tree.as_ref())?;
    let tls = tls(parsed.tls, &flags)?;
    system.summarizer.subscriptions.extend(parsed.subscriptions);
    summarizer::webhooks::subscription::prepare_all(&system.summarizer.subscriptions)
        .map_err(invalid)?;
    if flags.no_local_executor || parsed.local_executor == Some(false) {
        system.executor = None;
    }
    // On a shared store a second `ghost up` may serve the same workspaces: one executor is
    // active, the other waits on `<root>/.ghost/lock` (unless `standby` was set by hand).
    if store_url.is_some()
        && !hand.by_hand("executor", "standby")
        && let Some(executor) = &mut system.executor
    {
        executor.standby = true;
    }
    apply_flags(&mut system, flags);
    system.wire(explicit);
    Ok(UpConfig {
        data_dir,
        file,
        targets,
        system,
        explicit,
        tls,
        store: store_url,
    })
}

/// The flag layer, over everything else.
fn apply_flags(system: &mut SystemConfig, flags: UpFlags) {
    if let Some(listen) = flags.listen {
        system.gateway.server.http_listen = listen;
    }
    if let Some(public_url) = flags.public_url {
        system.gateway.public_url = public_url;
    }
    if let Some(addr) = flags.executor_listen {
        system.router.executor_listen = Some(addr);
    }
    if let Some(format) = flags.log_format {
        system.gateway.telemetry.log_format = format;
        system.router.telemetry.log_format = format;
        if let Some(executor) = &mut system.executor {
            executor.telemetry.log_format = format;
        }
        system.summarizer.telemetry.log_format = format;
        system.alerter.telemetry.log_format = format;
    }
    if let Some(key) = flags.api_key.filter(|k| !k.is_empty()) {
        system.gateway.api_key = Secret::new(key);
    }
    if let Some(api_base_url) = flags.slack.api_base_url {
        system.alerter.slack.api_base_url = Some(api_base_url);
    }
    if let Some(bot_token) = flags.slack.bot_token {
        system.alerter.slack.bot_token = Secret::new(bot_token);
    }
    if let Some(channel) = flags.slack.channel {
        system.alerter.slack.channel = channel;
    }
}

/// The gateway's URL as a client on this machine reaches it.
pub fn gateway_url(system: &SystemConfig) -> String {
    url(system.gateway.server.http_listen)
}

#[cfg(test)]
mod tests {
    use executor::config::CommandPolicy;

    use super::*;

    fn load_text(text: &str, flags: UpFlags) -> Result<UpConfig, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ghost.toml");
        std::fs::write(&file, text).unwrap();
        load(
            UpFlags {
                file: Some(file),
                ..flags
            },
            &HashMap::new(),
        )
    }

    const STORE: &str = "postgres://ghost:hunter2@db.internal:5432/ghost";

    /// `store.url` of a service's config as its own TOML shows it (`[redacted]` when set).
    fn store_of<T: Serialize>(config: &T) -> Option<String> {
        let tree = layers::tree(config).unwrap();
        tree.get("store")?.get("url")?.as_str().map(str::to_owned)
    }

    #[test]
    fn the_store_tree_reaches_the_summarizers_own_store_url() {
        let base = defaults(Path::new("/tmp/ghost"));
        let tree = store::tree(&Secret::new(STORE));
        let summarizer: summarizer::SummarizerConfig =
            layered(&base.summarizer, Some(&tree), None, &[]).unwrap();
        assert_eq!(summarizer.store.postgres_url(), Ok(Some(STORE)));
    }

    /// Needs the router's and the alerter's `[store] url` (issue 21): until then they refuse
    /// the unknown key `store`.
    #[test]
    fn store_puts_router_summarizer_and_alerter_on_postgres_and_the_executor_on_standby() {
        let sqlite = load_text("", UpFlags::default()).unwrap();
        assert!(sqlite.store.is_none());
        assert!(!sqlite.system.executor.as_ref().unwrap().standby);
        assert_eq!(store_of(&sqlite.system.summarizer), None);

        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("db-url");
        std::fs::write(&url_file, format!("{STORE}\n")).unwrap();
        let file_store = format!("[store]\nurl_file = {:?}\n", url_file.display().to_string());
        let flag = "postgres://flag:hunter3@flag.internal/ghost";
        for (text, store, wanted) in [
            (file_store.as_str(), None, STORE),
            ("", Some(STORE), STORE),
            (file_store.as_str(), Some(flag), flag),
        ] {
            let flags = UpFlags {
                store: store.map(str::to_owned),
                ..UpFlags::default()
            };
            let config = load_text(text, flags).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert_eq!(config.store.as_ref().map(Secret::expose), Some(wanted));
            assert_eq!(
                config.system.summarizer.store.postgres_url(),
                Ok(Some(wanted))
            );
            for tree in [
                store_of(&config.system.router),
                store_of(&config.system.alerter),
            ] {
                assert_eq!(tree.as_deref(), Some("[redacted]"), "{text}");
            }
            assert!(config.system.executor.as_ref().unwrap().standby);
            let rendered = config.render().unwrap();
            assert!(!rendered.contains("hunter"), "{rendered}");
            assert!(rendered.contains("@"), "{rendered}");
        }
        // `standby` set by hand stays.
        let config = load_text(
            "[executor]\nstandby = false\n",
            UpFlags {
                store: Some(STORE.to_owned()),
                ..UpFlags::default()
            },
        )
        .unwrap();
        assert!(!config.system.executor.as_ref().unwrap().standby);
    }

    #[test]
    fn a_store_that_is_not_postgres_or_a_services_own_store_beside_it_is_refused() {
        let err = load_text(
            "",
            UpFlags {
                store: Some("mysql://root:hunter2@db/ghost".to_owned()),
                ..UpFlags::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--store"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = load_text("[store]\nurl = \"sqlite:///x.db\"\n", UpFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("[store] url"), "{err}");
        let err = load_text(
            &format!("[store]\nurl = {STORE:?}\n[summarizer.store]\nurl = {STORE:?}\n"),
            UpFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("[summarizer.store]"), "{err}");
        let env = HashMap::from([("GHOST_ROUTER__STORE__URL".to_owned(), STORE.to_owned())]);
        let err = load(
            UpFlags {
                store: Some(STORE.to_owned()),
                ..UpFlags::default()
            },
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GHOST_ROUTER__STORE__URL"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn the_gateway_section_passes_the_privacy_policy_and_runtime_keys_live_under_the_data_dir() {
        let config = load_text(
            "[gateway]\nprivacy_policy = \"We keep patches.\"\n",
            UpFlags::default(),
        )
        .unwrap();
        let gateway = &config.system.gateway;
        assert_eq!(gateway.privacy_policy.as_deref(), Some("We keep patches."));
        assert_eq!(
            gateway.data_dir.as_deref(),
            Some(config.data_dir.join("gateway").as_path())
        );
        let config = load_text(
            "[gateway]\nprivacy_policy_file = \"policy.md\"\n",
            UpFlags::default(),
        )
        .unwrap();
        let file = config.system.gateway.privacy_policy_file.unwrap();
        assert!(
            file.is_absolute() && file.ends_with("policy.md"),
            "{file:?}"
        );
    }

    #[test]
    fn a_target_agent_cli_reaches_the_executor_and_an_unknown_one_is_refused() {
        let config = load_text(
            r#"
            [[targets]]
            name = "MAIN"
            root = "./main"
            agent = { cli = "aider", model = "openai/gpt-4o", env = ["OPENAI_API_KEY"], timeout = "30m" }
            "#,
            UpFlags::default(),
        )
        .unwrap();
        let executor = config.system.executor.as_ref().unwrap();
        let agent = executor.targets["MAIN"].agent.as_ref().unwrap();
        assert_eq!(agent.cli.as_deref(), Some("aider"));
        assert_eq!(agent.model.as_deref(), Some("openai/gpt-4o"));
        assert_eq!(agent.env, ["OPENAI_API_KEY"]);
        assert_eq!(agent.timeout, Duration::from_secs(1800));
        let err = load_text(
            "[[targets]]\nname = \"MAIN\"\nroot = \"./main\"\nagent = { cli = \"clippy\" }\n",
            UpFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("agent cli = \"clippy\" is not known"), "{err}");
    }

    #[test]
    fn targets_become_executor_workspaces_and_policies_and_gateway_targets() {
        let config = load_text(
            r#"
            [[targets]]
            name = "DEV"
            root = "./dev"
            aliases = ["OLD_DEV"]
            commands = ["cargo", "npm"]
            agent = { inbox = "./inbox", timeout = "10m" }

            [[targets]]
            name = "MAIN"
            root = "./main"
            aliases = ["BRAUN"]
            default = true
            commands = "any"
            "#,
            UpFlags {
                workspaces: vec!["EXTRA=./extra".to_owned()],
                ..UpFlags::default()
            },
        )
        .unwrap();
        let names: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["MAIN", "DEV", "EXTRA"]);
        let gateway = &config.system.gateway;
        assert_eq!(gateway.default_target.as_deref(), Some("MAIN"));
        let dev = gateway.targets.iter().find(|t| t.name == "DEV").unwrap();
        assert_eq!(dev.aliases, ["OLD_DEV"]);
        let executor = config.system.executor.as_ref().unwrap();
        assert_eq!(executor.workspaces.len(), 3);
        assert_eq!(
            executor.targets["DEV"].commands,
            CommandPolicy::Allowlist(vec!["cargo".to_owned(), "npm".to_owned()])
        );
        assert_eq!(
            executor.targets["DEV"].agent.as_ref().unwrap().timeout,
            Duration::from_secs(600)
        );
        assert_eq!(executor.targets["MAIN"].commands, CommandPolicy::Any);
        assert_eq!(executor.targets["EXTRA"].commands, CommandPolicy::Deny);

        // [[targets]] owns the executor's workspaces and policies and the gateway's targets
        // and default: setting them by hand, in the file or the environment, is refused.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ghost.toml");
        std::fs::write(&file, "[[targets]]\nname = \"MAIN\"\nroot = \"./main\"\n").unwrap();
        for (name, value) in [
            ("GHOST_EXECUTOR__TARGETS__MAIN__COMMANDS", "\"any\""),
            (
                "GHOST_EXECUTOR__WORKSPACES",
                "[{target=\"MAIN\",root=\"./.ghost\"}]",
            ),
            ("GHOST_GATEWAY__TARGETS", "[{name=\"X\"}]"),
            ("GHOST_GATEWAY__DEFAULT_TARGET", "X"),
        ] {
            let env = HashMap::from([(name.to_owned(), value.to_owned())]);
            let flags = UpFlags {
                file: Some(file.clone()),
                ..UpFlags::default()
            };
            let err = load(flags, &env).unwrap_err().to_string();
            assert!(err.contains(name), "{err}");
            assert!(err.contains("set targets with [[targets]]"), "{err}");
        }
        for text in [
            "[executor]\nworkspaces = []\n",
            "[executor.targets.MAIN]\ncommands = \"any\"\n",
            "[gateway]\ndefault_target = \"MAIN\"\n",
            "[gateway]\ntargets = []\n",
        ] {
            let err = load_text(text, UpFlags::default()).unwrap_err().to_string();
            assert!(
                err.contains("set targets with [[targets]]"),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn sandbox_and_writable_of_a_target_reach_the_executors_policy_and_bad_ones_are_refused() {
        let config = load_text(
            r#"
            [[targets]]
            name = "MAIN"
            root = "./main"
            sandbox = "required"
            writable = ["/var/cache/npm"]

            [[targets]]
            name = "DOCS"
            root = "./docs"
            "#,
            UpFlags::default(),
        )
        .unwrap();
        let targets = &config.system.executor.as_ref().unwrap().targets;
        assert_eq!(targets["MAIN"].sandbox, executor::SandboxMode::Required);
        assert_eq!(targets["MAIN"].writable, [PathBuf::from("/var/cache/npm")]);
        assert_eq!(targets["DOCS"].sandbox, executor::SandboxMode::Auto);
        assert!(targets["DOCS"].writable.is_empty());
        let rendered = config.render().unwrap();
        assert!(rendered.contains("sandbox = \"required\""), "{rendered}");
        for (text, wanted) in [
            (
                "sandbox = \"maybe\"\n",
                "unknown variant `maybe`, expected one of `auto`, `required`, `off`",
            ),
            (
                "writable = [\"cache\"]\n",
                "writable path cache is not absolute",
            ),
        ] {
            let err = load_text(
                &format!("[[targets]]\nname = \"MAIN\"\nroot = \"./main\"\n{text}"),
                UpFlags::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn revert_keep_of_each_target_reaches_the_executors_policy() {
        let config = load_text(
            r#"
            [[targets]]
            name = "MAIN"
            root = "./main"
            revert_keep = 0

            [[targets]]
            name = "DOCS"
            root = "./docs"
            revert_keep = 1000
            "#,
            UpFlags::default(),
        )
        .unwrap();
        let targets = &config.system.executor.as_ref().unwrap().targets;
        assert_eq!(targets["MAIN"].revert_keep, 0);
        assert_eq!(targets["DOCS"].revert_keep, 1000);
        let rendered = config.render().unwrap();
        assert!(rendered.contains("revert_keep = 0"), "{rendered}");
    }

    #[test]
    fn owner_checks_and_rollback_ignore_reach_the_executors_policy_and_bad_ones_are_refused() {
        let config = load_text(
            r#"
            [[targets]]
            name = "MAIN"
            root = "./main"
            commands = "deny"
            rollback_ignore = ["coverage/**", "!dist/keep.js"]

            [[targets.checks]]
            name = "tsc"
            run = "npx tsc --noEmit"
            timeout = "2m"
            when = "changed:src/**/*.{ts,tsx}"

            [[targets.checks]]
            name = "lint"
            run = "npx eslint ."
            "#,
            UpFlags::default(),
        )
        .unwrap();
        let policy = &config.system.executor.as_ref().unwrap().targets["MAIN"];
        assert_eq!(policy.checks.len(), 2);
        assert_eq!(policy.checks[0].name, "tsc");
        assert_eq!(policy.checks[0].timeout, Some(Duration::from_secs(120)));
        assert_eq!(
            policy.checks[0].when,
            executor::When::Changed("src/**/*.{ts,tsx}".to_owned())
        );
        assert_eq!(policy.checks[1].when, executor::When::Always);
        assert_eq!(policy.rollback_ignore, ["coverage/**", "!dist/keep.js"]);
        assert_eq!(policy.revert_keep, 20);
        // What `ghost up` hands the executor reads back the same.
        let rendered = config.render().unwrap();
        assert!(rendered.contains("changed:src/**/*.{ts,tsx}"), "{rendered}");

        for (text, expected) in [
            (
                "[[targets]]\nname = \"MAIN\"\nroot = \"a\"\n[[targets.checks]]\nname = \"x\"\nrun = \"true\"\nwhen = \"sometimes\"\n",
                "expected \"always\" or \"changed:<glob>\"",
            ),
            (
                "[[targets]]\nname = \"MAIN\"\nroot = \"a\"\n[[targets.checks]]\nname = \"x\"\nrun = \"true\"\n[[targets.checks]]\nname = \"x\"\nrun = \"false\"\n",
                "\"x\" is used twice",
            ),
            (
                "[[targets]]\nname = \"MAIN\"\nroot = \"a\"\n[[targets.checks]]\nname = \"\"\nrun = \"true\"\n",
                "empty name",
            ),
            (
                "[[targets]]\nname = \"MAIN\"\nroot = \"a\"\nrollback_ignore = [\"a/{b\"]\n",
                "rollback_ignore",
            ),
            (
                "[[targets]]\nname = \"MAIN\"\nroot = \"a\"\nrevert_keep = 1001\n",
                "revert_keep = 1001 is over the maximum of 1000",
            ),
        ] {
            let err = load_text(text, UpFlags::default()).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains("MAIN"), "{text}: {err}");
        }
    }

    #[test]
    fn a_target_name_or_alias_that_is_not_a_target_name_is_refused() {
        for text in [
            "[[targets]]\nname = \"MA IN\"\nroot = \"a\"\n",
            "[[targets]]\nname = \"MAIN\"\nroot = \"a\"\naliases = [\"\"]\n",
            "[[targets]]\nname = \"MAIN/../x\"\nroot = \"a\"\n",
        ] {
            let err = load_text(text, UpFlags::default()).unwrap_err().to_string();
            assert!(err.contains("in [[targets]]: target "), "{text}: {err}");
        }
        let err = load(
            UpFlags {
                workspaces: vec!["BAD NAME=./x".to_owned()],
                ..UpFlags::default()
            },
            &HashMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"BAD NAME\""), "{err}");
    }

    #[test]
    fn subscriptions_go_to_the_summarizer_and_private_urls_need_allow_private() {
        const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let entry = |url: &str, extra: &str| {
            format!(
                "[[subscriptions]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n\
                 events = [\"patch.failed\", \"patch.rolled_back\"]\ntargets = [\"MAIN\"]\n{extra}"
            )
        };
        let config = load_text(
            &format!(
                "{}{}",
                entry("https://hooks.example.com/ghost", ""),
                entry("http://127.0.0.1:9/hook", "allow_private = true\n")
            ),
            UpFlags::default(),
        )
        .unwrap();
        let subscriptions = &config.system.summarizer.subscriptions;
        assert_eq!(subscriptions.len(), 2);
        assert_eq!(subscriptions[0].url, "https://hooks.example.com/ghost");
        assert_eq!(subscriptions[0].secret.expose(), SECRET);
        assert_eq!(subscriptions[0].targets, ["MAIN"]);
        assert!(subscriptions[1].allow_private);
        let rendered = config.render().unwrap();
        assert!(!rendered.contains(SECRET), "{rendered}");
        // A URL's path or query may carry a token: only its origin is shown.
        assert!(!rendered.contains(".com/ghost"), "{rendered}");
        assert!(!rendered.contains(":9/hook"), "{rendered}");
        assert!(
            rendered.contains("\"https://hooks.example.com/…\""),
            "{rendered}"
        );

        let err = load_text(
            &format!(
                "{}{}",
                entry("https://hooks.example.com/ghost", ""),
                entry("http://127.0.0.1:9/hook", "")
            ),
            UpFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("subscriptions[1] (http://127.0.0.1:9): 127.0.0.1 is a loopback address"),
            "{err}"
        );
        assert!(err.contains("unless allow_private = true"), "{err}");
        assert!(err.contains("ghost.toml:"), "the file is named: {err}");
        assert!(!err.contains(SECRET), "{err}");

        let err = load_text(
            &format!(
                "[summarizer]\nsubscriptions = [{{ url = \"http://[fd00::1]/x\", secret = \"{SECRET}\", events = [\"*\"] }}]\n"
            ),
            UpFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unique local"), "{err}");
    }

    #[test]
    fn alerter_routing_passes_through_ghost_toml() {
        let text = "[alerter.routing]\nops_channel = \"#ops\"\ndigest_period = \"5m\"\n\
                    [[alerter.routing.routes]]\ntarget = [\"WEB-*\"]\nchannel = \"#web\"\n\
                    mention = \"subteam:S0WEB\"\n\
                    [[alerter.routing.routes.routes]]\nstatus = [\"succeeded\"]\nthread = \"own\"\n";
        let config = load_text(text, UpFlags::default()).unwrap();
        let routing = &config.system.alerter.routing;
        assert_eq!(routing.ops_channel.as_deref(), Some("#ops"));
        assert_eq!(routing.digest_period, std::time::Duration::from_secs(300));
        assert_eq!(routing.routes[0].target, ["WEB-*"]);
        assert_eq!(routing.routes[0].channel.as_deref(), Some("#web"));
        assert_eq!(
            routing.routes[0].routes[0].thread,
            Some(alerter::routing::ThreadMode::Own)
        );
        let err = load_text(
            "[[alerter.routing.routes]]\nchanel = \"#typo\"\n",
            UpFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("chanel"), "{err}");
    }

    #[test]
    fn slack_flags_override_only_what_they_set() {
        let text = "[alerter.slack]\nbot_token = \"xoxb-file\"\nchannel = \"#ops\"\n";
        let config = load_text(
            text,
            UpFlags {
                slack: SlackFlags {
                    api_base_url: Some("http://127.0.0.1:9/api".to_owned()),
                    ..SlackFlags::default()
                },
                ..UpFlags::default()
            },
        )
        .unwrap();
        let slack = &config.system.alerter.slack;
        assert_eq!(
            slack.api_base_url.as_deref(),
            Some("http://127.0.0.1:9/api")
        );
        assert_eq!(slack.bot_token.expose(), "xoxb-file");
        assert_eq!(slack.channel, "#ops");
        let config = load_text(
            text,
            UpFlags {
                slack: SlackFlags {
                    bot_token: Some("xoxb-flag".to_owned()),
                    channel: Some("#flag".to_owned()),
                    ..SlackFlags::default()
                },
                ..UpFlags::default()
            },
        )
        .unwrap();
        let slack = &config.system.alerter.slack;
        assert_eq!(slack.bot_token.expose(), "xoxb-flag");
        assert_eq!(slack.channel, "#flag");
    }

    #[test]
    fn with_no_file_the_one_workspace_is_the_default_and_bad_targets_are_refused() {
        let config = load(
            UpFlags {
                workspaces: vec!["REPO=./repo".to_owned()],
                ..UpFlags::default()
            },
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(
            config.system.gateway.default_target.as_deref(),
            Some("REPO")
        );
        let two_defaults = "[[targets]]\nname = \"A\"\nroot = \"a\"\ndefault = true\n\
                            [[targets]]\nname = \"B\"\nroot = \"b\"\ndefault = true\n";
        let err = load_text(two_defaults, UpFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("A and B are all marked default"), "{err}");
        let bad_commands = "[[targets]]\nname = \"A\"\nroot = \"a\"\ncommands = \"some\"\n";
        let err = load_text(bad_commands, UpFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(":4:12:"), "{err}");
        assert!(err.contains("expected \"deny\", \"any\""), "{err}");
        let alias_twice = "[[targets]]\nname = \"A\"\nroot = \"a\"\naliases = [\"B\"]\n\
                           [[targets]]\nname = \"B\"\nroot = \"b\"\n";
        let err = load_text(alias_twice, UpFlags::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("B is used twice"), "{err}");
    }

    #[test]
    fn a_listen_address_set_in_the_file_moves_the_urls_that_point_at_it() {
        let config = load_text(
            "[router.server]\ngrpc_listen = \"127.0.0.1:6001\"\n[alerter]\nrouter_url = \"http://elsewhere:1\"\n",
            UpFlags::default(),
        )
        .unwrap();
        assert_eq!(config.system.gateway.router_url, "http://127.0.0.1:6001");
        assert_eq!(
            config.system.executor.as_ref().unwrap().router_url,
            "http://127.0.0.1:6001"
        );
        assert_eq!(
            config.system.alerter.router_url.as_deref(),
            Some("http://elsewhere:1")
        );
    }
}
