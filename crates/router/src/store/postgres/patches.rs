//! The statements behind the core of [`super::PgStore`]: patches, their events and attempts,
//! dependencies, and the rows each transaction leaves in the outboxes. Every function runs on
//! the caller's transaction and answers as its SQLite twin in `store::sqlite` does.

use ghost_core::{ApplyReport, Patch, Status};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row as _};

use crate::store::{LeaseEnded, NewAlert, PatchRecord, StoreError, now_ms, now_us};

/// Rule time in Unix ms, as SQL: lease deadlines, outbox due times and claims are written and
/// compared with it. It is the database server's clock, so replicas on several machines share
/// one clock, unless the store was given a clock of its own ([`super::PgStore::with_clock`]):
/// then each transaction pins that clock's reading in the setting [`RULE_MS_SETTING`] first
/// (tests move rule time by hand).
pub const RULE_MS: &str = "COALESCE(NULLIF(current_setting('ghost.rule_ms', true), '')::bigint, \
                           (extract(epoch from clock_timestamp()) * 1000)::bigint)";

/// The transaction-local setting that overrides the server's clock in [`RULE_MS`].
pub const RULE_MS_SETTING: &str = "ghost.rule_ms";

/// The columns [`record`] reads, in its order.
pub const COLUMNS: &str = "id, patch_json, content_hash, status, attempt, traceparent, error, \
                           report_json, fencing_token, leased_to, created_ms, updated_ms, \
                           warnings_json, key_name";

/// The in-flight statuses.
pub const IN_FLIGHT: &str = "('leased', 'applying', 'validating')";

/// A query built from constant pieces (column lists, status sets): never caller text.
pub fn sql(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

/// A stored count or attempt as the `u32` the model uses.
pub fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

fn corrupt(what: &'static str, id: &str, source: serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        what,
        id: id.to_owned(),
        source,
    }
}

/// A stored status.
pub fn parse_status(id: &str, raw: &str) -> Result<Status, StoreError> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned()))
        .map_err(|source| corrupt("status", id, source))
}

/// A stored report.
pub fn parse_report(id: &str, json: &str) -> Result<ApplyReport, StoreError> {
    serde_json::from_str(json).map_err(|source| corrupt("report", id, source))
}

/// A report as stored.
pub fn report_json(id: &str, report: &ApplyReport) -> Result<String, StoreError> {
    serde_json::to_string(report).map_err(|source| corrupt("report", id, source))
}

/// One patch from a row of [`COLUMNS`].
pub fn record(row: &PgRow) -> Result<PatchRecord, StoreError> {
    let id: String = row.try_get(0)?;
    let patch_json: String = row.try_get(1)?;
    let patch: Patch =
        serde_json::from_str(&patch_json).map_err(|source| corrupt("patch", &id, source))?;
    let status: String = row.try_get(3)?;
    let report: Option<String> = row.try_get(7)?;
    let warnings: String = row.try_get(12)?;
    Ok(PatchRecord {
        patch,
        content_hash: row.try_get(2)?,
        status: parse_status(&id, &status)?,
        attempt: u32_of(row.try_get(4)?),
        traceparent: row.try_get(5)?,
        error: row.try_get(6)?,
        report: report.map(|json| parse_report(&id, &json)).transpose()?,
        fencing_token: u64::try_from(row.try_get::<i64, _>(8)?).unwrap_or(0),
        leased_to: row.try_get(9)?,
        created_ms: row.try_get(10)?,
        updated_ms: row.try_get(11)?,
        warnings: serde_json::from_str(&warnings)
            .map_err(|source| corrupt("warnings", &id, source))?,
        key_name: row.try_get(13)?,
    })
}

