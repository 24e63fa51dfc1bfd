//! What models get wrong in JSON and is forgiven: trailing commas and comments.
//!
//! One linear pass over the bytes, outside strings only, that overwrites each forgiven byte with
//! a space (newlines inside a block comment stay newlines). Nothing is deleted, so every later
//! error's line:column is still the sender's, and the copy is made only when something was
//! forgiven: at most one body's worth of bytes. Each forgiveness is reported as a warning naming
//! its line:column.

use std::borrow::Cow;

/// The body with its forgiven bytes blanked, and one warning per forgiveness.
pub(crate) struct Forgiven<'a> {
    /// The bytes to parse.
    pub(crate) body: Cow<'a, [u8]>,
    /// "line L, column C: ..." for each thing forgiven, in document order.
    pub(crate) warnings: Vec<String>,
}

/// At most this many warnings are listed; a document with more gets one summary line instead
/// of the rest, so the warnings never outgrow the body.
const MAX_WARNINGS: usize = 20;

/// Blanks trailing commas, `//` line comments and `/* */` block comments outside strings.
///
/// An unterminated block comment is left alone for the parser to refuse at its own place.
pub(crate) fn forgive(body: &[u8]) -> Forgiven<'_> {
    let mut scan = Scan {
        body,
        copy: None,
        found: Vec::new(),
        dropped: 0,
    };
    let mut at = 0;
    let (mut line, mut column) = (1usize, 1usize);
    let mut in_string = false;
    let mut escaped = false;
    // The last comma outside a string not yet followed by anything but blanks and comments.
    let mut pending_comma: Option<(usize, usize, usize)> = None;
    // Once a `/*` found no `*/` after it, none later can: not searched again (stays linear).
    let mut no_block_end = false;
    // Whether the last byte outside blanks and comments ended a value: only a comma after a
    // value can be trailing (`[,]` and `{"a":,}` are left for the parser to refuse).
    let mut after_value = false;
    while at < body.len() {
        let byte = body[at];
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
                after_value = true;
            }
            advance(byte, &mut line, &mut column);
            at += 1;
            continue;
        }
        if let Some(next) = comment(&mut scan, at, (&mut line, &mut column), &mut no_block_end) {
            at = next;
            continue;
        }
        match byte {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b']' | b'}' => {
                after_value = true;
                if let Some((comma_at, comma_line, comma_column)) = pending_comma.take() {
                    let closing = if byte == b']' { "']'" } else { "'}'" };
                    scan.warn(
                        comma_line,
                        comma_column,
                        &format!("a trailing comma before {closing} was ignored"),
                    );
                    scan.blank(comma_at, comma_at + 1);
                }
            }
            b',' => {
                pending_comma = after_value.then_some((at, line, column));
                after_value = false;
            }
            b'"' => {
                pending_comma = None;
                in_string = true;
            }
            b'[' | b'{' | b':' => {
                pending_comma = None;
                after_value = false;
            }
            _ => {
                pending_comma = None;
                after_value = true;
            }
        }
        advance(byte, &mut line, &mut column);
        at += 1;
    }
    scan.finish()
}

/// A comment starting at `at` (outside strings) blanked and reported; the index after it, or
/// None when no comment starts there. A `/*` without its `*/` is left for the parser (and no
/// later one is searched for, so the pass stays linear).
fn comment(
    scan: &mut Scan<'_>,
    at: usize,
    (line, column): (&mut usize, &mut usize),
    no_block_end: &mut bool,
) -> Option<usize> {
    let body = scan.body;
    match (body[at], body.get(at + 1)) {
        (b'/', Some(b'/')) => {
            let end = body[at..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(body.len(), |offset| at + offset);
            scan.warn(*line, *column, "a // comment was ignored");
            scan.blank(at, end);
            *column += end - at;
            Some(end)
        }
        (b'/', Some(b'*')) if !*no_block_end => {
            let Some(offset) = body[at + 2..].windows(2).position(|pair| pair == b"*/") else {
                // Left for the parser, which refuses it here with its own message.
                *no_block_end = true;
                advance(b'/', line, column);
                return Some(at + 1);
            };
            let end = at + 2 + offset + 2;
            scan.warn(*line, *column, "a /* */ comment was ignored");
            scan.blank(at, end);
            for inner in &body[at..end] {
                advance(*inner, line, column);
            }
            Some(end)
        }
        _ => None,
    }
}

/// Columns count bytes, as serde_json's do, so both name the same place.
fn advance(byte: u8, line: &mut usize, column: &mut usize) {
    if byte == b'\n' {
        *line += 1;
        *column = 1;
    } else {
        *column += 1;
    }
}

struct Scan<'a> {
    body: &'a [u8],
    copy: Option<Vec<u8>>,
    found: Vec<(usize, usize, String)>,
    dropped: usize,
}

