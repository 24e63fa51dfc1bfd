//! `ghost submit`: send a patch file (JSON or YAML, or stdin), follow its events on stderr
//! until it ends (long polls of `GET /v1/patches/{id}?wait=`, not a polling loop), print its
//! summary, and exit with the code of its outcome. `--dry-run` only checks it: the diff it
//! would apply and the rung every edit matched.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use ghost_core::Status;
use serde_json::Value;

use crate::client::GatewayClient;
use crate::error::CliError;
use crate::exit::Exit;
use crate::render::{self, Output};

/// How long to keep reading for the summary after a patch has ended (the summarizer writes
/// it a moment later; if it is down the outcome is still reported).
const SUMMARY_GRACE: Duration = Duration::from_secs(10);
/// One long poll: the events of a running patch show at least this often.
const WAIT_SLICE: Duration = Duration::from_secs(5);
/// Between reads for the summary once the patch has ended.
const SUMMARY_POLL: Duration = Duration::from_millis(200);

/// What `submit` was asked to do.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Give up following after this long (exit 14; the patch goes on).
    pub wait: Duration,
    /// Return right after the gateway accepted the patch.
    pub no_wait: bool,
    /// Only check the patch (nothing is stored).
    pub dry_run: bool,
}

/// A patch document and its media type.
#[derive(Debug)]
pub struct PatchFile {
    /// The bytes as read.
    pub body: Vec<u8>,
    /// `application/json` or `application/yaml`.
    pub content_type: &'static str,
}

/// Reads `path` (`-`: stdin); JSON or YAML by extension, else by the first character.
pub fn read_patch(path: &Path) -> Result<PatchFile, CliError> {
    let body = if path.as_os_str() == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .map_err(|err| CliError::Input(format!("cannot read the patch from stdin: {err}")))?;
        buffer
    } else {
        std::fs::read(path)
            .map_err(|err| CliError::Input(format!("cannot read {}: {err}", path.display())))?
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first.is_none() {
        return Err(CliError::Input(format!(
            "{} is empty: expected a patch as JSON or YAML",
            if path.as_os_str() == "-" {
                "stdin".to_owned()
            } else {
                path.display().to_string()
            }
        )));
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let yaml = match extension.as_deref() {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => !matches!(first, Some(b'{' | b'[')),
    };
    Ok(PatchFile {
        body,
        content_type: if yaml {
            "application/yaml"
        } else {
            "application/json"
        },
    })
}

fn status_of(detail: &Value) -> Option<Status> {
    detail["status"].as_str().and_then(|s| s.parse().ok())
}

/// Submits and follows; the returned exit is the patch's outcome.
pub async fn run(
    client: &GatewayClient,
    output: &Output,
    patch: PatchFile,
    options: &SubmitOptions,
) -> Result<Exit, CliError> {
    if options.dry_run {
        let checked = client.dry_run(patch.body, patch.content_type).await?;
        return Ok(show_dry_run(output, &checked));
    }
    let accepted = client.submit(patch.body, patch.content_type).await?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    announce(output, &id, &accepted);
    if options.no_wait {
        if output.json {
            output.print_json(&accepted);
        }
        return Ok(Exit::Success);
    }
    match follow(client, output, &id, options.wait).await? {
        Some(detail) => Ok(show_outcome(output, &detail)),
        None => Ok(Exit::WaitExpired),
    }
}

/// Notes on stderr that the gateway accepted the patch (or had already), with its target,
/// legacy shape and trace id, then its warnings and the legacy fields it ignored.
fn announce(output: &Output, id: &str, accepted: &Value) {
    output.note(&format!(
        "{} {} for {}{} (trace {})",
        if accepted["replayed"].as_bool().unwrap_or(false) {
            "already accepted earlier (same content):"
        } else {
            "accepted"
        },
        output.err.bold(id),
        accepted["target"].as_str().unwrap_or("-"),
        match accepted["shape"].as_str() {
            Some(shape) if shape != "v1" => format!(" as legacy shape {shape}"),
            _ => String::new(),
        },
        accepted["trace_id"]
            .as_str()
            .filter(|t| !t.is_empty())
            .unwrap_or("-")
    ));
    for warning in accepted["warnings"].as_array().into_iter().flatten() {
        output.note(&format!("  warning: {}", warning.as_str().unwrap_or("?")));
    }
    for ignored in accepted["ignored"].as_array().into_iter().flatten() {
        output.note(&format!(
            "  note: ignored legacy field {}",
            ignored.as_str().unwrap_or("?")
        ));
    }
}

/// Follows the patch, its new events on stderr, until it ends and its summary is there (or
/// [`SUMMARY_GRACE`] has passed): its detail. `None` when `wait` ran out first (said on
/// stderr, with the detail on stdout for `--json`).
async fn follow(
    client: &GatewayClient,
    output: &Output,
    id: &str,
    wait: Duration,
) -> Result<Option<Value>, CliError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut summary_deadline = None;
    let mut shown = 0;
    loop {
        let detail = if summary_deadline.is_some() {
            tokio::time::sleep(SUMMARY_POLL).await;
            client.patch(id).await?
        } else {
            // Answered as soon as the patch ends, else after the slice with its state.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            client.patch_wait(id, left.min(WAIT_SLICE)).await?
        };
        let events = client.events(id).await?;
        for event in events.as_array().into_iter().flatten().skip(shown) {
            output.note(&render::progress_line(event, output.err));
        }
        shown = shown.max(events.as_array().map_or(0, Vec::len));
        let terminal = status_of(&detail).is_some_and(Status::is_terminal);
        let now = tokio::time::Instant::now();
        if terminal {
            let grace_end = *summary_deadline.get_or_insert(now + SUMMARY_GRACE);
            if !detail["summary"].is_null() || now >= grace_end {
                return Ok(Some(detail));
            }
            continue;
        }
        if now >= deadline {
            output.note(&format!(
                "ghost: stopped waiting after {wait:?}; {id} is {} and goes on",
                detail["status"].as_str().unwrap_or("unknown")
            ));
            output.note(&format!("hint: follow it with `ghost show {id}`"));
            if output.json {
                output.print_json(&detail);
            }
            return Ok(None);
        }
    }
}

