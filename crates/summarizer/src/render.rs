//! Texts built from a [`SummaryDoc`], as pure functions: the Markdown (`summary-<id>.md`), the
//! text for a model (≤ [`MODEL_TEXT_CHARS`]) and the Slack excerpt (≤ [`SLACK_EXCERPT_CHARS`]),
//! and [`excerpt`], the middle cut every size budget uses.

use ghost_core::{Diagnostic, Severity, Status};

use crate::doc::{CommandDoc, SummaryDoc};

/// Budget of the text the gateway returns to a model.
pub const MODEL_TEXT_CHARS: usize = 100_000;
/// Budget of the excerpt sent to the alerter: one Block Kit section holds 3,000 characters.
pub const SLACK_EXCERPT_CHARS: usize = 2_900;
/// Longest output head or tail shown in the Markdown; the artifact file keeps all of it.
const MD_OUTPUT_CHARS: usize = 4_000;
/// Longest error shown in the Markdown.
const MD_ERROR_CHARS: usize = 8_000;
/// Longest agent diff shown in the Markdown (middle cut).
const MD_AGENT_DIFF_CHARS: usize = 24_000;
/// Diagnostics listed in the Slack excerpt; the summary has them all.
const SLACK_DIAGNOSTICS: usize = 5;

/// The status line marker: ✅ for success, ❌ for anything else.
pub fn status_icon(status: Status) -> &'static str {
    if status == Status::Succeeded {
        "✅"
    } else {
        "❌"
    }
}

/// `summary-<id>.md`: every fact of the document, for people.
pub fn markdown(doc: &SummaryDoc) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "# {} {} {}\n\n",
        status_icon(doc.status),
        doc.patch_id,
        doc.status
    ));
    facts_list(&mut out, doc);
    intake_warnings_section(&mut out, doc);
    error_section(&mut out, doc);
    diagnostics_section(&mut out, doc);
    stages_section(&mut out, doc);
    edits_section(&mut out, doc);
    if let Some(agent) = &doc.agent {
        agent_section(&mut out, agent);
    }
    command_sections(&mut out, doc);
    rollback_section(&mut out, doc);
    attempts_section(&mut out, doc);
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push_str(&format!("\n\npatchName: {}\n", doc.patch_id));
    out
}

/// The list under the title: patch, target, description, attempt, times, commit, trace.
fn facts_list(out: &mut String, doc: &SummaryDoc) {
    out.push_str(&format!("- **Patch:** {}\n", doc.patch_id));
    out.push_str(&format!("- **Target:** {}\n", doc.target));
    if !doc.description.is_empty() {
        out.push_str(&format!(
            "- **Description:** {}\n",
            one_line(&doc.description)
        ));
    }
    out.push_str(&format!("- **Attempt:** {}\n", attempt_label(doc.attempt)));
    out.push_str(&format!(
        "- **Created:** {}\n",
        timestamp(doc.created_unix_ms)
    ));
    out.push_str(&format!(
        "- **Finished:** {}\n",
        timestamp(doc.finished_unix_ms)
    ));
    out.push_str(&format!("- **Duration:** {}\n", seconds(doc.duration_ms)));
    if doc.dry_run {
        out.push_str("- **Dry run:** yes, nothing was written\n");
    }
    if !doc.commit_sha.is_empty() {
        out.push_str(&format!("- **Commit:** `{}`\n", cell(&doc.commit_sha)));
    }
    if doc.trace_id.is_empty() {
        out.push_str("- **Trace:** none recorded\n");
    } else {
        out.push_str(&format!(
            "- **Trace:** `{}` ([open in Jaeger]({}))\n",
            doc.trace_id, doc.trace_url
        ));
    }
}

/// What was forgiven while reading the submitted document, when anything was.
fn intake_warnings_section(out: &mut String, doc: &SummaryDoc) {
    if !doc.intake_warnings.is_empty() {
        heading(out, "Intake warnings");
        out.push_str("Forgiven while reading the submitted document:\n\n");
        for warning in &doc.intake_warnings {
            out.push_str(&format!("- {}\n", one_line(warning)));
        }
    }
}

/// The error, middle-cut, when there is one.
fn error_section(out: &mut String, doc: &SummaryDoc) {
    if !doc.error.is_empty() {
        heading(out, "Error");
        out.push_str(&code_block(&excerpt(&doc.error, MD_ERROR_CHARS)));
    }
}

