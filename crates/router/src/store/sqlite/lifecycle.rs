//! Transitions that end or restart an attempt on the SQLite store: an outcome queued for the
//! summarizer, a patch ended without an executor, dependents failed along, an interrupted lease
//! requeued or lost, a cancel while queued and a retry.

use ghost_core::{ApplyReport, Status};
use rusqlite::{Connection, OptionalExtension, params};

use super::records::{IN_FLIGHT, event_tx, get_tx, must_get, report_json};
use super::writer::{exec, row};
use crate::store::{LeaseEnded, PatchRecord, StoreError, now_ms};

/// Queues one attempt's outcome for the summarizer (once per (patch, attempt)).
pub(super) fn outbox_tx(
    conn: &Connection,
    rule_now: i64,
    id: &str,
    attempt: u32,
    report: &ApplyReport,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT OR IGNORE INTO outbox (patch_id, attempt, next_at_ms, report_json, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, attempt, rule_now, report_json(id, report)?, now_ms()],
    )?;
    Ok(())
}

pub(super) fn outcome_sent(conn: &Connection, id: &str, attempt: u32) -> rusqlite::Result<bool> {
    row(
        conn,
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE patch_id = ?1 AND attempt = ?2)",
        params![id, attempt],
        |row| row.get(0),
    )
}

/// Ends a patch that never (again) reaches an executor: terminal status, report, event and
/// outbox row in one go.
pub(super) fn end_tx(
    conn: &Connection,
    rule_now: i64,
    id: &str,
    status: Status,
    actor: &str,
    error: &str,
) -> Result<(), StoreError> {
    let record = must_get(conn, id)?;
    // An outcome for this attempt number was already recorded (an interrupted attempt, or
    // the attempt before a retry): this ending is an attempt of its own that never started.
    let attempt = if record.attempt > 0 && outcome_sent(conn, id, record.attempt)? {
        record.attempt + 1
    } else {
        record.attempt
    };
    let report = ApplyReport::ended(status, error);
    exec(
        conn,
        "UPDATE patches SET status = ?2, error = ?3, report_json = ?4, updated_ms = ?5,
                fencing_token = 0, leased_to = '', lease_deadline_ms = 0, attempt = ?6
         WHERE id = ?1",
        params![
            id,
            status.as_str(),
            error,
            report_json(id, &report)?,
            now_ms(),
            attempt
        ],
    )?;
    event_tx(conn, id, status, actor, attempt, error)?;
    outbox_tx(conn, rule_now, id, attempt, &report)?;
    if status != Status::Succeeded {
        fail_dependents_tx(conn, rule_now, id, status)?;
    }
    Ok(())
}

