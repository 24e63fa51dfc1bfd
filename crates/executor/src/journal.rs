//! The journal of originals that makes an apply undoable, even across a crash.
//!
//! Before the first write, every path the patch will touch is recorded: a file's bytes and
//! mode, or its absence, and every directory the patch will create. The record is one file,
//! `<state_dir>/journal/<target>.journal`, written as a temp file, fsync'd, renamed into place
//! and made durable with one fsync of the folder: two fsyncs however many files the patch
//! touches (it was a header, a log and a blob per file, each synced, and three folder syncs).
//! Rollback walks the entries backwards and restores each one (idempotently, so a crash during
//! rollback is repaired by the next one). On start, a journal left behind by a crash is rolled
//! back. Cost: O(touched files).
//!
//! Closing the journal only removes the file, without an fsync: by then the outcome is durable
//! elsewhere (the ledger entry of a kept apply, or the restored files), and a journal that
//! reappears after a power loss is either found in the ledger and dropped, or rolled back
//! again, which changes nothing.
//!
//! Originals are read, and restored, through the workspace's directory handles
//! ([`crate::beneath`]); entries name workspace-relative paths. Rollback treats a path that
//! cannot exist (not found, a parent that is not a directory, a name too long) as absent.
//! Error texts name workspace-relative paths only; the journal's own location is logged by
//! the caller, never reported.
//!
//! Layout: a first line `ghost-journal 3`, a line with the [`Header`] as JSON, then one JSON
//! line per entry; an entry of a file that existed is followed by exactly `len` bytes of its
//! content and a newline. Layout 2 (absolute paths) is still read and rolled back.

mod atomic;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::beneath::{self, Dirs};

pub use self::atomic::{Unsynced, is_unsynced, temp_path, temp_rel, unsynced, write_atomically};

/// The first line of every journal.
const MAGIC: &[u8] = b"ghost-journal 3\n";
/// The first line of a journal written before entries were workspace-relative.
const MAGIC_ABSOLUTE: &[u8] = b"ghost-journal 2\n";

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
    /// The workspace root the journal's paths are relative to; recovery into another
    /// directory is refused. (Absent in journals written before it was recorded.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<beneath::RootId>,
}

/// One recorded original, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Entry {
    /// A file path: the length and mode of its content (which follows the line), or `None`
    /// when it did not exist.
    File {
        path: String,
        before: Option<(u64, u32)>,
    },
    /// A directory the patch creates.
    Dir { path: String },
}

/// An entry with the original bytes of a file that existed.
#[derive(Debug, Clone)]
struct Original {
    entry: Entry,
    bytes: Vec<u8>,
}

/// What a rollback did.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Files written back.
    pub restored: u32,
    /// Files and directories removed.
    pub removed: u32,
    /// What could not be restored and may be tried again (empty: byte-identical); the
    /// journal is kept and the target refuses patches while it is not.
    pub errors: Vec<String>,
    /// What could not be restored and never will be (a file over `max_file_bytes`, which the
    /// snapshot recorded by stat key only): reported, without blocking the target.
    pub incomplete: Vec<String>,
}

impl Restored {
    /// Adds what another restore did.
    pub fn merge(&mut self, other: Self) {
        self.restored += other.restored;
        self.removed += other.removed;
        self.errors.extend(other.errors);
        self.incomplete.extend(other.incomplete);
    }
}

/// An open journal for one apply.
pub struct Journal {
    path: PathBuf,
    header: Header,
    originals: Vec<Original>,
}

fn journal_folder(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

fn journal_path(state_dir: &Path, target: &str) -> PathBuf {
    journal_folder(state_dir).join(format!("{target}.journal"))
}

/// Where a journal is written before it is sealed (a crash leaves at most this behind, and
/// then nothing was written to the workspace yet).
fn unsealed_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".unsealed");
    PathBuf::from(name)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all().map_err(unsynced)
}

