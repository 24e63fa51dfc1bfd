//! Leases that ended without a result: expired or of a lost session; each attempt is
//! interrupted, the patch requeued or `lost`, and alerts raised.

use crate::store::{LeaseEnded, NewAlert, StoreError};

use super::Routing;

impl Routing {
    /// Interrupts attempts whose lease expired: tells their executors to stop (a late result
    /// would be refused by fencing anyway), requeues or loses the patches, raises alerts.
    pub async fn expire_leases(&self) {
        if self.storage_degraded() {
            // Renewals cannot be stored either: a lease is not lost for a disk's fault.
            return;
        }
        let ended = self
            .store
            .end_leases(None, "lease expired".to_owned(), self.policy.max_attempts)
            .await;
        if let Ok(ended) = &ended {
            for lease in ended {
                let sent = self
                    .send_cancel(
                        &lease.target,
                        &lease.id,
                        lease.fencing_token,
                        "lease expired".to_owned(),
                    )
                    .await;
                if !sent && self.shared {
                    let reason = "lease expired".to_owned();
                    let published = self
                        .store
                        .publish_cancel(lease.id.clone(), lease.fencing_token, reason)
                        .await;
                    if let Err(err) = published {
                        tracing::warn!(patch_id = %lease.id, error = %err, "cannot ask the other replicas to cancel");
                    }
                }
            }
        }
        self.after_leases_ended(ended).await;
    }

    /// Frees the targets of ended leases, raises their alerts and hands out work again.
    pub(super) async fn after_leases_ended(&self, ended: Result<Vec<LeaseEnded>, StoreError>) {
        let ended = match ended {
            Ok(ended) => ended,
            Err(err) => {
                tracing::error!(error = %err, "cannot end leases");
                return;
            }
        };
        if ended.is_empty() {
            return;
        }
        {
            let mut slots = self.slots.lock().await;
            for lease in &ended {
                if let Some(slot) = slots.get_mut(&lease.target)
                    && slot
                        .active
                        .as_ref()
                        .is_some_and(|(_, token, _)| *token == lease.fencing_token)
                {
                    slot.active = None;
                }
            }
        }
        if ended.iter().any(|lease| lease.lost) {
            for lease in ended.iter().filter(|lease| lease.lost) {
                self.waiters.ended(&lease.id);
            }
            // The dependents of a lost patch were failed in the same transaction.
            self.waiters.maybe_ended_others();
        }
        for lease in &ended {
            let (key, severity, summary) = if lease.lost {
                metrics::counter!("ghost_patches_total", "target" => self.target_label(&lease.target), "outcome" => "lost")
                    .increment(1);
                tracing::error!(patch_id = %lease.id, target = %lease.target, attempt = lease.attempt, "patch lost: attempts exhausted");
                (
                    format!("patch_lost/{}/{}", lease.target, lease.id),
                    "critical",
                    format!(
                        "patch {} on {} is lost: attempt {} was interrupted and no attempts remain",
                        lease.id, lease.target, lease.attempt
                    ),
                )
            } else {
                tracing::warn!(patch_id = %lease.id, target = %lease.target, attempt = lease.attempt, "attempt interrupted; patch requeued");
                (
                    format!(
                        "patch_interrupted/{}/{}/{}",
                        lease.target, lease.id, lease.attempt
                    ),
                    "warning",
                    format!(
                        "attempt {} of patch {} on {} was interrupted ({}); requeued",
                        lease.attempt, lease.id, lease.target, lease.owner
                    ),
                )
            };
            self.raise(NewAlert {
                key,
                severity,
                summary,
                labels: vec![
                    ("target".to_owned(), lease.target.clone()),
                    ("patch_id".to_owned(), lease.id.clone()),
                    ("attempt".to_owned(), lease.attempt.to_string()),
                ],
            })
            .await;
        }
        self.outbox_wake.notify_one();
        self.dispatch_all().await;
    }
}
