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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::beneath::{self, RootId};
use crate::git;
use crate::journal::Restored;
use crate::workspace::Workspace;

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

/// The stat key of a file: unchanged key, unchanged content (unless racy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    size: u64,
    mtime: i128,
    ctime: i128,
    ino: u64,
    mode: u32,
}

impl Key {
    fn of(stat: &rustix::fs::Stat) -> Self {
        Self {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime: i128::from(stat.st_mtime) * 1_000_000_000 + i128::from(stat.st_mtime_nsec),
            ctime: i128::from(stat.st_ctime) * 1_000_000_000 + i128::from(stat.st_ctime_nsec),
            ino: stat.st_ino,
            mode: stat.st_mode & 0o7777,
        }
    }
}

/// One recorded path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        key: Key,
        /// `None`: over `max_file_bytes`, recorded by key only.
        hash: Option<[u8; 32]>,
        racy: bool,
    },
    Symlink {
        target: Vec<u8>,
    },
}

/// A recorded workspace.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    taken_ns: i128,
    entries: BTreeMap<Vec<u8>, Node>,
}

impl Manifest {
    /// Number of recorded paths.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn hashes(&self) -> HashSet<[u8; 32]> {
        self.entries
            .values()
            .filter_map(|node| match node {
                Node::File { hash, .. } => *hash,
                _ => None,
            })
            .collect()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 96);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.taken_ns.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (path, node) in &self.entries {
            let bytes = |out: &mut Vec<u8>, value: &[u8]| {
                out.extend_from_slice(&(value.len() as u64).to_le_bytes());
                out.extend_from_slice(value);
            };
            match node {
                Node::Dir { mode } => {
                    out.push(0);
                    bytes(&mut out, path);
                    out.extend_from_slice(&mode.to_le_bytes());
                }
                Node::File { key, hash, racy } => {
                    out.push(if hash.is_some() { 1 } else { 3 });
                    bytes(&mut out, path);
                    out.extend_from_slice(&key.mode.to_le_bytes());
                    out.extend_from_slice(&key.size.to_le_bytes());
                    out.extend_from_slice(&key.mtime.to_le_bytes());
                    out.extend_from_slice(&key.ctime.to_le_bytes());
                    out.extend_from_slice(&key.ino.to_le_bytes());
                    out.push(u8::from(*racy));
                    if let Some(hash) = hash {
                        out.extend_from_slice(hash);
                    }
                }
                Node::Symlink { target } => {
                    out.push(2);
                    bytes(&mut out, path);
                    bytes(&mut out, target);
                }
            }
        }
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        out
    }

    fn decode(data: &[u8]) -> Result<Self, String> {
        let cut = || "the snapshot manifest is cut short".to_owned();
        if data.len() < MAGIC.len() + 32 || !data.starts_with(MAGIC) {
            return Err("the snapshot manifest does not start with its marker".to_owned());
        }
        let (body, sum) = data.split_at(data.len() - 32);
        let expected: [u8; 32] = Sha256::digest(body).into();
        if expected.as_slice() != sum {
            return Err("the snapshot manifest's checksum does not match".to_owned());
        }
        let mut rest = &body[MAGIC.len()..];
        let mut take = |n: usize| -> Result<&[u8], String> {
            if rest.len() < n {
                return Err(cut());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
            let mut out = [0u8; N];
            out.copy_from_slice(&bytes[..N]);
            out
        }
        let taken_ns = i128::from_le_bytes(array(take(16)?));
        let count = u64::from_le_bytes(array(take(8)?));
        let mut entries = BTreeMap::new();
        for _ in 0..count {
            let kind = take(1)?[0];
            let len = usize::try_from(u64::from_le_bytes(array(take(8)?))).map_err(|_| cut())?;
            let path = take(len)?.to_vec();
            let node = match kind {
                0 => Node::Dir {
                    mode: u32::from_le_bytes(array(take(4)?)),
                },
                1 | 3 => {
                    let mode = u32::from_le_bytes(array(take(4)?));
                    let size = u64::from_le_bytes(array(take(8)?));
                    let mtime = i128::from_le_bytes(array(take(16)?));
                    let ctime = i128::from_le_bytes(array(take(16)?));
                    let ino = u64::from_le_bytes(array(take(8)?));
                    let racy = take(1)?[0] != 0;
                    let hash = if kind == 1 {
                        Some(array(take(32)?))
                    } else {
                        None
                    };
                    Node::File {
                        key: Key {
                            size,
                            mtime,
                            ctime,
                            ino,
                            mode,
                        },
                        hash,
                        racy,
                    }
                }
                2 => {
                    let len =
                        usize::try_from(u64::from_le_bytes(array(take(8)?))).map_err(|_| cut())?;
                    Node::Symlink {
                        target: take(len)?.to_vec(),
                    }
                }
                other => return Err(format!("unknown entry kind {other} in the manifest")),
            };
            entries.insert(path, node);
        }
        Ok(Self { taken_ns, entries })
    }
}

