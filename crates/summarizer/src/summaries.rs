//! [`Summaries`]: the summary store. Files under `<data_dir>/summaries/<target>/`
//! (`summary-<id>.{md,json}`, `artifacts/<id>/<attempt>-<n>.log`, `patch-manifest.json`,
//! `.archive/YYYY-MM/`), indexed in SQLite ([`Index`]) with the notify outbox beside it.
//!
//! Recording is idempotent by (patch id, attempt): the `attempts` table is the record of what
//! was recorded. Order of a record: artifacts, Markdown, JSON (each atomic), then one
//! transaction (summary row, attempt, changelog, outbox row, webhook rows), then the manifest. A crash before
//! the transaction leaves the attempt unrecorded, and the router's redelivery writes it again;
//! a crash after it leaves at worst a stale manifest, rebuilt at start.
//!
//! The manifest lists every patch of a target, so rebuilding it is O(patches): with
//! `manifest_delay` > 0 a record only marks its target's manifest stale and
//! [`Summaries::run_manifest_writer`] rebuilds it once per delay for all records in between
//! (and on shutdown); with 0 every record rewrites it before answering.
//!
//! On PostgreSQL (`store.url`) nothing is a file: the Markdown, the JSON and the artifacts are
//! written in the transaction that records the attempt ([`Owed::bodies`]), the manifest is a row
//! rewritten under a per-target lock, and archiving only changes the row's folder, so any replica
//! serves any summary.

mod archive;
mod manifest_writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ghost_core::{PatchId, Status, TargetName};
use ghost_runtime::storage::StorageHealth;
use prost::Message as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::archive::ArchiveReport;
use crate::atomic_file;
use crate::doc::{self, Outcome, SummaryDoc};
use crate::error::SummarizerError;
use crate::index::{Index, NewNotification, NewWebhook, Owed, PgIndex, SqliteIndex, SummaryRow};
use crate::manifest::{self, MANIFEST_FILE};
use crate::notify::notify_request;
use crate::render;
use crate::webhooks::Webhooks;

/// Rule time in Unix milliseconds, injected so tests control time (the one
/// [`ghost_runtime::clock::RuleClock`]).
pub type Clock = ghost_runtime::clock::SharedClock;

/// The system clock, as rule time ([`ghost_runtime::clock::Clock::process`]): the wall clock
/// read once at start, then the monotonic clock, so a wall-clock jump neither holds back nor
/// hurries the outbox's and the webhooks' backoff.
pub fn system_clock() -> Clock {
    ghost_runtime::clock::SystemClock::shared()
}

/// How the store renders and what it remembers.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `{trace_id}` is replaced to link a trace.
    pub jaeger_url_template: String,
    /// Budget of `model_text`, in characters.
    pub model_text_chars: usize,
    /// Transitions kept per target in the manifest.
    pub changelog_len: usize,
    /// True when an alerter is configured: each recorded attempt queues a notification.
    pub notify: bool,
    /// How long a target's manifest may lag behind its records (they are then coalesced into
    /// one rewrite); zero: rewritten by every record before it answers.
    pub manifest_delay: std::time::Duration,
    /// The push subscriptions: each recorded attempt one wants queues a webhook; `None`: none.
    pub webhooks: Option<Arc<Webhooks>>,
    /// The PostgreSQL index's URL (a secret); `None`: SQLite in the data dir.
    pub postgres_url: Option<ghost_runtime::config::Secret>,
}

/// The result of [`Summaries::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// False when this (patch id, attempt) was already recorded and nothing was written.
    pub created: bool,
    /// Status of the patch's latest attempt after recording.
    pub status: String,
}

/// One summary with its texts.
#[derive(Debug, Clone)]
pub struct FullSummary {
    /// Index data.
    pub row: SummaryRow,
    /// The Markdown text.
    pub markdown: String,
    /// The Markdown within the model budget.
    pub model_text: String,
}

/// A page of [`Summaries::list`].
#[derive(Debug, Clone)]
pub struct Page {
    /// Rows, newest first.
    pub rows: Vec<SummaryRow>,
    /// Offset of the next page, if there is one.
    pub next_offset: Option<usize>,
    /// How many summaries match the filter.
    pub total: usize,
}

