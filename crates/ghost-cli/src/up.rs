//! `ghost up`: all five services in this process until Ctrl-C, with what a developer needs to
//! talk to them printed once they are ready.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use crate::error::CliError;
use crate::exit::Exit;
use crate::local::{LocalOptions, LocalSystem, SlackOptions};
use crate::render::Output;

/// What `ghost up` runs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Where the services keep their state.
    pub data_dir: PathBuf,
    /// Workspaces as `TARGET=DIR`.
    pub workspaces: Vec<String>,
    /// The gateway's HTTP address.
    pub listen: SocketAddr,
    /// The API key; generated and printed when `None`.
    pub api_key: Option<String>,
    /// Slack, or `None` to log messages.
    pub slack: Option<SlackOptions>,
}

fn random_key() -> Result<String, CliError> {
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

/// Refuses a data dir inside (or equal to) a workspace: patches could write the services'
/// state there (a forged summary, the router's database); and a workspace inside the data
/// dir, where the services' files would be the patches' to change. Both are compared with
/// the symlinks of their longest existing prefix resolved.
fn refuse_data_dir_in_workspaces(
    data_dir: &Path,
    workspaces: &[(String, PathBuf)],
) -> Result<(), CliError> {
    let data = resolved(data_dir)
        .map_err(|err| CliError::Settings(format!("--data-dir {}: {err}", data_dir.display())))?;
    for (target, dir) in workspaces {
        let root = resolved(dir)
            .map_err(|err| CliError::Settings(format!("--workspace {target}: {err}")))?;
        if data.starts_with(&root) {
            return Err(CliError::Settings(format!(
                "the data dir {} is inside workspace {target} ({}): patches could write the \
                 services' state there; put the data dir outside every workspace, e.g. \
                 --data-dir ./.ghost --workspace {target}=./workspace",
                data_dir.display(),
                dir.display()
            )));
        }
        if root.starts_with(&data) {
            return Err(CliError::Settings(format!(
                "workspace {target} ({}) is inside the data dir {}: patches could write the \
                 services' state there; put the data dir outside every workspace, e.g. \
                 --data-dir ./.ghost --workspace {target}=./workspace",
                dir.display(),
                data_dir.display()
            )));
        }
    }
    Ok(())
}

/// Runs until SIGINT/SIGTERM, then drains every service.
pub async fn run(options: UpOptions, output: &Output) -> Result<Exit, CliError> {
    let telemetry = ghost_runtime::telemetry::init_local(&Default::default())?;
    let mut parsed = Vec::new();
    for spec in options.workspaces {
        let Some((target, dir)) = spec.split_once('=') else {
            return Err(CliError::Settings(format!(
                "--workspace {spec:?}: expected TARGET=DIR, e.g. MAIN=./workspace"
            )));
        };
        parsed.push((target.to_owned(), PathBuf::from(dir)));
    }
    refuse_data_dir_in_workspaces(&options.data_dir, &parsed)?;
    let (api_key, generated) = match options.api_key.filter(|k| !k.is_empty()) {
        Some(key) => (key, false),
        None => (random_key()?, true),
    };
    let slack_on = options.slack.is_some();
    let system = LocalSystem::start(LocalOptions {
        data_dir: options.data_dir.clone(),
        workspaces: parsed.clone(),
        targets: Vec::new(),
        gateway_listen: options.listen,
        api_key: api_key.clone(),
        slack: options.slack,
    })
    .await?;
    let mut text = format!(
        "Ghost Runner is up (state in {}).\n",
        options.data_dir.display()
    );
    for service in &system.services {
        text.push_str(&format!(
            "  {:<11} grpc {}  http {}\n",
            service.name, service.grpc, service.http
        ));
    }
    for (target, dir) in &parsed {
        text.push_str(&format!("  workspace   {target} = {}\n", dir.display()));
    }
    text.push_str(&format!(
        "  slack       {}\n",
        if slack_on {
            "on"
        } else {
            "off (messages are logged)"
        }
    ));
    let gateway = system.gateway_url()?;
    if generated {
        text.push_str(&format!(
            "\nAPI key (shown once): {api_key}\n  export GHOST_API_KEY={api_key} GHOST_URL={gateway}\n"
        ));
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
            let err = refuse_data_dir_in_workspaces(&data, &workspaces).unwrap_err();
            assert!(err.to_string().contains("inside workspace MAIN"), "{err}");
        }
        std::os::unix::fs::symlink(&ws, dir.path().join("alias")).unwrap();
        assert!(
            refuse_data_dir_in_workspaces(&dir.path().join("alias/.ghost"), &workspaces).is_err()
        );
        for data in [dir.path().join(".ghost"), dir.path().join("repo-state")] {
            refuse_data_dir_in_workspaces(&data, &workspaces).unwrap();
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
            let err = refuse_data_dir_in_workspaces(&data, &workspaces).unwrap_err();
            assert!(
                err.to_string().contains("inside the data dir"),
                "{ws:?}: {err}"
            );
        }
    }
}
