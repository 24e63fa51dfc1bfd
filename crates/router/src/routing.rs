//! Who runs what: the registry of connected executors and the hand-out of leases.
//!
//! Executors dial in over the Work stream ([`crate::grpc`]); each connection is a session. A
//! target has at most one active lease at a time; when it is free and an executor serving it is
//! connected, the oldest highest-priority runnable patch is leased (fresh fencing token, next
//! attempt) and assigned. A result is accepted only with the live fencing token. A lost session
//! or an expired lease interrupts the attempt: the patch is requeued, or ends `lost` past the
//! attempt limit, and an alert is raised either way. A target whose last executor left raises
//! `executor_lost/<target>`; a queue that waits too long with no executor raises
//! `queue_stale/<target>`; both resolve when the condition clears.
//!
//! A storage fault never strands work: a lease whose commit failed is retried by the
//! dispatcher itself with bounded backoff (see [`Routing::run_dispatch_retries`]) and, since the
//! store always leases the oldest highest-priority patch, the patch keeps its place in its
//! queue; a completion is retried until stored. While the store is degraded no lease is
//! expired (renewals cannot be stored either), and when it heals the leases of the executors
//! still connected are renewed before the store is called healthy.
//!
//! Metrics are labelled by target only for targets an executor has served since the router
//! started; every other target is counted under [`OTHER_TARGET`]. Target names come from
//! clients, and a series per name would let any client grow the metrics without bound.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ghost_core::{ApplyReport, Patch, Status};
use ghost_proto::executor::v1::{Assign, Cancel, DryRun, RouterMessage, router_message};
use ghost_runtime::storage::StorageHealth;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::dry_runs::{DRY_RUN_DEADLINE, DryRuns};
use crate::error::RouterError;
use crate::queue_ages::{Oldest, QueueAges};
use crate::revert::Reverts;
use crate::store::{
    Completed, Inserted, LeaseEnded, NewAlert, Note, PatchRecord, RouterStore, StoreError,
    TargetRow, now_ms, rule_ms,
};
use crate::waiters::{MAX_WAIT, Waiters};

/// The `target` label of every target no executor has served since the router started.
/// Parenthesised so it can never be a target's name.
pub const OTHER_TARGET: &str = "(other)";

/// Messages queued towards one executor session.
pub type SessionSender = mpsc::Sender<Result<RouterMessage, tonic::Status>>;

/// Places on an executor session's stream a dry run never takes, kept for Cancel.
const RESERVED_FOR_CANCEL: usize = 8;
/// How long sending a Cancel may wait for room on a full stream.
const CANCEL_SEND_WAIT: Duration = Duration::from_secs(5);

/// What a dry run asks of the executor, and so which sessions may answer it.
#[derive(Debug, Clone, Copy)]
enum Ask {
    /// Plan a submitted patch (sessions advertising `dry_run`).
    DryRun,
    /// Check a revert patch (sessions advertising `revert`).
    Revert,
}

/// The first wait before a write that met a storage fault is tried again; doubles up to
/// [`MAX_STORAGE_RETRY`].
const FIRST_STORAGE_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a write (or a lease) that met a storage fault.
const MAX_STORAGE_RETRY: Duration = Duration::from_secs(1);

/// The wait before try `failures + 1` of a write that met a storage fault.
fn storage_backoff(failures: u32) -> Duration {
    FIRST_STORAGE_RETRY
        .saturating_mul(1 << failures.min(10))
        .min(MAX_STORAGE_RETRY)
}

/// Targets whose last lease could not be stored, waiting to be dispatched again.
#[derive(Default)]
struct DispatchRetries {
    /// Target → (failures in a row, when to try again).
    due: std::sync::Mutex<HashMap<String, (u32, Instant)>>,
    /// Woken when a target is added.
    wake: Notify,
}

/// The lease and alert policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// A lease not renewed for this long expires.
    pub lease: Duration,
    /// Attempts a patch may use (since submit or the last retry) before it ends `lost`.
    pub max_attempts: u32,
    /// A queue whose oldest patch waited this long with no executor online raises an alert.
    pub stale_after: Duration,
}

#[derive(Clone)]
struct Session {
    id: u64,
    /// `<executor id>#<session id>`: the lease owner recorded in the store.
    owner: String,
    executor_id: String,
    targets: Vec<String>,
    connected_ms: i64,
    last_seen_ms: Arc<AtomicI64>,
    sender: SessionSender,
    /// Cancelled when the session's credential is withdrawn: dispatch skips it from then on.
    cut: CancellationToken,
    /// The executor advertised the `dry_run` capability in its Hello.
    dry_run: bool,
    /// The executor advertised the `revert` capability in its Hello: it keeps revert records
    /// and answers a dry run of a revert patch with its conflicts.
    revert: bool,
}

