//! The gateways' shared state on PostgreSQL (dashboard sessions, Standard Webhooks
//! deliveries): the same tables, limits and answers as the SQLite store
//! (`store::gateway_state`), each call in one transaction.
//!
//! SQLite runs every write on one writer thread; here several replicas write at once. Starting
//! a session and beginning a delivery are check-then-write (the cap, the row found), so each
//! first takes its table's `SHARE ROW EXCLUSIVE` lock (it conflicts with itself and with other
//! writes, not with reads): of two gateways beginning one delivery, exactly one is told to
//! deliver it, and the caps hold across replicas. Settling and ending are single statements
//! whose conditions (lease, not committed, not expired) decide atomically. Every query is a
//! constant string; every value is a bind.

use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgPool, PgRow};

use super::super::StoreError;
use super::super::gateway_state::{
    AnswerRow, DELIVERY_LEASE_MS, DeliveryBegun, MAX_DELIVERIES, MAX_SESSIONS, SessionRow,
};

/// Serialises session starts (expiry purge, cap, insert) across replicas.
const LOCK_SESSIONS: &str = "LOCK TABLE gateway_sessions IN SHARE ROW EXCLUSIVE MODE";
/// Serialises delivery begins (row found, cap, room made, insert) across replicas.
const LOCK_DELIVERIES: &str = "LOCK TABLE gateway_deliveries IN SHARE ROW EXCLUSIVE MODE";

/// See [`GatewayStateStore::start_session`](super::super::GatewayStateStore::start_session).
pub async fn start_session(
    pool: &PgPool,
    id: Vec<u8>,
    session: SessionRow,
    max: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_SESSIONS).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM gateway_sessions WHERE expires_ms <= $1")
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    let live: i64 = sqlx::query("SELECT COUNT(*) FROM gateway_sessions")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    if live >= max.clamp(1, MAX_SESSIONS) {
        // The purge stands, as on SQLite.
        tx.commit().await?;
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO gateway_sessions (id_sha256, credential_sha256, csrf, created_ms, expires_ms)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id_sha256) DO UPDATE SET credential_sha256 = excluded.credential_sha256,
             csrf = excluded.csrf, created_ms = excluded.created_ms,
             expires_ms = excluded.expires_ms",
    )
    .bind(id)
    .bind(session.credential)
    .bind(session.csrf)
    .bind(now_ms)
    .bind(session.expires_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// See [`GatewayStateStore::session`](super::super::GatewayStateStore::session).
pub async fn session(
    pool: &PgPool,
    id: Vec<u8>,
    now_ms: i64,
) -> Result<Option<SessionRow>, StoreError> {
    let row = sqlx::query(
        "SELECT credential_sha256, csrf, expires_ms FROM gateway_sessions
         WHERE id_sha256 = $1 AND expires_ms > $2",
    )
    .bind(id)
    .bind(now_ms)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(SessionRow {
        credential: row.try_get(0)?,
        csrf: row.try_get(1)?,
        expires_ms: row.try_get(2)?,
    }))
}

/// See [`GatewayStateStore::end_session`](super::super::GatewayStateStore::end_session).
pub async fn end_session(pool: &PgPool, id: Vec<u8>) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM gateway_sessions WHERE id_sha256 = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A stored row of a delivery.
struct DeliveryRow {
    body: Vec<u8>,
    committed: bool,
    until_ms: i64,
    answer: AnswerRow,
}

fn delivery_row(row: &PgRow) -> Result<DeliveryRow, StoreError> {
    let status: i32 = row.try_get(3)?;
    // The column's CHECK keeps it a u16; a failure here is a damaged row, said as such.
    let status = u16::try_from(status).map_err(|err| sqlx::Error::ColumnDecode {
        index: "status".to_owned(),
        source: Box::new(err),
    })?;
    Ok(DeliveryRow {
        body: row.try_get(0)?,
        committed: row.try_get(1)?,
        until_ms: row.try_get(2)?,
        answer: AnswerRow {
            status,
            content_type: row.try_get(4)?,
            location: row.try_get(5)?,
            body: row.try_get(6)?,
        },
    })
}

async fn delivery_count_on(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT COUNT(*) FROM gateway_deliveries")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?)
}