fn remove_if_present(path: &Path) -> std::io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// The folder of the journal layout before this one (a folder per target with a header, a
/// log and blobs); refused rather than guessed at.
fn refuse_old_layout(state_dir: &Path, target: &str) -> std::io::Result<()> {
    let old = journal_folder(state_dir).join(target);
    if old.is_dir() {
        tracing::error!(path = %old.display(), "journal in an older layout found");
        return Err(std::io::Error::other(
            "a journal in the layout of an older executor is in the state dir: finish it with \
             that version (it rolls it back on start) before starting this one",
        ));
    }
    Ok(())
}

impl Journal {
    /// Starts the journal of `target`; fails if one is still there (recover it first).
    /// Nothing is written until [`Journal::seal`].
    pub fn begin(state_dir: &Path, target: &str, header: &Header) -> std::io::Result<Self> {
        refuse_old_layout(state_dir, target)?;
        let path = journal_path(state_dir, target);
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("a journal of target {target} is still open"),
            ));
        }
        Ok(Self {
            path,
            header: header.clone(),
            originals: Vec::new(),
        })
    }

    /// Records the current state of file `rel` (bytes and mode, or absent), read through
    /// `dirs`.
    /// `max_bytes` bounds what is read (the plan already refused larger files).
    pub fn record_file(
        &mut self,
        dirs: &mut Dirs,
        rel: &str,
        max_bytes: u64,
    ) -> std::io::Result<()> {
        let (dir, name) = beneath::split(rel);
        let found = match dirs.dir(dir) {
            Ok(handle) => beneath::read(&handle, name, max_bytes),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        };
        let found =
            found.map_err(|err| std::io::Error::new(err.kind(), format!("{rel}: {err}")))?;
        let (before, bytes) = match found {
            Some((bytes, mode)) => (Some((bytes.len() as u64, mode)), bytes),
            None => (None, Vec::new()),
        };
        self.originals.push(Original {
            entry: Entry::File {
                path: rel.to_owned(),
                before,
            },
            bytes,
        });
        Ok(())
    }

    /// Records a directory the apply is about to create.
    pub fn record_dir(&mut self, rel: &str) {
        self.originals.push(Original {
            entry: Entry::Dir {
                path: rel.to_owned(),
            },
            bytes: Vec::new(),
        });
    }

    /// Writes the journal and makes it durable; only then may the workspace be written.
    pub fn seal(&self) -> std::io::Result<()> {
        let folder = self.path.parent().unwrap_or(Path::new("."));
        // The journal holds the originals of the files a patch touches (and, kept as a revert
        // record, of files it deleted): readable by the executor's user only.
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(folder)?;
        }
        let unsealed = unsealed_path(&self.path);
        remove_if_present(&unsealed)?;
        let result = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let created = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&unsealed)?;
            let mut file = std::io::BufWriter::new(created);
            file.write_all(MAGIC)?;
            serde_json::to_writer(&mut file, &self.header).map_err(std::io::Error::other)?;
            file.write_all(b"\n")?;
            for original in &self.originals {
                serde_json::to_writer(&mut file, &original.entry).map_err(std::io::Error::other)?;
                file.write_all(b"\n")?;
                if let Entry::File {
                    before: Some(_), ..
                } = original.entry
                {
                    file.write_all(&original.bytes)?;
                    file.write_all(b"\n")?;
                }
            }
            let file = file.into_inner().map_err(|err| err.into_error())?;
            file.sync_all().map_err(unsynced)?;
            fs::rename(&unsealed, &self.path)?;
            sync_dir(folder)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&unsealed);
        }
        result
    }

    /// Restores every recorded original, newest first, through the handles the apply used
    /// (so a directory renamed meanwhile is restored where it now is).
    pub fn rollback(&self, dirs: &mut Dirs) -> Restored {
        restore(&self.originals, dirs)
    }

    /// Moves the sealed journal to `dest` (the patch's revert record, see [`crate::revert`])
    /// instead of removing it: its originals are the patch's pre-images, so they are not
    /// copied. Without an fsync: should the rename be lost, the journal is found again on
    /// start, in the ledger, and dropped (the record then is not whole and is ignored).
    /// On failure the journal is handed back, still open.
    pub fn keep_as(self, dest: &Path) -> Result<(), Box<(Self, std::io::Error)>> {
        match fs::rename(&self.path, dest) {
            Ok(()) => Ok(()),
            Err(err) => Err(Box::new((self, err))),
        }
    }

    /// Forgets the journal once the apply is committed or rolled back.
    pub fn close(self) -> std::io::Result<()> {
        remove_if_present(&self.path).map(|_| ())
    }
}