#[derive(Default)]
struct TargetSlot {
    sessions: Vec<Session>,
    /// The live lease of this target: (patch id, fencing token, session id).
    active: Option<(String, u64, u64)>,
    /// An executor reported a rollback that left this workspace changed, and the
    /// `workspace_not_restored/<target>` alert has not been resolved since.
    unrestored: bool,
}

/// The session a Work-stream message came from.
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    /// `<executor id>#<session id>`: the lease owner.
    pub owner: &'a str,
    /// The id the executor gave in Hello.
    pub executor_id: &'a str,
    /// The targets it serves (deduplicated, all within its credential's scope).
    pub targets: &'a [String],
}

/// An executor session, for `ListExecutors`.
#[derive(Debug, Clone)]
pub struct ExecutorView {
    /// The id the executor gave in Hello.
    pub executor_id: String,
    /// `<executor id>#<session id>`.
    pub session: String,
    /// Targets it serves.
    pub targets: Vec<String>,
    /// Unix ms.
    pub connected_ms: i64,
    /// Last message received (unix ms).
    pub last_seen_ms: i64,
    /// Patches it holds leases on.
    pub running: Vec<String>,
}

/// A target, for `ListTargets`.
#[derive(Debug, Clone)]
pub struct TargetView {
    /// Queue figures from the store.
    pub row: TargetRow,
    /// At least one executor serving it is connected.
    pub executor_online: bool,
    /// At least one executor serving it that advertised `revert` is connected.
    pub revert_online: bool,
}

/// The routing logic shared by the gRPC adapter and the background loops.
pub struct Routing {
    store: Arc<dyn RouterStore>,
    slots: Mutex<HashMap<String, TargetSlot>>,
    /// One lock per target: a target never gets two leases at once, while leases for
    /// different targets go to the writer together and share its group commits (one lock for
    /// all targets made every lease wait for the previous one's commit).
    dispatching: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
    next_session: AtomicU64,
    /// Targets an executor has served since start: the only ones metrics are labelled with.
    served: std::sync::RwLock<HashSet<String>>,
    policy: Policy,
    /// Woken when an outcome is waiting in the outbox.
    pub outbox_wake: Arc<Notify>,
    /// Woken when an alert change is waiting in the alert outbox.
    pub alert_wake: Arc<Notify>,
    /// Calls waiting for a patch to end (`Wait`), woken after each terminal commit.
    pub waiters: Waiters,
    /// Dry runs waiting for an executor's answer.
    pub dry_runs: DryRuns,
    /// Reverts being checked: one at a time per revert id.
    pub reverts: Reverts,
    /// Dispatches to try again after a storage fault.
    retries: DispatchRetries,
    /// The store's disk, when known: no lease expires while it is degraded.
    storage: Option<StorageHealth>,
    /// How long each queue's oldest patch has waited, in rule time (for `queue_stale`,
    /// `revert_waiting` and `ghost_queue_oldest_age_seconds`).
    queue_ages: std::sync::Mutex<QueueAges>,
    /// Other replicas share the store (see [`crate::store::PgStore`]).
    shared: bool,
}

/// The key of a target's queue in [`Routing::queue_ages`].
fn queue_key(target: &str) -> String {
    format!("queue/{target}")
}

