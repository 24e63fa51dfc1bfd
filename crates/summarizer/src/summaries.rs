//! The summary store: `<data_dir>/summaries/<target>/summary-<id>.{md,json}` on disk, written
//! atomically, and an in-memory index of them rebuilt from the JSON files at start.
//!
//! Recording is idempotent by (patch id, attempt): the JSON's attempt history is the record of
//! what was written. The Markdown is written first and the JSON last, so a crash in between
//! leaves the attempt unrecorded and the router's redelivery writes both again.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use ghost_core::{PatchId, Status, TargetName};

use crate::error::SummarizerError;
use crate::render::{self, Outcome, SummaryDoc};

/// What the index knows about one patch's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// The latest attempt.
    pub attempt: u32,
    /// Its status.
    pub status: Status,
    /// Its trace id.
    pub trace_id: String,
    /// When it ended, unix milliseconds.
    pub finished_unix_ms: i64,
    /// The Markdown file, relative to the data dir (`summaries/<target>/summary-<id>.md`).
    pub markdown_path: String,
}

impl IndexEntry {
    fn of(doc: &SummaryDoc) -> Self {
        Self {
            patch_id: doc.patch_id.clone(),
            target: doc.target.clone(),
            attempt: doc.attempt,
            status: doc.status,
            trace_id: doc.trace_id.clone(),
            finished_unix_ms: doc.finished_unix_ms,
            markdown_path: format!("summaries/{}/summary-{}.md", doc.target, doc.patch_id),
        }
    }
}

/// The result of [`Summaries::record`].
#[derive(Debug, Clone)]
pub struct Recorded {
    /// False when this (patch id, attempt) was already recorded and nothing was written.
    pub created: bool,
    /// The stored document.
    pub doc: SummaryDoc,
    /// The stored Markdown.
    pub markdown: String,
}

/// One summary with its Markdown text.
#[derive(Debug, Clone)]
pub struct FullSummary {
    /// Index data.
    pub entry: IndexEntry,
    /// The Markdown text.
    pub markdown: String,
}

/// A page of [`Summaries::list`].
#[derive(Debug, Clone)]
pub struct Page {
    /// Entries, newest first.
    pub entries: Vec<IndexEntry>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<usize>,
}

