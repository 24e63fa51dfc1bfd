//! Archiving: summaries whose last attempt ended before a cutoff move (Markdown, JSON and
//! artifacts) to `summaries/<target>/.archive/YYYY-MM/`; archived ones past the retention
//! limit are deleted. Every move is renames plus folder fsyncs, then the index row, then the
//! manifest; an interrupted move is finished at the next start.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Summaries, exclusive};
use crate::atomic_file;
use crate::error::SummarizerError;
use crate::index::SummaryRow;

/// What one [`Summaries::archive`] run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Summaries moved under `.archive/`.
    pub archived: usize,
    /// Archived summaries deleted by the retention limit.
    pub expired: usize,
}

/// `summaries/<target>/.archive/YYYY-MM` for a summary that ended at `finished_ms` (UTC).
pub fn archive_dir(target: &str, finished_ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(finished_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "summaries/{target}/.archive/{:04}-{:02}",
        at.year(),
        u8::from(at.month())
    )
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Summaries {
    /// Archives summaries older than `archive_after` and deletes archived ones older than
    /// `retention`, as of `now_ms`. Idempotent; safe to call at any time.
    pub async fn archive(
        &self,
        now_ms: i64,
        archive_after: Option<Duration>,
        retention: Option<Duration>,
    ) -> Result<ArchiveReport, SummarizerError> {
        let store = self.clone();
        super::blocking(move || store.archive_blocking(now_ms, archive_after, retention)).await
    }

    /// Runs [`Summaries::archive`] every `interval` until `shutdown`.
    pub async fn run_archiver(
        self,
        interval: Duration,
        archive_after: Option<Duration>,
        retention: Option<Duration>,
        shutdown: CancellationToken,
    ) {
        if archive_after.is_none() && retention.is_none() {
            return;
        }
        loop {
            match self.archive(self.now_ms(), archive_after, retention).await {
                Ok(report) if report != ArchiveReport::default() => {
                    tracing::info!(
                        archived = report.archived,
                        expired = report.expired,
                        "summaries archived"
                    );
                }
                Ok(_) => {}
                Err(err) => {
                    self.note_storage_error(&err);
                    tracing::error!(error = ?anyhow::Error::from(err), "archiving summaries failed");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }

    fn archive_blocking(
        &self,
        now_ms: i64,
        archive_after: Option<Duration>,
        retention: Option<Duration>,
    ) -> Result<ArchiveReport, SummarizerError> {
        let _alone = exclusive(&self.inner.writer);
        let index = &self.inner.index;
        let changelog_len = self.inner.options.changelog_len;
        let mut report = ArchiveReport::default();
        let mut touched = BTreeSet::new();
        if let Some(age) = archive_after {
            for row in index.archive_candidates(now_ms.saturating_sub(ms(age)))? {
                let dir = archive_dir(&row.target, row.finished_ms);
                if self.database().is_none() {
                    self.move_summary(&row, &dir)?;
                }
                index.mark_archived(&row, &dir, now_ms, changelog_len)?;
                touched.insert(row.target.clone());
                report.archived += 1;
            }
        }
        if let Some(age) = retention {
            for row in index.expired_candidates(now_ms.saturating_sub(ms(age)))? {
                if self.database().is_none() {
                    self.delete_summary(&row)?;
                }
                // In the database, the bodies go with the row.
                index.mark_expired(&row, now_ms, changelog_len)?;
                touched.insert(row.target.clone());
                report.expired += 1;
            }
        }
        for target in touched {
            self.write_manifest(&target)?;
        }
        Ok(report)
    }

    /// Moves a summary's artifacts, Markdown and JSON (in that order: the JSON's place says
    /// where the summary is) from `row.dir` to `to_dir`; parts already moved are skipped.
    pub(super) fn move_summary(
        &self,
        row: &SummaryRow,
        to_dir: &str,
    ) -> Result<(), SummarizerError> {
        let data_dir = &self.inner.data_dir;
        let from = data_dir.join(&row.dir);
        let to = data_dir.join(to_dir);
        let id = &row.patch_id;
        for name in [
            format!("artifacts/{id}"),
            format!("summary-{id}.md"),
            format!("summary-{id}.json"),
        ] {
            let source = from.join(&name);
            if source.exists() {
                atomic_file::rename(&source, &to.join(&name))?;
            }
        }
        Ok(())
    }

    fn delete_summary(&self, row: &SummaryRow) -> Result<(), SummarizerError> {
        let dir = self.inner.data_dir.join(&row.dir);
        let artifacts = dir.join(format!("artifacts/{}", row.patch_id));
        if artifacts.exists() {
            std::fs::remove_dir_all(&artifacts)
                .map_err(|err| SummarizerError::io(&artifacts, err))?;
        }
        for extension in ["md", "json"] {
            let path = self.file_of(row, extension);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(SummarizerError::io(path, err)),
            }
        }
        atomic_file::sync_dir(&dir)
    }

    /// Finishes moves a crash interrupted: a row whose JSON is not where the row says is
    /// completed towards where the JSON would be (its archive folder, or the live folder).
    pub(super) fn repair_partial_archives(&self) -> Result<(), SummarizerError> {
        let index = &self.inner.index;
        for row in index.all()? {
            let here = self.file_of(&row, "json").exists() && self.file_of(&row, "md").exists();
            if here {
                continue;
            }
            let (other, archived) = if row.archived {
                (Self::live_dir(&row.target), false)
            } else {
                (archive_dir(&row.target, row.finished_ms), true)
            };
            let moved = SummaryRow {
                dir: other.clone(),
                ..row.clone()
            };
            if !self.file_of(&moved, "json").exists() && !self.file_of(&moved, "md").exists() {
                tracing::error!(patch_id = %row.patch_id, dir = %row.dir, "summary files missing");
                continue;
            }
            self.move_summary(&row, &other)?;
            index.set_dir(&row.patch_id, &other, archived)?;
            tracing::warn!(patch_id = %row.patch_id, dir = %other, "finished an interrupted summary move");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_folders_are_by_utc_month() {
        assert_eq!(
            archive_dir("MAIN", 1_700_000_000_000),
            "summaries/MAIN/.archive/2023-11"
        );
        assert_eq!(archive_dir("MAIN", 0), "summaries/MAIN/.archive/1970-01");
    }
}
