//! Block Kit bodies: the patch thread (parent, per-attempt replies), system alerts (grouped
//! parent with Ack buttons, repeats, escalations, acks, resolutions).
//!
//! Bodies carry no `channel`, `ts` or `thread_ts`: delivery adds them once it knows where the
//! thread lives.

use ghost_core::{PatchId, Status, TargetName};
use serde_json::{Value, json};

use crate::lifecycle::{AlertState, Severity};
use crate::mrkdwn::{escape, from_markdown, text};

/// Longest text Slack accepts in a section block.
pub const SECTION_CHARS: usize = 3_000;
/// Longest text Slack accepts in a header block.
pub const HEADER_CHARS: usize = 150;
/// Most buttons we put into one actions block (Slack allows 25).
const MAX_ACK_BUTTONS: usize = 5;

/// A patch outcome to tell people about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchOutcome {
    /// The patch.
    pub patch_id: PatchId,
    /// Its workspace.
    pub target: TargetName,
    /// Which attempt ended (0: ended before any attempt).
    pub attempt: u32,
    /// How it ended.
    pub status: Status,
    /// The patch's description.
    pub description: String,
    /// A summary excerpt, within Slack's limits.
    pub excerpt: String,
    /// The patch's trace id, empty when untraced.
    pub trace_id: String,
    /// Why it did not succeed; empty on success.
    pub error: String,
    /// How long it ran (ms); 0 when unknown.
    pub duration_ms: u64,
    /// Its priority (`low`, `normal`, `high`), empty when unknown.
    pub priority: String,
    /// Labels routes match on.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Slack user to tell when it ends (checked `U…`/`W…`), empty: none.
    pub notify: String,
    /// The API key that submitted it, empty when unknown.
    pub key_name: String,
}

/// Puts `mention` (Slack markup such as `<!here>`, from the config) in front of a message.
pub fn with_mention(mut body: Value, mention: &str) -> Value {
    if mention.is_empty() {
        return body;
    }
    if let Some(object) = body.as_object_mut() {
        let text = object
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        object.insert("text".to_owned(), json!(format!("{mention} {text}")));
        if let Some(blocks) = object.get_mut("blocks").and_then(Value::as_array_mut) {
            blocks.insert(
                0,
                json!({"type": "section", "text": {"type": "mrkdwn", "text": mention}}),
            );
        }
    }
    body
}

/// A digest entry, as stored and read back by [`digest_message`].
pub fn digest_entry(outcome: &PatchOutcome, summary_url: Option<&str>) -> Value {
    let id = outcome.patch_id.to_string();
    let url = summary_url.map(|template| template.replace("{id}", &id));
    json!({
        "id": id,
        "target": outcome.target.as_str(),
        "status": outcome.status.as_str(),
        "attempt": outcome.attempt,
        "duration_ms": outcome.duration_ms,
        "url": url,
    })
}

/// Most blocks Slack accepts in one message.
pub const MAX_BLOCKS: usize = 50;

/// The digest message of one channel and period: counts by outcome and target, the slowest,
/// and one line per patch (`• ✅ `<id>` on <target> (<duration>) · <summary link>`, the link
/// when `routing.summary_url` is set).
pub fn digest_message(entries: &[Value], period_ms: i64) -> Value {
    let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
    let mut by_target: std::collections::BTreeMap<String, usize> = Default::default();
    let mut slowest: Option<(u64, String)> = None;
    let mut lines = Vec::with_capacity(entries.len());
    for entry in entries {
        let id = field(entry, "id");
        let status = field(entry, "status");
        let target = field(entry, "target");
        let duration = entry
            .get("duration_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        *by_status.entry(status.clone()).or_default() += 1;
        *by_target.entry(target.clone()).or_default() += 1;
        if duration > 0 && slowest.as_ref().is_none_or(|(ms, _)| duration > *ms) {
            slowest = Some((duration, id.clone()));
        }
        lines.push(digest_line(&id, &status, &target, duration, entry));
    }
    let since = chrono_like(period_ms);
    let title = format!("🗂️ Digest since {since}: {} patches", entries.len());
    let counts = by_status
        .iter()
        .map(|(status, n)| format!("{n} {}", escape(status)))
        .collect::<Vec<_>>()
        .join(" · ");
    let targets = by_target
        .iter()
        .map(|(target, n)| format!("{} {n}", escape(target)))
        .collect::<Vec<_>>()
        .join(" · ");
    let mut summary = format!("*Outcomes* {counts}\n*Targets* {targets}");
    if let Some((ms, id)) = &slowest {
        summary.push_str(&format!("\n*Slowest* `{}` ({})", escape(id), human_ms(*ms)));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&title, HEADER_CHARS), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "verbatim": true, "text": truncate(&summary, SECTION_CHARS)}}),
    ];
    blocks.extend(line_sections(&lines));
    literal(
        json!({"text": truncate(&format!("{title}: {counts}"), SECTION_CHARS), "blocks": blocks}),
    )
}