/// The summary store; cheap to clone.
#[derive(Clone)]
pub struct Summaries {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    jaeger_url_template: String,
    index: Mutex<HashMap<PatchId, IndexEntry>>,
    /// Serialises read-modify-write of summary files.
    writer: Mutex<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a panic elsewhere does not poison it.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Summaries {
    /// Opens the store under `data_dir`, creating it, and indexes the summaries already there.
    pub async fn open(
        data_dir: PathBuf,
        jaeger_url_template: String,
    ) -> Result<Self, SummarizerError> {
        let index = {
            let data_dir = data_dir.clone();
            tokio::task::spawn_blocking(move || scan(&data_dir))
                .await
                .map_err(SummarizerError::Task)??
        };
        Ok(Self {
            inner: Arc::new(Inner {
                data_dir,
                jaeger_url_template,
                index: Mutex::new(index),
                writer: Mutex::new(()),
            }),
        })
    }

    /// Records one outcome; see the module doc for idempotency.
    pub async fn record(&self, outcome: Outcome) -> Result<Recorded, SummarizerError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.record_blocking(outcome))
            .await
            .map_err(SummarizerError::Task)?
    }

    /// The summary of `patch_id`.
    pub async fn get(&self, patch_id: &PatchId) -> Result<FullSummary, SummarizerError> {
        let entry = lock(&self.inner.index)
            .get(patch_id)
            .cloned()
            .ok_or_else(|| SummarizerError::NotFound(patch_id.to_string()))?;
        let path = self.inner.data_dir.join(&entry.markdown_path);
        let markdown = tokio::fs::read_to_string(&path)
            .await
            .map_err(|err| SummarizerError::io(path, err))?;
        Ok(FullSummary { entry, markdown })
    }

    /// Up to `limit` summaries from `offset`, newest first, optionally of one target only.
    pub fn list(&self, target: Option<&TargetName>, offset: usize, limit: usize) -> Page {
        let mut entries: Vec<IndexEntry> = lock(&self.inner.index)
            .values()
            .filter(|entry| target.is_none_or(|wanted| &entry.target == wanted))
            .cloned()
            .collect();
        entries.sort_by(|a, b| {
            b.finished_unix_ms
                .cmp(&a.finished_unix_ms)
                .then_with(|| a.patch_id.cmp(&b.patch_id))
        });
        let total = entries.len();
        let page: Vec<IndexEntry> = entries.into_iter().skip(offset).take(limit).collect();
        let end = offset.saturating_add(page.len());
        Page {
            entries: page,
            next_offset: (end < total).then_some(end),
        }
    }

    fn record_blocking(&self, outcome: Outcome) -> Result<Recorded, SummarizerError> {
        let _writing = lock(&self.inner.writer);
        let dir = self
            .inner
            .data_dir
            .join("summaries")
            .join(outcome.target.as_str());
        let indexed_json = lock(&self.inner.index)
            .get(&outcome.patch_id)
            .map(|entry| json_path(&self.inner.data_dir, &entry.target, &entry.patch_id));
        let json_file = json_path(&self.inner.data_dir, &outcome.target, &outcome.patch_id);
        let previous = read_doc(indexed_json.as_deref().unwrap_or(&json_file))?;
        if let Some(doc) = previous
            .as_ref()
            .filter(|doc| doc.has_attempt(outcome.attempt))
        {
            let markdown = render::markdown(doc, &self.inner.jaeger_url_template);
            return Ok(Recorded {
                created: false,
                doc: doc.clone(),
                markdown,
            });
        }
        let doc = render::merge(previous, outcome);
        let markdown = render::markdown(&doc, &self.inner.jaeger_url_template);
        let json = serde_json::to_vec_pretty(&doc).map_err(|source| SummarizerError::Corrupt {
            path: json_file.clone(),
            source,
        })?;
        std::fs::create_dir_all(&dir).map_err(|err| SummarizerError::io(&dir, err))?;
        write_atomic(
            &dir,
            &format!("summary-{}.md", doc.patch_id),
            markdown.as_bytes(),
        )?;
        write_atomic(&dir, &format!("summary-{}.json", doc.patch_id), &json)?;
        lock(&self.inner.index).insert(doc.patch_id.clone(), IndexEntry::of(&doc));
        Ok(Recorded {
            created: true,
            doc,
            markdown,
        })
    }
}

fn json_path(data_dir: &Path, target: &TargetName, patch_id: &PatchId) -> PathBuf {
    data_dir
        .join("summaries")
        .join(target.as_str())
        .join(format!("summary-{patch_id}.json"))
}

fn read_doc(path: &Path) -> Result<Option<SummaryDoc>, SummarizerError> {
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

/// Writes `name` in `dir` so readers see the old or the new file, never a torn one, and the
/// rename survives a power cut: temp file, fsync, rename, fsync the directory.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SummarizerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if let Err(err) = result {
        // Best effort: a leftover temp file is harmless (never indexed), only untidy.
        let _ = std::fs::remove_file(&temp);
        return Err(SummarizerError::io(dir.join(name), err));
    }
    Ok(())
}

/// Indexes every `summaries/*/summary-*.json` under `data_dir`, creating the tree if missing.
/// Unreadable files are logged and skipped so one bad file cannot stop the service.
fn scan(data_dir: &Path) -> Result<HashMap<PatchId, IndexEntry>, SummarizerError> {
    let root = data_dir.join("summaries");
    std::fs::create_dir_all(&root).map_err(|err| SummarizerError::io(&root, err))?;
    let mut index = HashMap::new();
    let targets = std::fs::read_dir(&root).map_err(|err| SummarizerError::io(&root, err))?;
    for target_dir in targets.flatten() {
        let Ok(files) = std::fs::read_dir(target_dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let file_name = file.file_name();
            let name = file_name.to_string_lossy();
            if !(name.starts_with("summary-") && name.ends_with(".json")) {
                continue;
            }
            match read_doc(&file.path()) {
                Ok(Some(doc)) => {
                    index.insert(doc.patch_id.clone(), IndexEntry::of(&doc));
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = ?anyhow::Error::from(err), "skipping unreadable summary");
                }
            }
        }
    }
    tracing::info!(summaries = index.len(), data_dir = %data_dir.display(), "summary index built");
    Ok(index)
}
