//! The body of a webhook: the Standard Webhooks shape `{type, timestamp, data}` where `type` is
//! `patch.<status>` and `data` is the patch view of one attempt with its summary. Bounded to
//! [`MAX_BODY_BYTES`]: the summary is trimmed first, then the lists, never the facts.

use ghost_core::{Diagnostic, Status};
use serde::Serialize;

use crate::doc::{Outcome, RollbackDoc};
use crate::render;

/// Largest body sent, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest description or error carried, in characters.
const TEXT_CHARS: usize = 4_000;
/// Most diagnostics carried (files the patch touched come first).
const MAX_DIAGNOSTICS: usize = 200;
/// Characters of the free text kept when the body is still too large without the lists.
const SHORT_TEXT_CHARS: usize = 500;
/// Rows of each list kept when the body is still too large without a summary.
const TIGHT_ROWS: usize = 20;

#[derive(Debug, Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: String,
    timestamp: String,
    data: &'a PatchView,
}

/// `data`: one attempt of a patch, as a receiver needs it.
#[derive(Debug, Clone, Serialize)]
pub struct PatchView {
    /// The patch id.
    pub id: String,
    /// Its workspace.
    pub target: String,
    /// How this attempt ended.
    pub status: Status,
    /// The attempt, from 1 (0: ended before any attempt started).
    pub attempt: u32,
    /// The patch's description.
    pub description: String,
    /// Why it did not succeed; empty on success.
    pub error: String,
    /// Its trace id, empty when untraced.
    pub trace_id: String,
    /// When the patch was accepted (RFC 3339).
    pub created_at: String,
    /// When this attempt ended (RFC 3339).
    pub finished_at: String,
    /// What the executor reported, without command output.
    pub report: ReportView,
    /// The summary.
    pub summary: SummaryView,
}

