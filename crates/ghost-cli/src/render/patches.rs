//! One patch or a list of them, for people: the list, the detail, the audit trail, the
//! progress lines of `ghost submit`, the output of its commands and why it failed.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Paint, one_line, or_dash, table, text, utc};

/// A page of patches (`GET /v1/patches` answer, or several pages' patches).
pub fn patch_list(patches: &[Value], next_page_token: &str, paint: Paint) -> String {
    if patches.is_empty() {
        return "no patches".to_owned();
    }
    let rows: Vec<Vec<String>> = patches
        .iter()
        .map(|p| {
            vec![
                text(p, "id").to_owned(),
                text(p, "target").to_owned(),
                text(p, "status").to_owned(),
                p["attempt"].as_u64().unwrap_or(0).to_string(),
                utc(p["updated_unix_ms"].as_i64().unwrap_or(0)),
                one_line(text(p, "description"), 48),
            ]
        })
        .collect();
    let mut out = table(
        &["id", "target", "status", "try", "updated", "description"],
        &rows,
        |column, cell| {
            if column == 2 {
                paint.status(cell)
            } else {
                cell.to_owned()
            }
        },
    );
    if !next_page_token.is_empty() {
        let _ = writeln!(
            out,
            "{}",
            paint.dim(&format!(
                "more: ghost list --page-token {next_page_token} (same filters)"
            ))
        );
    }
    out
}

/// One patch: its state, error, report highlights and summary.
pub fn patch_detail(detail: &Value, paint: Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}  {}",
        paint.bold(text(detail, "id")),
        paint.status(text(detail, "status"))
    );
    let rows = [
        ("target", text(detail, "target").to_owned()),
        (
            "attempt",
            detail["attempt"].as_u64().unwrap_or(0).to_string(),
        ),
        (
            "created",
            utc(detail["created_unix_ms"].as_i64().unwrap_or(0)),
        ),
        (
            "updated",
            utc(detail["updated_unix_ms"].as_i64().unwrap_or(0)),
        ),
        ("trace", or_dash(text(detail, "trace_id")).to_owned()),
        (
            "description",
            or_dash(text(detail, "description")).to_owned(),
        ),
    ];
    for (key, value) in rows {
        let _ = writeln!(out, "  {:<12} {value}", paint.dim(key));
    }
    if !text(detail, "error").is_empty() {
        let _ = writeln!(
            out,
            "  {:<12} {}",
            paint.dim("error"),
            paint.red(text(detail, "error"))
        );
    }
    let report = &detail["report"];
    if report.is_object() {
        let commands = report["commands"].as_array().map_or(0, Vec::len);
        let edits = report["edits"].as_array().map_or(0, Vec::len);
        let _ = writeln!(
            out,
            "  {:<12} {edits} edit(s), {commands} command(s), {} ms{}",
            paint.dim("report"),
            report["duration_ms"].as_u64().unwrap_or(0),
            match report["commit_sha"].as_str() {
                Some(sha) if !sha.is_empty() => format!(", commit {sha}"),
                _ => String::new(),
            }
        );
        for edit in report["edits"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    {:<8} {} (+{} -{}){}",
                text(edit, "op"),
                text(edit, "path"),
                edit["added"].as_u64().unwrap_or(0),
                edit["removed"].as_u64().unwrap_or(0),
                match edit["match_step"].as_str() {
                    Some(step) if !step.is_empty() && step != "exact" => {
                        format!(" matched by {step}")
                    }
                    _ => String::new(),
                }
            );
        }
    }
    match detail["summary"].as_str() {
        Some(summary) => {
            let _ = writeln!(out, "\n{}", summary.trim_end());
        }
        None => {
            let _ = writeln!(out, "\n{}", paint.dim("(no summary yet)"));
        }
    }
    out
}

/// The audit trail of one patch.
pub fn events(events: &Value, paint: Paint) -> String {
    let list = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return "no events".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                utc(e["at_unix_ms"].as_i64().unwrap_or(0)),
                text(e, "status").to_owned(),
                e["attempt"].as_u64().unwrap_or(0).to_string(),
                or_dash(text(e, "actor")).to_owned(),
                one_line(text(e, "detail"), 80),
            ]
        })
        .collect();
    table(
        &["at", "status", "try", "actor", "detail"],
        &rows,
        |column, cell| {
            if column == 1 {
                paint.status(cell)
            } else {
                cell.to_owned()
            }
        },
    )
}

/// One event as a progress line for `submit`.
pub fn progress_line(event: &Value, paint: Paint) -> String {
    let detail = text(event, "detail");
    format!(
        "  {}  {:<11} {}{}",
        paint.dim(&utc(event["at_unix_ms"].as_i64().unwrap_or(0))),
        paint.status(text(event, "status")),
        paint.dim(or_dash(text(event, "actor"))),
        if detail.is_empty() {
            String::new()
        } else {
            format!("  {}", one_line(detail, 100))
        }
    )
}

