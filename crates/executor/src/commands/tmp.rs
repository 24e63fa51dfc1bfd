//! A command's private temp dir: made for each run, removed after it, and swept at start
//! when an earlier executor's commands left theirs.

use std::path::{Path, PathBuf};

/// The prefixes of the temp dirs commands and agents get.
const TMP_PREFIXES: [&str; 2] = ["ghost-cmd-", "ghost-agent-"];

/// Makes a private temp dir (0700, named `<prefix>-<executor pid>-<random>`) under the
/// system's temp dir.
pub fn private_tmp(prefix: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|err| std::io::Error::other(err.to_string()))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Removes the temp dirs of commands and agents that an executor no longer running (one that
/// crashed) left behind: ours by owner, named with a pid that no process has now. Returns
/// how many. Call at start.
pub fn sweep_tmp() -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    // Our uid: the owner of our own /proc entry.
    let Ok(me) = std::fs::metadata("/proc/self").map(|meta| meta.uid()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|name| TMP_PREFIXES.iter().find_map(|p| name.strip_prefix(p)))
        else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Never through a symlink, never another user's.
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != me {
            continue;
        }
        if std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A temp dir removed (with what the command left in it) when dropped.
pub(super) struct TmpGuard(pub(super) Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Err(err) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove a command's temp dir");
        }
    }
}