fn restore_file(dirs: &mut Dirs, rel: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = beneath::split(rel);
    let handle = dirs.make_dirs(dir)?;
    beneath::write(&handle, name, bytes, mode)
}

/// Removes what is at file path `rel`: a file, or a directory a command put there (with its
/// contents: nothing in it predates the patch, since a journaled path was a file or absent).
fn remove_file(dirs: &mut Dirs, rel: &str) -> std::io::Result<bool> {
    let (dir, name) = beneath::split(rel);
    let handle = match dirs.dir(dir) {
        Ok(handle) => handle,
        Err(err) if beneath::is_absent(&err) => return Ok(false),
        Err(err) => return Err(err),
    };
    let removed = match beneath::remove(&handle, name) {
        Err(err) if beneath::is(&err, rustix::io::Errno::ISDIR) => {
            dirs.forget(rel);
            beneath::remove_tree(&handle, name)
        }
        other => other,
    };
    dirs.touch(&handle);
    removed
}

/// Removes a directory the patch created, with whatever the patch's commands left in it
/// (build output such as `__pycache__/` or `target/`), never following a symlink.
fn remove_dir(dirs: &mut Dirs, rel: &str) -> std::io::Result<bool> {
    let (dir, name) = beneath::split(rel);
    let removed = match dirs.dir(dir) {
        Ok(handle) => {
            dirs.touch(&handle);
            beneath::remove_tree(&handle, name)
        }
        Err(err) if beneath::is_absent(&err) => Ok(false),
        Err(err) => Err(err),
    };
    // Every cached handle at or below `rel` now names a removed directory.
    dirs.forget_below(rel);
    removed
}

fn restore(originals: &[Original], dirs: &mut Dirs) -> Restored {
    let mut done = Restored::default();
    for original in originals.iter().rev() {
        match &original.entry {
            Entry::File {
                path,
                before: Some((_, mode)),
            } => match restore_file(dirs, path, &original.bytes, *mode) {
                Ok(()) => done.restored += 1,
                Err(err) => done.errors.push(format!("{path}: {err}")),
            },
            Entry::File { path, before: None } => match remove_file(dirs, path) {
                Ok(true) => done.removed += 1,
                Ok(false) => {}
                Err(err) => done.errors.push(format!("{path}: {err}")),
            },
            Entry::Dir { path } => match remove_dir(dirs, path) {
                Ok(true) => done.removed += 1,
                Ok(false) => {}
                Err(err) => done.errors.push(format!("{path}: {err}")),
            },
        }
    }
    // The restored entries are durable before the journal is closed.
    if let Err(err) = dirs.sync_touched() {
        done.errors
            .push(format!("syncing the restored directories: {err}"));
    }
    done
}

/// Turns the absolute paths of a layout-2 entry into workspace-relative ones.
fn relative_entry(entry: Entry, root: &Path) -> Result<Entry, String> {
    let relative = |path: String| -> Result<String, String> {
        let inside = Path::new(&path)
            .strip_prefix(root)
            .map_err(|_| "an entry of the older layout lies outside the workspace".to_owned())?;
        inside
            .to_str()
            .filter(|rel| !rel.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| "an entry of the older layout is not a path in the workspace".to_owned())
    };
    Ok(match entry {
        Entry::File { path, before } => Entry::File {
            path: relative(path)?,
            before,
        },
        Entry::Dir { path } => Entry::Dir {
            path: relative(path)?,
        },
    })
}

