//! The agent's part of a patch's detail page: how the coding agent ran (cli, exit status,
//! duration, tokens and cost), its final message, an excerpt of its diff with every file it
//! touched, the tail of its transcript, and how it was confined (the sandbox).

use std::fmt::Write as _;

use crate::report::AgentView;
use crate::ui::html::{duration, esc};

/// Most lines of the agent's diff shown on the page (the JSON report has all of it).
pub const DIFF_EXCERPT_LINES: usize = 200;
/// Most bytes of the agent's diff shown on the page.
pub const DIFF_EXCERPT_BYTES: usize = 32 * 1024;

/// What the report's `sandbox` value means, for a person.
pub fn sandbox_text(sandbox: &str) -> String {
    match sandbox {
        "landlock" => "Landlock applied: writes only to the workspace and a private temp dir \
                       (plus the target's <code>writable</code> paths)"
            .to_owned(),
        "landlock-partial" => "Landlock applied partly: this kernel's Landlock is older than \
                               ABI 6, so not everything is confined"
            .to_owned(),
        "none" => "Not confined: the kernel has no Landlock, or the target's \
                   <code>sandbox = \"off\"</code>"
            .to_owned(),
        other => format!("<code>{}</code>", esc(other)),
    }
}

/// The first [`DIFF_EXCERPT_LINES`] lines (at most [`DIFF_EXCERPT_BYTES`]) of `diff`, and
/// whether anything was left out. It ends at a line end, unless its first line alone is too
/// long (then that line is cut at a character boundary).
fn excerpt(diff: &str) -> (&str, bool) {
    let mut end = 0;
    for (count, line) in diff.split_inclusive('\n').enumerate() {
        if count == DIFF_EXCERPT_LINES {
            return (&diff[..end], true);
        }
        if end + line.len() > DIFF_EXCERPT_BYTES {
            if end == 0 {
                let mut cut = DIFF_EXCERPT_BYTES;
                while !diff.is_char_boundary(cut) {
                    cut -= 1;
                }
                return (&diff[..cut], true);
            }
            return (&diff[..end], true);
        }
        end += line.len();
    }
    (diff, false)
}

fn tokens(count: Option<u64>) -> String {
    count.map_or_else(|| "—".to_owned(), |count| count.to_string())
}

/// The report's `sandbox` row (empty when nothing ran).
pub fn sandbox(out: &mut String, sandbox: &str) {
    if sandbox.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "<h3>Sandbox</h3><p class=\"sandbox\" data-sandbox=\"{value}\">{text}</p>",
        value = esc(sandbox),
        text = sandbox_text(sandbox),
    );
}

/// The agent section of a report.
pub fn section(out: &mut String, agent: &AgentView) {
    let exit = match agent.exit_code {
        Some(code) => format!("exit {code}"),
        None if agent.cli == "inbox" => "completion file".to_owned(),
        None => "killed".to_owned(),
    };
    let cost = if agent.cost_usd.is_empty() {
        "—".to_owned()
    } else {
        format!("${}", esc(&agent.cost_usd))
    };
    let _ = write!(
        out,
        "<section class=\"agent\"><h3>Agent</h3><dl class=\"facts\">\
         <dt>CLI</dt><dd><code>{cli}</code></dd><dt>Exit</dt><dd>{exit}</dd>\
         <dt>Duration</dt><dd>{took}</dd>\
         <dt>Tokens</dt><dd>{input} in · {output} out</dd><dt>Cost</dt><dd>{cost}</dd></dl>",
        cli = esc(&agent.cli),
        exit = esc(&exit),
        took = duration(i64::try_from(agent.duration_ms).unwrap_or(i64::MAX)),
        input = tokens(agent.input_tokens),
        output = tokens(agent.output_tokens),
    );
    out.push_str("<h4>Final message</h4>");
    if agent.final_message.is_empty() {
        out.push_str("<p class=\"muted\">The agent gave none.</p>");
    } else {
        let _ = write!(
            out,
            "<pre class=\"output final-message\">{}</pre>",
            esc(&agent.final_message)
        );
    }
    let _ = write!(out, "<h4>Files changed ({})</h4>", agent.files.len());
    if agent.files.is_empty() {
        out.push_str("<p class=\"muted\">None.</p>");
    } else {
        out.push_str("<ul class=\"files\">");
        for file in &agent.files {
            let _ = write!(out, "<li><code>{}</code></li>", esc(file));
        }
        out.push_str("</ul>");
    }
    if !agent.diff.is_empty() {
        let (shown, cut) = excerpt(&agent.diff);
        let _ = write!(
            out,
            "<h4>Diff</h4><pre class=\"output diff\">{}</pre>",
            esc(shown)
        );
        if cut || agent.diff_truncated {
            out.push_str(
                "<p class=\"muted\">… the diff goes on: the report's JSON \
                 (<code>report.agent.diff</code>) has the rest the executor kept; every file \
                 is listed above …</p>",
            );
        }
    }
    if !agent.transcript_tail.is_empty() {
        let _ = write!(
            out,
            "<h4>Transcript (tail)</h4><pre class=\"output transcript\">{}</pre>",
            esc(&agent.transcript_tail)
        );
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_diff_is_cut_to_its_excerpt_at_a_line_end() {
        let diff: String = (0..500).map(|n| format!("+line {n}\n")).collect();
        let (shown, cut) = excerpt(&diff);
        assert!(cut);
        assert_eq!(shown.lines().count(), DIFF_EXCERPT_LINES);
        assert!(shown.ends_with('\n'));
        assert_eq!(excerpt("+a\n-b\n"), ("+a\n-b\n", false));
        let wide = "é".repeat(DIFF_EXCERPT_BYTES);
        let (shown, cut) = excerpt(&wide);
        assert!(cut && !shown.is_empty() && shown.len() <= DIFF_EXCERPT_BYTES);
    }

    #[test]
    fn agent_text_is_escaped() {
        let mut out = String::new();
        section(
            &mut out,
            &AgentView {
                cli: "command".to_owned(),
                exit_code: Some(0),
                duration_ms: 5,
                diff: "+<script>\n".to_owned(),
                diff_truncated: false,
                files: vec!["<b>.txt".to_owned()],
                final_message: "<img src=x>".to_owned(),
                transcript_tail: "</pre>".to_owned(),
                input_tokens: None,
                output_tokens: Some(3),
                cost_usd: "<1".to_owned(),
            },
        );
        for raw in ["<script>", "<b>.txt", "<img", "$<1"] {
            assert!(!out.contains(raw), "{raw} in {out}");
        }
        assert!(out.contains("&lt;/pre&gt;"), "{out}");
        sandbox(&mut out, "<x>");
        assert!(!out.contains("<x>"));
    }
}
