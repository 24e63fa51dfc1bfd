//! `ghost up`: all five services in this process until Ctrl-C, with what a developer needs to
//! talk to them printed once they are ready.
//!
//! [`run`] is the whole start in order: the config ([`crate::up_config`]), the layout checks
//! (`up/layout.rs`), an API key when none is configured, the service credential and the ports,
//! TLS (`up/tls.rs`), the start, the banner (`up/banner.rs`), then the wait for a signal and
//! the drain.

mod banner;
mod layout;
mod tls;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use gateway::GatewayConfig;
use ghost_runtime::config::Secret;
use ghost_runtime::telemetry::LogFormat;

use crate::error::CliError;
use crate::exit::Exit;
use crate::render::Output;
use crate::system::SystemBuilder;
use crate::up_config::{self, SlackFlags, UpConfig, UpFlags};

/// `ghost up`'s own flags (the global `--api-key` is added by [`UpArgs::into_flags`]).
#[derive(Debug, Args)]
pub struct UpArgs {
    /// ghost.toml to read (`ghost init` writes one) [default: ./ghost.toml when present].
    #[arg(short = 'f', long = "file", env = "GHOST_CONFIG", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Where the services keep their state [default: `data_dir` in the file, else ./.ghost].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A workspace as TARGET=DIR (repeatable), added to the file's [[targets]]
    /// [default: MAIN=./workspace when there are none].
    #[arg(long = "workspace", value_name = "TARGET=DIR")]
    pub workspaces: Vec<String>,
    /// The gateway's HTTP address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The gateway's public base URL, advertised in the OpenAPI `servers`.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Log line format of every service.
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Print the effective configuration (secrets redacted) and exit without starting.
    #[arg(long)]
    pub print_config: bool,
    /// Slack Web API base URL (Slack is off unless set here or in [alerter.slack]).
    #[arg(long, env = "GHOST_SLACK_API_URL")]
    pub slack_api_url: Option<String>,
    /// Slack bot token [default: `bot_token` in [alerter.slack]].
    #[arg(long, env = "GHOST_SLACK_TOKEN", hide_env_values = true)]
    pub slack_token: Option<String>,
    /// Slack channel [default: `channel` in [alerter.slack], else #ghost-runner].
    #[arg(long, env = "GHOST_SLACK_CHANNEL")]
    pub slack_channel: Option<String>,
    /// Serve the router's executor port here (TLS always), for executors on other
    /// machines (`ghost executor --router https://HOST:PORT`) [or `executor_listen` in
    /// [router]].
    #[arg(long, value_name = "ADDR")]
    pub executor_listen: Option<SocketAddr>,
    /// A PEM certificate chain (e.g. a Let's Encrypt pair) for the executor port and the
    /// gateway's HTTPS, instead of the private CA's certificate made under
    /// <data-dir>/tls/. Re-read when the files change.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Run the control plane only (gateway, router, summarizer, alerter): executors run
    /// elsewhere with `ghost executor` [or `local_executor = false` in the file].
    #[arg(long)]
    pub no_local_executor: bool,
    /// Keep the router's, summarizer's and alerter's state in this PostgreSQL database,
    /// postgres://USER:PASSWORD@HOST:PORT/DB, instead of SQLite under the data dir; the
    /// local executor then runs as a standby-capable one, so two `ghost up` may share a
    /// workspace. Prefer GHOST_STORE or `url_file` in [store]: a flag is seen by `ps`
    /// [or `url` in [store]].
    #[arg(long, env = "GHOST_STORE", hide_env_values = true, value_name = "URL")]
    pub store: Option<String>,
}

impl UpArgs {
    /// The flags [`up_config::load`] layers over the file and the environment; `api_key` is
    /// `--api-key` when it was given on `ghost up`'s command line (never `GHOST_API_KEY`).
    pub fn into_flags(self, api_key: Option<String>) -> UpFlags {
        let log_format = match self.log_format.as_deref() {
            Some("json") => Some(LogFormat::Json),
            Some(_) => Some(LogFormat::Text),
            None => None,
        };
        UpFlags {
            file: self.file,
            data_dir: self.data_dir,
            workspaces: self.workspaces,
            listen: self.listen,
            public_url: self.public_url,
            log_format,
            api_key,
            slack: SlackFlags {
                api_base_url: self.slack_api_url,
                bot_token: self.slack_token,
                channel: self.slack_channel,
            },
            executor_listen: self.executor_listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            no_local_executor: self.no_local_executor,
            store: self.store,
        }
    }
}

/// 24 random bytes from `/dev/urandom` as hex: a fresh API key.
pub fn random_key() -> Result<String, CliError> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(|err| CliError::Other(anyhow::anyhow!("cannot generate an API key: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// An API key for this run when the gateway has none configured: set on `gateway`, and
/// returned to be shown once.
fn generate_key_if_none(gateway: &mut GatewayConfig) -> Result<Option<String>, CliError> {
    if !gateway.api_key.is_empty() || !gateway.api_keys.is_empty() {
        return Ok(None);
    }
    let key = random_key()?;
    gateway.api_key = Secret::new(key.clone());
    Ok(Some(key))
}

/// What five services in one process need beyond the config: one service credential every
/// hop agrees on, `/healthz` and `/metrics` kept on this machine, every listener bound now
/// (port 0 gets a free port) and every service pointed at the others' bound addresses.
fn prepare_local(config: &mut UpConfig) -> Result<SystemBuilder, CliError> {
    config
        .system
        .set_internal_token(&crate::tls::random_token()?)
        .map_err(|err| CliError::Settings(err.to_string()))?;
    config.system.keep_operations_local();
    let mut builder = SystemBuilder::from_config(config.data_dir.clone(), config.system.clone())
        .keep_urls(config.explicit);
    // The addresses as bound (a port 0 is a real port now) and the URLs wired.
    config.system = builder.bind()?.clone();
    Ok(builder)
}

/// Runs until SIGINT/SIGTERM, then drains every service. `env` holds the process's `GHOST_*`
/// variables; with `print_config` it prints the effective config and returns.
pub async fn run(
    flags: UpFlags,
    print_config: bool,
    env: &HashMap<String, String>,
    output: &Output,
) -> Result<Exit, CliError> {
    let mut config = up_config::load(flags, env)?;
    layout::check_layout(&config)?;
    if print_config {
        output.print(config.render()?.trim_end());
        return Ok(Exit::Success);
    }
    let generated = generate_key_if_none(&mut config.system.gateway)?;
    let telemetry = ghost_runtime::telemetry::init_local(&config.system.gateway.telemetry)?;
    let builder = prepare_local(&mut config)?;
    let ca = tls::serve_tls(&mut config)?;
    let system = builder
        .configure(|bound| bound.clone_from(&config.system))
        .start()
        .await?;
    output.print(&banner::banner(
        &config,
        &system,
        ca.as_deref(),
        generated.as_deref(),
    )?);
    ghost_runtime::shutdown::signal().await;
    system.shutdown().await?;
    telemetry.shutdown();
    Ok(Exit::Success)
}
