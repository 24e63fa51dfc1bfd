//! The reads of [`super::PgStore`] (lists, trails, queue figures, stats) and its outboxes:
//! rows are *claimed* (for [`CLAIM_MS`] unless configured) by the replica that sends them, with `FOR UPDATE SKIP
//! LOCKED`, so two replicas never send one row at once and a dead replica's claims run out.

use ghost_core::{ApplyReport, Status};
use sqlx::{PgConnection, Row as _};

use super::patches::{
    COLUMNS, IN_FLIGHT, RULE_MS, parse_report, parse_status, record, sql, u32_of,
};
use crate::store::{
    AlertRow, Delivery, EventRow, Outbox, OutboxBacklog, OutboxRow, PatchRecord, StatsRows,
    StoreError, TargetRow,
};

/// By default, how long a claimed outbox row is left to its replica before another may send it.
pub const CLAIM_MS: i64 = 30_000;

/// Patches newest first, filtered by target and status.
pub async fn list(
    conn: &mut PgConnection,
    target: Option<&str>,
    status: Option<Status>,
    limit: u32,
    offset: u64,
) -> Result<Vec<PatchRecord>, StoreError> {
    sqlx::query(sql(format!(
        "SELECT {COLUMNS} FROM patches
         WHERE ($1::text IS NULL OR target = $1) AND ($2::text IS NULL OR status = $2)
         ORDER BY seq DESC LIMIT $3 OFFSET $4"
    )))
    .bind(target)
    .bind(status.map(Status::as_str))
    .bind(i64::from(limit))
    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(record)
    .collect()
}

/// The audit trail of one patch, oldest first.
pub async fn events(conn: &mut PgConnection, id: &str) -> Result<Vec<EventRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT at_ms, at_us, status, actor, attempt, detail FROM events
         WHERE patch_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let at_ms: i64 = row.try_get(0)?;
            let at_us: i64 = row.try_get(1)?;
            Ok(EventRow {
                at_ms,
                at_us: if at_us > 0 {
                    at_us
                } else {
                    at_ms.saturating_mul(1000)
                },
                status: row.try_get(2)?,
                actor: row.try_get(3)?,
                attempt: u32_of(row.try_get(4)?),
                detail: row.try_get(5)?,
            })
        })
        .collect()
}

fn entry<'a>(
    rows: &'a mut std::collections::BTreeMap<String, TargetRow>,
    target: &str,
) -> &'a mut TargetRow {
    rows.entry(target.to_owned()).or_insert_with(|| TargetRow {
        target: target.to_owned(),
        ..TargetRow::default()
    })
}

/// Every target with patches or a pause flag, with its queue figures.
pub async fn targets(conn: &mut PgConnection) -> Result<Vec<TargetRow>, StoreError> {
    let mut rows = std::collections::BTreeMap::new();
    // The first queued by `seq` and, from that same row, its creation time.
    let counted = sqlx::query(
        "SELECT target, status, COUNT(*), MIN(seq),
                (array_agg(created_ms ORDER BY seq))[1]
         FROM patches GROUP BY target, status",
    )
    .fetch_all(&mut *conn)
    .await?;
    for item in &counted {
        let target: String = item.try_get(0)?;
        let status: String = item.try_get(1)?;
        let row = entry(&mut rows, &target);
        let parsed = parse_status(&target, &status)?;
        let count = u32_of(item.try_get(2)?);
        if parsed == Status::Queued {
            row.queued = count;
            row.oldest_queued_seq = item.try_get(3)?;
            row.oldest_queued_ms = item.try_get(4)?;
        } else if parsed.is_terminal() {
            row.finished.push((status, count));
        }
    }
    let reverts = sqlx::query(
        "SELECT target, COUNT(*), MIN(seq), (array_agg(created_ms ORDER BY seq))[1]
         FROM patches WHERE status = 'queued' AND is_revert GROUP BY target",
    )
    .fetch_all(&mut *conn)
    .await?;
    for item in &reverts {
        let target: String = item.try_get(0)?;
        if let Some(row) = rows.get_mut(&target) {
            row.queued_reverts = u32_of(item.try_get(1)?);
            row.oldest_queued_revert_seq = item.try_get(2)?;
            row.oldest_queued_revert_ms = item.try_get(3)?;
        }
    }
    let running = sqlx::query(sql(format!(
        "SELECT target, id FROM patches WHERE status IN {IN_FLIGHT}"
    )))
    .fetch_all(&mut *conn)
    .await?;
    for item in &running {
        let target: String = item.try_get(0)?;
        if let Some(row) = rows.get_mut(&target) {
            row.running = item.try_get(1)?;
        }
    }
    let paused = sqlx::query("SELECT key, value FROM meta WHERE key LIKE 'paused:%'")
        .fetch_all(&mut *conn)
        .await?;
    for item in &paused {
        let key: String = item.try_get(0)?;
        let value: i64 = item.try_get(1)?;
        entry(&mut rows, key.trim_start_matches("paused:")).paused = value != 0;
    }
    Ok(rows.into_values().collect())
}

