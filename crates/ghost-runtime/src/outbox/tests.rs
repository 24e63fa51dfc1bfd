//! The engine on paused tokio time, over an in-memory store that keeps claims as a database
//! would (claimant, claim deadline) and a sink that follows a script.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::clock::TokioClock;

const T0: i64 = 1_000_000;

#[derive(Debug, Clone)]
struct TestRow {
    id: i64,
    tries: u32,
    first_try_ms: Option<i64>,
    key: Option<String>,
}

impl Row for TestRow {
    fn id(&self) -> i64 {
        self.id
    }
    fn tries(&self) -> u32 {
        self.tries
    }
    fn first_try_ms(&self) -> Option<i64> {
        self.first_try_ms
    }
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

#[derive(Debug, Clone)]
struct Stored {
    row: TestRow,
    next_at_ms: i64,
    claimed_by: Option<Arc<str>>,
    claim_until: i64,
}

#[derive(Default)]
struct State {
    pending: BTreeMap<i64, Stored>,
    delivered: Vec<i64>,
    dead: Vec<(i64, u32, String)>,
    /// Retries as settled: (id, next_at_ms).
    retries: Vec<(i64, i64)>,
    /// The next this many settles fail.
    failing_settles: usize,
    /// One queue in order: a claim stops at the first row it cannot take.
    ordered: bool,
    settle_calls: usize,
    /// Keeps no claims (one process on SQLite): every due row is returned by every claim.
    forgets_claims: bool,
}

#[derive(Clone, Default)]
struct MemoryStore(Arc<Mutex<State>>);

impl MemoryStore {
    fn with_rows(rows: impl IntoIterator<Item = (i64, Option<&'static str>)>) -> Self {
        let store = Self::default();
        for (id, key) in rows {
            let row = TestRow {
                id,
                tries: 0,
                first_try_ms: None,
                key: key.map(str::to_owned),
            };
            store.state().pending.insert(
                id,
                Stored {
                    row,
                    next_at_ms: T0,
                    claimed_by: None,
                    claim_until: 0,
                },
            );
        }
        store
    }

    fn add(&self, id: i64) {
        let row = TestRow {
            id,
            tries: 0,
            first_try_ms: None,
            key: None,
        };
        let stored = Stored {
            row,
            next_at_ms: T0,
            claimed_by: None,
            claim_until: 0,
        };
        self.state().pending.insert(id, stored);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

impl Store for MemoryStore {
    type Row = TestRow;
    type Receipt = ();
    type Error = String;

    async fn claim(&self, claim: Claim) -> Result<Vec<TestRow>, String> {
        let mut state = self.state();
        let (state_ordered, forgets) = (state.ordered, state.forgets_claims);
        let mut heads = HashSet::new();
        let mut rows = Vec::new();
        for stored in state.pending.values_mut() {
            let first_of_key = stored.row.key.clone().is_none_or(|key| heads.insert(key));
            let free = forgets || stored.claimed_by.is_none() || stored.claim_until <= claim.now_ms;
            let takes = first_of_key && free && stored.next_at_ms <= claim.now_ms;
            if state_ordered && !takes {
                break;
            }
            if takes && rows.len() < claim.limit {
                stored.claimed_by = Some(Arc::clone(&claim.claimant));
                stored.claim_until = claim.until_ms;
                rows.push(stored.row.clone());
            }
        }
        Ok(rows)
    }

    async fn next_due(&self) -> Result<Option<i64>, String> {
        // A claimed row comes due again when its claim runs out.
        let free_at = |s: &Stored| match s.claimed_by {
            Some(_) => s.next_at_ms.max(s.claim_until),
            None => s.next_at_ms,
        };
        Ok(self.state().pending.values().map(free_at).min())
    }

    async fn settle(&self, claimant: &str, outcomes: &[Outcome<()>]) -> Result<(), String> {
        let mut state = self.state();
        state.settle_calls += 1;
        if state.failing_settles > 0 {
            state.failing_settles -= 1;
            return Err("disk on fire".to_owned());
        }
        for outcome in outcomes {
            let id = outcome.id();
            let ours = state
                .pending
                .get(&id)
                .is_some_and(|s| s.claimed_by.as_deref() == Some(claimant));
            match outcome {
                Outcome::Delivered { .. } => {
                    state.pending.remove(&id);
                    state.delivered.push(id);
                }
                Outcome::Dead { tries, reason, .. } => {
                    state.pending.remove(&id);
                    state.dead.push((id, *tries, reason.clone()));
                }
                Outcome::Retry {
                    next_at_ms,
                    tried_ms,
                    ..
                } if ours => {
                    state.retries.push((id, *next_at_ms));
                    let stored = state.pending.get_mut(&id).unwrap();
                    stored.row.tries += 1;
                    stored.row.first_try_ms.get_or_insert(*tried_ms);
                    stored.next_at_ms = *next_at_ms;
                    stored.claimed_by = None;
                }
                Outcome::Release { .. } if ours => {
                    state.pending.get_mut(&id).unwrap().claimed_by = None;
                }
                Outcome::Retry { .. } | Outcome::Release { .. } => {}
            }
        }
        Ok(())
    }
}

type Script = Arc<dyn Fn(&TestRow) -> Result<(), SendError> + Send + Sync>;

/// Answers by `script` after `delay`; records every send (row id, rule time) and the most in
/// flight.
#[derive(Clone)]
struct ScriptedSink {
    script: Script,
    delay: Duration,
    clock: SharedClock,
    sent: Arc<Mutex<Vec<(i64, i64)>>>,
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    /// This row's send never answers.
    hang: Option<i64>,
}

impl ScriptedSink {
    fn new(clock: &SharedClock, delay: Duration, script: Script) -> Self {
        Self {
            script,
            delay,
            clock: Arc::clone(clock),
            sent: Arc::default(),
            in_flight: Arc::default(),
            most: Arc::default(),
            hang: None,
        }
    }

    fn sent(&self) -> Vec<(i64, i64)> {
        self.sent.lock().unwrap().clone()
    }
}

impl Sink for ScriptedSink {
    type Row = TestRow;
    type Receipt = ();

    async fn send(&self, row: &TestRow) -> Result<(), SendError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.sent
            .lock()
            .unwrap()
            .push((row.id, self.clock.now_ms()));
        if self.hang == Some(row.id) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        (self.script)(row)
    }
}

fn policy(delivery: Delivery) -> Policy {
    Policy {
        delivery,
        claim_timeout: Duration::from_secs(10),
        ..Policy::new(
            "test",
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)),
        )
    }
}

/// Runs an outbox for `for_how_long` of paused time, then stops it.
async fn run_for(store: &MemoryStore, sink: &ScriptedSink, policy: Policy, for_how_long: Duration) {
    let clock = Arc::clone(&sink.clock);
    let outbox = Outbox::new(store.clone(), sink.clone(), policy, clock, claimant());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(outbox.run(Arc::new(Notify::new()), shutdown.clone()));
    tokio::time::sleep(for_how_long).await;
    shutdown.cancel();
    task.await.unwrap();
}

fn always(result: Result<(), SendError>) -> Script {
    Arc::new(move |_| result.clone())
}

#[test]
fn backoff_doubles_up_to_its_cap_and_jitter_takes_at_most_half_off() {
    let backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(60));
    let waits: Vec<_> = [1, 2, 3, 4, 8, 30].map(|tries| backoff.delay(tries)).into();
    let expected = [500, 1_000, 2_000, 4_000, 60_000, 60_000].map(Duration::from_millis);
    assert_eq!(waits, expected);
    let jittery = Backoff {
        jitter: true,
        ..backoff
    };
    for _ in 0..100 {
        let wait = jittery.wait(3);
        assert!(
            wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_schedule_in_rule_time() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows([(1, None)]);
    let sink = ScriptedSink::new(
        &clock,
        Duration::ZERO,
        always(Err(SendError::retry("down"))),
    );
    run_for(
        &store,
        &sink,
        policy(Delivery::Ordered),
        Duration::from_millis(3_500),
    )
    .await;
    let times: Vec<i64> = sink.sent().iter().map(|(_, at)| at - T0).collect();
    // 100, 200, 400, 800 ms, then the 1 s cap.
    assert_eq!(
        times,
        [0, 100, 300, 700, 1_500, 2_500, 3_500][..times.len()]
    );
    assert!(times.len() >= 6, "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn an_ordered_outbox_stops_a_round_at_the_first_failure() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows([(1, None), (2, None), (3, None)]);
    store.state().ordered = true;
    let script: Script = Arc::new(|row: &TestRow| match row.id {
        2 => Err(SendError::retry("row 2 refused")),
        _ => Ok(()),
    });
    let sink = ScriptedSink::new(&clock, Duration::ZERO, script);
    // Shorter than the first retry: one round only.
    run_for(
        &store,
        &sink,
        policy(Delivery::Ordered),
        Duration::from_millis(50),
    )
    .await;
    let ids: Vec<i64> = sink.sent().iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2], "row 3 must wait behind row 2");
    let state = store.state();
    assert_eq!(state.delivered, [1]);
    assert_eq!(state.retries, [(2, T0 + 100)]);
    // Row 3 was released, not left claimed.
    assert!(state.pending[&3].claimed_by.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_parallel_outbox_keeps_at_most_its_cap_in_flight_and_one_row_per_key() {
    let clock = TokioClock::shared(T0);
    let rows = (1..=10)
        .map(|id| (id, None))
        .chain([(11, Some("p")), (12, Some("p"))]);
    let store = MemoryStore::with_rows(rows);
    let sink = ScriptedSink::new(&clock, Duration::from_millis(100), always(Ok(())));
    let parallel = policy(Delivery::Parallel { at_once: 3 });
    run_for(&store, &sink, parallel, Duration::from_secs(5)).await;
    assert_eq!(sink.most.load(Ordering::SeqCst), 3);
    let mut delivered = store.state().delivered.clone();
    delivered.sort_unstable();
    assert_eq!(delivered, (1..=12).collect::<Vec<_>>());
    // Row 12 shares row 11's key: sent only after row 11 was settled.
    let sent = sink.sent();
    let at = |id| sent.iter().find(|(of, _)| *of == id).unwrap().1;
    assert!(at(12) >= at(11) + 100, "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn a_claim_is_not_taken_twice_until_its_timeout_then_another_replica_takes_it_over() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows([(1, None)]);
    // Replica A claims the row and never answers (a dead replica).
    let hung = ScriptedSink::new(&clock, Duration::from_secs(3_600), always(Ok(())));
    let a = Outbox::new(
        store.clone(),
        hung.clone(),
        policy(Delivery::Ordered),
        Arc::clone(&clock),
        claimant(),
    );
    let a = tokio::spawn(a.run(Arc::new(Notify::new()), CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(hung.sent().len(), 1);
    a.abort();
    // Replica B polls every second; it gets the row once A's claim (10 s) has run out.
    let b = ScriptedSink::new(&clock, Duration::ZERO, always(Ok(())));
    run_for(
        &store,
        &b,
        policy(Delivery::Ordered),
        Duration::from_secs(15),
    )
    .await;
    let sent = b.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let taken_after = sent[0].1 - T0;
    assert!((10_000..=11_100).contains(&taken_after), "{taken_after}");
    assert_eq!(store.state().delivered, [1]);
}

#[tokio::test(start_paused = true)]
async fn a_row_is_dead_lettered_after_the_limit_or_at_once_when_permanent() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows([(1, None), (2, None)]);
    let script: Script = Arc::new(|row: &TestRow| match row.id {
        1 => Err(SendError::retry("still down")),
        _ => Err(SendError::Permanent("gone".to_owned())),
    });
    let sink = ScriptedSink::new(&clock, Duration::ZERO, script);
    let limited = Policy {
        give_up: GiveUp {
            after_tries: Some(3),
            after: None,
        },
        ..policy(Delivery::Parallel { at_once: 4 })
    };
    run_for(&store, &sink, limited, Duration::from_secs(5)).await;
    let state = store.state();
    assert_eq!(state.dead.len(), 2, "{:?}", state.dead);
    assert!(state.dead.contains(&(2, 1, "gone".to_owned())));
    let (_, tries, reason) = state.dead.iter().find(|(id, ..)| *id == 1).unwrap();
    assert_eq!(*tries, 3);
    assert!(reason.starts_with("gave up after 3 tries") && reason.ends_with("still down"));
    assert_eq!(sink.sent().iter().filter(|(id, _)| *id == 1).count(), 3);
    assert!(state.pending.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_settle_that_fails_is_retried_and_nothing_is_dropped_or_sent_twice() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows([(1, None), (2, None)]);
    store.state().failing_settles = 3;
    let sink = ScriptedSink::new(&clock, Duration::ZERO, always(Ok(())));
    run_for(
        &store,
        &sink,
        policy(Delivery::Parallel { at_once: 4 }),
        Duration::from_secs(5),
    )
    .await;
    let state = store.state();
    assert_eq!(
        state.settle_calls, 4,
        "three failures, then the write that went through"
    );
    let mut delivered = state.delivered.clone();
    delivered.sort_unstable();
    assert_eq!(delivered, [1, 2]);
    assert_eq!(sink.sent().len(), 2, "each row sent once");
}

/// Sends row 1 never answers (until the test ends); the others answer after `delay`.
fn row_one_hangs(clock: &SharedClock, delay: Duration) -> ScriptedSink {
    let mut sink = ScriptedSink::new(clock, delay, always(Ok(())));
    sink.hang = Some(1);
    sink
}

#[tokio::test(start_paused = true)]
async fn a_continuous_outbox_starts_new_rows_while_a_send_hangs_and_keeps_its_cap() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows((1..=6).map(|id| (id, None)));
    let sink = row_one_hangs(&clock, Duration::from_millis(100));
    let outbox = Outbox::new(
        store.clone(),
        sink.clone(),
        policy(Delivery::Continuous { at_once: 2 }),
        Arc::clone(&clock),
        claimant(),
    );
    let wake = Arc::new(Notify::new());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(outbox.run(Arc::clone(&wake), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A row queued after the first claim, while row 1 still hangs.
    store.add(7);
    wake.notify_one();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut delivered = store.state().delivered.clone();
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        [2, 3, 4, 5, 6, 7],
        "rows 2 to 7 went one after another through the one free place"
    );
    assert_eq!(sink.most.load(Ordering::SeqCst), 2);
    let sent = sink.sent();
    assert_eq!(sent.len(), 7, "each row sent once: {sent:?}");
    // One place is held by row 1; five rows of 100 ms each, then row 7 at once when woken.
    let at = |id| sent.iter().find(|(of, _)| *of == id).unwrap().1 - T0;
    assert_eq!(at(6), 400, "{sent:?}");
    assert!(at(7) <= 600, "row 7 did not wait for a poll: {sent:?}");
    shutdown.cancel();
    task.await.unwrap();
    // Row 1 was released at shutdown, not delivered and not left claimed.
    assert!(store.state().pending[&1].claimed_by.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_continuous_outbox_does_not_send_a_row_twice_when_the_store_keeps_no_claims() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows((1..=3).map(|id| (id, None)));
    store.state().forgets_claims = true;
    let sink = row_one_hangs(&clock, Duration::from_millis(100));
    run_for(
        &store,
        &sink,
        policy(Delivery::Continuous { at_once: 4 }),
        Duration::from_secs(5),
    )
    .await;
    let ids: Vec<i64> = sink.sent().iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids.len(),
        3,
        "claimed again at every poll, sent once: {ids:?}"
    );
    assert_eq!(store.state().delivered.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_continuous_outbox_retries_on_the_backoff_and_sends_one_row_per_key_at_a_time() {
    let clock = TokioClock::shared(T0);
    let store = MemoryStore::with_rows([(1, Some("p")), (2, Some("p")), (3, None)]);
    let script: Script = Arc::new(|row: &TestRow| match (row.id, row.tries) {
        (1, 0) => Err(SendError::retry("first try refused")),
        _ => Ok(()),
    });
    let sink = ScriptedSink::new(&clock, Duration::ZERO, script);
    run_for(
        &store,
        &sink,
        policy(Delivery::Continuous { at_once: 4 }),
        Duration::from_secs(3),
    )
    .await;
    let state = store.state();
    assert_eq!(state.retries, [(1, T0 + 100)]);
    assert_eq!(state.delivered.len(), 3);
    let sent = sink.sent();
    let ones: Vec<i64> = sent
        .iter()
        .filter(|(id, _)| *id == 1)
        .map(|(_, at)| at - T0)
        .collect();
    assert_eq!(ones[0], 0);
    assert!((100..=1_100).contains(&ones[1]), "{sent:?}");
    // Row 2 shares row 1's key: not sent before row 1 was delivered.
    let two = sent.iter().find(|(id, _)| *id == 2).unwrap().1 - T0;
    assert!(two >= ones[1], "{sent:?}");
}