/// One patch, read on `conn` (`FOR UPDATE` when `lock`: the caller changes it).
pub async fn get(
    conn: &mut PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<PatchRecord>, StoreError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(sql(format!(
        "SELECT {COLUMNS} FROM patches WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(record).transpose()
}

/// One patch that must exist (read in the transaction that changed it).
pub async fn must_get(conn: &mut PgConnection, id: &str) -> Result<PatchRecord, StoreError> {
    get(conn, id, false)
        .await?
        .ok_or(StoreError::Postgres(sqlx::Error::RowNotFound))
}

/// Appends to a patch's audit trail.
pub async fn event(
    conn: &mut PgConnection,
    id: &str,
    status: Status,
    actor: &str,
    attempt: u32,
    detail: &str,
) -> Result<(), StoreError> {
    let at_us = now_us();
    sqlx::query(
        "INSERT INTO events (patch_id, at_ms, at_us, status, actor, attempt, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(at_us.div_euclid(1000))
    .bind(at_us)
    .bind(status.as_str())
    .bind(actor)
    .bind(i64::from(attempt))
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Queues one attempt's outcome for the summarizer (once per (patch, attempt)).
pub async fn outbox(
    conn: &mut PgConnection,
    id: &str,
    attempt: u32,
    report: &ApplyReport,
) -> Result<(), StoreError> {
    sqlx::query(sql(format!(
        "INSERT INTO outbox (patch_id, attempt, next_at_ms, report_json, created_ms)
         VALUES ($1, $2, {RULE_MS}, $3, $4) ON CONFLICT DO NOTHING"
    )))
    .bind(id)
    .bind(i64::from(attempt))
    .bind(report_json(id, report)?)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn outcome_sent(conn: &mut PgConnection, id: &str, attempt: u32) -> Result<bool, StoreError> {
    Ok(
        sqlx::query("SELECT EXISTS (SELECT 1 FROM outbox WHERE patch_id = $1 AND attempt = $2)")
            .bind(id)
            .bind(i64::from(attempt))
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?,
    )
}

/// Ends a patch that never (again) reaches an executor: terminal status, report, event and
/// outbox row in one go; its queued dependents fail with it. Returns every patch it ended.
pub async fn end(
    conn: &mut PgConnection,
    id: &str,
    status: Status,
    actor: &str,
    error: &str,
) -> Result<Vec<String>, StoreError> {
    let mut ended = Vec::new();
    let mut pending = vec![(id.to_owned(), status, actor.to_owned(), error.to_owned())];
    while let Some((id, status, actor, error)) = pending.pop() {
        end_one(conn, &id, status, &actor, &error).await?;
        ended.push(id.clone());
        if status == Status::Succeeded {
            continue;
        }
        for dependent in queued_dependents(conn, &id).await? {
            let why = format!("dependency {id} ended {status}; not run");
            pending.push((dependent, Status::Failed, "router".to_owned(), why));
        }
    }
    Ok(ended)
}

async fn end_one(
    conn: &mut PgConnection,
    id: &str,
    status: Status,
    actor: &str,
    error: &str,
) -> Result<(), StoreError> {
    let record = must_get(conn, id).await?;
    // An outcome for this attempt number was already recorded (an interrupted attempt, or the
    // attempt before a retry): this ending is an attempt of its own that never started.
    let attempt = if record.attempt > 0 && outcome_sent(conn, id, record.attempt).await? {
        record.attempt + 1
    } else {
        record.attempt
    };
    let report = ApplyReport::ended(status, error);
    sqlx::query(
        "UPDATE patches SET status = $2, error = $3, report_json = $4, updated_ms = $5,
                fencing_token = 0, leased_to = '', lease_deadline_ms = 0, attempt = $6
         WHERE id = $1",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(error)
    .bind(report_json(id, &report)?)
    .bind(now_ms())
    .bind(i64::from(attempt))
    .execute(&mut *conn)
    .await?;
    event(conn, id, status, actor, attempt, error).await?;
    outbox(conn, id, attempt, &report).await
}

/// The queued patches waiting on `id`, locked.
pub async fn queued_dependents(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query(
        "SELECT p.id FROM deps d JOIN patches p ON p.id = d.patch_id
         WHERE d.depends_on = $1 AND p.status = 'queued' ORDER BY p.id FOR UPDATE OF p",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?)
}

/// Ends the in-flight attempt of a patch whose lease is gone: the attempt is recorded as
/// `interrupted` (with an outcome for the summarizer), then the patch is requeued, or ends
/// `lost` when it has used `max_attempts` attempts since it was last (re)submitted. `None`
/// when the patch is no longer in flight (another replica ended it first).
pub async fn interrupt(
    conn: &mut PgConnection,
    id: &str,
    reason: &str,
    max_attempts: u32,
) -> Result<Option<LeaseEnded>, StoreError> {
    let Some(record) = get(conn, id, true).await? else {
        return Ok(None);
    };
    if !matches!(
        record.status,
        Status::Leased | Status::Applying | Status::Validating
    ) {
        return Ok(None);
    }
    let base: i64 = sqlx::query("SELECT attempt_base FROM patches WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    let used = record.attempt.saturating_sub(u32_of(base));
    let now = now_ms();
    let report = ApplyReport::ended(Status::Interrupted, reason);
    sqlx::query(
        "UPDATE attempts SET status = 'interrupted', finished_ms = $3, report_json = $4
         WHERE patch_id = $1 AND attempt = $2 AND finished_ms IS NULL",
    )
    .bind(id)
    .bind(i64::from(record.attempt))
    .bind(now)
    .bind(report_json(id, &report)?)
    .execute(&mut *conn)
    .await?;
    event(
        conn,
        id,
        Status::Interrupted,
        "router",
        record.attempt,
        reason,
    )
    .await?;
    let ended = LeaseEnded {
        id: id.to_owned(),
        target: record.patch.target.to_string(),
        attempt: record.attempt,
        fencing_token: record.fencing_token,
        owner: record.leased_to.clone(),
        lost: used >= max_attempts,
    };
    if ended.lost {
        lose(conn, &record, reason, used).await?;
        return Ok(Some(ended));
    }
    outbox(conn, id, record.attempt, &report).await?;
    sqlx::query(
        "UPDATE patches SET status = 'queued', fencing_token = 0, leased_to = '',
                lease_deadline_ms = 0, updated_ms = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let again = "requeued for another attempt";
    event(conn, id, Status::Queued, "router", record.attempt, again).await?;
    Ok(Some(ended))
}

/// Ends an interrupted patch `lost` after `used` attempts; its dependents fail.
async fn lose(
    conn: &mut PgConnection,
    record: &PatchRecord,
    reason: &str,
    used: u32,
) -> Result<(), StoreError> {
    let id = record.patch.id.as_str();
    let error = format!("{reason}; gave up after {used} attempts");
    let lost = ApplyReport::ended(Status::Lost, error.clone());
    sqlx::query(
        "UPDATE patches SET status = 'lost', error = $2, report_json = $3, updated_ms = $4,
                fencing_token = 0, leased_to = '', lease_deadline_ms = 0
         WHERE id = $1",
    )
    .bind(id)
    .bind(&error)
    .bind(report_json(id, &lost)?)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    event(conn, id, Status::Lost, "router", record.attempt, &error).await?;
    outbox(conn, id, record.attempt, &lost).await?;
    for dependent in queued_dependents(conn, id).await? {
        let why = format!("dependency {id} ended lost; not run");
        end(conn, &dependent, Status::Failed, "router", &why).await?;
    }
    Ok(())
}

/// Raises `alert` unless it is firing; true when newly raised.
pub async fn raise(conn: &mut PgConnection, alert: &NewAlert) -> Result<bool, StoreError> {
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO alert_state (key, since_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&alert.key)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    let labels = serde_json::to_string(&alert.labels)
        .map_err(|source| corrupt("alert labels", &alert.key, source))?;
    sqlx::query(sql(format!(
        "INSERT INTO alert_outbox (key, resolved, severity, summary, labels_json, at_ms, next_at_ms)
         VALUES ($1, FALSE, $2, $3, $4, $5, {RULE_MS})"
    )))
    .bind(&alert.key)
    .bind(alert.severity)
    .bind(&alert.summary)
    .bind(labels)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Resolves the alert `key` if it is firing; true when it was.
pub async fn resolve(
    conn: &mut PgConnection,
    key: &str,
    summary: &str,
) -> Result<bool, StoreError> {
    let removed = sqlx::query("DELETE FROM alert_state WHERE key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if removed == 0 {
        return Ok(false);
    }
    sqlx::query(sql(format!(
        "INSERT INTO alert_outbox (key, resolved, severity, summary, labels_json, at_ms, next_at_ms)
         VALUES ($1, TRUE, 'info', $2, '[]', $3, {RULE_MS})"
    )))
    .bind(key)
    .bind(summary)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// `owner` holds the live lease `token` of `record` (see the SQLite store's twin).
pub fn holds_lease(record: &PatchRecord, owner: &str, token: u64) -> bool {
    token != 0
        && record.fencing_token == token
        && !owner.is_empty()
        && record.leased_to == owner
        && matches!(
            record.status,
            Status::Leased | Status::Applying | Status::Validating
        )
}
