//! A router stand-in for unit tests of the gateway's logic: it serves the targets it is given
//! (counting `ListTargets` calls) and fails every submission, either as a router that is down
//! or as one that does not take patches at all. Everything else is not implemented.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ghost_core::{PatchId, TargetName};

use super::{EventView, ListFilter, PatchPage, PatchQueue, PatchView, SummaryStore, TargetView};
use crate::error::GatewayError;
use crate::fleet::{ExecutorList, Stats};
use crate::report::ReportView;

/// See the module doc.
#[derive(Default)]
pub(crate) struct FakeRouter {
    /// Targets an executor serves.
    pub served: Mutex<Vec<String>>,
    /// `ListTargets` calls so far.
    pub calls: AtomicUsize,
    /// Submissions fail as from a router that is down (internal error) instead of 501.
    pub submit_fails: bool,
}

impl FakeRouter {
    /// Executors serve `served`.
    pub(crate) fn serving(served: &[&str]) -> Self {
        Self {
            served: Mutex::new(served.iter().map(|name| (*name).to_owned()).collect()),
            ..Self::default()
        }
    }

    /// Every submission fails with an internal error.
    pub(crate) fn failing() -> Self {
        Self {
            submit_fails: true,
            ..Self::default()
        }
    }
}

fn unimplemented<T>() -> Result<T, GatewayError> {
    Err(GatewayError::NotImplemented("test"))
}

#[tonic::async_trait]
impl PatchQueue for FakeRouter {
    async fn targets(&self) -> Result<Vec<TargetView>, GatewayError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let served = self
            .served
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok(served
            .iter()
            .map(|name| TargetView {
                executor_online: true,
                ..TargetView::empty(name)
            })
            .collect())
    }
    async fn submit(
        &self,
        _: &ghost_core::Patch,
        _: &[String],
        _: &str,
    ) -> Result<PatchView, GatewayError> {
        if self.submit_fails {
            return Err(GatewayError::Internal("router failed".to_owned()));
        }
        unimplemented()
    }
    async fn get(&self, _: &PatchId) -> Result<(PatchView, Option<ReportView>), GatewayError> {
        unimplemented()
    }
    async fn wait(
        &self,
        _: &PatchId,
        _: std::time::Duration,
    ) -> Result<(PatchView, Option<ReportView>), GatewayError> {
        unimplemented()
    }
    async fn dry_run(
        &self,
        _: &ghost_core::Patch,
    ) -> Result<crate::dry_run::DryRunReport, GatewayError> {
        unimplemented()
    }
    async fn revert(&self, _: &PatchId, _: &str) -> Result<super::Reverted, GatewayError> {
        unimplemented()
    }
    async fn events(&self, _: &PatchId) -> Result<Vec<EventView>, GatewayError> {
        unimplemented()
    }
    async fn list(&self, _: &ListFilter) -> Result<PatchPage, GatewayError> {
        unimplemented()
    }
    async fn cancel(&self, _: &PatchId, _: &str) -> Result<PatchView, GatewayError> {
        unimplemented()
    }
    async fn retry(&self, _: &PatchId, _: &str) -> Result<PatchView, GatewayError> {
        unimplemented()
    }
    async fn set_paused(&self, _: &TargetName, _: bool, _: &str) -> Result<(), GatewayError> {
        unimplemented()
    }
    async fn executors(&self) -> Result<ExecutorList, GatewayError> {
        unimplemented()
    }
    async fn stats(&self, _: Option<&TargetName>, _: i64) -> Result<Stats, GatewayError> {
        unimplemented()
    }
}

#[tonic::async_trait]
impl SummaryStore for FakeRouter {
    async fn markdown(&self, _: &PatchId) -> Result<Option<String>, GatewayError> {
        Ok(None)
    }
}
