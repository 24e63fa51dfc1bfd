//! Complete rollback: a snapshot of the workspace taken before a patch's first command, so
//! whatever its commands and checks change (`prettier --write`, codegen, `npm install`) is
//! undone with the edits on failure, deadline, cancel or crash.
//!
//! **What is in it.** Every regular file, symlink and directory under the root, found by a
//! walk that never follows a symlink, except:
//! - `.git` and `.ghost` at the top, the executor's state dir and the agent inbox
//!   when they lie inside the root;
//! - in a git work tree (the root has a `.git`), the untracked paths its `.gitignore` files
//!   ignore (`git ls-files --others --ignored --exclude-per-directory=.gitignore
//!   --directory`; not `.git/info/exclude` nor the user's excludes, which a command could
//!   change unseen): build outputs and `node_modules` are left alone, neither snapshotted nor
//!   removed;
//! - what the target's `rollback_ignore` globs say: the entries are read in order over the
//!   result of `.gitignore` and the last one that matches a path decides, `glob` leaving it
//!   alone and `!glob` taking it in (even a path `.gitignore` ignores). A directory left
//!   alone is not walked unless some `!glob` could take in something below it;
//! - devices, sockets and FIFOs (never made by a rollback).
//!
//! **How.** A manifest (path → mode, and for a file size, mtime, ctime, inode and sha256;
//! for a symlink its target) is kept per target under `<state_dir>/snapshots/<target>/`
//! with the bytes of each file once in a content-addressed store (`blobs/xx/<sha256>`).
//! It is incremental: a file whose stat key (size, mtime, ctime, inode, mode) matches the
//! previous manifest is neither read nor copied again, except a *racy* one (modified within
//! [`RACY_NS`] of the scan that recorded it, git's racy-clean rule), which is hashed again.
//! Blobs only the previous manifest needed are removed once the new one is durable.
//!
//! **Crash safety.** The blobs are flushed (one `syncfs`), the manifest is written through a
//! synced temp file and a rename, and only then an `in-force` marker is written (synced):
//! before the first command starts. On restart, a journal left open with the marker present
//! restores the snapshot first and then rolls back the edits journal; restoring is
//! idempotent, so a crash during it is repaired by the next one. The marker is removed once
//! the patch is recorded applied, or once its rollback is complete.
//!
//! **Restoring** works through directory handles, never following a symlink (a command may
//! plant one anywhere): the manifest's directories are made again (a file or symlink in
//! their place removed), its files and symlinks compared by stat key (and hash when racy)
//! and written back byte for byte with their mode where they differ (a directory in their
//! place removed whole); only then is the tree listed again, with the `.gitignore` files
//! already restored, and every path not in the manifest removed. An ignore rule counts only
//! when it comes from a `.gitignore` the manifest has, unchanged, so a command cannot hide
//! what it made behind a `.gitignore` it wrote (nor from a `changed:` owner check).
//!
//! **Limits.** A file over `max_file_bytes` is recorded by stat key only: if a command
//! changes it, the rollback says it could not restore it (in the report's `rollback.error`)
//! without blocking the target, since trying again cannot help. Modification times are not
//! restored. Paths are bytes: names that are not UTF-8 are snapshotted and restored too.

mod manifest;
mod restore;
mod scope;
mod store;

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::beneath;
use crate::git;
use crate::journal::Restored;

pub use self::manifest::Manifest;
use self::manifest::{Key, Node};
use self::restore::{remove_unrecorded, restore, same_node, sync_touched, trusted_ignored};
pub use self::scope::Scope;
pub use self::store::sweep_temp;
use self::store::{collect, store_blob, sync_blobs};

/// A file modified this close (in nanoseconds) to the scan that recorded it is hashed again
/// next time rather than trusted by its stat key: a later write within the same timestamp
/// tick would not change the key.
pub const RACY_NS: i128 = 2_000_000_000;

