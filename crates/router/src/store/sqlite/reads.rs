//! Reads of the SQLite store on its read connection: patches, their events, per-target queue
//! figures and the outboxes' backlog.

use ghost_core::Status;
use rusqlite::{Connection, OptionalExtension, params};

use super::records::{COLUMNS, IN_FLIGHT, parse_status, read_record};
use crate::store::{EventRow, Outbox, OutboxBacklog, PatchRecord, StoreError, TargetRow};

/// The body of [`RouterStore::list`](crate::store::RouterStore::list), run in the read connection.
pub(super) fn list(
    conn: &Connection,
    target: Option<String>,
    status: Option<Status>,
    limit: u32,
    offset: u64,
) -> Result<Vec<PatchRecord>, StoreError> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM patches
             WHERE (?1 IS NULL OR target = ?1) AND (?2 IS NULL OR status = ?2)
             ORDER BY seq DESC LIMIT ?3 OFFSET ?4"
    ))?;
    let rows = statement.query_map(
        params![
            target,
            status.map(Status::as_str),
            limit,
            i64::try_from(offset).unwrap_or(i64::MAX)
        ],
        read_record,
    )?;
    let mut records = Vec::new();
    for raw in rows {
        records.push(raw?.decode()?);
    }
    Ok(records)
}

/// The body of [`RouterStore::events`](crate::store::RouterStore::events), run in the read connection.
pub(super) fn events(conn: &Connection, id: String) -> Result<Vec<EventRow>, StoreError> {
    let mut statement = conn.prepare_cached(
            "SELECT at_ms, at_us, status, actor, attempt, detail FROM events WHERE patch_id = ?1 ORDER BY id",
        )?;
    let rows = statement.query_map(params![id], |row| {
        let at_ms: i64 = row.get(0)?;
        let at_us: i64 = row.get(1)?;
        Ok(EventRow {
            at_ms,
            at_us: if at_us > 0 {
                at_us
            } else {
                at_ms.saturating_mul(1000)
            },
            status: row.get(2)?,
            actor: row.get(3)?,
            attempt: row.get(4)?,
            detail: row.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// The body of [`RouterStore::targets`](crate::store::RouterStore::targets), run in the read connection.
pub(super) fn targets(conn: &Connection) -> Result<Vec<TargetRow>, StoreError> {
    let mut rows: std::collections::BTreeMap<String, TargetRow> = Default::default();
    let mut counts = conn.prepare_cached(
            // The first queued by `seq` (no clock moves it) and, from that same row (SQLite
            // takes bare columns from the MIN row), its creation time.
            "SELECT target, status, COUNT(*), MIN(seq), created_ms FROM patches GROUP BY target, status",
        )?;
    let counted = counts.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, u32>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, i64>(4)?,
        ))
    })?;
    for item in counted {
        let (target, status, count, seq, oldest) = item?;
        let row = rows.entry(target.clone()).or_insert_with(|| TargetRow {
            target,
            ..TargetRow::default()
        });
        let parsed = parse_status(&row.target, &status)?;
        if parsed == Status::Queued {
            row.queued = count;
            row.oldest_queued_ms = oldest;
            row.oldest_queued_seq = seq;
        } else if parsed.is_terminal() {
            row.finished.push((status, count));
        }
    }
    let mut reverts = conn.prepare_cached(
        "SELECT target, COUNT(*), MIN(seq), created_ms FROM patches
             WHERE status = 'queued' AND json_extract(patch_json, '$.revert') IS NOT NULL
             GROUP BY target",
    )?;
    for item in reverts.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, u32>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
        ))
    })? {
        let (target, count, seq, oldest) = item?;
        if let Some(row) = rows.get_mut(&target) {
            row.queued_reverts = count;
            row.oldest_queued_revert_ms = oldest;
            row.oldest_queued_revert_seq = seq;
        }
    }
    let mut running = conn.prepare_cached(&format!(
        "SELECT target, id FROM patches WHERE status IN {IN_FLIGHT}"
    ))?;
    for item in running.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })? {
        let (target, id) = item?;
        if let Some(row) = rows.get_mut(&target) {
            row.running = id;
        }
    }
    let mut paused =
        conn.prepare_cached("SELECT key, value FROM meta WHERE key LIKE 'paused:%'")?;
    for item in paused.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })? {
        let (key, value) = item?;
        let target = key.trim_start_matches("paused:").to_owned();
        let row = rows.entry(target.clone()).or_insert_with(|| TargetRow {
            target,
            ..TargetRow::default()
        });
        row.paused = value != 0;
    }
    Ok(rows.into_values().collect())
}

/// The body of [`RouterStore::outbox_backlog`](crate::store::RouterStore::outbox_backlog), run in the read connection.
pub(super) fn outbox_backlog(conn: &Connection) -> Result<Vec<OutboxBacklog>, StoreError> {
    let mut backlog = Vec::with_capacity(2);
    for (outbox, count, oldest) in [
        (
            Outbox::Outcomes,
            "SELECT COUNT(*) FROM outbox WHERE delivered_ms IS NULL",
            "SELECT id, created_ms FROM outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT 1",
        ),
        (
            Outbox::Alerts,
            "SELECT COUNT(*) FROM alert_outbox WHERE delivered_ms IS NULL",
            "SELECT id, at_ms FROM alert_outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT 1",
        ),
    ] {
        let depth: i64 = conn
            .prepare_cached(count)?
            .query_row([], |row| row.get(0))?;
        let oldest = conn
            .prepare_cached(oldest)?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        backlog.push(OutboxBacklog {
            outbox,
            depth: u64::try_from(depth).unwrap_or(0),
            oldest,
        });
    }
    Ok(backlog)
}
