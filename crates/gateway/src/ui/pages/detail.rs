//! The page of one patch: its facts, its timeline, the executor's report (stages, edits,
//! commands, the agent's run, the rollback) and its summary. Every value that comes from a
//! user, a patch, a command's output or an upstream goes through [`esc`] (or [`url_part`]).

use std::fmt::Write as _;

use ghost_core::Status;

use super::{Viewer, action_form};
use crate::patches::{EventView, PatchDetail, PatchView};
use crate::report::{CommandView, EditView, ReportView, RollbackView};
use crate::ui::agent_run;
use crate::ui::html::{badge, duration, esc, time, url_part};

/// The page of one patch: title, actions, facts, timeline, report and summary.
pub fn detail(viewer: &Viewer<'_>, detail: &PatchDetail, events: &[EventView]) -> String {
    let view = &detail.view;
    let mut out = format!(
        "<h1 class=\"patch-title\">Patch <code>{id}</code> {badge}</h1>",
        id = esc(&view.id),
        badge = badge(view.status.as_str()),
    );
    if viewer.admin {
        actions(&mut out, viewer, view);
    }
    facts(&mut out, viewer, view);
    out.push_str("<section><h2>Timeline</h2><ol class=\"timeline\">");
    for event in events {
        out.push_str(&event_row(event));
    }
    out.push_str("</ol></section>");
    match &detail.report {
        None => out.push_str(
            "<section><h2>Report</h2><p class=\"muted\">The patch has not run yet.</p></section>",
        ),
        Some(report) => report_section(&mut out, report),
    }
    out.push_str("<section><h2>Summary</h2>");
    match &detail.summary {
        Some(summary) => {
            let _ = write!(out, "<pre class=\"summary\">{}</pre>", esc(summary));
        }
        None => out.push_str("<p class=\"muted\">No summary yet.</p>"),
    }
    out.push_str("</section>");
    out
}

/// An admin's buttons: cancel while the patch runs, retry once it ended other than succeeded.
fn actions(out: &mut String, viewer: &Viewer<'_>, view: &PatchView) {
    out.push_str("<div class=\"actions\">");
    if !view.status.is_terminal() {
        out.push_str(&action_form(
            viewer,
            &format!("/ui/patches/{}/cancel", url_part(&view.id)),
            "Cancel patch",
            "danger",
        ));
    } else if view.status != Status::Succeeded {
        out.push_str(&action_form(
            viewer,
            &format!("/ui/patches/{}/retry", url_part(&view.id)),
            "Retry patch",
            "secondary",
        ));
    }
    out.push_str("</div>");
}

/// Target, attempt, times, the trace (a Jaeger link when one is configured), description and
/// error.
fn facts(out: &mut String, viewer: &Viewer<'_>, view: &PatchView) {
    let trace = if view.trace_id.is_empty() {
        "—".to_owned()
    } else if let Some(base) = viewer.jaeger_url {
        format!(
            "<a class=\"trace\" href=\"{base}/trace/{id}\" rel=\"noopener noreferrer\" target=\"_blank\">{id}</a>",
            base = esc(base.trim_end_matches('/')),
            id = esc(&view.trace_id)
        )
    } else {
        format!("<code>{}</code>", esc(&view.trace_id))
    };
    let _ = write!(
        out,
        "<dl class=\"facts\"><dt>Target</dt><dd><a href=\"/ui/patches?target={target_url}\">{target}</a></dd>\
         <dt>Attempt</dt><dd>{attempt}</dd><dt>Created</dt><dd>{created}</dd><dt>Updated</dt><dd>{updated}</dd>\
         <dt>Trace</dt><dd>{trace}</dd><dt>Description</dt><dd class=\"desc\">{description}</dd>{error}</dl>",
        target = esc(&view.target),
        target_url = url_part(&view.target),
        attempt = view.attempt,
        created = time(view.created_unix_ms),
        updated = time(view.updated_unix_ms),
        description = esc(&view.description),
        error = if view.error.is_empty() {
            String::new()
        } else {
            format!(
                "<dt>Error</dt><dd class=\"error\">{}</dd>",
                esc(&view.error)
            )
        },
    );
}