const MAGIC: &[u8] = b"ghost-snapshot 1\n";
const MANIFEST: &str = "manifest";
const MARKER: &str = "in-force";
/// The durable copy of the `.git` guard's files (absent: the workspace had no `.git`).
const GIT_GUARD: &str = "git-guard";
/// Deepest directory level walked; deeper is refused (a snapshot that cannot see everything
/// would make the rollback incomplete).
const MAX_DEPTH: usize = 512;

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        return name.to_vec();
    }
    let mut rel = Vec::with_capacity(prefix.len() + 1 + name.len());
    rel.extend_from_slice(prefix);
    rel.push(b'/');
    rel.extend_from_slice(name);
    rel
}

fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn with_path(err: io::Error, rel: &[u8]) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", show(rel)))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)
        })
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `path` through a synced temp file and a rename (the executor's own state dir).
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = crate::journal::temp_path(path);
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Reads regular file `name` of `dir` (never following a symlink), up to `cap` bytes;
/// `None` when it is no longer a regular file.
fn read_file(dir: &OwnedFd, name: &CStr, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(err) if err == Errno::NOENT || err == Errno::LOOP => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(stat.st_size).unwrap_or(0));
    std::fs::File::from(fd)
        .take(cap.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(Errno::FBIG.into());
    }
    Ok(Some(bytes))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Figures of one snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Taken {
    /// Paths recorded.
    pub entries: usize,
    /// Files read and hashed (the others matched the previous manifest by stat key).
    pub hashed: usize,
    /// Blobs written (content not in the store yet).
    pub stored: usize,
    /// Bytes of the blobs written.
    pub stored_bytes: u64,
    /// Blobs removed because no manifest needs them any more.
    pub collected: usize,
}

/// A snapshot in force for one patch.
#[derive(Debug)]
pub struct Snapshot {
    manifest: Manifest,
    /// The root's `.git` when the snapshot was taken.
    git: git::Identity,
    /// Copies of what git obeys under `.git` (`None`: no `.git` directory).
    guard: Option<git::Guard>,
    /// Figures of the scan.
    pub taken: Taken,
}

/// Records the workspace, durably, and marks the snapshot in force (`label` names the patch,
/// for a person reading the state dir). Call before the patch's first command.
pub fn take(scope: &Scope, label: &str) -> io::Result<Snapshot> {
    std::fs::create_dir_all(scope.dir.join("blobs"))?;
    let git = git::Identity::of(&scope.root);
    let guard = git::Guard::take(&scope.root).map_err(io::Error::other)?;
    let manifest_path = scope.dir.join(MANIFEST);
    let previous = match std::fs::read(&manifest_path) {
        Ok(bytes) => Manifest::decode(&bytes).ok(),
        Err(_) => None,
    };
    let ignored: HashSet<Vec<u8>> = scope.git_ignored()?.into_iter().collect();
    let taken_ns = now_ns();
    let mut entries = BTreeMap::new();
    let mut scan = Scan {
        scope,
        previous: previous.as_ref(),
        taken_ns,
        taken: Taken::default(),
        made_dirs: HashSet::new(),
        new_blobs: Vec::new(),
        total_bytes: 0,
    };
    let walked = scope.walk(&ignored, &mut |dir, name, rel, stat| {
        if entries.len() as u64 >= scope.max_files {
            return Err(io::Error::other(format!(
                "the workspace has more than {} files, directories and symlinks in scope \
                 (max_snapshot_files); the snapshot is refused",
                scope.max_files
            )));
        }
        let node = match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => Node::Dir {
                mode: stat.st_mode & 0o7777,
            },
            FileType::Symlink => Node::Symlink {
                target: rustix::fs::readlinkat(dir, name, Vec::new())
                    .map_err(|err| with_path(err.into(), rel))?
                    .into_bytes(),
            },
            FileType::RegularFile => match scan.file(dir, name, rel, stat)? {
                Some(node) => node,
                None => return Ok(false),
            },
            _ => return Ok(false),
        };
        let descend = matches!(node, Node::Dir { .. });
        entries.insert(rel.to_vec(), node);
        Ok(descend)
    });
    if let Err(err) = walked {
        // The blobs this scan added are no manifest's: not left to fill the store.
        let known = previous.as_ref().map(Manifest::hashes).unwrap_or_default();
        for hash in scan.new_blobs.iter().filter(|hash| !known.contains(*hash)) {
            let _ = std::fs::remove_file(scope.blob_path(hash));
        }
        return Err(err);
    }
    let Scan {
        mut taken,
        made_dirs,
        ..
    } = scan;
    let manifest = Manifest { taken_ns, entries };
    sync_blobs(scope, &taken, &made_dirs)?;
    // Nothing changed since the last snapshot (the usual case between patches): the manifest
    // on disk already says all this, and no blob became garbage.
    let unchanged = previous
        .as_ref()
        .is_some_and(|previous| previous.entries == manifest.entries);
    if !unchanged {
        write_durably(&manifest_path, &manifest.encode())?;
        taken.collected = collect(scope, previous.as_ref(), &manifest);
    }
    keep_guard(scope, guard.as_ref())?;
    write_durably(&scope.dir.join(MARKER), label.as_bytes())?;
    taken.entries = manifest.len();
    Ok(Snapshot {
        manifest,
        git,
        guard,
        taken,
    })
}

