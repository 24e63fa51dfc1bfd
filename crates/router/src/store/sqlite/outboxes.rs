//! The two durable outboxes of the SQLite store: outcomes towards the summarizer and alert
//! changes towards the alerter (raise, resolve, due rows, settling delivery tries).

use rusqlite::{Connection, params};

use super::records::parse_report;
use super::writer::exec;
use crate::store::{AlertRow, Delivery, NewAlert, OutboxRow, StoreError, now_ms};

pub(super) fn raise_tx(
    conn: &Connection,
    rule_now: i64,
    alert: &NewAlert,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let inserted = exec(
        conn,
        "INSERT OR IGNORE INTO alert_state (key, since_ms) VALUES (?1, ?2)",
        params![alert.key, now],
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    let labels = serde_json::to_string(&alert.labels).map_err(|source| StoreError::Corrupt {
        what: "alert labels",
        id: alert.key.clone(),
        source,
    })?;
    exec(conn,
        "INSERT INTO alert_outbox (key, resolved, severity, summary, labels_json, at_ms, next_at_ms)
         VALUES (?1, 0, ?2, ?3, ?4, ?5, ?6)",
        params![alert.key, alert.severity, alert.summary, labels, now, rule_now],
    )?;
    Ok(true)
}

pub(super) fn resolve_tx(
    conn: &Connection,
    rule_now: i64,
    key: &str,
    summary: &str,
) -> Result<bool, StoreError> {
    let removed = exec(conn, "DELETE FROM alert_state WHERE key = ?1", params![key])?;
    if removed == 0 {
        return Ok(false);
    }
    let now = now_ms();
    exec(conn,
        "INSERT INTO alert_outbox (key, resolved, severity, summary, labels_json, at_ms, next_at_ms)
         VALUES (?1, 1, 'info', ?2, '[]', ?3, ?4)",
        params![key, summary, now, rule_now],
    )?;
    Ok(true)
}

/// The body of [`RouterStore::outbox_due`](crate::store::RouterStore::outbox_due), run in the read connection.
pub(super) fn outbox_due(
    conn: &Connection,
    rule_now: i64,
    limit: u32,
) -> Result<Vec<OutboxRow>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, patch_id, attempt, tries, report_json, created_ms FROM outbox
             WHERE delivered_ms IS NULL AND next_at_ms <= ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = statement.query_map(params![rule_now, limit], |row| {
        Ok((
            OutboxRow {
                id: row.get(0)?,
                patch_id: row.get(1)?,
                attempt: row.get(2)?,
                tries: row.get(3)?,
                report: None,
                created_ms: row.get(5)?,
            },
            row.get::<_, Option<String>>(4)?,
        ))
    })?;
    let mut due = Vec::new();
    for row in rows {
        let (mut outbox, json) = row?;
        if let Some(json) = json {
            outbox.report = Some(parse_report(&outbox.patch_id, &json)?);
        }
        due.push(outbox);
    }
    Ok(due)
}

/// The body of [`RouterStore::alerts_due`](crate::store::RouterStore::alerts_due), run in the read connection.
pub(super) fn alerts_due(
    conn: &Connection,
    rule_now: i64,
    limit: u32,
) -> Result<Vec<AlertRow>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT id, key, resolved, severity, summary, labels_json, at_ms, tries, next_at_ms
             FROM alert_outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT ?1",
    )?;
    let now = rule_now;
    let mut rows = statement.query(params![limit])?;
    let mut due = Vec::new();
    while let Some(row) = rows.next()? {
        let next_at: i64 = row.get(8)?;
        if next_at > now {
            break;
        }
        let key: String = row.get(1)?;
        let labels: String = row.get(5)?;
        let labels = serde_json::from_str(&labels).map_err(|source| StoreError::Corrupt {
            what: "alert labels",
            id: key.clone(),
            source,
        })?;
        due.push(AlertRow {
            id: row.get(0)?,
            key,
            resolved: row.get::<_, i64>(2)? != 0,
            severity: row.get(3)?,
            summary: row.get(4)?,
            labels,
            at_ms: row.get(6)?,
            tries: row.get(7)?,
        });
    }
    Ok(due)
}

/// The body of [`RouterStore::firing_alerts`](crate::store::RouterStore::firing_alerts), run in the read connection.
pub(super) fn firing_alerts(conn: &Connection) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT key FROM alert_state ORDER BY key")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The body of [`RouterStore::settle`](crate::store::RouterStore::settle), run in one write.
pub(super) fn settle(
    conn: &Connection,
    rule_now: i64,
    table: &str,
    settled: Vec<(i64, Delivery)>,
) -> Result<(), StoreError> {
    let now = now_ms();
    let mut delivered = conn.prepare_cached(&format!(
        "UPDATE {table} SET delivered_ms = ?2 WHERE id = ?1"
    ))?;
    let mut retry = conn.prepare_cached(&format!(
        "UPDATE {table} SET tries = tries + 1, next_at_ms = ?2 WHERE id = ?1"
    ))?;
    for (row_id, delivery) in settled {
        match delivery {
            Delivery::Delivered => delivered.execute(params![row_id, now])?,
            Delivery::RetryIn(delay_ms) => retry.execute(params![row_id, rule_now + delay_ms])?,
        };
    }
    Ok(())
}