impl<'a> Scan<'a> {
    /// The warnings in document order (a trailing comma is found only at its bracket, after
    /// any comment between them), and the body, copied only when something was blanked.
    fn finish(mut self) -> Forgiven<'a> {
        self.found.sort_by_key(|(line, column, _)| (*line, *column));
        let mut warnings: Vec<String> = self
            .found
            .into_iter()
            .map(|(line, column, what)| format!("line {line}, column {column}: {what}"))
            .collect();
        if self.dropped > 0 {
            let dropped = self.dropped;
            warnings.push(format!(
                "{dropped} more forgiven commas or comments not listed"
            ));
        }
        Forgiven {
            body: self.copy.map_or(Cow::Borrowed(self.body), Cow::Owned),
            warnings,
        }
    }

    /// Keeps the [`MAX_WARNINGS`] earliest in the document, not the first found: a trailing
    /// comma is found only at its bracket, after the comments that follow it.
    fn warn(&mut self, line: usize, column: usize, what: &str) {
        if self.found.len() < MAX_WARNINGS {
            self.found.push((line, column, what.to_owned()));
            return;
        }
        self.dropped += 1;
        let latest = self
            .found
            .iter()
            .enumerate()
            .max_by_key(|(_, (line, column, _))| (*line, *column))
            .map(|(index, (line, column, _))| (index, (*line, *column)));
        if let Some((index, position)) = latest
            && (line, column) < position
        {
            self.found[index] = (line, column, what.to_owned());
        }
    }

    /// Overwrites `start..end` with spaces, keeping newlines (so lines stay where they were).
    fn blank(&mut self, start: usize, end: usize) {
        let copy = self.copy.get_or_insert_with(|| self.body.to_vec());
        for byte in &mut copy[start..end] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::forgive;

    fn forgiven(text: &str) -> (String, Vec<String>) {
        let result = forgive(text.as_bytes());
        (
            String::from_utf8(result.body.into_owned()).expect("utf-8 kept"),
            result.warnings,
        )
    }

    #[test]
    fn strict_json_is_not_copied() {
        let body = br#"{"a":[1,2],"b":"x"}"#;
        let result = forgive(body);
        assert!(matches!(result.body, std::borrow::Cow::Borrowed(_)));
        assert!(result.warnings.is_empty());
    }

    #[test]
    fn trailing_commas_become_spaces_and_are_named() {
        let (body, warnings) = forgiven("{\"a\": [1, 2,],\n \"b\": {\"c\": 1,\n },\n}");
        assert_eq!(body, "{\"a\": [1, 2 ],\n \"b\": {\"c\": 1 \n } \n}");
        assert_eq!(
            warnings,
            [
                "line 1, column 12: a trailing comma before ']' was ignored",
                "line 2, column 14: a trailing comma before '}' was ignored",
                "line 3, column 3: a trailing comma before '}' was ignored",
            ]
        );
    }

    #[test]
    fn comments_become_spaces_and_lines_stay() {
        let (body, warnings) = forgiven("// head\n{\"a\": /* x\ny */ 1 // tail\n}");
        assert_eq!(body, "       \n{\"a\":     \n     1        \n}");
        assert_eq!(
            warnings,
            [
                "line 1, column 1: a // comment was ignored",
                "line 2, column 7: a /* */ comment was ignored",
                "line 3, column 8: a // comment was ignored",
            ]
        );
    }

    #[test]
    fn strings_holding_comment_or_comma_text_are_untouched() {
        let text = r#"{"a": "x // not a comment, ]", "b": "/* no */ ,}", "c": "\" // ,]"}"#;
        let (body, warnings) = forgiven(text);
        assert_eq!(body, text);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_comma_before_a_comment_then_a_bracket_is_trailing() {
        let (body, warnings) = forgiven("[1, // last\n]");
        assert_eq!(body, "[1         \n]");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn only_a_comma_after_a_value_is_trailing() {
        for text in ["[,]", "{,}", "{\"a\":,}", "[1,,]", "[[,],]"] {
            let result = forgive(text.as_bytes());
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&result.body);
            assert!(
                parsed.is_err(),
                "{text} became valid: {:?}",
                result.warnings
            );
        }
        let (body, _) = forgiven("[[1],{\"a\":true},\"s\",2.5,null,]");
        assert_eq!(body, "[[1],{\"a\":true},\"s\",2.5,null ]");
    }

    #[test]
    fn an_unterminated_block_comment_is_left_for_the_parser() {
        let (body, warnings) = forgiven("{\"a\": 1 /* open");
        assert_eq!(body, "{\"a\": 1 /* open");
        assert!(warnings.is_empty());
    }

    #[test]
    fn warnings_are_capped() {
        let text = format!("[{}]", "[1,],".repeat(50));
        let (_, warnings) = forgiven(&text);
        assert_eq!(warnings.len(), 21);
        assert!(warnings[20].starts_with("31 more"), "{:?}", warnings[20]);
    }
}
