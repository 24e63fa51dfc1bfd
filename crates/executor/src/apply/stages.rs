//! The stages of one attempt, each timed and reported once: the `Attempt` that records
//! them, and the owner checks a target adds after the patch's own commands.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ghost_core::{ApplyReport, CommandKind, Patch, StageTiming, Status};
use globset::GlobMatcher;
use tokio_util::sync::CancellationToken;

use crate::commands::{self, Argv, Stopped};

use super::{Context, root_unchanged};

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One command an attempt runs, or a patch check it skips.
#[derive(Debug, Clone)]
pub(super) enum Step {
    /// Run it.
    Run {
        line: String,
        argv: Argv,
        kind: CommandKind,
        timeout: Option<Duration>,
        /// The owner check's name (empty for the patch's own).
        name: String,
    },
    /// An `if_allowed` check whose program the policy does not allow.
    Skip {
        line: String,
        kind: CommandKind,
        reason: String,
    },
}

/// An owner check ready to run, and the glob of its `changed:` condition.
#[derive(Debug, Clone)]
pub(super) struct OwnerStep {
    pub(super) step: Step,
    pub(super) changed: Option<GlobMatcher>,
}

/// The target's owner checks: whatever the patch's command policy says (the owner wrote
/// them), split with shell-words unless the target runs commands through a shell.
pub(super) fn owner_steps(policy: &crate::config::TargetPolicy) -> Result<Vec<OwnerStep>, String> {
    policy
        .checks
        .iter()
        .map(|check| {
            let argv = if policy.shell {
                Argv::Shell(check.run.clone())
            } else {
                let argv = shell_words::split(&check.run).map_err(|err| {
                    format!(
                        "owner check {:?}: cannot split {:?}: {err}",
                        check.name, check.run
                    )
                })?;
                if argv.is_empty() {
                    return Err(format!("owner check {:?} has an empty run", check.name));
                }
                Argv::Direct(argv)
            };
            let changed = match &check.when {
                crate::config::When::Always => None,
                crate::config::When::Changed(glob) => {
                    Some(crate::config::compile_changed_glob(glob)?)
                }
            };
            Ok(OwnerStep {
                step: Step::Run {
                    line: check.run.clone(),
                    argv,
                    kind: CommandKind::Check,
                    timeout: check.timeout,
                    name: check.name.clone(),
                },
                changed,
            })
        })
        .collect()
}

/// Builds the report as stages complete.
pub(super) struct Attempt<'a> {
    pub(super) ctx: &'a Context,
    pub(super) patch: &'a Patch,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) cancel: &'a CancellationToken,
    pub(super) report: ApplyReport,
}

impl Attempt<'_> {
    pub(super) fn stage<T>(&mut self, name: &str, work: impl FnOnce(&mut Self) -> T) -> T {
        let begun = Instant::now();
        let out = work(self);
        let took = begun.elapsed();
        self.report.stages.push(StageTiming {
            stage: name.to_owned(),
            duration_ms: millis(took),
            duration_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        });
        out
    }

    pub(super) fn end(mut self, status: Status, error: impl Into<String>) -> ApplyReport {
        crate::diagnose::fill(&mut self.report, &self.ctx.workspace);
        self.report.status = status;
        self.report.error = error.into();
        self.report.duration_ms = millis(self.started.elapsed());
        self.report
    }

    /// Why the attempt must stop now, if it must.
    pub(super) fn interrupted(&self) -> Option<(Status, String)> {
        if self.cancel.is_cancelled() {
            return Some((Status::Cancelled, "cancelled while applying".to_owned()));
        }
        if Instant::now() >= self.deadline {
            return Some((
                Status::TimedOut,
                "the patch ran past its deadline".to_owned(),
            ));
        }
        None
    }

    /// Runs `steps` in order; returns the status and reason of the first failure.
    pub(super) fn run_steps(&mut self, steps: &[Step]) -> Option<(Status, String)> {
        for step in steps {
            let (line, argv, kind, timeout, name) = match step {
                Step::Skip { line, kind, reason } => {
                    self.report.commands.push(ghost_core::CommandReport {
                        command: line.clone(),
                        kind: *kind,
                        output_tail: format!("skipped: {reason}"),
                        skipped: true,
                        ..ghost_core::CommandReport::default()
                    });
                    continue;
                }
                Step::Run {
                    line,
                    argv,
                    kind,
                    timeout,
                    name,
                } => (line, argv, *kind, *timeout, name),
            };
            if let Err(reason) = root_unchanged(self.ctx) {
                return Some((Status::Failed, reason));
            }
            let own = timeout.unwrap_or(self.ctx.workspace.policy.command_timeout);
            let deadline = (Instant::now() + own).min(self.deadline);
            let ran = commands::run_with(
                &self.ctx.workspace,
                line,
                argv,
                kind,
                deadline,
                self.cancel,
                &commands::Extra::default(),
            );
            if self.report.sandbox.is_empty() || ran.sandbox == "none" {
                self.report.sandbox = ran.sandbox.to_owned();
            }
            let (mut report, stopped) = (ran.report, ran.stopped);
            report.name.clone_from(name);
            let exit = report.exit_code;
            let signal = report.signal;
            self.report.commands.push(report);
            crate::diagnose::trim(&mut self.report);
            let what = if name.is_empty() {
                format!("{} {line:?}", kind.as_str())
            } else {
                format!("owner check {name:?} ({line:?})")
            };
            match stopped {
                Some(Stopped::Cancelled) => {
                    return Some((Status::Cancelled, format!("cancelled while running {what}")));
                }
                Some(Stopped::Deadline) => {
                    return Some((Status::TimedOut, format!("{what} ran past its deadline")));
                }
                None if exit != Some(0) => {
                    let how = match (exit, signal) {
                        (Some(code), _) => format!("with exit code {code}"),
                        (None, Some(signal)) => format!("killed by signal {signal}"),
                        (None, None) => "without an exit status".to_owned(),
                    };
                    return Some((Status::Failed, format!("{what} failed {how}")));
                }
                None => {}
            }
        }
        None
    }

    /// Runs the owner checks whose condition holds; `changed` lists the paths the patch
    /// changed (`None`: unknown, so every `changed:` check runs).
    pub(super) fn run_owner_checks(
        &mut self,
        owners: &[OwnerStep],
        changed: impl FnOnce() -> Option<Vec<PathBuf>>,
    ) -> Option<(Status, String)> {
        let mut changed = Some(changed);
        let mut paths: Option<Option<Vec<PathBuf>>> = None;
        let mut steps = Vec::new();
        for owner in owners {
            if let Some(glob) = &owner.changed {
                let known = paths.get_or_insert_with(|| changed.take().and_then(|f| f()));
                if let Some(known) = known
                    && !known.iter().any(|path| glob.is_match(path))
                {
                    continue;
                }
            }
            steps.push(owner.step.clone());
        }
        self.run_steps(&steps)
    }
}
