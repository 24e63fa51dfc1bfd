//! Outbox inserts and digests on PostgreSQL, inside a caller's transaction.

use serde_json::Value;
use sqlx::Row as _;
use sqlx::postgres::PgConnection;

use crate::store::{Accept, DigestAdd, Kind, NewMessage, Priority, StoreError};

/// The advisory lock every transaction that adds to the outbox takes first (released at its
/// commit), so ids are drawn in commit order across replicas.
const OUTBOX_LOCK: i64 = 7_368_022;

/// Takes the outbox lock for the rest of `conn`'s transaction.
pub(super) async fn lock_outbox(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(OUTBOX_LOCK)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Stores `messages` for delivery at `now_ms` (the caller holds the outbox lock).
pub(super) async fn insert_messages(
    conn: &mut PgConnection,
    messages: &[NewMessage],
    now_ms: i64,
) -> Result<(), StoreError> {
    for message in messages {
        sqlx::query(
            "INSERT INTO outbox (thread, channel, kind, body, next_at_ms, created_ms, traceparent,
                                 priority)
             VALUES ($1, $2, $3, $4, $5, $5, $6, $7)",
        )
        .bind(&message.thread)
        .bind(&message.channel)
        .bind(message.kind.as_str())
        .bind(message.body.to_string())
        .bind(now_ms)
        .bind(message.traceparent.as_deref().unwrap_or_default())
        .bind(message.priority as i64)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The current digest of the channel and period: its thread, seq and entry count.
async fn current_digest(
    conn: &mut PgConnection,
    add: &DigestAdd,
) -> Result<Option<(String, i64, i64)>, StoreError> {
    let row = sqlx::query(
        "SELECT thread, seq, entries FROM digests WHERE channel = $1 AND period_ms = $2
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(&add.channel)
    .bind(add.period_ms)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
}

/// The digest thread that takes the entry: the current one while it holds fewer than
/// `max_entries` and its message stays within Slack's block budget, else a new one (true).
async fn digest_for(
    conn: &mut PgConnection,
    accept: &Accept,
    add: &DigestAdd,
) -> Result<(String, bool), StoreError> {
    let current = current_digest(conn, add).await?;
    if let Some((thread, _, count)) = &current
        && *count < i64::from(add.max_entries)
    {
        let mut entries = digest_entries(conn, thread).await?;
        entries.push(add.entry.clone());
        let blocks = (accept.render)(&entries, add.period_ms)
            .get("blocks")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if blocks <= crate::messages::MAX_BLOCKS {
            return Ok((thread.clone(), false));
        }
    }
    let seq = current.map_or(0, |(_, seq, _)| seq + 1);
    let thread = format!("digest/{}/{}/{seq}", add.channel, add.period_ms);
    sqlx::query(
        "INSERT INTO digests (thread, channel, period_ms, seq, entries) VALUES ($1, $2, $3, $4, 0)",
    )
    .bind(&thread)
    .bind(&add.channel)
    .bind(add.period_ms)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok((thread, true))
}

/// Stores one digest entry in the channel's current digest and queues the digest's post or
/// one edit replacing any pending edit of it, as the SQLite store does (the caller holds the
/// outbox lock, which also keeps two replicas from starting the same digest message).
pub(super) async fn add_to_digest(
    conn: &mut PgConnection,
    accept: &Accept,
    add: &DigestAdd,
) -> Result<(), StoreError> {
    let (thread, fresh) = digest_for(conn, accept, add).await?;
    let attempt = i64::from(accept.attempt);
    // A later attempt of a patch already in this digest replaces its line.
    let replaced = sqlx::query(
        "DELETE FROM digest_entries
         WHERE patch_id = $1 AND channel = $2 AND thread = $3 AND attempt < $4",
    )
    .bind(&accept.patch_id)
    .bind(&add.channel)
    .bind(&thread)
    .bind(attempt)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let inserted = sqlx::query(
        "INSERT INTO digest_entries (patch_id, attempt, channel, thread, entry, at_ms)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&accept.patch_id)
    .bind(attempt)
    .bind(&add.channel)
    .bind(&thread)
    .bind(add.entry.to_string())
    .bind(accept.now_ms)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(());
    }
    if replaced == 0 {
        sqlx::query("UPDATE digests SET entries = entries + 1 WHERE thread = $1")
            .bind(&thread)
            .execute(&mut *conn)
            .await?;
    }
    let entries = digest_entries(conn, &thread).await?;
    let body = (accept.render)(&entries, add.period_ms);
    let kind = if fresh {
        Kind::Post
    } else {
        sqlx::query(
            "DELETE FROM outbox WHERE thread = $1 AND state = 'pending' AND kind = 'update'",
        )
        .bind(&thread)
        .execute(&mut *conn)
        .await?;
        Kind::Update
    };
    let message = NewMessage {
        thread,
        channel: add.channel.clone(),
        kind,
        body,
        traceparent: None,
        priority: Priority::Digest,
    };
    insert_messages(conn, &[message], accept.now_ms).await
}

/// The entries of digest `thread`, in order.
async fn digest_entries(conn: &mut PgConnection, thread: &str) -> Result<Vec<Value>, StoreError> {
    let rows = sqlx::query("SELECT entry FROM digest_entries WHERE thread = $1 ORDER BY at_ms, id")
        .bind(thread)
        .fetch_all(&mut *conn)
        .await?;
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        let entry: String = row.try_get(0)?;
        entries.push(serde_json::from_str::<Value>(&entry)?);
    }
    Ok(entries)
}
