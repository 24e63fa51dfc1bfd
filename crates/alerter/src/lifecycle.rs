//! The alert lifecycle: raise (dedup by key), group, repeat, escalate, acknowledge, silence and
//! resolve system alerts (`service_down/<svc>`, `executor_lost/<target>`, `queue_stale/<target>`…).
//!
//! - **Grouping**: alerts whose keys share the part before the first `/` and that are raised
//!   within `group_wait` of the group's oldest pending alert go out as one message listing them.
//! - **Repeat**: a firing, unacknowledged, unsilenced alert is repeated in its thread every
//!   `repeat_interval`.
//! - **Escalation**: once, `escalate_after` after it was first posted, unless acknowledged: a
//!   new message with `escalation_mention`, in `escalation_channel` or the main channel.
//! - **Ack** stops repeats and escalation; who and when are stored.
//! - **Silence** (by key, or by target: a `target`/`service` label or the key's last part)
//!   holds back posting, repeats and escalation until it ends.
//! - **Resolve** says `✅ resolved` in the alert's thread (an alert never posted ends quietly).
//!
//! All time comes from the injected [`RuleClock`](ghost_runtime::clock::RuleClock); [`Lifecycle::tick`]
//! applies the timers and is driven by [`Lifecycle::run`] every `tick`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

pub use crate::alert::{Ack, AlertState, Phase, Severity};
use crate::config::AlertPolicy;
use crate::error::AlerterError;
use crate::leader::Leader;
use crate::messages;
use crate::mrkdwn::escape;
use crate::outbox::Outbox;
use crate::store::{AlertsLock, Kind, NewMessage, Priority, Silence};
use ghost_runtime::clock::SharedClock;

/// A request to raise an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaiseAlert {
    /// Dedup key, e.g. `executor_lost/MAIN`.
    pub key: String,
    /// How bad.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    /// E.g. target, service.
    pub labels: BTreeMap<String, String>,
    /// Who raised it.
    pub source: String,
}