/// Patches waiting on `id`, which ended `status` without success, fail at once (and so on
/// down the chain): a dependency that will never succeed must not leave them queued forever.
pub(super) fn fail_dependents_tx(
    conn: &Connection,
    rule_now: i64,
    id: &str,
    status: Status,
) -> Result<(), StoreError> {
    let dependents: Vec<String> = conn
        .prepare_cached(
            "SELECT p.id FROM deps d JOIN patches p ON p.id = d.patch_id
             WHERE d.depends_on = ?1 AND p.status = 'queued'",
        )?
        .query_map(params![id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for dependent in dependents {
        end_tx(
            conn,
            rule_now,
            &dependent,
            Status::Failed,
            "router",
            &format!("dependency {id} ended {status}; not run"),
        )?;
    }
    Ok(())
}

/// Ends the in-flight attempt of a patch whose lease is gone: the attempt is recorded as
/// `interrupted` (with an outcome for the summarizer), then the patch is requeued, or ends
/// `lost` when it has used `max_attempts` attempts since it was last (re)submitted.
pub(super) fn interrupt_tx(
    conn: &Connection,
    rule_now: i64,
    id: &str,
    reason: &str,
    max_attempts: u32,
) -> Result<LeaseEnded, StoreError> {
    let record = must_get(conn, id)?;
    let base: u32 = row(
        conn,
        "SELECT attempt_base FROM patches WHERE id = ?1",
        params![id],
        |row| row.get(0),
    )?;
    let now = now_ms();
    let report = ApplyReport::ended(Status::Interrupted, reason);
    exec(
        conn,
        "UPDATE attempts SET status = 'interrupted', finished_ms = ?3, report_json = ?4
         WHERE patch_id = ?1 AND attempt = ?2 AND finished_ms IS NULL",
        params![id, record.attempt, now, report_json(id, &report)?],
    )?;
    event_tx(
        conn,
        id,
        Status::Interrupted,
        "router",
        record.attempt,
        reason,
    )?;
    let ended = LeaseEnded {
        id: id.to_owned(),
        target: record.patch.target.to_string(),
        attempt: record.attempt,
        fencing_token: record.fencing_token,
        owner: record.leased_to.clone(),
        lost: record.attempt.saturating_sub(base) >= max_attempts,
    };
    if ended.lost {
        let error = format!(
            "{reason}; gave up after {} attempts",
            record.attempt.saturating_sub(base)
        );
        let lost = ApplyReport::ended(Status::Lost, error.clone());
        exec(
            conn,
            "UPDATE patches SET status = 'lost', error = ?2, report_json = ?3, updated_ms = ?4,
                    fencing_token = 0, leased_to = '', lease_deadline_ms = 0
             WHERE id = ?1",
            params![id, error, report_json(id, &lost)?, now],
        )?;
        event_tx(conn, id, Status::Lost, "router", record.attempt, &error)?;
        outbox_tx(conn, rule_now, id, record.attempt, &lost)?;
        fail_dependents_tx(conn, rule_now, id, Status::Lost)?;
        return Ok(ended);
    }
    outbox_tx(conn, rule_now, id, record.attempt, &report)?;
    exec(
        conn,
        "UPDATE patches SET status = 'queued', fencing_token = 0, leased_to = '',
                lease_deadline_ms = 0, updated_ms = ?2 WHERE id = ?1",
        params![id, now],
    )?;
    event_tx(
        conn,
        id,
        Status::Queued,
        "router",
        record.attempt,
        "requeued for another attempt",
    )?;
    Ok(ended)
}

/// The body of [`RouterStore::record_interrupted`](crate::store::RouterStore::record_interrupted), run in one write.
pub(super) fn record_interrupted(
    conn: &Connection,
    id: String,
    executor_id: String,
    targets: Vec<String>,
    attempt: u32,
    report: ApplyReport,
) -> Result<bool, StoreError> {
    let Some(record) = get_tx(conn, &id)? else {
        return Ok(false);
    };
    if !targets.contains(&record.patch.target.to_string()) {
        return Ok(false);
    }
    let former: Option<String> = row(
        conn,
        "SELECT executor FROM attempts
             WHERE patch_id = ?1 AND attempt = ?2 AND status = 'interrupted'",
        params![id, attempt],
        |row| row.get(0),
    )
    .optional()?;
    // The owner is `<executor id>#<session>`: the executor may have reconnected since.
    let same_executor = former
        .as_deref()
        .and_then(|owner| owner.rsplit_once('#'))
        .is_some_and(|(former_id, _)| former_id == executor_id);
    if !same_executor {
        return Ok(false);
    }
    let json = report_json(&id, &report)?;
    let updated = exec(
        conn,
        "UPDATE attempts SET report_json = ?3
             WHERE patch_id = ?1 AND attempt = ?2 AND status = 'interrupted'",
        params![id, attempt, json],
    )?;
    if updated == 1 {
        exec(
            conn,
            "UPDATE outbox SET report_json = ?3
                 WHERE patch_id = ?1 AND attempt = ?2 AND delivered_ms IS NULL",
            params![id, attempt, json],
        )?;
        event_tx(
            conn,
            &id,
            Status::Interrupted,
            "executor",
            attempt,
            &report.error,
        )?;
    }
    Ok(updated == 1)
}

/// The body of [`RouterStore::end_leases`](crate::store::RouterStore::end_leases), run in one write.
pub(super) fn end_leases(
    conn: &Connection,
    rule_now: i64,
    owner: Option<String>,
    reason: String,
    max_attempts: u32,
) -> Result<Vec<LeaseEnded>, StoreError> {
    let now = rule_now;
    let ids: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT id FROM patches
                 WHERE status IN {IN_FLIGHT}
                   AND ((?1 IS NOT NULL AND leased_to = ?1)
                     OR (?1 IS NULL AND lease_deadline_ms < ?2))"
        ))?
        .query_map(params![owner, now], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter()
        .map(|id| interrupt_tx(conn, rule_now, id, &reason, max_attempts))
        .collect()
}

/// The body of [`RouterStore::end_all_leases`](crate::store::RouterStore::end_all_leases), run in one write.
pub(super) fn end_all_leases(
    conn: &Connection,
    rule_now: i64,
    reason: String,
    max_attempts: u32,
) -> Result<Vec<LeaseEnded>, StoreError> {
    let ids: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT id FROM patches WHERE status IN {IN_FLIGHT}"
        ))?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter()
        .map(|id| interrupt_tx(conn, rule_now, id, &reason, max_attempts))
        .collect()
}

/// The body of [`RouterStore::cancel_queued`](crate::store::RouterStore::cancel_queued), run in one write.
pub(super) fn cancel_queued(
    conn: &Connection,
    rule_now: i64,
    id: String,
    actor: String,
) -> Result<Option<PatchRecord>, StoreError> {
    let Some(record) = get_tx(conn, &id)? else {
        return Ok(None);
    };
    if record.status != Status::Queued {
        return Ok(Some(record));
    }
    end_tx(
        conn,
        rule_now,
        &id,
        Status::Cancelled,
        &actor,
        &format!("cancelled by {actor} while queued"),
    )?;
    get_tx(conn, &id)
}

/// The body of [`RouterStore::retry`](crate::store::RouterStore::retry), run in one write.
pub(super) fn retry(
    conn: &Connection,
    id: String,
    actor: String,
) -> Result<Option<(PatchRecord, bool)>, StoreError> {
    let Some(record) = get_tx(conn, &id)? else {
        return Ok(None);
    };
    if !record.status.is_terminal() || record.status == Status::Succeeded {
        return Ok(Some((record, false)));
    }
    exec(
        conn,
        "UPDATE patches SET status = 'queued', attempt_base = attempt, error = '',
                    updated_ms = ?2 WHERE id = ?1",
        params![id, now_ms()],
    )?;
    event_tx(
        conn,
        &id,
        Status::Queued,
        &actor,
        record.attempt,
        "retry requested",
    )?;
    Ok(Some((must_get(conn, &id)?, true)))
}
