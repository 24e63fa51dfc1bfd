//! A served workspace and path confinement inside it.
//!
//! Every path is relative (ghost-core already refused `..`, absolute paths, NUL and `.git`
//! components) and is resolved component by component against the real root, so a symlink can
//! never lead outside, into `.git/`, or into the executor's state dir; devices, sockets and
//! FIFOs are refused.

use std::fs;
use std::path::{Path, PathBuf};

use ghost_core::RelPath;

use crate::config::TargetPolicy;

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

/// What the last component of a path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A regular file, or nothing yet.
    File,
    /// A directory, or nothing yet.
    Dir,
}

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The path would leave the workspace or reach a forbidden place.
    #[error("{0}")]
    Refused(String),
    /// The file system could not be read.
    #[error("cannot inspect {path}: {source}")]
    Io {
        /// The workspace-relative path.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

fn refused(message: String) -> ConfineError {
    ConfineError::Refused(message)
}

/// Resolves `rel` inside `workspace`, following symlinks one component at a time.
pub fn confine(workspace: &Workspace, rel: &RelPath, want: Want) -> Result<PathBuf, ConfineError> {
    let parts: Vec<&str> = rel.as_str().split('/').collect();
    let mut current = workspace.root.clone();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        let last = index + 1 == parts.len();
        let meta = match fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                for rest in &parts[index + 1..] {
                    current.push(rest);
                }
                break;
            }
            Err(source) => {
                return Err(ConfineError::Io {
                    path: rel.to_string(),
                    source,
                });
            }
        };
        let meta = if meta.file_type().is_symlink() {
            let resolved = fs::canonicalize(&current).map_err(|_| {
                refused(format!(
                    "path {rel} goes through a dangling or looping symlink"
                ))
            })?;
            if !resolved.starts_with(&workspace.root) {
                return Err(refused(format!(
                    "path {rel} escapes the workspace through a symlink"
                )));
            }
            current = resolved;
            fs::metadata(&current).map_err(|source| ConfineError::Io {
                path: rel.to_string(),
                source,
            })?
        } else {
            meta
        };
        if !last && !meta.is_dir() {
            return Err(refused(format!("path {rel}: {part} is not a directory")));
        }
        if last && want == Want::File && !meta.is_file() {
            return Err(refused(format!(
                "path {rel} is not a regular file (directory, device, socket or fifo)"
            )));
        }
        if last && want == Want::Dir && !meta.is_dir() {
            return Err(refused(format!("path {rel} exists and is not a directory")));
        }
    }
    check_inside(workspace, rel, &current)?;
    Ok(current)
}

fn check_inside(workspace: &Workspace, rel: &RelPath, real: &Path) -> Result<(), ConfineError> {
    let inside = real
        .strip_prefix(&workspace.root)
        .map_err(|_| refused(format!("path {rel} escapes the workspace")))?;
    if inside.components().any(|c| c.as_os_str() == ".git") {
        return Err(refused(format!("path {rel} resolves into .git/")));
    }
    if real.starts_with(&workspace.state_dir) {
        return Err(refused(format!(
            "path {rel} resolves into the executor's state directory"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    fn rel(raw: &str) -> RelPath {
        RelPath::parse(raw).unwrap()
    }

    #[test]
    fn symlinks_are_followed_but_may_not_leave_or_reach_forbidden_places() {
        let (dir, ws) = workspace();
        fs::create_dir_all(ws.root.join("real")).unwrap();
        fs::create_dir_all(ws.root.join("repo/.git")).unwrap();
        std::os::unix::fs::symlink(ws.root.join("real"), ws.root.join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path(), ws.root.join("out")).unwrap();
        std::os::unix::fs::symlink(ws.root.join("repo/.git"), ws.root.join("g")).unwrap();
        assert_eq!(
            confine(&ws, &rel("alias/f"), Want::File).unwrap(),
            ws.root.join("real/f")
        );
        for bad in ["out/f", "g/config", ".ghost-executor/ledger", "real"] {
            let err = confine(&ws, &rel(bad), Want::File).unwrap_err();
            assert!(matches!(err, ConfineError::Refused(_)), "{bad}: {err}");
        }
        assert!(confine(&ws, &rel("real"), Want::Dir).is_ok());
    }
}
