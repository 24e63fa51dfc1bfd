//! [`SqliteStore`]: the alerter's tables in one SQLite file (WAL, `synchronous=FULL`), or in
//! memory when no `data_dir` is set. Every method runs one transaction on a blocking thread.
//! One process owns the file, so leases are always held.

mod digest;
mod records;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use self::digest::{add_to_digest, insert_messages};
use super::migrations::{self, Dialect};
use super::{
    Accept, Head, Kind, Message, NewMessage, OutboxCounts, Outcome, Priority, ReadyHeads,
    StoreError, ThreadParent,
};

/// The SQLite backend. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// The database file; `None` in memory.
    path: Option<Arc<PathBuf>>,
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

/// Whether a thread has any message (`?1`: the thread); through `outbox_thread`, as are the
/// next two (a scan of the outbox per accepted outcome made each cost more than the last).
pub(super) const THREAD_STARTED: &str = "SELECT id FROM outbox WHERE thread = ?1 LIMIT 1";
/// The channel of a thread's first message (`?1`: the thread).
pub(super) const THREAD_CHANNEL: &str =
    "SELECT channel FROM outbox WHERE thread = ?1 ORDER BY id LIMIT 1";
/// The copies of a thread in other channels: the names from `?1` (`<thread>@`) up to, not
/// including, `?2` (`<thread>A`; 'A' follows '@'), which are exactly those starting `<thread>@`.
pub(super) const THREAD_COPIES: &str = "SELECT thread, channel FROM outbox
     WHERE thread >= ?1 AND thread < ?2
     GROUP BY thread ORDER BY MIN(id)";
/// A channel's pending messages (`?1`: the channel), through `outbox_channel`.
pub(super) const PENDING_IN: &str =
    "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND channel = ?1";

/// Applies the migrations this file lacks, each in its own transaction. A file from before
/// versioning (tables, no `schema_migrations`) is adopted as version 1: its tables are created
/// `IF NOT EXISTS` (so they stay as they are) and the `priority` column older files lack is
/// added.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute_batch(migrations::TABLE)?;
    let current: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get(0)
        })?;
    for migration in migrations::pending(current.unwrap_or(0))? {
        let tx = conn.transaction()?;
        tx.execute_batch(migration.sql(Dialect::Sqlite))?;
        if migration.version == 1 {
            add_priority(&tx)?;
        }
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
            params![migration.version, migration.name],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Adds what files from before the outbox's priorities lack: the `priority` column and its
/// index.
fn add_priority(conn: &Connection) -> Result<(), StoreError> {
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

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, or an in-memory one for `None`,
    /// and migrates it.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.map(|path| Arc::new(path.to_owned())),
        })
    }

    /// One process owns the file: every lease is held.
    pub async fn hold_lease(
        &self,
        _name: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Nothing to give up.
    pub async fn release_leases(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn with_tx<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let tx = guard.transaction()?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await?
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
                .query_row(THREAD_STARTED, params![thread], |row| row.get(0))
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
                .query_row(THREAD_CHANNEL, params![thread], |row| row.get(0))
                .optional()?)
        })
        .await
    }

    /// The copies of `thread` in other channels (threads `<thread>@<channel>`, made by routes
    /// with `continue`), with their channels.
    pub async fn thread_copies(&self, thread: &str) -> Result<Vec<(String, String)>, StoreError> {
        let (from, until) = (format!("{thread}@"), format!("{thread}A"));
        self.with_tx(move |conn| {
            let mut statement = conn.prepare_cached(THREAD_COPIES)?;
            let rows =
                statement.query_map(params![from, until], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Records `Notify(patch_id, attempt)`, stores its messages and digest entries in one
    /// transaction, unless it was recorded before; true when fresh.
    pub(crate) async fn accept_routed(&self, accept: Accept) -> Result<bool, StoreError> {
        self.with_tx(move |conn| {
            let Accept {
                patch_id,
                attempt,
                now_ms,
                messages,
                digests,
                render,
            } = accept;
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
                .prepare_cached(PENDING_IN)?
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
}
