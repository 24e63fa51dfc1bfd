//! Places per credential: how many long polls, dry runs and reverts one API key may hold at
//! once, shared by the HTTP API and MCP.

use std::sync::Arc;

/// Long polls (HTTP `?wait=`, MCP `get_patch` with `wait`, `submit_patch` following) one
/// credential may hold at once; beyond, the current state is answered at once.
pub const MAX_LONG_POLLS_PER_CALLER: usize = 16;
/// Dry runs (HTTP `?dry_run=true`, MCP `check_patch`) one credential may have running at
/// once; beyond, 429.
pub const MAX_DRY_RUNS_PER_CALLER: usize = 2;
/// Reverts (HTTP `POST /v1/patches/{id}/revert`, MCP `revert_patch`) one credential may have
/// waiting for an executor's check at once; beyond, 429.
pub const MAX_REVERTS_PER_CALLER: usize = 2;

/// Places per credential name, shared by the HTTP API and MCP (whose tools run past the HTTP
/// guard's limits once the SSE answer has started).
#[derive(Clone, Default)]
pub(super) struct PerCaller {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One place taken in a [`PerCaller`]; given back when dropped.
pub(super) struct CallerPlace {
    counts: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    name: String,
}

impl PerCaller {
    /// A place for `name`, or None when it holds `max` already.
    pub(super) fn take(&self, name: &str, max: usize) -> Option<CallerPlace> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let held = counts.entry(name.to_owned()).or_default();
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(CallerPlace {
            counts: Arc::clone(&self.counts),
            name: name.to_owned(),
        })
    }
}

impl Drop for CallerPlace {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = counts.get_mut(&self.name) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.name);
            }
        }
    }
}
