//! The delivery loop of [`Outbox`]: claim, send a round, settle it, wait.

use super::{
    Arc, CancellationToken, Claim, Delivery, Duration, HashMap, HashSet, JoinSet, LOUD_AFTER,
    Notify, Outcome, Policy, Row, SendError, SharedClock, Sink, Store,
};

/// One outbox: its store, its sink, its policy and its clock.
pub struct Outbox<St: Store, Si> {
    pub(super) store: Arc<St>,
    pub(super) sink: Arc<Si>,
    pub(super) policy: Policy,
    pub(super) clock: SharedClock,
    pub(super) claimant: Arc<str>,
}

/// When each gate may be sent through again (Unix ms).
#[derive(Default)]
pub(super) struct Gates {
    not_before: HashMap<String, i64>,
}

impl Gates {
    pub(super) fn close(&mut self, gate: &str, until: i64) {
        let entry = self.not_before.entry(gate.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Forgets the gates open at `now`; returns those still closed.
    pub(super) fn closed(&mut self, now: i64) -> Vec<String> {
        self.not_before.retain(|_, until| *until > now);
        self.not_before.keys().cloned().collect()
    }

    fn next_open(&self) -> Option<i64> {
        self.not_before.values().copied().min()
    }
}

/// The least wait after a claim that found nothing.
pub(super) const IDLE_FLOOR: Duration = Duration::from_millis(10);

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl<St, Si> Outbox<St, Si>
where
    St: Store,
    Si: Sink<Row = St::Row, Receipt = St::Receipt>,
{
    /// An outbox over `store` sending through `sink`; its claims are made as `claimant`.
    pub fn new(
        store: St,
        sink: Si,
        policy: Policy,
        clock: SharedClock,
        claimant: Arc<str>,
    ) -> Self {
        Self {
            store: Arc::new(store),
            sink: Arc::new(sink),
            policy,
            clock,
            claimant,
        }
    }

    /// Delivers until `shutdown`; `wake` is signalled when a row is queued.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        if let Delivery::Continuous { at_once } = self.policy.delivery {
            return Arc::new(self).run_continuous(at_once, wake, shutdown).await;
        }
        let mut gates = Gates::default();
        while !shutdown.is_cancelled() {
            let now = self.clock.now_ms();
            let claim = Claim {
                now_ms: now,
                limit: self.policy.batch.max(1),
                claimant: Arc::clone(&self.claimant),
                until_ms: now.saturating_add(millis(self.policy.claim_timeout)),
                closed: gates.closed(now),
            };
            let rows = match self.store.claim(claim).await {
                Ok(rows) => rows,
                Err(err) => {
                    self.store.failed(&err);
                    tracing::error!(outbox = self.policy.name, error = %err, "cannot read the outbox");
                    self.pause(self.policy.store_retry, &wake, &shutdown).await;
                    continue;
                }
            };
            let full = rows.len() >= self.policy.batch.max(1);
            let claimed_any = !rows.is_empty();
            let mut all_went = true;
            if !rows.is_empty() {
                let outcomes = match self.policy.delivery {
                    Delivery::Ordered => self.ordered(rows, &mut gates, &shutdown).await,
                    Delivery::Parallel { at_once } | Delivery::Continuous { at_once } => {
                        self.parallel(rows, at_once, &mut gates, &shutdown).await
                    }
                };
                all_went = outcomes.iter().all(|outcome| {
                    matches!(outcome, Outcome::Delivered { .. } | Outcome::Dead { .. })
                });
                // What finished is recorded even on shutdown, so it is not sent again.
                self.settle(&outcomes, &shutdown).await;
            }
            self.publish().await;
            self.store.after_pass().await;
            if full && all_went {
                continue;
            }
            let mut wait = self.next_wait(&gates).await;
            if !claimed_any {
                // A row due but not claimable (held behind its key's head) must not spin.
                wait = wait.max(IDLE_FLOOR);
            }
            self.pause(wait, &wake, &shutdown).await;
        }
    }

