//! Read-only aggregate queries for dashboards: finished patches per hour by outcome, and the
//! stage timings of the newest reports. Bounded: the hour figures are one grouped query, the
//! stage timings read at most [`MAX_REPORTS`] reports.

use ghost_core::ApplyReport;
use rusqlite::{Connection, params};

use super::{StatsRows, StoreError};

/// At most this many reports are read for stage timings.
pub const MAX_REPORTS: u32 = 1000;

const TERMINAL: &str = "('succeeded', 'failed', 'rolled_back', 'cancelled', 'timed_out', \
                        'rejected', 'lost', 'interrupted')";

/// The raw figures of patches updated since `since_ms`, optionally of one target.
pub fn read(
    conn: &Connection,
    since_ms: i64,
    target: Option<&str>,
) -> Result<StatsRows, StoreError> {
    let mut hours = Vec::new();
    let mut statement = conn.prepare(&format!(
        "SELECT (updated_ms / 3600000) * 3600000 AS hour, status, COUNT(*) FROM patches
         WHERE updated_ms >= ?1 AND (?2 IS NULL OR target = ?2) AND status IN {TERMINAL}
         GROUP BY hour, status ORDER BY hour, status"
    ))?;
    let rows = statement.query_map(params![since_ms, target], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, u32>(2)?,
        ))
    })?;
    for row in rows {
        hours.push(row?);
    }
    let mut stages = Vec::new();
    let mut statement = conn.prepare(
        "SELECT id, report_json FROM patches
         WHERE updated_ms >= ?1 AND (?2 IS NULL OR target = ?2) AND report_json IS NOT NULL
         ORDER BY updated_ms DESC LIMIT ?3",
    )?;
    let rows = statement.query_map(params![since_ms, target, MAX_REPORTS], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (id, json) = row?;
        let report: ApplyReport =
            serde_json::from_str(&json).map_err(|source| StoreError::Corrupt {
                what: "report",
                id,
                source,
            })?;
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
