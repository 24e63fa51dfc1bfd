//! The `/ghost` verbs that only read: `status`, `queue`, `patch`, `summary`, `targets`,
//! `executors`, `alerts` and `health`, each asking the router, the summarizer, the alert
//! lifecycle or the health monitor and answering in mrkdwn.

use std::fmt::Write as _;

use ghost_proto::router::v1 as router_wire;
use ghost_proto::summarizer::v1 as summarizer_wire;

use super::{ANSWER_CHARS, Commands, Invocation, VerbError, downstream, status_name};
use crate::lifecycle::human;
use crate::mrkdwn::{escape, text as mrkdwn_text};

/// Patches listed by `queue`.
const QUEUE_PAGE: u32 = 20;

/// Most targets one `queue` in a team channel asks the router about.
const MAX_CHANNEL_TARGETS: usize = 10;
/// Page size when `queue` in a team channel looks through all queued patches for the ones
/// matching a target prefix (`WEB-*`).
const QUEUE_SCAN_PAGE: u32 = 100;
/// Most pages one such look reads (so at most 1,000 queued patches are looked through).
const QUEUE_SCAN_PAGES: usize = 10;

impl Commands {
    pub(super) async fn status(&self) -> Result<String, VerbError> {
        let mut text = String::from("*Ghost Runner status*\n");
        match self
            .router()?
            .list_targets(router_wire::ListTargetsRequest {})
            .await
        {
            Ok(answer) => {
                let targets = answer.into_inner().targets;
                let queued: u32 = targets.iter().map(|t| t.queued).sum();
                let online = targets.iter().filter(|t| t.executor_online).count();
                let _ = writeln!(
                    text,
                    "• {} targets, {queued} patches queued, {online} with an executor online",
                    targets.len()
                );
            }
            Err(status) => {
                let _ = writeln!(
                    text,
                    "• targets: {}",
                    downstream("router")(status).to_mrkdwn()
                );
            }
        }
        let request = router_wire::ListRequest {
            status: router_wire::PatchStatus::Queued as i32,
            page_size: 100,
            ..Default::default()
        };
        let queued = self
            .router()?
            .list(request)
            .await
            .map_err(downstream("router"))?
            .into_inner()
            .patches
            .len();
        let _ = writeln!(text, "• queued patches: {queued}");
        let alerts = self.lifecycle.active().await;
        let _ = writeln!(text, "• firing alerts: {}", alerts.len());
        let board = self.board.snapshot();
        let down: Vec<&String> = board
            .iter()
            .filter(|(_, seen)| seen.state == "down")
            .map(|(name, _)| name)
            .collect();
        if down.is_empty() {
            let _ = writeln!(text, "• health: {} watched, none down", board.len());
        } else {
            let _ = writeln!(text, "• health: down: {}", escape(&format!("{down:?}")));
        }
        Ok(text)
    }

    /// `queue` without a target: the targets the routes send to the invoking channel (by id,
    /// or by name with or without `#`), else every target.
    pub(super) async fn channel_queue(&self, invocation: &Invocation) -> Result<String, VerbError> {
        let routed = self.patches.router().targets_by_channel();
        let names = [
            invocation.channel_id.clone(),
            invocation.channel_name.clone(),
            format!("#{}", invocation.channel_name),
        ];
        let patterns: Vec<String> = routed
            .iter()
            .filter(|(channel, _)| !channel.is_empty() && names.contains(channel))
            .flat_map(|(_, targets)| targets.iter().cloned())
            .collect();
        if patterns.is_empty() {
            return self.queue("").await;
        }
        let exact: Vec<&str> = patterns
            .iter()
            .filter(|p| !p.ends_with('*'))
            .map(String::as_str)
            .collect();
        let prefixes: Vec<&str> = patterns
            .iter()
            .filter_map(|p| p.strip_suffix('*'))
            .collect();
        let (patches, more) = self.queued_on(&exact, &prefixes).await?;
        let scope = patterns
            .iter()
            .map(|p| format!("`{}`", escape(p)))
            .collect::<Vec<_>>()
            .join(", ");
        if patches.is_empty() {
            return Ok(if more {
                format!("📭 nothing queued on {scope} among the patches looked at … and more")
            } else {
                format!("📭 nothing queued on {scope}")
            });
        }
        Ok(queue_answer(&scope, &patches, more))
    }

