//! The executor's own storage: its state dir (journal, ledger, outbox, snapshots, revert
//! records) on a disk that fills, returns EIO or fails an fsync.
//!
//! An attempt that cannot write there never applies what it could not roll back or report
//! ([`crate::apply::apply_or_hand_back`]): it leaves the workspace as it was and hands its
//! lease back. The executor is then *degraded* ([`StorageHealth`]): `/readyz` 503 with the
//! reason, `ghost_storage_degraded{service="executor"}` 1, the fault counted in
//! `ghost_storage_faults_total`, one error line in the log. It ends its Work stream, so the
//! router requeues the patch at once and raises `executor_lost/<target>` (the alert path that
//! does not need this disk), and it dials the router again only once a probe write in the
//! state dir (written, fsync'd, renamed, folder fsync'd, removed) succeeds.

use std::path::Path;
use std::time::Duration;

use ghost_runtime::storage::{Fault, FaultKind, StorageHealth};
use tokio_util::sync::CancellationToken;

use crate::apply::HandBack;
use crate::connection::Worker;

/// How often a degraded executor tries its probe write.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Bytes the probe writes: a disk with less room than this left is still called full (a
/// journal needs room for the originals of the files a patch touches).
pub const PROBE_BYTES: usize = 64 * 1024;

/// The probe's file in the state dir.
const PROBE_NAME: &str = ".storage-probe";

/// Records the fault of a handed-back attempt: the executor is degraded from now on.
pub fn hand_back(worker: &Worker, fault: &HandBack) {
    worker.storage.fault(fault.kind, fault.detail.clone());
    tracing::warn!(
        kind = fault.kind.as_str(),
        error = %fault.detail,
        "the executor's state dir failed: the workspace is as it was, the lease is handed back \
         (the router requeues the patch) and no lease is taken until a probe write succeeds"
    );
}

/// Writes, syncs and removes a probe file in the state dir and in its journal and ledger
/// folders (each may be a mount of its own), creating them if missing.
pub fn probe(state_dir: &Path) -> Result<(), HandBack> {
    for dir in [
        state_dir.to_path_buf(),
        state_dir.join("journal"),
        state_dir.join("ledger"),
    ] {
        probe_in(&dir)?;
    }
    Ok(())
}

fn probe_in(dir: &Path) -> Result<(), HandBack> {
    let failed = |err: std::io::Error| HandBack {
        kind: if crate::journal::is_unsynced(&err) {
            FaultKind::Fsync
        } else {
            FaultKind::from_io(&err).unwrap_or(FaultKind::Io)
        },
        detail: format!("probe write in {}: {err}", dir.display()),
    };
    // Private, as the journal's own folder is made (it holds the originals of patched files).
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed)?;
    }
    let path = dir.join(PROBE_NAME);
    let written = crate::journal::write_atomically(&path, &[0u8; PROBE_BYTES], 0o600);
    // Removed whether or not the write succeeded: it must not eat the room it tests for.
    let _ = std::fs::remove_file(&path);
    written.map_err(failed)
}

/// Probes the state dir every [`PROBE_EVERY`] until a write succeeds (the executor heals:
/// true) or `shutdown` (false).
pub async fn wait_until_healed(worker: &Worker, shutdown: &CancellationToken) -> bool {
    // The config's state dir (the outbox) and each workspace's `.ghost` (journal, ledger).
    let mut dirs = vec![worker.config.state_dir.clone()];
    dirs.extend(
        worker
            .contexts
            .values()
            .map(|ctx| ctx.workspace.state_dir.clone()),
    );
    loop {
        let dirs = dirs.clone();
        let probed =
            tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|dir| probe(dir)))
                .await
                .unwrap_or_else(|err| {
                    Err(HandBack {
                        kind: FaultKind::Io,
                        detail: format!("probe task failed: {err}"),
                    })
                });
        match probed {
            Ok(()) => {
                worker.storage.healed();
                return true;
            }
            Err(fault) => {
                tracing::debug!(kind = fault.kind.as_str(), error = %fault.detail, "the state dir still fails");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(PROBE_EVERY) => {}
        }
    }
}

/// Resolves once the state dir is degraded (at once if it already is); never while it is not.
pub async fn degraded(changes: &mut tokio::sync::watch::Receiver<Option<Fault>>) {
    loop {
        if changes.borrow_and_update().is_some() {
            return;
        }
        if changes.changed().await.is_err() {
            // The health is gone with the executor: nothing more to wait for.
            std::future::pending::<()>().await;
        }
    }
}

/// The health of a new executor's state dir (healthy until a write fails).
pub fn health() -> StorageHealth {
    StorageHealth::new(crate::SERVICE)
}
