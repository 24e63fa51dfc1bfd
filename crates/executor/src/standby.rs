//! One active executor per workspace, any number on standby.
//!
//! Each workspace's own state (journal, ledger, snapshots, revert records) lives next to it,
//! in `<root>/.ghost/` (off limits to patches: every path rule refuses `.ghost`), and an
//! exclusive `flock` on `<root>/.ghost/lock` makes one executor its active one. The lock is
//! the kernel's: it goes with the process, however it dies (kill -9 included), and is never
//! inherited by a command (close-on-exec).
//!
//! An executor that cannot take the lock is a **standby** for that target: it does not name
//! the target in its Hello, so the router never leases it a patch of that target (no protocol
//! change, and no lease the router would have to take back), and it tries the lock again every
//! [`LOCK_POLL`]. When the active executor dies, the router ends its session and requeues its
//! lease at once; the standby takes the lock within [`LOCK_POLL`], first stops what the dead
//! executor's commands left running in the workspace and rolls back its half-applied patch
//! from the journal in `.ghost/` (reporting it `interrupted`), and only then announces the
//! target and takes the requeued patch. A standby is ready (`/readyz` 200): it is healthy and
//! waiting; `ghost_executor_active{target}` says which role it has.
//!
//! Existing state dirs keep working by **migration**: when an executor takes a workspace's
//! lock, a journal that an older executor left in `<state_dir>/journal/` is rolled back there
//! first (with the ledger and snapshots beside it), then the target's ledger entries and revert
//! records are moved from `<state_dir>` into `<root>/.ghost/`. `<state_dir>` keeps what is the
//! process's own: the outbox of results owed to the router.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fd::OwnedFd;
use rustix::fs::{FlockOperation, Mode, OFlags};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a standby tries a workspace's lock.
pub const LOCK_POLL: Duration = Duration::from_millis(250);

/// The folder of a workspace's own state, inside it.
pub const STATE_FOLDER: &str = ".ghost";

/// `<root>/.ghost`: where the journal, ledger, snapshots and revert records of the workspace
/// at `root` live.
pub fn state_dir_of(root: &Path) -> PathBuf {
    root.join(STATE_FOLDER)
}

/// A held workspace lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct WorkspaceLock {
    _fd: OwnedFd,
}

/// The locks this executor holds, kept for as long as it runs.
pub type Held = Arc<Mutex<Vec<WorkspaceLock>>>;

