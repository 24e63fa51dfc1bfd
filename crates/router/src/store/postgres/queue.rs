//! The writes of [`super::PgStore`] that move patches: submit, lease, progress, complete, end,
//! cancel, retry. Each runs in one transaction of its caller and tells the other replicas what
//! changed through [`notify`] (delivered at commit, only if it commits).

use ghost_core::{ApplyReport, Patch, Status};
use sqlx::{PgConnection, Row as _};

use super::patches::{
    self as rows, COLUMNS, IN_FLIGHT, RULE_MS, get, holds_lease, must_get, parse_status,
    report_json, sql,
};
use crate::store::{Completed, Inserted, LeaseEnded, PatchRecord, StoreError, now_ms};

/// The one channel replicas LISTEN on.
pub const CHANNEL: &str = "ghost_router";

/// What a replica tells the others, as `<origin>\t<kind>\t<args…>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The target may have work to hand out (or its lease changed hands).
    Dispatch(String),
    /// The patch ended.
    Ended(String),
    /// Patches may have ended whose ids were not named (dependents failed along).
    Others,
    /// Stop the attempt holding lease `token` of patch `id` (the replica holding its executor
    /// sends Cancel).
    Cancel {
        /// The patch.
        id: String,
        /// The lease's fencing token.
        token: u64,
        /// Why, for the executor.
        reason: String,
    },
}

impl Note {
    /// The payload, from the replica `origin`.
    pub fn payload(&self, origin: &str) -> String {
        let clean = |text: &str| text.replace(['\t', '\n'], " ");
        match self {
            Self::Dispatch(target) => format!("{origin}\tdispatch\t{}", clean(target)),
            Self::Ended(id) => format!("{origin}\tended\t{}", clean(id)),
            Self::Others => format!("{origin}\tothers"),
            Self::Cancel { id, token, reason } => {
                format!(
                    "{origin}\tcancel\t{}\t{token}\t{}",
                    clean(id),
                    clean(reason)
                )
            }
        }
    }

    /// Reads a payload: its origin and note (`None`: not one of ours).
    pub fn parse(payload: &str) -> Option<(String, Self)> {
        let mut parts = payload.splitn(5, '\t');
        let origin = parts.next()?.to_owned();
        let note = match parts.next()? {
            "dispatch" => Self::Dispatch(parts.next()?.to_owned()),
            "ended" => Self::Ended(parts.next()?.to_owned()),
            "others" => Self::Others,
            "cancel" => Self::Cancel {
                id: parts.next()?.to_owned(),
                token: parts.next()?.parse().ok()?,
                reason: parts.next().unwrap_or_default().to_owned(),
            },
            _ => return None,
        };
        Some((origin, note))
    }
}

/// Sends `note` to every replica when the transaction on `conn` commits.
pub async fn notify(conn: &mut PgConnection, origin: &str, note: &Note) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(note.payload(origin))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn priority_rank(patch: &Patch) -> i64 {
    match patch.priority {
        ghost_core::Priority::Low => 0,
        ghost_core::Priority::Normal => 1,
        ghost_core::Priority::High => 2,
    }
}