    /// The queued patches of the targets `exact` and of those starting with one of `prefixes`
    /// (at most [`QUEUE_PAGE`] each, [`MAX_CHANNEL_TARGETS`] targets), and whether there are
    /// more than shown.
    async fn queued_on(
        &self,
        exact: &[&str],
        prefixes: &[&str],
    ) -> Result<(Vec<router_wire::PatchState>, bool), VerbError> {
        let mut patches = Vec::new();
        let mut calls: Vec<&str> = exact.to_vec();
        if !prefixes.is_empty() {
            calls.push("");
        }
        // Asking for more targets than the bound is cut, and said so.
        let mut more = calls.len() > MAX_CHANNEL_TARGETS;
        for target in calls.into_iter().take(MAX_CHANNEL_TARGETS) {
            // One page for a target; for the prefixes, pages through every target's queue
            // (bounded) until a page of matches is found, so the first patches of other
            // targets cannot hide them.
            let scan = target.is_empty();
            let mut page_token = String::new();
            let mut found = 0u32;
            for page in 0..QUEUE_SCAN_PAGES {
                let request = router_wire::ListRequest {
                    target: target.to_owned(),
                    status: router_wire::PatchStatus::Queued as i32,
                    page_size: if scan { QUEUE_SCAN_PAGE } else { QUEUE_PAGE },
                    page_token: std::mem::take(&mut page_token),
                };
                let answer = self
                    .router()?
                    .list(request)
                    .await
                    .map_err(downstream("router"))?
                    .into_inner();
                for patch in answer.patches {
                    let wanted = !scan
                        || prefixes
                            .iter()
                            .any(|prefix| patch.target.starts_with(prefix));
                    if !wanted
                        || patches
                            .iter()
                            .any(|p: &router_wire::PatchState| p.id == patch.id)
                    {
                        continue;
                    }
                    if found == QUEUE_PAGE {
                        more = true;
                        break;
                    }
                    found += 1;
                    patches.push(patch);
                }
                let last_page = !scan || page + 1 == QUEUE_SCAN_PAGES || found == QUEUE_PAGE;
                if answer.next_page_token.is_empty() {
                    break;
                }
                if last_page {
                    more = true;
                    break;
                }
                page_token = answer.next_page_token;
            }
        }
        Ok((patches, more))
    }

    pub(super) async fn queue(&self, target: &str) -> Result<String, VerbError> {
        let request = router_wire::ListRequest {
            target: target.to_owned(),
            status: router_wire::PatchStatus::Queued as i32,
            page_size: QUEUE_PAGE,
            ..Default::default()
        };
        let answer = self
            .router()?
            .list(request)
            .await
            .map_err(downstream("router"))?
            .into_inner();
        let scope = if target.is_empty() {
            "all targets".to_owned()
        } else {
            format!("`{}`", escape(target))
        };
        if answer.patches.is_empty() {
            return Ok(format!("📭 nothing queued on {scope}"));
        }
        Ok(queue_answer(
            &scope,
            &answer.patches,
            !answer.next_page_token.is_empty(),
        ))
    }

    pub(super) async fn patch(&self, id: &str) -> Result<String, VerbError> {
        let state = self
            .router()?
            .get(router_wire::GetRequest { id: id.to_owned() })
            .await
            .map_err(downstream("router"))?
            .into_inner()
            .state
            .unwrap_or_default();
        let mut text = format!(
            "*`{}`* on {}: *{}* (attempt {})\n{}",
            escape(&state.id),
            escape(&state.target),
            status_name(state.status),
            state.attempt,
            mrkdwn_text(&state.description, 500)
        );
        if !state.error.is_empty() {
            let _ = write!(text, "\nerror: {}", mrkdwn_text(&state.error, 1_000));
        }
        if !state.trace_id.is_empty() {
            let _ = write!(text, "\ntrace {}", escape(&state.trace_id));
        }
        Ok(text)
    }

    pub(super) async fn summary(&self, id: &str) -> Result<String, VerbError> {
        let mut summarizer = self
            .summarizer
            .clone()
            .ok_or(VerbError::NotConfigured("summarizer"))?;
        let summary = summarizer
            .get(summarizer_wire::GetRequest {
                patch_id: id.to_owned(),
            })
            .await
            .map_err(downstream("summarizer"))?
            .into_inner()
            .summary
            .unwrap_or_default();
        Ok(format!(
            "*Summary of `{}`* ({})\n{}",
            escape(id),
            status_name(summary.status),
            crate::mrkdwn::truncate(
                &crate::mrkdwn::from_markdown(&summary.markdown),
                ANSWER_CHARS - 100
            )
        ))
    }