/// Reads a sealed journal: its header and entries with their original bytes.
fn parse(bytes: &[u8], root: &Path) -> Result<(Header, Vec<Original>), String> {
    let (mut rest, absolute) = match (
        bytes.strip_prefix(MAGIC),
        bytes.strip_prefix(MAGIC_ABSOLUTE),
    ) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err("it does not start with the journal marker".to_owned()),
    };
    let line = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let end = rest.iter().position(|byte| *byte == b'\n')?;
        let line = rest[..end].to_vec();
        *rest = &rest[end + 1..];
        Some(line)
    };
    let header_line = line(&mut rest).ok_or("the header is missing")?;
    let header: Header =
        serde_json::from_slice(&header_line).map_err(|err| format!("header: {err}"))?;
    let mut originals = Vec::new();
    while !rest.is_empty() {
        let entry_line = line(&mut rest).ok_or("an entry is cut short")?;
        let entry: Entry =
            serde_json::from_slice(&entry_line).map_err(|err| format!("entry: {err}"))?;
        let entry = if absolute {
            relative_entry(entry, root)?
        } else {
            entry
        };
        let mut bytes = Vec::new();
        if let Entry::File {
            before: Some((len, _)),
            ..
        } = &entry
        {
            let len = usize::try_from(*len).map_err(|_| "an entry is too long")?;
            if rest.len() < len + 1 || rest[len] != b'\n' {
                return Err("a file's original bytes are cut short".to_owned());
            }
            bytes = rest[..len].to_vec();
            rest = &rest[len + 1..];
        }
        originals.push(Original { entry, bytes });
    }
    Ok((header, originals))
}

/// One file path's original in a kept journal: its bytes and mode, or `None` when the path
/// did not exist.
pub(crate) type KeptOriginal = (String, Option<(Vec<u8>, u32)>);

/// Reads a journal kept as a revert record: its header and the original of every file path
/// the patch touched (temp files and created directories left out), in journal order.
pub(crate) fn read_kept(bytes: &[u8]) -> Result<(Header, Vec<KeptOriginal>), String> {
    if !bytes.starts_with(MAGIC) {
        return Err("it does not start with the journal marker".to_owned());
    }
    let (header, originals) = parse(bytes, Path::new("/"))?;
    let kept = originals
        .into_iter()
        .filter_map(|original| match original.entry {
            Entry::File { path, before } => {
                let (_, name) = beneath::split(&path);
                (!beneath::is_temp_name(name))
                    .then(|| (path, before.map(|(_, mode)| (original.bytes, mode))))
            }
            Entry::Dir { .. } => None,
        })
        .collect();
    Ok((header, kept))
}

/// A journal left behind by a crash, rolled back.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Whose it was.
    pub header: Header,
    /// What the rollback did.
    pub restored: Restored,
}

/// True when `target` has a sealed journal (an apply in flight, or one left behind).
pub fn is_open(state_dir: &Path, target: &str) -> bool {
    journal_path(state_dir, target).exists()
}

/// The path `allowed` must accept before a journaled entry is restored: the entry's own, or
/// for a temp file (`.<name>.ghost-tmp`, refused as a patch path) its directory's.
fn checked_path(rel: &str) -> Option<&str> {
    match beneath::split(rel) {
        ("", name) if beneath::is_temp_name(name) => None,
        (dir, name) if beneath::is_temp_name(name) => Some(dir),
        _ => Some(rel),
    }
}

