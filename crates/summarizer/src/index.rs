//! [`Index`]: the summarizer's index, on one of two stores chosen by `store.url`:
//! [`SqliteIndex`] (the embedded default, `<data_dir>/summarizer.db`, WAL, synchronous=FULL) or
//! [`PgIndex`] (PostgreSQL). Both hold the same tables, versioned by [`migrations`].
//!
//! Tables: `summaries` (one row per patch: where its files are and what the latest attempt was),
//! `attempts` (the idempotency key (patch id, attempt)), `outbox` (notifications owed to the
//! alerter), `changelog` (recent transitions per target, bounded) and the webhook outbox
//! ([`webhook_outbox`]: messages owed to push subscriptions, and dead letters). The summary files are
//! written before the row that points at them is committed, so a committed row always names
//! complete files.
//!
//! Shape: an enum over the two backends, not a trait. The store above it ([`crate::summaries`])
//! is a blocking core run on `spawn_blocking` threads (files, fsyncs, per-patch locks), so the
//! index's methods stay blocking and every call site stays as it was; the PostgreSQL side runs
//! its async `sqlx` queries to their end from those threads. An enum keeps the two backends'
//! method lists side by side in `dispatch!`, checked by the compiler to match, with no boxed
//! futures or trait objects; the async trait that the router and the alerter will share comes
//! with the one store layer of issue 21.

/// Row mapping both backends share: `$row.$get(i)?` reads column `i` (`get` on rusqlite,
/// `try_get` on sqlx), so each struct's column order is written once, for SQL that selects the
/// columns in that order. Defined before the backend modules so that they see them.
macro_rules! summary_of {
    ($row:ident . $get:ident) => {
        $crate::index::SummaryRow {
            patch_id: $row.$get(0)?,
            target: $row.$get(1)?,
            status: $row.$get(2)?,
            attempt: $crate::index::u32_of($row.$get(3)?),
            attempts: $crate::index::u32_of($row.$get(4)?),
            trace_id: $row.$get(5)?,
            created_ms: $row.$get(6)?,
            finished_ms: $row.$get(7)?,
            recorded_ms: $row.$get(8)?,
            dir: $row.$get(9)?,
            archived: $row.$get(10)?,
        }
    };
}

/// A [`Transition`] from `patch_id, attempt, event, from_status, to_status, at_ms`.
macro_rules! transition_of {
    ($row:ident . $get:ident) => {
        $crate::index::Transition {
            patch_id: $row.$get(0)?,
            attempt: $crate::index::u32_of($row.$get(1)?),
            event: $row.$get(2)?,
            from_status: $row.$get(3)?,
            to_status: $row.$get(4)?,
            at_ms: $row.$get(5)?,
        }
    };
}

/// An [`OutboxRow`] from `id, patch_id, attempt, request, traceparent, tries`.
macro_rules! outbox_of {
    ($row:ident . $get:ident) => {
        $crate::index::OutboxRow {
            id: $row.$get(0)?,
            patch_id: $row.$get(1)?,
            attempt: $crate::index::u32_of($row.$get(2)?),
            request: $row.$get(3)?,
            traceparent: $row.$get(4)?,
            tries: $crate::index::u32_of($row.$get(5)?),
        }
    };
}

/// A [`WebhookRow`] from `id, webhook_id, subscription, patch_id, attempt, event, body, tries,
/// first_try_ms`.
macro_rules! webhook_of {
    ($row:ident . $get:ident) => {
        $crate::index::WebhookRow {
            id: $row.$get(0)?,
            webhook_id: $row.$get(1)?,
            subscription: $row.$get(2)?,
            patch_id: $row.$get(3)?,
            attempt: $crate::index::u32_of($row.$get(4)?),
            event: $row.$get(5)?,
            body: $row.$get(6)?,
            tries: $crate::index::u32_of($row.$get(7)?),
            first_try_ms: $row.$get(8)?,
        }
    };
}

/// A [`DeadLetter`] from `webhook_id, subscription, patch_id, attempt, tries, reason`.
macro_rules! dead_letter_of {
    ($row:ident . $get:ident) => {
        $crate::index::DeadLetter {
            webhook_id: $row.$get(0)?,
            subscription: $row.$get(1)?,
            patch_id: $row.$get(2)?,
            attempt: $crate::index::u32_of($row.$get(3)?),
            tries: $crate::index::u32_of($row.$get(4)?),
            reason: $row.$get(5)?,
        }
    };
}

mod migrations;
mod notify_outbox;
mod postgres;
mod sqlite;
mod webhook_outbox;

use ghost_runtime::outbox::{Claim, Outcome};

pub use self::postgres::PgIndex;
pub use self::sqlite::SqliteIndex;
pub use self::webhook_outbox::{DeadLetter, NewWebhook, WebhookRow};
use crate::error::SummarizerError;