/// What a walk calls for each path in scope: (its directory, its name, its workspace-relative
/// path, its stat) → whether to go into it.
type Visit<'a> = dyn FnMut(&OwnedFd, &CStr, &[u8], &rustix::fs::Stat) -> io::Result<bool> + 'a;

/// Where a target's snapshots live and which paths they cover.
#[derive(Debug, Clone)]
pub struct Scope {
    root: PathBuf,
    root_id: RootId,
    dir: PathBuf,
    /// Workspace-relative paths never looked at (the state dir, the agent inbox).
    excluded: Vec<Vec<u8>>,
    /// `rollback_ignore`: (takes the path in, glob).
    rules: Vec<(bool, globset::GlobMatcher)>,
    includes: bool,
    max_file_bytes: u64,
    max_files: u64,
    max_bytes: u64,
    git: bool,
}

fn relative_inside(root: &Path, path: &Path) -> Option<Vec<u8>> {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let rel = absolute.strip_prefix(root).ok()?;
    let bytes = rel.as_os_str().as_bytes();
    (!bytes.is_empty()).then(|| bytes.to_vec())
}

impl Scope {
    /// The scope of `workspace`'s snapshots; `Err` names a bad `rollback_ignore` glob.
    pub fn new(
        workspace: &Workspace,
        root_id: RootId,
        max_file_bytes: u64,
    ) -> Result<Self, String> {
        let mut rules = Vec::new();
        for glob in &workspace.policy.rollback_ignore {
            let (include, bare) = match glob.strip_prefix('!') {
                Some(bare) => (true, bare),
                None => (false, glob.as_str()),
            };
            rules.push((include, crate::config::compile_glob(bare)?));
        }
        let mut excluded = Vec::new();
        excluded.extend(relative_inside(&workspace.root, &workspace.state_dir));
        if let Some(inbox) = workspace
            .policy
            .agent
            .as_ref()
            .and_then(|a| a.inbox.as_ref())
        {
            excluded.extend(relative_inside(&workspace.root, inbox));
        }
        Ok(Self {
            root: workspace.root.clone(),
            root_id,
            dir: workspace
                .state_dir
                .join("snapshots")
                .join(&workspace.target),
            excluded,
            includes: rules.iter().any(|(include, _)| *include),
            rules,
            max_file_bytes,
            max_files: workspace.policy.max_snapshot_files,
            max_bytes: workspace.policy.max_snapshot_bytes,
            git: git::is_work_tree(&workspace.root),
        })
    }

    fn kept(&self, rel: &[u8], ignored: bool) -> bool {
        let path = Path::new(OsStr::from_bytes(rel));
        let mut keep = !ignored;
        for (include, glob) in &self.rules {
            if glob.is_match(path) {
                keep = *include;
            }
        }
        keep
    }

    fn hard_excluded(&self, rel: &[u8], name: &[u8], depth: usize) -> bool {
        // Only the root's `.git` (in any case, for case-folding file systems): one deeper is
        // just a directory a command could hide what it made in.
        (depth == 0 && (name.eq_ignore_ascii_case(b".git") || name.eq_ignore_ascii_case(b".ghost")))
            || self.excluded.iter().any(|ex| ex == rel)
    }