/// One snapshot's walk so far: what it hashed and stored, the blob folders it made, the new
/// blobs (removed if the walk fails), and the bytes in scope.
struct Scan<'a> {
    /// What the snapshot covers.
    scope: &'a Scope,
    /// The last snapshot's manifest, whose hashes are kept for unchanged files.
    previous: Option<&'a Manifest>,
    /// When this snapshot was taken (a file changed within [`RACY_NS`] of it is re-read).
    taken_ns: i128,
    /// What was done so far.
    taken: Taken,
    /// The blob folders made (by the hash's first byte), synced at the end.
    made_dirs: HashSet<u8>,
    /// The blobs this walk stored.
    new_blobs: Vec<[u8; 32]>,
    /// The bytes of the files in scope so far.
    total_bytes: u64,
}

impl Scan<'_> {
    /// A regular file's node: its hash kept from the last manifest when its key (size and
    /// times) is unchanged and was not racy, else read, hashed and stored; `None` when it
    /// went away meanwhile. Refused past the snapshot's byte limit.
    fn file(
        &mut self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &[u8],
        stat: &rustix::fs::Stat,
    ) -> io::Result<Option<Node>> {
        let scope = self.scope;
        let key = Key::of(stat);
        if key.size <= scope.max_file_bytes {
            self.total_bytes = self.total_bytes.saturating_add(key.size);
        }
        if self.total_bytes > scope.max_bytes {
            return Err(io::Error::other(format!(
                "the workspace's files in scope hold more than {} bytes \
                 (max_snapshot_bytes); the snapshot is refused",
                scope.max_bytes
            )));
        }
        let racy = key.mtime >= self.taken_ns - RACY_NS;
        let known = self.previous.and_then(|p| p.entries.get(rel));
        let hash = match known {
            Some(Node::File {
                key: was,
                hash: Some(hash),
                racy: false,
            }) if *was == key => Some(*hash),
            _ if key.size > scope.max_file_bytes => None,
            _ => {
                self.taken.hashed += 1;
                match read_file(dir, name, scope.max_file_bytes) {
                    Ok(Some(bytes)) => {
                        let hash = digest(&bytes);
                        if store_blob(scope, &hash, &bytes, &mut self.made_dirs, &mut self.taken)
                            .map_err(|err| with_path(err, rel))?
                        {
                            self.new_blobs.push(hash);
                        }
                        Some(hash)
                    }
                    Ok(None) => return Ok(None),
                    Err(err) if beneath::is(&err, Errno::FBIG) => None,
                    Err(err) => return Err(with_path(err, rel)),
                }
            }
        };
        Ok(Some(Node::File { key, hash, racy }))
    }
}

/// Keeps the `.git` guard's copies durably beside the manifest, before the marker, so that
/// a restart after a crash puts `.git/config`, `info/` and `hooks/` back as well (written
/// only when they differ from the copy already there, the usual case between patches).
fn keep_guard(scope: &Scope, guard: Option<&git::Guard>) -> io::Result<()> {
    let path = scope.dir.join(GIT_GUARD);
    let Some(guard) = guard else {
        return match std::fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        };
    };
    let bytes = guard.encode();
    if std::fs::read(&path).is_ok_and(|kept| kept == bytes) {
        return Ok(());
    }
    write_durably(&path, &bytes)
}