/// A table of the diagnostics, when there are any.
fn diagnostics_section(out: &mut String, doc: &SummaryDoc) {
    if !doc.diagnostics.is_empty() {
        heading(out, "Diagnostics");
        out.push_str("| where | code | message |\n|---|---|---|\n");
        for diagnostic in &doc.diagnostics {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                if diagnostic.path.is_empty() {
                    "…".to_owned()
                } else {
                    format!("`{}`", cell(&place(diagnostic)).replace('`', "'"))
                },
                cell(&diagnostic.code),
                cell(&excerpt(&labelled_message(diagnostic), 300)),
            ));
        }
    }
}

/// A table of the stage timings.
fn stages_section(out: &mut String, doc: &SummaryDoc) {
    heading(out, "Stages");
    if doc.stages.is_empty() {
        out.push_str("No stage timings.\n");
    } else {
        out.push_str("| stage | duration |\n|---|---|\n");
        for stage in &doc.stages {
            out.push_str(&format!(
                "| {} | {} |\n",
                cell(&stage.stage),
                seconds(stage.duration_ms)
            ));
        }
    }
}

/// A table of the edits.
fn edits_section(out: &mut String, doc: &SummaryDoc) {
    heading(out, "Edits");
    if doc.edits.is_empty() {
        out.push_str("No edits.\n");
    } else {
        out.push_str("| op | path | lines | match |\n|---|---|---|---|\n");
        for edit in &doc.edits {
            let path = if edit.from.is_empty() {
                format!("`{}`", cell(&edit.path))
            } else {
                format!("`{}` → `{}`", cell(&edit.from), cell(&edit.path))
            };
            out.push_str(&format!(
                "| {} | {path} | +{} / -{} | {} |\n",
                cell(&edit.op),
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
}

/// The commands, then the validations, each with its output.
fn command_sections(out: &mut String, doc: &SummaryDoc) {
    for (kind, title, none) in [
        ("command", "Commands", "No commands."),
        ("validate", "Validations", "No validations."),
    ] {
        heading(out, title);
        let mut any = false;
        for command in doc.commands.iter().filter(|c| c.kind == kind) {
            any = true;
            command_section(out, command);
        }
        if !any {
            out.push_str(none);
            out.push('\n');
        }
    }
}

/// How the rollback went, when there was one.
fn rollback_section(out: &mut String, doc: &SummaryDoc) {
    if let Some(rollback) = &doc.rollback {
        heading(out, "Rollback");
        out.push_str(&format!("- **Reason:** {}\n", one_line(&rollback.reason)));
        out.push_str(&format!("- **Restored:** {} files\n", rollback.restored));
        out.push_str(&format!(
            "- **Removed:** {} created files\n",
            rollback.removed
        ));
        if rollback.error.is_empty() {
            out.push_str("- **Result:** workspace byte-identical to before\n");
        } else {
            out.push_str(&format!(
                "- **Result:** incomplete: {}\n",
                one_line(&rollback.error)
            ));
        }
    }
}

/// One line per attempt.
fn attempts_section(out: &mut String, doc: &SummaryDoc) {
    heading(out, "Attempts");
    for entry in &doc.attempts {
        out.push_str(&format!(
            "- attempt {}: {} {} in {}, finished {}",
            entry.attempt,
            status_icon(entry.status),
            entry.status,
            seconds(entry.duration_ms),
            timestamp(entry.finished_unix_ms),
        ));
        if entry.rolled_back {
            out.push_str(", rolled back");
        }
        if !entry.error.is_empty() {
            out.push_str(&format!(": {}", excerpt(&one_line(&entry.error), 300)));
        }
        out.push('\n');
    }
}

/// A `##` heading after exactly one blank line.
fn heading(out: &mut String, title: &str) {
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out.push_str(&format!("\n\n## {title}\n\n"));
}

fn command_section(out: &mut String, command: &CommandDoc) {
    let mut facts = vec![match command.exit_code {
        Some(code) => format!("exit {code}"),
        None if command.skipped => "skipped".to_owned(),
        None => "killed".to_owned(),
    }];
    if let Some(signal) = command.signal {
        facts.push(format!("signal {signal}"));
    }
    if command.timed_out {
        facts.push("timed out".to_owned());
    }
    facts.push(seconds(command.duration_ms));
    out.push_str(&format!(
        "### {}. {} `{}` ({})\n\n",
        command.n,
        if command.failed() { "❌" } else { "✅" },
        one_line(&command.command).replace('`', "'"),
        facts.join(", ")
    ));
    if !command.output_head.is_empty() {
        out.push_str("Output head:\n\n");
        out.push_str(&code_block(&excerpt(&command.output_head, MD_OUTPUT_CHARS)));
        out.push('\n');
    }
    if command.omitted_bytes > 0 {
        out.push_str(&format!(
            "… {} bytes omitted by the executor …\n\n",
            command.omitted_bytes
        ));
    }
    if !command.output_tail.is_empty() {
        if !command.output_head.is_empty() || command.omitted_bytes > 0 {
            out.push_str("Output tail:\n\n");
        }
        out.push_str(&code_block(&excerpt(&command.output_tail, MD_OUTPUT_CHARS)));
        out.push('\n');
    }
    if let Some(artifact) = &command.artifact {
        out.push_str(&format!("Full output: [{artifact}]({artifact})\n\n"));
    }
}

/// What the coding agent did: how it ended, what it says, the files it changed and its diff.
fn agent_section(out: &mut String, agent: &ghost_core::AgentRun) {
    heading(out, "Agent");
    let mut facts = vec![format!("`{}`", cell(&agent.cli).replace('`', "'"))];
    facts.push(match agent.exit_code {
        Some(code) => format!("exit {code}"),
        None => "no exit code".to_owned(),
    });
    facts.push(seconds(agent.duration_ms));
    if let (Some(input), Some(output)) = (agent.input_tokens, agent.output_tokens) {
        facts.push(format!("{input} tokens in, {output} out"));
    }
    if !agent.cost_usd.is_empty() {
        facts.push(format!("${}", cell(&agent.cost_usd)));
    }
    out.push_str(&format!(
        "- **Run:** {}
",
        facts.join(", ")
    ));
    if agent.files.is_empty() {
        out.push_str(
            "- **Files changed:** none
",
        );
    } else {
        out.push_str(&format!("- **Files changed ({}):**", agent.files.len()));
        for file in &agent.files {
            out.push_str(&format!(" `{}`", cell(file).replace('`', "'")));
        }
        out.push('\n');
    }
    if !agent.final_message.is_empty() {
        out.push_str("\nFinal message:\n\n");
        out.push_str(&code_block(&excerpt(&agent.final_message, MD_OUTPUT_CHARS)));
    }
    if !agent.diff.is_empty() {
        out.push_str(if agent.diff_truncated {
            "\nDiff (cut by the executor):\n\n"
        } else {
            "\nDiff:\n\n"
        });
        out.push_str(&code_block(&excerpt(&agent.diff, MD_AGENT_DIFF_CHARS)));
    }
    if !agent.transcript_tail.is_empty() {
        out.push_str("\nTranscript tail:\n\n");
        out.push_str(&code_block(&excerpt(
            &agent.transcript_tail,
            MD_OUTPUT_CHARS,
        )));
    }
}

/// The text a model reads back: the Markdown within `max_chars`, cut in the middle if needed.
pub fn model_text(markdown: &str, max_chars: usize) -> String {
    excerpt(markdown, max_chars)
}

/// The excerpt for Slack: status line, the error, the first diagnostics, the first failing
/// command's output tail, counts, the trace link and the back-link, within
/// [`SLACK_EXCERPT_CHARS`]. GitHub Markdown like the summary: the alerter, Slack's only
/// sink, turns it into mrkdwn.
pub fn slack_excerpt(doc: &SummaryDoc) -> String {
    let mut out = format!(
        "# {} {} {}\n",
        status_icon(doc.status),
        doc.patch_id,
        doc.status
    );
    out.push_str(&format!(
        "*Target* {} · *Attempt* {} · *Duration* {}\n",
        doc.target,
        attempt_label(doc.attempt),
        seconds(doc.duration_ms)
    ));
    if !doc.description.is_empty() {
        out.push_str(&excerpt(&one_line(&doc.description), 300));
        out.push('\n');
    }
    let added: u64 = doc.edits.iter().map(|e| u64::from(e.added)).sum();
    let removed: u64 = doc.edits.iter().map(|e| u64::from(e.removed)).sum();
    out.push_str(&format!(
        "Edits: {} (+{added} / -{removed}) · Commands: {}\n",
        doc.edits.len(),
        doc.commands.len()
    ));
    if !doc.error.is_empty() {
        out.push_str(&code_block(&excerpt(&doc.error, 800)));
    }
    slack_diagnostics(&mut out, doc);

    slack_failed_command(&mut out, doc);

    slack_rollback(&mut out, doc);

    if !doc.trace_url.is_empty() {
        out.push_str(&format!("Trace: {}\n", doc.trace_url));
    }
    out.push_str(&format!("patchName: {}\n", doc.patch_id));
    excerpt(&out, SLACK_EXCERPT_CHARS)
}

/// The first [`SLACK_DIAGNOSTICS`] diagnostics, and how many more the summary has.
fn slack_diagnostics(out: &mut String, doc: &SummaryDoc) {
    if !doc.diagnostics.is_empty() {
        out.push_str("Diagnostics:\n");
        for diagnostic in doc.diagnostics.iter().take(SLACK_DIAGNOSTICS) {
            if diagnostic.path.is_empty() {
                out.push_str(&format!("- {}\n", one_line(&diagnostic.message)));
                continue;
            }
            out.push_str(&format!(
                "- `{}` {}{}\n",
                one_line(&place(diagnostic)).replace('`', "'"),
                if diagnostic.code.is_empty() {
                    String::new()
                } else {
                    format!("{} ", one_line(&diagnostic.code))
                },
                excerpt(&labelled_message(diagnostic), 200)
            ));
        }
        let more = doc.diagnostics.len().saturating_sub(SLACK_DIAGNOSTICS);
        if more > 0 {
            out.push_str(&format!("- … {more} more in the summary\n"));
        }
    }
}

/// The first failing command and its output tail, when one failed.
fn slack_failed_command(out: &mut String, doc: &SummaryDoc) {
    if let Some(command) = doc.commands.iter().find(|c| c.failed()) {
        out.push_str(&format!(
            "Failed: `{}` ({})\n",
            excerpt(&one_line(&command.command).replace('`', "'"), 200),
            command
                .exit_code
                .map_or_else(|| "killed".to_owned(), |code| format!("exit {code}"))
        ));
        if !command.output_tail.is_empty() {
            out.push_str(&code_block(&excerpt(&command.output_tail, 1_000)));
        }
    }
}

/// What the rollback restored and removed, when there was one.
fn slack_rollback(out: &mut String, doc: &SummaryDoc) {
    if let Some(rollback) = &doc.rollback {
        out.push_str(&format!(
            "Rolled back: {} restored, {} removed{}\n",
            rollback.restored,
            rollback.removed,
            if rollback.error.is_empty() {
                String::new()
            } else {
                format!(
                    " (incomplete: {})",
                    excerpt(&one_line(&rollback.error), 200)
                )
            }
        ));
    }
}

/// `path:line:column` (`path:line`, or `path`, when the tool gave less).
fn place(diagnostic: &Diagnostic) -> String {
    match (diagnostic.line, diagnostic.column) {
        (0, _) => diagnostic.path.clone(),
        (line, None) => format!("{}:{line}", diagnostic.path),
        (line, Some(column)) => format!("{}:{line}:{column}", diagnostic.path),
    }
}

/// The message on one line, with its severity in front unless it is an error.
fn labelled_message(diagnostic: &Diagnostic) -> String {
    let message = one_line(&diagnostic.message);
    match diagnostic.severity {
        Severity::Error => message,
        other => format!("{}: {message}", other.as_str()),
    }
}

/// At most `max_chars` characters of `text`: whole if it fits, else its head and tail around a
/// marker saying how many characters were cut.
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

fn attempt_label(attempt: u32) -> String {
    if attempt == 0 {
        "0 (ended before any attempt started)".to_owned()
    } else {
        attempt.to_string()
    }
}

/// RFC 3339 UTC with milliseconds, or `unknown` for 0 / out-of-range times.
pub fn timestamp(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "unknown".to_owned();
    }
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "unknown".to_owned())
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

    #[test]
    fn excerpts_cut_the_middle_and_respect_the_limit() {
        assert_eq!(excerpt("short", 10), "short");
        let long = format!("{}{}", "x".repeat(5000), "y".repeat(5000));
        let cut = excerpt(&long, 2900);
        assert!(cut.chars().count() <= 2900);
        assert!(cut.starts_with("xxx") && cut.ends_with("yyy"));
        let kept = cut.chars().filter(|c| *c == 'x' || *c == 'y').count();
        assert!(cut.contains(&format!("… {} characters cut …", 10_000 - kept)));
        let wide = "é".repeat(4000);
        assert!(excerpt(&wide, 100).chars().count() <= 100);
    }

    #[test]
    fn backticks_in_output_cannot_close_the_fence() {
        assert_eq!(
            code_block("ok ```not a fence```"),
            "````text\nok ```not a fence```\n````\n"
        );
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(0), "unknown");
    }
}
