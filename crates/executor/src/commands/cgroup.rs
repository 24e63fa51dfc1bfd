//! A cgroup of its own per command, when the target names a writable pids-controller cgroup:
//! `pids.max` caps the command's whole tree, which RLIMIT_NPROC does not do for root, and
//! `cgroup.procs` lists every member however it left its group or session.
//!
//! Works with a cgroup v1 `pids` hierarchy directory and with a delegated cgroup v2 subtree
//! that has the `pids` controller enabled for its children. When the directory cannot be
//! created or set up, or the command cannot join it, the command is refused: the target asked
//! for the cap.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Tells apart the cgroups of the commands this process runs.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// One command's cgroup; removed on drop, once its processes are gone.
pub struct CommandCgroup {
    /// The configured `pids_cgroup`.
    parent: PathBuf,
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork so that the child only has to write to it.
    procs: Arc<File>,
}

impl CommandCgroup {
    /// Creates `<parent>/ghost-<executor pid>-<n>` with `pids.max` = `max`.
    pub fn create(parent: &Path, max: u64) -> std::io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("ghost-{}-{n}", std::process::id()));
        fs::create_dir(&dir)?;
        let set_up = fs::write(dir.join("pids.max"), max.to_string()).and_then(|()| {
            fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
        });
        match set_up {
            Ok(procs) => Ok(Self {
                parent: parent.to_owned(),
                dir,
                procs: Arc::new(procs),
            }),
            Err(err) => {
                let _ = fs::remove_dir(&dir);
                Err(err)
            }
        }
    }

    /// The open `cgroup.procs`, for the child to move itself in with before exec.
    pub fn procs(&self) -> Arc<File> {
        Arc::clone(&self.procs)
    }

    /// Every process in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect()
    }

    /// Moves `pid` out into the parent cgroup: it is not the command's (anyone allowed to
    /// may write any pid into `cgroup.procs`, the command too), and would keep the
    /// command's cgroup from being removed.
    pub fn evict(&self, pid: i32) {
        if let Err(err) = fs::write(self.parent.join("cgroup.procs"), pid.to_string()) {
            tracing::warn!(pid, cgroup = %self.dir.display(), error = %err, "cannot move a process out of a command's cgroup");
        }
    }
}

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir(&self.dir) {
            tracing::warn!(cgroup = %self.dir.display(), error = %err, "cannot remove a command's cgroup");
        }
    }
}
