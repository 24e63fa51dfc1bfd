//! Where `ghost up`'s files may live: no state directory inside a workspace (or a workspace
//! inside one), no two targets on one directory, and the config file outside every workspace.
//! A patch may write anything in its workspace, so each of these would let one rewrite the
//! services' state or the next start's keys and targets. Paths are compared with the symlinks
//! of their longest existing prefix resolved: the data dir and workspaces may not exist yet.

use std::path::{Component, Path, PathBuf};

use crate::error::CliError;
use crate::up_config::UpConfig;

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
pub(super) fn check_layout(config: &UpConfig) -> Result<(), CliError> {
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
