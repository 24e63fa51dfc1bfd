//! `ghost revert ID`: ask the gateway to undo a succeeded patch (`POST /v1/patches/{id}/revert`)
//! and print the revert patch's id and status. With `--wait` it follows the revert patch (long
//! polls of `GET /v1/patches/{revert id}?wait=`, as `ghost submit` does) and exits by its
//! outcome. Files changed since the patch ended refuse the revert (409): each is printed, one per
//! line on stdout, and the exit is 10. A revert asked for before that ended already is that end:
//! succeeded says `X was already reverted by revert-X`; any other end exits by its status (as
//! `--wait` would) with the hint `ghost retry revert-X`.

use std::fmt::Write as _;
use std::time::Duration;

use ghost_core::Status;
use serde_json::{Value, json};

use crate::client::{ClientError, GatewayClient};
use crate::error::CliError;
use crate::exit::Exit;
use crate::render::{self, Output};

/// One long poll: at most this long per request, so a lost connection is noticed.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// Conflicting paths printed (the rest are counted); a gateway decides how many it sends, and
/// a terminal is not the place for thousands.
const CONFLICTS_SHOWN: usize = 1_000;
/// Longest conflicting path printed.
const PATH_CHARS: usize = 4_096;

/// What `revert` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RevertOptions {
    /// Follow the revert patch to its end, for at most this long (exit 14 when it still runs).
    pub wait: Option<Duration>,
}

/// Asks for the revert and, with `--wait`, follows it; the exit is the outcome.
pub async fn run(
    client: &GatewayClient,
    output: &Output,
    id: &str,
    options: &RevertOptions,
) -> Result<Exit, CliError> {
    let accepted = match client.revert(id).await {
        Ok(accepted) => accepted,
        Err(ClientError::Refused(problem)) if problem.status == 409 => {
            match conflicts_of(&problem.body) {
                Some(conflicts) => return Ok(show_conflicts(output, id, &problem.body, conflicts)),
                None => return Err(ClientError::Refused(problem).into()),
            }
        }
        Err(err) => return Err(err.into()),
    };
    let revert_id = accepted["id"].as_str().unwrap_or_default().to_owned();
    if revert_id.is_empty() {
        return Err(CliError::Other(anyhow::anyhow!(
            "the gateway accepted the revert of {id} without naming the revert patch"
        )));
    }
    let replayed = accepted["replayed"].as_bool().unwrap_or(false);
    // Asked before and ended already: the answer is that end, whether or not `--wait` was
    // given (there is nothing left to wait for).
    if replayed && let Some(status) = status_of(&accepted).filter(|status| status.is_terminal()) {
        return Ok(show_ended(output, id, &revert_id, &accepted, status));
    }
    let Some(wait) = options.wait else {
        output.show(&accepted, |view, paint| {
            format!(
                "{} is {}{}",
                paint.bold(&revert_id),
                paint.status(view["status"].as_str().unwrap_or("?")),
                if replayed {
                    format!(" (the revert of {id} was asked for before)")
                } else {
                    format!(" (reverts {id})")
                }
            )
        });
        return Ok(Exit::Success);
    };
    output.note(&format!(
        "{} {} to revert {id}; waiting for it to end",
        if replayed { "already asked:" } else { "queued" },
        output.err.bold(&revert_id)
    ));
    follow(client, output, &revert_id, wait).await
}

/// The revert of `id` was asked for before and `revert_id` ended `status`: said, and the exit
/// is that status's (as `--wait` would give); a revert that did not succeed can be retried.
fn show_ended(output: &Output, id: &str, revert_id: &str, view: &Value, status: Status) -> Exit {
    if status == Status::Succeeded {
        output.show(view, |_, paint| {
            format!("{id} was already reverted by {}", paint.bold(revert_id))
        });
        return Exit::Success;
    }
    output.show(view, |view, paint| {
        format!(
            "{} is {} (the revert of {id} was asked for before)",
            paint.bold(revert_id),
            paint.status(view["status"].as_str().unwrap_or("?"))
        )
    });
    output.note(&format!(
        "hint: the revert of {id} ended {status}; ask for it again with `ghost retry {revert_id}`"
    ));
    Exit::for_status(status)
}

