//! Crash-safe file operations: a reader (or a restart after kill -9 or power loss) sees the old
//! file or the new one, never a torn one.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::SummarizerError;

/// Prefix of temp files; names starting with it are never summaries.
pub const TEMP_PREFIX: &str = ".tmp-";

/// Writes `path` atomically: temp file in the same folder, write, fsync, rename over `path`,
/// fsync the folder. Creates the folder if missing.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), SummarizerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent(path)?;
    std::fs::create_dir_all(dir).map_err(|err| SummarizerError::io(dir, err))?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{name}.{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        File::open(dir)?.sync_all()
    })();
    if let Err(err) = result {
        // Best effort: a leftover temp file is never read as a summary and is swept at start.
        let _ = std::fs::remove_file(&temp);
        return Err(SummarizerError::io(path, err));
    }
    Ok(())
}

/// Writes several files of one folder atomically each, in order: every temp file written and
/// fsynced, then renamed in order, then one fsync of the folder. A crash leaves each file old
/// or new (earlier files may be new while later ones are old).
pub fn write_all(files: &[(&Path, &[u8])]) -> Result<(), SummarizerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some((first, _)) = files.first() else {
        return Ok(());
    };
    let dir = parent(first)?;
    std::fs::create_dir_all(dir).map_err(|err| SummarizerError::io(dir, err))?;
    let mut temps = Vec::with_capacity(files.len());
    let result = (|| {
        for (path, bytes) in files {
            if parent(path)? != dir {
                return Err(SummarizerError::io(
                    path,
                    std::io::Error::other("files written together must share a folder"),
                ));
            }
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let temp = dir.join(format!(
                "{TEMP_PREFIX}{name}.{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            temps.push(temp.clone());
            let mut file = File::create(&temp).map_err(|err| SummarizerError::io(&temp, err))?;
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|err| SummarizerError::io(&temp, err))?;
        }
        for ((path, _), temp) in files.iter().zip(&temps) {
            std::fs::rename(temp, path).map_err(|err| SummarizerError::io(path, err))?;
        }
        sync_dir(dir)
    })();
    if result.is_err() {
        for temp in &temps {
            // Best effort, as in `write`: leftovers are swept at start.
            let _ = std::fs::remove_file(temp);
        }
    }
    result
}

/// Moves `from` to `to` (same file system), creating `to`'s folder, and fsyncs both folders.
pub fn rename(from: &Path, to: &Path) -> Result<(), SummarizerError> {
    let to_dir = parent(to)?;
    std::fs::create_dir_all(to_dir).map_err(|err| SummarizerError::io(to_dir, err))?;
    std::fs::rename(from, to).map_err(|err| SummarizerError::io(from, err))?;
    sync_dir(to_dir)?;
    sync_dir(parent(from)?)
}

/// Fsyncs a folder so renames and removals in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), SummarizerError> {
    File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|err| SummarizerError::io(dir, err))
}

/// Removes leftover temp files under `dir` (one level of sub-folders deep is enough: summaries,
/// manifests and artifacts are at most two levels below a target folder).
pub fn sweep_temp_files(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_temp = entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX);
        if is_temp && path.is_file() {
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a temp file");
            }
        } else if depth > 0 && path.is_dir() {
            sweep_temp_files(&path, depth - 1);
        }
    }
}

fn parent(path: &Path) -> Result<&Path, SummarizerError> {
    path.parent().ok_or_else(|| {
        SummarizerError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no parent"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_all_replaces_every_file_of_one_folder_and_refuses_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (md, json) = (dir.path().join("s/x.md"), dir.path().join("s/x.json"));
        write_all(&[(&md, b"# one"), (&json, b"{}")]).unwrap();
        write_all(&[(&md, b"# two"), (&json, b"[]")]).unwrap();
        assert_eq!(std::fs::read(&md).unwrap(), b"# two");
        assert_eq!(std::fs::read(&json).unwrap(), b"[]");
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("s"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["x.json", "x.md"]);
        let elsewhere = dir.path().join("t/y.md");
        assert!(write_all(&[(&md, b"# three"), (&elsewhere, b"")]).is_err());
        assert_eq!(std::fs::read(&md).unwrap(), b"# two", "nothing renamed");
        assert_eq!(std::fs::read_dir(dir.path().join("s")).unwrap().count(), 2);
    }

    #[test]
    fn write_replaces_the_file_and_leaves_no_temp_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/file.json");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn sweep_removes_only_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("MAIN")).unwrap();
        std::fs::write(dir.path().join("MAIN/.tmp-x.json.1-1"), "half").unwrap();
        std::fs::write(dir.path().join("MAIN/summary-x.json"), "{}").unwrap();
        sweep_temp_files(dir.path(), 2);
        assert!(!dir.path().join("MAIN/.tmp-x.json.1-1").exists());
        assert!(dir.path().join("MAIN/summary-x.json").exists());
    }
}