/// Rolls back a leftover journal of `target` in the workspace at `root`, if any, unless
/// `applied` says the patch had completed (then the journal is only removed). Every entry
/// must pass `allowed` (the patch-path check: a tampered journal cannot restore into `.git/`
/// or a state dir), else nothing is restored and the journal is kept. Returns what was
/// found; a journal that cannot be fully rolled back is kept.
///
/// `root_id` is the identity of `root` recorded at start: a root that is no longer that
/// directory, or a journal written for another root, is refused and the journal kept.
///
/// With `snapshot`, a snapshot still in force (the patch's commands had started) is restored
/// first, then the edits are rolled back; for an applied patch it is only released.
pub fn recover(
    state_dir: &Path,
    target: &str,
    root: &Path,
    root_id: beneath::RootId,
    allowed: impl Fn(&str) -> Result<(), String>,
    applied: impl Fn(&Header) -> bool,
    snapshot: Option<&crate::snapshot::Scope>,
) -> std::io::Result<Option<Recovered>> {
    refuse_old_layout(state_dir, target)?;
    let path = journal_path(state_dir, target);
    // A crash before the seal: nothing was written to the workspace yet.
    remove_if_present(&unsealed_path(&path))?;
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    // A sealed journal was synced before its rename, so it is whole; one that does not parse
    // is kept for a person to look at rather than guessed at.
    let (header, originals) = parse(&bytes, root).map_err(|reason| {
        tracing::error!(path = %path.display(), %reason, "unreadable journal left in place");
        std::io::Error::other(format!(
            "the journal of target {target} cannot be read ({reason}); it is left in place"
        ))
    })?;
    if header.root.is_some_and(|written| written != root_id) {
        tracing::error!(path = %path.display(), "journal written for another workspace root; left in place");
        return Err(std::io::Error::other(format!(
            "the journal of target {target} was written for another workspace root (device \
             and inode differ); it is left in place"
        )));
    }
    for original in &originals {
        let (Entry::File { path: rel, .. } | Entry::Dir { path: rel }) = &original.entry;
        if let Some(checked) = checked_path(rel)
            && let Err(reason) = allowed(checked)
        {
            tracing::error!(path = %path.display(), %reason, "journal names a path patches may not touch; left in place");
            return Err(std::io::Error::other(format!(
                "the journal of target {target} names a path patches may not touch ({reason}); \
                 it is left in place"
            )));
        }
    }
    let restored = if applied(&header) {
        if let Some(scope) = snapshot {
            crate::snapshot::release(scope)?;
        }
        Restored::default()
    } else {
        let (mut restored, in_force) = match snapshot.map(crate::snapshot::recover) {
            Some(found) => match found? {
                Some(restored) => (restored, true),
                None => (Restored::default(), false),
            },
            None => (Restored::default(), false),
        };
        restored.merge(restore(&originals, &mut Dirs::open_checked(root, root_id)?));
        let edited_ignore_file = originals.iter().any(|original| {
            matches!(&original.entry, Entry::File { path, .. } if crate::snapshot::is_ignore_file(path))
        });
        if let Some(scope) = snapshot
            && in_force
            && edited_ignore_file
            && restored.errors.is_empty()
        {
            restored.merge(crate::snapshot::prune_recorded(scope)?);
        }
        // The snapshot's marker goes last, once everything is back (a crash before this
        // restores it all again), and before the journal.
        if let Some(scope) = snapshot
            && in_force
            && restored.errors.is_empty()
        {
            crate::snapshot::release(scope)?;
        }
        restored
    };
    if restored.errors.is_empty() {
        remove_if_present(&path)?;
    }
    Ok(Some(Recovered { header, restored }))
}

