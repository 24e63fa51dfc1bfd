//! Deferred manifests: records mark their target's `patch-manifest.json` stale and this task
//! rewrites each stale manifest at most once per `manifest_delay`, so a burst of records costs
//! one O(patches) rebuild instead of one per record. Stale manifests are flushed on shutdown; a
//! crash leaves them stale until the rebuild at start.

use tokio_util::sync::CancellationToken;

use super::{Summaries, lock};

impl Summaries {
    /// Marks the manifest of `target` as older than its records and wakes the writer.
    pub(super) fn manifest_stale(&self, target: &str) {
        let fresh = lock(&self.inner.stale_manifests).insert(target.to_owned());
        if fresh {
            self.inner.manifest_wake.notify_one();
        }
    }

    /// Rewrites stale manifests until `shutdown`, then flushes the last ones. Returns at once
    /// when manifests are written by every record (`manifest_delay` zero).
    pub async fn run_manifest_writer(self, shutdown: CancellationToken) {
        let delay = self.inner.options.manifest_delay;
        if delay.is_zero() {
            return;
        }
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = self.inner.manifest_wake.notified() => {
                    // Let the records of the next `delay` join this rewrite.
                    tokio::select! {
                        () = shutdown.cancelled() => true,
                        () = tokio::time::sleep(delay) => false,
                    }
                }
            };
            self.flush_manifests().await;
            if stopping {
                return;
            }
        }
    }

    /// Rewrites every stale manifest now.
    pub async fn flush_manifests(&self) {
        let targets = std::mem::take(&mut *lock(&self.inner.stale_manifests));
        for target in targets {
            let store = self.clone();
            // Built from the index under the target's manifest lock; records go on meanwhile.
            let written = super::blocking(move || store.write_manifest(&target)).await;
            if let Err(err) = written {
                tracing::error!(error = ?anyhow::Error::from(err), "cannot rewrite a patch manifest; it is rebuilt at the next start");
            }
        }
    }
}
