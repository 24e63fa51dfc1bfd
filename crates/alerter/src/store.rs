//! [`Store`]: the alerter's durable state, on one of two backends chosen by `store.url`:
//! [`SqliteStore`] (the embedded default, `<data_dir>/alerter.db`, WAL, `synchronous=FULL`) or
//! [`PgStore`] (PostgreSQL, so replicas share it). Both hold the same tables, versioned by
//! [`migrations`]: the Slack outbox and the thread of each patch or alert, the dedup tables of
//! `Notify` and `Alert`, digests, the backlog switch, alert states, silences and the audit log
//! of Slack commands; PostgreSQL adds the `leases` that let replicas share the work.
//!
//! Every method runs one transaction and returns once it is committed, so a message is
//! "stored" before anyone is told it was accepted. A failure of the medium (a disk refusing
//! writes, a database server gone) makes the store *degraded* ([`Store::health`]) and the
//! call answers [`StoreError::Unavailable`].
//!
//! Shape: an enum over the two backends, each method dispatched by `dispatch!`, so the two
//! method lists stay side by side and the compiler checks they match.
//!
//! About 600 lines, one thing: the facade every caller uses, each method a short dispatch to the
//! backend plus the types that cross it; the SQL is in `store/sqlite*` and `store/postgres*`.

mod migrations;
mod postgres;
mod sqlite;
#[cfg(test)]
mod tests;

use std::path::Path;

use ghost_runtime::storage::{FaultKind, StorageHealth};
use serde_json::Value;

use crate::alert::AlertState;

pub use self::postgres::{AlertsLock, PgStore};
pub use self::sqlite::SqliteStore;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A stored JSON column could not be read back.
    #[error("corrupt stored json: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A stored alert state this alerter cannot read (written by a newer or a broken
    /// version): the alert is named, nothing is guessed.
    #[error("the stored state of alert {key} cannot be read: {reason}")]
    UnreadableAlert {
        /// The alert's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The blocking task running the transaction died.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The database cannot be opened as it is (a bad URL, a server that refuses, a schema
    /// newer than this binary); the text says why, for people.
    #[error("{0}")]
    Open(String),
    /// The medium under the database refuses writes (full, I/O errors, a failed fsync, the
    /// server gone): the alerter is degraded; the reason is for people (no paths, no SQL).
    #[error("{prefix}{0}", prefix = ghost_runtime::storage::UNAVAILABLE_PREFIX)]
    Unavailable(String),
}

/// The storage fault behind an error, if the medium (not the query) failed.
fn storage_fault(err: &StoreError) -> Option<FaultKind> {
    match err {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
            FaultKind::from_sqlite_code(failure.extended_code)
        }
        StoreError::Postgres(err) => postgres::fault(err),
        _ => None,
    }
}

/// What a stored message asks Slack to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A top-level `chat.postMessage`; the first one of a thread becomes its parent.
    Post,
    /// A `chat.postMessage` into the thread's parent (`thread_ts`).
    Reply,
    /// A `chat.update` of the thread's parent.
    Update,
}

impl Kind {
    /// The stored text.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Post => "post",
            Self::Reply => "reply",
            Self::Update => "update",
        }
    }

    /// Read back from the stored text (anything unknown is a post).
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "reply" => Self::Reply,
            "update" => Self::Update,
            _ => Self::Post,
        }
    }
}

/// Delivery order within a channel's pacing: lower first (order within one thread is kept
/// whatever the priorities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// System alerts and escalations.
    Critical = 0,
    /// A failed (or otherwise unsuccessful) patch's parent message, backlog notices.
    Failure = 1,
    /// Thread updates and replies, successes in their own thread.
    Thread = 2,
    /// Digest messages and their edits.
    Digest = 3,
}

/// A message to store for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Thread key, e.g. `patch/<id>` or `alert/<group>/<ms>`; order is kept per thread.
    pub thread: String,
    /// Channel name or id to post to.
    pub channel: String,
    /// What to do.
    pub kind: Kind,
    /// The Slack body without `channel`, `ts` and `thread_ts` (added at delivery).
    pub body: Value,
    /// Trace context of the call that caused it, so its delivery joins that trace.
    pub traceparent: Option<String>,
    /// Delivery order within the channel's pacing.
    pub priority: Priority,
}

