//! Indexing the summary files a version without an index left on disk, and reading one.

use std::path::{Path, PathBuf};

use super::Summaries;
use super::record::row_of;
use crate::doc::SummaryDoc;
use crate::error::SummarizerError;

impl Summaries {
    /// Indexes every `summary-*.json` already on disk (live and archived), from a version
    /// without an index. Unreadable files are logged and skipped.
    pub(super) fn import_existing_files(&self) -> Result<(), SummarizerError> {
        let root = self.inner.data_dir.join("summaries");
        let mut imported = 0_usize;
        for target_dir in read_dirs(&root) {
            let mut folders = vec![target_dir.clone()];
            for month in read_dirs(&target_dir.join(".archive")) {
                folders.push(month);
            }
            for folder in folders {
                for path in summary_jsons(&folder) {
                    let doc = match read_doc(&path) {
                        Ok(Some(doc)) => doc,
                        Ok(None) => continue,
                        Err(err) => {
                            tracing::warn!(error = ?anyhow::Error::from(err), "skipping unreadable summary");
                            continue;
                        }
                    };
                    let relative = folder
                        .strip_prefix(&self.inner.data_dir)
                        .unwrap_or(&folder)
                        .to_string_lossy()
                        .into_owned();
                    let mut row = row_of(&doc, relative, self.now_ms());
                    row.archived = row.dir.contains("/.archive/");
                    let attempts: Vec<(u32, String)> = doc
                        .attempts
                        .iter()
                        .map(|entry| (entry.attempt, entry.status.to_string()))
                        .collect();
                    self.inner.index.import(&row, &attempts)?;
                    imported += 1;
                }
            }
        }
        tracing::info!(imported, "summary index created");
        Ok(())
    }
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn summary_jsons(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("summary-") && name.ends_with(".json")
        })
        .map(|entry| entry.path())
        .collect()
}

/// The summary document at `path`, `None` when there is none.
pub fn read_doc(path: &Path) -> Result<Option<SummaryDoc>, SummarizerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(SummarizerError::io(path, err)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| SummarizerError::Corrupt {
            path: path.to_owned(),
            source,
        })
}
