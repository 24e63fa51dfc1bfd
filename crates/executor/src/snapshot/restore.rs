//! Restoring a snapshot: every recorded entry put back byte for byte (mode too) through
//! directory handles, and what the commands added that the snapshot does not hold removed.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io;
use std::io::Write;
use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::journal::Restored;
use crate::{beneath, git};

use super::manifest::{Key, Manifest, Node};
use super::scope::Scope;
use super::{MAX_DEPTH, digest, join, read_file, show};

/// True when what is at `name` in `dir` (with `stat`) is what `node` recorded.
pub(super) fn same_node(
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

pub(super) fn restore(scope: &Scope, manifest: &Manifest, distrust: Option<&str>) -> Restored {
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
pub(super) fn sync_touched(root: &OwnedFd, touched: &HashSet<Vec<u8>>, done: &mut Restored) {
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
pub(super) fn trusted_ignored(scope: &Scope, manifest: &Manifest) -> io::Result<HashSet<Vec<u8>>> {
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
pub(super) fn remove_unrecorded(
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
    remove_new_dirs(scope, new_dirs, done, touched);
}

/// Removes the directories the commands made, deepest first, each only if it is empty by
/// now (what is left alone in one keeps it).
fn remove_new_dirs(
    scope: &Scope,
    mut new_dirs: Vec<Vec<u8>>,
    done: &mut Restored,
    touched: &mut HashSet<Vec<u8>>,
) {
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