/// The key of a target's revert patches in [`Routing::queue_ages`].
fn revert_key(target: &str) -> String {
    format!("revert/{target}")
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Routing {
    /// Routing over `store` with `policy`.
    pub fn new(store: Arc<dyn RouterStore>, policy: Policy) -> Self {
        Self {
            store,
            slots: Mutex::new(HashMap::new()),
            dispatching: std::sync::Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            served: std::sync::RwLock::new(HashSet::new()),
            policy,
            outbox_wake: Arc::new(Notify::new()),
            alert_wake: Arc::new(Notify::new()),
            waiters: Waiters::default(),
            dry_runs: DryRuns::default(),
            reverts: Reverts::default(),
            retries: DispatchRetries::default(),
            storage: None,
            queue_ages: std::sync::Mutex::default(),
            shared: false,
        }
    }

    /// The same routing, one of several replicas sharing its store: session ids start from
    /// the clock (in µs) rather than 1, so lease owners (`<executor>#<session>`) of two
    /// replicas never coincide.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        let start = u64::try_from(crate::store::now_us()).unwrap_or(1);
        self.next_session = AtomicU64::new(start);
        self
    }

    /// The same routing, told the health of its store's disk.
    pub fn with_storage(mut self, storage: StorageHealth) -> Self {
        self.storage = Some(storage);
        self
    }

    fn storage_degraded(&self) -> bool {
        self.storage
            .as_ref()
            .is_some_and(StorageHealth::is_degraded)
    }

    /// Runs `write` again, with backoff, for as long as it meets a storage fault: the write is
    /// never dropped. Other errors (and success) are returned at once.
    async fn until_stored<T, F, Fut>(&self, what: &str, mut write: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut failures = 0_u32;
        loop {
            match write().await {
                Err(err @ StoreError::Unavailable { .. }) => {
                    let wait = storage_backoff(failures);
                    tracing::warn!(what, error = %err, retry_in = ?wait, "write not stored; retried");
                    tokio::time::sleep(wait).await;
                    failures = failures.saturating_add(1);
                }
                other => return other,
            }
        }
    }

    /// Notes that `target`'s lease could not be stored: it is dispatched again after a backoff.
    fn retry_dispatch_later(&self, target: &str) {
        let mut due = self
            .retries
            .due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let failures = due.get(target).map_or(0, |(failures, _)| *failures);
        let wait = storage_backoff(failures);
        due.insert(
            target.to_owned(),
            (failures.saturating_add(1), Instant::now() + wait),
        );
        drop(due);
        self.retries.wake.notify_one();
    }

    /// A lease of `target` was stored (or there was nothing to lease): its backoff starts over.
    fn dispatch_stored(&self, target: &str) {
        let mut due = self
            .retries
            .due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if due.get(target).is_some_and(|(failures, _)| *failures > 0) {
            due.remove(target);
        }
    }

    /// Dispatches again, when their backoff is over, the targets whose lease could not be
    /// stored, until `shutdown`: a queued patch is never left waiting for an unrelated event.
    pub async fn run_dispatch_retries(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let (ready, next): (Vec<String>, Option<Instant>) = {
                let due = self
                    .retries
                    .due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let ready = due
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(target, _)| target.clone())
                    .collect();
                let next = due.values().map(|(_, at)| *at).filter(|at| *at > now).min();
                (ready, next)
            };
            // Marks a ready target as not due while it is tried (a failure schedules the next try).
            let trying = now + Duration::from_secs(3600);
            for target in &ready {
                if let Some(entry) = self
                    .retries
                    .due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get_mut(target)
                {
                    entry.1 = trying;
                }
                tracing::info!(%target, "dispatching again after a lease that was not stored");
                self.dispatch(target).await;
                // Still marked: the dispatch ended before the store (the target busy or no
                // executor), and the next event of the target dispatches it as usual.
                let mut due = self
                    .retries
                    .due
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if due.get(target).is_some_and(|(_, at)| *at == trying) {
                    due.remove(target);
                }
            }
            if !ready.is_empty() {
                continue;
            }
            let sleep = next.map_or(Duration::from_secs(3600), |at| at - now);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.retries.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Hands out work on every served target at once after the store healed (rather than at
    /// each target's next retry).
    pub async fn dispatch_after_heal(&self) {
        self.dispatch_all().await;
    }

    /// Renews the live leases of the executors still connected (after the store healed: their
    /// renewals during the fault could not be stored, and they must not expire for it).
    pub async fn renew_live_leases(&self) -> Result<(), StoreError> {
        let held: Vec<(String, u64)> = {
            let slots = self.slots.lock().await;
            slots
                .values()
                .filter_map(|slot| {
                    let (_, token, session) = slot.active.as_ref()?;
                    let holder = slot.sessions.iter().find(|s| s.id == *session)?;
                    Some((holder.owner.clone(), *token))
                })
                .collect()
        };
        for (owner, token) in held {
            self.store
                .renew(owner, vec![token], self.lease_ms())
                .await?;
        }
        Ok(())
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<dyn RouterStore> {
        &self.store
    }

    fn lease_ms(&self) -> i64 {
        millis(self.policy.lease)
    }

    /// The metrics label of `target`: its name once an executor has served it, else
    /// [`OTHER_TARGET`].
    pub fn target_label(&self, target: &str) -> String {
        let served = self
            .served
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if served.contains(target) {
            target.to_owned()
        } else {
            OTHER_TARGET.to_owned()
        }
    }

    /// Stores a patch (idempotently) with the gateway's intake warnings and the name of the
    /// credential that submitted it, and assigns it if its target is free; its first event
    /// names `actor`. A replay keeps the warnings and key name stored first.
    pub async fn submit(
        &self,
        patch: Patch,
        actor: &str,
        traceparent: String,
        warnings: Vec<String>,
        key_name: String,
    ) -> Result<(PatchRecord, bool), RouterError> {
        let target = patch.target.to_string();
        let id = patch.id.to_string();
        match self
            .store
            .insert(patch, actor.to_owned(), traceparent, warnings, key_name)
            .await?
        {
            Inserted::Created(record) => {
                tracing::info!(patch_id = %id, %target, status = %record.status, "patch stored");
                metrics::counter!("ghost_patches_submitted_total", "target" => self.target_label(&target))
                    .increment(1);
                if record.status.is_terminal() {
                    self.waiters.ended(&id);
                    self.outbox_wake.notify_one();
                } else {
                    self.dispatch(&target).await;
                }
                Ok((record, true))
            }
            Inserted::Existing(record) => Ok((record, false)),
            Inserted::Conflict => Err(RouterError::Conflict(id)),
        }
    }

    /// Registers a new executor session for `targets` (no duplicates), which gets no work
    /// once `cut` is cancelled, dry runs only if `capabilities` name `dry_run` and revert checks
    /// only if they name `revert`; returns its
    /// session id and owner name.
    pub async fn connect(
        &self,
        executor_id: &str,
        targets: &[String],
        capabilities: &[String],
        sender: SessionSender,
        cut: CancellationToken,
    ) -> (u64, String) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let owner = format!("{executor_id}#{id}");
        let now = rule_ms();
        let session = Session {
            id,
            owner: owner.clone(),
            executor_id: executor_id.to_owned(),
            targets: targets.to_vec(),
            connected_ms: now,
            last_seen_ms: Arc::new(AtomicI64::new(now)),
            sender,
            cut,
            dry_run: capabilities.iter().any(|c| c == "dry_run"),
            revert: capabilities.iter().any(|c| c == "revert"),
        };
        // `unrestored` lives in memory: derive it from the stored alerts when a target's
        // executor connects, so a router restarted while it fired still resolves it on the
        // target's next success. (A read at connect, not at every completion.)
        let firing = match self.store.firing_alerts().await {
            Ok(firing) => firing,
            Err(err) => {
                tracing::error!(error = %err, "cannot read the firing alerts");
                Vec::new()
            }
        };
        self.served
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(targets.iter().cloned());
        {
            let mut slots = self.slots.lock().await;
            for target in targets {
                let slot = slots.entry(target.clone()).or_default();
                slot.unrestored |= firing
                    .iter()
                    .any(|key| *key == format!("workspace_not_restored/{target}"));
                slot.sessions.push(session.clone());
                metrics::gauge!("ghost_executors_connected", "target" => target.clone())
                    .increment(1.0);
            }
        }
        tracing::info!(executor = ?owner, ?targets, "executor connected");
        for target in targets {
            self.resolve(
                format!("executor_lost/{target}"),
                format!("executor {owner} serves {target} again"),
            )
            .await;
            self.dispatch(target).await;
        }
        (id, owner)
    }

    /// Notes that a session is alive (any message counts).
    pub async fn seen(&self, session: u64) {
        let slots = self.slots.lock().await;
        let now = rule_ms();
        for slot in slots.values() {
            for s in slot.sessions.iter().filter(|s| s.id == session) {
                s.last_seen_ms.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Forgets a session, interrupts whatever it was running, and raises `executor_lost` for
    /// targets left with no executor.
    pub async fn disconnect(&self, session: u64, owner: &str) {
        let mut orphaned = Vec::new();
        {
            let mut slots = self.slots.lock().await;
            for (target, slot) in slots.iter_mut() {
                let before = slot.sessions.len();
                slot.sessions.retain(|s| s.id != session);
                if slot.sessions.len() != before {
                    metrics::gauge!("ghost_executors_connected", "target" => target.clone())
                        .decrement(1.0);
                    if slot.sessions.is_empty() {
                        orphaned.push(target.clone());
                    }
                }
                if slot.active.as_ref().is_some_and(|(_, _, s)| *s == session) {
                    slot.active = None;
                }
            }
        }
        tracing::info!(executor = ?owner, "executor disconnected");
        self.dry_runs.forget_session(owner);
        for target in &orphaned {
            self.raise(NewAlert {
                key: format!("executor_lost/{target}"),
                severity: "critical",
                summary: format!("no executor serves {target}: {owner} disconnected"),
                labels: vec![
                    ("target".to_owned(), target.clone()),
                    ("executor".to_owned(), owner.to_owned()),
                ],
            })
            .await;
        }
        let ended = self
            .store
            .end_leases(
                Some(owner.to_owned()),
                format!("executor {owner} disconnected"),
                self.policy.max_attempts,
            )
            .await;
        self.after_leases_ended(ended).await;
    }

    /// Leases and assigns the next runnable patch of `target` if it is free and served.
    pub async fn dispatch(&self, target: &str) {
        let lock = Arc::clone(
            self.dispatching
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(target.to_owned())
                .or_default(),
        );
        let _serial = lock.lock().await;
        let (session_id, owner, sender, takes_reverts) = {
            let slots = self.slots.lock().await;
            let Some(slot) = slots.get(target) else {
                return;
            };
            if slot.active.is_some() {
                return;
            }
            // An executor that has sent nothing for a whole lease period (no heartbeat) is
            // presumed stuck: it gets no new work until it speaks again.
            let alive_since = rule_ms() - self.lease_ms();
            let alive = |s: &&Session| {
                !s.cut.is_cancelled() && s.last_seen_ms.load(Ordering::Relaxed) >= alive_since
            };
            // A session that can apply revert patches first: an older executor is never
            // handed one (it would not know what to restore), it gets the other patches.
            let Some(session) = slot
                .sessions
                .iter()
                .filter(alive)
                .find(|s| s.revert)
                .or_else(|| slot.sessions.iter().find(alive))
            else {
                return;
            };
            (
                session.id,
                session.owner.clone(),
                session.sender.clone(),
                session.revert,
            )
        };
        let record = match self
            .store
            .lease_next(
                target.to_owned(),
                owner.clone(),
                self.lease_ms(),
                takes_reverts,
            )
            .await
        {
            Ok(Some(record)) => {
                self.dispatch_stored(target);
                record
            }
            Ok(None) => {
                self.dispatch_stored(target);
                return;
            }
            Err(err) => {
                // Nothing was leased: the patch is still first in its queue. Try again soon.
                tracing::error!(%target, error = %err, "cannot lease the next patch; retried");
                self.retry_dispatch_later(target);
                return;
            }
        };
        let id = record.patch.id.to_string();
        let assign = Assign {
            patch: Some(ghost_proto::router::v1::Patch::from(&record.patch)),
            attempt: record.attempt,
            fencing_token: record.fencing_token,
            deadline_unix_ms: rule_ms() + self.lease_ms(),
            traceparent: record.traceparent.clone(),
        };
        {
            let mut slots = self.slots.lock().await;
            if let Some(slot) = slots.get_mut(target) {
                slot.active = Some((id.clone(), record.fencing_token, session_id));
            }
        }
        metrics::histogram!("ghost_patch_stage_seconds", "stage" => "queued")
            .record((now_ms() - record.created_ms).max(0) as f64 / 1000.0);
        let message = RouterMessage {
            kind: Some(router_message::Kind::Assign(assign)),
        };
        if sender.send(Ok(message)).await.is_err() {
            tracing::warn!(patch_id = %id, executor = ?owner, "executor gone before assignment");
            // The session's reader notices the closed stream and interrupts via `disconnect`.
            return;
        }
        tracing::info!(patch_id = %id, executor = ?owner, attempt = record.attempt, "patch assigned");
    }

    /// Tries every served target: after an outcome, a patch elsewhere may have become runnable.
    async fn dispatch_all(&self) {
        let targets: Vec<String> = self.slots.lock().await.keys().cloned().collect();
        for target in targets {
            self.dispatch(&target).await;
        }
    }

    /// Renews the leases an executor still holds (only leases this session holds: the store
    /// matches the owner; token 0, a queued patch's, never renews anything).
    pub async fn heartbeat(&self, owner: &str, mut tokens: Vec<u64>) {
        tokens.retain(|token| *token != 0);
        if tokens.is_empty() {
            return;
        }
        if let Err(err) = self
            .store
            .renew(owner.to_owned(), tokens, self.lease_ms())
            .await
        {
            tracing::error!(executor = ?owner, error = %err, "cannot renew leases");
        }
    }

    /// Records `applying` / `validating` under a live lease held by `owner`; false when the
    /// lease is stale or not this session's.
    pub async fn progress(
        &self,
        id: String,
        owner: &str,
        token: u64,
        status: Status,
        detail: String,
    ) -> bool {
        match self
            .store
            .progress(id.clone(), owner.to_owned(), token, status, detail)
            .await
        {
            Ok(accepted) => accepted,
            Err(err) => {
                // Logged here; not a refusal of the executor's message.
                tracing::error!(patch_id = %id, error = %err, "cannot record progress");
                true
            }
        }
    }

    /// Accepts an attempt's report if `token` is the live lease and `reporter` holds it, then
    /// frees the target. An executor's `interrupted` report of an attempt the router already
    /// ended is kept as that attempt's fuller report when the same executor held it and still
    /// serves its target; any other stale or foreign result is refused.
    pub async fn complete(
        &self,
        reporter: &Reporter<'_>,
        id: String,
        attempt: u32,
        token: u64,
        report: ApplyReport,
    ) -> Result<(), RouterError> {
        let status = report.status;
        let duration_ms = report.duration_ms;
        let interrupted = status == Status::Interrupted;
        // The executor keeps the journal of a rollback that could not restore everything and
        // refuses the target's patches until it can: a person must look.
        let restore_error = report
            .rollback
            .as_ref()
            .map(|rollback| rollback.error.clone())
            .filter(|error| !error.is_empty());
        let late_report = report.clone();
        // A completion that was not stored is retried until it is: dropped, its lease would
        // expire and the patch run again.
        let stored = self
            .until_stored("complete", || {
                self.store
                    .complete(id.clone(), reporter.owner.to_owned(), token, report.clone())
            })
            .await?;
        let Some(Completed {
            record,
            dependent_targets,
        }) = stored
        else {
            if interrupted
                && self
                    .store
                    .record_interrupted(
                        id.clone(),
                        reporter.executor_id.to_owned(),
                        reporter.targets.to_vec(),
                        attempt,
                        late_report,
                    )
                    .await?
            {
                tracing::info!(patch_id = %id, attempt, "executor's report of an interrupted attempt kept");
                self.outbox_wake.notify_one();
                return Ok(());
            }
            return Err(RouterError::StaleLease(id));
        };
        self.waiters.ended(&id);
        if status != Status::Succeeded {
            // Its queued dependents were failed in the same transaction.
            self.waiters.maybe_ended_others();
        }
        let target = record.patch.target.to_string();
        let mut was_unrestored = false;
        {
            let mut slots = self.slots.lock().await;
            if let Some(slot) = slots.get_mut(&target) {
                if slot.active.as_ref().is_some_and(|(_, t, _)| *t == token) {
                    slot.active = None;
                }
                was_unrestored = slot.unrestored;
                slot.unrestored =
                    restore_error.is_some() || (was_unrestored && status != Status::Succeeded);
            }
        }
        let restore_key = format!("workspace_not_restored/{target}");
        if let Some(error) = &restore_error {
            let excerpt: String = error.chars().take(300).collect();
            self.raise(NewAlert {
                key: restore_key,
                severity: "critical",
                summary: format!(
                    "the workspace of {target} could not be restored after patch {id}; its \
                     executor refuses patches for {target} until it is: {excerpt}"
                ),
                labels: vec![
                    ("target".to_owned(), target.clone()),
                    ("patch_id".to_owned(), id.clone()),
                ],
            })
            .await;
        } else if was_unrestored && status == Status::Succeeded {
            self.resolve(
                restore_key,
                format!("patch {id} applied on {target}: its workspace is usable again"),
            )
            .await;
        }
        tracing::info!(patch_id = %id, %target, status = %status, "patch finished");
        metrics::counter!("ghost_patches_total", "target" => self.target_label(&target), "outcome" => status.as_str())
            .increment(1);
        metrics::histogram!("ghost_patch_stage_seconds", "stage" => "apply")
            .record(duration_ms as f64 / 1000.0);
        self.outbox_wake.notify_one();
        self.dispatch(&target).await;
        if status != Status::Succeeded {
            // Its dependents were failed in the same transaction: nothing became runnable.
            return Ok(());
        }
        // Elsewhere only patches that waited for this one can have become runnable (their
        // targets were read in the completion's transaction): trying every idle target here
        // cost a trip through the writer per target per completion.
        for other in dependent_targets.iter().filter(|other| **other != target) {
            self.dispatch(other).await;
        }
        Ok(())
    }

    /// Cancels a queued patch, or asks the executor running it to stop (it kills the
    /// commands, rolls back and reports `cancelled`).
    pub async fn cancel(&self, id: String, actor: String) -> Result<PatchRecord, RouterError> {
        let record = self
            .store
            .cancel_queued(id.clone(), actor.clone())
            .await?
            .ok_or_else(|| RouterError::NotFound(id.clone()))?;
        if record.status == Status::Cancelled {
            self.waiters.ended(&id);
            // Its queued dependents were failed in the same transaction.
            self.waiters.maybe_ended_others();
            self.outbox_wake.notify_one();
            return Ok(record);
        }
        if record.status.is_terminal() {
            return Err(RouterError::FailedPrecondition(format!(
                "patch {id} already ended as {}",
                record.status
            )));
        }
        let sent = self
            .send_cancel(
                record.patch.target.as_str(),
                &id,
                record.fencing_token,
                format!("cancelled by {actor}"),
            )
            .await;
        if !sent && self.shared {
            // Its executor may be connected to another replica: that one sends the Cancel.
            self.store
                .publish_cancel(
                    id.clone(),
                    record.fencing_token,
                    format!("cancelled by {actor}"),
                )
                .await?;
        } else if !sent {
            tracing::warn!(patch_id = %id, "cannot deliver cancel to the executor; the lease will expire");
        }
        Ok(record)
    }

    /// Sends Cancel for the lease `token` of `id` to the session holding it, if connected.
    async fn send_cancel(&self, target: &str, id: &str, token: u64, reason: String) -> bool {
        let slots = self.slots.lock().await;
        let Some(slot) = slots.get(target) else {
            return false;
        };
        let owner_session = slot
            .active
            .as_ref()
            .filter(|(_, t, _)| *t == token)
            .map(|(_, _, session)| *session);
        let session = match owner_session {
            Some(session) => slot.sessions.iter().find(|s| s.id == session),
            None => None,
        };
        let Some(session) = session else {
            return false;
        };
        let sender = session.sender.clone();
        drop(slots);
        let message = RouterMessage {
            kind: Some(router_message::Kind::Cancel(Cancel {
                patch_id: id.to_owned(),
                fencing_token: token,
                reason,
            })),
        };
        // Not try_send: a stream momentarily full (dry runs keep room for this, but heartbeat
        // answers and assignments share it) must not lose the cancel.
        matches!(
            tokio::time::timeout(CANCEL_SEND_WAIT, sender.send(Ok(message))).await,
            Ok(Ok(()))
        )
    }

    /// Queues a failed, cancelled or lost patch again.
    pub async fn retry(&self, id: String, actor: String) -> Result<PatchRecord, RouterError> {
        let (record, requeued) = self
            .store
            .retry(id.clone(), actor)
            .await?
            .ok_or_else(|| RouterError::NotFound(id.clone()))?;
        if !requeued {
            return Err(RouterError::FailedPrecondition(format!(
                "only patches that ended without success can be retried; {id} is {}",
                record.status
            )));
        }
        self.dispatch(record.patch.target.as_str()).await;
        Ok(record)
    }

    /// Pauses or resumes a target.
    pub async fn set_paused(&self, target: String, paused: bool) -> Result<(), RouterError> {
        self.store.set_paused(target.clone(), paused).await?;
        tracing::info!(%target, paused, "target pause flag set");
        if !paused {
            self.dispatch(&target).await;
        }
        Ok(())
    }

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
    async fn after_leases_ended(&self, ended: Result<Vec<LeaseEnded>, StoreError>) {
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

    /// Every connected executor session.
    pub async fn executors(&self) -> Vec<ExecutorView> {
        let slots = self.slots.lock().await;
        let mut views: BTreeMap<u64, ExecutorView> = BTreeMap::new();
        for slot in slots.values() {
            for session in &slot.sessions {
                let view = views.entry(session.id).or_insert_with(|| ExecutorView {
                    executor_id: session.executor_id.clone(),
                    session: session.owner.clone(),
                    targets: session.targets.clone(),
                    connected_ms: session.connected_ms,
                    last_seen_ms: session.last_seen_ms.load(Ordering::Relaxed),
                    running: Vec::new(),
                });
                if let Some((patch, _, owner)) = &slot.active
                    && *owner == session.id
                {
                    view.running.push(patch.clone());
                }
            }
        }
        views.into_values().collect()
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
    fn queue_ages(&self, views: &[TargetView]) -> HashMap<String, i64> {
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
            .sweep(&queues, rule_ms(), now_ms())
    }

    /// Raises `revert_waiting/<target>` when a revert patch waited `stale_after` in the queue
    /// of `view`'s target with no connected session advertising `revert` (an older executor
    /// is never leased one, so `queue_stale` alone would not say it); resolves it when such a
    /// session serves the target or no revert patch is queued there.
    async fn check_revert_waiting(&self, view: &TargetView, age_ms: i64, firing: &[String]) {
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

    /// The patch `id` as soon as it is terminal (at once if it is already), else its state
    /// when `wait` (capped at [`MAX_WAIT`]) is over. Woken by the router's own commits of
    /// terminal transitions, not by reading the store again and again.
    pub async fn wait(&self, id: String, wait: Duration) -> Result<PatchRecord, RouterError> {
        // Registered before the first read: an end committed after it wakes this call.
        let mut guard = self.waiters.register(&id)?;
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let record = self
                .store
                .get(id.clone())
                .await?
                .ok_or_else(|| RouterError::NotFound(id.clone()))?;
            if record.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(record);
            }
            if record.patch.depends_on.is_empty() {
                // Only a patch depending on others can be ended by another's failure.
                guard.ignore_others();
            }
            tokio::select! {
                () = guard.woken() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Asks a connected executor serving the patch's target to plan it without writing
    /// anything, and returns its report (`dry_run` set, the diff it would apply). Nothing is
    /// stored, queued or leased. The dry run does not wait behind the target's queue; the
    /// executor waits only for a patch it is applying on that target at that moment.
    pub async fn dry_run(&self, patch: &Patch) -> Result<ApplyReport, RouterError> {
        self.ask_dry_run(patch, Ask::DryRun).await
    }

    /// Asks a connected executor serving the revert patch's target, one advertising the
    /// `revert` capability, whether it can restore the pre-images (a dry run of the revert
    /// patch: the diff it would apply, or `rejected` with the conflicts). Refused with
    /// `FAILED_PRECONDITION` naming the target when no such executor is connected.
    pub async fn check_revert(&self, patch: &Patch) -> Result<ApplyReport, RouterError> {
        self.ask_dry_run(patch, Ask::Revert).await
    }

    async fn ask_dry_run(&self, patch: &Patch, ask: Ask) -> Result<ApplyReport, RouterError> {
        let target = patch.target.to_string();
        let (owner, sender) = {
            let slots = self.slots.lock().await;
            let alive_since = rule_ms() - self.lease_ms();
            let alive = |s: &&Session| {
                !s.cut.is_cancelled() && s.last_seen_ms.load(Ordering::Relaxed) >= alive_since
            };
            let sessions = slots.get(&target).map(|slot| slot.sessions.as_slice());
            let any_alive = sessions.is_some_and(|sessions| sessions.iter().any(|s| alive(&s)));
            let session = sessions.and_then(|sessions| {
                sessions.iter().filter(alive).find(|s| match ask {
                    Ask::DryRun => s.dry_run,
                    Ask::Revert => s.revert,
                })
            });
            match (ask, any_alive, session) {
                (_, _, Some(session)) => (session.owner.clone(), session.sender.clone()),
                (Ask::DryRun, false, None) => {
                    return Err(RouterError::Unavailable(format!(
                        "no executor serving target {target} is connected; a dry run needs one \
                         to read the workspace"
                    )));
                }
                (Ask::DryRun, true, None) => {
                    return Err(RouterError::Unavailable(format!(
                        "the executor serving target {target} does not do dry runs (its Hello \
                         does not advertise the dry_run capability: an older executor); upgrade it"
                    )));
                }
                (Ask::Revert, false, None) => {
                    return Err(RouterError::FailedPrecondition(format!(
                        "no executor serving target {target} is connected; a revert needs one \
                         to check that the patch's files did not change since"
                    )));
                }
                (Ask::Revert, true, None) => {
                    return Err(RouterError::FailedPrecondition(format!(
                        "the executor serving target {target} cannot revert (its Hello does not \
                         advertise the revert capability: an older executor); upgrade it"
                    )));
                }
            }
        };
        // Room is kept on the session's stream for what must not be lost (a Cancel).
        if sender.capacity() <= RESERVED_FOR_CANCEL {
            return Err(RouterError::Unavailable(format!(
                "the executor serving target {target} cannot take a dry run now (its stream is \
                 nearly full); try again"
            )));
        }
        let mut ticket = self.dry_runs.register(&owner)?;
        let message = RouterMessage {
            kind: Some(router_message::Kind::DryRun(DryRun {
                request_id: ticket.request_id,
                patch: Some(ghost_proto::router::v1::Patch::from(patch)),
            })),
        };
        if sender.try_send(Ok(message)).is_err() {
            return Err(RouterError::Unavailable(format!(
                "the executor serving target {target} cannot take a dry run now (its stream is \
                 full or closed); try again"
            )));
        }
        tracing::info!(patch_id = %patch.id, %target, executor = ?owner, request_id = ticket.request_id, "dry run sent");
        ticket.answer(DRY_RUN_DEADLINE).await
    }

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
    async fn refresh_active(&self, target: &str) {
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

    /// Ends every executor session (on shutdown), so their streams close.
    pub async fn close_sessions(&self) {
        self.slots.lock().await.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use ghost_proto::router::v1 as wire;

    fn patch(id: &str) -> Patch {
        Patch::try_from(wire::Patch {
            id: id.to_owned(),
            target: "MAIN".to_owned(),
            description: "cut-session test".to_owned(),
            priority: wire::Priority::Normal as i32,
            edits: vec![wire::Edit {
                op: Some(wire::edit::Op::Write(wire::WriteFile {
                    path: "a.txt".to_owned(),
                    contents: "a\n".to_owned(),
                })),
            }],
            ..wire::Patch::default()
        })
        .expect("valid patch")
    }

    /// A revocation can land after the Hello's second token lookup and before the session's
    /// reader watches its cut signal: the session is registered already cut, and dispatch
    /// must not queue an Assign to it (the API cannot time that window, so this drives
    /// `Routing` directly).
    #[tokio::test]
    async fn a_session_registered_already_cut_gets_no_assignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("router.db")).expect("store");
        let routing = Routing::new(
            Arc::new(store),
            Policy {
                lease: Duration::from_secs(30),
                max_attempts: 3,
                stale_after: Duration::from_secs(300),
            },
        );
        let targets = vec!["MAIN".to_owned()];
        let (revoked_sender, mut revoked_inbox) = mpsc::channel(8);
        let cut = CancellationToken::new();
        cut.cancel();
        routing
            .connect("revoked", &targets, &[], revoked_sender, cut)
            .await;
        routing
            .submit(
                patch("waiting"),
                "gateway",
                String::new(),
                Vec::new(),
                String::new(),
            )
            .await
            .expect("stored");
        assert!(
            revoked_inbox.try_recv().is_err(),
            "a cut session was given work"
        );
        let record = routing
            .store()
            .get("waiting".to_owned())
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(record.status, Status::Queued);

        let (live_sender, mut live_inbox) = mpsc::channel(8);
        routing
            .connect("live", &targets, &[], live_sender, CancellationToken::new())
            .await;
        let message = live_inbox.try_recv().expect("the live session is assigned");
        assert!(matches!(
            message.map(|message| message.kind),
            Ok(Some(router_message::Kind::Assign(_)))
        ));
    }
}