/// One `summaries` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRow {
    /// The patch.
    pub patch_id: String,
    /// Its workspace.
    pub target: String,
    /// Status of the latest attempt (snake_case).
    pub status: String,
    /// The latest attempt.
    pub attempt: u32,
    /// How many attempts are recorded.
    pub attempts: u32,
    /// Trace id of the latest attempt.
    pub trace_id: String,
    /// When the patch was accepted, unix ms.
    pub created_ms: i64,
    /// When the latest attempt ended, unix ms.
    pub finished_ms: i64,
    /// When the latest attempt was recorded here, unix ms.
    pub recorded_ms: i64,
    /// Folder of `summary-<id>.{md,json}`, relative to the data dir.
    pub dir: String,
    /// True once moved under `.archive/`.
    pub archived: bool,
}

/// One `changelog` row: a transition of one patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The patch.
    pub patch_id: String,
    /// The attempt.
    pub attempt: u32,
    /// `recorded`, `archived` or `expired`.
    pub event: String,
    /// Status before (empty for a first summary).
    pub from_status: String,
    /// Status after.
    pub to_status: String,
    /// When, unix ms.
    pub at_ms: i64,
}

/// One `outbox` row: a `Notify` owed to the alerter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The patch.
    pub patch_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The encoded `NotifyRequest`.
    pub request: Vec<u8>,
    /// W3C traceparent of the `Record` call, empty when untraced.
    pub traceparent: String,
    /// Failed tries so far.
    pub tries: u32,
}

/// A notification to queue with a recorded attempt.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// The encoded `NotifyRequest`.
    pub request: Vec<u8>,
    /// W3C traceparent, empty when untraced.
    pub traceparent: String,
}

/// What a recorded attempt owes, queued in the same transaction as the record.
#[derive(Debug, Clone, Default)]
pub struct Owed {
    /// The alerter's notification, when an alerter is configured.
    pub notification: Option<NewNotification>,
    /// One message per push subscription that wants this outcome.
    pub webhooks: Vec<NewWebhook>,
    /// The summary's files (name relative to its folder, contents) on a store that keeps them
    /// in the database (PostgreSQL); empty on SQLite, where they were written as files first.
    pub bodies: Vec<(String, Vec<u8>)>,
}

/// The index on the store `store.url` names; cheap to clone, every call blocking (use from
/// `spawn_blocking`).
#[derive(Clone)]
pub enum Index {
    /// The embedded SQLite file.
    Sqlite(SqliteIndex),
    /// A PostgreSQL database.
    Postgres(PgIndex),
}