/// See [`GatewayStateStore::begin_delivery`](super::super::GatewayStateStore::begin_delivery).
pub async fn begin_delivery(
    pool: &PgPool,
    sender: String,
    id: String,
    body: Vec<u8>,
    lease: String,
    now_ms: i64,
) -> Result<DeliveryBegun, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK_DELIVERIES).execute(&mut *tx).await?;
    let found = sqlx::query(
        "SELECT body_sha256, committed, until_ms, status, content_type, location, answer
         FROM gateway_deliveries WHERE sender = $1 AND id = $2",
    )
    .bind(&sender)
    .bind(&id)
    .fetch_optional(&mut *tx)
    .await?
    .as_ref()
    .map(delivery_row)
    .transpose()?;
    // A row past its time (an expired lease or keep window) no longer counts.
    if let Some(row) = found.filter(|row| row.until_ms > now_ms) {
        return Ok(match (row.committed, row.body == body) {
            (_, false) => DeliveryBegun::OtherBody,
            (false, true) => DeliveryBegun::InProgress,
            (true, true) => DeliveryBegun::Replay(row.answer),
        });
    }
    if delivery_count_on(&mut tx).await? >= MAX_DELIVERIES && !make_room_on(&mut tx, now_ms).await?
    {
        // The room made (expired rows forgotten) stands, as on SQLite.
        tx.commit().await?;
        return Ok(DeliveryBegun::Full);
    }
    sqlx::query(
        "INSERT INTO gateway_deliveries
             (sender, id, body_sha256, committed, lease, until_ms, at_ms, status, content_type,
              location, answer)
         VALUES ($1, $2, $3, FALSE, $4, $5, $6, 0, '', '', ''::bytea)
         ON CONFLICT (sender, id) DO UPDATE SET body_sha256 = excluded.body_sha256,
             committed = FALSE, lease = excluded.lease, until_ms = excluded.until_ms,
             at_ms = excluded.at_ms, status = 0, content_type = '', location = '',
             answer = ''::bytea",
    )
    .bind(&sender)
    .bind(&id)
    .bind(&body)
    .bind(&lease)
    .bind(now_ms.saturating_add(DELIVERY_LEASE_MS))
    .bind(now_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(DeliveryBegun::Deliver(lease))
}

/// Forgets rows past their time, then the oldest committed ones down to nine tenths of the
/// cap: one scan frees room for many new ids. Deliveries in progress under a live lease are
/// never forgotten. False when no room could be made.
async fn make_room_on(conn: &mut PgConnection, now_ms: i64) -> Result<bool, StoreError> {
    sqlx::query("DELETE FROM gateway_deliveries WHERE until_ms <= $1")
        .bind(now_ms)
        .execute(&mut *conn)
        .await?;
    let rows = delivery_count_on(conn).await?;
    let target = MAX_DELIVERIES / 10 * 9;
    if rows > target {
        sqlx::query(
            "DELETE FROM gateway_deliveries WHERE (sender, id) IN (
                 SELECT sender, id FROM gateway_deliveries WHERE committed
                 ORDER BY at_ms LIMIT $1)",
        )
        .bind(rows - target)
        .execute(&mut *conn)
        .await?;
    }
    Ok(delivery_count_on(conn).await? < MAX_DELIVERIES)
}

/// See [`GatewayStateStore::settle_delivery`](super::super::GatewayStateStore::settle_delivery).
pub async fn settle_delivery(
    pool: &PgPool,
    sender: String,
    id: String,
    lease: String,
    answer: Option<AnswerRow>,
    keep_ms: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let Some(answer) = answer else {
        sqlx::query(
            "DELETE FROM gateway_deliveries
             WHERE sender = $1 AND id = $2 AND lease = $3 AND NOT committed",
        )
        .bind(&sender)
        .bind(&id)
        .bind(&lease)
        .execute(pool)
        .await?;
        return Ok(false);
    };
    let changed = sqlx::query(
        "UPDATE gateway_deliveries
         SET committed = TRUE, until_ms = $4, at_ms = $5, status = $6, content_type = $7,
             location = $8, answer = $9
         WHERE sender = $1 AND id = $2 AND lease = $3 AND NOT committed AND until_ms > $5",
    )
    .bind(&sender)
    .bind(&id)
    .bind(&lease)
    .bind(now_ms.saturating_add(keep_ms))
    .bind(now_ms)
    .bind(i32::from(answer.status))
    .bind(answer.content_type)
    .bind(answer.location)
    .bind(answer.body)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

#[cfg(test)]
mod tests;