/// The executor's report: outcome line, error, stages, edits, commands, the agent's run, the
/// sandbox and the rollback.
fn report_section(out: &mut String, report: &ReportView) {
    let _ = write!(
        out,
        "<section class=\"report\"><h2>Report</h2><p>{badge} in {took}{commit}{dry}</p>",
        badge = badge(&report.status),
        took = duration(i64::try_from(report.duration_ms).unwrap_or(i64::MAX)),
        commit = if report.commit_sha.is_empty() {
            String::new()
        } else {
            format!(", commit <code>{}</code>", esc(&report.commit_sha))
        },
        dry = if report.dry_run { " (dry run)" } else { "" },
    );
    if !report.error.is_empty() {
        let _ = write!(out, "<p class=\"error\">{}</p>", esc(&report.error));
    }
    if !report.stages.is_empty() {
        out.push_str("<p class=\"stages\">");
        for stage in &report.stages {
            let _ = write!(
                out,
                "<span class=\"stage\">{} {}</span> ",
                esc(&stage.stage),
                duration(i64::try_from(stage.duration_ms).unwrap_or(i64::MAX))
            );
        }
        out.push_str("</p>");
    }
    edits_table(out, &report.edits);
    out.push_str("<h3>Commands</h3>");
    if report.commands.is_empty() {
        out.push_str("<p class=\"muted\">No commands ran.</p>");
    }
    for command in &report.commands {
        command_block(out, command);
    }
    if let Some(agent) = &report.agent {
        agent_run::section(out, agent);
    }
    agent_run::sandbox(out, &report.sandbox);
    if let Some(rollback) = &report.rollback {
        rollback_line(out, rollback);
    }
    out.push_str("</section>");
}

/// One row per edit: op, path (`from → to` for a rename), matching rung, lines added and
/// removed.
fn edits_table(out: &mut String, edits: &[EditView]) {
    out.push_str("<h3>Edits</h3><table class=\"edits\"><thead><tr><th>Op</th><th>Path</th><th>Match</th><th>+</th><th>−</th></tr></thead><tbody>");
    for edit in edits {
        let path = if edit.from.is_empty() {
            esc(&edit.path)
        } else {
            format!("{} → {}", esc(&edit.from), esc(&edit.path))
        };
        let _ = write!(
            out,
            "<tr><td>{op}</td><td><code>{path}</code></td><td>{step}</td><td class=\"num\">{added}</td><td class=\"num\">{removed}</td></tr>",
            op = esc(&edit.op),
            step = esc(&edit.match_step),
            added = edit.added,
            removed = edit.removed,
        );
    }
    out.push_str("</tbody></table>");
}

/// One command: its line, kind, exit, time, and its output's head and tail.
fn command_block(out: &mut String, command: &CommandView) {
    let exit = match command.exit_code {
        Some(code) => format!("exit {code}"),
        None if command.timed_out => "killed at its deadline".to_owned(),
        None => "killed".to_owned(),
    };
    let head = if command.output_head.is_empty() {
        String::new()
    } else {
        format!(
            "<pre class=\"output\">{}</pre><p class=\"muted\">… {} bytes omitted …</p>",
            esc(&command.output_head),
            command.omitted_bytes
        )
    };
    let _ = write!(
        out,
        "<div class=\"command\"><p><code>{cmd}</code> <span class=\"muted\">{kind}</span> · {exit} · {took}</p>{head}<pre class=\"output\">{tail}</pre></div>",
        cmd = esc(&command.command),
        kind = esc(&command.kind),
        exit = esc(&exit),
        took = duration(i64::try_from(command.duration_ms).unwrap_or(i64::MAX)),
        tail = esc(&command.output_tail),
    );
}

/// What the rollback restored and removed, and whether it left the workspace as it was.
fn rollback_line(out: &mut String, rollback: &RollbackView) {
    let _ = write!(
        out,
        "<h3>Rollback</h3><p>{restored} restored, {removed} removed: {reason}{error}</p>",
        restored = rollback.restored,
        removed = rollback.removed,
        reason = esc(&rollback.reason),
        error = if rollback.error.is_empty() {
            " — the workspace is byte-identical to before".to_owned()
        } else {
            format!(" — <span class=\"error\">{}</span>", esc(&rollback.error))
        },
    );
}

/// One event of the timeline.
fn event_row(event: &EventView) -> String {
    format!(
        "<li><time>{at}</time> {badge} <span class=\"actor\">{actor}</span> <span class=\"muted\">attempt {attempt}</span> <span class=\"detail\">{detail}</span></li>",
        at = time(event.at_unix_ms),
        badge = badge(&event.status),
        actor = esc(&event.actor),
        attempt = event.attempt,
        detail = esc(&event.detail),
    )
}
