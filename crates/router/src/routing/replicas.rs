//! Replicas sharing one store: notes from other replicas applied, bounded polling as the
//! fallback, and the live lease of a target read back from the store.

use ghost_core::Status;

use crate::store::Note;

use super::Routing;

impl Routing {
    /// Acts on what another replica changed (see [`crate::store::PgStore`]).
    pub async fn apply_note(&self, note: Note) {
        match note {
            Note::Dispatch(target) => {
                self.refresh_active(&target).await;
                self.dispatch(&target).await;
            }
            Note::Ended(id) => self.waiters.ended(&id),
            Note::Others => self.waiters.maybe_ended_others(),
            Note::Cancel { id, token, reason } => {
                let target = {
                    let slots = self.slots.lock().await;
                    slots.iter().find_map(|(target, slot)| {
                        slot.active
                            .as_ref()
                            .filter(|(active, held, _)| *active == id && *held == token)
                            .map(|_| target.clone())
                    })
                };
                if let Some(target) = target
                    && self.send_cancel(&target, &id, token, reason).await
                {
                    tracing::info!(patch_id = %id, "cancel asked on another replica delivered");
                }
            }
        }
    }

    /// The bounded poll of a replica sharing its store: what the notes of the others would
    /// have said, read again (leases ended elsewhere, work to hand out, waiters to wake).
    pub async fn poll_shared(&self) {
        let targets: Vec<String> = self.slots.lock().await.keys().cloned().collect();
        for target in &targets {
            self.refresh_active(target).await;
        }
        self.dispatch_all().await;
        self.waiters.wake_all();
    }

    /// Forgets this replica's lease of `target` when the store shows it ended (another replica
    /// expired it), so the target is handed out again.
    pub(super) async fn refresh_active(&self, target: &str) {
        let active = self
            .slots
            .lock()
            .await
            .get(target)
            .and_then(|slot| slot.active.clone());
        let Some((id, token, _)) = active else {
            return;
        };
        let live = match self.store.get(id.clone()).await {
            Ok(Some(record)) => {
                record.fencing_token == token
                    && matches!(
                        record.status,
                        Status::Leased | Status::Applying | Status::Validating
                    )
            }
            Ok(None) => false,
            Err(_) => return,
        };
        if live {
            return;
        }
        let mut slots = self.slots.lock().await;
        if let Some(slot) = slots.get_mut(target)
            && slot
                .active
                .as_ref()
                .is_some_and(|(_, held, _)| *held == token)
        {
            slot.active = None;
        }
    }
}
