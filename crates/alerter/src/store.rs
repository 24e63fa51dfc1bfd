//! Durable state of the alerter in SQLite (WAL, `synchronous=FULL`): the Slack outbox and the
//! thread of each patch or alert, the dedup tables of `Notify` and `Alert`, alert states,
//! silences and the audit log of Slack commands.
//!
//! Every method runs one transaction on a blocking thread and returns once it is committed, so
//! a message is "stored" before anyone is told it was accepted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ghost_runtime::storage::{FaultKind, StorageHealth};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored JSON column could not be read back.
    #[error("corrupt stored json: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The blocking task running the transaction died.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The disk under the database refuses writes (full, I/O errors, a failed fsync): the
    /// alerter is degraded; the reason is for people (no paths, no SQL).
    #[error("{prefix}{0}", prefix = ghost_runtime::storage::UNAVAILABLE_PREFIX)]
    Unavailable(String),
}

/// The storage fault behind an SQLite error, if the disk (not the query) failed.
fn storage_fault(err: &StoreError) -> Option<FaultKind> {
    match err {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => {
            FaultKind::from_sqlite_code(failure.extended_code)
        }
        _ => None,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS notifications (
    patch_id TEXT NOT NULL, attempt INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (patch_id, attempt));
CREATE TABLE IF NOT EXISTS alert_events (
    key TEXT NOT NULL, resolved INTEGER NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (key, resolved, at_ms));
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    thread TEXT NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    tries INTEGER NOT NULL DEFAULT 0,
    next_at_ms INTEGER NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    ts TEXT NOT NULL DEFAULT '',
    traceparent TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, thread, id);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox (state, id);
CREATE TABLE IF NOT EXISTS digests (
    thread TEXT PRIMARY KEY, channel TEXT NOT NULL, period_ms INTEGER NOT NULL,
    seq INTEGER NOT NULL, entries INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS digests_current ON digests (channel, period_ms, seq);
CREATE TABLE IF NOT EXISTS digest_entries (
    patch_id TEXT NOT NULL, attempt INTEGER NOT NULL, channel TEXT NOT NULL,
    thread TEXT NOT NULL, entry TEXT NOT NULL, at_ms INTEGER NOT NULL,
    PRIMARY KEY (patch_id, attempt, channel));
CREATE INDEX IF NOT EXISTS digest_entries_thread ON digest_entries (thread, at_ms);
CREATE TABLE IF NOT EXISTS backlog_switched (channel TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS threads (
    thread TEXT PRIMARY KEY, channel TEXT NOT NULL, ts TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (key TEXT PRIMARY KEY, state TEXT NOT NULL, active INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT, matcher TEXT NOT NULL, until_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL, created_ms INTEGER NOT NULL, removed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS storage_probe (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, user_id TEXT NOT NULL,
    user_name TEXT NOT NULL, channel_id TEXT NOT NULL, source TEXT NOT NULL, verb TEXT NOT NULL,
    args TEXT NOT NULL, allowed INTEGER NOT NULL, outcome TEXT NOT NULL);
";

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
    fn as_str(self) -> &'static str {
        match self {
            Self::Post => "post",
            Self::Reply => "reply",
            Self::Update => "update",
        }
    }

    fn parse(text: &str) -> Self {
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

/// The alerter's database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// The database file; `None` in memory.
    path: Option<Arc<PathBuf>>,
    /// Whether the disk under the database accepts writes.
    health: StorageHealth,
}

/// A connection to `path` (in memory for `None`) with the store's settings.
fn connect(path: Option<&Path>) -> Result<Connection, StoreError> {
    let conn = match path {
        Some(path) => Connection::open(path)?,
        None => Connection::open_in_memory()?,
    };
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the database at `path`, or an in-memory one for `None`.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let conn = connect(path)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.map(|path| Arc::new(path.to_owned())),
            health: StorageHealth::new(crate::SERVICE),
        })
    }

    /// The health of the disk under the database.
    pub fn health(&self) -> &StorageHealth {
        &self.health
    }

    async fn with_tx<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let result = tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tx = guard.transaction()?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await?;
        result.map_err(|err| match storage_fault(&err) {
            Some(kind) => {
                self.health.fault(kind, err.to_string());
                StoreError::Unavailable(kind.sentence(crate::SERVICE))
            }
            None => err,
        })
    }

    /// One real write (a committed, fsynced row) on a fresh connection: after a failed write
    /// or fsync the old connection's view of what reached the disk is not trusted, so it is
    /// replaced first (SQLite re-reads the file and its WAL as it finds them). Heals nothing
    /// by itself: the caller marks the store healed when this succeeds.
    pub async fn probe(&self, now_ms: i64) -> Result<(), StoreError> {
        if let Some(path) = &self.path {
            let path = Arc::clone(path);
            let conn = Arc::clone(&self.conn);
            tokio::task::spawn_blocking(move || {
                let fresh = connect(Some(&path))?;
                *conn
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                Ok::<(), StoreError>(())
            })
            .await??;
        }
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO storage_probe (id, at_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms",
                params![now_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// True when any message of `thread` was ever stored.
    pub async fn thread_started(&self, thread: &str) -> Result<bool, StoreError> {
        let thread = thread.to_owned();
        self.with_tx(move |conn| {
            let found: Option<i64> = conn
                .query_row(
                    "SELECT id FROM outbox WHERE thread = ?1 LIMIT 1",
                    params![thread],
                    |row| row.get(0),
                )
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    /// The channel of `thread`'s first stored message, if any was ever stored.
    pub async fn thread_channel(&self, thread: &str) -> Result<Option<String>, StoreError> {
        let thread = thread.to_owned();
        self.with_tx(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT channel FROM outbox WHERE thread = ?1 ORDER BY id LIMIT 1",
                    params![thread],
                    |row| row.get(0),
                )
                .optional()?)
        })
        .await
    }

    /// The copies of `thread` in other channels (threads `<thread>@<channel>`, made by routes
    /// with `continue`), with their channels.
    pub async fn thread_copies(&self, thread: &str) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = format!("{thread}@");
        self.with_tx(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT thread, channel FROM outbox
                 WHERE substr(thread, 1, length(?1)) = ?1
                 GROUP BY thread ORDER BY MIN(id)",
            )?;
            let rows =
                statement.query_map(params![prefix], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
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
        let patch_id = patch_id.to_owned();
        self.with_tx(move |conn| {
            let fresh = conn.execute(
                "INSERT OR IGNORE INTO notifications (patch_id, attempt, at_ms) VALUES (?1, ?2, ?3)",
                params![patch_id, attempt, now_ms],
            )? == 1;
            if fresh {
                insert_messages(conn, &messages, now_ms)?;
                for add in &digests {
                    add_to_digest(conn, &patch_id, attempt, add, now_ms, &render)?;
                }
            }
            Ok(fresh)
        })
        .await
    }

    /// Pending messages per channel (the backlog).
    pub async fn pending_by_channel(
        &self,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.with_tx(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT channel, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY channel",
            )?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut out = std::collections::BTreeMap::new();
            for row in rows {
                let (channel, count) = row?;
                out.insert(channel, u64::try_from(count).unwrap_or(0));
            }
            Ok(out)
        })
        .await
    }

    /// The creation time of the oldest pending message, if any (index `outbox_ready`).
    pub async fn oldest_pending_ms(&self) -> Result<Option<i64>, StoreError> {
        self.with_tx(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT created_ms FROM outbox WHERE state = 'pending' ORDER BY id LIMIT 1",
                )?
                .query_row([], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// Direct messages (threads `dm/…`) stored for `user` since `since_ms`.
    pub async fn dms_since(&self, user: &str, since_ms: i64) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.with_tx(move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM outbox
                     WHERE channel = ?1 AND thread LIKE 'dm/%' AND created_ms >= ?2",
                )?
                .query_row(params![user, since_ms], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    /// The channels whose successes the backlog switch sends to the digest.
    pub async fn backlog_switched(&self) -> Result<Vec<String>, StoreError> {
        self.with_tx(|conn| {
            let mut statement =
                conn.prepare_cached("SELECT channel FROM backlog_switched ORDER BY channel")?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
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
        let channel = channel.to_owned();
        self.with_tx(move |conn| {
            if on {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO backlog_switched (channel) VALUES (?1)",
                )?
                .execute(params![channel])?;
            } else {
                conn.prepare_cached("DELETE FROM backlog_switched WHERE channel = ?1")?
                    .execute(params![channel])?;
            }
            insert_messages(conn, &[notice], now_ms)
        })
        .await
    }

    /// Pending messages of `channel`.
    pub async fn pending_in(&self, channel: &str) -> Result<u64, StoreError> {
        let channel = channel.to_owned();
        self.with_tx(move |conn| {
            let count: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND channel = ?1",
                )?
                .query_row(params![channel], |row| row.get(0))?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }

    /// True when the `Alert(key, resolved, at)` call was already recorded (read only).
    pub async fn alert_event_seen(
        &self,
        key: &str,
        resolved: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.with_tx(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT 1 FROM alert_events WHERE key = ?1 AND resolved = ?2 AND at_ms = ?3",
                    params![key, resolved, at_ms],
                    |_| Ok(()),
                )
                .optional()?
                .is_some())
        })
        .await
    }

    /// Records one `Alert(key, resolved, at)` call; true when it was not seen before.
    pub async fn accept_alert_event(
        &self,
        key: &str,
        resolved: bool,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.with_tx(move |conn| {
            Ok(conn.execute(
                "INSERT OR IGNORE INTO alert_events (key, resolved, at_ms) VALUES (?1, ?2, ?3)",
                params![key, resolved, at_ms],
            )? == 1)
        })
        .await
    }

    /// Stores messages for delivery.
    pub async fn enqueue(&self, messages: Vec<NewMessage>, now_ms: i64) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.with_tx(move |conn| insert_messages(conn, &messages, now_ms))
            .await
    }

    /// At most `limit` ready heads, oldest first: the oldest pending message of its thread
    /// (so a later message of a thread is never tried while an earlier one is pending, even
    /// one waiting for a retry), due at `now_ms`, not in one of `skip_channels`; each with its
    /// thread's parent joined in. When fewer than `limit` are ready, also the earliest
    /// `next_at_ms` of pending messages not due yet, so the caller knows how long to sleep.
    pub async fn ready_heads(
        &self,
        now_ms: i64,
        limit: usize,
        skip_channels: Vec<String>,
    ) -> Result<ReadyHeads, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let skip = Value::from(skip_channels).to_string();
        self.with_tx(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT o.id, o.thread, o.channel, o.kind, o.body, o.tries, o.next_at_ms,
                        o.traceparent, t.channel, t.ts
                 FROM outbox o INDEXED BY outbox_priority
                 LEFT JOIN threads t ON t.thread = o.thread
                 WHERE o.state = 'pending' AND o.next_at_ms <= ?1
                   AND o.channel NOT IN (SELECT value FROM json_each(?3))
                   AND NOT EXISTS (
                       SELECT 1 FROM outbox i
                       WHERE i.state = 'pending' AND i.thread = o.thread AND i.id < o.id)
                 ORDER BY o.priority, o.id
                 LIMIT ?2",
            )?;
            let mut rows = statement.query(params![now_ms, limit, skip])?;
            let mut heads = Vec::new();
            while let Some(row) = rows.next()? {
                let traceparent: String = row.get(7)?;
                let kind: String = row.get(3)?;
                let body: String = row.get(4)?;
                let parent_channel: Option<String> = row.get(8)?;
                let parent_ts: Option<String> = row.get(9)?;
                heads.push(Head {
                    message: Message {
                        id: row.get(0)?,
                        thread: row.get(1)?,
                        channel: row.get(2)?,
                        kind: Kind::parse(&kind),
                        body: serde_json::from_str(&body)?,
                        tries: row.get(5)?,
                        next_at_ms: row.get(6)?,
                        traceparent: (!traceparent.is_empty()).then_some(traceparent),
                    },
                    parent: parent_channel
                        .zip(parent_ts)
                        .map(|(channel, ts)| ThreadParent { channel, ts }),
                });
            }
            let next_at_ms = if heads.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
                conn.prepare_cached(
                    "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending' AND next_at_ms > ?1",
                )?
                .query_row(params![now_ms], |row| row.get::<_, Option<i64>>(0))?
            } else {
                None
            };
            Ok(ReadyHeads { heads, next_at_ms })
        })
        .await
    }

    /// Records the results of one delivery round in one transaction.
    pub async fn settle(&self, outcomes: Vec<Outcome>) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        self.with_tx(move |conn| {
            for outcome in outcomes {
                match outcome {
                    Outcome::Sent { id, ts, parent } => {
                        conn.prepare_cached(
                            "UPDATE outbox SET state = 'sent', tries = tries + 1, ts = ?2,
                             last_error = '' WHERE id = ?1",
                        )?
                        .execute(params![id, ts])?;
                        if let Some((thread, parent)) = parent
                            && !parent.ts.is_empty()
                        {
                            conn.prepare_cached(
                                "INSERT OR IGNORE INTO threads (thread, channel, ts)
                                 VALUES (?1, ?2, ?3)",
                            )?
                            .execute(params![
                                thread,
                                parent.channel,
                                parent.ts
                            ])?;
                        }
                    }
                    Outcome::Retry {
                        id,
                        next_at_ms,
                        error,
                    } => {
                        conn.prepare_cached(
                            "UPDATE outbox SET tries = tries + 1, next_at_ms = ?2, last_error = ?3
                             WHERE id = ?1",
                        )?
                        .execute(params![id, next_at_ms, error])?;
                    }
                    Outcome::Repost { id, thread, error } => {
                        conn.prepare_cached("DELETE FROM threads WHERE thread = ?1")?
                            .execute(params![thread])?;
                        conn.prepare_cached(
                            "UPDATE outbox SET kind = 'post', tries = 0, last_error = ?2
                             WHERE id = ?1 AND state = 'pending'",
                        )?
                        .execute(params![id, error])?;
                    }
                    Outcome::Dead { id, error } => {
                        conn.prepare_cached(
                            "UPDATE outbox SET state = 'dead', tries = tries + 1, last_error = ?2
                             WHERE id = ?1",
                        )?
                        .execute(params![id, error])?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Outbox rows by state.
    pub async fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        self.with_tx(|conn| {
            let mut counts = OutboxCounts::default();
            let mut statement =
                conn.prepare("SELECT state, COUNT(*) FROM outbox GROUP BY state")?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (state, count) = row?;
                let count = u64::try_from(count).unwrap_or(0);
                match state.as_str() {
                    "pending" => counts.pending = count,
                    "sent" => counts.sent = count,
                    _ => counts.dead = count,
                }
            }
            Ok(counts)
        })
        .await
    }

    /// Every stored message in storing order, delivered or not (for tests and diagnostics).
    pub async fn all_messages(&self) -> Result<Vec<NewMessage>, StoreError> {
        self.with_tx(|conn| {
            let mut statement =
                conn.prepare("SELECT thread, channel, kind, body FROM outbox ORDER BY id")?;
            let rows = statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?;
            let mut messages = Vec::new();
            for row in rows {
                let (thread, channel, kind, body) = row?;
                messages.push(NewMessage {
                    thread,
                    channel,
                    kind: Kind::parse(&kind),
                    body: serde_json::from_str(&body)?,
                    traceparent: None,
                    priority: Priority::Thread,
                });
            }
            Ok(messages)
        })
        .await
    }

    /// Saves one alert's state (JSON); `active` false once resolved.
    pub async fn save_alert(
        &self,
        key: &str,
        state: Value,
        active: bool,
    ) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO alerts (key, state, active) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET state = excluded.state, active = excluded.active",
                params![key, state.to_string(), active],
            )?;
            Ok(())
        })
        .await
    }

    /// The states of all active alerts.
    pub async fn active_alerts(&self) -> Result<Vec<Value>, StoreError> {
        self.with_tx(|conn| {
            let mut statement =
                conn.prepare("SELECT state FROM alerts WHERE active = 1 ORDER BY key")?;
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            let mut states = Vec::new();
            for row in rows {
                states.push(serde_json::from_str(&row?)?);
            }
            Ok(states)
        })
        .await
    }

    /// Stores a silence; returns it with its id.
    pub async fn add_silence(
        &self,
        matcher: String,
        until_ms: i64,
        created_by: String,
        now_ms: i64,
    ) -> Result<Silence, StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO silences (matcher, until_ms, created_by, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![matcher, until_ms, created_by, now_ms],
            )?;
            Ok(Silence {
                id: conn.last_insert_rowid(),
                matcher,
                until_ms,
                created_by,
            })
        })
        .await
    }

    /// Ends silence `id`; false when there is no such active silence.
    pub async fn remove_silence(&self, id: i64) -> Result<bool, StoreError> {
        self.with_tx(move |conn| {
            Ok(conn.execute(
                "UPDATE silences SET removed = 1 WHERE id = ?1 AND removed = 0",
                params![id],
            )? == 1)
        })
        .await
    }

    /// Silences not removed and not yet over at `now_ms`.
    pub async fn silences(&self, now_ms: i64) -> Result<Vec<Silence>, StoreError> {
        self.with_tx(move |conn| {
            let mut statement = conn.prepare(
                "SELECT id, matcher, until_ms, created_by FROM silences
                 WHERE removed = 0 AND until_ms > ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![now_ms], |row| {
                Ok(Silence {
                    id: row.get(0)?,
                    matcher: row.get(1)?,
                    until_ms: row.get(2)?,
                    created_by: row.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Appends to the audit log.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        self.with_tx(move |conn| {
            conn.execute(
                "INSERT INTO audit (at_ms, user_id, user_name, channel_id, source, verb, args, allowed, outcome)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    entry.at_ms,
                    entry.user_id,
                    entry.user_name,
                    entry.channel_id,
                    entry.source,
                    entry.verb,
                    entry.args,
                    entry.allowed,
                    entry.outcome
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The audit log, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_tx(|conn| {
            let mut statement = conn.prepare(
                "SELECT at_ms, user_id, user_name, channel_id, source, verb, args, allowed, outcome
                 FROM audit ORDER BY id",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(AuditEntry {
                    at_ms: row.get(0)?,
                    user_id: row.get(1)?,
                    user_name: row.get(2)?,
                    channel_id: row.get(3)?,
                    source: row.get(4)?,
                    verb: row.get(5)?,
                    args: row.get(6)?,
                    allowed: row.get(7)?,
                    outcome: row.get(8)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// Adds what older databases lack: the `priority` column of the outbox and its index.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let has_priority = conn
        .prepare("SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'priority'")?
        .exists([])?;
    if !has_priority {
        conn.execute_batch("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 2;")?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS outbox_priority ON outbox (state, priority, id);",
    )?;
    Ok(())
}

fn insert_messages(
    conn: &Connection,
    messages: &[NewMessage],
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut statement = conn.prepare_cached(
        "INSERT INTO outbox (thread, channel, kind, body, next_at_ms, created_ms, traceparent,
                             priority)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
    )?;
    for message in messages {
        statement.execute(params![
            message.thread,
            message.channel,
            message.kind.as_str(),
            message.body.to_string(),
            now_ms,
            message.traceparent.as_deref().unwrap_or_default(),
            message.priority as i64
        ])?;
    }
    Ok(())
}

/// Stores one digest entry in the channel's current digest (a new digest message when the
/// period turned or the current one is full) and queues the digest's post or, for a digest
/// already started, one edit replacing any edit of it still pending (so a backlog of edits
/// coalesces into one call).
fn add_to_digest(
    conn: &Connection,
    patch_id: &str,
    attempt: u32,
    add: &DigestAdd,
    now_ms: i64,
    render: &DigestRender,
) -> Result<(), StoreError> {
    let current: Option<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT thread, seq, entries FROM digests WHERE channel = ?1 AND period_ms = ?2
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![add.channel, add.period_ms], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    // The current digest takes the entry while it holds fewer than `max_entries` and its
    // message stays within Slack's block budget; otherwise a new digest message starts.
    let mut joined = None;
    if let Some((thread, _, count)) = &current
        && *count < i64::from(add.max_entries)
    {
        let mut entries = digest_entries(conn, thread)?;
        entries.push(add.entry.clone());
        let blocks = render(&entries, add.period_ms)
            .get("blocks")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if blocks <= crate::messages::MAX_BLOCKS {
            joined = Some(thread.clone());
        }
    }
    let (thread, fresh) = match joined {
        Some(thread) => (thread, false),
        None => {
            let seq = current.map_or(0, |(_, seq, _)| seq + 1);
            let thread = format!("digest/{}/{}/{seq}", add.channel, add.period_ms);
            conn.prepare_cached(
                "INSERT INTO digests (thread, channel, period_ms, seq, entries)
                 VALUES (?1, ?2, ?3, ?4, 0)",
            )?
            .execute(params![thread, add.channel, add.period_ms, seq])?;
            (thread, true)
        }
    };
    // A later attempt of a patch already in this digest replaces its line, so the digest's
    // totals count each patch once, as its latest outcome.
    let replaced = conn
        .prepare_cached(
            "DELETE FROM digest_entries
             WHERE patch_id = ?1 AND channel = ?2 AND thread = ?3 AND attempt < ?4",
        )?
        .execute(params![patch_id, add.channel, thread, attempt])?;
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO digest_entries (patch_id, attempt, channel, thread, entry, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            patch_id,
            attempt,
            add.channel,
            thread,
            add.entry.to_string(),
            now_ms
        ])?;
    if inserted == 0 {
        return Ok(());
    }
    if replaced == 0 {
        conn.prepare_cached("UPDATE digests SET entries = entries + 1 WHERE thread = ?1")?
            .execute(params![thread])?;
    }
    let entries = digest_entries(conn, &thread)?;
    let body = render(&entries, add.period_ms);
    let kind = if fresh {
        Kind::Post
    } else {
        conn.prepare_cached(
            "DELETE FROM outbox WHERE thread = ?1 AND state = 'pending' AND kind = 'update'",
        )?
        .execute(params![thread])?;
        Kind::Update
    };
    insert_messages(
        conn,
        &[NewMessage {
            thread,
            channel: add.channel.clone(),
            kind,
            body,
            traceparent: None,
            priority: Priority::Digest,
        }],
        now_ms,
    )
}

/// The entries of digest `thread`, in order.
fn digest_entries(conn: &Connection, thread: &str) -> Result<Vec<Value>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT entry FROM digest_entries WHERE thread = ?1 ORDER BY at_ms, rowid",
    )?;
    let rows = statement.query_map(params![thread], |row| row.get::<_, String>(0))?;
    let mut entries = Vec::new();
    for row in rows {
        entries.push(serde_json::from_str::<Value>(&row?)?);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(thread: &str, kind: Kind, text: &str) -> NewMessage {
        NewMessage {
            thread: thread.to_owned(),
            channel: "#c".to_owned(),
            kind,
            body: json!({ "text": text }),
            traceparent: None,
            priority: Priority::Thread,
        }
    }

    fn texts(ready: &ReadyHeads) -> Vec<Value> {
        ready
            .heads
            .iter()
            .map(|head| head.message.body["text"].clone())
            .collect()
    }

    #[tokio::test]
    async fn ready_heads_are_the_oldest_pending_message_of_each_thread() {
        let store = Store::open(None).unwrap();
        store
            .enqueue(
                vec![
                    message("a", Kind::Post, "a1"),
                    message("b", Kind::Post, "b1"),
                    message("a", Kind::Reply, "a2"),
                ],
                10,
            )
            .await
            .unwrap();
        let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
        assert_eq!(texts(&ready), [json!("a1"), json!("b1")]);
        assert_eq!(ready.next_at_ms, None);
        assert!(ready.heads.iter().all(|head| head.parent.is_none()));
        let limited = store.ready_heads(10, 1, Vec::new()).await.unwrap();
        assert_eq!(texts(&limited), [json!("a1")]);
        let parent = ThreadParent {
            channel: "C1".into(),
            ts: "1.1".into(),
        };
        store
            .settle(vec![
                Outcome::Sent {
                    id: ready.heads[0].message.id,
                    ts: "1.1".into(),
                    parent: Some(("a".into(), parent.clone())),
                },
                Outcome::Dead {
                    id: ready.heads[1].message.id,
                    error: "channel_not_found".into(),
                },
            ])
            .await
            .unwrap();
        let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
        assert_eq!(texts(&ready), [json!("a2")]);
        assert_eq!(ready.heads[0].parent, Some(parent));
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!((counts.pending, counts.sent, counts.dead), (1, 1, 1));
    }

    #[tokio::test]
    async fn a_head_waiting_for_a_retry_holds_its_thread_and_says_when() {
        let store = Store::open(None).unwrap();
        store
            .enqueue(
                vec![
                    message("a", Kind::Post, "a1"),
                    message("a", Kind::Update, "a2"),
                    message("b", Kind::Post, "b1"),
                ],
                10,
            )
            .await
            .unwrap();
        let first = store.ready_heads(10, 8, Vec::new()).await.unwrap();
        store
            .settle(vec![Outcome::Retry {
                id: first.heads[0].message.id,
                next_at_ms: 500,
                error: "http 500".into(),
            }])
            .await
            .unwrap();
        let ready = store.ready_heads(20, 8, Vec::new()).await.unwrap();
        assert_eq!(texts(&ready), [json!("b1")]);
        assert_eq!(ready.next_at_ms, Some(500));
        let skipped = store
            .ready_heads(20, 8, vec!["#c".to_owned()])
            .await
            .unwrap();
        assert!(skipped.heads.is_empty());
        let due = store.ready_heads(500, 8, Vec::new()).await.unwrap();
        assert_eq!(texts(&due), [json!("a1"), json!("b1")]);
        assert_eq!(due.heads[0].message.tries, 1);
    }

    #[tokio::test]
    async fn notifications_and_alert_events_are_accepted_once() {
        let store = Store::open(None).unwrap();
        let batch = vec![message("patch/p", Kind::Post, "p")];
        assert!(
            store
                .accept_notification("p", 1, 1, batch.clone())
                .await
                .unwrap()
        );
        assert!(!store.accept_notification("p", 1, 2, batch).await.unwrap());
        assert_eq!(store.all_messages().await.unwrap().len(), 1);
        assert!(store.accept_alert_event("k", false, 5).await.unwrap());
        assert!(!store.accept_alert_event("k", false, 5).await.unwrap());
        assert!(store.accept_alert_event("k", true, 5).await.unwrap());
    }

    #[tokio::test]
    async fn a_later_failure_goes_first_but_never_overtakes_its_own_thread() {
        let store = Store::open(None).unwrap();
        let with = |thread: &str, kind, text: &str, priority| NewMessage {
            priority,
            ..message(thread, kind, text)
        };
        store
            .enqueue(
                vec![
                    with("a", Kind::Post, "a1", Priority::Thread),
                    with("b", Kind::Post, "b1", Priority::Digest),
                    with("a", Kind::Reply, "a2 failure", Priority::Failure),
                    with("c", Kind::Post, "c1 failure", Priority::Failure),
                ],
                10,
            )
            .await
            .unwrap();
        let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
        assert_eq!(
            texts(&ready),
            [json!("c1 failure"), json!("a1"), json!("b1")],
            "the failure stored last goes first; a2 waits behind a1 in its thread"
        );
        let first = store.ready_heads(10, 1, Vec::new()).await.unwrap();
        assert_eq!(texts(&first), [json!("c1 failure")]);
        store
            .settle(vec![
                Outcome::Sent {
                    id: first.heads[0].message.id,
                    ts: "1.1".into(),
                    parent: None,
                },
                Outcome::Sent {
                    id: ready.heads[1].message.id,
                    ts: "1.2".into(),
                    parent: None,
                },
            ])
            .await
            .unwrap();
        let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
        assert_eq!(texts(&ready), [json!("a2 failure"), json!("b1")]);
    }
}
