//! The delivery side of the outbox on PostgreSQL: the ready heads of the channels this
//! replica holds the sender lease of, and the settlement of a round.

use std::collections::BTreeSet;

use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgRow};

use super::{CHANNEL_LEASE, DB_NOW, POLL, PgStore, millis, take_lease, u32_of};
use crate::store::{Head, Kind, Message, Outcome, ReadyHeads, StoreError, ThreadParent};

fn head_of(row: &PgRow) -> Result<Head, StoreError> {
    let traceparent: String = row.try_get(7)?;
    let kind: String = row.try_get(3)?;
    let body: String = row.try_get(4)?;
    let parent_channel: Option<String> = row.try_get(8)?;
    let parent_ts: Option<String> = row.try_get(9)?;
    Ok(Head {
        message: Message {
            id: row.try_get(0)?,
            thread: row.try_get(1)?,
            channel: row.try_get(2)?,
            kind: Kind::parse(&kind),
            body: serde_json::from_str(&body)?,
            tries: u32_of(row.try_get(5)?),
            next_at_ms: row.try_get(6)?,
            traceparent: (!traceparent.is_empty()).then_some(traceparent),
        },
        parent: parent_channel
            .zip(parent_ts)
            .map(|(channel, ts)| ThreadParent { channel, ts }),
    })
}

impl PgStore {
    /// Ready heads as on SQLite, restricted to the channels whose sender lease this store
    /// holds or takes now (see the module doc).
    pub async fn ready_heads(
        &self,
        now_ms: i64,
        limit: usize,
        skip_channels: Vec<String>,
    ) -> Result<ReadyHeads, StoreError> {
        let limit_rows = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT o.id, o.thread, o.channel, o.kind, o.body, o.tries, o.next_at_ms,
                    o.traceparent, t.channel, t.ts
             FROM outbox o
             LEFT JOIN threads t ON t.thread = o.thread
             WHERE o.state = 'pending' AND o.next_at_ms <= $1
               AND NOT (o.channel = ANY($3))
               AND NOT EXISTS (
                   SELECT 1 FROM outbox i
                   WHERE i.state = 'pending' AND i.thread = o.thread AND i.id < o.id)
               AND NOT EXISTS (
                   SELECT 1 FROM leases l
                   WHERE l.name = 'channel/' || o.channel AND l.holder <> $4
                     AND l.until_ms > ({DB_NOW}))
             ORDER BY o.priority, o.id
             LIMIT $2"
        )))
        .bind(now_ms)
        .bind(limit_rows)
        .bind(&skip_channels)
        .bind(&*self.holder)
        .fetch_all(&mut *tx)
        .await?;
        let mut heads = rows.iter().map(head_of).collect::<Result<Vec<_>, _>>()?;
        let channels: BTreeSet<String> = heads
            .iter()
            .map(|head| head.message.channel.clone())
            .collect();
        let mut held = BTreeSet::new();
        for channel in channels {
            let name = format!("channel/{channel}");
            if take_lease(&mut tx, &name, &self.holder, CHANNEL_LEASE).await? {
                held.insert(channel);
            }
        }
        heads.retain(|head| held.contains(&head.message.channel));
        let poll_at = now_ms.saturating_add(millis(POLL));
        let next_at_ms = if rows.len() < limit {
            let next: Option<i64> = sqlx::query(
                "SELECT MIN(next_at_ms) FROM outbox WHERE state = 'pending' AND next_at_ms > $1",
            )
            .bind(now_ms)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            Some(next.map_or(poll_at, |next| next.min(poll_at)))
        } else {
            None
        };
        tx.commit().await?;
        Ok(ReadyHeads { heads, next_at_ms })
    }

    /// Records the results of one delivery round in one transaction.
    pub async fn settle(&self, outcomes: Vec<Outcome>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for outcome in outcomes {
            settle_one(&mut tx, outcome).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Records one delivery outcome inside `conn`'s transaction.
async fn settle_one(conn: &mut PgConnection, outcome: Outcome) -> Result<(), StoreError> {
    match outcome {
        Outcome::Sent { id, ts, parent } => {
            sqlx::query(
                "UPDATE outbox SET state = 'sent', tries = tries + 1, ts = $2, last_error = ''
                 WHERE id = $1",
            )
            .bind(id)
            .bind(ts)
            .execute(&mut *conn)
            .await?;
            if let Some((thread, parent)) = parent
                && !parent.ts.is_empty()
            {
                sqlx::query(
                    "INSERT INTO threads (thread, channel, ts) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(thread)
                .bind(parent.channel)
                .bind(parent.ts)
                .execute(&mut *conn)
                .await?;
            }
        }
        Outcome::Retry {
            id,
            next_at_ms,
            error,
        } => {
            sqlx::query(
                "UPDATE outbox SET tries = tries + 1, next_at_ms = $2, last_error = $3
                 WHERE id = $1",
            )
            .bind(id)
            .bind(next_at_ms)
            .bind(error)
            .execute(&mut *conn)
            .await?;
        }
        Outcome::Repost { id, thread, error } => {
            sqlx::query("DELETE FROM threads WHERE thread = $1")
                .bind(thread)
                .execute(&mut *conn)
                .await?;
            sqlx::query(
                "UPDATE outbox SET kind = 'post', tries = 0, last_error = $2
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(error)
            .execute(&mut *conn)
            .await?;
        }
        Outcome::Dead { id, error } => {
            sqlx::query(
                "UPDATE outbox SET state = 'dead', tries = tries + 1, last_error = $2
                 WHERE id = $1",
            )
            .bind(id)
            .bind(error)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}