/// `data.report`.
#[derive(Debug, Clone, Serialize)]
pub struct ReportView {
    /// Wall time of the attempt, in milliseconds.
    pub duration_ms: u64,
    /// The commit made on success; empty when none.
    pub commit_sha: String,
    /// True when the patch was only checked.
    pub dry_run: bool,
    /// Edits.
    pub edits: Vec<EditView>,
    /// Commands and checks, without their output.
    pub commands: Vec<CommandView>,
    /// Located findings of the checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<Diagnostic>,
    /// Present when the workspace was restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackDoc>,
    /// Rows left out of `edits`, `commands` and `diagnostics` to bound the body.
    #[serde(skip_serializing_if = "is_zero")]
    pub omitted_rows: usize,
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

/// One edit.
#[derive(Debug, Clone, Serialize)]
pub struct EditView {
    /// The operation.
    pub op: String,
    /// The path it changed.
    pub path: String,
    /// For a rename, the old path.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// Lines added.
    pub added: u32,
    /// Lines removed.
    pub removed: u32,
}

/// One command or check.
#[derive(Debug, Clone, Serialize)]
pub struct CommandView {
    /// `command`, `validate` or `check`.
    pub kind: &'static str,
    /// The owner check's name, empty for the patch's own commands.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The command line.
    pub command: String,
    /// Its exit code; absent when killed.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed at its deadline.
    pub timed_out: bool,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
}

/// `data.summary`.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryView {
    /// The summary's Markdown, trimmed to fit the body.
    pub markdown: String,
    /// True when `markdown` was cut.
    pub truncated: bool,
    /// Link to the summary, when `summary_url_template` is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms).saturating_mul(1_000_000);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The view of `outcome` (one attempt) with the patch's summary `markdown`.
pub fn view(outcome: &Outcome, markdown: &str, summary_url: Option<String>) -> PatchView {
    let report = &outcome.report;
    let mut diagnostics = report.diagnostics.clone();
    let omitted_rows = diagnostics.len().saturating_sub(MAX_DIAGNOSTICS);
    diagnostics.truncate(MAX_DIAGNOSTICS);
    for diagnostic in &mut diagnostics {
        diagnostic.message = render::excerpt(&diagnostic.message, 500);
    }
    PatchView {
        id: outcome.patch_id.to_string(),
        target: outcome.target.to_string(),
        status: report.status,
        attempt: outcome.attempt,
        description: render::excerpt(&outcome.description, TEXT_CHARS),
        error: render::excerpt(&report.error, TEXT_CHARS),
        trace_id: outcome.trace_id.clone(),
        created_at: rfc3339(outcome.created_unix_ms),
        finished_at: rfc3339(outcome.finished_unix_ms),
        report: ReportView {
            duration_ms: report.duration_ms,
            commit_sha: report.commit_sha.clone(),
            dry_run: report.dry_run,
            edits: report
                .edits
                .iter()
                .map(|edit| EditView {
                    op: edit.op.clone(),
                    path: edit.path.clone(),
                    from: edit.from.clone(),
                    added: edit.added,
                    removed: edit.removed,
                })
                .collect(),
            commands: report
                .commands
                .iter()
                .map(|command| CommandView {
                    kind: command.kind.as_str(),
                    name: command.name.clone(),
                    command: render::excerpt(&command.command, TEXT_CHARS),
                    exit_code: command.exit_code,
                    signal: command.signal,
                    timed_out: command.timed_out,
                    duration_ms: command.duration_ms,
                })
                .collect(),
            diagnostics,
            rollback: report.rollback.as_ref().map(|rollback| RollbackDoc {
                restored: rollback.restored,
                removed: rollback.removed,
                reason: render::excerpt(&rollback.reason, TEXT_CHARS),
                error: render::excerpt(&rollback.error, TEXT_CHARS),
            }),
            omitted_rows,
        },
        summary: SummaryView {
            markdown: markdown.to_owned(),
            truncated: false,
            url: summary_url,
        },
    }
}

/// The JSON body for `view`, at most [`MAX_BODY_BYTES`]: the summary's Markdown is trimmed to
/// fit, then dropped, then each list is cut to a few rows, then dropped with the free text cut
/// short, then the free text dropped (what remains is ids, names, times and counts).
pub fn body(view: &PatchView) -> Vec<u8> {
    let mut view = view.clone();
    let kind = format!("patch.{}", view.status.as_str());
    let timestamp = view.finished_at.clone();
    let encode = |view: &PatchView| {
        serde_json::to_vec(&Message {
            kind: kind.clone(),
            timestamp: timestamp.clone(),
            data: view,
        })
        .unwrap_or_default()
    };
    let mut encoded = encode(&view);
    // Trim the summary by what is over, a few times (its characters vary in width).
    for _ in 0..4 {
        if encoded.len() <= MAX_BODY_BYTES || view.summary.markdown.is_empty() {
            break;
        }
        let over = encoded.len() - MAX_BODY_BYTES;
        let keep = view
            .summary
            .markdown
            .chars()
            .count()
            .saturating_sub(over + 1024);
        view.summary.markdown = render::model_text(&view.summary.markdown, keep);
        view.summary.truncated = true;
        encoded = encode(&view);
    }
    if encoded.len() > MAX_BODY_BYTES {
        view.summary.markdown.clear();
        view.summary.truncated = true;
        let report = &mut view.report;
        report.omitted_rows += report.edits.len().saturating_sub(TIGHT_ROWS)
            + report.commands.len().saturating_sub(TIGHT_ROWS)
            + report.diagnostics.len().saturating_sub(TIGHT_ROWS);
        report.edits.truncate(TIGHT_ROWS);
        report.commands.truncate(TIGHT_ROWS);
        report.diagnostics.truncate(TIGHT_ROWS);
        encoded = encode(&view);
    }
    // Rows can be long and JSON escapes a control character in six bytes: drop the lists and
    // cut the free text, then drop it, so the body always fits.
    if encoded.len() > MAX_BODY_BYTES {
        let report = &mut view.report;
        report.omitted_rows +=
            report.edits.len() + report.commands.len() + report.diagnostics.len();
        report.edits.clear();
        report.commands.clear();
        report.diagnostics.clear();
        view.description = render::excerpt(&view.description, SHORT_TEXT_CHARS);
        view.error = render::excerpt(&view.error, SHORT_TEXT_CHARS);
        if let Some(rollback) = &mut view.report.rollback {
            rollback.reason = render::excerpt(&rollback.reason, SHORT_TEXT_CHARS);
            rollback.error = render::excerpt(&rollback.error, SHORT_TEXT_CHARS);
        }
        encoded = encode(&view);
    }
    if encoded.len() > MAX_BODY_BYTES {
        view.description.clear();
        view.error.clear();
        if let Some(rollback) = &mut view.report.rollback {
            rollback.reason.clear();
            rollback.error.clear();
        }
        encoded = encode(&view);
    }
    encoded
}

#[cfg(test)]
mod tests {
    use ghost_core::{ApplyReport, CommandReport, EditReport, PatchId, Severity, TargetName};

    use super::*;

