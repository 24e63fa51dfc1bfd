//! What operators do to patches and targets (cancel, retry, revert, pause, resume) and the
//! fleet reads (targets, executors, alerts, stats), each after the caller's scope is checked.

use ghost_core::TargetName;

use super::{Accepted, MAX_REVERTS_PER_CALLER, PatchView, Patches, Reverted, TargetView, parse_id};
use crate::auth::{Principal, Scope};
use crate::error::GatewayError;
use crate::fleet::{AlertList, ExecutorList, Stats};

impl Patches {
    /// Cancels a patch.
    pub async fn cancel(
        &self,
        caller: &Principal,
        raw_id: &str,
    ) -> Result<PatchView, GatewayError> {
        caller.require(Scope::Admin)?;
        self.visible(caller, raw_id).await?;
        self.queue
            .cancel(&parse_id(raw_id)?, &format!("gateway:{}", caller.name))
            .await
    }

    /// Queues another attempt of a finished patch.
    pub async fn retry(&self, caller: &Principal, raw_id: &str) -> Result<PatchView, GatewayError> {
        caller.require(Scope::Admin)?;
        self.visible(caller, raw_id).await?;
        self.queue
            .retry(&parse_id(raw_id)?, &format!("gateway:{}", caller.name))
            .await
    }

    /// Queues the revert of a succeeded patch: admin scope, or submit scope on the patch's
    /// target. A patch on a target the caller may not touch is answered 404 like `GET`, so its
    /// existence is not revealed. The router asks the target's executor first (at most
    /// [`MAX_REVERTS_PER_CALLER`] such calls per credential at once); files changed since the
    /// patch ended refuse it ([`GatewayError::RevertConflicts`]). The answer has the shape of a
    /// submit's, `replayed` when the revert was queued before.
    pub async fn revert(&self, caller: &Principal, raw_id: &str) -> Result<Accepted, GatewayError> {
        caller.require(Scope::Submit)?;
        let (original, _) = self.visible(caller, raw_id).await?;
        let Some(_place) = self.reverts.take(&caller.name, MAX_REVERTS_PER_CALLER) else {
            tracing::warn!(caller = %caller.name, "reverts of one credential at their cap; refused");
            return Err(GatewayError::TooManyRequests { retry_after_s: 1 });
        };
        tracing::info!(
            target: "audit",
            caller = %caller.name,
            target_name = %original.target,
            patch_id = %raw_id,
            "revert requested: the workspace is checked for this caller"
        );
        let actor = format!("gateway:{}", caller.name);
        let answer = self.queue.revert(&parse_id(raw_id)?, &actor).await;
        let (outcome, error) = match &answer {
            Ok(Reverted::Queued(view)) if view.created => ("queued", String::new()),
            Ok(Reverted::Queued(_)) => ("replay", String::new()),
            Ok(Reverted::Conflicts { error, .. }) => ("conflict", error.clone()),
            Err(err) => ("refused", err.to_string()),
        };
        tracing::info!(
            target: "audit",
            caller = %caller.name,
            target_name = %original.target,
            patch_id = %raw_id,
            outcome,
            error = %error,
            "revert answered"
        );
        match answer? {
            Reverted::Queued(view) => Ok(Accepted {
                id: view.id,
                target: view.target,
                status: view.status,
                attempt: view.attempt,
                trace_id: view.trace_id,
                replayed: !view.created,
                shape: "v1".to_owned(),
                ignored: Vec::new(),
                warnings: Vec::new(),
                id_derived: false,
            }),
            Reverted::Conflicts { error, conflicts } => {
                Err(GatewayError::RevertConflicts { error, conflicts })
            }
        }
    }

    /// Targets the caller may see.
    pub async fn targets(&self, caller: &Principal) -> Result<Vec<TargetView>, GatewayError> {
        caller.require(Scope::Read)?;
        let mut targets = self.queue.targets().await?;
        targets.retain(|target| caller.may_touch(&target.target));
        Ok(targets)
    }

    /// Pauses (`paused`) or resumes a target; answers its queue afterwards.
    pub async fn set_paused(
        &self,
        caller: &Principal,
        raw_target: &str,
        paused: bool,
    ) -> Result<TargetView, GatewayError> {
        caller.require(Scope::Admin)?;
        let target = TargetName::parse(raw_target).map_err(|err| {
            GatewayError::BadRequest(format!("invalid target {raw_target:?}: {err}"))
        })?;
        caller.allow_target(target.as_str())?;
        self.queue
            .set_paused(&target, paused, &format!("gateway:{}", caller.name))
            .await?;
        let view = self
            .queue
            .targets()
            .await?
            .into_iter()
            .find(|view| view.target == target.as_str())
            .unwrap_or_else(|| TargetView::empty(target.as_str()));
        Ok(view)
    }

    /// Executors connected now that serve a target the caller may see.
    pub async fn executors(&self, caller: &Principal) -> Result<ExecutorList, GatewayError> {
        caller.require(Scope::Read)?;
        let mut list = self.queue.executors().await?;
        list.executors
            .retain(|executor| executor.targets.iter().any(|t| caller.may_touch(t)));
        Ok(list)
    }

    /// Alerts active now, from the alerter; 503 when none is configured.
    pub async fn alerts(&self, caller: &Principal) -> Result<AlertList, GatewayError> {
        caller.require(Scope::Read)?;
        let feed = self
            .alerts
            .as_ref()
            .ok_or(GatewayError::NotConfigured("alerter_url"))?;
        let mut list = feed.alerts().await?;
        list.alerts.retain(|alert| {
            alert
                .labels
                .get("target")
                .is_none_or(|target| caller.may_touch(target))
        });
        if caller.is_limited() {
            list.slack_backlog.clear();
        }
        Ok(list)
    }

    /// Chart aggregates since `since_unix_ms` (0: the router's default window).
    pub async fn stats(
        &self,
        caller: &Principal,
        target: Option<&str>,
        since_unix_ms: i64,
    ) -> Result<Stats, GatewayError> {
        caller.require(Scope::Read)?;
        let target = target
            .map(|raw| {
                caller.allow_target(raw)?;
                TargetName::parse(raw).map_err(|err| {
                    GatewayError::BadRequest(format!("invalid target {raw:?}: {err}"))
                })
            })
            .transpose()?;
        self.queue.stats(target.as_ref(), since_unix_ms).await
    }
}
