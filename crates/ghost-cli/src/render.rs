//! What `ghost` prints: the gateway's JSON turned into short tables and texts for people, or
//! passed through whole for `--json`. Colours only when the stream is a terminal and
//! `NO_COLOR` is unset. Every renderer returns a `String` so it can be tested without a tty.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;

/// ANSI styling, on or off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Styling on (`true`) or off.
    pub fn new(on: bool) -> Self {
        Self { on }
    }

    fn wrap(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Bold.
    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// Dim, for secondary facts.
    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }

    /// Red, for errors.
    pub fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }

    /// A status coloured by what it means: green success, red failure, yellow in progress.
    pub fn status(self, status: &str) -> String {
        let code = match status {
            "succeeded" => "32",
            "failed" | "rolled_back" | "timed_out" | "rejected" | "lost" | "interrupted" => "31",
            "cancelled" => "35",
            _ => "33",
        };
        self.wrap(code, status)
    }
}

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: one JSON document on stdout, nothing else there.
    pub json: bool,
    /// Styling of stdout.
    pub out: Paint,
    /// Styling of stderr.
    pub err: Paint,
}

impl Output {
    /// Colours where each stream is a terminal, unless `no_color` (`NO_COLOR` set).
    pub fn detect(json: bool, no_color: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            json,
            out: Paint::new(!no_color && !json && std::io::stdout().is_terminal()),
            err: Paint::new(!no_color && std::io::stderr().is_terminal()),
        }
    }

    /// Text to stdout (a closed pipe is not worth a panic).
    pub fn print(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = stdout.write_all(b"\n");
        }
    }

    /// One JSON document to stdout, pretty-printed.
    pub fn print_json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.print(&text);
    }

    /// `value` as JSON with `--json`, else `human(value)`.
    pub fn show(&self, value: &Value, human: impl FnOnce(&Value, Paint) -> String) {
        if self.json {
            self.print_json(value);
        } else {
            self.print(&human(value, self.out));
        }
    }

    /// A progress or diagnostic line on stderr.
    pub fn note(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// `2026-11-21 20:03:34Z` for Unix milliseconds (`-` for 0 or absent).
pub fn utc(unix_ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    if unix_ms <= 0 {
        return "-".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// Rows as aligned columns; `paint` styles a cell after padding so colours keep alignment.
fn table(header: &[&str], rows: &[Vec<String>], paint: impl Fn(usize, &str) -> String) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>| -> String {
        cells
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == widths.len() {
                    cell
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_uppercase()).collect())
    );
    for row in rows {
        let padded: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = if i + 1 == widths.len() {
                    0
                } else {
                    widths[i].saturating_sub(cell.chars().count())
                };
                format!("{}{}", paint(i, cell), " ".repeat(pad))
            })
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    }
    out
}

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

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
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

/// Every target's queue (`GET /v1/targets`, or one target from pause/resume).
pub fn targets(targets: &Value, paint: Paint) -> String {
    let list = match targets {
        Value::Array(items) => items.clone(),
        Value::Object(_) if targets["targets"].is_array() => {
            targets["targets"].as_array().cloned().unwrap_or_default()
        }
        Value::Object(_) => vec![targets.clone()],
        _ => Vec::new(),
    };
    if list.is_empty() {
        return "no targets".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                text(t, "target").to_owned(),
                t["queued"].as_u64().unwrap_or(0).to_string(),
                utc(t["oldest_queued_unix_ms"].as_i64().unwrap_or(0)),
                if t["paused"].as_bool().unwrap_or(false) {
                    "paused".to_owned()
                } else {
                    "running".to_owned()
                },
                if t["executor_online"].as_bool().unwrap_or(false) {
                    "online".to_owned()
                } else {
                    "offline".to_owned()
                },
                or_dash(text(t, "running_patch_id")).to_owned(),
            ]
        })
        .collect();
    table(
        &["target", "queued", "oldest", "state", "executor", "running"],
        &rows,
        |column, cell| match (column, cell) {
            (3, "paused") | (4, "offline") => paint.red(cell),
            _ => cell.to_owned(),
        },
    )
}

