//! A served workspace and the path rules inside it.
//!
//! ghost-core already normalises paths (relative, no `..`, no NUL, no `.git`), but patches also
//! arrive over gRPC, so the executor checks again on its own before touching anything: length
//! limits, `.git` and `.ghost` in any case spelling, and its own state dir wherever it lies in
//! the root. Symlinks are dealt with where files are opened ([`crate::beneath`]): none is
//! followed.

use std::path::{Component, Path, PathBuf};

use crate::config::TargetPolicy;

/// Longest path component Linux file systems accept (NAME_MAX).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Longest path the executor accepts (PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;

/// Size limits of one patch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file a patch may produce.
    pub max_file_bytes: u64,
    /// Largest total of bytes one patch may write.
    pub max_patch_bytes: u64,
}

/// A workspace this executor serves, with its root already canonicalised.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The target name patches use.
    pub target: String,
    /// The real (symlink-free) root.
    pub root: PathBuf,
    /// The executor's own state dir, off limits when it lies inside the root.
    pub state_dir: PathBuf,
    /// Commands, limits and agent settings of this target.
    pub policy: TargetPolicy,
}

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The path would leave the workspace or reach a forbidden place.
    #[error("{0}")]
    Refused(String),
}

fn refused(message: String) -> ConfineError {
    ConfineError::Refused(message)
}

/// A component as a case-insensitive file system (or a Windows share) would see it: lower
/// case, without trailing dots and spaces.
fn folded(part: &str) -> String {
    part.trim_end_matches(['.', ' ']).to_ascii_lowercase()
}

/// True for `.git` in any spelling that can reach it (`.GIT`, `.git.`, the 8.3 name `git~1`).
fn is_git(part: &str) -> bool {
    let folded = folded(part);
    folded == ".git" || folded == "git~1"
}

/// Checks `rel` (a normalised, `/`-separated workspace-relative path) before anything is
/// touched: lengths, `.git`, every service's state dir (`.ghost` at the top, in any case) and
/// the executor's own state dir when it lies inside the root.
pub fn check_path(workspace: &Workspace, rel: &str) -> Result<(), ConfineError> {
    if rel.len() > MAX_PATH_BYTES {
        return Err(refused(format!(
            "a path of {} bytes is over the {MAX_PATH_BYTES} byte limit",
            rel.len()
        )));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts {
        if part.len() > MAX_COMPONENT_BYTES {
            return Err(refused(format!(
                "a path component of {} bytes is over the {MAX_COMPONENT_BYTES} byte limit",
                part.len()
            )));
        }
        if part.is_empty() || *part == "." || *part == ".." || part.contains('\0') {
            return Err(refused(format!("path {rel:?} is not normalised")));
        }
        if is_git(part) {
            return Err(refused(format!(
                "path {rel} is inside .git/, which patches may not touch"
            )));
        }
        if crate::beneath::is_temp_name(part) {
            return Err(refused(format!(
                "path {rel} has the shape of the executor's temp files (.<name>.ghost-tmp)"
            )));
        }
    }
    if folded(parts[0]) == ".ghost" || folded(parts[0]) == "ghost~1" {
        return Err(refused(format!(
            "path {rel} is inside .ghost/, where the services keep their state"
        )));
    }
    if let Some(state) = state_dir_inside(workspace) {
        let inside = state.len() <= parts.len()
            && state
                .iter()
                .zip(&parts)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if inside || state.is_empty() {
            return Err(refused(format!(
                "path {rel} is inside the executor's state directory"
            )));
        }
    }
    // The agent inbox holds task and completion files: a patch writing there could fake an
    // agent's completion (or plant symlinks for the executor to meet).
    if let Some(inbox) = workspace
        .policy
        .agent
        .as_ref()
        .and_then(|a| a.inbox.as_ref())
    {
        let inbox = std::fs::canonicalize(inbox).unwrap_or_else(|_| inbox.clone());
        if let Some(inbox) = dir_inside(workspace, &inbox) {
            let inside = inbox.len() <= parts.len()
                && inbox
                    .iter()
                    .zip(&parts)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b));
            if inside || inbox.is_empty() {
                return Err(refused(format!(
                    "path {rel} is inside the target's agent inbox"
                )));
            }
        }
    }
    Ok(())
}

/// The components of the state dir below the root, when it lies inside (empty: it is the root).
fn state_dir_inside(workspace: &Workspace) -> Option<Vec<String>> {
    dir_inside(workspace, &workspace.state_dir)
}

/// The components of `dir` below the root, when it lies inside it.
fn dir_inside(workspace: &Workspace, dir: &Path) -> Option<Vec<String>> {
    let below = dir.strip_prefix(&workspace.root).ok()?;
    Some(
        below
            .components()
            .filter_map(|c| match c {
                Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir_all(root.join("ws/.ghost-executor")).unwrap();
        let ws = Workspace {
            target: "MAIN".to_owned(),
            root: root.join("ws"),
            state_dir: root.join("ws/.ghost-executor"),
            policy: TargetPolicy::default(),
        };
        (dir, ws)
    }

    #[test]
    fn lengths_git_ghost_and_the_state_dir_are_refused() {
        let (_dir, ws) = workspace();
        let long = "x".repeat(256);
        let deep = vec!["d"; 2100].join("/");
        for bad in [
            long.as_str(),
            format!("a/{long}/b").as_str(),
            deep.as_str(),
            ".git/config",
            "sub/.GIT/config",
            "sub/.git./x",
            "GIT~1/x",
            ".ghost",
            ".Ghost/router/db",
            ".GHOST ./x",
            ".ghost-executor/ledger",
            ".GHOST-EXECUTOR/x",
            "src/.a.rs.ghost-tmp",
            "a//b",
            "a/../b",
        ] {
            let err = check_path(&ws, bad).unwrap_err();
            assert!(matches!(err, ConfineError::Refused(_)), "{bad}");
        }
        for good in [
            "x".repeat(255).as_str(),
            "src/.ghosts",
            "sub/.ghost/x",
            "a/.gitignore",
        ] {
            check_path(&ws, good).unwrap();
        }
    }
}