/// The file the storage probe rewrites, in the data dir.
const STORAGE_PROBE_FILE: &str = ".storage-probe";
/// The first wait before probing a degraded store; doubles up to [`MAX_PROBE_WAIT`].
const FIRST_PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest wait between two probes of a degraded store (and the longest a probe may take).
const MAX_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The summary store; cheap to clone.
#[derive(Clone)]
pub struct Summaries {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    index: Index,
    options: StoreOptions,
    clock: Clock,
    /// Records share it (read), archiving holds it alone (write): a summary never moves
    /// folders while it is being recorded or read.
    writer: RwLock<()>,
    /// One lock per patch being recorded: attempts of one patch are recorded in turn, records
    /// of different patches overlap (their fsyncs too).
    patch_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// One lock per target's manifest: a rewrite reads the index inside it, so the last
    /// rename is always of the newest rows.
    manifest_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Woken when a notification is queued.
    outbox_wake: Arc<Notify>,
    /// Woken when a webhook is queued.
    webhook_wake: Arc<Notify>,
    /// Targets whose manifest is older than their records (deferred manifests only).
    stale_manifests: Mutex<std::collections::BTreeSet<String>>,
    /// Woken when a target is added to `stale_manifests`.
    manifest_wake: Notify,
    /// Whether the disk under the index and the files accepts writes.
    health: StorageHealth,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data is on disk and in SQLite (or a set of names), consistent after every step.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn shared(lock: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn exclusive(lock: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lock of `key` in `locks`, created on first use.
fn keyed(locks: &Mutex<HashMap<String, Arc<Mutex<()>>>>, key: &str) -> Arc<Mutex<()>> {
    Arc::clone(lock(locks).entry(key.to_owned()).or_default())
}

/// Forgets the lock of `key` once nobody else holds or waits for it.
fn release(locks: &Mutex<HashMap<String, Arc<Mutex<()>>>>, key: &str, mine: Arc<Mutex<()>>) {
    let mut locks = lock(locks);
    // Clones are only made under the map lock: the map's and `mine` are the last two.
    if Arc::strong_count(&mine) == 2 {
        locks.remove(key);
    }
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, SummarizerError> + Send + 'static,
) -> Result<T, SummarizerError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(SummarizerError::Task)?
}

impl Summaries {
    /// Opens the store under `data_dir`: creates it, opens the index (importing summary files
    /// written before it existed), removes leftover temp files, finishes interrupted archive
    /// moves and rewrites every manifest.
    pub async fn open(
        data_dir: PathBuf,
        options: StoreOptions,
        clock: Clock,
    ) -> Result<Self, SummarizerError> {
        blocking(move || {
            let root = data_dir.join("summaries");
            std::fs::create_dir_all(&root).map_err(|err| SummarizerError::io(&root, err))?;
            let (index, created) = match &options.postgres_url {
                None => {
                    let (index, created) = SqliteIndex::open(&data_dir.join("summarizer.db"))?;
                    (Index::Sqlite(index), created)
                }
                Some(url) => {
                    let index = PgIndex::open(url.expose())?;
                    // Files beside a shared database are not imported: each replica has its own.
                    (Index::Postgres(index), false)
                }
            };
            let store = Self {
                inner: Arc::new(Inner {
                    data_dir,
                    index,
                    options,
                    clock,
                    writer: RwLock::new(()),
                    patch_locks: Mutex::new(HashMap::new()),
                    manifest_locks: Mutex::new(HashMap::new()),
                    outbox_wake: Arc::new(Notify::new()),
                    webhook_wake: Arc::new(Notify::new()),
                    stale_manifests: Mutex::new(std::collections::BTreeSet::new()),
                    manifest_wake: Notify::new(),
                    health: StorageHealth::new(crate::SERVICE),
                }),
            };
            if store.database().is_none() {
                atomic_file::sweep_temp_files(&root, 4);
                if created {
                    store.import_existing_files()?;
                }
                store.repair_partial_archives()?;
            }
            for target in store.inner.index.targets()? {
                store.write_manifest(&target)?;
            }
            Ok(store)
        })
        .await
    }

    /// The index (for the notify outbox).
    pub fn index(&self) -> &Index {
        &self.inner.index
    }

    /// Woken whenever a notification is queued.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        self.inner.outbox_wake.clone()
    }

    /// Woken whenever a webhook may have been queued.
    pub fn webhook_wake(&self) -> Arc<Notify> {
        self.inner.webhook_wake.clone()
    }

    /// Rule time now, by the clock the store uses.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// The clock the store uses (the outboxes run on it too).
    pub fn clock(&self) -> Clock {
        Arc::clone(&self.inner.clock)
    }

    /// Records one outcome; see the module doc for idempotency. `traceparent` parents the
    /// notification's span.
    pub async fn record(
        &self,
        outcome: Outcome,
        traceparent: String,
    ) -> Result<Recorded, SummarizerError> {
        if let Some(reason) = self.inner.health.reason() {
            return Err(SummarizerError::Unavailable(reason));
        }
        let store = self.clone();
        let recorded = blocking(move || store.record_blocking(outcome, traceparent))
            .await
            .map_err(|err| self.storage_error(err))?;
        if recorded.created && self.inner.options.notify {
            self.inner.outbox_wake.notify_one();
        }
        if recorded.created && self.inner.options.webhooks.is_some() {
            self.inner.webhook_wake.notify_one();
        }
        Ok(recorded)
    }

    /// The health of the disk under the store.
    pub fn health(&self) -> &StorageHealth {
        &self.inner.health
    }

    /// A storage fault behind `err` degrades the store and becomes
    /// [`SummarizerError::Unavailable`]; any other error is returned as it is.
    fn storage_error(&self, err: SummarizerError) -> SummarizerError {
        let Some(kind) = err.storage_fault() else {
            return err;
        };
        // A PostgreSQL server gone is `unreachable` ("the summarizer's database is
        // unreachable"); the detail, logged and sent with the alert, says what failed.
        let detail = format!("{:#}", anyhow::Error::from(err));
        self.inner.health.fault(kind, detail);
        SummarizerError::Unavailable(kind.sentence(crate::SERVICE))
    }

    /// Notes a failed background write (outbox, manifest, archive): a storage fault behind it
    /// degrades the store like a failed record does.
    pub(crate) fn note_storage_error(&self, err: &SummarizerError) {
        if let Some(kind) = err.storage_fault() {
            self.inner.health.fault(kind, err.to_string());
        }
    }

    /// One real write of each kind the store makes: a small file written atomically (fsync of
    /// the file and its folder) and a committed row in the index, on a fresh connection (the old
    /// one is not trusted after a failed write).
    pub async fn probe(&self) -> Result<(), SummarizerError> {
        let store = self.clone();
        blocking(move || {
            let index = &store.inner.index;
            index.reopen()?;
            let now = store.now_ms();
            if store.database().is_none() {
                atomic_file::write(
                    &store.inner.data_dir.join(STORAGE_PROBE_FILE),
                    now.to_string().as_bytes(),
                )?;
            }
            index.probe(now)
        })
        .await
    }

    /// While the store is degraded, probes it ([`Self::probe`]) at growing intervals (up to
    /// [`MAX_PROBE_WAIT`]) and heals it at the first probe that succeeds: the service heals by
    /// itself when the disk does. Runs until `shutdown`.
    pub async fn run_storage_probe(self, shutdown: CancellationToken) {
        let mut changes = self.inner.health.subscribe();
        loop {
            if !self.inner.health.is_degraded() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let mut wait = FIRST_PROBE_WAIT;
            while self.inner.health.is_degraded() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                match tokio::time::timeout(MAX_PROBE_WAIT, self.probe()).await {
                    Ok(Ok(())) => {
                        self.inner.health.healed();
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "storage probe failed; the store stays degraded");
                        wait = (wait * 2).min(MAX_PROBE_WAIT);
                    }
                    Err(_) => wait = MAX_PROBE_WAIT,
                }
            }
        }
    }

    /// The summary of `patch_id`.
    pub async fn get(&self, patch_id: &PatchId) -> Result<FullSummary, SummarizerError> {
        let store = self.clone();
        let patch_id = patch_id.clone();
        blocking(move || {
            let _reading = shared(&store.inner.writer);
            let row = store
                .inner
                .index
                .get(patch_id.as_str())?
                .ok_or_else(|| SummarizerError::NotFound(patch_id.to_string()))?;
            let markdown = store.read_markdown(&row)?;
            let model_text = render::model_text(&markdown, store.inner.options.model_text_chars);
            Ok(FullSummary {
                row,
                markdown,
                model_text,
            })
        })
        .await
    }

    /// Up to `limit` summaries from `offset`, newest first, optionally of one target and status.
    pub async fn list(
        &self,
        target: Option<TargetName>,
        status: Option<Status>,
        offset: usize,
        limit: usize,
    ) -> Result<Page, SummarizerError> {
        let index = self.inner.index.clone();
        blocking(move || {
            let (rows, total) = index.list(
                target.as_ref().map(TargetName::as_str),
                status.map(Status::as_str),
                offset,
                limit,
            )?;
            let end = offset.saturating_add(rows.len());
            let more = end < total && !rows.is_empty();
            Ok(Page {
                rows,
                next_offset: more.then_some(end),
                total,
            })
        })
        .await
    }

    /// Where a row's file with `extension` lives.
    pub fn file_of(&self, row: &SummaryRow, extension: &str) -> PathBuf {
        self.inner
            .data_dir
            .join(&row.dir)
            .join(format!("summary-{}.{extension}", row.patch_id))
    }

    /// The database that holds the summary bodies too (PostgreSQL); `None`: they are files.
    fn database(&self) -> Option<&PgIndex> {
        match &self.inner.index {
            Index::Postgres(database) => Some(database),
            Index::Sqlite(_) => None,
        }
    }

    /// The Markdown of `row`, from its file or the database.
    fn read_markdown(&self, row: &SummaryRow) -> Result<String, SummarizerError> {
        let Some(database) = self.database() else {
            let path = self.file_of(row, "md");
            return std::fs::read_to_string(&path).map_err(|err| SummarizerError::io(path, err));
        };
        let name = format!("summary-{}.md", row.patch_id);
        let body = database
            .body(&row.patch_id, &name)?
            .ok_or_else(|| SummarizerError::Store(format!("the body {name} is missing")))?;
        String::from_utf8(body)
            .map_err(|_| SummarizerError::Store(format!("the body {name} is not UTF-8")))
    }

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

    pub(crate) fn live_dir(target: &str) -> String {
        format!("summaries/{target}")
    }

    fn record_blocking(
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

    /// Rewrites `summaries/<target>/patch-manifest.json` from the index.
    fn write_manifest(&self, target: &str) -> Result<(), SummarizerError> {
        let target_lock = keyed(&self.inner.manifest_locks, target);
        let _this_target = lock(&target_lock);
        if let Some(database) = self.database() {
            return database.rewrite_manifest(target, |rows, transitions| {
                let manifest = manifest::build(target, rows, transitions);
                serde_json::to_vec_pretty(&manifest).map_err(|source| SummarizerError::Corrupt {
                    path: PathBuf::from(format!("manifests/{target}")),
                    source,
                })
            });
        }
        let (rows, transitions) = self.inner.index.manifest_rows(target)?;
        let manifest = manifest::build(target, &rows, &transitions);
        let path = self
            .inner
            .data_dir
            .join(Self::live_dir(target))
            .join(MANIFEST_FILE);
        let json =
            serde_json::to_vec_pretty(&manifest).map_err(|source| SummarizerError::Corrupt {
                path: path.clone(),
                source,
            })?;
        atomic_file::write(&path, &json)
    }

    /// Indexes every `summary-*.json` already on disk (live and archived), from a version
    /// without an index. Unreadable files are logged and skipped.
    fn import_existing_files(&self) -> Result<(), SummarizerError> {
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

/// One attempt merged into its summary: what both stores write and commit.
struct Merged {
    doc: SummaryDoc,
    markdown: String,
    attempt: u32,
    attempt_status: Status,
    /// One message per push subscription that wants this outcome.
    webhooks: Vec<NewWebhook>,
}

fn row_of(doc: &SummaryDoc, dir: String, now_ms: i64) -> SummaryRow {
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
