//! The `/ghost` verbs (and the legacy slash commands mapped onto them): parse, check the
//! operator allowlist for mutating verbs, call the router / summarizer / alert lifecycle,
//! answer in one Slack message, and write every invocation to the audit log.

mod verb;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ghost_proto::convert::status_from_wire;
use ghost_proto::router::v1 as router_wire;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::summarizer::v1 as summarizer_wire;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::TracedChannel;

use crate::clock::SharedClock;
use crate::error::AlerterError;
use crate::health::HealthBoard;
use crate::lifecycle::{Lifecycle, human};
use crate::messages::truncate;
use crate::mrkdwn::{escape, text as mrkdwn_text};
use crate::patches::Patches;
use crate::store::{AuditEntry, Store};

pub use verb::{HELP, UnknownVerb, Verb, resolve};

/// Longest silence accepted.
const MAX_SILENCE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The deadline of a revert asked of the router: past its 30 s wait for the executor.
const REVERT_DEADLINE: Duration = Duration::from_secs(35);

/// Longest answer text (Slack's message text limit is 40k; keep answers readable).
const ANSWER_CHARS: usize = 3_500;
/// Patches listed by `queue`.
const QUEUE_PAGE: u32 = 20;
/// Conflicting paths named in a refused revert's answer (the rest are counted).
const CONFLICTS_SHOWN: usize = 20;
/// Longest conflicting path shown.
const CONFLICT_PATH_CHARS: usize = 150;

/// Most targets one `queue` in a team channel asks the router about.
const MAX_CHANNEL_TARGETS: usize = 10;
/// Page size when `queue` in a team channel looks through all queued patches for the ones
/// matching a target prefix (`WEB-*`).
const QUEUE_SCAN_PAGE: u32 = 100;
/// Most pages one such look reads (so at most 1,000 queued patches are looked through).
const QUEUE_SCAN_PAGES: usize = 10;

/// Where an invocation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A slash command.
    Command,
    /// A Block Kit button.
    Button,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Button => "button",
        }
    }
}

/// One slash command or button press, already verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Slack user id.
    pub user_id: String,
    /// Slack user name.
    pub user_name: String,
    /// Slack channel id.
    pub channel_id: String,
    /// Slack channel name (without `#`), empty when Slack did not send it.
    pub channel_name: String,
    /// Slash command or button.
    pub source: Source,
    /// The slash command, e.g. `/ghost` or `/patch-status`.
    pub command: String,
    /// The text after it, e.g. `cancel fix-login`.
    pub text: String,
}

