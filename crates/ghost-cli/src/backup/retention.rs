//! Backups under one root (`--into ROOT`): each named by its UTC time, the newest `--keep N`
//! kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BackupError, MANIFEST, NAME_PREFIX, partial_name};

/// `DIR/backup-YYYYMMDDTHHMMSSZ` (with `-2`, `-3`, ... when taken in the same second).
pub(super) fn unused_name(root: &Path) -> Result<PathBuf, BackupError> {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .map_err(|err| BackupError::io(root, std::io::Error::other(err)))?;
    for n in 1..100u32 {
        let name = if n == 1 {
            format!("{NAME_PREFIX}{stamp}")
        } else {
            format!("{NAME_PREFIX}{stamp}-{n}")
        };
        let candidate = root.join(name);
        if std::fs::symlink_metadata(&candidate).is_err()
            && std::fs::symlink_metadata(partial_name(&candidate)?).is_err()
        {
            return Ok(candidate);
        }
    }
    Err(BackupError::Refused(format!(
        "{} already holds 99 backups of this second",
        root.display()
    )))
}

/// Keeps the newest `keep` backups under `root` (directories named `backup-*` holding a
/// manifest; anything else there is left alone) and deletes the rest, and any unfinished
/// `.backup-*.partial` older than a day.
pub(super) fn prune(root: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let mut backups = Vec::new();
    let mut deleted = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|err| BackupError::io(root, err))? {
        let entry = entry.map_err(|err| BackupError::io(root, err))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if is_dir && name.starts_with(NAME_PREFIX) && entry.path().join(MANIFEST).is_file() {
            backups.push(entry.path());
        }
        // A backup killed half way (its job's deadline, a node lost) left this; a day old, no
        // backup is still writing it.
        let stale = entry
            .metadata()
            .ok()
            .and_then(|meta| meta.modified().ok())
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if is_dir
            && stale
            && name.starts_with(&format!(".{NAME_PREFIX}"))
            && name.ends_with(".partial")
        {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|err| BackupError::io(&path, err))?;
            deleted.push(path);
        }
    }
    // Names are UTC times (and -N within a second): newest last.
    backups.sort_by_key(|path| {
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (stamp, n) = match name.rsplit_once('-') {
            Some((stamp, n)) if stamp.len() > NAME_PREFIX.len() => {
                (stamp.to_owned(), n.parse::<u32>().unwrap_or(1))
            }
            _ => (name.clone(), 1),
        };
        (stamp, n)
    });
    let excess = backups.len().saturating_sub(keep);
    for old in backups.into_iter().take(excess) {
        std::fs::remove_dir_all(&old).map_err(|err| BackupError::io(&old, err))?;
        deleted.push(old);
    }
    Ok(deleted)
}
