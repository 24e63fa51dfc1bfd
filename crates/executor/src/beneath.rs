//! Workspace file operations relative to directory handles, never through path strings.
//!
//! The workspace root is opened once per attempt; every directory below it is reached from
//! that handle with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or, where the kernel
//! refuses `openat2` (old kernels, seccomp: ENOSYS), with an `O_NOFOLLOW | O_DIRECTORY` walk
//! one component at a time. A symlink anywhere in a path is refused, so a directory swapped
//! for a symlink between a check and a write cannot lead outside. Files are then read,
//! written (temp file, fsync, `renameat` in the same directory handle), removed and created
//! with `*at` calls on the handle of their directory.
//!
//! [`Dirs`] keeps the handles an attempt opened, so the directory that was inspected while
//! planning is the one written to and, on rollback, the one restored, even if it has been
//! renamed meanwhile.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Directory handles kept per attempt; past this, handles are opened per operation instead
/// (a patch touching thousands of directories must not run out of file descriptors).
const MAX_CACHED: usize = 256;

/// What is at a name inside a directory, without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file with these permission bits.
    File(u32),
    /// A directory.
    Dir,
    /// A symlink (never followed).
    Symlink,
    /// A device, socket or FIFO.
    Other,
}

/// True when `err` is this errno.
pub fn is(err: &io::Error, errno: Errno) -> bool {
    err.raw_os_error() == Some(errno.raw_os_error())
}

/// True when `err` means "there is nothing at that path": not found, a component that is not
/// a directory, or a name too long to exist.
pub fn is_absent(err: &io::Error) -> bool {
    is(err, Errno::NOENT) || is(err, Errno::NOTDIR) || is(err, Errno::NAMETOOLONG)
}

/// The identity of a directory (device and inode), recorded for each workspace root when the
/// executor starts, so a root swapped afterwards (for a symlink to `/etc/cron.d`, or another
/// directory, by whoever owns its parent) is noticed before anything is written through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl RootId {
    /// The identity of what `path` names now, following symlinks as a command's working
    /// directory or `git -C` would.
    pub fn of(path: &Path) -> io::Result<Self> {
        let stat = rustix::fs::stat(path)?;
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }

    fn of_fd(fd: &OwnedFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }
}

/// The error of a root that is no longer the directory recorded at start.
pub fn replaced_root() -> io::Error {
    io::Error::other(
        "the workspace root was replaced since the executor started (its device and inode \
         changed); nothing is written through it",
    )
}

/// True when `err` is [`replaced_root`]'s.
pub fn is_replaced_root(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Other
        && err
            .to_string()
            .starts_with("the workspace root was replaced")
}

/// How directories below the root are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// One `openat2` with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS.
    Openat2,
    /// An `openat(O_NOFOLLOW | O_DIRECTORY)` per component.
    Walk,
}

/// The directory handles of one workspace, opened from its root.
#[derive(Debug)]
pub struct Dirs {
    root: Arc<OwnedFd>,
    resolve: Resolve,
    cache: HashMap<String, Arc<OwnedFd>>,
    /// Directories whose entries changed (mkdir, unlink, rmdir) since the last
    /// [`Dirs::sync_touched`]; a file write syncs its own directory.
    touched: Vec<Arc<OwnedFd>>,
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Dirs {
    /// Opens the workspace root (a path the operator configured, already canonical) and
    /// finds out whether `openat2` is usable here.
    pub fn open(root: &Path) -> io::Result<Self> {
        let mut dirs = Self::open_walking(root)?;
        let probe = rustix::fs::openat2(
            &*dirs.root,
            ".",
            dir_flags(),
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        );
        if probe.is_ok() {
            dirs.resolve = Resolve::Openat2;
        }
        Ok(dirs)
    }

    /// Opens the root and checks that it is still the directory recorded at start (`expected`);
    /// one swapped since is refused with [`replaced_root`]. The check is on the opened handle,
    /// which every later operation of the attempt goes through.
    pub fn open_checked(root: &Path, expected: RootId) -> io::Result<Self> {
        let dirs = Self::open(root)?;
        if RootId::of_fd(&dirs.root)? != expected {
            return Err(replaced_root());
        }
        Ok(dirs)
    }

    /// Opens the root and resolves with the component walk only (the fallback, also tested).
    pub fn open_walking(root: &Path) -> io::Result<Self> {
        let fd = rustix::fs::openat(
            CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root: Arc::new(fd),
            resolve: Resolve::Walk,
            cache: HashMap::new(),
            touched: Vec::new(),
        })
    }

