//! Reading patches back: one patch (at once or by long poll, with its summary once it has
//! ended), its events and a filtered page, each only if the caller may see the target.

use super::{
    EventView, ListFilter, MAX_LONG_POLLS_PER_CALLER, PatchDetail, PatchPage, PatchView, Patches,
    cut_middle, parse_id,
};
use crate::auth::{Principal, Scope};
use crate::error::GatewayError;
use crate::report::ReportView;

impl Patches {
    pub(super) async fn visible(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<(PatchView, Option<ReportView>), GatewayError> {
        let id = parse_id(raw_id)?;
        let (view, report) = self.queue.get(&id).await?;
        if !caller.may_touch(&view.target) {
            // Do not reveal patches of targets the caller cannot see.
            return Err(GatewayError::NotFound(raw_id.to_owned()));
        }
        Ok((view, report))
    }

    /// A patch and, once it has ended, its summary.
    pub async fn detail(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<PatchDetail, GatewayError> {
        caller.require(Scope::Read)?;
        let (view, report) = self.visible(caller, raw_id).await?;
        self.with_summary(raw_id, view, report).await
    }

    /// A patch as soon as it has ended (with its summary when the summarizer has written it),
    /// or its current state when `wait` is over. The caller must be able to see the patch
    /// before anything waits.
    pub async fn detail_waiting(
        &self,
        caller: &Principal,
        raw_id: &str,
        wait: std::time::Duration,
    ) -> Result<PatchDetail, GatewayError> {
        caller.require(Scope::Read)?;
        // A runtime key revoked since the request was authenticated gets nothing more (an MCP
        // follow calls this once per slice, also when its long polls are at their cap).
        if let (Some(keys), Some(hash)) = (&self.revocations, caller.runtime_key())
            && !keys.holds(&hash)
        {
            tracing::info!(caller = %caller.name, patch_id = %raw_id, "read refused: its api key was revoked");
            return Err(GatewayError::Unauthorized);
        }
        let (view, report) = self.visible(caller, raw_id).await?;
        let wait = wait.min(self.max_wait);
        if view.status.is_terminal() || wait.is_zero() {
            return self.with_summary(raw_id, view, report).await;
        }
        let Some(_place) = self
            .long_polls
            .take(&caller.name, MAX_LONG_POLLS_PER_CALLER)
        else {
            // Over the caller's share: the current state now, which is a valid answer to a
            // wait (the caller polls again), rather than an error it must handle.
            tracing::info!(caller = %caller.name, patch_id = %raw_id, "long polls of one credential at their cap; answered at once");
            return self.with_summary(raw_id, view, report).await;
        };
        let id = parse_id(raw_id)?;
        let waiting = self.queue.wait(&id, wait);
        let (view, report) = match (&self.revocations, caller.runtime_key()) {
            (Some(keys), Some(hash)) => tokio::select! {
                answer = waiting => answer?,
                () = keys.revoked(hash) => {
                    tracing::info!(caller = %caller.name, patch_id = %raw_id, "long poll ended: its api key was revoked");
                    return Err(GatewayError::Unauthorized);
                }
            },
            _ => waiting.await?,
        };
        self.with_summary(raw_id, view, report).await
    }

    async fn with_summary(
        &self,
        raw_id: &str,
        view: PatchView,
        report: Option<ReportView>,
    ) -> Result<PatchDetail, GatewayError> {
        let summary = if view.status.is_terminal() {
            let id = parse_id(raw_id)?;
            match self.summaries.markdown(&id).await {
                Ok(text) => text.map(|text| cut_middle(&text, self.summary_max_chars)),
                // The patch's state is the router's and is known; a summarizer that cannot be
                // reached only means no summary yet, not a failed read.
                Err(GatewayError::Unavailable(detail)) => {
                    tracing::warn!(patch_id = %id, error = %detail, "summarizer unavailable; answered without the summary");
                    None
                }
                Err(err) => return Err(err),
            }
        } else {
            None
        };
        Ok(PatchDetail {
            view,
            summary,
            report,
        })
    }

    /// The audit trail of a patch.
    pub async fn events(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<Vec<EventView>, GatewayError> {
        caller.require(Scope::Read)?;
        self.visible(caller, raw_id).await?;
        self.queue.events(&parse_id(raw_id)?).await
    }

    /// A filtered page of patches the caller may see.
    pub async fn list(
        &self,
        caller: &Principal,
        filter: &ListFilter,
    ) -> Result<PatchPage, GatewayError> {
        caller.require(Scope::Read)?;
        if let Some(target) = &filter.target {
            caller.allow_target(target)?;
        }
        let mut page = self.queue.list(filter).await?;
        page.patches.retain(|patch| caller.may_touch(&patch.target));
        Ok(page)
    }
}
