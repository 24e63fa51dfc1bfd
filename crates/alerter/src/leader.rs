//! [`Leader`]: which replica runs the singletons (the health monitor and the alert timers).
//!
//! On SQLite there is one replica and it always leads. On PostgreSQL the replicas share the
//! lease `leader` (a row of `leases`, the server's clock): the holder renews it every
//! [`RENEW_EVERY`]; it lasts [`LEASE`], so a replica that died without a word is replaced
//! within that, and one that stops cleanly gives it up (see `App::run`) so another takes over
//! at its next renewal.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The name of the leader's lease.
pub const LEASE_NAME: &str = "leader";
/// How long the leader's lease lasts after its last renewal.
pub const LEASE: Duration = Duration::from_secs(3);
/// How often every replica tries to take or renew it.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Whether this replica leads now. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leader {
    state: watch::Receiver<bool>,
}

impl Leader {
    /// A leader that always leads (one replica, SQLite).
    pub fn always() -> Self {
        let (_, state) = watch::channel(true);
        Self { state }
    }

    /// A leader elected among the replicas sharing `store`, with the loop that keeps it
    /// (run it until shutdown); on SQLite, [`Self::always`] and no loop.
    pub fn elect(store: &Store, shutdown: CancellationToken) -> (Self, Option<ElectionLoop>) {
        if !store.is_shared() {
            return (Self::always(), None);
        }
        let (report, state) = watch::channel(false);
        let run = ElectionLoop {
            store: store.clone(),
            report,
            shutdown,
        };
        (Self { state }, Some(run))
    }

    /// True while this replica leads.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
    }
}

/// Takes or renews the lease every [`RENEW_EVERY`] until shutdown.
pub struct ElectionLoop {
    store: Store,
    report: watch::Sender<bool>,
    shutdown: CancellationToken,
}

impl ElectionLoop {
    /// Runs until shutdown; a storage error counts as not leading (the lease may have moved).
    pub async fn run(self) {
        loop {
            let leads = match self.store.hold_lease(LEASE_NAME, LEASE).await {
                Ok(leads) => leads,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot renew the leader lease; not leading");
                    false
                }
            };
            let was = self.report.send_replace(leads);
            if was != leads {
                tracing::info!(leads, "leadership changed");
            }
            tokio::select! {
                () = self.shutdown.cancelled() => {
                    self.report.send_replace(false);
                    return;
                }
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
        }
    }
}
