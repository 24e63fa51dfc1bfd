//! The SQLite store's patch queue: submit, lease (one per target, fenced), renew, progress,
//! complete (dependents released or failed), notes and the pause flag of a target.

use ghost_core::{ApplyReport, Patch, Status};
use rusqlite::{Connection, OptionalExtension, params};

use super::lifecycle::{end_tx, fail_dependents_tx, outbox_tx};
use super::records::{
    IN_FLIGHT, event_tx, get_tx, holds_lease, must_get, parse_status, priority_rank, report_json,
};
use super::writer::{exec, row};
use crate::store::{Completed, Inserted, PatchRecord, StoreError, now_ms};

/// The body of [`RouterStore::insert`](crate::store::RouterStore::insert), run in one write.
pub(super) fn insert(
    conn: &Connection,
    rule_now: i64,
    patch: Patch,
    actor: String,
    traceparent: String,
    warnings: Vec<String>,
    key_name: String,
) -> Result<Inserted, StoreError> {
    let id = patch.id.to_string();
    let hash = patch.content_hash();
    if let Some(existing) = get_tx(conn, &id)? {
        return Ok(if existing.content_hash == hash {
            Inserted::Existing(existing)
        } else {
            Inserted::Conflict
        });
    }
    let seq: i64 = row(
        conn,
        "UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value",
        [],
        |row| row.get(0),
    )?;
    let now = now_ms();
    exec(conn,
            "INSERT INTO patches (id, target, priority, content_hash, patch_json, status, traceparent, created_ms, updated_ms, seq, warnings_json, key_name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11)",
            params![
                id,
                patch.target.as_str(),
                priority_rank(&patch),
                hash,
                patch.canonical_json(),
                Status::Queued.as_str(),
                traceparent,
                now,
                seq,
                serde_json::to_string(&warnings).unwrap_or_else(|_| "[]".to_owned()),
                key_name
            ],
        )?;
    event_tx(conn, &id, Status::Received, &actor, 0, "")?;
    event_tx(conn, &id, Status::Queued, "router", 0, "")?;
    let mut failed_dependency = None;
    for dependency in &patch.depends_on {
        exec(
            conn,
            "INSERT OR IGNORE INTO deps (patch_id, depends_on) VALUES (?1, ?2)",
            params![id, dependency.as_str()],
        )?;
        let status: Option<String> = row(
            conn,
            "SELECT status FROM patches WHERE id = ?1",
            params![dependency.as_str()],
            |row| row.get(0),
        )
        .optional()?;
        if let Some(status) = status {
            let status = parse_status(dependency.as_str(), &status)?;
            if status.is_terminal() && status != Status::Succeeded {
                failed_dependency = Some((dependency.to_string(), status));
            }
        }
    }
    if let Some((dependency, status)) = failed_dependency {
        end_tx(
            conn,
            rule_now,
            &id,
            Status::Failed,
            "router",
            &format!("dependency {dependency} ended {status}; not run"),
        )?;
    }
    Ok(Inserted::Created(must_get(conn, &id)?))
}

/// The body of [`RouterStore::lease_next`](crate::store::RouterStore::lease_next), run in one write.
pub(super) fn lease_next(
    conn: &Connection,
    rule_now: i64,
    target: String,
    owner: String,
    lease_ms: i64,
    takes_reverts: bool,
) -> Result<Option<PatchRecord>, StoreError> {
    let paused: bool = row(
        conn,
        "SELECT value FROM meta WHERE key = ?1",
        params![format!("paused:{target}")],
        |row| row.get::<_, i64>(0),
    )
    .optional()?
    .is_some_and(|value| value != 0);
    if paused {
        return Ok(None);
    }
    let next: Option<String> = row(
        conn,
        "SELECT q.id FROM patches q
                 WHERE q.target = ?1 AND q.status = 'queued'
                   AND (?2 OR json_extract(q.patch_json, '$.revert') IS NULL)
                   AND NOT EXISTS (
                     SELECT 1 FROM deps d LEFT JOIN patches p ON p.id = d.depends_on
                     WHERE d.patch_id = q.id AND (p.status IS NULL OR p.status != 'succeeded'))
                 ORDER BY q.priority DESC, q.seq LIMIT 1",
        params![target, takes_reverts],
        |row| row.get(0),
    )
    .optional()?;
    let Some(id) = next else {
        return Ok(None);
    };
    let token: i64 = row(
        conn,
        "UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value",
        [],
        |row| row.get(0),
    )?;
    let now = now_ms();
    exec(
        conn,
        "UPDATE patches SET status = 'leased', attempt = attempt + 1, fencing_token = ?2,
                    leased_to = ?3, lease_deadline_ms = ?4, updated_ms = ?5, error = ''
             WHERE id = ?1",
        params![id, token, owner, rule_now + lease_ms, now],
    )?;
    let record = must_get(conn, &id)?;
    exec(
        conn,
        "INSERT OR REPLACE INTO attempts (patch_id, attempt, status, executor, started_ms)
             VALUES (?1, ?2, 'leased', ?3, ?4)",
        params![id, record.attempt, owner, now],
    )?;
    event_tx(
        conn,
        &id,
        Status::Leased,
        &format!("executor:{owner}"),
        record.attempt,
        &format!("fencing token {token}"),
    )?;
    Ok(Some(record))
}

