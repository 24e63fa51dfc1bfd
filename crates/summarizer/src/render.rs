//! The two documents of a summary, built by pure functions: [`SummaryDoc`] (the JSON, stable
//! field names) and its Markdown rendering, plus [`excerpt`] for messages with a size limit.

use ghost_core::{ApplyReport, CommandReport, EditReport, PatchId, Status, TargetName};
use serde::{Deserialize, Serialize};

/// One terminal outcome of one attempt, as the router reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// Which attempt this was, from 1.
    pub attempt: u32,
    /// The patch's description.
    pub description: String,
    /// What the executor reported.
    pub report: ApplyReport,
    /// The patch's trace id (32 hex digits), empty when untraced.
    pub trace_id: String,
    /// When the patch was accepted, unix milliseconds.
    pub created_unix_ms: i64,
    /// When this attempt ended, unix milliseconds.
    pub finished_unix_ms: i64,
}

/// One attempt in a summary's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptEntry {
    /// The attempt number, from 1.
    pub attempt: u32,
    /// How it ended.
    pub status: Status,
    /// Why it did not succeed; empty on success.
    pub error: String,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Its trace id.
    pub trace_id: String,
    /// When it ended, unix milliseconds.
    pub finished_unix_ms: i64,
}

/// `summary-<id>.json`: the latest attempt in full, and every attempt in `attempts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryDoc {
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// Status of the latest attempt.
    pub status: Status,
    /// The latest attempt number.
    pub attempt: u32,
    /// The patch's description.
    pub description: String,
    /// Why the latest attempt did not succeed; empty on success.
    pub error: String,
    /// Trace id of the latest attempt.
    pub trace_id: String,
    /// Wall time of the latest attempt in milliseconds.
    pub duration_ms: u64,
    /// Edits of the latest attempt.
    pub edits: Vec<EditReport>,
    /// Commands and checks of the latest attempt.
    pub commands: Vec<CommandReport>,
    /// Every recorded attempt, by attempt number; never shrinks.
    pub attempts: Vec<AttemptEntry>,
    /// When the patch was accepted, unix milliseconds.
    pub created_unix_ms: i64,
    /// When the latest attempt ended, unix milliseconds.
    pub finished_unix_ms: i64,
}

impl SummaryDoc {
    /// True when `attempt` is already in the history.
    pub fn has_attempt(&self, attempt: u32) -> bool {
        self.attempts.iter().any(|entry| entry.attempt == attempt)
    }
}

/// The document after recording `outcome` over `previous`: the history gains the attempt, and
/// the top-level fields follow the highest attempt (a late redelivery of an older attempt only
/// adds history).
pub fn merge(previous: Option<SummaryDoc>, outcome: Outcome) -> SummaryDoc {
    let entry = AttemptEntry {
        attempt: outcome.attempt,
        status: outcome.report.status,
        error: outcome.report.error.clone(),
        duration_ms: outcome.report.duration_ms,
        trace_id: outcome.trace_id.clone(),
        finished_unix_ms: outcome.finished_unix_ms,
    };
    let mut attempts = previous
        .as_ref()
        .map(|doc| doc.attempts.clone())
        .unwrap_or_default();
    attempts.retain(|existing| existing.attempt != outcome.attempt);
    attempts.push(entry);
    attempts.sort_by_key(|existing| existing.attempt);
    match previous {
        Some(doc) if doc.attempt > outcome.attempt => SummaryDoc { attempts, ..doc },
        previous => SummaryDoc {
            created_unix_ms: previous
                .map(|doc| doc.created_unix_ms)
                .filter(|created| *created > 0)
                .unwrap_or(outcome.created_unix_ms),
            patch_id: outcome.patch_id,
            target: outcome.target,
            status: outcome.report.status,
            attempt: outcome.attempt,
            description: outcome.description,
            error: outcome.report.error,
            trace_id: outcome.trace_id,
            duration_ms: outcome.report.duration_ms,
            edits: outcome.report.edits,
            commands: outcome.report.commands,
            attempts,
            finished_unix_ms: outcome.finished_unix_ms,
        },
    }
}