/// After a crash: puts the `.git` guard's kept copies back when `.git` is still a directory
/// and they differ from it.
fn recover_guard(scope: &Scope, done: &mut Restored) {
    let bytes = match std::fs::read(scope.dir.join(GIT_GUARD)) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return,
        Err(err) => {
            done.errors
                .push(format!("cannot read the kept copies of .git: {err}"));
            return;
        }
    };
    let guard = match git::Guard::decode(&bytes) {
        Ok(guard) => guard,
        Err(err) => {
            done.errors.push(err);
            return;
        }
    };
    let is_dir = std::fs::symlink_metadata(scope.root.join(".git")).is_ok_and(|meta| meta.is_dir());
    if !is_dir || guard.changed(&scope.root).is_none() {
        return;
    }
    match guard.restore(&scope.root) {
        Ok(count) => done.restored += count,
        Err(err) => done.errors.push(format!("cannot restore .git: {err}")),
    }
}

/// True when a snapshot of this scope is in force (taken, not yet released).
pub fn in_force(scope: &Scope) -> bool {
    scope.dir.join(MARKER).exists()
}

/// Ends the snapshot in force: the patch is recorded (or its rollback complete).
pub fn release(scope: &Scope) -> io::Result<()> {
    match std::fs::remove_file(scope.dir.join(MARKER)) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Restores the snapshot in force, if any, after a crash. The marker stays: the caller
/// releases it once the edits journal is rolled back too (and the prune done), so a crash
/// in between restores the snapshot again.
pub fn recover(scope: &Scope) -> io::Result<Option<Restored>> {
    if !in_force(scope) {
        return Ok(None);
    }
    let bytes = std::fs::read(scope.dir.join(MANIFEST))?;
    let manifest = Manifest::decode(&bytes).map_err(io::Error::other)?;
    // `.git`'s guarded paths first, before anything runs git again (as `Snapshot::restore`).
    let mut done = Restored::default();
    recover_guard(scope, &mut done);
    done.merge(restore(scope, &manifest, None));
    Ok(Some(done))
}

impl Snapshot {
    /// Workspace-relative paths that differ from the snapshot now (changed, made or removed).
    pub fn changed(&self, scope: &Scope) -> io::Result<Vec<Vec<u8>>> {
        // As the rollback would see it: a command cannot keep a change out of a `changed:`
        // check by ignoring it in a `.gitignore` it edited.
        let ignored = trusted_ignored(scope, &self.manifest)?;
        let mut changed = Vec::new();
        let mut seen = HashSet::new();
        scope.walk(&ignored, &mut |dir, name, rel, stat| {
            seen.insert(rel.to_vec());
            let same = match self.manifest.entries.get(rel) {
                None => false,
                Some(node) => same_node(scope, node, dir, name, stat)?,
            };
            if !same {
                changed.push(rel.to_vec());
            }
            Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
        })?;
        changed.extend(
            self.manifest
                .entries
                .keys()
                .filter(|rel| !seen.contains(*rel))
                .cloned(),
        );
        Ok(changed)
    }

    /// What `rel` was when the snapshot was taken: `Ok(None)` when it was no regular file
    /// (absent, a directory, a symlink), `Err` when its bytes were not kept (over
    /// `max_file_bytes`) or cannot be read from the store.
    pub fn original(&self, scope: &Scope, rel: &[u8]) -> io::Result<Option<(Vec<u8>, u32)>> {
        match self.manifest.entries.get(rel) {
            Some(Node::File {
                key,
                hash: Some(hash),
                ..
            }) => Ok(Some((std::fs::read(scope.blob_path(hash))?, key.mode))),
            Some(Node::File { hash: None, .. }) => Err(io::Error::other(
                "over max_file_bytes: recorded by its stat key only",
            )),
            _ => Ok(None),
        }
    }

    /// How the root's `.git` differs from when the snapshot was taken, if it does: itself
    /// (removed, replaced, its config), or the first of its guarded paths (hooks, info/).
    pub fn git_changed(&self, scope: &Scope) -> Option<String> {
        if let Some(what) = git::Identity::of(&scope.root).changed_from(&self.git)
            && what != git::CONFIG_CHANGED
        {
            return Some(what.to_owned());
        }
        let guard = self.guard.as_ref()?;
        guard
            .changed(&scope.root)
            .map(|path| format!("{path} was changed"))
    }

    /// Why git's listing of ignored paths cannot be trusted now: `.git` is not the one the
    /// snapshot saw (a `gitdir:` file or a symlink could point git at another work tree).
    fn distrust(&self, scope: &Scope) -> Option<&'static str> {
        git::Identity::of(&scope.root)
            .changed_from(&self.git)
            .filter(|what| *what != git::CONFIG_CHANGED)
    }

    /// Puts the guarded paths under `.git` back (when `.git` is still the directory the
    /// snapshot saw), before anything runs git again; what cannot be put back is an error,
    /// which keeps the target blocked like any rollback that could not finish.
    fn restore_git(&self, scope: &Scope, done: &mut Restored) {
        let Some(guard) = &self.guard else {
            return;
        };
        if self.distrust(scope).is_some() || guard.changed(&scope.root).is_none() {
            return;
        }
        match guard.restore(&scope.root) {
            Ok(count) => done.restored += count,
            Err(err) => done.errors.push(format!("cannot restore .git: {err}")),
        }
    }

    /// Puts the workspace back as the snapshot recorded it, `.git`'s guarded paths first.
    pub fn restore(&self, scope: &Scope) -> Restored {
        let mut done = Restored::default();
        self.restore_git(scope, &mut done);
        let distrust = self.distrust(scope);
        done.merge(restore(scope, &self.manifest, distrust));
        done
    }

    /// After the edits journal rolled back a patch that edited a `.gitignore`: removes what
    /// the commands made that only the patch's own ignore rules had left alone.
    pub fn prune(&self, scope: &Scope) -> Restored {
        let distrust = self.distrust(scope);
        prune(scope, &self.manifest, distrust)
    }
}