const TERMINAL: &str = "('succeeded', 'failed', 'rolled_back', 'cancelled', 'timed_out', \
                        'rejected', 'lost', 'interrupted')";

/// Finished patches per hour and the stage timings of the newest reports (see `store::stats`).
pub async fn stats(
    conn: &mut PgConnection,
    since_ms: i64,
    target: Option<&str>,
) -> Result<StatsRows, StoreError> {
    let hours = sqlx::query(sql(format!(
        "SELECT (updated_ms / 3600000) * 3600000 AS hour, status, COUNT(*) FROM patches
         WHERE updated_ms >= $1 AND ($2::text IS NULL OR target = $2) AND status IN {TERMINAL}
         GROUP BY hour, status ORDER BY hour, status"
    )))
    .bind(since_ms)
    .bind(target)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, u32_of(row.try_get(2)?))))
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let reports = sqlx::query(
        "SELECT id, report_json FROM patches
         WHERE updated_ms >= $1 AND ($2::text IS NULL OR target = $2) AND report_json IS NOT NULL
         ORDER BY updated_ms DESC LIMIT $3",
    )
    .bind(since_ms)
    .bind(target)
    .bind(i64::from(crate::store::stats::MAX_REPORTS))
    .fetch_all(&mut *conn)
    .await?;
    let mut stages = Vec::with_capacity(reports.len());
    for row in &reports {
        let id: String = row.try_get(0)?;
        let json: String = row.try_get(1)?;
        let report: ApplyReport = parse_report(&id, &json)?;
        stages.push(
            report
                .stages
                .into_iter()
                .map(|stage| (stage.stage, stage.duration_ms))
                .collect(),
        );
    }
    Ok(StatsRows { hours, stages })
}

fn table(outbox: Outbox) -> &'static str {
    match outbox {
        Outbox::Outcomes => "outbox",
        Outbox::Alerts => "alert_outbox",
    }
}

/// Each outbox's undelivered rows: how many, and the oldest.
pub async fn outbox_backlog(conn: &mut PgConnection) -> Result<Vec<OutboxBacklog>, StoreError> {
    let mut backlog = Vec::with_capacity(2);
    for (outbox, created) in [(Outbox::Outcomes, "created_ms"), (Outbox::Alerts, "at_ms")] {
        let table = table(outbox);
        let depth: i64 = sqlx::query(sql(format!(
            "SELECT COUNT(*) FROM {table} WHERE delivered_ms IS NULL"
        )))
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
        let oldest = sqlx::query(sql(format!(
            "SELECT id, {created} FROM {table} WHERE delivered_ms IS NULL ORDER BY id LIMIT 1"
        )))
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
        .transpose()?;
        backlog.push(OutboxBacklog {
            outbox,
            depth: u64::try_from(depth).unwrap_or(0),
            oldest,
        });
    }
    Ok(backlog)
}