    /// Sends `rows` one at a time; the first not delivered (or held back) stops the round.
    async fn ordered(
        &self,
        rows: Vec<St::Row>,
        gates: &mut Gates,
        shutdown: &CancellationToken,
    ) -> Vec<Outcome<St::Receipt>> {
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut through = RoundFilter::default();
        let mut rows = rows.into_iter();
        for row in rows.by_ref() {
            if shutdown.is_cancelled() || !through.admit(&row, &self.policy) {
                outcomes.push(Outcome::Release { id: row.id() });
                break;
            }
            let result = tokio::select! {
                result = self.sink.send(&row) => result,
                () = shutdown.cancelled() => {
                    outcomes.push(Outcome::Release { id: row.id() });
                    break;
                }
            };
            let outcome = self.decide(&row, result, gates);
            let delivered = matches!(outcome, Outcome::Delivered { .. });
            outcomes.push(outcome);
            if !delivered {
                break;
            }
        }
        outcomes.extend(rows.map(|row| Outcome::Release { id: row.id() }));
        outcomes
    }

    /// Sends `rows` with up to `at_once` in flight; on shutdown, what finished (the rest is
    /// released).
    async fn parallel(
        &self,
        rows: Vec<St::Row>,
        at_once: usize,
        gates: &mut Gates,
        shutdown: &CancellationToken,
    ) -> Vec<Outcome<St::Receipt>> {
        let mut outcomes = Vec::with_capacity(rows.len());
        let mut through = RoundFilter::default();
        let mut queue = std::collections::VecDeque::new();
        for row in rows {
            if through.admit(&row, &self.policy) {
                queue.push_back(row);
            } else {
                outcomes.push(Outcome::Release { id: row.id() });
            }
        }
        let mut sends = JoinSet::new();
        let mut out: HashMap<tokio::task::Id, i64> = HashMap::new();
        loop {
            while sends.len() < at_once.max(1) {
                let Some(row) = queue.pop_front() else { break };
                let (sink, id) = (Arc::clone(&self.sink), row.id());
                let task = sends.spawn(async move {
                    let result = sink.send(&row).await;
                    (row, result)
                });
                out.insert(task.id(), id);
            }
            let joined = tokio::select! {
                joined = sends.join_next_with_id() => joined,
                () = shutdown.cancelled() => None,
            };
            match joined {
                Some(Ok((task, (row, result)))) => {
                    out.remove(&task);
                    outcomes.push(self.decide(&row, result, gates));
                }
                Some(Err(err)) => {
                    tracing::error!(outbox = self.policy.name, error = %err, "a send task failed; its row is released");
                    if let Some(id) = out.remove(&err.id()) {
                        outcomes.push(Outcome::Release { id });
                    }
                }
                None => break,
            }
        }
        sends.abort_all();
        outcomes.extend(out.into_values().map(|id| Outcome::Release { id }));
        outcomes.extend(
            queue
                .into_iter()
                .map(|row| Outcome::Release { id: row.id() }),
        );
        outcomes
    }

    /// The outcome of one try of `row`; closes its gate when paced or told to wait; logs.
    pub(super) fn decide(
        &self,
        row: &St::Row,
        result: Result<St::Receipt, SendError>,
        gates: &mut Gates,
    ) -> Outcome<St::Receipt> {
        let now = self.clock.now_ms();
        let tries = row.tries().saturating_add(1);
        if let (Some(gate), false) = (row.gate(), self.policy.pacing.is_zero()) {
            gates.close(gate, now.saturating_add(millis(self.policy.pacing)));
        }
        let outcome = match result {
            Ok(receipt) => Outcome::Delivered {
                id: row.id(),
                receipt,
            },
            Err(SendError::Permanent(reason)) => Outcome::Dead {
                id: row.id(),
                at_ms: now,
                tries,
                reason,
            },
            Err(SendError::Retry { reason, after }) => {
                self.retry_or_give_up(row, now, tries, reason, after, gates)
            }
        };
        self.log(row, tries, &outcome);
        self.sink.observe(row, &outcome);
        outcome
    }

    fn retry_or_give_up(
        &self,
        row: &St::Row,
        now: i64,
        tries: u32,
        reason: String,
        after: Option<Duration>,
        gates: &mut Gates,
    ) -> Outcome<St::Receipt> {
        let give_up = self.policy.give_up;
        let first_try = row.first_try_ms().unwrap_or(now);
        let too_many = give_up.after_tries.is_some_and(|most| tries >= most);
        let too_long = give_up
            .after
            .is_some_and(|after| now.saturating_sub(first_try) >= millis(after));
        if too_many || too_long {
            let over = Duration::from_millis(u64::try_from(now - first_try).unwrap_or(0));
            return Outcome::Dead {
                id: row.id(),
                at_ms: now,
                tries,
                reason: format!("gave up after {tries} tries over {over:?}: {reason}"),
            };
        }
        let wait = after.map_or_else(
            || self.policy.backoff.wait(tries),
            |after| after.min(self.policy.backoff.max),
        );
        let next_at_ms = now.saturating_add(millis(wait));
        if let (Some(gate), Some(_)) = (row.gate(), after) {
            gates.close(gate, next_at_ms);
        }
        Outcome::Retry {
            id: row.id(),
            next_at_ms,
            tried_ms: now,
            error: reason,
        }
    }

