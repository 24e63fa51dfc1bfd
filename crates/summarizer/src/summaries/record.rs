//! Recording one attempt: merging it into the patch's summary, writing the files (or, on
//! PostgreSQL, the bodies) and committing the attempt, its notification and webhooks in one
//! transaction; see the module doc of [`super`] for the order and why it is safe.

use ghost_core::Status;
use prost::Message as _;

use std::path::PathBuf;

use super::{Recorded, Summaries, keyed, lock, read_doc, release, shared};
use crate::atomic_file;
use crate::doc::{self, Outcome, SummaryDoc};
use crate::error::SummarizerError;
use crate::index::{NewNotification, NewWebhook, Owed, PgIndex, SummaryRow};
use crate::notify::notify_request;
use crate::render;

impl Summaries {
    /// [`Self::record_locked`] on a store that keeps the bodies in the database: the previous
    /// JSON is read from it, and the new bodies are written in the transaction that records
    /// the attempt (no files; archiving changes only the row's folder).
    fn record_in_database(
        &self,
        database: &PgIndex,
        outcome: Outcome,
        traceparent: String,
        previous_row: Option<SummaryRow>,
    ) -> Result<Recorded, SummarizerError> {
        let patch_id = outcome.patch_id.to_string();
        let json_name = format!("summary-{patch_id}.json");
        let previous = match database.body(&patch_id, &json_name)? {
            Some(bytes) => Some(serde_json::from_slice::<SummaryDoc>(&bytes).map_err(
                |source| SummarizerError::Corrupt {
                    path: PathBuf::from(&json_name),
                    source,
                },
            )?),
            None => None,
        };
        let live_dir = Self::live_dir(outcome.target.as_str());
        let artifacts = doc::artifacts_of(&outcome);
        let merged = self.merge_attempt(previous, outcome);
        let json =
            serde_json::to_vec_pretty(&merged.doc).map_err(|source| SummarizerError::Corrupt {
                path: PathBuf::from(&json_name),
                source,
            })?;
        let mut bodies: Vec<(String, Vec<u8>)> = artifacts
            .into_iter()
            .map(|(name, contents)| (name, contents.into_bytes()))
            .collect();
        bodies.push((
            format!("summary-{patch_id}.md"),
            merged.markdown.clone().into_bytes(),
        ));
        bodies.push((json_name, json));
        self.commit_attempt(merged, live_dir, previous_row, traceparent, bodies)
    }

    pub(super) fn record_blocking(
        &self,
        outcome: Outcome,
        traceparent: String,
    ) -> Result<Recorded, SummarizerError> {
        let patch_id = outcome.patch_id.to_string();
        let _recording = shared(&self.inner.writer);
        let patch_lock = keyed(&self.inner.patch_locks, &patch_id);
        let result = {
            let _this_patch = lock(&patch_lock);
            self.record_locked(outcome, traceparent, &patch_id)
        };
        release(&self.inner.patch_locks, &patch_id, patch_lock);
        result
    }

    /// [`Self::record_blocking`] under the shared writer lock and the patch's own lock.
    fn record_locked(
        &self,
        outcome: Outcome,
        traceparent: String,
        patch_id: &str,
    ) -> Result<Recorded, SummarizerError> {
        let index = &self.inner.index;
        if index.attempt_status(patch_id, outcome.attempt)?.is_some() {
            let status = index
                .get(patch_id)?
                .map(|row| row.status)
                .unwrap_or_default();
            return Ok(Recorded {
                created: false,
                status,
            });
        }
        let previous_row = index.get(patch_id)?;
        let live_dir = Self::live_dir(outcome.target.as_str());
        if let Some(database) = self.database() {
            return self.record_in_database(database, outcome, traceparent, previous_row);
        }
        let previous_json = match &previous_row {
            Some(row) => self.file_of(row, "json"),
            // Files written before a crash that came before the index commit: build on them.
            None => self
                .inner
                .data_dir
                .join(&live_dir)
                .join(format!("summary-{patch_id}.json")),
        };
        let previous = read_doc(&previous_json)?;
        if let Some(row) = previous_row.as_ref().filter(|row| row.dir != live_dir) {
            // A new attempt of an archived summary brings it back to the live folder.
            self.move_summary(row, &live_dir)?;
        }
        let artifacts = doc::artifacts_of(&outcome);
        let merged = self.merge_attempt(previous, outcome);
        let dir = self.inner.data_dir.join(&live_dir);
        for (path, contents) in &artifacts {
            atomic_file::write(&dir.join(path), contents.as_bytes())?;
        }
        let json_path = dir.join(format!("summary-{patch_id}.json"));
        let json =
            serde_json::to_vec_pretty(&merged.doc).map_err(|source| SummarizerError::Corrupt {
                path: json_path.clone(),
                source,
            })?;
        // Markdown first, then JSON, with one folder fsync for both renames.
        atomic_file::write_all(&[
            (
                &dir.join(format!("summary-{patch_id}.md")),
                merged.markdown.as_bytes(),
            ),
            (&json_path, &json),
        ])?;
        self.commit_attempt(merged, live_dir, previous_row, traceparent, Vec::new())
    }