/// Claims the outcomes due for delivery (none claimed by a live replica) for `claimant`,
/// oldest first.
pub async fn outbox_due(
    conn: &mut PgConnection,
    limit: u32,
    claim_ms: i64,
    claimant: &str,
) -> Result<Vec<OutboxRow>, StoreError> {
    let rows = sqlx::query(sql(format!(
        "UPDATE outbox SET claimed_until_ms = {RULE_MS} + $2, claimed_by = $3
         WHERE id IN (
             SELECT id FROM outbox
             WHERE delivered_ms IS NULL AND next_at_ms <= {RULE_MS}
               AND claimed_until_ms <= {RULE_MS}
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, patch_id, attempt, tries, report_json, created_ms"
    )))
    .bind(i64::from(limit))
    .bind(claim_ms)
    .bind(claimant)
    .fetch_all(&mut *conn)
    .await?;
    let mut due = Vec::with_capacity(rows.len());
    for row in &rows {
        let patch_id: String = row.try_get(1)?;
        let json: Option<String> = row.try_get(4)?;
        due.push(OutboxRow {
            id: row.try_get(0)?,
            report: json
                .map(|json| parse_report(&patch_id, &json))
                .transpose()?,
            patch_id,
            attempt: u32_of(row.try_get(2)?),
            tries: u32_of(row.try_get(3)?),
            created_ms: row.try_get(5)?,
        });
    }
    due.sort_by_key(|row| row.id);
    Ok(due)
}

/// Claims the alert changes due for `claimant`, oldest first, stopping at the first that waits
/// for a retry or is claimed by another replica: one replica at a time sends alerts, in row
/// order.
pub async fn alerts_due(
    conn: &mut PgConnection,
    limit: u32,
    claim_ms: i64,
    claimant: &str,
) -> Result<Vec<AlertRow>, StoreError> {
    let locked: bool = sqlx::query("SELECT pg_try_advisory_xact_lock(7368013)")
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sql(format!(
        "SELECT id, key, resolved, severity, summary, labels_json, at_ms, tries,
                next_at_ms <= {RULE_MS} AND claimed_until_ms <= {RULE_MS}
         FROM alert_outbox WHERE delivered_ms IS NULL ORDER BY id LIMIT $1"
    )))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut due = Vec::new();
    for row in &rows {
        if !row.try_get::<bool, _>(8)? {
            break;
        }
        let key: String = row.try_get(1)?;
        let labels: String = row.try_get(5)?;
        let labels = serde_json::from_str(&labels).map_err(|source| StoreError::Corrupt {
            what: "alert labels",
            id: key.clone(),
            source,
        })?;
        due.push(AlertRow {
            id: row.try_get(0)?,
            key,
            resolved: row.try_get(2)?,
            severity: row.try_get(3)?,
            summary: row.try_get(4)?,
            labels,
            at_ms: row.try_get(6)?,
            tries: u32_of(row.try_get(7)?),
        });
    }
    let ids: Vec<i64> = due.iter().map(|row| row.id).collect();
    sqlx::query(sql(format!(
        "UPDATE alert_outbox SET claimed_until_ms = {RULE_MS} + $2, claimed_by = $3
         WHERE id = ANY($1)"
    )))
    .bind(ids)
    .bind(claim_ms)
    .bind(claimant)
    .execute(&mut *conn)
    .await?;
    Ok(due)
}

/// Drops `claimant`'s claims on rows claimed but not sent (shutdown, order held back), so they
/// may be sent at once rather than when the claims run out. Only claims `claimant` still holds
/// are dropped: a row its claim ran out on may be another replica's now.
pub async fn release(
    conn: &mut PgConnection,
    outbox: Outbox,
    claimant: &str,
    ids: &[i64],
) -> Result<(), StoreError> {
    let table = table(outbox);
    sqlx::query(sql(format!(
        "UPDATE {table} SET claimed_until_ms = 0, claimed_by = ''
         WHERE id = ANY($1) AND claimed_by = $2 AND delivered_ms IS NULL
           AND claimed_until_ms > {RULE_MS}"
    )))
    .bind(ids)
    .bind(claimant)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records what became of `claimant`'s delivery tries, and releases their claims. A delivery
/// is recorded whoever holds the row now (it was sent: never again); a retry only while
/// `claimant` still holds the claim (else the replica that took the row over is sending it).
pub async fn settle(
    conn: &mut PgConnection,
    outbox: Outbox,
    claimant: &str,
    settled: &[(i64, Delivery)],
) -> Result<(), StoreError> {
    let table = table(outbox);
    let now = crate::store::now_ms();
    for (row_id, delivery) in settled {
        match delivery {
            Delivery::Delivered => {
                sqlx::query(sql(format!(
                    "UPDATE {table} SET delivered_ms = $2, claimed_until_ms = 0, claimed_by = ''
                     WHERE id = $1"
                )))
                .bind(row_id)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
            Delivery::RetryIn(delay_ms) => {
                sqlx::query(sql(format!(
                    "UPDATE {table} SET tries = tries + 1, next_at_ms = {RULE_MS} + $2,
                            claimed_until_ms = 0, claimed_by = ''
                     WHERE id = $1 AND claimed_by = $3 AND delivered_ms IS NULL"
                )))
                .bind(row_id)
                .bind(delay_ms)
                .bind(claimant)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(())
}
