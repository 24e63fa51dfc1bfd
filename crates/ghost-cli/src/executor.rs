//! `ghost executor`: only an executor, on the machine where the code lives, dialling a router
//! elsewhere (`https://`, a token scoped to its targets); `ghost executor install` makes it a
//! service of this machine ([`crate::units`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use ghost_runtime::config::{Secret, ServerConfig};

use crate::error::CliError;
use crate::exit::Exit;
use crate::render::Output;
use crate::units::{self, InstallOptions, Manager};

/// The environment variable the token is read from when no flag gives it.
pub const TOKEN_ENV: &str = "GHOST_EXECUTOR_TOKEN";

/// `ghost executor [install|uninstall] ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExecutorCommand {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    flags: ExecutorFlags,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Write a service running `ghost executor` with these flags and enable it: a systemd unit
    /// (Linux) or a launchd agent (macOS). The token goes into a file only its owner can
    /// read, never onto the command line.
    Install {
        #[command(flatten)]
        install: InstallFlags,
        #[command(flatten)]
        flags: Box<ExecutorFlags>,
    },
    /// Stop, disable and remove what `install` wrote.
    Uninstall {
        /// The user's service, not the system's.
        #[arg(long)]
        user: bool,
        /// systemd or launchd [default: launchd on macOS, else systemd].
        #[arg(long, value_enum)]
        manager: Option<Manager>,
        /// Only remove the files; do not run systemctl/launchctl.
        #[arg(long)]
        no_disable: bool,
    },
}

/// How `install` installs.
#[derive(Debug, Args)]
struct InstallFlags {
    /// A user service (~/.config/systemd/user, ~/Library/LaunchAgents) instead of a system one.
    #[arg(long)]
    user: bool,
    /// systemd or launchd [default: launchd on macOS, else systemd].
    #[arg(long, value_enum)]
    manager: Option<Manager>,
    /// Write the files but do not run systemctl/launchctl (print what to run).
    #[arg(long)]
    no_enable: bool,
    /// Print the unit (or plist) instead of writing anything.
    #[arg(long, visible_alias = "print")]
    dry_run: bool,
    /// The account a system unit runs as (`User=`) [default: root].
    #[arg(long, value_name = "USER")]
    service_user: Option<String>,
}

/// What one executor serves and where it dials.
#[derive(Debug, Args)]
pub struct ExecutorFlags {
    /// The router's executor port, e.g. https://ghost.example.com:50443 (http:// only for a
    /// router on this machine: the token would cross the network in plaintext).
    #[arg(long, value_name = "URL")]
    router: Option<String>,
    /// The executor token (`ghost token create` prints one). Visible to every user in `ps`:
    /// prefer --token-file or GHOST_EXECUTOR_TOKEN.
    #[arg(long, value_name = "T")]
    token: Option<String>,
    /// A file holding the executor token (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate the router's certificate is checked against (for a router started by
    /// `ghost up`: its <data-dir>/tls/ca.pem) [default: the public web PKI roots].
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A workspace as TARGET=DIR (repeatable; at least one).
    #[arg(long = "workspace", value_name = "TARGET=DIR")]
    workspaces: Vec<String>,
    /// The executor's own state (journal, ledger) [default: $XDG_STATE_HOME/ghost/executor,
    /// else ~/.local/state/ghost/executor; /var/lib/ghost-executor for a system unit].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The executor's name in leases and `ghost executors` [default: this host's name].
    #[arg(long, value_name = "ID")]
    name: Option<String>,
    /// Address of the health and metrics endpoint (/healthz, /metrics) [default: loopback, a
    /// free port].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// First wait between reconnect attempts (doubles per failure, up to 30 s, with jitter).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    reconnect_backoff: Option<Duration>,
}

/// The executor's settings with every default applied and every path absolute.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Router URL, checked.
    pub router: String,
    /// The token.
    pub token: String,
    /// Absolute CA path.
    pub ca: Option<PathBuf>,
    /// (target, absolute dir).
    pub workspaces: Vec<(String, PathBuf)>,
    /// Absolute data dir.
    pub data_dir: PathBuf,
    /// Executor id.
    pub name: String,
    /// Health listener.
    pub listen: Option<SocketAddr>,
    /// Reconnect base wait.
    pub reconnect_backoff: Option<Duration>,
}

/// What `ghost executor` reads from the environment.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    /// `GHOST_EXECUTOR_TOKEN`.
    pub token: Option<String>,
    /// `XDG_STATE_HOME`.
    pub xdg_state_home: Option<String>,
    /// `HOME`.
    pub home: Option<String>,
    /// `XDG_CONFIG_HOME` (where user units go).
    pub xdg_config_home: Option<String>,
}

