//! The ledger of applied patches and the outbox of results still owed to the router.
//!
//! Ledger: `<state_dir>/ledger/<target>/<patch id>.<content hash>.json` holds the report of a
//! patch whose effect stayed in the workspace (succeeded, or failed with `on_failure: keep`).
//! A re-delivered patch with the same id and hash gets that report back and nothing is
//! touched. Outcomes that left the workspace as it was (rolled back, rejected, cancelled,
//! timed out) are not recorded, so a retry really runs again.
//!
//! Outbox: `<state_dir>/outbox/<patch id>.<fencing token>.json`, results found at start
//! (interrupted applies) that are sent once the router is connected.

use std::fs;
use std::path::{Path, PathBuf};

use ghost_core::{ApplyReport, Status};
use serde::{Deserialize, Serialize};

use crate::journal::write_atomically;

/// Applied patches of one state dir.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// The ledger under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("ledger"),
        }
    }

    fn path(&self, target: &str, patch_id: &str, hash: &str) -> PathBuf {
        // Patch ids are validated ([A-Za-z0-9._()+-], no leading dot), so they are safe names.
        self.dir
            .join(target)
            .join(format!("{patch_id}.{hash}.json"))
    }

    /// The recorded report of an applied patch, if any.
    pub fn get(&self, target: &str, patch_id: &str, hash: &str) -> Option<ApplyReport> {
        let bytes = fs::read(self.path(target, patch_id, hash)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// True when the report leaves an effect that must not be applied twice.
    pub fn keeps(report: &ApplyReport) -> bool {
        !report.dry_run && matches!(report.status, Status::Succeeded | Status::Failed)
    }

    /// Records `report` durably (before the journal is closed).
    pub fn record(
        &self,
        target: &str,
        patch_id: &str,
        hash: &str,
        report: &ApplyReport,
    ) -> std::io::Result<()> {
        let path = self.path(target, patch_id, hash);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let bytes = serde_json::to_vec(report).map_err(std::io::Error::other)?;
        write_atomically(&path, &bytes, 0o600)
    }
}

impl Ledger {
    /// Removes the entry of a patch whose recording failed (an fsync after the rename may
    /// have left it in place): true when none is left. The caller rolls the patch back only
    /// then, so the ledger never says applied for an effect that was undone.
    pub fn forget(&self, target: &str, patch_id: &str, hash: &str) -> bool {
        match fs::remove_file(self.path(target, patch_id, hash)) {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => true,
            Err(err) => {
                tracing::error!(%target, %patch_id, error = %err, "cannot remove a ledger entry whose write failed");
                false
            }
        }
    }
}

/// A result waiting to be sent to the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedResult {
    /// The patch.
    pub patch_id: String,
    /// The attempt it belonged to.
    pub attempt: u32,
    /// The lease's fencing token.
    pub fencing_token: u64,
    /// The report.
    pub report: ApplyReport,
}

/// Results owed to the router, kept on disk until sent.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// The outbox under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("outbox"),
        }
    }

    /// Stores a result to send later.
    pub fn push(&self, owed: &OwedResult) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let name = format!("{}.{}.json", owed.patch_id, owed.fencing_token);
        let bytes = serde_json::to_vec(owed).map_err(std::io::Error::other)?;
        write_atomically(&self.dir.join(name), &bytes, 0o600)
    }

    /// Every stored result with the file it came from.
    pub fn pending(&self) -> Vec<(PathBuf, OwedResult)> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match fs::read(&path).map(|bytes| serde_json::from_slice::<OwedResult>(&bytes)) {
                Ok(Ok(owed)) => found.push((path, owed)),
                _ => tracing::warn!(path = %path.display(), "unreadable owed result skipped"),
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Forgets a result once sent.
    pub fn remove(&self, path: &Path) {
        if let Err(err) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a sent result");
        }
    }
}
