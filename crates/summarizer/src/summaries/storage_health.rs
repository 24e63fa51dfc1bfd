//! The store's storage health: a storage fault degrades it (readiness 503, records refused
//! with UNAVAILABLE), and a probe rewriting one small file heals it.

use ghost_runtime::storage::StorageHealth;
use tokio_util::sync::CancellationToken;

use super::{Summaries, blocking};
use crate::atomic_file;
use crate::error::SummarizerError;

/// The file the storage probe rewrites, in the data dir.
const STORAGE_PROBE_FILE: &str = ".storage-probe";
/// The first wait before probing a degraded store; doubles up to [`MAX_PROBE_WAIT`].
const FIRST_PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest wait between two probes of a degraded store (and the longest a probe may take).
const MAX_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl Summaries {
    /// The health of the disk under the store.
    pub fn health(&self) -> &StorageHealth {
        &self.inner.health
    }

    /// A storage fault behind `err` degrades the store and becomes
    /// [`SummarizerError::Unavailable`]; any other error is returned as it is.
    pub(super) fn storage_error(&self, err: SummarizerError) -> SummarizerError {
        let Some(kind) = err.storage_fault() else {
            return err;
        };
        // A PostgreSQL server gone is `unreachable` ("the summarizer's database is
        // unreachable"); the detail, logged and sent with the alert, says what failed.
        let detail = format!("{:#}", anyhow::Error::from(err));
        self.inner.health.fault(kind, detail);
        SummarizerError::Unavailable(kind.sentence(crate::SERVICE))
    }

    /// Notes a failed background write (outbox, manifest, archive): a storage fault behind it
    /// degrades the store like a failed record does.
    pub(crate) fn note_storage_error(&self, err: &SummarizerError) {
        if let Some(kind) = err.storage_fault() {
            self.inner.health.fault(kind, err.to_string());
        }
    }

    /// One real write of each kind the store makes: a small file written atomically (fsync of
    /// the file and its folder) and a committed row in the index, on a fresh connection (the old
    /// one is not trusted after a failed write).
    pub async fn probe(&self) -> Result<(), SummarizerError> {
        let store = self.clone();
        blocking(move || {
            let index = &store.inner.index;
            index.reopen()?;
            let now = store.now_ms();
            if store.database().is_none() {
                atomic_file::write(
                    &store.inner.data_dir.join(STORAGE_PROBE_FILE),
                    now.to_string().as_bytes(),
                )?;
            }
            index.probe(now)
        })
        .await
    }

    /// While the store is degraded, probes it ([`Self::probe`]) at growing intervals (up to
    /// [`MAX_PROBE_WAIT`]) and heals it at the first probe that succeeds: the service heals by
    /// itself when the disk does. Runs until `shutdown`.
    pub async fn run_storage_probe(self, shutdown: CancellationToken) {
        let mut changes = self.inner.health.subscribe();
        loop {
            if !self.inner.health.is_degraded() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut wait = FIRST_PROBE_WAIT;
            while self.inner.health.is_degraded() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                match tokio::time::timeout(MAX_PROBE_WAIT, self.probe()).await {
                    Ok(Ok(())) => {
                        self.inner.health.healed();
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "storage probe failed; the store stays degraded");
                        wait = (wait * 2).min(MAX_PROBE_WAIT);
                    }
                    Err(_) => wait = MAX_PROBE_WAIT,
                }
            }
        }
    }
}