    fn open_root(&self) -> io::Result<OwnedFd> {
        let fd = rustix::fs::open(
            &self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if stat.st_dev != self.root_id.dev || stat.st_ino != self.root_id.ino {
            return Err(beneath::replaced_root());
        }
        Ok(fd)
    }

    fn blob_path(&self, hash: &[u8; 32]) -> PathBuf {
        let hex = hex(hash);
        self.dir.join("blobs").join(&hex[..2]).join(&hex[2..])
    }

    /// Untracked paths git ignores now (without the trailing `/` of a directory).
    fn git_ignored(&self) -> io::Result<Vec<Vec<u8>>> {
        if !self.git {
            return Ok(Vec::new());
        }
        let listed = git::ignored(&self.root).map_err(io::Error::other)?;
        Ok(listed
            .into_iter()
            .map(|mut path| {
                while path.last() == Some(&b'/') {
                    path.pop();
                }
                path
            })
            .filter(|path| !path.is_empty())
            .collect())
    }

    /// Walks the tree, calling `visit` on every path in scope; `visit` says whether to go
    /// into a directory.
    fn walk(&self, ignored: &HashSet<Vec<u8>>, visit: &mut Visit<'_>) -> io::Result<()> {
        let root = self.open_root()?;
        self.walk_dir(&root, &[], false, 0, ignored, visit)
    }

    fn walk_dir(
        &self,
        dir: &OwnedFd,
        prefix: &[u8],
        inherited: bool,
        depth: usize,
        ignored: &HashSet<Vec<u8>>,
        visit: &mut Visit<'_>,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(io::Error::other(format!(
                "a directory tree deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
        }
        names.sort();
        for name in names {
            let rel = join(prefix, name.to_bytes());
            if self.hard_excluded(&rel, name.to_bytes(), depth) {
                continue;
            }
            let stat = match rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(err) if err == Errno::NOENT => continue,
                Err(err) => return Err(with_path(err.into(), &rel)),
            };
            let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
            let git_ignored = inherited || ignored.contains(&rel);
            let descend = if self.kept(&rel, git_ignored) {
                visit(dir, name.as_c_str(), &rel, &stat)?
            } else {
                // Left alone, unless a `!glob` could take in something below it.
                self.includes
            };
            if is_dir && descend {
                let child = match rustix::fs::openat(
                    dir,
                    name.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(err) if err == Errno::NOENT || err == Errno::NOTDIR => continue,
                    Err(err) => return Err(with_path(err.into(), &rel)),
                };
                self.walk_dir(&child, &rel, git_ignored, depth + 1, ignored, visit)?;
            }
        }
        Ok(())
    }
}

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
    let mut taken = Taken::default();
    let mut made_dirs = HashSet::new();
    let mut new_blobs = Vec::new();
    let mut total_bytes = 0u64;
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
            FileType::RegularFile => {
                let key = Key::of(stat);
                if key.size <= scope.max_file_bytes {
                    total_bytes = total_bytes.saturating_add(key.size);
                }
                if total_bytes > scope.max_bytes {
                    return Err(io::Error::other(format!(
                        "the workspace's files in scope hold more than {} bytes \
                         (max_snapshot_bytes); the snapshot is refused",
                        scope.max_bytes
                    )));
                }
                let racy = key.mtime >= taken_ns - RACY_NS;
                let known = previous.as_ref().and_then(|p| p.entries.get(rel));
                let hash = match known {
                    Some(Node::File {
                        key: was,
                        hash: Some(hash),
                        racy: false,
                    }) if *was == key => Some(*hash),
                    _ if key.size > scope.max_file_bytes => None,
                    _ => {
                        taken.hashed += 1;
                        match read_file(dir, name, scope.max_file_bytes) {
                            Ok(Some(bytes)) => {
                                let hash = digest(&bytes);
                                if store_blob(scope, &hash, &bytes, &mut made_dirs, &mut taken)
                                    .map_err(|err| with_path(err, rel))?
                                {
                                    new_blobs.push(hash);
                                }
                                Some(hash)
                            }
                            Ok(None) => return Ok(false),
                            Err(err) if beneath::is(&err, Errno::FBIG) => None,
                            Err(err) => return Err(with_path(err, rel)),
                        }
                    }
                };
                Node::File { key, hash, racy }
            }
            _ => return Ok(false),
        };
        let descend = matches!(node, Node::Dir { .. });
        entries.insert(rel.to_vec(), node);
        Ok(descend)
    });
    if let Err(err) = walked {
        // The blobs this scan added are no manifest's: not left to fill the store.
        let known = previous.as_ref().map(Manifest::hashes).unwrap_or_default();
        for hash in new_blobs.iter().filter(|hash| !known.contains(*hash)) {
            let _ = std::fs::remove_file(scope.blob_path(hash));
        }
        return Err(err);
    }
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

