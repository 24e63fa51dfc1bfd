//! `summaries/<target>/patch-manifest.json`: totals by status, one row per patch and the recent
//! transitions of one target, rebuilt from the [`Index`](crate::index::Index) after every change
//! and written atomically.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::index::{SummaryRow, Transition};
use crate::render::timestamp;

/// Version of the manifest schema.
pub const MANIFEST_VERSION: u32 = 1;

/// File name of a target's manifest.
pub const MANIFEST_FILE: &str = "patch-manifest.json";

/// The whole manifest of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub schema_version: u32,
    /// The target.
    pub target: String,
    /// Number of patches.
    pub total: usize,
    /// Patches by the status of their latest attempt.
    pub totals_by_status: BTreeMap<String, usize>,
    /// One row per patch, by id.
    pub patches: Vec<ManifestRow>,
    /// The most recent transitions, oldest first (bounded).
    pub changelog: Vec<ManifestTransition>,
}

/// One patch in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRow {
    /// The patch.
    pub id: String,
    /// Status of its latest attempt.
    pub status: String,
    /// Its latest attempt number.
    pub attempt: u32,
    /// How many attempts are recorded.
    pub attempts: u32,
    /// When it was accepted (RFC 3339).
    pub created: String,
    /// When its latest attempt ended (RFC 3339).
    pub finished: String,
    /// When its latest attempt ended, unix ms.
    pub finished_unix_ms: i64,
    /// The Markdown summary, relative to the target folder.
    pub summary_path: String,
    /// The JSON summary, relative to the target folder.
    pub json_path: String,
    /// True when it lives under `.archive/`.
    pub archived: bool,
}

/// One transition in the manifest's changelog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestTransition {
    /// The patch.
    pub id: String,
    /// The attempt.
    pub attempt: u32,
    /// `recorded`, `archived` or `expired`.
    pub event: String,
    /// Status before (empty for a first summary).
    pub from: String,
    /// Status after.
    pub to: String,
    /// When (RFC 3339).
    pub at: String,
}

/// The path of `row`'s summary file with `extension`, relative to its target folder.
pub fn relative_path(row: &SummaryRow, extension: &str) -> String {
    let prefix = format!("summaries/{}", row.target);
    let sub = row
        .dir
        .strip_prefix(&prefix)
        .unwrap_or("")
        .trim_start_matches('/');
    let name = format!("summary-{}.{extension}", row.patch_id);
    if sub.is_empty() {
        name
    } else {
        format!("{sub}/{name}")
    }
}

/// Builds the manifest of `target` from its index rows and transitions.
pub fn build(target: &str, rows: &[SummaryRow], transitions: &[Transition]) -> Manifest {
    let mut totals_by_status = BTreeMap::new();
    for row in rows {
        *totals_by_status.entry(row.status.clone()).or_insert(0) += 1;
    }
    Manifest {
        schema_version: MANIFEST_VERSION,
        target: target.to_owned(),
        total: rows.len(),
        totals_by_status,
        patches: rows
            .iter()
            .map(|row| ManifestRow {
                id: row.patch_id.clone(),
                status: row.status.clone(),
                attempt: row.attempt,
                attempts: row.attempts,
                created: timestamp(row.created_ms),
                finished: timestamp(row.finished_ms),
                finished_unix_ms: row.finished_ms,
                summary_path: relative_path(row, "md"),
                json_path: relative_path(row, "json"),
                archived: row.archived,
            })
            .collect(),
        changelog: transitions
            .iter()
            .map(|transition| ManifestTransition {
                id: transition.patch_id.clone(),
                attempt: transition.attempt,
                event: transition.event.clone(),
                from: transition.from_status.clone(),
                to: transition.to_status.clone(),
                at: timestamp(transition.at_ms),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, status: &str, dir: &str) -> SummaryRow {
        SummaryRow {
            patch_id: id.to_owned(),
            target: "MAIN".to_owned(),
            status: status.to_owned(),
            attempt: 1,
            attempts: 1,
            trace_id: String::new(),
            created_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_001_000,
            recorded_ms: 1_700_000_002_000,
            dir: dir.to_owned(),
            archived: dir.contains(".archive"),
        }
    }

    #[test]
    fn totals_and_paths_follow_the_rows() {
        let rows = [
            row("a", "failed", "summaries/MAIN"),
            row("b", "failed", "summaries/MAIN/.archive/2023-11"),
            row("c", "succeeded", "summaries/MAIN"),
        ];
        let manifest = build("MAIN", &rows, &[]);
        assert_eq!(manifest.total, 3);
        assert_eq!(manifest.totals_by_status["failed"], 2);
        assert_eq!(manifest.totals_by_status["succeeded"], 1);
        assert_eq!(manifest.patches[0].summary_path, "summary-a.md");
        assert_eq!(
            manifest.patches[1].json_path,
            ".archive/2023-11/summary-b.json"
        );
        assert!(manifest.patches[1].archived);
    }
}