    fn log(&self, row: &St::Row, tries: u32, outcome: &Outcome<St::Receipt>) {
        let (outbox, name) = (self.policy.name, row.describe());
        match outcome {
            Outcome::Delivered { .. } => {
                tracing::debug!(outbox, row = %name, tries, "outbox row delivered");
            }
            Outcome::Retry {
                next_at_ms, error, ..
            } => {
                let retry_in_ms = next_at_ms.saturating_sub(self.clock.now_ms());
                if tries >= LOUD_AFTER {
                    tracing::error!(outbox, row = %name, tries, %error, retry_in_ms, "receiver still failing; row kept");
                } else {
                    tracing::warn!(outbox, row = %name, tries, %error, retry_in_ms, "delivery failed; will retry");
                }
            }
            Outcome::Dead { reason, .. } => {
                tracing::error!(outbox, row = %name, tries, %reason, "outbox row dead-lettered");
            }
            Outcome::Release { .. } => {}
        }
    }

    /// Records a round; a store error is retried until it succeeds or shutdown.
    pub(super) async fn settle(
        &self,
        outcomes: &[Outcome<St::Receipt>],
        shutdown: &CancellationToken,
    ) {
        if outcomes.is_empty() {
            return;
        }
        loop {
            match self.store.settle(&self.claimant, outcomes).await {
                Ok(()) => return,
                Err(err) => {
                    self.store.failed(&err);
                    tracing::error!(outbox = self.policy.name, rows = outcomes.len(), error = %err, "cannot record the round; will retry");
                }
            }
            let retry_at = self
                .clock
                .now_ms()
                .saturating_add(millis(self.policy.store_retry));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.clock.sleep_until_ms(retry_at) => {}
            }
        }
    }

    /// Sets the backlog gauges, if this outbox has them.
    pub(super) async fn publish(&self) {
        let backlog = match self.store.backlog().await {
            Ok(Some(backlog)) => backlog,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(outbox = self.policy.name, error = %err, "cannot read the outbox backlog for its gauges");
                return;
            }
        };
        let age_ms = backlog.oldest_created_ms.map_or(0, |created| {
            self.clock.now_ms().saturating_sub(created).max(0)
        });
        #[allow(clippy::cast_precision_loss)]
        {
            metrics::gauge!("ghost_outbox_depth", "outbox" => self.policy.name)
                .set(backlog.depth as f64);
            metrics::gauge!("ghost_outbox_oldest_age_seconds", "outbox" => self.policy.name)
                .set(age_ms as f64 / 1000.0);
        }
    }

    /// Until the next row is due or a gate opens, at most [`Policy::poll`].
    pub(super) async fn next_wait(&self, gates: &Gates) -> Duration {
        let due = match self.store.next_due().await {
            Ok(due) => due,
            Err(err) => {
                self.store.failed(&err);
                None
            }
        };
        let now = self.clock.now_ms();
        [due, gates.next_open()]
            .into_iter()
            .flatten()
            .min()
            .map_or(self.policy.poll, |at| {
                Duration::from_millis(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
                    .min(self.policy.poll)
            })
    }

    pub(super) async fn pause(&self, wait: Duration, wake: &Notify, shutdown: &CancellationToken) {
        let until = self.clock.now_ms().saturating_add(millis(wait));
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = wake.notified() => {}
            () = self.clock.sleep_until_ms(until) => {}
        }
    }
}

/// Within one round: at most one row per key, and with pacing one per gate.
#[derive(Default)]
struct RoundFilter {
    keys: HashSet<String>,
    gates: HashSet<String>,
}

impl RoundFilter {
    fn admit(&mut self, row: &impl Row, policy: &Policy) -> bool {
        if let Some(key) = row.key()
            && self.keys.contains(key)
        {
            return false;
        }
        if let Some(gate) = row.gate()
            && !policy.pacing.is_zero()
            && !self.gates.insert(gate.to_owned())
        {
            return false;
        }
        if let Some(key) = row.key() {
            self.keys.insert(key.to_owned());
        }
        true
    }
}