/// A stored message waiting for delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Outbox row id; increasing in storing order.
    pub id: i64,
    /// Thread key.
    pub thread: String,
    /// Channel name or id.
    pub channel: String,
    /// What to do.
    pub kind: Kind,
    /// The Slack body.
    pub body: Value,
    /// Tries so far.
    pub tries: u32,
    /// Not before this time (Unix ms).
    pub next_at_ms: i64,
    /// Trace context of the call that caused it.
    pub traceparent: Option<String>,
}

/// Where a thread's parent message lives in Slack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadParent {
    /// Channel id Slack answered with.
    pub channel: String,
    /// The parent's `ts`.
    pub ts: String,
}

/// A ready head of the outbox: a message to try now, with its thread's parent.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// The message.
    pub message: Message,
    /// Where its thread's parent lives in Slack, once one was delivered.
    pub parent: Option<ThreadParent>,
}

/// One look at the outbox: what to try now, and when to look again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadyHeads {
    /// Ready heads, oldest first.
    pub heads: Vec<Head>,
    /// The earliest `next_at_ms` of pending messages not due yet; `None` when there are none
    /// or when the limit was reached (look again at once).
    pub next_at_ms: Option<i64>,
}

/// The result of one try, as recorded by [`Store::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered with Slack's `ts`; `parent` (when given) becomes its thread's parent unless
    /// the thread already has one.
    Sent {
        /// Outbox row id.
        id: i64,
        /// Slack's `ts` (empty for webhooks and unconfigured Slack).
        ts: String,
        /// Thread key and parent to record.
        parent: Option<(String, ThreadParent)>,
    },
    /// Failed; try again at `next_at_ms`.
    Retry {
        /// Outbox row id.
        id: i64,
        /// Next try not before (Unix ms).
        next_at_ms: i64,
        /// Why, kept as `last_error`.
        error: String,
    },
    /// A digest edit whose message is gone from Slack (`message_not_found`) or that ran out
    /// of tries: its thread forgets the parent and the edit, which carries the full rendered
    /// digest, is posted as a new message (its tries start again).
    Repost {
        /// Outbox row id.
        id: i64,
        /// The digest's thread key.
        thread: String,
        /// Why, kept as `last_error`.
        error: String,
    },
    /// Given up on (dead letter).
    Dead {
        /// Outbox row id.
        id: i64,
        /// Why, kept as `last_error`.
        error: String,
    },
}

/// One patch to add to a channel's digest.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestAdd {
    /// The channel.
    pub channel: String,
    /// Start of the digest period (Unix ms).
    pub period_ms: i64,
    /// Entries per digest message.
    pub max_entries: u32,
    /// The entry (JSON, read back by the renderer).
    pub entry: Value,
}

/// Renders a digest message from its entries and its period's start.
pub type DigestRender = fn(&[Value], i64) -> Value;

/// Counts of outbox rows by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting for delivery.
    pub pending: u64,
    /// Delivered.
    pub sent: u64,
    /// Given up on.
    pub dead: u64,
}

/// A silence as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    /// Its id, for `unsilence`.
    pub id: i64,
    /// An alert key, or a target name.
    pub matcher: String,
    /// Ends at (Unix ms).
    pub until_ms: i64,
    /// Slack user id of who set it.
    pub created_by: String,
}

/// One audited Slack command or button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub at_ms: i64,
    /// Slack user id.
    pub user_id: String,
    /// Slack user name.
    pub user_name: String,
    /// Slack channel id.
    pub channel_id: String,
    /// `command` or `button`.
    pub source: String,
    /// The verb run, e.g. `cancel`.
    pub verb: String,
    /// Its arguments.
    pub args: String,
    /// False when refused (not an operator).
    pub allowed: bool,
    /// What happened, one line.
    pub outcome: String,
}

/// The two backends.
#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// The alerter's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Whether the medium under the database accepts writes.
    health: StorageHealth,
}

