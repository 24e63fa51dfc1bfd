//! Writing a file atomically (a temp file beside it, synced, renamed, the folder synced), and
//! the error that says a write landed but was not made durable.

use std::path::{Path, PathBuf};

use crate::beneath;

/// A flush to stable storage that failed: what was written may be lost (told apart from a
/// failed write so the executor's storage fault is named `fsync`).
#[derive(Debug)]
pub struct Unsynced(std::io::Error);

impl std::fmt::Display for Unsynced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fsync failed: {}", self.0)
    }
}

impl std::error::Error for Unsynced {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Marks `err` (from an fsync) as [`Unsynced`], keeping its kind.
pub fn unsynced(err: std::io::Error) -> std::io::Error {
    std::io::Error::new(err.kind(), Unsynced(err))
}

/// True when `err` is a failed fsync ([`unsynced`]).
pub fn is_unsynced(err: &std::io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Unsynced>())
}

/// The temp file used to replace workspace-relative `rel` atomically.
pub fn temp_rel(rel: &str) -> String {
    match beneath::split(rel) {
        ("", name) => beneath::temp_name(name),
        (dir, name) => format!("{dir}/{}", beneath::temp_name(name)),
    }
}

/// The temp file used to replace `path` (in the executor's own dirs) atomically.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.ghost-tmp"))
}

/// Replaces `path` with `contents` and `mode` through a synced temp file and a rename, all
/// relative to a handle of `path`'s directory: the temp file is created with
/// `O_EXCL | O_NOFOLLOW` (a symlink planted at its predictable name is removed, never
/// followed), its mode set on the open file, and a symlink at `path` itself is replaced.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let handle = rustix::fs::openat(
        rustix::fs::CWD,
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    beneath::write(&handle, name, contents, mode)
}