/// The body of [`RouterStore::renew`](crate::store::RouterStore::renew), run in one write.
pub(super) fn renew(
    conn: &Connection,
    rule_now: i64,
    owner: String,
    tokens: Vec<u64>,
    lease_ms: i64,
) -> Result<(), StoreError> {
    let deadline = rule_now + lease_ms;
    for token in tokens {
        exec(
            conn,
            &format!(
                "UPDATE patches SET lease_deadline_ms = ?3
                     WHERE fencing_token = ?1 AND leased_to = ?2 AND status IN {IN_FLIGHT}"
            ),
            params![i64::try_from(token).unwrap_or(-1), owner, deadline],
        )?;
    }
    Ok(())
}

/// The body of [`RouterStore::progress`](crate::store::RouterStore::progress), run in one write.
pub(super) fn progress(
    conn: &Connection,
    id: String,
    owner: String,
    token: u64,
    status: Status,
    detail: String,
) -> Result<bool, StoreError> {
    let Some(record) = get_tx(conn, &id)? else {
        return Ok(false);
    };
    if !holds_lease(&record, &owner, token) {
        return Ok(false);
    }
    exec(
        conn,
        "UPDATE patches SET status = ?2, updated_ms = ?3 WHERE id = ?1",
        params![id, status.as_str(), now_ms()],
    )?;
    event_tx(
        conn,
        &id,
        status,
        &format!("executor:{}", record.leased_to),
        record.attempt,
        &detail,
    )?;
    Ok(true)
}

/// The body of [`RouterStore::complete`](crate::store::RouterStore::complete), run in one write.
/// The targets of the queued patches that wait on patch `?1`. `CROSS JOIN` keeps `deps` the
/// outer loop (through its `deps_reverse` index): left to itself the planner walked every
/// queued patch through `patches_status` (which also sorts by target) and looked each up in
/// `deps`, a cost growing with the queue on every completion, so at 500 patches/s a router
/// that fell behind fell further behind.
const DEPENDENT_TARGETS: &str =
    "SELECT DISTINCT p.target FROM deps d CROSS JOIN patches p ON p.id = d.patch_id
         WHERE d.depends_on = ?1 AND p.status = 'queued' ORDER BY p.target";

pub(super) fn complete(
    conn: &Connection,
    rule_now: i64,
    id: String,
    owner: String,
    token: u64,
    report: ApplyReport,
) -> Result<Option<Completed>, StoreError> {
    let Some(record) = get_tx(conn, &id)? else {
        return Ok(None);
    };
    if !holds_lease(&record, &owner, token) {
        return Ok(None);
    }
    let json = report_json(&id, &report)?;
    let now = now_ms();
    exec(
        conn,
        "UPDATE patches SET status = ?2, error = ?3, report_json = ?4, updated_ms = ?5,
                    lease_deadline_ms = 0
             WHERE id = ?1",
        params![id, report.status.as_str(), report.error, json, now],
    )?;
    exec(
        conn,
        "UPDATE attempts SET status = ?3, finished_ms = ?4, report_json = ?5
             WHERE patch_id = ?1 AND attempt = ?2",
        params![id, record.attempt, report.status.as_str(), now, json],
    )?;
    event_tx(
        conn,
        &id,
        report.status,
        &format!("executor:{}", record.leased_to),
        record.attempt,
        &report.error,
    )?;
    outbox_tx(conn, rule_now, &id, record.attempt, &report)?;
    let dependent_targets = if report.status == Status::Succeeded {
        let mut statement = conn.prepare_cached(DEPENDENT_TARGETS)?;
        statement
            .query_map(params![id], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?
    } else {
        fail_dependents_tx(conn, rule_now, &id, report.status)?;
        Vec::new()
    };
    Ok(get_tx(conn, &id)?.map(|record| Completed {
        record,
        dependent_targets,
    }))
}

/// The body of [`RouterStore::note`](crate::store::RouterStore::note), run in one write.
pub(super) fn note(
    conn: &Connection,
    id: String,
    actor: String,
    detail: String,
) -> Result<bool, StoreError> {
    let Some(record) = get_tx(conn, &id)? else {
        return Ok(false);
    };
    event_tx(conn, &id, record.status, &actor, record.attempt, &detail)?;
    Ok(true)
}

/// The body of [`RouterStore::set_paused`](crate::store::RouterStore::set_paused), run in one write.
pub(super) fn set_paused(
    conn: &Connection,
    target: String,
    paused: bool,
) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![format!("paused:{target}"), i64::from(paused)],
    )?;
    Ok(())
}

#[cfg(test)]
mod plans {
    use rusqlite::Connection;

    /// SQLite's plan for `sql`, one step per line.
    fn plan(sql: &str) -> String {
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        crate::store::schema::migrate(&mut conn).expect("schema");
        let mut statement = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("plan");
        let steps = statement
            .query_map(["p"], |row| row.get::<_, String>(3))
            .expect("plan rows");
        steps.map(|step| step.expect("step") + "\n").collect()
    }

    #[test]
    fn a_completion_reads_its_dependents_from_deps_not_by_walking_the_queue() {
        let plan = plan(super::DEPENDENT_TARGETS);
        assert!(
            plan.starts_with("SEARCH d USING INDEX deps_reverse"),
            "{plan}"
        );
        assert!(!plan.contains("patches_status"), "{plan}");
    }
}
