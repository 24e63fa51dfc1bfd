//! Slack `mrkdwn` text built from caller-supplied parts.
//!
//! Slack reads `<…>` in mrkdwn as a link, a mention or a broadcast (`<!channel>`), and `&` starts
//! an entity. Every text that comes from a caller (descriptions, ids, paths, errors, command
//! output, summaries, alert summaries, a Slack user's own arguments) goes through [`text`] or
//! [`escape`] before it is put into a message, so a patch cannot ping a channel or dress up a
//! phishing link. Our own markup (`*bold*`, `` `code` ``, `<@user>`) is added around the
//! escaped parts. Cutting a message to Slack's limits ([`truncate`]) never splits an escape.
//! Summaries arrive as GitHub Markdown; [`from_markdown`] turns them into mrkdwn, escaping the
//! same way.

use std::borrow::Cow;

/// `text` with `&`, `<` and `>` written as Slack's entities (the only three Slack asks for).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['&', '<', '>']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// Caller text escaped and cut to at most `max_chars` characters (escapes included).
pub fn text(raw: &str, max_chars: usize) -> String {
    truncate(&escape(raw), max_chars)
}

/// Caller text for inside a `` `code` `` span: escaped ([`escape`]), each backtick written as
/// `ˋ` (U+02CB; Slack has no escape for a backtick, and one would end the span early), each
/// control character (a newline among them) as `�` and each invisible one ([`ghost_core::invisible::INVISIBLE`]: bidi
/// overrides, zero-width characters) as its escape (`\u{202e}`), then cut to at most
/// `max_chars` characters.
pub fn code(raw: &str, max_chars: usize) -> String {
    let mut plain = String::with_capacity(raw.len());
    for ch in raw.chars() {
        match ch {
            '`' => plain.push('\u{2cb}'),
            ch if ch.is_control() => plain.push('\u{fffd}'),
            ch if ghost_core::invisible::is_invisible(ch) => plain.extend(ch.escape_unicode()),
            ch => plain.push(ch),
        }
    }
    text(&plain, max_chars)
}

/// Cuts `text` to `max_chars` characters, marking the cut with `…`; a cut that would fall
/// inside an entity (`&amp;`, `&lt;`, `&gt;`) is moved before it.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    // An entity is at most 5 characters: a `&` among the last 4 with no `;` after it was cut.
    let tail_start = cut
        .char_indices()
        .rev()
        .nth(3)
        .map_or(0, |(index, _)| index);
    if let Some(amp) = cut[tail_start..].rfind('&').map(|at| tail_start + at)
        && !cut[amp..].contains(';')
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

/// Longest link text and URL read as a Markdown link; longer ones stay literal text.
const LINK_TEXT_CHARS: usize = 200;
const LINK_URL_CHARS: usize = 2_000;

/// Slack mrkdwn for a GitHub Markdown text (a summary, its excerpt): `#` headings and
/// `**bold**` become `*bold*`, tables become one line per row (`a · b`, the header in bold),
/// `- ` items become `• `, fenced blocks lose their info string, and every character of the
/// text is escaped ([`escape`]). A link `[text](url)` becomes `text (url)`, plain text: the
/// summaries carry caller text (descriptions, errors, tool messages), and caller text never
/// becomes Slack markup, a link included. Linear in the text.
pub fn from_markdown(markdown: &str) -> String {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = String::with_capacity(markdown.len() + markdown.len() / 8);
    let mut fence: Option<usize> = None;
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        let ticks = trimmed.len() - trimmed.trim_start_matches('`').len();
        if let Some(open) = fence {
            if ticks >= open && trimmed.len() == ticks {
                out.push_str("```\n");
                fence = None;
            } else {
                // Slack has one fence: a run of three inside would close the block early.
                out.push_str(&escape(&line.replace("```", "'''")));
                out.push('\n');
            }
            continue;
        }
        if ticks >= 3 {
            fence = Some(ticks);
            out.push_str("```\n");
            continue;
        }
        if let Some(title) = heading(trimmed) {
            out.push('*');
            inline(&title.replace("**", ""), &mut out);
            out.push_str("*\n");
            continue;
        }
        if let Some(cells) = table_row(trimmed) {
            if cells.iter().all(|cell| is_separator(cell)) {
                continue;
            }
            let header = lines
                .get(index + 1)
                .and_then(|next| table_row(next.trim()))
                .is_some_and(|next| next.iter().all(|cell| is_separator(cell)));
            for (n, cell) in cells.iter().enumerate() {
                if n > 0 {
                    out.push_str(" · ");
                }
                let cell = cell.trim().replace("\\|", "|");
                if header && !cell.is_empty() {
                    out.push('*');
                    inline(&cell, &mut out);
                    out.push('*');
                } else {
                    inline(&cell, &mut out);
                }
            }
            out.push('\n');
            continue;
        }
        if let Some(item) = trimmed
            .strip_prefix("- ")
            .or_else(|| trimmed.strip_prefix("* "))
        {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(indent);
            out.push_str("• ");
            inline(item, &mut out);
        } else {
            inline(line, &mut out);
        }
        out.push('\n');
    }
    if fence.is_some() {
        out.push_str("```\n");
    }
    out
}

