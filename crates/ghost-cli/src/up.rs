//! `ghost up`: all five services in this process until Ctrl-C, with what a developer needs to
//! talk to them printed once they are ready.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use clap::Args;
use ghost_runtime::config::Secret;
use ghost_runtime::telemetry::LogFormat;

use crate::error::CliError;
use crate::exit::Exit;
use crate::local::LocalSystem;
use crate::render::Output;
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

/// `path` made absolute and normalised (`.` and `..` folded), then with symlinks resolved as
/// far as it exists (the data dir and workspaces may not exist yet).
fn resolved(path: &Path) -> std::io::Result<PathBuf> {
    let mut absolute = PathBuf::new();
    for part in std::env::current_dir()?.join(path).components() {
        match part {
            Component::ParentDir => {
                absolute.pop();
            }
            Component::CurDir => {}
            other => absolute.push(other),
        }
    }
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return Ok(rest.iter().rev().fold(real, |out, part| out.join(part)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// Refuses a state directory inside (or equal to) a workspace: patches could write the
/// services' state there (a forged summary, the router's database); and a workspace inside a
/// state directory, where the services' files would be the patches' to change. `states` are
/// (what, dir) pairs, e.g. ("[router] data_dir", ...). Both are compared with the symlinks of
/// their longest existing prefix resolved.
fn refuse_state_in_workspaces(
    states: &[(String, PathBuf)],
    workspaces: &[(String, PathBuf)],
) -> Result<(), CliError> {
    for (what, state_dir) in states {
        let state = resolved(state_dir)
            .map_err(|err| CliError::Settings(format!("{what} {}: {err}", state_dir.display())))?;
        for (target, dir) in workspaces {
            let root = resolved(dir)
                .map_err(|err| CliError::Settings(format!("--workspace {target}: {err}")))?;
            if state.starts_with(&root) {
                return Err(CliError::Settings(format!(
                    "{what} {} is inside workspace {target} ({}): patches could write the \
                     services' state there; put it outside every workspace, e.g. \
                     --data-dir ./.ghost --workspace {target}=./workspace",
                    state_dir.display(),
                    dir.display()
                )));
            }
            if root.starts_with(&state) {
                return Err(CliError::Settings(format!(
                    "workspace {target} ({}) is inside {what} {}: patches could write the \
                     services' state there; put every state directory outside every \
                     workspace, e.g. --data-dir ./.ghost --workspace {target}=./workspace",
                    dir.display(),
                    state_dir.display()
                )));
            }
        }
    }
    Ok(())
}

/// The workspaces' roots resolved; refuses two targets on the same directory (their patches
/// would race on the same files under two queues).
fn resolved_roots(workspaces: &[(String, PathBuf)]) -> Result<Vec<(&str, PathBuf)>, CliError> {
    let mut roots: Vec<(&str, PathBuf)> = Vec::new();
    for (target, dir) in workspaces {
        let root = resolved(dir)
            .map_err(|err| CliError::Settings(format!("--workspace {target}: {err}")))?;
        if let Some((other, _)) = roots.iter().find(|(_, seen)| *seen == root) {
            return Err(CliError::Settings(format!(
                "targets {other} and {target} have the same root {}: give each target its \
                 own directory",
                root.display()
            )));
        }
        roots.push((target, root));
    }
    Ok(roots)
}

/// Refuses a config file inside a workspace: a patch could rewrite `ghost.toml`, and with it
/// the keys and the targets, for the next start. The file's symlinks are followed.
fn refuse_file_in_workspaces(file: &Path, roots: &[(&str, PathBuf)]) -> Result<(), CliError> {
    let config = resolved(file)
        .map_err(|err| CliError::Settings(format!("config file {}: {err}", file.display())))?;
    for (target, root) in roots {
        if config.starts_with(root) {
            return Err(CliError::Settings(format!(
                "the config file {} is inside workspace {target} ({}): a patch could rewrite \
                 it, and with it the keys and targets; move it outside every workspace",
                file.display(),
                root.display()
            )));
        }
    }
    Ok(())
}

/// Every state directory of `config` with what it is called.
fn state_dirs(config: &UpConfig) -> Vec<(String, PathBuf)> {
    let system = &config.system;
    let mut states = vec![
        ("the data dir".to_owned(), config.data_dir.clone()),
        (
            "[router] data_dir".to_owned(),
            system.router.data_dir.clone(),
        ),
        (
            "[summarizer] data_dir".to_owned(),
            system.summarizer.data_dir.clone(),
        ),
    ];
    if let Some(dir) = &system.alerter.data_dir {
        states.push(("[alerter] data_dir".to_owned(), dir.clone()));
    }
    if let Some(executor) = &system.executor {
        states.push((
            "[executor] state_dir".to_owned(),
            executor.state_dir.clone(),
        ));
    }
    if let Some(inbox) = &system.gateway.inbox {
        states.push(("[gateway] inbox".to_owned(), inbox.clone()));
    }
    states
}

/// The checks on where things live, against the workspaces the executor will really serve.
fn check_layout(config: &UpConfig) -> Result<(), CliError> {
    let workspaces: Vec<(String, PathBuf)> = config
        .system
        .executor
        .iter()
        .flat_map(|executor| &executor.workspaces)
        .map(|w| (w.target.clone(), w.root.clone()))
        .collect();
    let roots = resolved_roots(&workspaces)?;
    if let Some(file) = &config.file {
        refuse_file_in_workspaces(file, &roots)?;
    }
    refuse_state_in_workspaces(&state_dirs(config), &workspaces)
}

/// Puts TLS where `ghost up` serves it: the router's executor port (when one is asked for)
/// always, and the gateway's HTTP side when a certificate was given (`[tls]`/`--tls-cert`).
/// Without a given certificate, the private CA under `<data-dir>/tls/` issues one for the
/// executor port's address, `localhost`, the public URL's host and `[tls] names`. A section's
/// own `server.tls.cert` is kept. Returns the CA executors must trust, when one was made.
fn serve_tls(config: &mut UpConfig) -> Result<Option<PathBuf>, CliError> {
    let given = config.tls.cert.clone().zip(config.tls.key.clone());
    let system = &mut config.system;
    if let Some((cert, key)) = &given {
        for path in [cert, key] {
            if !path.is_file() {
                return Err(CliError::Settings(format!(
                    "[tls] {}: no such file",
                    path.display()
                )));
            }
        }
        let tls = &mut system.gateway.server.tls;
        if tls.cert.is_none() {
            tls.cert = Some(cert.clone());
            tls.key = Some(key.clone());
            tls.grpc = false;
            tls.http = true;
        }
    }
    let Some(addr) = system.router.executor_listen else {
        return Ok(None);
    };
    if system.router.server.tls.cert.is_some() {
        return Ok(None);
    }
    let (cert, key, ca) = match given {
        Some((cert, key)) => (cert, key, None),
        None => {
            let mut extra = config.tls.names.clone();
            if let Some(host) = reqwest::Url::parse(&system.gateway.public_url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
            {
                extra.push(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned(),
                );
            }
            let names = crate::tls::names_for(&[addr.ip()], &extra);
            let ensured = crate::tls::ensure(
                &config.data_dir.join("tls"),
                &names,
                time::OffsetDateTime::now_utc(),
            )?;
            if let Some(why) = &ensured.issued {
                tracing::info!(reason = %why, names = ?names, "issued the executor port's certificate");
            }
            (
                ensured.files.cert,
                ensured.files.key,
                Some(ensured.files.ca),
            )
        }
    };
    let tls = &mut system.router.server.tls;
    tls.cert = Some(cert);
    tls.key = Some(key);
    // The router's own listeners stay as configured (loopback, plaintext by default); the
    // executor port is TLS always.
    tls.grpc = false;
    tls.http = false;
    Ok(ca)
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
    check_layout(&config)?;
    if print_config {
        output.print(config.render()?.trim_end());
        return Ok(Exit::Success);
    }
    let gateway = &mut config.system.gateway;
    let generated = if gateway.api_key.is_empty() && gateway.api_keys.is_empty() {
        let key = random_key()?;
        gateway.api_key = Secret::new(key.clone());
        Some(key)
    } else {
        None
    };
    let telemetry = ghost_runtime::telemetry::init_local(&config.system.gateway.telemetry)?;
    config
        .system
        .set_internal_token(&crate::tls::random_token()?)
        .map_err(|err| CliError::Settings(err.to_string()))?;
    config.system.keep_operations_local();
    config.system.prebind()?;
    config.system.wire(config.explicit);
    let ca = serve_tls(&mut config)?;
    let slack_on = config.system.alerter.slack.api_base_url.is_some();
    let system = LocalSystem::start_with(config.data_dir.clone(), config.system.clone()).await?;
    let mut text = format!(
        "Ghost Runner is up (state in {}{}).\n",
        config.data_dir.display(),
        config
            .file
            .as_ref()
            .map(|f| format!(", config {}", f.display()))
            .unwrap_or_default()
    );
    for service in &system.services {
        let ops = if service.ops == service.http {
            String::new()
        } else {
            format!("  ops {}", service.ops)
        };
        text.push_str(&format!(
            "  {:<11} grpc {}  http {}{ops}\n",
            service.name, service.grpc, service.http
        ));
    }
    text.push_str(&format!(
        "  store       {}\n",
        match &config.store {
            Some(url) => crate::up_config::store::shown(url),
            None => "SQLite under the data dir".to_owned(),
        }
    ));
    for target in &config.targets {
        text.push_str(&format!(
            "  target      {} = {}{}{}\n",
            target.name,
            target.root.display(),
            if target.aliases.is_empty() {
                String::new()
            } else {
                format!(" (aliases {})", target.aliases.join(", "))
            },
            if target.is_default { " (default)" } else { "" }
        ));
    }
    if let Some(addr) = config.system.router.executor_listen {
        // Executors dial a name or address, not 0.0.0.0: the public URL's host, else this
        // machine's name.
        let host = if addr.ip().is_unspecified() {
            reqwest::Url::parse(&config.system.gateway.public_url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                })
                .unwrap_or_else(|| "localhost".to_owned())
        } else {
            match addr.ip() {
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            }
        };
        text.push_str(&format!(
            "  executors   https://{host}:{}{}\n",
            addr.port(),
            ca.as_ref()
                .map(|ca| format!(" (they trust {})", ca.display()))
                .unwrap_or_default()
        ));
    }
    if config.system.executor.is_none() {
        text.push_str(if config.system.router.executor_listen.is_some() {
            "  executor    none here (--no-local-executor): run `ghost executor` where the code is\n"
        } else {
            "  executor    none here (--no-local-executor), and no executor port: add \
             --executor-listen ADDR for executors on other machines\n"
        });
    }
    text.push_str(&format!(
        "  slack       {}\n",
        if slack_on {
            "on"
        } else {
            "off (messages are logged)"
        }
    ));
    let gateway_tls = &config.system.gateway.server.tls;
    let gateway = if gateway_tls.cert.is_some() && gateway_tls.http {
        match config.system.gateway.public_url.trim_end_matches('/') {
            "" => system.gateway_url()?.replacen("http://", "https://", 1),
            public => public.to_owned(),
        }
    } else {
        system.gateway_url()?
    };
    if let Some(api_key) = generated {
        text.push_str(&format!(
            "\nAPI key (shown once): {api_key}\n  export GHOST_API_KEY={api_key} GHOST_URL={gateway}\n"
        ));
    } else {
        text.push_str(&format!("\n  export GHOST_URL={gateway}\n"));
    }
    text.push_str("Submit with: ghost submit patch.json    Stop with Ctrl-C.");
    output.print(&text);
    ghost_runtime::shutdown::signal().await;
    system.shutdown().await?;
    telemetry.shutdown();
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_dir(dir: &Path) -> Vec<(String, PathBuf)> {
        vec![("the data dir".to_owned(), dir.to_owned())]
    }

    #[test]
    fn a_config_file_inside_a_workspace_and_two_targets_on_one_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("repo");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(ws.join("ghost.toml"), "").unwrap();
        std::os::unix::fs::symlink(ws.join("ghost.toml"), dir.path().join("ghost.toml")).unwrap();
        let workspaces = vec![("MAIN".to_owned(), ws.clone())];
        let roots = resolved_roots(&workspaces).unwrap();
        for file in [ws.join("ghost.toml"), dir.path().join("ghost.toml")] {
            let err = refuse_file_in_workspaces(&file, &roots).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("config file"), "{err}");
            assert!(err.contains("inside workspace MAIN"), "{err}");
        }
        std::fs::write(dir.path().join("outside.toml"), "").unwrap();
        refuse_file_in_workspaces(&dir.path().join("outside.toml"), &roots).unwrap();
        let two = vec![
            ("A".to_owned(), ws.clone()),
            ("B".to_owned(), dir.path().join("x/../repo")),
        ];
        let err = resolved_roots(&two).unwrap_err().to_string();
        assert!(err.contains("targets A and B have the same root"), "{err}");
    }

    #[test]
    fn a_data_dir_inside_or_equal_to_a_workspace_is_refused_even_before_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("repo");
        std::fs::create_dir_all(&ws).unwrap();
        let workspaces = vec![("MAIN".to_owned(), ws.clone())];
        for data in [
            ws.join(".ghost"),
            ws.clone(),
            ws.join("a/../b/.ghost"),
            dir.path().join("elsewhere/../repo/x"),
        ] {
            let err = refuse_state_in_workspaces(&data_dir(&data), &workspaces).unwrap_err();
            assert!(err.to_string().contains("inside workspace MAIN"), "{err}");
        }
        std::os::unix::fs::symlink(&ws, dir.path().join("alias")).unwrap();
        assert!(
            refuse_state_in_workspaces(&data_dir(&dir.path().join("alias/.ghost")), &workspaces)
                .is_err()
        );
        for data in [dir.path().join(".ghost"), dir.path().join("repo-state")] {
            refuse_state_in_workspaces(&data_dir(&data), &workspaces).unwrap();
        }
    }

    #[test]
    fn a_workspace_inside_the_data_dir_is_refused_too_even_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("state");
        std::fs::create_dir_all(data.join("ws")).unwrap();
        std::os::unix::fs::symlink(data.join("ws"), dir.path().join("link")).unwrap();
        for ws in [
            data.join("ws"),
            data.join("not-yet/ws"),
            dir.path().join("link"),
        ] {
            let workspaces = vec![("MAIN".to_owned(), ws.clone())];
            let err = refuse_state_in_workspaces(&data_dir(&data), &workspaces).unwrap_err();
            assert!(
                err.to_string().contains("inside the data dir"),
                "{ws:?}: {err}"
            );
        }
    }
}
