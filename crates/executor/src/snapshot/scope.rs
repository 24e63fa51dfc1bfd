//! What a snapshot covers: the `Scope` of a workspace (its root, the state dir, what is left
//! out) and the walk over it that never follows a symlink.

use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::beneath::{self, RootId};
use crate::git;
use crate::workspace::Workspace;

use super::{MAX_DEPTH, hex, join, with_path};

/// What a walk calls for each path in scope: (its directory, its name, its workspace-relative
/// path, its stat) → whether to go into it.
type Visit<'a> = dyn FnMut(&OwnedFd, &CStr, &[u8], &rustix::fs::Stat) -> io::Result<bool> + 'a;

/// Where a target's snapshots live and which paths they cover.
#[derive(Debug, Clone)]
pub struct Scope {
    pub(super) root: PathBuf,
    pub(super) root_id: RootId,
    pub(super) dir: PathBuf,
    /// Workspace-relative paths never looked at (the state dir, the agent inbox).
    pub(super) excluded: Vec<Vec<u8>>,
    /// `rollback_ignore`: (takes the path in, glob).
    pub(super) rules: Vec<(bool, globset::GlobMatcher)>,
    pub(super) includes: bool,
    pub(super) max_file_bytes: u64,
    pub(super) max_files: u64,
    pub(super) max_bytes: u64,
    pub(super) git: bool,
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

    pub(super) fn kept(&self, rel: &[u8], ignored: bool) -> bool {
        let path = Path::new(OsStr::from_bytes(rel));
        let mut keep = !ignored;
        for (include, glob) in &self.rules {
            if glob.is_match(path) {
                keep = *include;
            }
        }
        keep
    }

    pub(super) fn hard_excluded(&self, rel: &[u8], name: &[u8], depth: usize) -> bool {
        // Only the root's `.git` (in any case, for case-folding file systems): one deeper is
        // just a directory a command could hide what it made in.
        (depth == 0 && (name.eq_ignore_ascii_case(b".git") || name.eq_ignore_ascii_case(b".ghost")))
            || self.excluded.iter().any(|ex| ex == rel)
    }

    pub(super) fn open_root(&self) -> io::Result<OwnedFd> {
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

    pub(super) fn blob_path(&self, hash: &[u8; 32]) -> PathBuf {
        let hex = hex(hash);
        self.dir.join("blobs").join(&hex[..2]).join(&hex[2..])
    }

    /// Untracked paths git ignores now (without the trailing `/` of a directory).
    pub(super) fn git_ignored(&self) -> io::Result<Vec<Vec<u8>>> {
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
    pub(super) fn walk(&self, ignored: &HashSet<Vec<u8>>, visit: &mut Visit<'_>) -> io::Result<()> {
        let root = self.open_root()?;
        self.walk_dir(&root, &[], false, 0, ignored, visit)
    }

    pub(super) fn walk_dir(
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