/// Up to this many new blobs are each fsync'd; more are flushed with one `syncfs` (which,
/// on a busy file system, also waits for other writers' data: worth it only in bulk).
const FEW_BLOBS: usize = 64;

/// Stores `bytes` under `hash` unless a blob of their size is there; true when written.
fn store_blob(
    scope: &Scope,
    hash: &[u8; 32],
    bytes: &[u8],
    made_dirs: &mut HashSet<u8>,
    taken: &mut Taken,
) -> io::Result<bool> {
    let path = scope.blob_path(hash);
    if made_dirs.insert(hash[0])
        && let Some(parent) = path.parent()
    {
        std::fs::create_dir_all(parent)?;
    }
    // A blob cut short (a crash before it was synced) is written again.
    if std::fs::symlink_metadata(&path)
        .is_ok_and(|meta| meta.is_file() && meta.len() == bytes.len() as u64)
    {
        return Ok(false);
    }
    let temp = crate::journal::temp_path(&path);
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    if taken.stored < FEW_BLOBS {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&temp, &path)?;
    taken.stored += 1;
    taken.stored_bytes += bytes.len() as u64;
    Ok(true)
}

/// Makes the blobs just written durable: their directories synced (each blob was), or one
/// `syncfs` when there were many.
fn sync_blobs(scope: &Scope, taken: &Taken, made_dirs: &HashSet<u8>) -> io::Result<()> {
    if taken.stored == 0 {
        return Ok(());
    }
    let blobs = scope.dir.join("blobs");
    if taken.stored > FEW_BLOBS {
        let fd = rustix::fs::open(
            &blobs,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        return Ok(rustix::fs::syncfs(&fd)?);
    }
    for fan in made_dirs {
        sync_dir(&blobs.join(format!("{fan:02x}")))?;
    }
    sync_dir(&blobs)
}

/// Removes the blobs no manifest needs: those only `previous` had, or, without a previous
/// manifest, every blob the new one does not name. Returns how many.
fn collect(scope: &Scope, previous: Option<&Manifest>, manifest: &Manifest) -> usize {
    let keep = manifest.hashes();
    let mut removed = 0;
    match previous {
        Some(previous) => {
            for hash in previous.hashes() {
                if !keep.contains(&hash) && std::fs::remove_file(scope.blob_path(&hash)).is_ok() {
                    removed += 1;
                }
            }
        }
        None => {
            let Ok(fans) = std::fs::read_dir(scope.dir.join("blobs")) else {
                return 0;
            };
            let keep: HashSet<String> = keep.iter().map(|hash| hex(hash)).collect();
            for fan in fans.flatten() {
                let Ok(blobs) = std::fs::read_dir(fan.path()) else {
                    continue;
                };
                for blob in blobs.flatten() {
                    let name = format!(
                        "{}{}",
                        fan.file_name().to_string_lossy(),
                        blob.file_name().to_string_lossy()
                    );
                    if !keep.contains(&name) && std::fs::remove_file(blob.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
    }
    removed
}

/// Removes the temp files a crash left in the snapshot store (blobs and a manifest being
/// written: `.<name>.ghost-tmp`). Call at start, before any snapshot is taken. Returns how
/// many.
pub fn sweep_temp(scope: &Scope) -> usize {
    let is_temp = |name: &std::ffi::OsStr| {
        let name = name.as_bytes();
        name.starts_with(b".") && name.ends_with(b".ghost-tmp")
    };
    let mut removed = 0;
    let mut dirs = vec![scope.dir.clone()];
    if let Ok(fans) = std::fs::read_dir(scope.dir.join("blobs")) {
        dirs.extend(fans.flatten().map(|fan| fan.path()));
    }
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
            if is_file && is_temp(&entry.file_name()) && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
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

/// True when what is at `name` in `dir` (with `stat`) is what `node` recorded.
fn same_node(
    scope: &Scope,
    node: &Node,
    dir: &OwnedFd,
    name: &CStr,
    stat: &rustix::fs::Stat,
) -> io::Result<bool> {
    let kind = FileType::from_raw_mode(stat.st_mode);
    Ok(match node {
        Node::Dir { mode } => kind == FileType::Directory && stat.st_mode & 0o7777 == *mode,
        Node::Symlink { target } => {
            kind == FileType::Symlink
                && rustix::fs::readlinkat(dir, name, Vec::new())
                    .is_ok_and(|found| found.as_bytes() == target.as_slice())
        }
        Node::File { key, hash, racy } => {
            if kind != FileType::RegularFile {
                return Ok(false);
            }
            let now = Key::of(stat);
            if now.mode != key.mode || now.size != key.size {
                return Ok(false);
            }
            if now == *key && !*racy {
                return Ok(true);
            }
            match hash {
                // Not snapshotted: only the key can tell.
                None => now == *key,
                Some(hash) => match read_file(dir, name, scope.max_file_bytes) {
                    Ok(Some(bytes)) => digest(&bytes) == *hash,
                    _ => false,
                },
            }
        }
    })
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(Errno::INVAL))
}

/// Opens directory `rel` below `root` one component at a time, never following a symlink;
/// with `make`, a missing directory is created and a file or symlink in the way removed.
fn open_dir(root: &OwnedFd, rel: &[u8], make: bool) -> io::Result<OwnedFd> {
    open_dir_noting(root, rel, make, &mut HashSet::new())
}

/// [`open_dir`], noting in `touched` each directory whose entries it changed.
fn open_dir_noting(
    root: &OwnedFd,
    rel: &[u8],
    make: bool,
    touched: &mut HashSet<Vec<u8>>,
) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current = rustix::fs::openat(root, c".", flags, Mode::empty())?;
    if rel.is_empty() {
        return Ok(current);
    }
    let mut prefix: Vec<u8> = Vec::new();
    for part in rel.split(|byte| *byte == b'/') {
        let name = cstr(part)?;
        let parent = prefix.clone();
        prefix = join(&prefix, part);
        current = match rustix::fs::openat(&current, name.as_c_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(err)
                if make && (err == Errno::NOENT || err == Errno::NOTDIR || err == Errno::LOOP) =>
            {
                if err != Errno::NOENT {
                    beneath::remove_tree_c(&current, name.as_c_str())?;
                }
                rustix::fs::mkdirat(&current, name.as_c_str(), Mode::from_raw_mode(0o755))?;
                touched.insert(parent);
                rustix::fs::openat(&current, name.as_c_str(), flags, Mode::empty())?
            }
            Err(err) => return Err(err.into()),
        };
    }
    Ok(current)
}

fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|byte| *byte == b'/') {
        Some(at) => (&rel[..at], &rel[at + 1..]),
        None => (&[], rel),
    }
}

/// Writes `bytes` with `mode` at `name` in `dir` through a temp file and a rename, whatever
/// is there now (a directory is removed whole first; a symlink is replaced, not followed).
fn write_file(dir: &OwnedFd, name: &CStr, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut temp = b".".to_vec();
    temp.extend_from_slice(name.to_bytes());
    temp.extend_from_slice(b".ghost-restore");
    let temp = cstr(&temp)?;
    beneath::remove_tree_c(dir, temp.as_c_str())?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, temp.as_c_str(), flags, Mode::from_raw_mode(0o600))?;
    let result = (|| {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        file.sync_all()?;
        if let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            && FileType::from_raw_mode(stat.st_mode) == FileType::Directory
        {
            beneath::remove_tree_c(dir, name)?;
        }
        rustix::fs::renameat(dir, temp.as_c_str(), dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, temp.as_c_str(), AtFlags::empty());
    }
    result
}

fn restore(scope: &Scope, manifest: &Manifest, distrust: Option<&str>) -> Restored {
    let mut done = Restored::default();
    let root = match scope.open_root() {
        Ok(root) => root,
        Err(err) => {
            done.errors
                .push(format!("cannot open the workspace: {err}"));
            return done;
        }
    };
    let mut touched = HashSet::new();
    restore_recorded(scope, manifest, &root, &mut done, &mut touched);
    remove_unrecorded(scope, manifest, distrust, &mut done, &mut touched);
    sync_touched(&root, &touched, &mut done);
    done
}

/// Up to this many changed directories are each fsync'd; more, one `syncfs`.
const FEW_DIRS: usize = 256;

/// Makes the restored and removed entries durable: each changed directory synced (restored
/// files were synced as they were written), or the whole file system when there are many.
fn sync_touched(root: &OwnedFd, touched: &HashSet<Vec<u8>>, done: &mut Restored) {
    let result = if touched.len() > FEW_DIRS {
        rustix::fs::syncfs(root).map_err(io::Error::from)
    } else {
        touched
            .iter()
            .try_for_each(|rel| match open_dir(root, rel, false) {
                Ok(dir) => rustix::fs::fsync(&dir).map_err(io::Error::from),
                Err(err) if beneath::is_absent(&err) => Ok(()),
                Err(err) => Err(err),
            })
    };
    if let Err(err) = result {
        done.errors
            .push(format!("syncing the restored workspace: {err}"));
    }
}

/// Directories (parents first, by the manifest's order), then files and symlinks.
fn restore_recorded(
    scope: &Scope,
    manifest: &Manifest,
    root: &OwnedFd,
    done: &mut Restored,
    touched: &mut HashSet<Vec<u8>>,
) {
    for (rel, node) in &manifest.entries {
        let Node::Dir { mode } = node else {
            continue;
        };
        let result = open_dir_noting(root, rel, true, touched).and_then(|fd| {
            let stat = rustix::fs::fstat(&fd)?;
            if stat.st_mode & 0o7777 != *mode {
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(*mode))?;
                touched.insert(rel.clone());
            }
            Ok(())
        });
        if let Err(err) = result {
            done.errors.push(format!("{}: {err}", show(rel)));
        }
    }
    for (rel, node) in &manifest.entries {
        if matches!(node, Node::Dir { .. }) {
            continue;
        }
        let (parent, name) = split(rel);
        let result = (|| -> io::Result<bool> {
            let dir = open_dir_noting(root, parent, true, touched)?;
            let name = cstr(name)?;
            if let Ok(stat) = rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                && same_node(scope, node, &dir, name.as_c_str(), &stat)?
            {
                return Ok(false);
            }
            match node {
                Node::Symlink { target } => {
                    beneath::remove_tree_c(&dir, name.as_c_str())?;
                    rustix::fs::symlinkat(cstr(target)?.as_c_str(), &dir, name.as_c_str())?;
                }
                Node::File {
                    key,
                    hash: Some(hash),
                    ..
                } => {
                    let bytes = std::fs::read(scope.blob_path(hash))?;
                    if digest(&bytes) != *hash {
                        return Err(io::Error::other("its snapshot copy is damaged"));
                    }
                    write_file(&dir, name.as_c_str(), &bytes, key.mode)?;
                }
                Node::File { hash: None, .. } => {
                    return Err(io::Error::other(
                        "changed, but over max_file_bytes, so not in the snapshot",
                    ));
                }
                Node::Dir { .. } => {}
            }
            Ok(true)
        })();
        match result {
            Ok(true) => {
                done.restored += 1;
                touched.insert(parent.to_vec());
            }
            Ok(false) => {}
            Err(err) if err.to_string().contains("over max_file_bytes") => {
                done.incomplete.push(format!("{}: {err}", show(rel)))
            }
            Err(err) => done.errors.push(format!("{}: {err}", show(rel))),
        }
    }
}

/// The ignored paths whose rule comes from a `.gitignore` that is in the manifest and
/// unchanged since (restored by now, in a rollback): only those are left alone, so a
/// command cannot hide what it made behind ignore rules it wrote.
fn trusted_ignored(scope: &Scope, manifest: &Manifest) -> io::Result<HashSet<Vec<u8>>> {
    let listed = scope.git_ignored()?;
    if listed.is_empty() {
        return Ok(HashSet::new());
    }
    let sources = git::ignore_sources(&scope.root, &listed).map_err(io::Error::other)?;
    let root = scope.open_root()?;
    let mut verdicts: HashMap<Vec<u8>, bool> = HashMap::new();
    let mut trusted = |source: &[u8]| -> bool {
        if let Some(known) = verdicts.get(source) {
            return *known;
        }
        let verdict = match manifest.entries.get(source) {
            Some(node @ Node::File { .. }) => {
                let (parent, name) = split(source);
                (|| -> io::Result<bool> {
                    let dir = open_dir(&root, parent, false)?;
                    let name = cstr(name)?;
                    let stat =
                        rustix::fs::statat(&dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                    same_node(scope, node, &dir, name.as_c_str(), &stat)
                })()
                .unwrap_or(false)
            }
            _ => false,
        };
        verdicts.insert(source.to_vec(), verdict);
        verdict
    };
    Ok(sources
        .into_iter()
        .filter(|(_, source)| trusted(source))
        .map(|(mut path, _)| {
            while path.last() == Some(&b'/') {
                path.pop();
            }
            path
        })
        .collect())
}

/// Removes every path in scope the manifest does not have. When git cannot say (or, with
/// `distrust`, cannot be trusted to say) what it ignores, nothing is removed, since an
/// ignored `node_modules` and a file a command made look alike: that is reported as not
/// restored, without blocking the target (trying again cannot help).
fn remove_unrecorded(
    scope: &Scope,
    manifest: &Manifest,
    distrust: Option<&str>,
    done: &mut Restored,
    touched: &mut HashSet<Vec<u8>>,
) {
    let listed = match distrust {
        Some(why) if scope.git => Err(io::Error::other(format!("{why} by a command"))),
        _ => trusted_ignored(scope, manifest),
    };
    let ignored = match listed {
        Ok(ignored) => ignored,
        Err(err) => {
            tracing::warn!(error = %err, "cannot list what git ignores; new paths are not removed");
            done.incomplete.push(format!(
                "new files and directories were not removed: cannot list what git ignores: {err}"
            ));
            return;
        }
    };
    let mut errors = Vec::new();
    let mut new_dirs = Vec::new();
    let walked = scope.walk(&ignored, &mut |dir, name, rel, stat| {
        let kind = FileType::from_raw_mode(stat.st_mode);
        let is_dir = kind == FileType::Directory;
        if manifest.entries.contains_key(rel) {
            return Ok(is_dir);
        }
        if !matches!(
            kind,
            FileType::Directory | FileType::RegularFile | FileType::Symlink
        ) {
            // Devices, sockets and FIFOs are neither recorded nor removed.
            return Ok(false);
        }
        if is_dir && rel.iter().filter(|byte| **byte == b'/').count() + 1 >= MAX_DEPTH {
            // Too deep to walk (nothing recorded is this deep: the snapshot refuses such a
            // tree): removed whole, without following a symlink.
            match beneath::remove_tree_c(dir, name) {
                Ok(true) => {
                    done.removed += 1;
                    touched.insert(split(rel).0.to_vec());
                }
                Ok(false) => {}
                Err(err) => errors.push(format!("{}: {err}", show(rel))),
            }
            return Ok(false);
        }
        if is_dir {
            // Emptied of what is in scope first, then removed if nothing left alone (an
            // ignored file, a `rollback_ignore` match) is in it.
            new_dirs.push(rel.to_vec());
            return Ok(true);
        }
        match beneath::remove_tree_c(dir, name) {
            Ok(true) => {
                done.removed += 1;
                touched.insert(split(rel).0.to_vec());
            }
            Ok(false) => {}
            Err(err) => errors.push(format!("{}: {err}", show(rel))),
        }
        Ok(false)
    });
    done.errors.extend(errors);
    if let Err(err) = walked {
        done.errors
            .push(format!("cannot list the workspace: {err}"));
        return;
    }
    let Ok(root) = scope.open_root() else {
        done.errors.push("cannot open the workspace".to_owned());
        return;
    };
    // Deepest first: a child's path sorts after its parent's.
    new_dirs.sort();
    for rel in new_dirs.iter().rev() {
        let (parent, name) = split(rel);
        let removed = open_dir(&root, parent, false).and_then(|dir| {
            match rustix::fs::unlinkat(&dir, cstr(name)?.as_c_str(), AtFlags::REMOVEDIR) {
                Ok(()) => Ok(true),
                Err(err)
                    if err == Errno::NOTEMPTY || err == Errno::EXIST || err == Errno::NOENT =>
                {
                    Ok(false)
                }
                Err(err) => Err(err.into()),
            }
        });
        match removed {
            Ok(true) => {
                done.removed += 1;
                touched.insert(parent.to_vec());
            }
            Ok(false) => {}
            Err(err) => done.errors.push(format!("{}: {err}", show(rel))),
        }
    }
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

    use super::*;
    use crate::config::TargetPolicy;

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
