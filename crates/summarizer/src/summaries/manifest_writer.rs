//! Deferred manifests: records mark their target's `patch-manifest.json` stale and this task
//! rewrites each stale manifest at most once per `manifest_delay`, so a burst of records costs
//! one O(patches) rebuild instead of one per record. Stale manifests are flushed on shutdown; a
//! crash leaves them stale until the rebuild at start.
//!
//! A rebuild costs O(patches of the target), so as targets grow the wait after a rewrite grows
//! with it: at least `manifest_delay`, and at least [`BUSY_FACTOR`] times as long as the last
//! rewrite took. Manifest writing then takes at most a tenth of one thread however large the
//! targets get (at 500 patches/s with a fixed 500 ms it took a third of the summarizer's CPU
//! by the end of a 60 s run, and summaries fell behind).

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The wait after a rewrite is at least this many times the rewrite's own duration.
const BUSY_FACTOR: u32 = 9;

/// How long to let records gather after a rewrite that took `took`.
fn gather_for(delay: Duration, took: Duration) -> Duration {
    delay.max(took.saturating_mul(BUSY_FACTOR))
}

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
        let mut gather = delay;
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                () = self.inner.manifest_wake.notified() => {
                    // Let the records of the next `gather` join this rewrite.
                    tokio::select! {
                        () = shutdown.cancelled() => true,
                        () = tokio::time::sleep(gather) => false,
                    }
                }
            };
            let started = Instant::now();
            self.flush_manifests().await;
            if stopping {
                return;
            }
            gather = gather_for(delay, started.elapsed());
        }
    }

    /// Rewrites every stale manifest now.
    pub async fn flush_manifests(&self) {
        let targets = std::mem::take(&mut *lock(&self.inner.stale_manifests));
        for target in targets {
            let store = self.clone();
            let name = target.clone();
            // Built from the index under the target's manifest lock; records go on meanwhile.
            let written = super::blocking(move || store.write_manifest(&name)).await;
            if let Err(err) = written {
                self.note_storage_error(&err);
                // Stale still: rewritten with the next record's round (and at the next start).
                lock(&self.inner.stale_manifests).insert(target);
                tracing::error!(error = ?anyhow::Error::from(err), "cannot rewrite a patch manifest; it is retried with the next record and rebuilt at the next start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_the_delay_until_rewrites_get_slow_then_nine_times_their_cost() {
        let delay = Duration::from_millis(500);
        assert_eq!(gather_for(delay, Duration::from_millis(5)), delay);
        assert_eq!(gather_for(delay, Duration::from_millis(55)), delay);
        assert_eq!(
            gather_for(delay, Duration::from_millis(200)),
            Duration::from_millis(1_800)
        );
        assert_eq!(
            gather_for(Duration::ZERO, Duration::from_millis(1)),
            Duration::from_millis(9)
        );
    }
}