/// Stores a submitted patch (see `RouterStore::insert`).
pub async fn insert(
    conn: &mut PgConnection,
    origin: &str,
    patch: Patch,
    actor: &str,
    traceparent: &str,
    warnings: &[String],
    key_name: &str,
) -> Result<Inserted, StoreError> {
    let id = patch.id.to_string();
    let hash = patch.content_hash();
    let now = now_ms();
    let inserted = sqlx::query(
        "INSERT INTO patches (id, target, priority, content_hash, patch_json, is_revert, status,
                              traceparent, created_ms, updated_ms, seq, warnings_json, key_name)
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $8, nextval('patch_seq'), $9, $10)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(patch.target.as_str())
    .bind(priority_rank(&patch))
    .bind(&hash)
    .bind(patch.canonical_json())
    .bind(patch.revert.is_some())
    .bind(traceparent)
    .bind(now)
    .bind(serde_json::to_string(warnings).unwrap_or_else(|_| "[]".to_owned()))
    .bind(key_name)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        let existing = must_get(conn, &id).await?;
        return Ok(if existing.content_hash == hash {
            Inserted::Existing(existing)
        } else {
            Inserted::Conflict
        });
    }
    rows::event(conn, &id, Status::Received, actor, 0, "").await?;
    rows::event(conn, &id, Status::Queued, "router", 0, "").await?;
    let mut failed_dependency = None;
    for dependency in &patch.depends_on {
        sqlx::query(
            "INSERT INTO deps (patch_id, depends_on) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(dependency.as_str())
        .execute(&mut *conn)
        .await?;
        let status: Option<String> = sqlx::query("SELECT status FROM patches WHERE id = $1")
            .bind(dependency.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        if let Some(status) = status {
            let status = parse_status(dependency.as_str(), &status)?;
            if status.is_terminal() && status != Status::Succeeded {
                failed_dependency = Some((dependency.to_string(), status));
            }
        }
    }
    if let Some((dependency, status)) = failed_dependency {
        let why = format!("dependency {dependency} ended {status}; not run");
        rows::end(conn, &id, Status::Failed, "router", &why).await?;
    } else {
        notify(conn, origin, &Note::Dispatch(patch.target.to_string())).await?;
    }
    Ok(Inserted::Created(must_get(conn, &id).await?))
}

/// Leases the next runnable patch of `target` (see `RouterStore::lease_next`). Replicas take
/// the target's advisory lock first, so the check that the target has no live lease and the
/// lease itself are one step across all of them; the queue's rows are then taken with `FOR
/// UPDATE SKIP LOCKED` (a row another transaction is ending or cancelling is passed over).
pub async fn lease_next(
    conn: &mut PgConnection,
    target: &str,
    owner: &str,
    lease_ms: i64,
    takes_reverts: bool,
) -> Result<Option<PatchRecord>, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(7368012, hashtext($1))")
        .bind(target)
        .execute(&mut *conn)
        .await?;
    let busy: bool = sqlx::query(sql(format!(
        "SELECT EXISTS (SELECT 1 FROM patches WHERE target = $1 AND status IN {IN_FLIGHT})
             OR EXISTS (SELECT 1 FROM meta WHERE key = 'paused:' || $1 AND value <> 0)"
    )))
    .bind(target)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    if busy {
        return Ok(None);
    }
    let next: Option<String> = sqlx::query(
        "SELECT q.id FROM patches q
         WHERE q.target = $1 AND q.status = 'queued' AND ($2 OR NOT q.is_revert)
           AND NOT EXISTS (
             SELECT 1 FROM deps d LEFT JOIN patches p ON p.id = d.depends_on
             WHERE d.patch_id = q.id AND (p.status IS NULL OR p.status <> 'succeeded'))
         ORDER BY q.priority DESC, q.seq LIMIT 1 FOR UPDATE OF q SKIP LOCKED",
    )
    .bind(target)
    .bind(takes_reverts)
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| row.try_get(0))
    .transpose()?;
    let Some(id) = next else {
        return Ok(None);
    };
    let now = now_ms();
    let row = sqlx::query(sql(format!(
        "UPDATE patches SET status = 'leased', attempt = attempt + 1,
                fencing_token = nextval('fencing_token_seq'), leased_to = $2,
                lease_deadline_ms = {RULE_MS} + $3, updated_ms = $4, error = ''
         WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(&id)
    .bind(owner)
    .bind(lease_ms)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let record = rows::record(&row)?;
    sqlx::query(
        "INSERT INTO attempts (patch_id, attempt, status, executor, started_ms)
         VALUES ($1, $2, 'leased', $3, $4)
         ON CONFLICT (patch_id, attempt) DO UPDATE SET status = 'leased',
             executor = excluded.executor, started_ms = excluded.started_ms,
             finished_ms = NULL, report_json = NULL",
    )
    .bind(&id)
    .bind(i64::from(record.attempt))
    .bind(owner)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let detail = format!("fencing token {}", record.fencing_token);
    let actor = format!("executor:{owner}");
    rows::event(conn, &id, Status::Leased, &actor, record.attempt, &detail).await?;
    Ok(Some(record))
}

/// Extends the leases `tokens` held by `owner`.
pub async fn renew(
    conn: &mut PgConnection,
    owner: &str,
    tokens: &[u64],
    lease_ms: i64,
) -> Result<(), StoreError> {
    let tokens: Vec<i64> = tokens
        .iter()
        .map(|token| i64::try_from(*token).unwrap_or(-1))
        .collect();
    sqlx::query(sql(format!(
        "UPDATE patches SET lease_deadline_ms = {RULE_MS} + $3
         WHERE fencing_token = ANY($1) AND leased_to = $2 AND status IN {IN_FLIGHT}"
    )))
    .bind(tokens)
    .bind(owner)
    .bind(lease_ms)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records progress under a live lease (see `RouterStore::progress`).
pub async fn progress(
    conn: &mut PgConnection,
    id: &str,
    owner: &str,
    token: u64,
    status: Status,
    detail: &str,
) -> Result<bool, StoreError> {
    let Some(record) = get(conn, id, true).await? else {
        return Ok(false);
    };
    if !holds_lease(&record, owner, token) {
        return Ok(false);
    }
    sqlx::query("UPDATE patches SET status = $2, updated_ms = $3 WHERE id = $1")
        .bind(id)
        .bind(status.as_str())
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
    let actor = format!("executor:{}", record.leased_to);
    rows::event(conn, id, status, &actor, record.attempt, detail).await?;
    Ok(true)
}

/// Stores an attempt's report under its live lease (see `RouterStore::complete`).
pub async fn complete(
    conn: &mut PgConnection,
    origin: &str,
    id: &str,
    owner: &str,
    token: u64,
    report: &ApplyReport,
) -> Result<Option<Completed>, StoreError> {
    let Some(record) = get(conn, id, true).await? else {
        return Ok(None);
    };
    if !holds_lease(&record, owner, token) {
        return Ok(None);
    }
    let json = report_json(id, report)?;
    let now = now_ms();
    sqlx::query(
        "UPDATE patches SET status = $2, error = $3, report_json = $4, updated_ms = $5,
                lease_deadline_ms = 0
         WHERE id = $1",
    )
    .bind(id)
    .bind(report.status.as_str())
    .bind(&report.error)
    .bind(&json)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE attempts SET status = $3, finished_ms = $4, report_json = $5
         WHERE patch_id = $1 AND attempt = $2",
    )
    .bind(id)
    .bind(i64::from(record.attempt))
    .bind(report.status.as_str())
    .bind(now)
    .bind(&json)
    .execute(&mut *conn)
    .await?;
    let actor = format!("executor:{}", record.leased_to);
    rows::event(
        conn,
        id,
        report.status,
        &actor,
        record.attempt,
        &report.error,
    )
    .await?;
    rows::outbox(conn, id, record.attempt, report).await?;
    let target = record.patch.target.to_string();
    let dependent_targets: Vec<String> = if report.status == Status::Succeeded {
        sqlx::query(
            "SELECT DISTINCT p.target FROM deps d JOIN patches p ON p.id = d.patch_id
             WHERE d.depends_on = $1 AND p.status = 'queued' ORDER BY p.target",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?
    } else {
        for dependent in rows::queued_dependents(conn, id).await? {
            let why = format!("dependency {id} ended {}; not run", report.status);
            rows::end(conn, &dependent, Status::Failed, "router", &why).await?;
        }
        notify(conn, origin, &Note::Others).await?;
        Vec::new()
    };
    notify(conn, origin, &Note::Ended(id.to_owned())).await?;
    for other in std::iter::once(&target).chain(&dependent_targets) {
        notify(conn, origin, &Note::Dispatch(other.clone())).await?;
    }
    Ok(get(conn, id, false).await?.map(|record| Completed {
        record,
        dependent_targets,
    }))
}

/// Takes an executor's report of an attempt already ended `interrupted` (see
/// `RouterStore::record_interrupted`).
pub async fn record_interrupted(
    conn: &mut PgConnection,
    id: &str,
    executor_id: &str,
    targets: &[String],
    attempt: u32,
    report: &ApplyReport,
) -> Result<bool, StoreError> {
    let Some(record) = get(conn, id, true).await? else {
        return Ok(false);
    };
    if !targets.contains(&record.patch.target.to_string()) {
        return Ok(false);
    }
    let former: Option<String> = sqlx::query(
        "SELECT executor FROM attempts
         WHERE patch_id = $1 AND attempt = $2 AND status = 'interrupted'",
    )
    .bind(id)
    .bind(i64::from(attempt))
    .fetch_optional(&mut *conn)
    .await?
    .map(|row| row.try_get(0))
    .transpose()?;
    // The owner is `<executor id>#<session>`: the executor may have reconnected since.
    let same_executor = former
        .as_deref()
        .and_then(|owner| owner.rsplit_once('#'))
        .is_some_and(|(former_id, _)| former_id == executor_id);
    if !same_executor {
        return Ok(false);
    }
    let json = report_json(id, report)?;
    let updated = sqlx::query(
        "UPDATE attempts SET report_json = $3
         WHERE patch_id = $1 AND attempt = $2 AND status = 'interrupted'",
    )
    .bind(id)
    .bind(i64::from(attempt))
    .bind(&json)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 1 {
        sqlx::query(
            "UPDATE outbox SET report_json = $3
             WHERE patch_id = $1 AND attempt = $2 AND delivered_ms IS NULL",
        )
        .bind(id)
        .bind(i64::from(attempt))
        .bind(&json)
        .execute(&mut *conn)
        .await?;
        rows::event(
            conn,
            id,
            Status::Interrupted,
            "executor",
            attempt,
            &report.error,
        )
        .await?;
    }
    Ok(updated == 1)
}

/// Ends the in-flight attempts leased to `owner`, or (no owner) whose lease expired in rule
/// time ([`RULE_MS`]); with `all`, every one (see `RouterStore::end_all_leases`).
pub async fn end_leases(
    conn: &mut PgConnection,
    origin: &str,
    owner: Option<&str>,
    all: bool,
    reason: &str,
    max_attempts: u32,
) -> Result<Vec<LeaseEnded>, StoreError> {
    let ids: Vec<String> = sqlx::query(sql(format!(
        "SELECT id FROM patches
         WHERE status IN {IN_FLIGHT}
           AND ($2 OR ($1::text IS NOT NULL AND leased_to = $1)
                   OR ($1::text IS NULL AND lease_deadline_ms < {RULE_MS}))
         ORDER BY id FOR UPDATE SKIP LOCKED"
    )))
    .bind(owner)
    .bind(all)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| row.try_get(0))
    .collect::<Result<_, _>>()?;
    let mut ended = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(lease) = rows::interrupt(conn, id, reason, max_attempts).await? {
            ended.push(lease);
        }
    }
    for lease in &ended {
        if lease.lost {
            notify(conn, origin, &Note::Ended(lease.id.clone())).await?;
        }
        notify(conn, origin, &Note::Dispatch(lease.target.clone())).await?;
    }
    if ended.iter().any(|lease| lease.lost) {
        notify(conn, origin, &Note::Others).await?;
    }
    Ok(ended)
}

/// Cancels a queued patch (see `RouterStore::cancel_queued`).
pub async fn cancel_queued(
    conn: &mut PgConnection,
    origin: &str,
    id: &str,
    actor: &str,
) -> Result<Option<PatchRecord>, StoreError> {
    let Some(record) = get(conn, id, true).await? else {
        return Ok(None);
    };
    if record.status != Status::Queued {
        return Ok(Some(record));
    }
    let why = format!("cancelled by {actor} while queued");
    rows::end(conn, id, Status::Cancelled, actor, &why).await?;
    notify(conn, origin, &Note::Ended(id.to_owned())).await?;
    notify(conn, origin, &Note::Others).await?;
    get(conn, id, false).await
}

/// Queues a finished (not succeeded) patch again (see `RouterStore::retry`).
pub async fn retry(
    conn: &mut PgConnection,
    origin: &str,
    id: &str,
    actor: &str,
) -> Result<Option<(PatchRecord, bool)>, StoreError> {
    let Some(record) = get(conn, id, true).await? else {
        return Ok(None);
    };
    if !record.status.is_terminal() || record.status == Status::Succeeded {
        return Ok(Some((record, false)));
    }
    sqlx::query(
        "UPDATE patches SET status = 'queued', attempt_base = attempt, error = '',
                updated_ms = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    rows::event(
        conn,
        id,
        Status::Queued,
        actor,
        record.attempt,
        "retry requested",
    )
    .await?;
    notify(
        conn,
        origin,
        &Note::Dispatch(record.patch.target.to_string()),
    )
    .await?;
    Ok(Some((must_get(conn, id).await?, true)))
}
