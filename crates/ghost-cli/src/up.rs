//! `ghost up`: all five services in this process until Ctrl-C, with what a developer needs to
//! talk to them printed once they are ready.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use ghost_runtime::config::Secret;

use crate::error::CliError;
use crate::exit::Exit;
use crate::render::Output;
use crate::system::SystemBuilder;
use crate::up_config::{self, UpConfig, UpFlags};

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
    let mut builder = SystemBuilder::from_config(config.data_dir.clone(), config.system.clone())
        .keep_urls(config.explicit);
    // The addresses as bound (a port 0 is a real port now) and the URLs wired.
    config.system = builder.bind()?.clone();
    let ca = serve_tls(&mut config)?;
    let slack_on = config.system.alerter.slack.api_base_url.is_some();
    let system = builder
        .configure(|bound| bound.clone_from(&config.system))
        .start()
        .await?;
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