/// A digest entry's text field (empty when missing).
fn field(entry: &Value, name: &str) -> String {
    entry
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// One patch's digest line: `• ✅ `<id>` on <target> (<duration>) · <summary link>`.
fn digest_line(id: &str, status: &str, target: &str, duration: u64, entry: &Value) -> String {
    let icon = if status == "succeeded" { "✅" } else { "❌" };
    let took = if duration > 0 {
        format!(" ({})", human_ms(duration))
    } else {
        String::new()
    };
    let plain = format!("• {icon} `{}` on {}{took}", escape(id), escape(target));
    let line = match entry.get("url").and_then(Value::as_str) {
        Some(url) if !url.is_empty() => {
            format!("{plain} · <{}|summary>", escape(url))
        }
        _ => plain.clone(),
    };
    // A line never straddles two sections and a link is never cut: a line too long for a
    // section loses its link (the id and target are bounded, so the rest always fits).
    if line.chars().count() <= SECTION_CHARS {
        line
    } else {
        truncate(&plain, SECTION_CHARS)
    }
}

/// Sections filled up to Slack's 3,000 characters, whole lines only.
fn line_sections(lines: &[String]) -> Vec<Value> {
    let mut blocks = Vec::new();
    let mut section = String::new();
    let mut section_chars = 0;
    for line in lines {
        let chars = line.chars().count();
        if !section.is_empty() && section_chars + 1 + chars > SECTION_CHARS {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "verbatim": true, "text": std::mem::take(&mut section)}}));
            section_chars = 0;
        }
        if !section.is_empty() {
            section.push('\n');
            section_chars += 1;
        }
        section.push_str(line);
        section_chars += chars;
    }
    if !section.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "verbatim": true, "text": section}}));
    }
    blocks
}

fn human_ms(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    humantime::format_duration(std::time::Duration::from_secs(ms / 1_000)).to_string()
}

/// `HH:MM UTC` of a Unix ms time.
pub fn time_of_day(ms: i64) -> String {
    chrono_like(ms)
}

/// `HH:MM UTC` of a Unix ms time.
fn chrono_like(ms: i64) -> String {
    let minutes = ms.max(0) / 60_000;
    format!("{:02}:{:02} UTC", (minutes / 60) % 24, minutes % 60)
}

/// The header line: `✅ <id> succeeded` or `❌ <id> <status>`.
pub fn headline(outcome: &PatchOutcome) -> String {
    let icon = if outcome.status == Status::Succeeded {
        "✅"
    } else {
        "❌"
    };
    format!("{icon} {} {}", outcome.patch_id, outcome.status)
}

/// The plain-text fallback shown in notifications.
pub fn fallback_text(outcome: &PatchOutcome) -> String {
    format!(
        "{} on {} (attempt {})",
        escape(&headline(outcome)),
        escape(outcome.target.as_str()),
        outcome.attempt
    )
}

