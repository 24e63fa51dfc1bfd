//! Dry runs in flight: the router asks one executor session to plan a patch without writing
//! it (`RouterMessage.dry_run`) and waits for that session's `DryRunResult`.
//!
//! Nothing about a dry run is stored: no patch row, no lease, no event, no outbox entry. The
//! pending map is bounded ([`MAX_PENDING`]); an answer is taken only from the session that was
//! asked and only for a request still waiting (a late, foreign or unknown answer is dropped);
//! a session that goes away fails its pending requests at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ghost_core::ApplyReport;
use tokio::sync::oneshot;

use crate::error::RouterError;

/// Dry runs waiting for an executor at once; more are refused with `RESOURCE_EXHAUSTED`.
pub const MAX_PENDING: usize = 256;
/// How long the router waits for the executor's answer (it may first wait for the patch being
/// applied on that target to finish).
pub const DRY_RUN_DEADLINE: Duration = Duration::from_secs(30);

struct Pending {
    owner: String,
    answer: oneshot::Sender<ApplyReport>,
}

/// The dry runs waiting for an executor's answer.
#[derive(Default)]
pub struct DryRuns {
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
}

/// A registered request; dropping it forgets the request.
pub struct Ticket<'a> {
    dry_runs: &'a DryRuns,
    /// The id sent to the executor.
    pub request_id: u64,
    answer: Option<oneshot::Receiver<ApplyReport>>,
}

impl DryRuns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a request to the session `owner`; refused beyond [`MAX_PENDING`].
    pub fn register(&self, owner: &str) -> Result<Ticket<'_>, RouterError> {
        let (answer, receiver) = oneshot::channel();
        let mut pending = self.lock();
        if pending.len() >= MAX_PENDING {
            return Err(RouterError::ResourceExhausted(format!(
                "{MAX_PENDING} dry runs are waiting for executors already; try again later"
            )));
        }
        // Starts at 1: 0 is what an executor that left the field out would send.
        let request_id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        pending.insert(
            request_id,
            Pending {
                owner: owner.to_owned(),
                answer,
            },
        );
        Ok(Ticket {
            dry_runs: self,
            request_id,
            answer: Some(receiver),
        })
    }

    /// Hands `report` to the request `request_id` if the session `owner` was asked it;
    /// false when dropped (unknown, late, or another session's).
    pub fn answer(&self, owner: &str, request_id: u64, report: ApplyReport) -> bool {
        let mut pending = self.lock();
        if pending
            .get(&request_id)
            .is_none_or(|waiting| waiting.owner != owner)
        {
            return false;
        }
        let Some(waiting) = pending.remove(&request_id) else {
            return false;
        };
        drop(pending);
        waiting.answer.send(report).is_ok()
    }

    /// Fails every request asked of the session `owner` (it disconnected).
    pub fn forget_session(&self, owner: &str) {
        self.lock().retain(|_, waiting| waiting.owner != owner);
    }
}

impl Ticket<'_> {
    /// The executor's answer within `deadline`.
    pub async fn answer(&mut self, deadline: Duration) -> Result<ApplyReport, RouterError> {
        let Some(receiver) = self.answer.take() else {
            return Err(RouterError::Internal(
                "dry run answer awaited twice".to_owned(),
            ));
        };
        match tokio::time::timeout(deadline, receiver).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(_)) => Err(RouterError::Unavailable(
                "the executor disconnected before answering the dry run".to_owned(),
            )),
            Err(_) => Err(RouterError::DeadlineExceeded(format!(
                "the executor did not answer the dry run within {}s",
                deadline.as_secs()
            ))),
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.dry_runs.lock().remove(&self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghost_core::Status;

    #[tokio::test]
    async fn only_the_asked_session_answers_and_a_late_answer_is_dropped() {
        let dry_runs = DryRuns::default();
        let mut ticket = dry_runs.register("exec#1").expect("room");
        let id = ticket.request_id;
        let report = ApplyReport::ended(Status::Succeeded, "");
        assert!(!dry_runs.answer("exec#2", id, report.clone()), "foreign");
        assert!(
            !dry_runs.answer("exec#1", id + 1, report.clone()),
            "unknown"
        );
        assert!(dry_runs.answer("exec#1", id, report.clone()));
        let got = ticket.answer(Duration::from_secs(5)).await.expect("answer");
        assert_eq!(got.status, Status::Succeeded);
        drop(ticket);
        assert!(!dry_runs.answer("exec#1", id, report), "late");
        assert!(dry_runs.lock().is_empty());
    }

    #[tokio::test]
    async fn a_vanished_session_fails_its_requests_at_once() {
        let dry_runs = DryRuns::default();
        let mut ticket = dry_runs.register("exec#1").expect("room");
        dry_runs.forget_session("exec#1");
        assert!(matches!(
            ticket.answer(Duration::from_secs(5)).await,
            Err(RouterError::Unavailable(_))
        ));
    }
}
