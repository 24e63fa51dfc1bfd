//! The blob store: a file's bytes kept once by digest, made durable in few syncs, and the
//! blobs no manifest names any more collected.

use std::collections::HashSet;
use std::io;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{Mode, OFlags};

use super::manifest::Manifest;
use super::scope::Scope;
use super::{Taken, hex, sync_dir};

/// Up to this many new blobs are each fsync'd; more are flushed with one `syncfs` (which,
/// on a busy file system, also waits for other writers' data: worth it only in bulk).
const FEW_BLOBS: usize = 64;

/// Stores `bytes` under `hash` unless a blob of their size is there; true when written.
pub(super) fn store_blob(
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
pub(super) fn sync_blobs(scope: &Scope, taken: &Taken, made_dirs: &HashSet<u8>) -> io::Result<()> {
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
pub(super) fn collect(scope: &Scope, previous: Option<&Manifest>, manifest: &Manifest) -> usize {
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