/// Why a verb failed, said to the person who ran it.
#[derive(Debug, thiserror::Error)]
enum VerbError {
    #[error("usage: `/ghost {0}`")]
    Usage(&'static str),
    #[error("the {0} is not configured for the alerter")]
    NotConfigured(&'static str),
    #[error("{0}")]
    Refused(String),
    /// A refusal already written as mrkdwn, its caller parts escaped.
    #[error("{0}")]
    RefusedMrkdwn(String),
    #[error("{service}: {message}")]
    Downstream {
        service: &'static str,
        message: String,
    },
    #[error("{0}")]
    Alerter(#[from] AlerterError),
}

impl VerbError {
    /// The message for Slack: our own usage lines as they are, anything that may quote a
    /// caller (arguments, downstream messages) escaped.
    fn to_mrkdwn(&self) -> String {
        match self {
            Self::Usage(_) | Self::NotConfigured(_) | Self::RefusedMrkdwn(_) => self.to_string(),
            _ => escape(&self.to_string()).into_owned(),
        }
    }
}

fn downstream(service: &'static str) -> impl Fn(tonic::Status) -> VerbError {
    move |status| {
        let message = match status.code() {
            tonic::Code::Unimplemented => "does not support this yet".to_owned(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                "is unavailable right now".to_owned()
            }
            tonic::Code::NotFound
            | tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::Aborted => status.message().to_owned(),
            code => format!("failed ({code:?})"),
        };
        VerbError::Downstream { service, message }
    }
}

fn status_name(value: i32) -> String {
    status_from_wire("status", value).map_or_else(|_| "unknown".to_owned(), |s| s.to_string())
}

/// Runs verbs. Share it with an `Arc`.
pub struct Commands {
    router: Option<RouterServiceClient<TracedChannel>>,
    summarizer: Option<SummarizerServiceClient<TracedChannel>>,
    lifecycle: Arc<Lifecycle>,
    patches: Patches,
    board: HealthBoard,
    store: Store,
    operators: HashSet<String>,
    clock: SharedClock,
}

/// What [`Commands`] needs.
pub struct CommandsParts {
    /// Router client, if configured.
    pub router: Option<RouterServiceClient<TracedChannel>>,
    /// Summarizer client, if configured.
    pub summarizer: Option<SummarizerServiceClient<TracedChannel>>,
    /// The alert lifecycle.
    pub lifecycle: Arc<Lifecycle>,
    /// Patch threads (for notes on retry/cancel).
    pub patches: Patches,
    /// The health monitor's observations.
    pub board: HealthBoard,
    /// The audit log's database.
    pub store: Store,
    /// Slack user ids allowed to mutate.
    pub operators: Vec<String>,
    /// Now.
    pub clock: SharedClock,
}

impl Commands {
    /// Wires the verbs.
    pub fn new(parts: CommandsParts) -> Self {
        Self {
            router: parts.router,
            summarizer: parts.summarizer,
            lifecycle: parts.lifecycle,
            patches: parts.patches,
            board: parts.board,
            store: parts.store,
            operators: parts.operators.into_iter().collect(),
            clock: parts.clock,
        }
    }

    /// Runs one invocation and returns the answer text; every invocation is audited.
    #[tracing::instrument(skip_all, fields(user_id = %invocation.user_id, command = %invocation.command))]
    pub async fn run(&self, invocation: &Invocation) -> String {
        let (parsed, args) = resolve(&invocation.command, &invocation.text);
        let verb = match &parsed {
            Ok(verb) => verb.as_str().to_owned(),
            Err(UnknownVerb(word)) => word.clone(),
        };
        let allowed = !parsed.as_ref().is_ok_and(|verb| verb.is_mutating())
            || self.operators.contains(&invocation.user_id);
        let (answer, outcome) = if allowed {
            let answer = match parsed {
                Ok(verb) => self.execute(verb, &args, invocation).await,
                Err(UnknownVerb(word)) => Ok(format!("Unknown verb `{}`.\n{HELP}", escape(&word))),
            };
            match answer {
                Ok(answer) => (answer, "ok".to_owned()),
                Err(err) => (format!("⚠️ {}", err.to_mrkdwn()), format!("error: {err}")),
            }
        } else {
            (
                format!(
                    "⛔ `{}` is for operators; <@{}> is not one.",
                    escape(&verb),
                    escape(&invocation.user_id)
                ),
                "refused: not an operator".to_owned(),
            )
        };
        tracing::info!(verb, allowed, outcome, "slack command");
        let entry = AuditEntry {
            at_ms: self.clock.now_ms(),
            user_id: invocation.user_id.clone(),
            user_name: invocation.user_name.clone(),
            channel_id: invocation.channel_id.clone(),
            source: invocation.source.as_str().to_owned(),
            verb,
            args: args.join(" "),
            allowed,
            outcome,
        };
        if let Err(err) = self.store.audit(entry).await {
            tracing::error!(error = %err, "cannot write the audit log");
        }
        truncate(&answer, ANSWER_CHARS)
    }

    fn router(&self) -> Result<RouterServiceClient<TracedChannel>, VerbError> {
        self.router
            .clone()
            .ok_or(VerbError::NotConfigured("router"))
    }

    /// Runs an allowed verb; a verb missing its argument answers with its usage line.
    async fn execute(
        &self,
        verb: Verb,
        args: &[String],
        invocation: &Invocation,
    ) -> Result<String, VerbError> {
        let first = args.first().map(String::as_str);
        let actor = format!("slack:{}", invocation.user_id);
        let user_id = invocation.user_id.as_str();
        match (verb, first) {
            (Verb::Help, _) => Ok(HELP.to_owned()),
            (Verb::Status, _) => self.status().await,
            (Verb::Queue, Some(target)) => self.queue(target).await,
            (Verb::Queue, None) => self.channel_queue(invocation).await,
            (Verb::Routes, _) => Ok(format!(
                "*Routes* (first match wins)\n```{}```",
                escape(&self.patches.router().describe())
            )),
            (Verb::Patch, Some(id)) => self.patch(id).await,
            (Verb::Summary, Some(id)) => self.summary(id).await,
            (Verb::Retry, Some(id)) => self.retry(id, actor, user_id).await,
            (Verb::Cancel, Some(id)) => self.cancel(id, actor, user_id).await,
            (Verb::Revert, Some(id)) => self.revert(id, actor, user_id).await,
            (Verb::Pause, Some(target)) => self.pause(target, actor).await,
            (Verb::Resume, Some(target)) => self.resume(target, actor).await,
            (Verb::Targets, _) => self.targets().await,
            (Verb::Executors, _) => self.executors().await,
            (Verb::Alerts, _) => Ok(self.alerts().await),
            (Verb::Ack, Some(key)) => {
                let alert = self.lifecycle.ack(key, user_id).await?;
                Ok(format!(
                    "👀 `{}` acknowledged by <@{}>",
                    escape(&alert.key),
                    escape(user_id)
                ))
            }
            (Verb::Silence, Some(matcher)) => {
                let Some(duration) = args.get(1) else {
                    return Err(VerbError::Usage(verb.usage()));
                };
                self.silence(matcher, duration, user_id).await
            }
            (Verb::Unsilence, Some(id)) => self.unsilence(id).await,
            (Verb::Health, _) => Ok(self.health()),
            (
                Verb::Patch
                | Verb::Summary
                | Verb::Retry
                | Verb::Cancel
                | Verb::Revert
                | Verb::Pause
                | Verb::Resume
                | Verb::Ack
                | Verb::Silence
                | Verb::Unsilence,
                None,
            ) => Err(VerbError::Usage(verb.usage())),
        }
    }

    /// Asks the router to queue the patch `id` again, with a note in its thread.
    async fn retry(&self, id: &str, actor: String, user_id: &str) -> Result<String, VerbError> {
        let request = router_wire::RetryRequest {
            id: id.to_owned(),
            actor,
        };
        let state = self
            .router()?
            .retry(request)
            .await
            .map_err(downstream("router"))?
            .into_inner()
            .state
            .unwrap_or_default();
        let text = format!(
            "🔁 retry of `{}` requested by <@{}>",
            escape(id),
            escape(user_id)
        );
        self.patches.note(id, &text).await?;
        Ok(format!(
            "🔁 `{}` is {} again (attempt {} next)",
            escape(id),
            status_name(state.status),
            state.attempt + 1
        ))
    }

    /// Asks the router to cancel the patch `id`, with a note in its thread.
    async fn cancel(&self, id: &str, actor: String, user_id: &str) -> Result<String, VerbError> {
        let request = router_wire::CancelRequest {
            id: id.to_owned(),
            actor,
        };
        let state = self
            .router()?
            .cancel(request)
            .await
            .map_err(downstream("router"))?
            .into_inner()
            .state
            .unwrap_or_default();
        let text = format!(
            "🛑 cancel of `{}` requested by <@{}>",
            escape(id),
            escape(user_id)
        );
        self.patches.note(id, &text).await?;
        Ok(format!(
            "🛑 `{}` is {}",
            escape(id),
            status_name(state.status)
        ))
    }

    async fn pause(&self, target: &str, actor: String) -> Result<String, VerbError> {
        let request = router_wire::PauseRequest {
            target: target.to_owned(),
            actor,
        };
        self.router()?
            .pause(request)
            .await
            .map_err(downstream("router"))?;
        Ok(format!(
            "⏸️ `{}` paused: no new work is handed out",
            escape(target)
        ))
    }

    async fn resume(&self, target: &str, actor: String) -> Result<String, VerbError> {
        let request = router_wire::ResumeRequest {
            target: target.to_owned(),
            actor,
        };
        self.router()?
            .resume(request)
            .await
            .map_err(downstream("router"))?;
        Ok(format!("▶️ `{}` resumed", escape(target)))
    }

    /// Silences the alerts matching `matcher` (a key, or a target ending in `*`) for
    /// `duration` (1 s to 30 days).
    async fn silence(
        &self,
        matcher: &str,
        duration: &str,
        user_id: &str,
    ) -> Result<String, VerbError> {
        let duration = humantime::parse_duration(duration).map_err(|err| {
            VerbError::Refused(format!(
                "`{duration}` is not a duration like 30m or 2h: {err}"
            ))
        })?;
        if duration.is_zero() || duration > MAX_SILENCE {
            return Err(VerbError::Refused(
                "a silence lasts between 1s and 30 days".to_owned(),
            ));
        }
        crate::grpc::validate_key(matcher.trim_end_matches('*'))?;
        let silence = self.lifecycle.silence(matcher, duration, user_id).await?;
        Ok(format!(
            "🔕 silence #{} on `{}` for {}",
            silence.id,
            escape(matcher),
            human(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
        ))
    }

    /// Ends the silence `id` (`#12` or `12`).
    async fn unsilence(&self, id: &str) -> Result<String, VerbError> {
        let parsed: i64 = id
            .trim_start_matches('#')
            .parse()
            .map_err(|_| VerbError::Usage(Verb::Unsilence.usage()))?;
        if self.lifecycle.unsilence(parsed).await? {
            Ok(format!("🔔 silence #{parsed} ended"))
        } else {
            Err(VerbError::Refused(format!("no active silence #{parsed}")))
        }
    }

    /// Asks the router to revert the succeeded patch `id`: queued (with a note in `id`'s
    /// thread), asked before (its state), or refused naming the files changed since.
    async fn revert(&self, id: &str, actor: String, user_id: &str) -> Result<String, VerbError> {
        let mut request = tonic::Request::new(router_wire::RevertRequest {
            id: id.to_owned(),
            actor,
        });
        // The router waits up to 30 s for the executor's answer: longer than the default
        // call deadline.
        request.set_timeout(REVERT_DEADLINE);
        let answer = self
            .router()?
            .revert(request)
            .await
            .map_err(downstream("router"))?
            .into_inner();
        if !answer.conflicts.is_empty() {
            return Err(VerbError::RefusedMrkdwn(conflicts_answer(
                id,
                &answer.conflicts,
            )));
        }
        let Some(state) = answer.state else {
            let why = if answer.error.is_empty() {
                "answered without the revert patch".to_owned()
            } else {
                answer.error
            };
            return Err(VerbError::Downstream {
                service: "router",
                message: why,
            });
        };
        if !answer.created {
            return Ok(format!(
                "↩️ a revert of `{}` was asked for already: `{}` is {}",
                escape(id),
                escape(&state.id),
                status_name(state.status)
            ));
        }
        let text = format!(
            "↩️ revert of `{}` requested by <@{}>: `{}`",
            escape(id),
            escape(user_id),
            escape(&state.id)
        );
        self.patches.note(id, &text).await?;
        Ok(format!(
            "↩️ revert of `{}` queued as `{}` by <@{}>",
            escape(id),
            escape(&state.id),
            escape(user_id)
        ))
    }

    async fn status(&self) -> Result<String, VerbError> {
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
    async fn channel_queue(&self, invocation: &Invocation) -> Result<String, VerbError> {
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

    async fn queue(&self, target: &str) -> Result<String, VerbError> {
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

    async fn patch(&self, id: &str) -> Result<String, VerbError> {
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

    async fn summary(&self, id: &str) -> Result<String, VerbError> {
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

    async fn targets(&self) -> Result<String, VerbError> {
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

    async fn executors(&self) -> Result<String, VerbError> {
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

    async fn alerts(&self) -> String {
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

    fn health(&self) -> String {
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

/// "cannot revert `X`: changed since it succeeded: `a.ts`, `b.ts`", at most
/// [`CONFLICTS_SHOWN`] paths (the rest counted), each escaped and cut for a code span.
fn conflicts_answer(id: &str, conflicts: &[String]) -> String {
    let shown: Vec<String> = conflicts
        .iter()
        .take(CONFLICTS_SHOWN)
        .map(|path| format!("`{}`", crate::mrkdwn::code(path, CONFLICT_PATH_CHARS)))
        .collect();
    let mut text = format!(
        "cannot revert `{}`: changed since it succeeded: {}",
        crate::mrkdwn::code(id, CONFLICT_PATH_CHARS),
        shown.join(", ")
    );
    if conflicts.len() > CONFLICTS_SHOWN {
        let _ = write!(text, " and {} more", conflicts.len() - CONFLICTS_SHOWN);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_answer_is_bounded_and_its_paths_cannot_become_markup() {
        let many: Vec<String> = (0..30).map(|n| format!("f{n}.ts")).collect();
        let answer = conflicts_answer("p-1", &many);
        assert!(answer.contains("`f19.ts` and 10 more"), "{answer}");
        assert!(!answer.contains("f20.ts"), "{answer}");
        let long = conflicts_answer("p-1", &["x".repeat(5_000)]);
        assert!(long.chars().count() < 300, "{long}");
        // The worst case still fits one answer, so its code spans are never cut.
        let worst: Vec<String> = (0..100).map(|_| "<".repeat(5_000)).collect();
        let answer = conflicts_answer(&"p".repeat(128), &worst);
        assert!(answer.chars().count() < ANSWER_CHARS, "{}", answer.len());
    }
}