/// Long-polls `revert_id` until it ends or `wait` is over.
async fn follow(
    client: &GatewayClient,
    output: &Output,
    revert_id: &str,
    wait: Duration,
) -> Result<Exit, CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    let detail = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let detail = client.patch_wait(revert_id, left.min(WAIT_SLICE)).await?;
        let ended = status_of(&detail).is_some_and(Status::is_terminal);
        if ended {
            break detail;
        }
        if tokio::time::Instant::now() >= deadline {
            output.note(&format!(
                "ghost: stopped waiting after {}; {revert_id} is {} and goes on",
                humantime::format_duration(wait),
                detail["status"].as_str().unwrap_or("unknown")
            ));
            output.note(&format!("hint: follow it with `ghost show {revert_id}`"));
            output.show(&detail, one_line);
            return Ok(Exit::WaitExpired);
        }
    };
    let status = status_of(&detail).unwrap_or(Status::Lost);
    output.show(&detail, one_line);
    if status != Status::Succeeded {
        output.note(render::failure(&detail, output.err).trim_end());
    }
    Ok(Exit::for_status(status))
}

fn status_of(detail: &Value) -> Option<Status> {
    detail["status"].as_str().and_then(|s| s.parse().ok())
}

fn one_line(detail: &Value, paint: render::Paint) -> String {
    format!(
        "{} is {}",
        paint.bold(detail["id"].as_str().unwrap_or("?")),
        paint.status(detail["status"].as_str().unwrap_or("?"))
    )
}

/// The `conflicts` of a 409 answer, when it names any.
fn conflicts_of(body: &Value) -> Option<Vec<String>> {
    let conflicts: Vec<String> = body["conflicts"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    (!conflicts.is_empty()).then_some(conflicts)
}

/// A refused revert: why on stderr, each changed file on its own line on stdout (or the
/// gateway's answer with `--json`); exit 10.
fn show_conflicts(output: &Output, id: &str, body: &Value, conflicts: Vec<String>) -> Exit {
    if output.json {
        output.print_json(&json!({
            "id": id,
            "error": reason(body),
            "conflicts": conflicts,
        }));
        return Exit::Refused;
    }
    output.note(&format!(
        "{} cannot revert {id}: {} file(s) changed since it succeeded{}",
        output.err.red("ghost:"),
        conflicts.len(),
        match reason(body) {
            reason if reason.is_empty() => String::new(),
            reason => format!(" ({})", printable(&reason, PATH_CHARS)),
        }
    ));
    let mut listed = String::new();
    for path in conflicts.iter().take(CONFLICTS_SHOWN) {
        let _ = writeln!(listed, "{}", printable(path, PATH_CHARS));
    }
    output.print(&listed);
    if conflicts.len() > CONFLICTS_SHOWN {
        output.note(&format!(
            "… and {} more (`--json` lists them all)",
            conflicts.len() - CONFLICTS_SHOWN
        ));
    }
    output.note("hint: revert those files' changes by hand, or submit a patch that does");
    Exit::Refused
}

/// The gateway's words: a problem document's `detail`, else `error`.
fn reason(body: &Value) -> String {
    body["detail"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Text from the gateway (file names are anyone's text) made safe for a terminal: control
/// characters (escape sequences, newlines) and invisible ones ([`ghost_core::invisible::INVISIBLE`]: bidi overrides,
/// zero-width characters) written as Rust escapes (`\u{202e}`), cut to `max_chars`.
fn printable(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (count, ch) in text.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        if ch.is_control() {
            out.extend(ch.escape_default());
        } else if ghost_core::invisible::is_invisible(ch) {
            out.extend(ch.escape_unicode());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cannot_drive_the_terminal() {
        assert_eq!(printable("src/a.ts", 100), "src/a.ts");
        assert_eq!(printable("a\u{1b}[2Jb\nc", 100), "a\\u{1b}[2Jb\\nc");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(
            printable("a\u{202e}b\u{200b}c\u{2066}\u{feff}é", 100),
            "a\\u{202e}b\\u{200b}c\\u{2066}\\u{feff}é"
        );
        assert_eq!(printable("\u{e0041}", 100), "\\u{e0041}");
    }

    #[test]
    fn only_a_409_that_names_files_is_a_conflict() {
        assert_eq!(
            conflicts_of(&json!({"conflicts": ["a.ts", 3, "b.ts"]})),
            Some(vec!["a.ts".to_owned(), "b.ts".to_owned()])
        );
        assert_eq!(conflicts_of(&json!({"conflicts": []})), None);
        assert_eq!(conflicts_of(&json!({"detail": "not succeeded"})), None);
    }
}