/// Calls the same method on whichever backend this store has, and classifies its failure.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* $(,)? )) => {{
        let result = match &$self.backend {
            Backend::Sqlite(db) => db.$method($($arg),*).await,
            Backend::Postgres(db) => db.$method($($arg),*).await,
        };
        $self.classify(result)
    }};
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path`, or an in-memory one for
    /// `None`.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        Ok(Self::with(Backend::Sqlite(SqliteStore::open(path)?)))
    }

    /// Connects to the PostgreSQL database at `url` and migrates it.
    pub async fn open_postgres(url: &str) -> Result<Self, StoreError> {
        Ok(Self::with(Backend::Postgres(PgStore::open(url).await?)))
    }

    fn with(backend: Backend) -> Self {
        Self {
            backend,
            health: StorageHealth::new(crate::SERVICE),
        }
    }

    /// True on PostgreSQL: several replicas may share this database.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// On PostgreSQL, the lock that lets one replica at a time change the alerts, held until
    /// dropped; `None` on SQLite, where one process owns them.
    pub async fn lock_alerts(&self) -> Result<Option<AlertsLock>, StoreError> {
        let result = match &self.backend {
            Backend::Sqlite(_) => Ok(None),
            Backend::Postgres(db) => db.lock_alerts().await.map(Some),
        };
        self.classify(result)
    }

    /// The longest the delivery loop may sleep between two looks: on PostgreSQL one poll
    /// (another replica may store messages for a channel this one sends to); `None` on
    /// SQLite, where every store wakes the loop.
    pub fn poll(&self) -> Option<std::time::Duration> {
        self.is_shared().then_some(postgres::POLL)
    }

    /// The health of the medium under the database.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// A storage fault marks the store degraded and becomes [`StoreError::Unavailable`].
    fn classify<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result.map_err(|err| match storage_fault(&err) {
            Some(kind) => {
                self.health.fault(kind, err.to_string());
                StoreError::Unavailable(kind.sentence(crate::SERVICE))
            }
            None => err,
        })
    }

    /// One real write (a committed row) on a fresh connection; heals nothing by itself: the
    /// caller marks the store healed when this succeeds.
    pub async fn probe(&self, now_ms: i64) -> Result<(), StoreError> {
        dispatch!(self.probe(now_ms))
    }

    /// True when any message of `thread` was ever stored.
    pub async fn thread_started(&self, thread: &str) -> Result<bool, StoreError> {
        dispatch!(self.thread_started(thread))
    }

    /// The channel of `thread`'s first stored message, if any was ever stored.
    pub async fn thread_channel(&self, thread: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self.thread_channel(thread))
    }

    /// The copies of `thread` in other channels (threads `<thread>@<channel>`, made by routes
    /// with `continue`), with their channels.
    pub async fn thread_copies(&self, thread: &str) -> Result<Vec<(String, String)>, StoreError> {
        dispatch!(self.thread_copies(thread))
    }

    /// Records `Notify(patch_id, attempt)` and stores `messages`, unless it was recorded
    /// before; true when fresh.
    pub async fn accept_notification(
        &self,
        patch_id: &str,
        attempt: u32,
        now_ms: i64,
        messages: Vec<NewMessage>,
    ) -> Result<bool, StoreError> {
        self.accept_routed(patch_id, attempt, now_ms, messages, Vec::new(), |_, _| {
            Value::Null
        })
        .await
    }

    /// Records `Notify(patch_id, attempt)`, stores `messages` and adds the patch to the
    /// digests of `digests` (all in one transaction), unless it was recorded before; true
    /// when fresh.
    pub async fn accept_routed(
        &self,
        patch_id: &str,
        attempt: u32,
        now_ms: i64,
        messages: Vec<NewMessage>,
        digests: Vec<DigestAdd>,
        render: DigestRender,
    ) -> Result<bool, StoreError> {
        let accept = Accept {
            patch_id: patch_id.to_owned(),
            attempt,
            now_ms,
            messages,
            digests,
            render,
        };
        dispatch!(self.accept_routed(accept))
    }

    /// Pending messages per channel (the backlog).
    pub async fn pending_by_channel(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        dispatch!(self.pending_by_channel())
    }

    /// The creation time of the oldest pending message, if any.
    pub async fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        dispatch!(self.oldest_pending_ms())
    }

    /// Direct messages (threads `dm/…`) stored for `user` since `since_ms`.
    pub async fn dms_since(&self, user: &str, since_ms: i64) -> Result<u64, StoreError> {
        dispatch!(self.dms_since(user, since_ms))
    }

    /// The channels whose successes the backlog switch sends to the digest.
    pub async fn backlog_switched(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self.backlog_switched())
    }

    /// Records a backlog switch of `channel` (`on`: to the digest) and stores its notice, in
    /// one transaction.
    pub async fn switch_backlog(
        &self,
        channel: &str,
        on: bool,
        notice: NewMessage,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        dispatch!(self.switch_backlog(channel, on, notice, now_ms))
    }

    /// Pending messages of `channel`.
    pub async fn pending_in(&self, channel: &str) -> Result<u64, StoreError> {
        dispatch!(self.pending_in(channel))
    }

    /// True when the `Alert(key, resolved, at)` call was already recorded (read only).
    pub async fn alert_event_seen(
        &self,
        key: &str,
        resolved: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.alert_event_seen(key, resolved, at_ms))
    }

    /// Records one `Alert(key, resolved, at)` call; true when it was not seen before.
    pub async fn accept_alert_event(
        &self,
        key: &str,
        resolved: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        dispatch!(self.accept_alert_event(key, resolved, at_ms))
    }

    /// Stores messages for delivery.
    pub async fn enqueue(&self, messages: Vec<NewMessage>, now_ms: i64) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        dispatch!(self.enqueue(messages, now_ms))
    }

    /// At most `limit` ready heads, oldest first: the oldest pending message of its thread
    /// (so a later message of a thread is never tried while an earlier one is pending, even
    /// one waiting for a retry), due at `now_ms`, not in one of `skip_channels`; each with its
    /// thread's parent joined in. When fewer than `limit` are ready, also the earliest
    /// `next_at_ms` of pending messages not due yet, so the caller knows how long to sleep.
    ///
    /// On PostgreSQL only the channels whose sender lease this store holds (or takes now)
    /// are served, so one replica at a time sends to a channel; and `next_at_ms` is never
    /// later than one poll away, since another replica may store messages meanwhile.
    pub async fn ready_heads(
        &self,
        now_ms: i64,
        limit: usize,
        skip_channels: Vec<String>,
    ) -> Result<ReadyHeads, StoreError> {
        dispatch!(self.ready_heads(now_ms, limit, skip_channels))
    }

    /// Records the results of one delivery round in one transaction.
    pub async fn settle(&self, outcomes: Vec<Outcome>) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        dispatch!(self.settle(outcomes))
    }

    /// Outbox rows by state.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        dispatch!(self.outbox_counts())
    }

    /// Every stored message in storing order, delivered or not (for tests and diagnostics).
    pub async fn all_messages(&self) -> Result<Vec<NewMessage>, StoreError> {
        dispatch!(self.all_messages())
    }

    /// Saves one alert's state (stored as JSON text); it stays among the active alerts until
    /// resolved.
    pub async fn save_alert(&self, alert: &AlertState) -> Result<(), StoreError> {
        let state = alert.to_stored()?;
        dispatch!(self.save_alert(&alert.key, state, alert.is_active()))
    }

    /// The states of all active alerts, by key; a stored state this alerter cannot read is
    /// [`StoreError::UnreadableAlert`].
    pub async fn active_alerts(&self) -> Result<Vec<AlertState>, StoreError> {
        let stored: Vec<(String, String)> = dispatch!(self.active_alerts())?;
        stored
            .iter()
            .map(|(key, state)| AlertState::from_stored(key, state))
            .collect()
    }

    /// Stores a silence; returns it with its id.
    pub async fn add_silence(
        &self,
        matcher: String,
        until_ms: i64,
        created_by: String,
        now_ms: i64,
    ) -> Result<Silence, StoreError> {
        dispatch!(self.add_silence(matcher, until_ms, created_by, now_ms))
    }

    /// Ends silence `id`; false when there is no such active silence.
    pub async fn remove_silence(&self, id: i64) -> Result<bool, StoreError> {
        dispatch!(self.remove_silence(id))
    }

    /// Silences not removed and not yet over at `now_ms`.
    pub async fn silences(&self, now_ms: i64) -> Result<Vec<Silence>, StoreError> {
        dispatch!(self.silences(now_ms))
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        dispatch!(self.audit(entry))
    }

    /// The audit log, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        dispatch!(self.audit_log())
    }

    /// Takes or renews the lease `name` for `ttl`; true while this store holds it. On SQLite
    /// (one replica) always true. For leader election: the health monitor runs on the
    /// replica that holds `monitor`.
    pub async fn hold_lease(
        &self,
        name: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        dispatch!(self.hold_lease(name, ttl))
    }

    /// Gives up every lease this store holds (a clean shutdown), so another replica takes
    /// over at once rather than when they expire.
    pub async fn release_leases(&self) -> Result<(), StoreError> {
        dispatch!(self.release_leases())
    }
}

/// One `Notify` to record, as both backends take it.
pub(crate) struct Accept {
    pub patch_id: String,
    pub attempt: u32,
    pub now_ms: i64,
    pub messages: Vec<NewMessage>,
    pub digests: Vec<DigestAdd>,
    pub render: DigestRender,
}