    /// True when directories are resolved with `openat2`.
    pub fn uses_openat2(&self) -> bool {
        self.resolve == Resolve::Openat2
    }

    /// The handle of directory `rel` (`""`: the root). A missing directory is `NotFound`; a
    /// symlink on the way is ELOOP; a file on the way is ENOTDIR.
    pub fn dir(&mut self, rel: &str) -> io::Result<Arc<OwnedFd>> {
        if rel.is_empty() {
            return Ok(Arc::clone(&self.root));
        }
        if let Some(found) = self.live(rel) {
            return Ok(found);
        }
        // Start from the nearest ancestor already open: it was beneath the root when opened.
        let mut base = Arc::clone(&self.root);
        let mut rest = rel;
        let mut prefix_end = rel.len();
        while let Some(cut) = rel[..prefix_end].rfind('/') {
            if let Some(found) = self.live(&rel[..cut]) {
                base = found;
                rest = &rel[cut + 1..];
                break;
            }
            prefix_end = cut;
        }
        let fd = Arc::new(self.resolve_below(&base, rest)?);
        if self.cache.len() < MAX_CACHED {
            self.cache.insert(rel.to_owned(), Arc::clone(&fd));
        }
        Ok(fd)
    }

    /// The cached handle of `rel` while its directory still exists. A directory that was
    /// renamed (even swapped for a symlink) keeps its handle, so writes and restores follow
    /// it; one that was removed (a command's `rm -rf`) is forgotten and looked up afresh, so
    /// nothing is written into a deleted directory.
    fn live(&mut self, rel: &str) -> Option<Arc<OwnedFd>> {
        let found = self.cache.get(rel)?;
        if rustix::fs::fstat(&**found).is_ok_and(|stat| stat.st_nlink > 0) {
            return Some(Arc::clone(found));
        }
        self.cache.remove(rel);
        None
    }