/// The group of `key`: its part before the first `/`.
pub fn group_of(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// True when silence `matcher` covers `alert`: the key itself, a key prefix ending in `/` or
/// `*`, or (without `/`) a target: the `target`/`service` label or the key's last part.
pub fn silence_matches(matcher: &str, alert: &AlertState) -> bool {
    if matcher == alert.key {
        return true;
    }
    if let Some(prefix) = matcher.strip_suffix('*') {
        return alert.key.starts_with(prefix);
    }
    if matcher.ends_with('/') {
        return alert.key.starts_with(matcher);
    }
    if matcher.contains('/') {
        return false;
    }
    alert.labels.get("target").map(String::as_str) == Some(matcher)
        || alert.labels.get("service").map(String::as_str) == Some(matcher)
        || alert.key.rsplit('/').next() == Some(matcher)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A human duration such as `5m 3s`.
pub fn human(ms: i64) -> String {
    let secs = u64::try_from(ms.max(0) / 1000).unwrap_or(0);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

struct Inner {
    alerts: BTreeMap<String, AlertState>,
    silences: Vec<Silence>,
}

impl Inner {
    fn silenced(&self, alert: &AlertState, now_ms: i64) -> bool {
        self.silences
            .iter()
            .any(|silence| silence.until_ms > now_ms && silence_matches(&silence.matcher, alert))
    }
}

/// The active alerts and silences as stored.
async fn read_inner(store: &crate::store::Store, now_ms: i64) -> Result<Inner, AlerterError> {
    let mut alerts = BTreeMap::new();
    for alert in store.active_alerts().await? {
        alerts.insert(alert.key.clone(), alert);
    }
    let silences = store.silences(now_ms).await?;
    Ok(Inner { alerts, silences })
}

/// The state held for a change ([`Lifecycle::locked`]): this replica's lock and, on
/// PostgreSQL, the replicas' alerts lock.
struct Locked<'a> {
    inner: tokio::sync::MutexGuard<'a, Inner>,
    _replicas: Option<AlertsLock>,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

/// The alert lifecycle engine. Share it with an `Arc`.
pub struct Lifecycle {
    inner: Mutex<Inner>,
    outbox: Outbox,
    clock: SharedClock,
    policy: AlertPolicy,
    channel: String,
}

impl Lifecycle {
    /// Loads the active alerts and silences from the outbox's store.
    pub async fn load(
        outbox: Outbox,
        clock: SharedClock,
        policy: AlertPolicy,
        channel: String,
    ) -> Result<Self, AlerterError> {
        let inner = read_inner(outbox.store(), clock.now_ms()).await?;
        Ok(Self {
            inner: Mutex::new(inner),
            outbox,
            clock,
            policy,
            channel,
        })
    }

    /// The state, locked; on a shared store (PostgreSQL) first read again, since another
    /// replica may have raised, acknowledged or silenced meanwhile.
    async fn fresh(&self) -> Result<tokio::sync::MutexGuard<'_, Inner>, AlerterError> {
        let mut inner = self.inner.lock().await;
        let store = self.outbox.store();
        if store.is_shared() {
            *inner = read_inner(store, self.clock.now_ms()).await?;
        }
        Ok(inner)
    }

    /// The state locked for a change: [`Self::fresh`] read under the replicas' alerts lock
    /// (PostgreSQL), held until the change is stored, so two replicas raising one key at once
    /// do not both post it.
    async fn locked(&self) -> Result<Locked<'_>, AlerterError> {
        let mut inner = self.inner.lock().await;
        let store = self.outbox.store();
        let replicas = store.lock_alerts().await?;
        if store.is_shared() {
            *inner = read_inner(store, self.clock.now_ms()).await?;
        }
        Ok(Locked {
            inner,
            _replicas: replicas,
        })
    }

    /// [`Self::fresh`] for readers that cannot fail: on a storage error, the state as last
    /// read.
    async fn locked_or_last(&self) -> tokio::sync::MutexGuard<'_, Inner> {
        match self.fresh().await {
            Ok(inner) => inner,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the alerts again; showing the last read");
                self.inner.lock().await
            }
        }
    }

    /// Raises `request` (an already active key is updated, not re-posted), then applies timers.
    pub async fn raise(
        &self,
        request: RaiseAlert,
        traceparent: Option<String>,
    ) -> Result<(), AlerterError> {
        let now = self.clock.now_ms();
        let mut inner = self.locked().await?;
        let alert = match inner.alerts.get_mut(&request.key) {
            Some(active) => {
                active.severity = request.severity;
                active.summary = request.summary;
                active.labels = request.labels;
                active.clone()
            }
            None => {
                let alert = AlertState {
                    group: group_of(&request.key).to_owned(),
                    key: request.key,
                    severity: request.severity,
                    summary: request.summary,
                    labels: request.labels,
                    source: request.source,
                    raised_ms: now,
                    phase: Phase::Pending,
                    thread: None,
                    notified_ms: None,
                    last_notified_ms: now,
                    ack: None,
                    escalated: false,
                    resolved_ms: None,
                };
                tracing::info!(key = %alert.key, severity = alert.severity.as_str(), "alert raised");
                metrics::counter!("ghost_alerts_total", "event" => "raised").increment(1);
                inner.alerts.insert(alert.key.clone(), alert.clone());
                alert
            }
        };
        self.save(&alert).await?;
        self.apply_timers(&mut inner, now, traceparent).await
    }

    /// Resolves the active alert `key`; false when none is active.
    pub async fn resolve(&self, key: &str) -> Result<bool, AlerterError> {
        let now = self.clock.now_ms();
        let mut inner = self.locked().await?;
        let Some(mut alert) = inner.alerts.remove(key) else {
            return Ok(false);
        };
        let was_posted = alert.phase == Phase::Firing;
        alert.phase = Phase::Resolved;
        alert.resolved_ms = Some(now);
        self.save(&alert).await?;
        metrics::counter!("ghost_alerts_total", "event" => "resolved").increment(1);
        tracing::info!(key, was_posted, "alert resolved");
        if let (true, Some(thread)) = (was_posted, &alert.thread) {
            let text = format!(
                "✅ resolved: `{}` (after {})",
                escape(key),
                human(now - alert.raised_ms)
            );
            self.outbox
                .enqueue(vec![self.reply(thread, messages::line(&text), None)])
                .await?;
        }
        Ok(true)
    }

    /// Acknowledges the active alert `key` as `by`.
    pub async fn ack(&self, key: &str, by: &str) -> Result<AlertState, AlerterError> {
        let now = self.clock.now_ms();
        let mut inner = self.locked().await?;
        let Some(alert) = inner.alerts.get_mut(key) else {
            return Err(AlerterError::UnknownAlert {
                key: key.to_owned(),
            });
        };
        if alert.ack.is_some() {
            return Ok(alert.clone());
        }
        alert.ack = Some(Ack {
            by: by.to_owned(),
            at_ms: now,
        });
        let alert = alert.clone();
        self.save(&alert).await?;
        metrics::counter!("ghost_alerts_total", "event" => "acked").increment(1);
        if let (Phase::Firing, Some(thread)) = (alert.phase, &alert.thread) {
            let text = format!("👀 `{}` acknowledged by <@{}>", escape(key), escape(by));
            self.outbox
                .enqueue(vec![self.reply(thread, messages::line(&text), None)])
                .await?;
        }
        Ok(alert)
    }

    /// Silences alerts matching `matcher` (a key or a target) for `duration`.
    pub async fn silence(
        &self,
        matcher: &str,
        duration: Duration,
        by: &str,
    ) -> Result<Silence, AlerterError> {
        let now = self.clock.now_ms();
        let mut inner = self.locked().await?;
        let silence = self
            .outbox
            .store()
            .add_silence(
                matcher.to_owned(),
                now.saturating_add(millis(duration)),
                by.to_owned(),
                now,
            )
            .await?;
        inner.silences.push(silence.clone());
        Ok(silence)
    }

    /// Ends silence `id`; false when there is no such active silence.
    pub async fn unsilence(&self, id: i64) -> Result<bool, AlerterError> {
        let mut inner = self.locked().await?;
        let removed = self.outbox.store().remove_silence(id).await?;
        inner.silences.retain(|silence| silence.id != id);
        if removed {
            let now = self.clock.now_ms();
            self.apply_timers(&mut inner, now, None).await?;
        }
        Ok(removed)
    }

    /// Active alerts, by key.
    pub async fn active(&self) -> Vec<AlertState> {
        self.locked_or_last()
            .await
            .alerts
            .values()
            .cloned()
            .collect()
    }

    /// Silences in force now.
    pub async fn silences(&self) -> Vec<Silence> {
        let now = self.clock.now_ms();
        let inner = self.locked_or_last().await;
        inner
            .silences
            .iter()
            .filter(|silence| silence.until_ms > now)
            .cloned()
            .collect()
    }

    /// True when `alert` is silenced now.
    pub async fn is_silenced(&self, alert: &AlertState) -> bool {
        let now = self.clock.now_ms();
        self.locked_or_last().await.silenced(alert, now)
    }

    /// Applies the timers (group flush, repeat, escalation) at the clock's now.
    pub async fn tick(&self) -> Result<(), AlerterError> {
        let now = self.clock.now_ms();
        let mut inner = self.locked().await?;
        self.apply_timers(&mut inner, now, None).await
    }

    /// Ticks every `policy.tick` until `shutdown`, while this replica leads (one replica
    /// repeats and escalates).
    pub async fn run(self: Arc<Self>, leader: Leader, shutdown: CancellationToken) {
        let every = self.policy.tick.max(Duration::from_millis(10));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if !leader.is_leader() {
                continue;
            }
            if let Err(err) = self.tick().await {
                tracing::error!(error = %err, "alert timers failed");
            }
        }
    }

    fn reply(
        &self,
        thread: &str,
        body: serde_json::Value,
        traceparent: Option<String>,
    ) -> NewMessage {
        NewMessage {
            thread: thread.to_owned(),
            channel: self.channel.clone(),
            kind: Kind::Reply,
            body,
            traceparent,
            priority: Priority::Thread,
        }
    }

    async fn save(&self, alert: &AlertState) -> Result<(), AlerterError> {
        self.outbox.store().save_alert(alert).await?;
        Ok(())
    }

    async fn apply_timers(
        &self,
        inner: &mut Inner,
        now: i64,
        traceparent: Option<String>,
    ) -> Result<(), AlerterError> {
        inner.silences.retain(|silence| silence.until_ms > now);
        let mut out = TimerOutput::default();
        self.flush_groups(inner, now, traceparent.as_ref(), &mut out);
        self.repeat_and_escalate(inner, now, &mut out);
        let TimerOutput {
            outgoing,
            mut changed,
        } = out;
        changed.sort();
        changed.dedup();
        for key in changed {
            if let Some(alert) = inner.alerts.get(&key) {
                self.save(alert).await?;
            }
        }
        if !outgoing.is_empty() {
            self.outbox.enqueue(outgoing).await?;
        }
        Ok(())
    }

    /// Group flush: pending, unsilenced alerts whose group window is over go out as one
    /// message per group.
    fn flush_groups(
        &self,
        inner: &mut Inner,
        now: i64,
        traceparent: Option<&String>,
        out: &mut TimerOutput,
    ) {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for alert in inner.alerts.values() {
            if alert.phase == Phase::Pending && !inner.silenced(alert, now) {
                groups
                    .entry(alert.group.clone())
                    .or_default()
                    .push(alert.key.clone());
            }
        }
        for (group, keys) in groups {
            let oldest = keys
                .iter()
                .filter_map(|key| inner.alerts.get(key))
                .map(|alert| alert.raised_ms)
                .min()
                .unwrap_or(now);
            if now.saturating_sub(oldest) < millis(self.policy.group_wait) {
                continue;
            }
            let thread = format!("alert/{group}/{now}");
            let members: Vec<&AlertState> = keys
                .iter()
                .filter_map(|key| inner.alerts.get(key))
                .collect();
            out.outgoing.push(NewMessage {
                thread: thread.clone(),
                channel: self.channel.clone(),
                kind: Kind::Post,
                body: messages::alert_message(&members),
                traceparent: traceparent.cloned(),
                priority: Priority::Critical,
            });
            for key in &keys {
                if let Some(alert) = inner.alerts.get_mut(key) {
                    alert.phase = Phase::Firing;
                    alert.thread = Some(thread.clone());
                    alert.notified_ms = Some(now);
                    alert.last_notified_ms = now;
                }
            }
            tracing::info!(group, alerts = keys.len(), "alert group posted");
            out.changed.extend(keys);
        }
    }

    /// Repeat and escalation of firing alerts nobody acknowledged.
    fn repeat_and_escalate(&self, inner: &mut Inner, now: i64, out: &mut TimerOutput) {
        let mut repeats: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let firing: Vec<String> = inner
            .alerts
            .values()
            .filter(|alert| {
                alert.phase == Phase::Firing && alert.ack.is_none() && !inner.silenced(alert, now)
            })
            .map(|alert| alert.key.clone())
            .collect();
        for key in firing {
            let Some(alert) = inner.alerts.get_mut(&key) else {
                continue;
            };
            let Some(thread) = alert.thread.clone() else {
                continue;
            };
            if now.saturating_sub(alert.last_notified_ms) >= millis(self.policy.repeat_interval) {
                alert.last_notified_ms = now;
                repeats.entry(thread).or_default().push(format!(
                    "🔁 still firing: `{}` (for {}) {}",
                    escape(&alert.key),
                    human(now - alert.raised_ms),
                    escape(&alert.summary)
                ));
                out.changed.push(key.clone());
            }
            let first_posted = alert.notified_ms.unwrap_or(now);
            if !alert.escalated
                && now.saturating_sub(first_posted) >= millis(self.policy.escalate_after)
            {
                alert.escalated = true;
                out.outgoing.push(self.escalation(alert, now, first_posted));
                metrics::counter!("ghost_alerts_total", "event" => "escalated").increment(1);
                tracing::warn!(key = %alert.key, "alert escalated");
                out.changed.push(key.clone());
            }
        }
        for (thread, lines) in repeats {
            out.outgoing.push(self.reply(
                &thread,
                messages::broadcast_line(&lines.join("\n")),
                None,
            ));
        }
    }

    /// The escalation of `alert`, first posted at `first_posted`: a new message with the
    /// escalation mention, in the escalation channel or the main one.
    fn escalation(&self, alert: &AlertState, now: i64, first_posted: i64) -> NewMessage {
        let text = format!(
            "{} 🚨 unacknowledged for {}: `{}` ({}) {}",
            self.policy.escalation_mention,
            human(now - first_posted),
            escape(&alert.key),
            alert.severity.as_str(),
            escape(&alert.summary)
        );
        let channel = self
            .policy
            .escalation_channel
            .clone()
            .unwrap_or_else(|| self.channel.clone());
        NewMessage {
            thread: format!("escalation/{}/{now}", alert.key),
            channel,
            kind: Kind::Post,
            body: messages::line(&text),
            traceparent: None,
            priority: Priority::Critical,
        }
    }
}

/// What one pass of the timers made: messages to store, and the alerts whose state changed.
#[derive(Default)]
struct TimerOutput {
    outgoing: Vec<NewMessage>,
    changed: Vec<String>,
}
