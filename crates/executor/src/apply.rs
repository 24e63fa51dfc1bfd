//! Applying a patch to one workspace, confined to its root.
//!
//! Every path is checked before the first write: relative (ghost-core already refused `..`
//! and absolute paths), resolved component by component against the real root so a symlink
//! cannot lead outside, never into `.git/` or the executor's state dir, never onto a device or
//! directory. Files are replaced through a temp file + fsync + rename. If a write fails half
//! way, the files already written are restored from the originals kept in memory.
//!
//! This executor applies `write` edits; other edit kinds, commands and agent hand-off are
//! refused with a `rejected` outcome naming what is unsupported rather than ignored.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ghost_core::{ApplyReport, Edit, EditReport, Patch, RelPath, Status};

/// Size limits of one patch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest file a `write` may produce.
    pub max_file_bytes: u64,
    /// Largest total of written bytes in one patch.
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
}

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Refused before any write: confinement, limits, unsupported content.
    #[error("{0}")]
    Refused(String),
    /// The file system failed while writing.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The workspace-relative path.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

/// A file's state before the patch touched it.
struct Original {
    path: PathBuf,
    before: Option<(Vec<u8>, fs::Permissions)>,
}

fn refused(message: impl Into<String>) -> ApplyError {
    ApplyError::Refused(message.into())
}

/// Resolves `rel` inside `workspace`, following symlinks one component at a time.
pub fn confine(workspace: &Workspace, rel: &RelPath) -> Result<PathBuf, ApplyError> {
    let parts: Vec<&str> = rel.as_str().split('/').collect();
    let mut current = workspace.root.clone();
    for (index, part) in parts.iter().enumerate() {
        current.push(part);
        let last = index + 1 == parts.len();
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let resolved = fs::canonicalize(&current)
                    .map_err(|_| refused(format!("path {rel} goes through a dangling symlink")))?;
                if !resolved.starts_with(&workspace.root) {
                    return Err(refused(format!(
                        "path {rel} escapes the workspace through a symlink"
                    )));
                }
                let resolved_meta = fs::metadata(&resolved).map_err(|source| ApplyError::Io {
                    path: rel.to_string(),
                    source,
                })?;
                if !last && !resolved_meta.is_dir() {
                    return Err(refused(format!("path {rel}: {part} is not a directory")));
                }
                if last && !resolved_meta.is_file() {
                    return Err(refused(format!("path {rel} is not a regular file")));
                }
                current = resolved;
            }
            Ok(meta) => {
                if !last && !meta.is_dir() {
                    return Err(refused(format!("path {rel}: {part} is not a directory")));
                }
                if last && !meta.is_file() {
                    return Err(refused(format!(
                        "path {rel} is not a regular file (directory, device or socket)"
                    )));
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                for rest in &parts[index + 1..] {
                    current.push(rest);
                }
                break;
            }
            Err(source) => {
                return Err(ApplyError::Io {
                    path: rel.to_string(),
                    source,
                });
            }
        }
    }
    let inside = current
        .strip_prefix(&workspace.root)
        .map_err(|_| refused(format!("path {rel} escapes the workspace")))?;
    if inside.components().any(|c| c.as_os_str() == ".git") {
        return Err(refused(format!("path {rel} resolves into .git/")));
    }
    if current.starts_with(&workspace.state_dir) {
        return Err(refused(format!(
            "path {rel} resolves into the executor's state directory"
        )));
    }
    Ok(current)
}

fn line_count(text: &[u8]) -> u32 {
    let newlines = text.iter().filter(|b| **b == b'\n').count();
    let trailing = usize::from(!text.is_empty() && !text.ends_with(b"\n"));
    u32::try_from(newlines + trailing).unwrap_or(u32::MAX)
}

/// Checks what this executor can do before touching anything.
fn check_supported(patch: &Patch, limits: &Limits) -> Result<(), ApplyError> {
    if patch.agent.is_some() {
        return Err(refused(
            "agent hand-off is not enabled on this executor; the patch was not applied",
        ));
    }
    if patch.patch.is_some() {
        return Err(refused(
            "whole-document `patch` is not supported by this executor version; send `edits`",
        ));
    }
    if let Some(command) = patch.commands.first() {
        return Err(refused(format!(
            "commands are denied by this target's policy (first: {command:?})"
        )));
    }
    if let Some(check) = patch.validate.first() {
        return Err(refused(format!(
            "validation commands are denied by this target's policy (first: {:?})",
            check.run
        )));
    }
    if patch.base.is_some() || patch.commit.is_some() {
        return Err(refused(
            "git `base` and `commit` are not supported by this executor version",
        ));
    }
    let mut total: u64 = 0;
    for (index, edit) in patch.edits.iter().enumerate() {
        let Edit::Write { path, contents } = edit else {
            return Err(refused(format!(
                "edit {index} ({} on {}): only `write` edits are supported by this executor version",
                edit.op(),
                edit.path()
            )));
        };
        let size = contents.len() as u64;
        if size > limits.max_file_bytes {
            return Err(refused(format!(
                "edit {index} writes {size} bytes to {path}, over the {} byte file limit",
                limits.max_file_bytes
            )));
        }
        total += size;
    }
    if total > limits.max_patch_bytes {
        return Err(refused(format!(
            "patch writes {total} bytes, over the {} byte patch limit",
            limits.max_patch_bytes
        )));
    }
    Ok(())
}

fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: Option<fs::Permissions>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.ghost-tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents)?;
        if let Some(mode) = mode {
            file.set_permissions(mode)?;
        }
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn restore(originals: Vec<Original>, created_dirs: Vec<PathBuf>) {
    for original in originals.into_iter().rev() {
        let outcome = match original.before {
            Some((bytes, mode)) => write_atomically(&original.path, &bytes, Some(mode)),
            None => fs::remove_file(&original.path).or_else(|err| {
                if err.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(err)
                }
            }),
        };
        if let Err(err) = outcome {
            tracing::error!(path = %original.path.display(), error = %err, "cannot restore file");
        }
    }
    for dir in created_dirs.into_iter().rev() {
        let _ = fs::remove_dir(&dir);
    }
}

/// Directories `create_dir_all(dir)` would create, outermost first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut missing = Vec::new();
    let mut current = Some(dir);
    while let Some(path) = current {
        if path.exists() {
            break;
        }
        missing.push(path.to_owned());
        current = path.parent();
    }
    missing.reverse();
    missing
}

fn write_all(
    workspace: &Workspace,
    patch: &Patch,
    reports: &mut Vec<EditReport>,
) -> Result<(), ApplyError> {
    // Resolve every path first: nothing is written unless all of them are acceptable.
    let mut planned = Vec::new();
    for edit in &patch.edits {
        if let Edit::Write { path, contents } = edit {
            planned.push((path, confine(workspace, path)?, contents));
        }
    }
    let mut originals: Vec<Original> = Vec::new();
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    for (rel, real, contents) in planned {
        let io = |source| ApplyError::Io {
            path: rel.to_string(),
            source,
        };
        let before = match fs::read(&real) {
            Ok(bytes) => {
                let mode = fs::metadata(&real).map_err(io)?.permissions();
                Some((bytes, mode))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => {
                restore(originals, created_dirs);
                return Err(io(err));
            }
        };
        let removed = before.as_ref().map_or(0, |(bytes, _)| line_count(bytes));
        let mode = before.as_ref().map(|(_, mode)| mode.clone());
        if let Some(parent) = real.parent() {
            let missing = missing_dirs(parent);
            if let Err(err) = fs::create_dir_all(parent) {
                restore(originals, created_dirs);
                return Err(io(err));
            }
            created_dirs.extend(missing);
        }
        originals.push(Original {
            path: real.clone(),
            before,
        });
        if let Err(err) = write_atomically(&real, contents.as_bytes(), mode) {
            restore(originals, created_dirs);
            return Err(io(err));
        }
        reports.push(EditReport {
            op: "write".to_owned(),
            path: rel.to_string(),
            match_step: String::new(),
            added: line_count(contents.as_bytes()),
            removed,
            from: String::new(),
        });
    }
    Ok(())
}

/// Applies `patch` to `workspace` and reports the outcome; never panics on bad input.
pub fn apply(workspace: &Workspace, patch: &Patch, limits: &Limits) -> ApplyReport {
    let started = Instant::now();
    let mut edits = Vec::new();
    let outcome =
        check_supported(patch, limits).and_then(|()| write_all(workspace, patch, &mut edits));
    let (status, error) = match outcome {
        Ok(()) => (Status::Succeeded, String::new()),
        Err(err @ ApplyError::Refused(_)) => {
            edits.clear();
            (Status::Rejected, err.to_string())
        }
        Err(err @ ApplyError::Io { .. }) => {
            edits.clear();
            (Status::RolledBack, err.to_string())
        }
    };
    ApplyReport {
        edits,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..ApplyReport::ended(status, error)
    }
}

/// Mode bits of a file, for tests and reports.
pub fn mode_of(path: &Path) -> Option<u32> {
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> (tempfile::TempDir, Workspace) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        fs::create_dir_all(&root).unwrap();
        let root = fs::canonicalize(root).unwrap();
        let state_dir = root.join(".ghost-executor");
        (
            dir,
            Workspace {
                target: "MAIN".into(),
                root,
                state_dir,
            },
        )
    }

    const LIMITS: Limits = Limits {
        max_file_bytes: 1024,
        max_patch_bytes: 2048,
    };

    fn patch(edits: &str) -> Patch {
        ghost_core::parse_json(
            format!(r#"{{"id":"p","target":"MAIN","edits":{edits}}}"#).as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn writes_files_and_counts_lines() {
        let (_dir, ws) = workspace();
        fs::write(ws.root.join("old.txt"), "a\nb\n").unwrap();
        let report = apply(
            &ws,
            &patch(
                r#"[{"op":"write","path":"src/new.txt","contents":"x\ny"},{"op":"write","path":"old.txt","contents":"c\n"}]"#,
            ),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Succeeded, "{}", report.error);
        assert_eq!(
            fs::read_to_string(ws.root.join("src/new.txt")).unwrap(),
            "x\ny"
        );
        assert_eq!(fs::read_to_string(ws.root.join("old.txt")).unwrap(), "c\n");
        assert_eq!((report.edits[0].added, report.edits[0].removed), (2, 0));
        assert_eq!((report.edits[1].added, report.edits[1].removed), (1, 2));
    }

    #[test]
    fn keeps_the_mode_of_an_overwritten_file() {
        let (_dir, ws) = workspace();
        let script = ws.root.join("run.sh");
        fs::write(&script, "old").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();
        let report = apply(
            &ws,
            &patch(r#"[{"op":"write","path":"run.sh","contents":"new"}]"#),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Succeeded, "{}", report.error);
        assert_eq!(mode_of(&script), Some(0o750));
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused_and_nothing_is_written() {
        let (dir, ws) = workspace();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, ws.root.join("link")).unwrap();
        let report = apply(
            &ws,
            &patch(
                r#"[{"op":"write","path":"first.txt","contents":"1"},{"op":"write","path":"link/evil.txt","contents":"x"}]"#,
            ),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Rejected);
        assert!(
            report
                .error
                .contains("escapes the workspace through a symlink"),
            "{}",
            report.error
        );
        assert!(!outside.join("evil.txt").exists());
        assert!(
            !ws.root.join("first.txt").exists(),
            "nothing may be written when any path is refused"
        );
    }

    #[test]
    fn symlinks_inside_the_root_are_followed() {
        let (_dir, ws) = workspace();
        fs::create_dir_all(ws.root.join("real")).unwrap();
        std::os::unix::fs::symlink(ws.root.join("real"), ws.root.join("alias")).unwrap();
        let report = apply(
            &ws,
            &patch(r#"[{"op":"write","path":"alias/f.txt","contents":"ok"}]"#),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Succeeded, "{}", report.error);
        assert_eq!(
            fs::read_to_string(ws.root.join("real/f.txt")).unwrap(),
            "ok"
        );
    }

    #[test]
    fn git_state_dirs_and_non_files_are_off_limits() {
        let (_dir, ws) = workspace();
        fs::create_dir_all(ws.root.join("repo/.git")).unwrap();
        std::os::unix::fs::symlink(ws.root.join("repo/.git"), ws.root.join("g")).unwrap();
        let report = apply(
            &ws,
            &patch(r#"[{"op":"write","path":"g/config","contents":"x"}]"#),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Rejected);
        assert!(report.error.contains(".git"), "{}", report.error);
        let report = apply(
            &ws,
            &patch(r#"[{"op":"write","path":".ghost-executor/ledger","contents":"x"}]"#),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Rejected);
        fs::create_dir_all(ws.root.join("adir")).unwrap();
        let report = apply(
            &ws,
            &patch(r#"[{"op":"write","path":"adir","contents":"x"}]"#),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Rejected);
        assert!(
            report.error.contains("not a regular file"),
            "{}",
            report.error
        );
    }

    #[test]
    fn limits_and_unsupported_content_are_refused_clearly() {
        let (_dir, ws) = workspace();
        let big = "x".repeat(2000);
        let report = apply(
            &ws,
            &patch(&format!(
                r#"[{{"op":"write","path":"big","contents":"{big}"}}]"#
            )),
            &LIMITS,
        );
        assert_eq!(report.status, Status::Rejected);
        assert!(report.error.contains("file limit"), "{}", report.error);
        let report = apply(&ws, &patch(r#"[{"op":"delete","path":"a"}]"#), &LIMITS);
        assert_eq!(report.status, Status::Rejected);
        assert!(report.error.contains("only `write`"), "{}", report.error);
        let with_command = ghost_core::parse_json(
            br#"{"id":"p","target":"MAIN","edits":[{"op":"write","path":"a","contents":""}],"commands":["rm -rf /"]}"#,
        )
        .unwrap();
        let report = apply(&ws, &with_command, &LIMITS);
        assert_eq!(report.status, Status::Rejected);
        assert!(report.error.contains("denied"), "{}", report.error);
        assert!(!ws.root.join("a").exists());
    }
}