/// The title of a `#`…`######` heading.
fn heading(line: &str) -> Option<&str> {
    let hashes = line.len() - line.trim_start_matches('#').len();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    line[hashes..].strip_prefix(' ').map(str::trim)
}

/// The cells of a `| a | b |` row (`\|` inside a cell is not a border).
fn table_row(line: &str) -> Option<Vec<&str>> {
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    let mut cells = Vec::new();
    let mut start = 0;
    let mut previous = '\0';
    for (at, ch) in inner.char_indices() {
        if ch == '|' && previous != '\\' {
            cells.push(&inner[start..at]);
            start = at + 1;
        }
        previous = ch;
    }
    cells.push(&inner[start..]);
    Some(cells)
}

fn is_separator(cell: &str) -> bool {
    let cell = cell.trim();
    !cell.is_empty() && cell.chars().all(|c| c == '-' || c == ':')
}

/// One line of Markdown text as mrkdwn, escaped: code spans kept, `**` → `*`, links as
/// `text (url)`. Each byte is scanned a bounded number of times: after one unclosed code
/// span the rest of the line has none, and a link is looked for only a bounded way ahead.
fn inline(text: &str, out: &mut String) {
    let mut rest = text;
    let mut code_spans = true;
    while let Some(ch) = rest.chars().next() {
        if ch == '`' && code_spans {
            let run = rest.len() - rest.trim_start_matches('`').len();
            let ticks = &rest[..run];
            if let Some(end) = rest[run..].find(ticks) {
                let code = &rest[run..run + end];
                out.push('`');
                out.push_str(&escape(&code.replace('`', "'")));
                out.push('`');
                rest = &rest[run + end + run..];
                continue;
            }
            code_spans = false;
        }
        if rest.starts_with("**") {
            out.push('*');
            rest = &rest[2..];
            continue;
        }
        if ch == '['
            && let Some((label, url, used)) = link(rest)
        {
            out.push_str(&escape(label));
            out.push_str(" (");
            out.push_str(&escape(url));
            out.push(')');
            rest = &rest[used..];
            continue;
        }
        out.push_str(&escape(&rest[..ch.len_utf8()]));
        rest = &rest[ch.len_utf8()..];
    }
}