/// The patch message: header, fields, excerpt, trace context and (with `buttons`) its actions:
/// Revert / View summary when it succeeded (only a succeeded patch can be reverted; it cannot
/// be retried or cancelled any more), Retry / Cancel / View summary otherwise.
pub fn patch_message(outcome: &PatchOutcome, buttons: bool) -> Value {
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&headline(outcome), HEADER_CHARS), "emoji": true},
        }),
        json!({
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "verbatim": true, "text": format!("*Target*\n{}", escape(outcome.target.as_str()))},
                {"type": "mrkdwn", "verbatim": true, "text": format!("*Attempt*\n{}", outcome.attempt)},
                {"type": "mrkdwn", "verbatim": true, "text": format!("*Status*\n{}", outcome.status)},
                {"type": "mrkdwn", "verbatim": true, "text": format!("*Description*\n{}", text(&outcome.description, 1_000))},
            ],
        }),
    ];
    // The excerpt is the summary's Markdown, the error plain text: both escaped.
    let body = if outcome.excerpt.is_empty() {
        text(&outcome.error, SECTION_CHARS)
    } else {
        truncate(&from_markdown(&outcome.excerpt), SECTION_CHARS)
    };
    if !body.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "verbatim": true, "text": body},
        }));
    }
    if !outcome.trace_id.is_empty() {
        blocks.push(json!({
            "type": "context",
            "elements": [{"type": "mrkdwn", "verbatim": true, "text": format!("trace {}", text(&outcome.trace_id, 64))}],
        }));
    }
    if buttons {
        let id = outcome.patch_id.to_string();
        blocks.push(json!({
            "type": "actions",
            "block_id": "patch_actions",
            "elements": patch_buttons(outcome.status, &id),
        }));
    }
    literal(json!({"text": fallback_text(outcome), "blocks": blocks}))
}

/// The actions of a patch message: what can still be done with a patch in `status`.
fn patch_buttons(status: Status, id: &str) -> Vec<Value> {
    if status == Status::Succeeded {
        vec![
            button("Revert", "revert", id, Some("danger")),
            button("View summary", "view_summary", id, None),
        ]
    } else {
        vec![
            button("Retry", "retry", id, Some("primary")),
            button("Cancel", "cancel", id, Some("danger")),
            button("View summary", "view_summary", id, None),
        ]
    }
}

fn button(label: &str, action_id: &str, value: &str, style: Option<&str>) -> Value {
    let mut element = json!({
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": value,
    });
    if let (Some(style), Some(object)) = (style, element.as_object_mut()) {
        object.insert("style".to_owned(), json!(style));
    }
    element
}

fn severity_icon(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "ℹ️",
        Severity::Warning => "⚠️",
        Severity::Critical => "🔥",
    }
}

/// The first message of an alert group: one alert in detail, or several listed.
pub fn alert_message(alerts: &[&AlertState]) -> Value {
    let worst = alerts
        .iter()
        .map(|alert| alert.severity)
        .max()
        .unwrap_or(Severity::Warning);
    let title = match alerts {
        [single] => format!("{} {}", severity_icon(worst), single.key),
        many => format!(
            "{} {} alerts: {}",
            severity_icon(worst),
            many.len(),
            many.first().map(|a| a.group.as_str()).unwrap_or_default()
        ),
    };
    let list: Vec<String> = alerts
        .iter()
        .map(|alert| {
            format!(
                "• `{}` ({}) {}",
                escape(&alert.key),
                alert.severity.as_str(),
                escape(&alert.summary)
            )
        })
        .collect();
    let mut blocks = vec![
        json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&title, HEADER_CHARS), "emoji": true},
        }),
        json!({
            "type": "section",
            "text": {"type": "mrkdwn", "verbatim": true, "text": truncate(&list.join("\n"), SECTION_CHARS)},
        }),
    ];
    if let [single] = alerts {
        let mut fields = vec![
            json!({"type": "mrkdwn", "verbatim": true, "text": format!("*Severity*\n{}", single.severity.as_str())}),
            json!({"type": "mrkdwn", "verbatim": true, "text": format!("*Source*\n{}", text(&single.source, 200))}),
        ];
        for (name, value) in single.labels.iter().take(8) {
            fields.push(json!({"type": "mrkdwn", "verbatim": true, "text": format!("*{}*\n{}", text(name, 100), text(value, 500))}));
        }
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    let buttons: Vec<Value> = alerts
        .iter()
        .take(MAX_ACK_BUTTONS)
        .map(|alert| {
            let label = if alerts.len() == 1 {
                "Ack".to_owned()
            } else {
                truncate(&format!("Ack {}", alert.key), 75)
            };
            button(&label, "ack", &alert.key, None)
        })
        .collect();
    blocks.push(json!({"type": "actions", "block_id": "alert_actions", "elements": buttons}));
    let fallback = format!("{}\n{}", escape(&title), list.join("\n"));
    literal(json!({"text": truncate(&fallback, SECTION_CHARS), "blocks": blocks}))
}