#[cfg(test)]
fn id(root: &Path) -> beneath::RootId {
    beneath::RootId::of(root).unwrap()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
            root: None,
        };
        let mut journal = Journal::begin(&state, "MAIN", &header).unwrap();
        let mut dirs = Dirs::open(&ws).unwrap();
        journal.record_file(&mut dirs, "a", u64::MAX).unwrap();
        journal.record_dir("new");
        journal.record_file(&mut dirs, "new/b", u64::MAX).unwrap();
        journal.seal().unwrap();
        write_atomically(&ws.join("a"), b"changed", 0o755).unwrap();
        fs::create_dir(ws.join("new")).unwrap();
        fs::write(ws.join("new/b"), "b").unwrap();
        // A crash here: the next start finds the journal and rolls it back.
        drop(journal);
        let recovered = recover(&state, "MAIN", &ws, id(&ws), |_| Ok(()), |_| false, None)
            .unwrap()
            .unwrap();
        assert_eq!(recovered.header, header);
        assert!(recovered.restored.errors.is_empty());
        assert_eq!(fs::read_to_string(ws.join("a")).unwrap(), "original");
        let mode = fs::metadata(ws.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!ws.join("new").exists());
        assert!(
            recover(&state, "MAIN", &ws, id(&ws), |_| Ok(()), |_| false, None)
                .unwrap()
                .is_none()
        );
    }

    fn header() -> Header {
        Header {
            patch_id: "p".to_owned(),
            content_hash: "h".to_owned(),
            attempt: 1,
            fencing_token: 7,
            root: None,
        }
    }

    #[test]
    fn originals_with_newlines_and_binary_bytes_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ws = dir.path().join("ws");
        fs::create_dir_all(&ws).unwrap();
        let original: Vec<u8> = (0..=255u8)
            .chain(b"\n\n{\"kind\":\"dir\"}\n".iter().copied())
            .collect();
        fs::write(ws.join("bin"), &original).unwrap();
        fs::write(ws.join("empty"), b"").unwrap();
        let mut journal = Journal::begin(&state, "MAIN", &header()).unwrap();
        let mut dirs = Dirs::open(&ws).unwrap();
        journal.record_file(&mut dirs, "bin", u64::MAX).unwrap();
        journal.record_file(&mut dirs, "empty", u64::MAX).unwrap();
        journal.seal().unwrap();
        fs::write(ws.join("bin"), "x").unwrap();
        fs::write(ws.join("empty"), "y").unwrap();
        drop(journal);
        let recovered = recover(&state, "MAIN", &ws, id(&ws), |_| Ok(()), |_| false, None)
            .unwrap()
            .unwrap();
        assert_eq!(recovered.restored.restored, 2);
        assert_eq!(fs::read(ws.join("bin")).unwrap(), original);
        assert_eq!(fs::read(ws.join("empty")).unwrap(), b"");
    }

    #[test]
    fn an_unsealed_journal_means_nothing_was_written_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = journal_path(&state, "MAIN");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(unsealed_path(&path), b"ghost-journal 3\n{\"patch_").unwrap();
        assert!(
            recover(
                &state,
                "MAIN",
                dir.path(),
                id(dir.path()),
                |_| Ok(()),
                |_| false,
                None
            )
            .unwrap()
            .is_none()
        );
        assert!(!unsealed_path(&path).exists());
    }

    #[test]
    fn a_journal_that_does_not_parse_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let path = journal_path(&state, "MAIN");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"ghost-journal 3\n{}\n").unwrap();
        let err = recover(
            &state,
            "MAIN",
            dir.path(),
            id(dir.path()),
            |_| Ok(()),
            |_| false,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
        assert!(path.exists());
    }

    #[test]
    fn a_tampered_journal_naming_a_forbidden_path_or_another_root_restores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ws = dir.path().join("ws");
        fs::create_dir_all(ws.join(".git/hooks")).unwrap();
        let path = journal_path(&state, "MAIN");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let first = r#"{"patch_id":"p","content_hash":"h","attempt":1,"fencing_token":7}"#;
        let hook =
            "{\"kind\":\"file\",\"path\":\".git/hooks/post-commit\",\"before\":[5,493]}\nevil!\n";
        fs::write(&path, format!("ghost-journal 3\n{first}\n{hook}")).unwrap();
        let refuse_git = |rel: &str| {
            if rel.starts_with(".git") {
                Err("inside .git".to_owned())
            } else {
                Ok(())
            }
        };
        let err = recover(&state, "MAIN", &ws, id(&ws), refuse_git, |_| false, None).unwrap_err();
        assert!(err.to_string().contains("may not touch"), "{err}");
        assert!(!ws.join(".git/hooks/post-commit").exists());
        assert!(path.exists());
        // A journal written for another root (device and inode recorded) is refused too.
        let other = beneath::RootId { dev: 0, ino: 1 };
        let header = serde_json::to_string(&Header {
            root: Some(other),
            ..header()
        })
        .unwrap();
        fs::write(
            &path,
            format!(
                "ghost-journal 3\n{header}\n{{\"kind\":\"file\",\"path\":\"a\",\"before\":null}}\n"
            ),
        )
        .unwrap();
        fs::write(ws.join("a"), "keep").unwrap();
        let err = recover(&state, "MAIN", &ws, id(&ws), |_| Ok(()), |_| false, None).unwrap_err();
        assert!(err.to_string().contains("another workspace root"), "{err}");
        assert_eq!(fs::read_to_string(ws.join("a")).unwrap(), "keep");
    }

    #[test]
    fn a_journal_of_the_old_layout_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir_all(state.join("journal/MAIN/blobs")).unwrap();
        let err = recover(
            &state,
            "MAIN",
            dir.path(),
            id(dir.path()),
            |_| Ok(()),
            |_| false,
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("older executor"), "{err}");
        assert!(Journal::begin(&state, "MAIN", &header()).is_err());
    }
}