/// The command outputs of a patch (`report.commands`), head and tail with the gap marked.
pub fn logs(detail: &Value, paint: Paint) -> String {
    let commands = detail["report"]["commands"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if detail["report"].is_null() {
        return format!(
            "no report yet: {} is {}",
            text(detail, "id"),
            text(detail, "status")
        );
    }
    if commands.is_empty() {
        return format!("{} ran no commands", text(detail, "id"));
    }
    let mut out = String::new();
    for command in &commands {
        out.push_str(&command_block(command, paint, false));
    }
    out
}

fn exit_text(command: &Value) -> String {
    if command["timed_out"].as_bool().unwrap_or(false) {
        return "timed out".to_owned();
    }
    match command["exit_code"].as_i64() {
        Some(code) => format!("exit {code}"),
        None => "killed".to_owned(),
    }
}

fn command_ok(command: &Value) -> bool {
    command["exit_code"].as_i64() == Some(0) && !command["timed_out"].as_bool().unwrap_or(false)
}

/// One command's header and output; `tail_only` for the failure report.
fn command_block(command: &Value, paint: Paint, tail_only: bool) -> String {
    let mut out = String::new();
    let status = exit_text(command);
    let _ = writeln!(
        out,
        "{} {}  {}  {} ms{}",
        paint.bold("$"),
        paint.bold(text(command, "command")),
        if command_ok(command) {
            paint.dim(&status)
        } else {
            paint.red(&status)
        },
        command["duration_ms"].as_u64().unwrap_or(0),
        match text(command, "kind") {
            "" => String::new(),
            kind => format!("  ({kind})"),
        }
    );
    let head = text(command, "output_head");
    let tail = text(command, "output_tail");
    let omitted = command["omitted_bytes"].as_u64().unwrap_or(0);
    if !tail_only && !head.is_empty() {
        push_output(&mut out, head);
    }
    if omitted > 0 || (tail_only && !head.is_empty()) {
        let _ = writeln!(
            out,
            "{}",
            paint.dim(&format!("  … {omitted} bytes omitted …"))
        );
    }
    if !tail.is_empty() {
        push_output(&mut out, tail);
    }
    if head.is_empty() && tail.is_empty() {
        let _ = writeln!(out, "{}", paint.dim("  (no output)"));
    }
    out
}

fn push_output(out: &mut String, output: &str) {
    for line in output.trim_end_matches('\n').lines() {
        let _ = writeln!(out, "  {line}");
    }
}

/// Why a patch did not succeed: its error, rollback note and the failing command's output
/// tail (from the apply report when the gateway sends one).
pub fn failure(detail: &Value, paint: Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} {}: {}",
        paint.red("ghost:"),
        text(detail, "id"),
        paint.status(text(detail, "status")),
        or_dash(if text(detail, "error").is_empty() {
            text(&detail["report"], "error")
        } else {
            text(detail, "error")
        })
    );
    let report = &detail["report"];
    let commands = report["commands"].as_array().cloned().unwrap_or_default();
    if let Some(failing) = commands.iter().rev().find(|c| !command_ok(c)) {
        let _ = writeln!(out, "failing command:");
        out.push_str(&command_block(failing, paint, true));
    }
    let rollback = &report["rollback"];
    if rollback.is_object() {
        let _ = writeln!(
            out,
            "rolled back: {} file(s) restored, {} removed{}",
            rollback["restored"]
                .as_u64()
                .or_else(|| rollback["restored"].as_array().map(|a| a.len() as u64))
                .unwrap_or(0),
            rollback["removed"]
                .as_u64()
                .or_else(|| rollback["removed"].as_array().map(|a| a.len() as u64))
                .unwrap_or(0),
            match rollback["error"].as_str() {
                Some(err) if !err.is_empty() => format!(" (rollback error: {err})"),
                _ => String::new(),
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failure_shows_error_and_failing_command_tail() {
        let detail = json!({
            "id": "p1", "status": "rolled_back", "error": "command exited with 3",
            "report": {"commands": [
                {"command": "true", "exit_code": 0, "output_head": "", "output_tail": ""},
                {"command": "sh -c 'echo boom; exit 3'", "exit_code": 3,
                 "output_head": "start\n", "output_tail": "boom\n", "omitted_bytes": 10}
            ], "rollback": {"restored": 1, "removed": 0}}
        });
        let text = failure(&detail, Paint::new(false));
        assert!(
            text.contains("p1 rolled_back: command exited with 3"),
            "{text}"
        );
        assert!(
            text.contains("$ sh -c 'echo boom; exit 3'  exit 3"),
            "{text}"
        );
        assert!(text.contains("  boom"), "{text}");
        assert!(!text.contains("start"), "only the tail: {text}");
        assert!(text.contains("1 file(s) restored"), "{text}");
    }
}
