//! [`Delivery::Continuous`](super::Delivery::Continuous): the outbox keeps up to `at_once`
//! sends in flight and starts a new row as soon as one finishes, without waiting for a round.
//!
//! A row is *out* from its claim until its result is settled (queued here, in flight, or sent
//! and waiting for its write); rows that are out are not queued again, so a store that does not
//! keep claims (one process, SQLite) may return them again harmlessly. Rows are claimed when
//! there is room: at a wake-up, at every poll, and after each settled write. Results are
//! settled by one write at a time, in the background: what comes in meanwhile goes in the next
//! write, which starts when there are `at_once` results, when nothing is in flight, or at the
//! next poll (so a send that hangs does not hold back the results of the others). On shutdown
//! the sends in flight are dropped and released; what finished is settled once.

use std::collections::VecDeque;

use super::engine::{Gates, IDLE_FLOOR, millis};
use super::{
    Arc, CancellationToken, Claim, HashMap, HashSet, JoinSet, Notify, Outbox, Outcome, Row,
    SendError, Sink, Store,
};

/// A finished send task: its row and result, or why the task died.
type Joined<R, Receipt> =
    Result<(tokio::task::Id, (R, Result<Receipt, SendError>)), tokio::task::JoinError>;

/// The rows one continuous outbox holds: claimed and not yet settled.
struct Out<R, Receipt> {
    /// Ids of the rows out, and their keys.
    ids: HashMap<i64, Option<String>>,
    /// Keys of the rows out: one row per key at a time.
    keys: HashSet<String>,
    /// Claimed, waiting for a place.
    queue: VecDeque<R>,
    /// Results not yet handed to a write.
    results: Vec<Outcome<Receipt>>,
}

impl<R: Row, Receipt> Out<R, Receipt> {
    fn new() -> Self {
        Self {
            ids: HashMap::new(),
            keys: HashSet::new(),
            queue: VecDeque::new(),
            results: Vec::new(),
        }
    }

    /// Takes a claimed row unless it (or its key) is out already; a row held back by its key
    /// is released.
    fn take(&mut self, row: R) {
        if self.ids.contains_key(&row.id()) {
            return;
        }
        let key = row.key().map(str::to_owned);
        if let Some(key) = &key
            && !self.keys.insert(key.clone())
        {
            self.ids.insert(row.id(), None);
            self.results.push(Outcome::Release { id: row.id() });
            return;
        }
        self.ids.insert(row.id(), key);
        self.queue.push_back(row);
    }

    /// The rows of a settled write are no longer out.
    fn settled(&mut self, ids: &[i64]) {
        for id in ids {
            if let Some(Some(key)) = self.ids.remove(id) {
                self.keys.remove(&key);
            }
        }
    }
}

impl<St, Si> Outbox<St, Si>
where
    St: Store,
    Si: Sink<Row = St::Row, Receipt = St::Receipt>,
{
    /// The loop of [`Delivery::Continuous`](super::Delivery::Continuous), until `shutdown`.
    pub(super) async fn run_continuous(
        self: Arc<Self>,
        at_once: usize,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let at_once = at_once.max(1);
        let mut gates = Gates::default();
        let mut out = Out::new();
        let mut sends = JoinSet::new();
        let mut sending: HashMap<tokio::task::Id, i64> = HashMap::new();
        let mut writing = JoinSet::new();
        let mut next_poll = self.clock.now_ms();
        let (mut claim, mut flush) = (true, false);
        loop {
            let write_now = out.results.len() >= at_once
                || (!out.results.is_empty() && (sends.is_empty() || flush));
            if writing.is_empty() && write_now {
                flush = false;
                let round = std::mem::take(&mut out.results);
                let (this, shutdown) = (Arc::clone(&self), shutdown.clone());
                writing.spawn(async move {
                    this.settle(&round, &shutdown).await;
                    round.iter().map(Outcome::id).collect::<Vec<_>>()
                });
            }
            if claim && out.queue.is_empty() && sends.len() < at_once {
                claim = false;
                self.claim_into(&mut out, &mut gates).await;
                next_poll = self
                    .clock
                    .now_ms()
                    .saturating_add(millis(self.next_wait(&gates).await.max(IDLE_FLOOR)));
            }
            while sends.len() < at_once {
                let Some(row) = out.queue.pop_front() else {
                    break;
                };
                let (sink, id) = (Arc::clone(&self.sink), row.id());
                let task = sends.spawn(async move {
                    let result = sink.send(&row).await;
                    (row, result)
                });
                sending.insert(task.id(), id);
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => claim = true,
                () = self.clock.sleep_until_ms(next_poll) => {
                    next_poll = self.clock.now_ms().saturating_add(millis(self.policy.poll));
                    (claim, flush) = (true, true);
                }
                Some(joined) = sends.join_next_with_id(), if !sends.is_empty() => {
                    self.finished(joined, &mut sending, &mut out, &mut gates);
                    while let Some(joined) = sends.try_join_next_with_id() {
                        self.finished(joined, &mut sending, &mut out, &mut gates);
                    }
                }
                Some(written) = writing.join_next(), if !writing.is_empty() => {
                    // Recorded (or, on shutdown, left to run out): claimable again.
                    out.settled(&written.unwrap_or_default());
                    claim = true;
                }
            }
        }
        sends.abort_all();
        writing.abort_all();
        let mut last = std::mem::take(&mut out.results);
        last.extend(sending.into_values().map(|id| Outcome::Release { id }));
        last.extend(
            out.queue
                .drain(..)
                .map(|row| Outcome::Release { id: row.id() }),
        );
        self.settle(&last, &shutdown).await;
    }

    /// Claims rows into `out` (a store error is logged and waits for the next poll), then
    /// publishes the gauges.
    async fn claim_into(&self, out: &mut Out<St::Row, St::Receipt>, gates: &mut Gates) {
        let now = self.clock.now_ms();
        let claim = Claim {
            now_ms: now,
            limit: self.policy.batch.max(1),
            claimant: Arc::clone(&self.claimant),
            until_ms: now.saturating_add(millis(self.policy.claim_timeout)),
            closed: gates.closed(now),
        };
        match self.store.claim(claim).await {
            Ok(rows) => rows.into_iter().for_each(|row| out.take(row)),
            Err(err) => {
                self.store.failed(&err);
                tracing::error!(outbox = self.policy.name, error = %err, "cannot read the outbox");
            }
        }
        self.publish().await;
        self.store.after_pass().await;
    }

    /// Records one finished send: its outcome, or a release when its task died.
    fn finished(
        &self,
        joined: Joined<St::Row, St::Receipt>,
        sending: &mut HashMap<tokio::task::Id, i64>,
        out: &mut Out<St::Row, St::Receipt>,
        gates: &mut Gates,
    ) {
        match joined {
            Ok((task, (row, result))) => {
                sending.remove(&task);
                out.results.push(self.decide(&row, result, gates));
            }
            Err(err) => {
                tracing::error!(outbox = self.policy.name, error = %err, "a send task failed; its row is released");
                if let Some(id) = sending.remove(&err.id()) {
                    out.results.push(Outcome::Release { id });
                }
            }
        }
    }
}