    fn resolve_below(&self, base: &OwnedFd, rest: &str) -> io::Result<OwnedFd> {
        if self.resolve == Resolve::Openat2 {
            let opened = rustix::fs::openat2(
                base,
                rest,
                dir_flags(),
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            );
            match opened {
                Ok(fd) => return Ok(fd),
                // EAGAIN: a concurrent rename made the kernel give up; ENOTDIR: a symlink at
                // the end (O_DIRECTORY wins over RESOLVE_NO_SYMLINKS) or a file on the way.
                // The walk tells which, no less confined.
                Err(err) if err == Errno::AGAIN || err == Errno::NOSYS || err == Errno::NOTDIR => {}
                Err(err) => return Err(err.into()),
            }
        }
        let mut current: Option<OwnedFd> = None;
        for part in rest.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return Err(io::Error::from(Errno::INVAL));
            }
            let parent = current.as_ref().unwrap_or(base);
            match rustix::fs::openat(parent, part, dir_flags(), Mode::empty()) {
                Ok(fd) => current = Some(fd),
                // O_DIRECTORY answers ENOTDIR for a symlink; say ELOOP as openat2 does.
                Err(err) if err == Errno::NOTDIR && stat(parent, part)? == Some(Kind::Symlink) => {
                    return Err(Errno::LOOP.into());
                }
                Err(err) => return Err(err.into()),
            }
        }
        current.ok_or_else(|| io::Error::from(Errno::INVAL))
    }

    /// Creates every missing directory of `rel` (mode 0777 less the umask), no symlink
    /// followed; returns the handle of the last.
    pub fn make_dirs(&mut self, rel: &str) -> io::Result<Arc<OwnedFd>> {
        match self.dir(rel) {
            Err(err) if is(&err, Errno::NOENT) => {}
            other => return other,
        }
        let (parent, name) = split(rel);
        let parent_fd = self.make_dirs(parent)?;
        mkdir(&parent_fd, name)?;
        self.touch(&parent_fd);
        self.dir(rel)
    }

    /// Notes that an entry of `dir` was created or removed, to be made durable by
    /// [`Dirs::sync_touched`].
    pub fn touch(&mut self, dir: &Arc<OwnedFd>) {
        self.touched.push(Arc::clone(dir));
    }

    /// Fsyncs every directory noted by [`Dirs::touch`] once (the same directory reached by
    /// two handles is synced once), so created and removed entries survive a power loss.
    /// Returns how many directories were synced.
    pub fn sync_touched(&mut self) -> io::Result<usize> {
        let mut seen = std::collections::HashSet::new();
        let mut first_error = None;
        let mut synced = 0;
        for dir in std::mem::take(&mut self.touched) {
            let id = rustix::fs::fstat(&*dir).map(|stat| (stat.st_dev, stat.st_ino));
            if let Ok(id) = id
                && !seen.insert(id)
            {
                continue;
            }
            match sync_dir(&dir) {
                Ok(()) => synced += 1,
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(synced), Err)
    }

    /// Drops the handles of directory `rel` and of every directory below it.
    pub fn forget_below(&mut self, rel: &str) {
        let below = format!("{rel}/");
        self.cache
            .retain(|key, _| key != rel && !key.starts_with(&below));
    }

    /// Drops the handle of a directory that was removed.
    pub fn forget(&mut self, rel: &str) {
        self.cache.remove(rel);
    }
}

/// `("a/b", "c")` for `"a/b/c"`, `("", "c")` for `"c"`.
pub fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

/// What is at `name` in `dir`, or `None`.
pub fn stat(dir: &OwnedFd, name: &str) -> io::Result<Option<Kind>> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(err) if err == Errno::NOENT => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    Ok(Some(match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Kind::File(stat.st_mode & 0o7777),
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }))
}

/// The bytes and permission bits of regular file `name` in `dir`, or `None` when absent. A
/// symlink is ELOOP; anything but a regular file is refused (`ErrorKind::Other`) without being
/// opened; a file over `max_bytes` is EFBIG, refused by its size before a byte is read.
pub fn read(dir: &OwnedFd, name: &str, max_bytes: u64) -> io::Result<Option<(Vec<u8>, u32)>> {
    match stat(dir, name)? {
        None => return Ok(None),
        Some(Kind::Symlink) => return Err(Errno::LOOP.into()),
        Some(Kind::Dir | Kind::Other) => return Err(io::Error::other("not a regular file")),
        Some(Kind::File(_)) => {}
    }
    // O_NONBLOCK and O_NOCTTY: should a FIFO or a terminal be swapped in after the stat, the
    // open neither waits for a writer nor takes a controlling terminal; it is refused below.
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(err) if err == Errno::NOENT => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let stat = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    let size = u64::try_from(stat.st_size).unwrap_or(u64::MAX);
    if size > max_bytes {
        return Err(Errno::FBIG.into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // `take`: a file that grows after the fstat is still read only up to the limit (+1, to
    // notice that it grew).
    std::fs::File::from(fd)
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(Errno::FBIG.into());
    }
    Ok(Some((bytes, stat.st_mode & 0o7777)))
}

/// True when `name` has the shape of a temp file [`write`] uses (`.<name>.ghost-tmp`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.len() > ".ghost-tmp".len() && name.ends_with(".ghost-tmp")
}

