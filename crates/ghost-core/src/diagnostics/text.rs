//! Readers of one line (or one part of one) for the diagnostics parser: locations, severity
//! words, codes, and the clean-up every message gets. Each looks at every byte a bounded
//! number of times.

use crate::report::Severity;

/// `error[E0308]: message`, `error: message` or `warning: message` at the start of a line.
pub(super) fn rustc_header(line: &str) -> Option<(Severity, String, String)> {
    let (severity, rest) = if let Some(rest) = line.strip_prefix("error") {
        (Severity::Error, rest)
    } else if let Some(rest) = line.strip_prefix("warning") {
        (Severity::Warning, rest)
    } else {
        return None;
    };
    let (code, message) = match rest.strip_prefix('[') {
        Some(coded) => {
            let (code, message) = coded.split_once("]: ")?;
            (code.to_owned(), message)
        }
        None => (String::new(), rest.strip_prefix(": ")?),
    };
    Some((severity, code, message.to_owned()))
}

/// `error TS2322: message` (also `warning`, `message`).
pub(super) fn tsc_tail(text: &str) -> Option<(Severity, &str, &str)> {
    let (word, rest) = text.split_once(' ')?;
    let severity = match word {
        "error" => Severity::Error,
        "warning" => Severity::Warning,
        "message" => Severity::Note,
        _ => return None,
    };
    let (code, message) = rest.split_once(": ")?;
    let digits = code.strip_prefix("TS")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((severity, code, message))
}

/// `error: message`, `fatal error: message`, `warning: message`, `note: message`.
pub(super) fn compiler_severity(text: &str) -> Option<(Severity, &str)> {
    [
        ("error: ", Severity::Error),
        ("fatal error: ", Severity::Error),
        ("warning: ", Severity::Warning),
        ("note: ", Severity::Note),
    ]
    .into_iter()
    .find_map(|(prefix, severity)| Some((severity, text.strip_prefix(prefix)?)))
}

/// `path:l:c` or `path:l` (the whole text), for `-->` and `at` locations.
pub(super) fn path_line_col(text: &str) -> Option<(&str, u32, Option<u32>)> {
    let (head, last) = text.rsplit_once(':')?;
    let last = number_of(last)?;
    if let Some((path, number)) = head.rsplit_once(':')
        && let Some(number) = number_of(number)
        && !path.is_empty()
    {
        return Some((path, number, Some(last)));
    }
    (!head.is_empty()).then_some((head, last, None))
}

/// `path:l:c: rest` or `path:l: rest` (also with nothing after the last colon): the first
/// colon followed by a line number and a colon ends the path. Looks at each byte a bounded
/// number of times.
pub(super) fn split_location(line: &str) -> Option<(&str, u32, Option<u32>, &str)> {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(offset) = line[from..].find(':') {
        let colon = from + offset;
        from = colon + 1;
        let Some((number, after)) = digits_then_colon(bytes, colon + 1) else {
            continue;
        };
        if colon == 0 {
            return None;
        }
        let path = &line[..colon];
        if let Some((column, rest_at)) = digits_then_colon(bytes, after) {
            return Some((path, number, Some(column), line[rest_at..].trim()));
        }
        return Some((path, number, None, line[after..].trim()));
    }
    None
}

/// A number of 1 to 9 digits at `at` followed by `:`: the number and the index after the colon.
fn digits_then_colon(bytes: &[u8], at: usize) -> Option<(u32, usize)> {
    let digits = bytes
        .get(at..)?
        .iter()
        .take(10)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 || digits > 9 || bytes.get(at + digits) != Some(&b':') {
        return None;
    }
    let number = std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()?;
    Some((number, at + digits + 1))
}

pub(super) fn number_of(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Whether `path` looks like a file: no spaces, not a URL, not a number or an address, with a
/// directory or an extension.
pub(super) fn plausible_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1_024
        && !path.contains(char::is_whitespace)
        && !path.contains("://")
        && path
            .chars()
            .next()
            .is_some_and(|first| first.is_alphanumeric() || "_./~@-".contains(first))
        && !path.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && (path.contains('/') || path.contains('.'))
}

/// An exception name: `AssertionError`, `Failed`, `module.Error`.
pub(super) fn is_identifier(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// An eslint rule id: `no-unused-vars`, `@typescript-eslint/no-explicit-any`.
pub(super) fn is_rule(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/@".contains(c))
        && text.chars().any(|c| c.is_ascii_alphabetic())
}

/// `text` without ANSI escape sequences (CSI colours, OSC titles and links).
pub(super) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '\u{1b}' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('[') => {
                for next in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&next) {
                        break;
                    }
                }
            }
            Some(']') => {
                while let Some(next) = chars.next() {
                    if next == '\u{7}' {
                        break;
                    }
                    if next == '\u{1b}' {
                        chars.next_if_eq(&'\\');
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `text` safe to show in a terminal or a chat on one line: escape sequences stripped, then
/// every other control character (C0, DEL, C1) and every bidirectional control (which can
/// make a path read backwards) replaced by U+FFFD, whitespace runs made one space.
pub(super) fn sanitize(text: &str) -> String {
    let stripped = strip_ansi(text);
    let replaced: String = stripped
        .chars()
        .map(|ch| match ch {
            '\t' | '\n' | '\r' => ' ',
            _ if ch.is_control() || is_bidi_control(ch) => '\u{fffd}',
            _ => ch,
        })
        .collect();
    one_line(&replaced)
}

fn is_bidi_control(ch: char) -> bool {
    matches!(
        ch,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// At most `max` characters of `text`, with `…` when cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => {
            let mut cut = text[..at].to_owned();
            cut.push('…');
            cut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[96msrc/a.ts\u{1b}[0m:\u{1b}[93m3\u{1b}[0m \u{1b}]8;;x\u{7}y"),
            "src/a.ts:3 y"
        );
    }

    #[test]
    fn locations_split_at_the_first_line_number() {
        assert_eq!(
            split_location("a.c:3:11: warning: x"),
            Some(("a.c", 3, Some(11), "warning: x"))
        );
        assert_eq!(
            split_location("go.mod:4: bad"),
            Some(("go.mod", 4, None, "bad"))
        );
        assert_eq!(split_location("no location: here"), None);
        assert_eq!(split_location(":3: x"), None);
    }
}
