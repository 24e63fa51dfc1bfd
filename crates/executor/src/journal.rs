//! The journal of originals that makes an apply undoable, even across a crash.
//!
//! Before the first write, every path the patch will touch is recorded under
//! `<state_dir>/journal/<target>/`: a file's bytes and mode (as a blob) or its absence, and
//! every directory the patch will create. Blobs, the log and the directory entries are fsync'd
//! before the first workspace write. Rollback walks the log backwards and restores each entry
//! (idempotently, so a crash during rollback is repaired by the next one). On start, a journal
//! left behind by a crash is rolled back. Cost: O(touched files).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who the journal belongs to, written before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The patch id.
    pub patch_id: String,
    /// The patch's content hash.
    pub content_hash: String,
    /// The attempt the router leased.
    pub attempt: u32,
    /// The lease's fencing token.
    pub fencing_token: u64,
}

/// One recorded original.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Entry {
    /// A file path: its blob number and mode, or `None` when it did not exist.
    File {
        path: PathBuf,
        before: Option<(u64, u32)>,
    },
    /// A directory the patch creates.
    Dir { path: PathBuf },
}

/// What a rollback did.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Files written back.
    pub restored: u32,
    /// Files and directories removed.
    pub removed: u32,
    /// What could not be restored (empty: byte-identical).
    pub errors: Vec<String>,
}

/// An open journal for one apply.
pub struct Journal {
    dir: PathBuf,
    entries: Vec<Entry>,
}

fn journal_dir(state_dir: &Path, target: &str) -> PathBuf {
    state_dir.join("journal").join(target)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The temp file used to replace `path` atomically.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.ghost-tmp"))
}

/// Replaces `path` with `contents` and `mode` through a synced temp file and a rename.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let temp = temp_path(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn remove_if_present(path: &Path) -> std::io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

impl Journal {
    /// Starts the journal of `target`; fails if one is still there (recover it first).
    pub fn begin(state_dir: &Path, target: &str, header: &Header) -> std::io::Result<Self> {
        let dir = journal_dir(state_dir, target);
        if dir.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("a journal is still open at {}", dir.display()),
            ));
        }
        fs::create_dir_all(dir.join("blobs"))?;
        let header = serde_json::to_vec(header).map_err(std::io::Error::other)?;
        write_synced(&dir.join("header.json"), &header)?;
        sync_dir(&dir)?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(Self {
            dir,
            entries: Vec::new(),
        })
    }

    /// Records the current state of file `path` (bytes and mode, or absent).
    pub fn record_file(&mut self, path: &Path) -> std::io::Result<()> {
        let before = match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => {
                let number = self.entries.len() as u64;
                let bytes = fs::read(path)?;
                write_synced(&self.dir.join("blobs").join(number.to_string()), &bytes)?;
                Some((number, meta.permissions().mode() & 0o7777))
            }
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err),
        };
        self.entries.push(Entry::File {
            path: path.to_owned(),
            before,
        });
        Ok(())
    }

    /// Records a directory the apply is about to create.
    pub fn record_dir(&mut self, path: &Path) {
        self.entries.push(Entry::Dir {
            path: path.to_owned(),
        });
    }

    /// Writes the log and syncs everything; only then may the workspace be written.
    pub fn seal(&self) -> std::io::Result<()> {
        sync_dir(&self.dir.join("blobs"))?;
        let mut log = Vec::new();
        for entry in &self.entries {
            serde_json::to_writer(&mut log, entry).map_err(std::io::Error::other)?;
            log.push(b'\n');
        }
        write_synced(&self.dir.join("entries.jsonl"), &log)?;
        sync_dir(&self.dir)
    }

    /// Restores every recorded original, newest first.
    pub fn rollback(&self) -> Restored {
        restore(&self.dir, &self.entries)
    }

    /// Forgets the journal once the apply is committed or rolled back.
    pub fn close(self) -> std::io::Result<()> {
        close_dir(&self.dir)
    }
}

