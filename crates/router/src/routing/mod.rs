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

mod asks;
mod completion;
mod control;
mod dispatch;
mod expiry;
mod replicas;
mod sessions;
mod storage;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::{Duration, Instant};

use ghost_proto::executor::v1::RouterMessage;
use ghost_runtime::clock::{SharedClock, SystemClock};
use ghost_runtime::storage::StorageHealth;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::dry_runs::DryRuns;
use crate::queue_ages::QueueAges;
use crate::revert::Reverts;
use crate::store::{RouterStore, TargetRow};
use crate::waiters::Waiters;

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
    /// Rule time (lease deadlines, liveness, queue ages): [`SystemClock`] in production.
    clock: SharedClock,
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
            clock: SystemClock::shared(),
        }
    }

    /// The same routing, reading rule time from `clock` (give the store the same clock; tests:
    /// a [`ghost_runtime::clock::TokioClock`] on paused time).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
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
}
