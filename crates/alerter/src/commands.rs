//! The `/ghost` verbs (and the legacy slash commands mapped onto them): parse, check the
//! operator allowlist for mutating verbs, call the router / summarizer / alert lifecycle,
//! answer in one Slack message, and write every invocation to the audit log.

mod verb;
mod views;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use ghost_proto::convert::status_from_wire;
use ghost_proto::router::v1 as router_wire;
use ghost_proto::router::v1::router_service_client::RouterServiceClient;
use ghost_proto::summarizer::v1::summarizer_service_client::SummarizerServiceClient;
use ghost_runtime::propagation::TracedChannel;

use crate::error::AlerterError;
use crate::health::HealthBoard;
use crate::lifecycle::{Lifecycle, human};
use crate::messages::truncate;
use crate::mrkdwn::escape;
use crate::patches::Patches;
use crate::store::{AuditEntry, Store};
use ghost_runtime::clock::SharedClock;

pub use verb::{HELP, UnknownVerb, Verb, resolve};

/// Longest silence accepted.
const MAX_SILENCE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The deadline of a revert asked of the router: past its 30 s wait for the executor.
const REVERT_DEADLINE: Duration = Duration::from_secs(35);

/// Longest answer text (Slack's message text limit is 40k; keep answers readable).
const ANSWER_CHARS: usize = 3_500;
/// Conflicting paths named in a refused revert's answer (the rest are counted).
const CONFLICTS_SHOWN: usize = 20;
/// Longest conflicting path shown.
const CONFLICT_PATH_CHARS: usize = 150;

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
        self.note_request(id, "🔁 retry", user_id).await?;
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
        self.note_request(id, "🛑 cancel", user_id).await?;
        Ok(format!(
            "🛑 `{}` is {}",
            escape(id),
            status_name(state.status)
        ))
    }

    /// Notes in the thread of patch `id` that `user_id` asked for `what` (an emoji and a verb).
    async fn note_request(&self, id: &str, what: &str, user_id: &str) -> Result<(), VerbError> {
        let text = format!(
            "{what} of `{}` requested by <@{}>",
            escape(id),
            escape(user_id)
        );
        self.patches.note(id, &text).await?;
        Ok(())
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