#[cfg(test)]
mod layout_2 {
    use super::*;

    #[test]
    fn a_journal_with_absolute_paths_is_rolled_back_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let ws = dir.path().join("ws");
        fs::create_dir_all(ws.join("new")).unwrap();
        fs::write(ws.join("a"), "changed").unwrap();
        fs::write(ws.join("new/b"), "b").unwrap();
        let path = journal_path(&state, "MAIN");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let entries = format!(
            "{{\"patch_id\":\"p\",\"content_hash\":\"h\",\"attempt\":1,\"fencing_token\":7}}\n\
             {{\"kind\":\"file\",\"path\":\"{a}\",\"before\":[8,420]}}\noriginal\n\
             {{\"kind\":\"dir\",\"path\":\"{new}\"}}\n\
             {{\"kind\":\"file\",\"path\":\"{b}\",\"before\":null}}\n",
            a = ws.join("a").display(),
            new = ws.join("new").display(),
            b = ws.join("new/b").display(),
        );
        fs::write(&path, [MAGIC_ABSOLUTE, entries.as_bytes()].concat()).unwrap();
        let recovered = recover(&state, "MAIN", &ws, id(&ws), |_| Ok(()), |_| false, None)
            .unwrap()
            .unwrap();
        assert!(
            recovered.restored.errors.is_empty(),
            "{:?}",
            recovered.restored
        );
        assert_eq!(fs::read_to_string(ws.join("a")).unwrap(), "original");
        assert!(!ws.join("new").exists());
        // An absolute path outside the root is never touched.
        let outside = dir.path().join("outside");
        fs::write(&outside, "keep").unwrap();
        let entries = format!(
            "{{\"patch_id\":\"p\",\"content_hash\":\"h\",\"attempt\":1,\"fencing_token\":7}}\n\
             {{\"kind\":\"file\",\"path\":\"{}\",\"before\":null}}\n",
            outside.display()
        );
        fs::write(&path, [MAGIC_ABSOLUTE, entries.as_bytes()].concat()).unwrap();
        assert!(recover(&state, "MAIN", &ws, id(&ws), |_| Ok(()), |_| false, None).is_err());
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
    }
}
