//! Slack `mrkdwn` text built from caller-supplied parts.
//!
//! Slack reads `<…>` in mrkdwn as a link, a mention or a broadcast (`<!channel>`), and `&` starts
//! an entity. Every text that comes from a caller (descriptions, ids, paths, errors, command
//! output, summaries, alert summaries, a Slack user's own arguments) goes through [`text`] or
//! [`escape`] before it is put into a message, so a patch cannot ping a channel or dress up a
//! phishing link. Our own markup (`*bold*`, `` `code` ``, `<@user>`) is added around the
//! escaped parts. Cutting a message to Slack's limits ([`truncate`]) never splits an escape.

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

#[cfg(test)]
mod tests {
    use super::*;

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
