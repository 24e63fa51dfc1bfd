//! Outbox inserts and digests on SQLite, inside a caller's transaction.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::store::{DigestAdd, DigestRender, Kind, NewMessage, Priority, StoreError};

/// Stores `messages` for delivery at `now_ms`.
pub(super) fn insert_messages(
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

/// The digest thread that takes `add`'s entry, and whether it was started now: the current
/// one while it holds fewer than `max_entries` and its message stays within Slack's block
/// budget; otherwise a new digest message starts.
fn digest_for(
    conn: &Connection,
    add: &DigestAdd,
    render: &DigestRender,
) -> Result<(String, bool), StoreError> {
    let current: Option<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT thread, seq, entries FROM digests WHERE channel = ?1 AND period_ms = ?2
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![add.channel, add.period_ms], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
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
    Ok(match joined {
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
    })
}

/// Stores one digest entry in the channel's current digest (a new digest message when the
/// period turned or the current one is full) and queues the digest's post or, for a digest
/// already started, one edit replacing any edit of it still pending (so a backlog of edits
/// coalesces into one call).
pub(super) fn add_to_digest(
    conn: &Connection,
    patch_id: &str,
    attempt: u32,
    add: &DigestAdd,
    now_ms: i64,
    render: &DigestRender,
) -> Result<(), StoreError> {
    let (thread, fresh) = digest_for(conn, add, render)?;
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