fn close_dir(dir: &Path) -> std::io::Result<()> {
    fs::remove_dir_all(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn restore(dir: &Path, entries: &[Entry]) -> Restored {
    let mut done = Restored::default();
    for entry in entries.iter().rev() {
        match entry {
            Entry::File {
                path,
                before: Some((blob, mode)),
            } => {
                let outcome =
                    fs::read(dir.join("blobs").join(blob.to_string())).and_then(|bytes| {
                        if let Some(parent) = path.parent() {
                            fs::create_dir_all(parent)?;
                        }
                        write_atomically(path, &bytes, *mode)
                    });
                match outcome {
                    Ok(()) => done.restored += 1,
                    Err(err) => done.errors.push(format!("{}: {err}", path.display())),
                }
            }
            Entry::File { path, before: None } => match remove_if_present(path) {
                Ok(true) => done.removed += 1,
                Ok(false) => {}
                Err(err) => done.errors.push(format!("{}: {err}", path.display())),
            },
            Entry::Dir { path } => match fs::remove_dir(path) {
                Ok(()) => done.removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => done.errors.push(format!("{}: {err}", path.display())),
            },
        }
    }
    done
}

/// A journal left behind by a crash, rolled back.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Whose it was.
    pub header: Header,
    /// What the rollback did.
    pub restored: Restored,
}

/// Rolls back a leftover journal of `target`, if any, unless `applied` says the patch had
/// completed (then the journal is only removed). Returns what was found.
pub fn recover(
    state_dir: &Path,
    target: &str,
    applied: impl Fn(&Header) -> bool,
) -> std::io::Result<Option<Recovered>> {
    let dir = journal_dir(state_dir, target);
    if !dir.exists() {
        return Ok(None);
    }
    let header: Option<Header> = fs::read(dir.join("header.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(header) = header else {
        // The crash came before the header was durable: nothing was written yet.
        close_dir(&dir)?;
        return Ok(None);
    };
    let log = fs::read(dir.join("entries.jsonl")).unwrap_or_default();
    // Without a complete log no workspace write happened (the log is sealed before the first).
    let entries: Vec<Entry> = log
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map_while(|line| serde_json::from_slice(line).ok())
        .collect();
    let restored = if applied(&header) {
        Restored::default()
    } else {
        restore(&dir, &entries)
    };
    if restored.errors.is_empty() {
        close_dir(&dir)?;
    }
    Ok(Some(Recovered { header, restored }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_restores_contents_modes_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ws = dir.path().join("ws");
        fs::create_dir_all(&ws).unwrap();
        fs::write(ws.join("a"), "original").unwrap();
        fs::set_permissions(ws.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        let header = Header {
            patch_id: "p".to_owned(),
            content_hash: "h".to_owned(),
            attempt: 1,
            fencing_token: 7,
        };
        let mut journal = Journal::begin(&state, "MAIN", &header).unwrap();
        journal.record_file(&ws.join("a")).unwrap();
        journal.record_dir(&ws.join("new"));
        journal.record_file(&ws.join("new/b")).unwrap();
        journal.seal().unwrap();
        write_atomically(&ws.join("a"), b"changed", 0o755).unwrap();
        fs::create_dir(ws.join("new")).unwrap();
        fs::write(ws.join("new/b"), "b").unwrap();
        // A crash here: the next start finds the journal and rolls it back.
        drop(journal);
        let recovered = recover(&state, "MAIN", |_| false).unwrap().unwrap();
        assert_eq!(recovered.header, header);
        assert!(recovered.restored.errors.is_empty());
        assert_eq!(fs::read_to_string(ws.join("a")).unwrap(), "original");
        let mode = fs::metadata(ws.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!ws.join("new").exists());
        assert!(recover(&state, "MAIN", |_| false).unwrap().is_none());
    }
}