/// The status line marker: ✅ for success, ❌ for anything else.
pub fn status_icon(status: Status) -> &'static str {
    if status == Status::Succeeded {
        "✅"
    } else {
        "❌"
    }
}

/// `summary-<id>.md`. `jaeger_url_template` has `{trace_id}` replaced to link the trace.
pub fn markdown(doc: &SummaryDoc, jaeger_url_template: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# {} {} {}\n\n",
        status_icon(doc.status),
        doc.patch_id,
        doc.status
    ));
    out.push_str(&format!("- **Target:** {}\n", doc.target));
    if !doc.description.is_empty() {
        out.push_str(&format!(
            "- **Description:** {}\n",
            one_line(&doc.description)
        ));
    }
    out.push_str(&format!("- **Attempt:** {}\n", doc.attempt));
    out.push_str(&format!("- **Duration:** {}\n", seconds(doc.duration_ms)));

    out.push_str("\n## Edits\n\n");
    if doc.edits.is_empty() {
        out.push_str("No edits.\n");
    } else {
        out.push_str("| op | path | lines | match |\n|---|---|---|---|\n");
        for edit in &doc.edits {
            out.push_str(&format!(
                "| {} | `{}` | +{} / -{} | {} |\n",
                cell(&edit.op),
                cell(&edit.path),
                edit.added,
                edit.removed,
                if edit.match_step.is_empty() {
                    "-".to_owned()
                } else {
                    cell(&edit.match_step)
                },
            ));
        }
    }

    out.push_str("\n## Commands\n\n");
    if doc.commands.is_empty() {
        out.push_str("No commands.\n");
    }
    for command in &doc.commands {
        let exit = command
            .exit_code
            .map_or_else(|| "killed".to_owned(), |code| format!("exit {code}"));
        out.push_str(&format!(
            "### `{}` ({exit}, {})\n\n",
            one_line(&command.command),
            seconds(command.duration_ms)
        ));
        if !command.output_tail.is_empty() {
            out.push_str(&code_block(&command.output_tail));
        }
    }

    if !doc.error.is_empty() {
        out.push_str("\n## Error\n\n");
        out.push_str(&code_block(&doc.error));
    }

    out.push_str("\n## Trace\n\n");
    if doc.trace_id.is_empty() {
        out.push_str("No trace recorded.\n");
    } else {
        out.push_str(&format!(
            "Trace `{}`: [open]({})\n",
            doc.trace_id,
            jaeger_url_template.replace("{trace_id}", &doc.trace_id)
        ));
    }

    if doc.attempts.len() > 1 {
        out.push_str("\n## Attempts\n\n");
        for entry in &doc.attempts {
            out.push_str(&format!(
                "- attempt {}: {} {} in {}",
                entry.attempt,
                status_icon(entry.status),
                entry.status,
                seconds(entry.duration_ms)
            ));
            if !entry.error.is_empty() {
                out.push_str(&format!(": {}", one_line(&entry.error)));
            }
            out.push('\n');
        }
    }

    out.push_str(&format!("\npatchName: {}\n", doc.patch_id));
    out
}

/// At most `max_chars` characters of `text`: whole if it fits, else its head and tail around a
/// marker saying how much was cut.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_owned();
    }
    // Sized with the largest possible count, so the real marker is never longer.
    let marker_len = cut_marker(total).chars().count();
    let budget = max_chars.saturating_sub(marker_len);
    let head = budget / 2;
    let tail = budget - head;
    let cut = total - head - tail;
    let mut out: String = text.chars().take(head).collect();
    out.push_str(&cut_marker(cut));
    out.extend(text.chars().skip(total - tail));
    out
}