impl Environment {
    /// This process's.
    pub fn from_process(ghost_env: &HashMap<String, String>) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            token: ghost_env.get(TOKEN_ENV).cloned().filter(|v| !v.is_empty()),
            xdg_state_home: var("XDG_STATE_HOME"),
            home: var("HOME"),
            xdg_config_home: var("XDG_CONFIG_HOME"),
        }
    }
}

/// Runs `ghost executor`, `install` or `uninstall`.
pub async fn run(
    command: ExecutorCommand,
    ghost_env: &HashMap<String, String>,
    output: &Output,
) -> Result<Exit, CliError> {
    let env = Environment::from_process(ghost_env);
    match command.action {
        None => serve(resolve(command.flags, &env)?, output).await,
        Some(Action::Install { install, flags }) => {
            let manager = install.manager.unwrap_or_else(Manager::native);
            let mut flags = *flags;
            // A system service keeps its state in the system's place, which systemd creates
            // for the unit's user (StateDirectory=), not in the installing user's home.
            if !install.user && manager == Manager::Systemd && flags.data_dir.is_none() {
                flags.data_dir = Some(PathBuf::from(units::SYSTEM_DATA_DIR));
            }
            let resolved = resolve(flags, &env)?;
            let options = InstallOptions {
                user: install.user,
                manager,
                enable: !install.no_enable,
                dry_run: install.dry_run,
                service_user: install.service_user,
            };
            units::install(&resolved, &options, &env, output)
        }
        Some(Action::Uninstall {
            user,
            manager,
            no_disable,
        }) => units::uninstall(
            user,
            manager.unwrap_or_else(Manager::native),
            !no_disable,
            &env,
            output,
        ),
    }
}

fn bad(message: String) -> CliError {
    CliError::Input(message)
}

/// Applies the defaults, reads the token and checks every flag.
pub fn resolve(flags: ExecutorFlags, env: &Environment) -> Result<Resolved, CliError> {
    let router = flags.router.ok_or_else(|| {
        bad("--router is required: the router's executor port, e.g. https://HOST:PORT".to_owned())
    })?;
    check_router_url(&router)?;
    let token = match (flags.token, &flags.token_file) {
        (Some(token), _) => token,
        (None, Some(file)) => read_token_file(file)?,
        (None, None) => env.token.clone().ok_or_else(|| {
            bad(format!(
                "no executor token: give --token-file FILE or {TOKEN_ENV} (create one on the \
                 control plane with `ghost token create --target TARGET --name NAME`)"
            ))
        })?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(bad("the executor token is empty".to_owned()));
    }
    let workspaces = workspaces(&flags.workspaces)?;
    let data_dir = match flags.data_dir {
        Some(dir) => absolute(&dir)?,
        None => default_data_dir(env)?,
    };
    for (target, dir) in &workspaces {
        if data_dir.starts_with(dir) || dir.starts_with(&data_dir) {
            return Err(bad(format!(
                "the data dir {} and workspace {target} ({}) overlap: patches could write the \
                 executor's journal; put the data dir outside every workspace",
                data_dir.display(),
                dir.display()
            )));
        }
    }
    let ca = flags.ca.as_deref().map(absolute).transpose()?;
    if let Some(ca) = &ca {
        check_ca(ca)?;
    }
    Ok(Resolved {
        router,
        token,
        ca,
        workspaces,
        data_dir,
        name: flags.name.unwrap_or_else(host_name),
        listen: flags.listen,
        reconnect_backoff: flags.reconnect_backoff,
    })
}

/// `--workspace TARGET=DIR` flags as (target, absolute dir): at least one, each a target name
/// given once, each dir an existing directory.
fn workspaces(specs: &[String]) -> Result<Vec<(String, PathBuf)>, CliError> {
    if specs.is_empty() {
        return Err(bad(
            "no workspace: give --workspace TARGET=DIR (repeatable), e.g. --workspace MAIN=~/src/app"
                .to_owned(),
        ));
    }
    let mut workspaces: Vec<(String, PathBuf)> = Vec::new();
    for spec in specs {
        let Some((target, dir)) = spec.split_once('=') else {
            return Err(bad(format!(
                "--workspace {spec:?}: expected TARGET=DIR, e.g. MAIN=./workspace"
            )));
        };
        ghost_core::TargetName::parse(target)
            .map_err(|err| bad(format!("--workspace {spec:?}: target {target:?}: {err}")))?;
        if workspaces.iter().any(|(seen, _)| seen == target) {
            return Err(bad(format!("--workspace: target {target} given twice")));
        }
        let dir = absolute(Path::new(dir))?;
        if !dir.is_dir() {
            return Err(bad(format!(
                "--workspace {target}={}: not a directory",
                dir.display()
            )));
        }
        workspaces.push((target.to_owned(), dir));
    }
    Ok(workspaces)
}