    /// One attempt's `outcome` merged into the `previous` summary, not yet stored.
    fn merge_attempt(&self, previous: Option<SummaryDoc>, outcome: Outcome) -> Merged {
        let attempt = outcome.attempt;
        let attempt_status = outcome.report.status;
        let webhooks = self.inner.options.webhooks.as_deref();
        let webhook_view = webhooks.and_then(|webhooks| webhooks.view(&outcome));
        let doc = doc::merge(previous, outcome, &self.inner.options.jaeger_url_template);
        let markdown = render::markdown(&doc);
        let webhooks = match (webhooks, webhook_view) {
            (Some(webhooks), Some(view)) => webhooks.messages(view, &markdown),
            _ => Vec::new(),
        };
        Merged {
            doc,
            markdown,
            attempt,
            attempt_status,
            webhooks,
        }
    }

    /// Commits a merged attempt whose bodies are stored (as files, or as `bodies` in the
    /// database): its row, transition and what it owes, then the target's manifest.
    fn commit_attempt(
        &self,
        merged: Merged,
        live_dir: String,
        previous_row: Option<SummaryRow>,
        traceparent: String,
        bodies: Vec<(String, Vec<u8>)>,
    ) -> Result<Recorded, SummarizerError> {
        let Merged {
            doc,
            attempt,
            attempt_status,
            webhooks,
            ..
        } = merged;

        let row = row_of(&doc, live_dir, self.now_ms());
        let notification = self.inner.options.notify.then(|| NewNotification {
            request: notify_request(&doc, attempt, attempt_status).encode_to_vec(),
            traceparent,
        });
        let from_status = previous_row.map(|row| row.status).unwrap_or_default();
        let created = self.inner.index.commit_record(
            &row,
            attempt,
            attempt_status.as_str(),
            &from_status,
            Owed {
                notification,
                webhooks,
                bodies,
            },
            self.inner.options.changelog_len,
        )?;
        if self.inner.options.manifest_delay.is_zero() {
            self.write_manifest(doc.target.as_str())?;
        } else {
            self.manifest_stale(doc.target.as_str());
        }
        Ok(Recorded {
            created,
            status: doc.status.to_string(),
        })
    }
}

/// One attempt merged into its summary: what both stores write and commit.
struct Merged {
    doc: SummaryDoc,
    markdown: String,
    attempt: u32,
    attempt_status: Status,
    /// One message per push subscription that wants this outcome.
    webhooks: Vec<NewWebhook>,
}

pub(super) fn row_of(doc: &SummaryDoc, dir: String, now_ms: i64) -> SummaryRow {
    SummaryRow {
        patch_id: doc.patch_id.to_string(),
        target: doc.target.to_string(),
        status: doc.status.to_string(),
        attempt: doc.attempt,
        attempts: u32::try_from(doc.attempts.len()).unwrap_or(u32::MAX),
        trace_id: doc.trace_id.clone(),
        created_ms: doc.created_unix_ms,
        // Archiving goes by this time: an outcome without one ages from when it was recorded.
        finished_ms: if doc.finished_unix_ms > 0 {
            doc.finished_unix_ms
        } else {
            now_ms
        },
        recorded_ms: now_ms,
        dir,
        archived: false,
    }
}