    pub(super) async fn targets(&self) -> Result<String, VerbError> {
        let targets = self
            .router()?
            .list_targets(router_wire::ListTargetsRequest {})
            .await
            .map_err(downstream("router"))?
            .into_inner()
            .targets;
        if targets.is_empty() {
            return Ok("no targets known yet".to_owned());
        }
        let mut text = String::from("*Targets*\n");
        for target in targets {
            let _ = writeln!(
                text,
                "• `{}`: {} queued{}{}{}",
                escape(&target.target),
                target.queued,
                if target.paused { ", ⏸️ paused" } else { "" },
                if target.executor_online {
                    ", executor online"
                } else {
                    ", no executor"
                },
                if target.running_patch_id.is_empty() {
                    String::new()
                } else {
                    format!(", running `{}`", escape(&target.running_patch_id))
                }
            );
        }
        Ok(text)
    }

    pub(super) async fn executors(&self) -> Result<String, VerbError> {
        let executors = self
            .router()?
            .list_executors(router_wire::ListExecutorsRequest {})
            .await
            .map_err(downstream("router"))?
            .into_inner()
            .executors;
        if executors.is_empty() {
            return Ok("no executors connected".to_owned());
        }
        let now = self.clock.now_ms();
        let mut text = String::from("*Executors*\n");
        for executor in executors {
            let _ = writeln!(
                text,
                "• `{}` serving {} — seen {} ago, running {}",
                escape(&executor.executor_id),
                escape(&executor.targets.join(", ")),
                human(now - executor.last_seen_unix_ms),
                escape(&format!("{:?}", executor.running_patch_ids))
            );
        }
        Ok(text)
    }

    pub(super) async fn alerts(&self) -> String {
        let alerts = self.lifecycle.active().await;
        let silences = self.lifecycle.silences().await;
        let now = self.clock.now_ms();
        let mut text = String::new();
        if alerts.is_empty() {
            text.push_str("✅ no active alerts\n");
        } else {
            text.push_str("*Active alerts*\n");
            for alert in &alerts {
                let ack = alert.ack.as_ref().map_or(String::new(), |ack| {
                    format!(
                        ", acked by <@{}> {} ago",
                        escape(&ack.by),
                        human(now - ack.at_ms)
                    )
                });
                let _ = writeln!(
                    text,
                    "• `{}` ({}, {:?}) for {}{ack} — {}",
                    escape(&alert.key),
                    alert.severity.as_str(),
                    alert.phase,
                    human(now - alert.raised_ms),
                    escape(&alert.summary)
                );
            }
        }
        for silence in silences {
            let _ = writeln!(
                text,
                "🔕 silence #{} on `{}` by <@{}>, {} left",
                silence.id,
                escape(&silence.matcher),
                escape(&silence.created_by),
                human(silence.until_ms - now)
            );
        }
        text
    }

    pub(super) fn health(&self) -> String {
        let board = self.board.snapshot();
        if board.is_empty() {
            return "nothing watched yet (no services configured, or no check done yet)".to_owned();
        }
        let mut text = String::from("*Health*\n");
        for (name, seen) in board {
            let icon = match seen.state {
                "up" => "🟢",
                "down" => "🔴",
                "failing" => "🟠",
                _ => "⚪",
            };
            let _ = writeln!(
                text,
                "{icon} `{}` {} {}",
                escape(&name),
                seen.state,
                escape(&seen.detail)
            );
        }
        text
    }
}

/// "*Queue of {scope}*" and one line per patch, "… and more" when `more`.
fn queue_answer(scope: &str, patches: &[router_wire::PatchState], more: bool) -> String {
    let mut text = format!("*Queue of {scope}*\n");
    for patch in patches {
        let _ = writeln!(
            text,
            "• `{}` on {} — {}",
            escape(&patch.id),
            escape(&patch.target),
            mrkdwn_text(&patch.description, 80)
        );
    }
    if more {
        let _ = writeln!(text, "… and more");
    }
    text
}