/// Fsyncs directory `dir` through the C library (as every other fsync of the executor is, so
/// an LD_PRELOAD fsync shim — deploy/bench/slow-fsync.c — sees and counts it).
pub fn sync_dir(dir: &OwnedFd) -> io::Result<()> {
    std::fs::File::from(dir.try_clone()?).sync_all()
}

/// The temp name used to replace `name` atomically: `.<name>.ghost-tmp`, or a hashed name of
/// the same shape when that would pass the 255-byte limit of a name.
pub fn temp_name(name: &str) -> String {
    let plain = format!(".{name}.ghost-tmp");
    if plain.len() <= 255 {
        return plain;
    }
    // FNV-1a: stable across runs, so the journal and the writer agree on the name.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(".{hash:016x}.ghost-tmp")
}

/// Replaces `name` in `dir` with `contents` and `mode`: a temp file in the same directory
/// handle, written, fsync'd, renamed over `name`, then the directory fsync'd.
pub fn write(dir: &OwnedFd, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    let temp = temp_name(name);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o600)) {
        Ok(fd) => fd,
        Err(err) if err == Errno::EXIST => {
            // Left by a crash (the journal recorded it as absent) or made by a command (even
            // a directory): remove it, never follow it.
            remove_tree(dir, &temp)?;
            rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))?
        }
        Err(err) => return Err(err.into()),
    };
    let result = (|| {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(contents)?;
        file.sync_all()?;
        match rustix::fs::renameat(dir, temp.as_str(), dir, name) {
            // A command put a directory where the file goes: it is not the patch's to keep.
            Err(err) if err == Errno::ISDIR || err == Errno::NOTEMPTY || err == Errno::EXIST => {
                remove_tree(dir, name)?;
                rustix::fs::renameat(dir, temp.as_str(), dir, name)?;
            }
            other => other?,
        }
        sync_dir(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, temp.as_str(), AtFlags::empty());
    }
    result
}

/// Removes file `name` from `dir` (a symlink itself, never its target); false when absent.
pub fn remove(dir: &OwnedFd, name: &str) -> io::Result<bool> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(err) if err == Errno::NOENT || err == Errno::NAMETOOLONG => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Deepest level [`remove_tree`] descends in one pass (each level holds one open handle);
/// a subtree deeper than that is moved up to the top of the tree being removed and cleared
/// in a later pass, so no depth blocks a rollback and the handles stay bounded.
const MAX_TREE_DEPTH: usize = 64;

/// Bound on the passes of [`remove_tree`] (each clears `MAX_TREE_DEPTH` more levels).
const MAX_TREE_PASSES: usize = 100_000;

/// Removes `name` from `dir` whatever it is — a file, a symlink (never followed) or a
/// directory with everything inside it, each entry removed relative to the handle of its own
/// directory; false when absent. Rollback uses it for what a patch's commands left in a
/// directory the patch created, or where a journaled file was.
pub fn remove_tree(dir: &OwnedFd, name: &str) -> io::Result<bool> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(Errno::INVAL))?;
    remove_tree_c(dir, &name)
}

/// [`remove_tree`] of a name given as bytes (it need not be UTF-8).
pub fn remove_tree_c(dir: &OwnedFd, name: &std::ffi::CStr) -> io::Result<bool> {
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => return Ok(true),
        Err(err) if err == Errno::NOENT || err == Errno::NAMETOOLONG => return Ok(false),
        Err(err) if err == Errno::NOTEMPTY || err == Errno::EXIST => {}
        // Not a directory (a file or a symlink): removed as such.
        Err(err) if err == Errno::NOTDIR => return unlink_entry(dir, name),
        Err(err) => return Err(err.into()),
    }
    // O_NOFOLLOW | O_DIRECTORY: swapped for a symlink meanwhile, it is removed as a link.
    let top = match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(err) if err == Errno::NOTDIR || err == Errno::LOOP => {
            return unlink_entry(dir, name);
        }
        Err(err) if err == Errno::NOENT => return Ok(false),
        Err(err) => return Err(err.into()),
    };
    let mut moved = 0u64;
    for _ in 0..MAX_TREE_PASSES {
        let before = moved;
        clear(&top, &top, 0, &mut moved)?;
        if moved == before {
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
            return Ok(true);
        }
    }
    Err(io::Error::other("a directory tree too deep to remove"))
}