/// Prints the ended patch (its summary, else its detail; the JSON with `--json`) and, unless
/// it succeeded, why on stderr; the exit of its status.
fn show_outcome(output: &Output, detail: &Value) -> Exit {
    let status = status_of(detail).unwrap_or(Status::Lost);
    if output.json {
        output.print_json(detail);
    } else {
        match detail["summary"].as_str() {
            Some(summary) => output.print(summary),
            None => output.print(&render::patch_detail(detail, output.out)),
        }
    }
    if status != Status::Succeeded {
        output.note(render::failure(detail, output.err).trim_end());
    }
    Exit::for_status(status)
}

/// Prints a dry run: the rung of every edit and the diff (or the JSON); the exit says whether
/// the patch would apply.
fn show_dry_run(output: &Output, checked: &Value) -> Exit {
    let status = checked["status"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(Status::Failed);
    if output.json {
        output.print_json(checked);
    } else {
        let paint = output.err;
        output.note(&format!(
            "dry run of {} on {}: {}",
            paint.bold(checked["id"].as_str().unwrap_or("-")),
            checked["target"].as_str().unwrap_or("-"),
            if status == Status::Succeeded {
                "every edit would apply".to_owned()
            } else {
                format!(
                    "would be {status}: {}",
                    checked["error"].as_str().unwrap_or("")
                )
            }
        ));
        for edit in checked["edits"].as_array().into_iter().flatten() {
            let text = |key: &str| edit[key].as_str().unwrap_or("").to_owned();
            let rung = text("match_step");
            output.note(&format!(
                "  {} {}{} +{} -{}",
                text("op"),
                text("path"),
                if rung.is_empty() {
                    String::new()
                } else {
                    format!(" (rung {rung})")
                },
                edit["added"].as_u64().unwrap_or(0),
                edit["removed"].as_u64().unwrap_or(0),
            ));
        }
        let diff = checked["diff"].as_str().unwrap_or("");
        if !diff.is_empty() {
            output.print(diff.trim_end_matches('\n'));
        }
        output.note("nothing was written, queued or stored; commands and checks were not run");
    }
    if status == Status::Succeeded {
        Exit::Success
    } else {
        Exit::for_status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_extension_then_first_character() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("a.yaml", "{\"id\": 1}", "application/yaml"),
            ("a.json", "id: x", "application/json"),
            ("a.patch", "  {\"id\": \"x\"}", "application/json"),
            ("a.patch", "id: x\n", "application/yaml"),
        ];
        for (name, body, expected) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            assert_eq!(read_patch(&path).unwrap().content_type, expected, "{name}");
        }
    }

    #[test]
    fn empty_and_missing_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.json");
        std::fs::write(&empty, " \n").unwrap();
        let err = read_patch(&empty).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
        let err = read_patch(&dir.path().join("none.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
