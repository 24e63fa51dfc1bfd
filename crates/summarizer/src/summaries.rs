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
mod import;
mod manifest_writer;
mod record;
mod storage_health;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ghost_core::{PatchId, Status, TargetName};
use ghost_runtime::storage::StorageHealth;
use tokio::sync::Notify;

pub use self::archive::ArchiveReport;
pub use self::import::read_doc;
use crate::atomic_file;
use crate::doc::Outcome;
use crate::error::SummarizerError;
use crate::index::{Index, PgIndex, SqliteIndex, SummaryRow};
use crate::manifest::{self, MANIFEST_FILE};
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

    pub(crate) fn live_dir(target: &str) -> String {
        format!("summaries/{target}")
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
}