fn cut_marker(cut: usize) -> String {
    format!("\n\n… {cut} characters cut …\n\n")
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03} s", ms / 1000, ms % 1000)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(text: &str) -> String {
    one_line(text).replace('|', "\\|")
}

/// A fenced block longer than any backtick run inside, so output cannot close it early.
fn code_block(text: &str) -> String {
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run.max(2) + 1);
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    format!("{fence}text\n{text}{newline}{fence}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Status, attempt: u32) -> Outcome {
        let succeeded = status == Status::Succeeded;
        Outcome {
            patch_id: PatchId::parse("fix-login").unwrap(),
            target: TargetName::parse("MAIN").unwrap(),
            attempt,
            description: "make login faster".to_owned(),
            report: ApplyReport {
                status,
                error: if succeeded {
                    String::new()
                } else {
                    "tsc failed".to_owned()
                },
                edits: vec![EditReport {
                    op: "replace".to_owned(),
                    path: "src/a|b.ts".to_owned(),
                    match_step: "trim".to_owned(),
                    added: 3,
                    removed: 1,
                    ..Default::default()
                }],
                commands: vec![CommandReport {
                    command: "npm test".to_owned(),
                    exit_code: Some(if succeeded { 0 } else { 2 }),
                    duration_ms: 1500,
                    output_tail: "ok ```not a fence```".to_owned(),
                    ..Default::default()
                }],
                duration_ms: 2042,
                ..ApplyReport::ended(status, String::new())
            },
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            created_unix_ms: 1,
            finished_unix_ms: 2,
        }
    }

    const TEMPLATE: &str = "http://jaeger/trace/{trace_id}";

    #[test]
    fn every_terminal_status_renders_with_its_marker() {
        for status in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            let doc = merge(None, outcome(status, 1));
            let md = markdown(&doc, TEMPLATE);
            let first = md.lines().next().unwrap();
            let icon = if status == Status::Succeeded {
                "✅"
            } else {
                "❌"
            };
            assert_eq!(first, format!("# {icon} fix-login {status}"));
            assert!(md.contains("patchName: fix-login\n"), "{md}");
            assert!(md.contains("- **Target:** MAIN"), "{md}");
            assert!(md.contains("http://jaeger/trace/4bf92f3577b34da6a3ce929d0e0e4736"));
            assert!(
                md.contains("| replace | `src/a\\|b.ts` | +3 / -1 | trim |"),
                "{md}"
            );
            assert!(md.contains("### `npm test`"), "{md}");
            assert!(md.contains("````text\nok ```not a fence```\n````"), "{md}");
            assert_eq!(md.contains("## Error"), status != Status::Succeeded, "{md}");
        }
    }

    #[test]
    fn later_attempts_append_history_and_take_the_top() {
        let first = merge(None, outcome(Status::RolledBack, 1));
        let second = merge(Some(first.clone()), outcome(Status::Succeeded, 2));
        assert_eq!(second.attempt, 2);
        assert_eq!(second.status, Status::Succeeded);
        assert_eq!(second.attempts.len(), 2);
        assert!(second.has_attempt(1) && second.has_attempt(2));
        let late = merge(Some(second.clone()), outcome(Status::Failed, 1));
        assert_eq!(late.status, Status::Succeeded);
        assert_eq!(late.attempts.len(), 2);
        let md = markdown(&second, TEMPLATE);
        assert!(md.contains("- attempt 1: ❌ rolled_back"), "{md}");
    }

    #[test]
    fn excerpts_cut_the_middle_and_respect_the_limit() {
        assert_eq!(excerpt("short", 10), "short");
        let long = format!("{}{}", "h".repeat(5000), "t".repeat(5000));
        let cut = excerpt(&long, 2900);
        assert!(cut.chars().count() <= 2900);
        assert!(cut.starts_with("hhh") && cut.ends_with("ttt"));
        assert!(cut.contains("characters cut"));
        let wide = "é".repeat(4000);
        assert!(excerpt(&wide, 100).chars().count() <= 100);
    }
}