fn unlink_entry(dir: &OwnedFd, name: &std::ffi::CStr) -> io::Result<bool> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(err) if err == Errno::NOENT => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// Empties directory `dir` (at `depth` below `top`); a directory at the depth limit is moved
/// into `top` under a fresh name instead, counted in `moved`.
fn clear(dir: &OwnedFd, top: &OwnedFd, depth: usize, moved: &mut u64) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let child = entry.file_name();
        if child.to_bytes() != b"." && child.to_bytes() != b".." {
            names.push(child.to_owned());
        }
    }
    for child in &names {
        match rustix::fs::unlinkat(dir, child.as_c_str(), AtFlags::empty()) {
            Ok(()) => continue,
            Err(err) if err == Errno::NOENT => continue,
            Err(err) if err == Errno::ISDIR || err == Errno::PERM => {}
            Err(err) => return Err(err.into()),
        }
        if depth + 1 >= MAX_TREE_DEPTH {
            loop {
                *moved += 1;
                let fresh = format!(".ghost-rm-{moved}");
                match rustix::fs::renameat_with(
                    dir,
                    child.as_c_str(),
                    top,
                    fresh.as_str(),
                    rustix::fs::RenameFlags::NOREPLACE,
                ) {
                    Err(err) if err == Errno::EXIST => {}
                    other => break other?,
                }
            }
            continue;
        }
        let inner = match rustix::fs::openat(dir, child.as_c_str(), dir_flags(), Mode::empty()) {
            Ok(fd) => fd,
            Err(err) if err == Errno::NOTDIR || err == Errno::LOOP => {
                unlink_entry(dir, child)?;
                continue;
            }
            Err(err) if err == Errno::NOENT => continue,
            Err(err) => return Err(err.into()),
        };
        clear(&inner, top, depth + 1, moved)?;
        match rustix::fs::unlinkat(dir, child.as_c_str(), AtFlags::REMOVEDIR) {
            Ok(()) => {}
            Err(err) if err == Errno::NOENT => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Creates directory `name` in `dir`.
pub fn mkdir(dir: &OwnedFd, name: &str) -> io::Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777))?;
    Ok(())
}

