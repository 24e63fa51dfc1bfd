//! Counting the aliases (`*name`) of a YAML text before it is parsed.
//!
//! serde_norway replays aliases inside its deserializer and exposes no count, and a second YAML
//! parser would be a second opinion that can disagree with the first. This is a lexical count:
//! an `*` at the start of a token, outside comments, quoted scalars and block scalars. It errs
//! towards counting (an `*` inside a plain scalar counts), so a document it lets through may
//! use fewer aliases than counted. A contrived document can hide aliases from it (a plain
//! scalar holding an unmatched quote); their replays are still charged one by one against the
//! expanded-size budget, which is the exact bound: the alias limit makes the common case fail
//! before any parsing, the expanded size makes every case fail.

/// Where the scanner is between lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    /// Ordinary YAML.
    None,
    /// A `|` or `>` header was seen; content must be indented more than `parent`.
    Pending { parent: isize },
    /// Inside a block scalar's content, indented at least `indent`.
    Content { indent: usize },
}

/// Aliases in `text`, counting stops once `limit` is passed (the result is then `limit + 1`).
pub(crate) fn count_aliases(text: &str, limit: usize) -> usize {
    let mut count = 0usize;
    let mut quote: Option<u8> = None;
    let mut block = Block::None;
    for line in text.split('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let blank = line.trim().is_empty();
        if quote.is_none() {
            block = match block {
                Block::Content { indent: at_least } if blank || indent >= at_least => continue,
                Block::Pending { .. } if blank => continue,
                Block::Pending { parent } if isize::try_from(indent).unwrap_or(0) > parent => {
                    block = Block::Content { indent };
                    continue;
                }
                _ => Block::None,
            };
        }
        let bytes = line.as_bytes();
        let mut code_end = bytes.len();
        let mut at = 0;
        while at < bytes.len() {
            let byte = bytes[at];
            let boundary = at == 0 || b" \t[{,:".contains(&bytes[at - 1]);
            match quote {
                Some(b'"') => {
                    if byte == b'\\' {
                        at += 1;
                    } else if byte == b'"' {
                        quote = None;
                    }
                }
                Some(_) if byte == b'\'' => {
                    if bytes.get(at + 1) == Some(&b'\'') {
                        at += 1;
                    } else {
                        quote = None;
                    }
                }
                Some(_) => {}
                None if byte == b'#'
                    && (at == 0 || bytes[at - 1] == b' ' || bytes[at - 1] == b'\t') =>
                {
                    code_end = at;
                    break;
                }
                None if boundary && (byte == b'"' || byte == b'\'') => quote = Some(byte),
                None if boundary
                    && byte == b'*'
                    && bytes
                        .get(at + 1)
                        .is_some_and(|next| !b" \t\r,[]{}".contains(next)) =>
                {
                    count += 1;
                    if count > limit {
                        return count;
                    }
                }
                None => {}
            }
            at += 1;
        }
        if quote.is_none()
            && let Some(parent) = block_header(&line[..code_end])
        {
            block = Block::Pending { parent };
        }
    }
    count
}

/// When `line` ends with a block scalar header (`|`, `>-`, ...), the indentation its content
/// must exceed; `None` when it does not, or when the header fixes the indentation itself (then
/// the content is scanned like any YAML, which can only count more).
fn block_header(line: &str) -> Option<isize> {
    let code = line.trim_end();
    let token_start = code.rfind([' ', '\t']).map_or(0, |space| space + 1);
    let token = &code[token_start..];
    let mut chars = token.chars();
    if !matches!(chars.next(), Some('|' | '>')) || !chars.all(|c| c == '+' || c == '-') {
        return None;
    }
    let mut before = code[..token_start].trim_end();
    // Properties between the indicator and the header: `key: &anchor !tag |`.
    loop {
        let start = before.rfind([' ', '\t']).map_or(0, |space| space + 1);
        if start < before.len()
            && (before[start..].starts_with('&') || before[start..].starts_with('!'))
        {
            before = before[..start].trim_end();
        } else {
            break;
        }
    }
    if before.is_empty() || before.ends_with("---") {
        return Some(-1);
    }
    let column = |at: usize| isize::try_from(at).unwrap_or(isize::MAX);
    if before.ends_with(':') {
        // The key's column: past the indentation and any `- ` / `? ` entry indicators.
        let mut at = before.len() - before.trim_start_matches(' ').len();
        while before[at..].starts_with("- ") || before[at..].starts_with("? ") {
            at += 2;
            at += before[at..].len() - before[at..].trim_start_matches(' ').len();
        }
        return Some(column(at));
    }
    let last = before.rfind([' ', '\t']).map_or(0, |space| space + 1);
    match &before[last..] {
        "-" | "?" => Some(column(last)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_counted_where_yaml_reads_them() {
        assert_eq!(
            count_aliases("a: &x 1\nb: *x\nc: [*x, *x]\nd: {k: *x}\n", 100),
            4
        );
        assert_eq!(count_aliases("- *x\n- - *x\n", 100), 2);
    }

    #[test]
    fn comments_quotes_and_block_scalars_are_not_aliases() {
        let text = "# *x\na: \"*x *y\" # *z\nb: '*x''s'\nc: |\n  *x\n  int *p;\n\n  *q\nd: *x\n";
        assert_eq!(count_aliases(text, 100), 1);
        let nested = "- key: |\n    *x\n  other: [*a, *b]\n";
        assert_eq!(count_aliases(nested, 100), 2);
        let tagged = "k: &a !!str >-\n  *x\n*y: 1\n";
        assert_eq!(count_aliases(tagged, 100), 1);
    }

    #[test]
    fn counting_stops_past_the_limit() {
        assert_eq!(count_aliases(&"- *a\n".repeat(1000), 10), 11);
    }
}