/// Refuses a `--ca` file that cannot be read or holds no PEM certificate (a key given by
/// mistake, say).
fn check_ca(ca: &Path) -> Result<(), CliError> {
    let text = std::fs::read(ca).map_err(|err| bad(format!("--ca {}: {err}", ca.display())))?;
    if !String::from_utf8_lossy(&text).contains("-----BEGIN CERTIFICATE-----") {
        return Err(bad(format!(
            "--ca {}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----; give \
             ca.pem, not a key)",
            ca.display()
        )));
    }
    Ok(())
}

/// Refuses a URL that is not `https://`, or `http://` to a host that is not loopback.
pub fn check_router_url(url: &str) -> Result<(), CliError> {
    let parsed = reqwest::Url::parse(url).map_err(|err| bad(format!("--router {url:?}: {err}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad(format!("--router {url:?}: no host")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(host) => Ok(()),
        "http" => {
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            Err(bad(format!(
                "--router {url}: the token would cross the network in plaintext: use \
                 https://{host}{port}"
            )))
        }
        _ => Err(bad(format!(
            "--router {url:?}: expected https://HOST:PORT (or http:// to this machine)"
        ))),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn read_token_file(file: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|err| bad(format!("--token-file {}: {err}", file.display())))?;
    let first = text.lines().next().unwrap_or_default().trim().to_owned();
    if first.is_empty() {
        return Err(bad(format!(
            "--token-file {}: the file is empty",
            file.display()
        )));
    }
    Ok(first)
}

/// `$XDG_STATE_HOME/ghost/executor`, else `~/.local/state/ghost/executor`.
fn default_data_dir(env: &Environment) -> Result<PathBuf, CliError> {
    if let Some(state) = &env.xdg_state_home {
        return Ok(PathBuf::from(state).join("ghost/executor"));
    }
    match &env.home {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/ghost/executor")),
        None => Err(bad(
            "no data dir: give --data-dir DIR (neither XDG_STATE_HOME nor HOME is set)".to_owned(),
        )),
    }
}

/// `path` against the working directory, `.` and `..` folded (it may not exist yet).
fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|err| bad(format!("cannot read the working directory: {err}")))?;
    let mut out = PathBuf::new();
    for part in cwd.join(path).components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// This machine's name, for the executor id.
fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "executor".to_owned())
}

/// The executor's config from the resolved flags.
pub fn config(resolved: &Resolved) -> ::executor::ExecutorConfig {
    let http = resolved
        .listen
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let defaults = ::executor::ExecutorConfig::default();
    ::executor::ExecutorConfig {
        server: ServerConfig {
            // Health only, and for this machine: never on the --listen address.
            grpc_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            http_listen: http,
            ..ServerConfig::default()
        },
        router_url: resolved.router.clone(),
        router_ca: resolved.ca.clone(),
        executor_id: resolved.name.clone(),
        token: Secret::new(resolved.token.clone()),
        state_dir: resolved.data_dir.clone(),
        workspaces: resolved
            .workspaces
            .iter()
            .map(|(target, root)| ::executor::WorkspaceConfig {
                target: target.clone(),
                root: root.clone(),
            })
            .collect(),
        reconnect_backoff: resolved
            .reconnect_backoff
            .unwrap_or(defaults.reconnect_backoff),
        ..defaults
    }
}

/// Runs the executor until SIGINT/SIGTERM.
async fn serve(resolved: Resolved, output: &Output) -> Result<Exit, CliError> {
    let config = config(&resolved);
    let telemetry = ghost_runtime::telemetry::init(::executor::SERVICE, &config.telemetry)?;
    let app = ::executor::App::build(config).await?;
    let served: Vec<String> = resolved
        .workspaces
        .iter()
        .map(|(target, dir)| format!("{target}={}", dir.display()))
        .collect();
    output.note(&format!(
        "executor {} serving {} for {}; health on http://{}/healthz",
        resolved.name,
        served.join(", "),
        resolved.router,
        app.http_addr()
    ));
    app.run(ghost_runtime::shutdown::signal()).await?;
    telemetry.shutdown();
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_for_loopback_only() {
        for ok in [
            "https://ghost.example.com:50443",
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ] {
            assert!(check_router_url(ok).is_ok(), "{ok}");
        }
        for refused in [
            "http://ghost.example.com:50051",
            "http://10.0.0.2:50051",
            "ftp://x",
        ] {
            assert!(check_router_url(refused).is_err(), "{refused}");
        }
    }
}
