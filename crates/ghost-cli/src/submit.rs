//! `ghost submit`: send a patch file (JSON or YAML, or stdin), follow its events on stderr
//! until it ends, print its summary, and exit with the code of its outcome.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use ghost_core::Status;
use serde_json::Value;

use crate::client::GatewayClient;
use crate::error::CliError;
use crate::exit::Exit;
use crate::render::{self, Output};

/// How long to keep polling for the summary after a patch has ended (the summarizer writes
/// it a moment later; if it is down the outcome is still reported).
const SUMMARY_GRACE: Duration = Duration::from_secs(10);

/// What `submit` was asked to do.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Give up following after this long (exit 14; the patch goes on).
    pub wait: Duration,
    /// Return right after the gateway accepted the patch.
    pub no_wait: bool,
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
    let accepted = client.submit(patch.body, patch.content_type).await?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    let paint = output.err;
    output.note(&format!(
        "{} {} for {}{} (trace {})",
        if accepted["replayed"].as_bool().unwrap_or(false) {
            "already accepted earlier (same content):"
        } else {
            "accepted"
        },
        paint.bold(&id),
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
    if options.no_wait {
        if output.json {
            output.print_json(&accepted);
        }
        return Ok(Exit::Success);
    }

    let deadline = tokio::time::Instant::now() + options.wait;
    let mut summary_deadline = None;
    let mut shown = 0;
    let mut poll = Duration::from_millis(10);
    let detail = loop {
        let events = client.events(&id).await?;
        let list = events.as_array().cloned().unwrap_or_default();
        for event in list.iter().skip(shown) {
            output.note(&render::progress_line(event, paint));
        }
        shown = shown.max(list.len());
        let detail = client.patch(&id).await?;
        let terminal = status_of(&detail).is_some_and(Status::is_terminal);
        let now = tokio::time::Instant::now();
        if terminal {
            let grace_end = *summary_deadline.get_or_insert(now + SUMMARY_GRACE);
            if !detail["summary"].is_null() || now >= grace_end {
                // The patch may have ended after the events above were read: show the rest.
                let events = client.events(&id).await?;
                for event in events.as_array().into_iter().flatten().skip(shown) {
                    output.note(&render::progress_line(event, paint));
                }
                break detail;
            }
        }
        if now >= deadline {
            output.note(&format!(
                "ghost: stopped waiting after {:?}; {id} is {} and goes on",
                options.wait,
                detail["status"].as_str().unwrap_or("unknown")
            ));
            output.note(&format!("hint: follow it with `ghost show {id}`"));
            if output.json {
                output.print_json(&detail);
            }
            return Ok(Exit::WaitExpired);
        }
        // Quick first polls so short patches report at once; then settle at 250 ms.
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(250));
    };

    let status = status_of(&detail).unwrap_or(Status::Lost);
    if output.json {
        output.print_json(&detail);
    } else {
        match detail["summary"].as_str() {
            Some(summary) => output.print(summary),
            None => output.print(&render::patch_detail(&detail, output.out)),
        }
    }
    if status != Status::Succeeded {
        output.note(render::failure(&detail, paint).trim_end());
    }
    Ok(Exit::for_status(status))
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
