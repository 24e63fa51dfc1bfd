//! Patch rows of the SQLite store: the columns read, their decoding into [`PatchRecord`], the
//! audit events and the lease check every transition makes.

use ghost_core::{ApplyReport, Patch, Status};
use rusqlite::{Connection, OptionalExtension, params};

use super::writer::{exec, row};
use crate::store::{PatchRecord, StoreError, now_us};

pub(super) const COLUMNS: &str = "id, patch_json, content_hash, status, attempt, traceparent, error, \
                       report_json, fencing_token, leased_to, created_ms, updated_ms, \
                       warnings_json, key_name";

pub(super) const IN_FLIGHT: &str = "('leased', 'applying', 'validating')";

pub(super) fn priority_rank(patch: &Patch) -> i64 {
    match patch.priority {
        ghost_core::Priority::Low => 0,
        ghost_core::Priority::Normal => 1,
        ghost_core::Priority::High => 2,
    }
}

pub(super) fn read_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRecord> {
    Ok(RawRecord {
        id: row.get(0)?,
        patch_json: row.get(1)?,
        content_hash: row.get(2)?,
        status: row.get(3)?,
        attempt: row.get(4)?,
        traceparent: row.get(5)?,
        error: row.get(6)?,
        report_json: row.get(7)?,
        fencing_token: row.get(8)?,
        leased_to: row.get(9)?,
        created_ms: row.get(10)?,
        updated_ms: row.get(11)?,
        warnings_json: row.get(12)?,
        key_name: row.get(13)?,
    })
}

pub(super) struct RawRecord {
    id: String,
    patch_json: String,
    content_hash: String,
    status: String,
    attempt: u32,
    traceparent: String,
    error: String,
    report_json: Option<String>,
    fencing_token: i64,
    leased_to: String,
    created_ms: i64,
    updated_ms: i64,
    warnings_json: String,
    key_name: String,
}

pub(super) fn parse_status(id: &str, raw: &str) -> Result<Status, StoreError> {
    serde_json::from_value(serde_json::Value::String(raw.to_owned())).map_err(|source| {
        StoreError::Corrupt {
            what: "status",
            id: id.to_owned(),
            source,
        }
    })
}

pub(super) fn parse_report(id: &str, json: &str) -> Result<ApplyReport, StoreError> {
    serde_json::from_str(json).map_err(|source| StoreError::Corrupt {
        what: "report",
        id: id.to_owned(),
        source,
    })
}

pub(super) fn report_json(id: &str, report: &ApplyReport) -> Result<String, StoreError> {
    serde_json::to_string(report).map_err(|source| StoreError::Corrupt {
        what: "report",
        id: id.to_owned(),
        source,
    })
}

impl RawRecord {
    pub(super) fn decode(self) -> Result<PatchRecord, StoreError> {
        let patch: Patch =
            serde_json::from_str(&self.patch_json).map_err(|source| StoreError::Corrupt {
                what: "patch",
                id: self.id.clone(),
                source,
            })?;
        let status = parse_status(&self.id, &self.status)?;
        let report = match &self.report_json {
            Some(json) => Some(parse_report(&self.id, json)?),
            None => None,
        };
        let warnings: Vec<String> =
            serde_json::from_str(&self.warnings_json).map_err(|source| StoreError::Corrupt {
                what: "warnings",
                id: self.id.clone(),
                source,
            })?;
        Ok(PatchRecord {
            patch,
            content_hash: self.content_hash,
            status,
            attempt: self.attempt,
            traceparent: self.traceparent,
            error: self.error,
            report,
            fencing_token: u64::try_from(self.fencing_token).unwrap_or(0),
            leased_to: self.leased_to,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            warnings,
            key_name: self.key_name,
        })
    }
}

pub(super) fn get_tx(conn: &Connection, id: &str) -> Result<Option<PatchRecord>, StoreError> {
    let raw = row(
        conn,
        &format!("SELECT {COLUMNS} FROM patches WHERE id = ?1"),
        params![id],
        read_record,
    )
    .optional()?;
    raw.map(RawRecord::decode).transpose()
}

pub(super) fn must_get(conn: &Connection, id: &str) -> Result<PatchRecord, StoreError> {
    get_tx(conn, id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
}

pub(super) fn event_tx(
    conn: &Connection,
    id: &str,
    status: Status,
    actor: &str,
    attempt: u32,
    detail: &str,
) -> rusqlite::Result<()> {
    let at_us = now_us();
    exec(
        conn,
        "INSERT INTO events (patch_id, at_ms, at_us, status, actor, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            id,
            at_us.div_euclid(1000),
            at_us,
            status.as_str(),
            actor,
            attempt,
            detail
        ],
    )?;
    Ok(())
}

/// `owner` holds the live lease `token` of `record`: a queued patch's token is 0 and its
/// owner empty, so neither a guessed token nor 0 moves a patch someone else holds or nobody does.
pub(super) fn holds_lease(record: &PatchRecord, owner: &str, token: u64) -> bool {
    token != 0
        && record.fencing_token == token
        && !owner.is_empty()
        && record.leased_to == owner
        && matches!(
            record.status,
            Status::Leased | Status::Applying | Status::Validating
        )
}