/// Takes the lock of the workspace at `root` if no other process holds it: `Ok(None)` when
/// one does. Creates `<root>/.ghost` (private, with a `.gitignore` so git leaves it alone).
pub fn try_lock(root: &Path) -> io::Result<Option<WorkspaceLock>> {
    let dir = state_dir_of(root);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let ignore = dir.join(".gitignore");
    if std::fs::symlink_metadata(&ignore).is_err()
        && let Err(err) = crate::journal::write_atomically(&ignore, b"*\n", 0o644)
    {
        tracing::warn!(path = %ignore.display(), error = %err, "cannot write the state folder's .gitignore");
    }
    let fd = rustix::fs::open(
        dir.join("lock"),
        OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(WorkspaceLock { _fd: fd })),
        Err(err) if err == rustix::io::Errno::WOULDBLOCK || err == rustix::io::Errno::AGAIN => {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// Sets `ghost_executor_active{target}`: 1 while this executor holds the workspace's lock.
pub fn set_active(target: &str, active: bool) {
    metrics::gauge!("ghost_executor_active", "target" => target.to_owned()).set(if active {
        1.0
    } else {
        0.0
    });
}

/// Moves `from` to `to` when `to` does not exist yet (a rename, or a copy then removal across
/// file systems); merges file by file when it does. Nothing is overwritten.
fn move_tree(from: &Path, to: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(from).is_err() {
        return Ok(());
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if std::fs::symlink_metadata(to).is_err() && std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            move_tree(&source, &dest)?;
        } else if kind.is_file() {
            if std::fs::symlink_metadata(&dest).is_err() {
                let bytes = std::fs::read(&source)?;
                crate::journal::write_atomically(&dest, &bytes, 0o600)?;
            }
            std::fs::remove_file(&source)?;
        } else {
            // Neither file nor folder (a symlink planted there): not the executor's; dropped.
            std::fs::remove_file(&source)?;
        }
    }
    std::fs::remove_dir(from)
}

/// Moves the ledger entries and revert records of `target` from an older executor's state dir
/// into the workspace's `.ghost` (call after the old journal, if any, was rolled back).
pub fn migrate(old_state: &Path, new_state: &Path, target: &str) -> io::Result<bool> {
    let mut moved = false;
    for folder in ["ledger", "revert"] {
        let from = old_state.join(folder).join(target);
        if std::fs::symlink_metadata(&from).is_ok() {
            move_tree(&from, &new_state.join(folder).join(target))?;
            moved = true;
        }
    }
    Ok(moved)
}

/// True when an older executor's state dir holds state of `target` (a journal, ledger
/// entries, revert records).
pub fn has_old_state(old_state: &Path, target: &str) -> bool {
    [
        old_state.join("journal").join(format!("{target}.journal")),
        old_state
            .join("journal")
            .join(format!("{target}.journal.unsealed")),
        old_state.join("ledger").join(target),
        old_state.join("revert").join(target),
    ]
    .iter()
    .any(|path| std::fs::symlink_metadata(path).is_ok())
}

/// Waits until at least one target is active (true) or `shutdown` (false).
pub async fn wait_for_any(
    active: &mut watch::Receiver<BTreeSet<String>>,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        if !active.borrow_and_update().is_empty() {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            changed = active.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Resolves when the set of active targets changes (a standby took over a workspace).
pub async fn changed(active: &mut watch::Receiver<BTreeSet<String>>) {
    if active.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Tries, every [`LOCK_POLL`] until `shutdown`, the lock of each workspace this executor is
/// standby for; once taken, makes the workspace whole ([`crate::app::activate`]) and adds the
/// target to the active ones (the connection then announces it in a new session).
pub async fn take_over(worker: crate::connection::Worker, shutdown: CancellationToken) {
    loop {
        let active = worker.active.borrow().clone();
        let waiting: Vec<_> = worker
            .contexts
            .iter()
            .filter(|(target, _)| !active.contains(*target))
            .map(|(target, ctx)| (target.clone(), ctx.clone()))
            .collect();
        if waiting.is_empty() {
            return;
        }
        for (target, ctx) in waiting {
            let worker = worker.clone();
            let taken = tokio::task::spawn_blocking(move || {
                let lock = match try_lock(&ctx.workspace.root) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => return Ok(None),
                    Err(err) => return Err(anyhow::anyhow!("cannot open the lock: {err}")),
                };
                tracing::warn!(%target, "taking over: the active executor's lock was released");
                crate::app::activate(
                    &ctx.workspace,
                    &ctx.root_id,
                    &worker.old_state,
                    &worker.outbox,
                    ctx.limits.max_file_bytes,
                )?;
                Ok(Some((target, lock)))
            })
            .await;
            match taken {
                Ok(Ok(Some((target, lock)))) => {
                    worker
                        .held
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(lock);
                    set_active(&target, true);
                    tracing::info!(%target, "active for this target now; announcing it to the router");
                    worker.active.send_modify(|active| {
                        active.insert(target);
                    });
                }
                Ok(Ok(None)) => {}
                // The lock is dropped with the error: another standby may do better.
                Ok(Err(err)) => tracing::error!(error = %err, "cannot take over a workspace"),
                Err(err) => tracing::error!(error = %err, "the take-over task failed"),
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(LOCK_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_lock_goes_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = try_lock(dir.path()).unwrap().expect("free at first");
        // Another open file description (as another process has) cannot take it.
        assert!(try_lock(dir.path()).unwrap().is_none());
        drop(first);
        assert!(try_lock(dir.path()).unwrap().is_some());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".ghost/.gitignore")).unwrap(),
            "*\n"
        );
    }

    #[test]
    fn migration_moves_ledger_and_revert_records_without_overwriting() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::create_dir_all(old.join("ledger/MAIN")).unwrap();
        std::fs::write(old.join("ledger/MAIN/p1.h.json"), "old p1").unwrap();
        std::fs::write(old.join("ledger/MAIN/p2.h.json"), "old p2").unwrap();
        std::fs::create_dir_all(new.join("ledger/MAIN")).unwrap();
        std::fs::write(new.join("ledger/MAIN/p2.h.json"), "new p2").unwrap();
        std::fs::create_dir_all(old.join("revert/MAIN")).unwrap();
        std::fs::write(old.join("revert/MAIN/1.p1.journal"), "record").unwrap();
        assert!(has_old_state(&old, "MAIN"));
        assert!(migrate(&old, &new, "MAIN").unwrap());
        assert!(!has_old_state(&old, "MAIN"));
        let read = |rel: &str| std::fs::read_to_string(new.join(rel)).unwrap();
        assert_eq!(read("ledger/MAIN/p1.h.json"), "old p1");
        assert_eq!(read("ledger/MAIN/p2.h.json"), "new p2");
        assert_eq!(read("revert/MAIN/1.p1.journal"), "record");
        assert!(!migrate(&old, &new, "MAIN").unwrap());
    }
}