/// Connected executors (`GET /v1/executors`).
pub fn executors(answer: &Value, _paint: Paint) -> String {
    let list = answer["executors"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no executors connected".to_owned();
    }
    let join = |value: &Value| {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                text(e, "executor_id").to_owned(),
                or_dash(&join(&e["targets"])).to_owned(),
                utc(e["connected_unix_ms"].as_i64().unwrap_or(0)),
                utc(e["last_seen_unix_ms"].as_i64().unwrap_or(0)),
                or_dash(&join(&e["running_patch_ids"])).to_owned(),
            ]
        })
        .collect();
    table(
        &["executor", "targets", "connected", "last seen", "running"],
        &rows,
        |_, cell| cell.to_owned(),
    )
}

fn joined(value: &Value) -> String {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A token just issued (`ghost token create`): the token on a line of its own, then how to
/// use it.
pub fn issued_token(issued: &Value, paint: Paint) -> String {
    let token = text(issued, "token");
    let targets = joined(&issued["targets"]);
    let workspaces: Vec<String> = issued["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|target| format!(" --workspace {target}=DIR"))
        .collect();
    format!(
        "{} {} for {targets} (shown once; only its hash is kept):\n{token}\nwrite it to a file only you can read (FILE, mode 0600; not on a command line, which every user sees in ps)\nstart an executor with: ghost executor --router https://ROUTER_HOST:PORT --token-file FILE{}",
        paint.bold("executor token"),
        text(issued, "name"),
        workspaces.concat()
    )
}

/// Executor tokens (`GET /v1/executor-tokens`), without secrets.
pub fn executor_tokens(answer: &Value, _paint: Paint) -> String {
    let list = answer["tokens"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no executor tokens".to_owned();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            let state = if t["revoked_at"].is_string() {
                "revoked".to_owned()
            } else {
                "live".to_owned()
            };
            vec![
                text(t, "name").to_owned(),
                or_dash(&joined(&t["targets"])).to_owned(),
                state,
                or_dash(text(t, "created_at")).to_owned(),
                or_dash(text(t, "last_used_at")).to_owned(),
                or_dash(text(t, "created_by")).to_owned(),
                t["live_streams"].as_u64().unwrap_or(0).to_string(),
            ]
        })
        .collect();
    table(
        &[
            "name",
            "targets",
            "state",
            "created",
            "last used",
            "by",
            "streams",
        ],
        &rows,
        |_, cell| cell.to_owned(),
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

/// `ghost status`: targets, executors, patch counts.
pub fn overview(overview: &Value, paint: Paint) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", paint.bold("gateway"), text(overview, "url"));
    let _ = writeln!(out, "\n{}", paint.bold("targets"));
    out.push_str(&targets(&overview["targets"], paint));
    let _ = writeln!(out, "\n{}", paint.bold("executors"));
    match overview["executors"].as_array() {
        Some(_) => out.push_str(&executors(overview, paint)),
        None => {
            let _ = writeln!(
                out,
                "{}",
                paint.dim(&format!(
                    "unavailable: {}",
                    or_dash(text(overview, "executors_error"))
                ))
            );
        }
    }
    let counted = overview["counted"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "\n{} {}",
        paint.bold("patches"),
        paint.dim(
            &if overview["counts_truncated"].as_bool().unwrap_or(false) {
                format!("(newest {counted})")
            } else {
                format!("({counted} in all)")
            }
        )
    );
    if let Some(counts) = overview["counts"].as_object() {
        if counts.is_empty() {
            let _ = writeln!(out, "none yet");
        }
        for (status, count) in counts {
            let _ = writeln!(
                out,
                "  {:<12} {}",
                paint.status(status),
                count.as_u64().unwrap_or(0)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(86_400_000), "1970-01-02 00:00:00Z");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56Z");
    }

    #[test]
    fn tables_align_and_paint_after_padding() {
        let list = [
            json!({"id": "a", "target": "MAIN", "status": "queued", "attempt": 0}),
            json!({"id": "longer-id", "target": "MAIN", "status": "succeeded", "attempt": 1}),
        ];
        let plain = patch_list(&list, "42", Paint::new(false));
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("ID         TARGET"), "{plain}");
        assert!(lines[1].starts_with("a          MAIN"), "{plain}");
        assert!(plain.contains("--page-token 42"));
        assert!(!plain.contains('\x1b'));
        let coloured = patch_list(&list, "", Paint::new(true));
        assert!(coloured.contains("\x1b[32msucceeded\x1b[0m"));
    }

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