/// A one-line message (thread replies: repeats, acks, resolutions).
pub fn line(text: &str) -> Value {
    literal(json!({
        "text": truncate(text, SECTION_CHARS),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "verbatim": true, "text": truncate(text, SECTION_CHARS)}}],
    }))
}

/// Asks Slack to take a body as written: no auto-linking of bare URLs, `#channels` or
/// `@names`, and no previews fetched from links a caller put into it.
fn literal(mut body: Value) -> Value {
    if let Some(object) = body.as_object_mut() {
        object.insert("parse".to_owned(), json!("none"));
        object.insert("link_names".to_owned(), json!(false));
        object.insert("unfurl_links".to_owned(), json!(false));
        object.insert("unfurl_media".to_owned(), json!(false));
    }
    body
}

/// A thread reply that is also shown in the channel.
pub fn broadcast_line(text: &str) -> Value {
    let mut body = line(text);
    if let Some(object) = body.as_object_mut() {
        object.insert("reply_broadcast".to_owned(), json!(true));
    }
    body
}

/// Cuts `text` to `max_chars` characters, marking the cut with `…` (never inside an escape).
pub fn truncate(text: &str, max_chars: usize) -> String {
    crate::mrkdwn::truncate(text, max_chars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Status) -> PatchOutcome {
        PatchOutcome {
            patch_id: PatchId::parse("fix-login").unwrap(),
            target: TargetName::parse("MAIN").unwrap(),
            attempt: 2,
            status,
            description: "d".to_owned(),
            excerpt: "x".repeat(5000),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            error: String::new(),
            duration_ms: 0,
            priority: String::new(),
            labels: Default::default(),
            notify: String::new(),
            key_name: String::new(),
        }
    }

    #[test]
    fn patch_messages_carry_status_fields_excerpt_trace_and_buttons() {
        let body = patch_message(&outcome(Status::Succeeded), true);
        assert_eq!(body["blocks"][0]["text"]["text"], "✅ fix-login succeeded");
        assert_eq!(body["blocks"][1]["fields"][0]["text"], "*Target*\nMAIN");
        assert_eq!(body["blocks"][1]["fields"][1]["text"], "*Attempt*\n2");
        let excerpt = body["blocks"][2]["text"]["text"].as_str().unwrap();
        assert_eq!(excerpt.chars().count(), SECTION_CHARS);
        assert_eq!(
            body["blocks"][3]["elements"][0]["text"],
            "trace 4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let actions: Vec<_> = body["blocks"][4]["elements"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["action_id"].as_str().unwrap(),
                    b["value"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            actions,
            [("revert", "fix-login"), ("view_summary", "fix-login")]
        );
        let failed = patch_message(&outcome(Status::RolledBack), false);
        assert_eq!(
            failed["blocks"][0]["text"]["text"],
            "❌ fix-login rolled_back"
        );
        assert_eq!(failed["blocks"].as_array().unwrap().len(), 4);
        assert!(failed["text"].as_str().unwrap().contains("fix-login"));
    }
}