/// The methods of [`Index`], each passed on to the backend's method of the same name.
macro_rules! dispatch {
    ($( $(#[$meta:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; )*) => {
        impl Index {
            $(
                $(#[$meta])*
                pub fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Self::Sqlite(index) => index.$name($($arg),*),
                        Self::Postgres(index) => index.$name($($arg),*),
                    }
                }
            )*
        }
    };
}

dispatch! {
    /// After a failed write: a fresh connection (SQLite), nothing (PostgreSQL's pool).
    fn reopen(&self) -> Result<(), SummarizerError>;
    /// One real committed write: the storage probe.
    fn probe(&self, now_ms: i64) -> Result<(), SummarizerError>;
    /// The status recorded for (patch id, attempt), if any.
    fn attempt_status(&self, patch_id: &str, attempt: u32) -> Result<Option<String>, SummarizerError>;
    /// The row of `patch_id`.
    fn get(&self, patch_id: &str) -> Result<Option<SummaryRow>, SummarizerError>;
    /// See [`SqliteIndex::commit_record`].
    fn commit_record(&self, row: &SummaryRow, attempt: u32, attempt_status: &str, from_status: &str, owed: Owed, changelog_len: usize) -> Result<bool, SummarizerError>;
    /// See [`SqliteIndex::import`].
    fn import(&self, row: &SummaryRow, attempts: &[(u32, String)]) -> Result<(), SummarizerError>;
    /// See [`SqliteIndex::list`].
    fn list(&self, target: Option<&str>, status: Option<&str>, offset: usize, limit: usize) -> Result<(Vec<SummaryRow>, usize), SummarizerError>;
    /// Every target with at least one summary or transition.
    fn targets(&self) -> Result<Vec<String>, SummarizerError>;
    /// See [`SqliteIndex::manifest_rows`].
    fn manifest_rows(&self, target: &str) -> Result<(Vec<SummaryRow>, Vec<Transition>), SummarizerError>;
    /// Live summaries that ended before `cutoff_ms`.
    fn archive_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError>;
    /// Archived summaries that ended before `cutoff_ms`.
    fn expired_candidates(&self, cutoff_ms: i64) -> Result<Vec<SummaryRow>, SummarizerError>;
    /// Points `row` at its archive folder and logs the transition.
    fn mark_archived(&self, row: &SummaryRow, dir: &str, at_ms: i64, changelog_len: usize) -> Result<(), SummarizerError>;
    /// Points `patch_id` at `dir` without a transition.
    fn set_dir(&self, patch_id: &str, dir: &str, archived: bool) -> Result<(), SummarizerError>;
    /// Every summary row.
    fn all(&self) -> Result<Vec<SummaryRow>, SummarizerError>;
    /// Drops `row`; its attempts stay recorded.
    fn mark_expired(&self, row: &SummaryRow, at_ms: i64, changelog_len: usize) -> Result<(), SummarizerError>;
    /// Up to `limit` notifications due at `now_ms`, oldest first.
    fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, SummarizerError>;
    /// See [`SqliteIndex::outbox_claim`].
    fn outbox_claim(&self, claim: &Claim) -> Result<Vec<OutboxRow>, SummarizerError>;
    /// See [`SqliteIndex::outbox_next_due`].
    fn outbox_next_due(&self) -> Result<Option<i64>, SummarizerError>;
    /// Notifications still owed.
    fn outbox_len(&self) -> Result<u64, SummarizerError>;
    /// See [`SqliteIndex::outbox_oldest_ms`].
    fn outbox_oldest_ms(&self) -> Result<Option<i64>, SummarizerError>;
    /// See [`SqliteIndex::outbox_settle`].
    fn outbox_settle(&self, claimant: &str, outcomes: &[Outcome<()>]) -> Result<(), SummarizerError>;
    /// See [`SqliteIndex::webhooks_claim`].
    fn webhooks_claim(&self, claim: &Claim, lane: Option<&str>) -> Result<Vec<WebhookRow>, SummarizerError>;
    /// See [`SqliteIndex::webhooks_next_due`].
    fn webhooks_next_due(&self, lane: Option<&str>) -> Result<Option<i64>, SummarizerError>;
    /// Per subscription key: pending messages and the oldest's queue time.
    fn webhook_backlogs(&self) -> Result<Vec<(String, u64, i64)>, SummarizerError>;
    /// Every pending message, in record order.
    fn webhooks_pending(&self) -> Result<Vec<WebhookRow>, SummarizerError>;
    /// Pending messages and dead letters, counted.
    fn webhook_counts(&self) -> Result<(u64, u64), SummarizerError>;
    /// Every dead letter, oldest first.
    fn webhook_dead_letters(&self) -> Result<Vec<DeadLetter>, SummarizerError>;
    /// The subscriptions whose receiver answered 410 Gone.
    fn webhooks_gone(&self) -> Result<Vec<(String, String)>, SummarizerError>;
    /// See [`SqliteIndex::webhook_set_gone`].
    fn webhook_set_gone(&self, key: &str, url_sha256: Option<&str>, at_ms: i64) -> Result<(), SummarizerError>;
    /// See [`SqliteIndex::webhook_prune_dead_letters`].
    fn webhook_prune_dead_letters(&self, before_ms: i64, keep: u64) -> Result<usize, SummarizerError>;
    /// Records a round of webhook tries in one transaction.
    fn webhooks_settle(&self, claimant: &str, outcomes: &[Outcome<()>]) -> Result<(), SummarizerError>;
}

fn u32_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The columns of a [`SummaryRow`], in the order `summary_of!` reads them.
const SUMMARY_COLUMNS: &str = "patch_id, target, status, attempt, attempts, trace_id, created_ms, \
     finished_ms, recorded_ms, dir, archived";

/// A row not claimed, or whose claim ran out by `?1` / `$1` (now).
const CLAIMABLE: &str = "(claim_until IS NULL OR claim_until <= ?1)";
/// When a row may be claimed: when due, or when its claim runs out if that is later.
const FREE_AT: &str = "CASE WHEN claim_until > next_at_ms THEN claim_until ELSE next_at_ms END";

/// The transition a newly recorded `attempt` of `row` makes, from `from_status`.
fn recorded(row: &SummaryRow, attempt: u32, from_status: &str, attempt_status: &str) -> Transition {
    Transition {
        patch_id: row.patch_id.clone(),
        attempt,
        event: "recorded".to_owned(),
        from_status: from_status.to_owned(),
        to_status: attempt_status.to_owned(),
        at_ms: row.recorded_ms,
    }
}

fn event(row: &SummaryRow, name: &str, at_ms: i64) -> Transition {
    Transition {
        patch_id: row.patch_id.clone(),
        attempt: row.attempt,
        event: name.to_owned(),
        from_status: row.status.clone(),
        to_status: row.status.clone(),
        at_ms,
    }
}