    fn outcome(edits: usize, diagnostics: usize) -> Outcome {
        let mut report = ApplyReport::ended(Status::RolledBack, "validation failed");
        report.edits = (0..edits)
            .map(|n| EditReport {
                op: "write".to_owned(),
                path: format!("src/{n:05}-{}.ts", "x".repeat(200)),
                ..EditReport::default()
            })
            .collect();
        report.commands = vec![CommandReport {
            command: "tsc".to_owned(),
            exit_code: Some(2),
            output_tail: "y".repeat(50_000),
            ..CommandReport::default()
        }];
        report.diagnostics = (0..diagnostics)
            .map(|n| Diagnostic {
                path: "src/a.ts".to_owned(),
                line: u32::try_from(n).unwrap(),
                column: Some(5),
                severity: Severity::Error,
                code: "TS2322".to_owned(),
                message: "m".repeat(2_000),
                tool: "tsc".to_owned(),
                check: "tsc".to_owned(),
            })
            .collect();
        Outcome {
            notify: String::new(),
            priority: String::new(),
            key_name: String::new(),
            patch_id: PatchId::parse("big").unwrap(),
            target: TargetName::parse("MAIN").unwrap(),
            attempt: 2,
            description: "d".repeat(10_000),
            report,
            trace_id: String::new(),
            created_unix_ms: 1_700_000_000_000,
            finished_unix_ms: 1_700_000_000_500,
            intake_warnings: Vec::new(),
        }
    }

    fn decoded(body: &[u8]) -> serde_json::Value {
        assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn a_small_outcome_is_sent_whole_in_the_standard_webhooks_shape() {
        let body = body(&view(&outcome(2, 1), "# summary\n", None));
        let json = decoded(&body);
        assert_eq!(json["type"], "patch.rolled_back");
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.5Z");
        assert_eq!(json["data"]["attempt"], 2);
        assert_eq!(json["data"]["summary"]["markdown"], "# summary\n");
        assert_eq!(json["data"]["summary"]["truncated"], false);
        assert_eq!(json["data"]["report"]["diagnostics"][0]["code"], "TS2322");
        assert_eq!(json["data"]["report"]["commands"][0]["exit_code"], 2);
        assert!(
            json["data"]["report"]["commands"][0]
                .get("output_tail")
                .is_none()
        );
        let description = json["data"]["description"]
            .as_str()
            .unwrap()
            .chars()
            .count();
        assert!((3_900..=4_000).contains(&description), "{description}");
        assert!(json["data"]["summary"].get("url").is_none());
    }

    #[test]
    fn a_huge_summary_is_trimmed_first_then_the_lists() {
        let markdown = "é".repeat(400_000);
        let json = decoded(&body(&view(&outcome(10, 10), &markdown, None)));
        let kept = json["data"]["summary"]["markdown"].as_str().unwrap();
        assert!(!kept.is_empty() && kept.len() < markdown.len());
        assert_eq!(json["data"]["summary"]["truncated"], true);
        assert_eq!(
            json["data"]["report"]["edits"].as_array().unwrap().len(),
            10
        );

        let json = decoded(&body(&view(&outcome(5_000, 1_000), &markdown, None)));
        assert_eq!(json["data"]["summary"]["markdown"], "");
        assert_eq!(
            json["data"]["report"]["edits"].as_array().unwrap().len(),
            TIGHT_ROWS
        );
        assert_eq!(
            json["data"]["report"]["omitted_rows"],
            5_000 + 1_000 - 2 * TIGHT_ROWS
        );
        assert_eq!(json["data"]["id"], "big");
        assert_eq!(json["data"]["error"], "validation failed");
    }

    #[test]
    fn control_characters_and_long_rows_never_push_the_body_over_the_cap() {
        // Each control character is six bytes in JSON (`\u0001`), each `€` three.
        let heavy = |n: usize| "\u{1}€".repeat(n);
        let mut outcome = outcome(0, 0);
        outcome.description = heavy(10_000);
        outcome.report.error = heavy(10_000);
        outcome.report.edits = (0..100)
            .map(|n| EditReport {
                op: "rename".to_owned(),
                path: format!("{n}{}", heavy(2_000)),
                from: heavy(2_000),
                ..EditReport::default()
            })
            .collect();
        outcome.report.commands = (0..100)
            .map(|_| CommandReport {
                command: heavy(10_000),
                name: heavy(2_000),
                ..CommandReport::default()
            })
            .collect();
        let json = decoded(&body(&view(&outcome, &heavy(100_000), None)));
        assert_eq!(json["data"]["id"], "big");
        assert_eq!(json["data"]["status"], "rolled_back");
        assert_eq!(json["data"]["summary"]["truncated"], true);
        assert_eq!(json["data"]["report"]["omitted_rows"], 200);
    }
}