/// [`Snapshot::prune`] after a crash, from the manifest on disk.
pub fn prune_recorded(scope: &Scope) -> io::Result<Restored> {
    let bytes = std::fs::read(scope.dir.join(MANIFEST))?;
    let manifest = Manifest::decode(&bytes).map_err(io::Error::other)?;
    Ok(prune(scope, &manifest, None))
}

fn prune(scope: &Scope, manifest: &Manifest, distrust: Option<&str>) -> Restored {
    let mut done = Restored::default();
    let mut touched = HashSet::new();
    remove_unrecorded(scope, manifest, distrust, &mut done, &mut touched);
    if let Ok(root) = scope.open_root() {
        sync_touched(&root, &touched, &mut done);
    }
    done
}

/// True when `rel` names a `.gitignore` file (whose rules a rollback must apply as they were
/// before the patch).
pub fn is_ignore_file(rel: &str) -> bool {
    rel == ".gitignore" || rel.ends_with("/.gitignore")
}

/// Paths as the owner checks' `changed:` globs see them.
pub fn as_paths(changed: &[Vec<u8>]) -> Vec<PathBuf> {
    changed
        .iter()
        .map(|rel| PathBuf::from(OsStr::from_bytes(rel)))
        .collect()
}

/// Blobs in the store (for tests and the cost example).
#[doc(hidden)]
pub fn blob_count(scope: &Scope) -> usize {
    std::fs::read_dir(scope.dir.join("blobs")).map_or(0, |fans| {
        fans.flatten()
            .map(|fan| std::fs::read_dir(fan.path()).map_or(0, |d| d.flatten().count()))
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use rustix::fs::AtFlags;

    use super::*;
    use crate::beneath::RootId;
    use crate::config::TargetPolicy;
    use crate::workspace::Workspace;

    fn scope(dir: &Path) -> (Workspace, Scope) {
        let root = dir.join("ws");
        std::fs::create_dir_all(&root).unwrap();
        let root = std::fs::canonicalize(root).unwrap();
        let workspace = Workspace {
            target: "MAIN".to_owned(),
            root: root.clone(),
            state_dir: dir.join("state"),
            policy: TargetPolicy::default(),
        };
        let id = RootId::of(&root).unwrap();
        let scope = Scope::new(&workspace, id, 1024 * 1024).unwrap();
        (workspace, scope)
    }

    /// Moves every file's mtime an hour back, out of the racy window.
    fn age(root: &Path) {
        let old = rustix::fs::Timespec {
            tv_sec: i64::try_from(now_ns() / 1_000_000_000).unwrap() - 3600,
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: old,
            last_modification: old,
        };
        for entry in std::fs::read_dir(root).unwrap().flatten() {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                entry.path(),
                &times,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }

    #[test]
    fn an_unchanged_file_is_not_read_again_a_changed_one_is_and_old_blobs_go() {
        let dir = tempfile::tempdir().unwrap();
        let (workspace, scope) = scope(dir.path());
        for i in 0..5 {
            std::fs::write(workspace.root.join(format!("f{i}")), format!("content {i}")).unwrap();
        }
        age(&workspace.root);
        let first = take(&scope, "one").unwrap();
        assert_eq!(
            (first.taken.entries, first.taken.hashed, first.taken.stored),
            (5, 5, 5)
        );
        release(&scope).unwrap();
        let second = take(&scope, "two").unwrap();
        assert_eq!((second.taken.hashed, second.taken.stored), (0, 0));
        release(&scope).unwrap();
        std::fs::write(workspace.root.join("f0"), "changed").unwrap();
        let third = take(&scope, "three").unwrap();
        assert_eq!(
            (
                third.taken.hashed,
                third.taken.stored,
                third.taken.collected
            ),
            (1, 1, 1)
        );
        assert_eq!(blob_count(&scope), 5);
        // f0 is racy now (just written): hashed again next time even with its key unchanged.
        release(&scope).unwrap();
        let fourth = take(&scope, "four").unwrap();
        assert_eq!(fourth.taken.hashed, 1);
    }

    #[test]
    fn the_manifest_round_trips_bytes_and_a_damaged_one_is_refused() {
        let mut entries = BTreeMap::new();
        entries.insert(
            OsStr::from_bytes(b"odd\xffname").as_bytes().to_vec(),
            Node::Dir { mode: 0o755 },
        );
        entries.insert(
            b"f".to_vec(),
            Node::File {
                key: Key {
                    size: 3,
                    mtime: -5,
                    ctime: 7,
                    ino: 9,
                    mode: 0o644,
                },
                hash: Some([7; 32]),
                racy: true,
            },
        );
        entries.insert(
            b"big".to_vec(),
            Node::File {
                key: Key {
                    size: 3,
                    mtime: 1,
                    ctime: 2,
                    ino: 3,
                    mode: 0o600,
                },
                hash: None,
                racy: false,
            },
        );
        entries.insert(
            b"l".to_vec(),
            Node::Symlink {
                target: b"../x".to_vec(),
            },
        );
        let manifest = Manifest {
            taken_ns: 42,
            entries,
        };
        let encoded = manifest.encode();
        let decoded = Manifest::decode(&encoded).unwrap();
        assert_eq!(decoded.entries, manifest.entries);
        assert_eq!(decoded.taken_ns, 42);
        let mut damaged = encoded.clone();
        damaged[MAGIC.len() + 20] ^= 1;
        assert!(Manifest::decode(&damaged).unwrap_err().contains("checksum"));
        assert!(Manifest::decode(&encoded[..encoded.len() - 1]).is_err());
    }

    #[test]
    fn a_crash_with_the_snapshot_in_force_is_restored_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let (workspace, scope) = scope(dir.path());
        std::fs::write(workspace.root.join("keep"), "keep").unwrap();
        let _snapshot = take(&scope, "crashed").unwrap();
        assert!(in_force(&scope));
        std::fs::write(workspace.root.join("keep"), "changed").unwrap();
        std::fs::write(workspace.root.join("made"), "made").unwrap();
        let restored = recover(&scope).unwrap().unwrap();
        assert!(restored.errors.is_empty(), "{restored:?}");
        assert_eq!((restored.restored, restored.removed), (1, 1));
        assert_eq!(
            std::fs::read_to_string(workspace.root.join("keep")).unwrap(),
            "keep"
        );
        assert!(!workspace.root.join("made").exists());
        // The marker stays until the caller has rolled back the journal too.
        assert!(in_force(&scope));
        release(&scope).unwrap();
        assert!(recover(&scope).unwrap().is_none());
    }
}
