//! The running system, for people: every target's queue, the connected executors, executor
//! tokens, and the `ghost status` overview of them with the patch counts.

use std::fmt::Write as _;

use serde_json::Value;

use super::{Paint, or_dash, table, text, utc};

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
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            vec![
                text(e, "executor_id").to_owned(),
                or_dash(&joined(&e["targets"])).to_owned(),
                utc(e["connected_unix_ms"].as_i64().unwrap_or(0)),
                utc(e["last_seen_unix_ms"].as_i64().unwrap_or(0)),
                or_dash(&joined(&e["running_patch_ids"])).to_owned(),
            ]
        })
        .collect();
    table(
        &["executor", "targets", "connected", "last seen", "running"],
        &rows,
        |_, cell| cell.to_owned(),
    )
}

/// The strings of an array, comma-separated.
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