/// `[label](url)` at the start of `text`: the label, the URL and the bytes used. Looks at
/// most [`LINK_TEXT_CHARS`] + [`LINK_URL_CHARS`] characters ahead.
fn link(text: &str) -> Option<(&str, &str, usize)> {
    let after_open = &text[1..];
    let close = after_open
        .char_indices()
        .take(LINK_TEXT_CHARS)
        .find(|(_, c)| matches!(c, ']' | '['))
        .filter(|(_, c)| *c == ']')?
        .0;
    let label = &after_open[..close];
    let url_part = after_open[close + 1..].strip_prefix('(')?;
    let end = url_part
        .char_indices()
        .take(LINK_URL_CHARS)
        .find(|(_, c)| *c == ')' || c.is_whitespace())
        .filter(|(_, c)| *c == ')')?
        .0;
    let url = &url_part[..end];
    Some((label, url, 1 + close + 2 + end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_text_cannot_end_its_span_or_become_markup() {
        assert_eq!(code("src/a.ts", 100), "src/a.ts");
        assert_eq!(
            code("x` <!channel> &\nb", 100),
            "x\u{2cb} &lt;!channel&gt; &amp;\u{fffd}b"
        );
        assert_eq!(code(&"a".repeat(50), 10).chars().count(), 10);
        assert_eq!(
            code("a\u{202e}b\u{200b}\u{2069}\u{feff}é", 100),
            "a\\u{202e}b\\u{200b}\\u{2069}\\u{feff}é"
        );
    }

    #[test]
    fn summaries_become_mrkdwn_without_headings_or_tables() {
        let markdown = "# ❌ fix-1 rolled_back\n\n- **Target:** MAIN\n\n## Diagnostics\n\n\
                        | where | code | message |\n|---|---|---|\n\
                        | `src/a.ts:12:5` | TS2322 | Type 'string' \\| x & <y> |\n\n\
                        ````text\n<b> ``` & out\n````\n\
                        Trace: `4bf9` ([open in Jaeger](http://jaeger/trace/4bf9?a=1&b=2))\n";
        assert_eq!(
            from_markdown(markdown),
            "*❌ fix-1 rolled_back*\n\n• *Target:* MAIN\n\n*Diagnostics*\n\n\
             *where* · *code* · *message*\n\
             `src/a.ts:12:5` · TS2322 · Type 'string' | x &amp; &lt;y&gt;\n\n\
             ```\n&lt;b&gt; ''' &amp; out\n```\n\
             Trace: `4bf9` (open in Jaeger (http://jaeger/trace/4bf9?a=1&amp;b=2))\n"
        );
    }

    #[test]
    fn caller_markdown_cannot_hide_a_link_or_ping_anyone() {
        let converted = from_markdown(
            "[Approve](https://evil.example/login) <!channel> [x](javascript:alert|1) \
             <https://evil.example|Approve> `<!here>`",
        );
        assert_eq!(
            converted,
            "Approve (https://evil.example/login) &lt;!channel&gt; x (javascript:alert|1) \
             &lt;https://evil.example|Approve&gt; `&lt;!here&gt;`\n"
        );
    }

    #[test]
    fn unclosed_constructs_stay_text_and_cost_linear_time() {
        assert_eq!(from_markdown("```\nopen <"), "```\nopen &lt;\n```\n");
        assert_eq!(from_markdown("a `b [c]("), "a `b [c](\n");
        let hostile = "`[".repeat(100_000);
        assert_eq!(from_markdown(&hostile).len(), hostile.len() + 1);
    }

    #[test]
    fn the_three_characters_become_entities_and_nothing_else_changes() {
        assert_eq!(
            escape("<!channel> <https://evil.example/login|Approve> & co"),
            "&lt;!channel&gt; &lt;https://evil.example/login|Approve&gt; &amp; co"
        );
        assert!(matches!(escape("plain *text* `x`"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_cut_never_splits_an_entity() {
        let escaped = escape("ab<<<<");
        // "ab&lt;&lt;&lt;&lt;": every cut length lands either between entities or is moved back.
        for max in 1..escaped.chars().count() {
            let cut = truncate(&escaped, max);
            assert!(cut.chars().count() <= max, "{cut:?} longer than {max}");
            let body = cut.trim_end_matches('…');
            let mut rest = body;
            while let Some(at) = rest.find('&') {
                rest = &rest[at..];
                assert!(
                    rest.starts_with("&lt;")
                        || rest.starts_with("&gt;")
                        || rest.starts_with("&amp;"),
                    "cut {max} split an entity: {cut:?}"
                );
                rest = &rest[1..];
            }
        }
    }

    #[test]
    fn short_text_is_untouched() {
        assert_eq!(text("a & b", 100), "a &amp; b");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
    }
}
