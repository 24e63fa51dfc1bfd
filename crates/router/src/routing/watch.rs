//! Alerts and the per-target view: `ListTargets`, queues waiting with no executor
//! (`queue_stale`), revert patches waiting for a revert-capable executor.

use std::collections::{BTreeMap, HashMap};

use crate::error::RouterError;
use crate::queue_ages::Oldest;
use crate::store::{NewAlert, TargetRow, now_ms};

use super::{Routing, TargetView, millis, queue_key, revert_key};

impl Routing {
    /// Raises `alert` through the alert outbox unless it is already firing.
    pub(crate) async fn raise(&self, alert: NewAlert) {
        let key = alert.key.clone();
        match self.store.raise_alert(alert).await {
            Ok(true) => {
                tracing::warn!(alert = %key, "alert raised");
                self.alert_wake.notify_one();
            }
            Ok(false) => {}
            Err(err) => tracing::error!(alert = %key, error = %err, "cannot store alert"),
        }
    }

    /// Resolves the firing alert `key` through the alert outbox.
    pub(crate) async fn resolve(&self, key: String, summary: String) {
        match self.store.resolve_alert(key.clone(), summary).await {
            Ok(true) => {
                tracing::info!(alert = %key, "alert resolved");
                self.alert_wake.notify_one();
            }
            Ok(false) => {}
            Err(err) => tracing::error!(alert = %key, error = %err, "cannot store alert"),
        }
    }

    /// Every known target with its queue and executor presence.
    pub async fn targets(&self) -> Result<Vec<TargetView>, RouterError> {
        let rows = self.store.targets().await?;
        let slots = self.slots.lock().await;
        let mut views: BTreeMap<String, TargetView> = rows
            .into_iter()
            .map(|row| {
                let slot = slots.get(&row.target);
                let online = slot.is_some_and(|slot| !slot.sessions.is_empty());
                let revert_online =
                    slot.is_some_and(|slot| slot.sessions.iter().any(|session| session.revert));
                (
                    row.target.clone(),
                    TargetView {
                        row,
                        executor_online: online,
                        revert_online,
                    },
                )
            })
            .collect();
        for (target, slot) in slots.iter() {
            if !slot.sessions.is_empty() && !views.contains_key(target) {
                views.insert(
                    target.clone(),
                    TargetView {
                        row: TargetRow {
                            target: target.clone(),
                            ..TargetRow::default()
                        },
                        executor_online: true,
                        revert_online: slot.sessions.iter().any(|session| session.revert),
                    },
                );
            }
        }
        Ok(views.into_values().collect())
    }

    /// Raises `queue_stale/<target>` for queues whose oldest patch waited longer than
    /// `stale_after` with no executor online, resolves it when that is no longer so, and
    /// publishes queue-depth gauges.
    pub async fn check_stale(&self) {
        let views = match self.targets().await {
            Ok(views) => views,
            Err(err) => {
                tracing::error!(error = %err, "cannot read targets for stale detection");
                return;
            }
        };
        let firing = self.store.firing_alerts().await.unwrap_or_default();
        let ages = self.queue_ages(&views);
        // (queued, oldest age in ms) per label: the targets under OTHER_TARGET add up.
        let mut queues: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        for view in views {
            let target = &view.row.target;
            let age_ms = ages.get(&queue_key(target)).copied().unwrap_or(0);
            let queue = queues.entry(self.target_label(target)).or_default();
            queue.0 += u64::from(view.row.queued);
            queue.1 = queue.1.max(age_ms);
            let key = format!("queue_stale/{target}");
            let stale = view.row.queued > 0
                && !view.row.paused
                && !view.executor_online
                && age_ms >= millis(self.policy.stale_after);
            if stale {
                self.raise(NewAlert {
                    key,
                    severity: "warning",
                    summary: format!(
                        "{} patch(es) queued on {target} for {}s with no executor online",
                        view.row.queued,
                        age_ms / 1000
                    ),
                    labels: vec![("target".to_owned(), target.clone())],
                })
                .await;
            } else if firing.contains(&key) {
                let why = if view.row.queued == 0 {
                    format!("the queue of {target} is empty")
                } else if view.row.paused {
                    format!("{target} is paused")
                } else {
                    format!("an executor serves {target}")
                };
                self.resolve(key, why).await;
            }
            let revert_age_ms = ages.get(&revert_key(target)).copied().unwrap_or(0);
            self.check_revert_waiting(&view, revert_age_ms, &firing)
                .await;
        }
        for (label, (queued, age_ms)) in queues {
            metrics::gauge!("ghost_queue_depth", "target" => label.clone()).set(queued as f64);
            metrics::gauge!("ghost_queue_oldest_age_seconds", "target" => label)
                .set(age_ms as f64 / 1000.0);
        }
    }

    /// The wait of each target's oldest queued patch and oldest queued revert patch (keys
    /// [`queue_key`], [`revert_key`]), in rule time: a wall-clock jump neither raises nor
    /// silences `queue_stale` (see [`crate::queue_ages`]). People still see wall times.
    pub(super) fn queue_ages(&self, views: &[TargetView]) -> HashMap<String, i64> {
        let mut queues = Vec::with_capacity(views.len() * 2);
        for view in views {
            let row = &view.row;
            queues.push((
                queue_key(&row.target),
                (row.queued > 0).then_some(Oldest {
                    order: row.oldest_queued_seq,
                    created_wall_ms: row.oldest_queued_ms,
                }),
            ));
            queues.push((
                revert_key(&row.target),
                (row.queued_reverts > 0).then_some(Oldest {
                    order: row.oldest_queued_revert_seq,
                    created_wall_ms: row.oldest_queued_revert_ms,
                }),
            ));
        }
        self.queue_ages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sweep(&queues, self.clock.now_ms(), now_ms())
    }

    /// Raises `revert_waiting/<target>` when a revert patch waited `stale_after` in the queue
    /// of `view`'s target with no connected session advertising `revert` (an older executor
    /// is never leased one, so `queue_stale` alone would not say it); resolves it when such a
    /// session serves the target or no revert patch is queued there.
    pub(super) async fn check_revert_waiting(
        &self,
        view: &TargetView,
        age_ms: i64,
        firing: &[String],
    ) {
        let target = &view.row.target;
        let key = format!("revert_waiting/{target}");
        let waiting = view.row.queued_reverts > 0
            && !view.row.paused
            && !view.revert_online
            && age_ms >= millis(self.policy.stale_after);
        if waiting {
            self.raise(NewAlert {
                key,
                severity: "warning",
                summary: format!(
                    "{} revert patch(es) queued on {target} for {}s: no connected executor \
                     serving it advertises revert (upgrade it, or connect one that does)",
                    view.row.queued_reverts,
                    age_ms / 1000
                ),
                labels: vec![("target".to_owned(), target.clone())],
            })
            .await;
        } else if firing.contains(&key) {
            let why = if view.row.queued_reverts == 0 {
                format!("no revert patch is queued on {target}")
            } else if view.row.paused {
                format!("{target} is paused")
            } else {
                format!("an executor advertising revert serves {target}")
            };
            self.resolve(key, why).await;
        }
    }
}