/// Removes empty directory `name` from `dir`; false when absent.
pub fn rmdir(dir: &OwnedFd, name: &str) -> io::Result<bool> {
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) => Ok(true),
        Err(err) if err == Errno::NOENT || err == Errno::NAMETOOLONG => Ok(false),
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(root: &Path) -> [Dirs; 2] {
        [Dirs::open(root).unwrap(), Dirs::open_walking(root).unwrap()]
    }

    #[test]
    fn symlinks_are_refused_on_the_way_and_at_the_end_by_both_resolvers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::write(root.join("real/f"), "f").unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("alias")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("out")).unwrap();
        std::os::unix::fs::symlink(root.join("real/f"), root.join("real/link")).unwrap();
        for mut dirs in both(&root) {
            assert!(dirs.dir("real/sub").is_ok());
            for bad in ["alias", "alias/sub", "out"] {
                let err = dirs.dir(bad).unwrap_err();
                assert!(is(&err, Errno::LOOP), "{bad}: {err}");
            }
            assert!(dirs.dir("missing/x").unwrap_err().kind() == io::ErrorKind::NotFound);
            assert!(is(&dirs.dir("real/f/x").unwrap_err(), Errno::NOTDIR));
            let real = dirs.dir("real").unwrap();
            assert!(is(&read(&real, "link", 1).unwrap_err(), Errno::LOOP));
            assert_eq!(stat(&real, "link").unwrap(), Some(Kind::Symlink));
            assert_eq!(read(&real, "f", 1).unwrap().unwrap().0, b"f");
            assert!(is(&read(&real, "f", 0).unwrap_err(), Errno::FBIG));
        }
    }

    #[test]
    fn created_and_removed_entries_sync_each_parent_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = Dirs::open(dir.path()).unwrap();
        // Root (for a) and a (for b): two parents, whatever the number of entries.
        dirs.make_dirs("a/b").unwrap();
        let root = dirs.dir("").unwrap();
        mkdir(&root, "c").unwrap();
        dirs.touch(&root);
        let again = dirs.dir("").unwrap();
        dirs.touch(&again);
        assert_eq!(dirs.sync_touched().unwrap(), 2);
        assert_eq!(dirs.sync_touched().unwrap(), 0);
        std::fs::create_dir_all(dir.path().join("t/u/v")).unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("t/u/root")).unwrap();
        assert!(remove_tree(&root, "t").unwrap());
        assert!(!dir.path().join("t").exists());
        assert!(!remove_tree(&root, "t").unwrap());
        // Deeper than one pass goes: moved up and cleared in later passes.
        let deep = vec!["d"; MAX_TREE_DEPTH * 3 + 5].join("/");
        let made = dirs.make_dirs(&format!("deep/{deep}")).unwrap();
        write(&made, "f", b"x", 0o644).unwrap();
        assert!(remove_tree(&root, "deep").unwrap());
        assert_eq!(stat(&root, "deep").unwrap(), None);
    }

    #[test]
    fn writes_replace_through_the_handle_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = Dirs::open(dir.path()).unwrap();
        let made = dirs.make_dirs("a/b").unwrap();
        write(&made, "x", b"one", 0o600).unwrap();
        write(&made, "x", b"two", 0o755).unwrap();
        assert_eq!(read(&made, "x", 3).unwrap(), Some((b"two".to_vec(), 0o755)));
        assert_eq!(stat(&made, &temp_name("x")).unwrap(), None);
        assert!(remove(&made, "x").unwrap());
        assert!(!remove(&made, "x").unwrap());
        let long = "y".repeat(250);
        assert!(temp_name(&long).len() <= 255);
        write(&made, &long, b"long", 0o644).unwrap();
        assert!(remove(&made, &long).unwrap());
        let a = dirs.dir("a").unwrap();
        dirs.forget("a/b");
        assert!(rmdir(&a, "b").unwrap());
        assert!(!rmdir(&a, "b").unwrap());
    }

    #[test]
    fn neither_resolver_lets_a_write_out_while_a_directory_and_a_symlink_swap() {
        use std::sync::Arc as StdArc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("flip")).unwrap();
        let stop = StdArc::new(AtomicBool::new(false));
        let swapper = {
            let (a, b, stop) = (root.join("d"), root.join("flip"), StdArc::clone(&stop));
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && swaps < 10_000_000
                    && started.elapsed() < std::time::Duration::from_secs(60)
                {
                    let _ = rustix::fs::renameat_with(
                        CWD,
                        &a,
                        CWD,
                        &b,
                        rustix::fs::RenameFlags::EXCHANGE,
                    );
                    swaps += 1;
                }
                swaps
            })
        };
        let mut written = 0;
        for i in 0..2_000 {
            let opened = if i % 2 == 0 {
                Dirs::open(&root)
            } else {
                Dirs::open_walking(&root)
            };
            let Ok(handle) = opened.unwrap().dir("d") else {
                continue;
            };
            write(&handle, &format!("f{i}"), b"x", 0o644).unwrap();
            written += 1;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0);
        assert!(written > 0, "no write got a handle");
        let escaped: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(escaped.is_empty(), "{} files outside", escaped.len());
    }
}
