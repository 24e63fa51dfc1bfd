//! Scanning a YAML text before it is parsed: aliases (`*name`), flow nesting and nodes.
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

/// What the pre-scan refuses, with the 1-based line and column where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanRefusal {
    /// More aliases than the budget allows.
    Aliases,
    /// Flow collections (`[`, `{`) nested deeper than the budget allows.
    Depth { line: usize, column: usize },
    /// More nodes (a conservative count of indicators) than the budget allows.
    Nodes { line: usize, column: usize },
}

/// The limits the pre-scan checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanLimits {
    /// Most aliases.
    pub(crate) aliases: usize,
    /// Deepest flow nesting.
    pub(crate) depth: usize,
    /// Most nodes, counted from indicators.
    pub(crate) nodes: usize,
}

/// Scans `text` lexically before any YAML parser sees it: aliases, flow nesting and nodes.
///
/// libyaml's scanner rescans its stack of possible simple keys (one per open flow level) for
/// every token, so `{a: [` repeated 200,000 times costs minutes before the first event, and the
/// loader buffers every event of the document (about 200 bytes each) before our visitor runs.
/// Both are bounded here, in one linear pass, before the parser is called.
///
/// A quote opens a quoted scalar only where a node may start (after an indicator, a flow
/// indicator, a property or at the start of a line that does not continue a plain scalar), so
/// a quote inside a plain scalar (`a: b "c`) cannot hide the brackets after it: YAML reads
/// the brackets there, and so does this scan. In flow context every `[`/`{`/`]`/`}` outside
/// quotes and comments is an indicator, which makes the flow depth exact there.
pub(crate) fn scan(text: &str, limits: ScanLimits) -> Result<usize, ScanRefusal> {
    let mut scanner = Scanner {
        limits,
        aliases: 0,
        nodes: 0,
        depth: 0,
        quote: None,
        block: Block::None,
        plain_parent: None,
        expect_node: true,
        closed: false,
    };
    for (number, line) in text.split('\n').enumerate() {
        scanner.line(number, line)?;
    }
    Ok(scanner.aliases)
}

/// The scan's state between tokens and lines.
struct Scanner {
    limits: ScanLimits,
    aliases: usize,
    nodes: usize,
    depth: usize,
    /// The quote of the quoted scalar the scan is inside.
    quote: Option<u8>,
    block: Block,
    /// Indentation of the line a block plain scalar started on, while it may still continue.
    plain_parent: Option<usize>,
    /// Whether the next token may start a node (so a quote there opens a quoted scalar).
    expect_node: bool,
    /// Whether the last token closed a quoted scalar or a flow collection (a JSON-like key,
    /// after which a `:` in flow context is an indicator even when not followed by a space).
    closed: bool,
}

impl Scanner {
    /// One line (`number` from 0), token by token.
    fn line(&mut self, number: usize, line: &str) -> Result<(), ScanRefusal> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if self.quote.is_none() && self.skips(indent, line.trim().is_empty()) {
            return Ok(());
        }
        let bytes = line.as_bytes();
        let mut code_end = bytes.len();
        let mut at = 0;
        let mut last_plain = false;
        while at < bytes.len() {
            let byte = bytes[at];
            let next = bytes.get(at + 1).copied();
            match self.quote {
                Some(b'"') => {
                    if byte == b'\\' {
                        at += 1;
                    } else if byte == b'"' {
                        self.quote = None;
                        self.closed = true;
                    }
                }
                Some(_) if byte == b'\'' => {
                    if next == Some(b'\'') {
                        at += 1;
                    } else {
                        self.quote = None;
                        self.closed = true;
                    }
                }
                Some(_) => {}
                None if byte == b'#'
                    && (at == 0 || bytes[at - 1] == b' ' || bytes[at - 1] == b'\t') =>
                {
                    code_end = at;
                    break;
                }
                None if byte == b' ' || byte == b'\t' || byte == b'\r' => {}
                None if self.expect_node && (byte == b'"' || byte == b'\'') => {
                    self.quote = Some(byte);
                    self.expect_node = false;
                    self.closed = false;
                    last_plain = false;
                }
                None => last_plain = self.token(line, number, &mut at, indent)?,
            }
            at += 1;
        }
        if self.quote.is_none() {
            if let Some(parent) = block_header(&line[..code_end]) {
                self.block = Block::Pending { parent };
                self.plain_parent = None;
            } else if self.depth == 0 && last_plain && self.plain_parent.is_none() {
                self.plain_parent = Some(indent);
            }
        }
        Ok(())
    }

    /// At the start of a line outside quotes: true when the line belongs to a block scalar
    /// (and is skipped); else whether a node may start on it.
    fn skips(&mut self, indent: usize, blank: bool) -> bool {
        match self.block {
            Block::Content { indent: at_least } if blank || indent >= at_least => return true,
            Block::Pending { .. } if blank => return true,
            Block::Pending { parent } if isize::try_from(indent).unwrap_or(0) > parent => {
                self.block = Block::Content { indent };
                return true;
            }
            _ => self.block = Block::None,
        }
        if self.depth == 0 && !blank {
            match self.plain_parent {
                Some(parent) if indent > parent => self.expect_node = false,
                _ => {
                    self.plain_parent = None;
                    self.expect_node = true;
                }
            }
        }
        false
    }

    /// The token at `line[*at]` outside quotes and comments: indicators counted as nodes, flow
    /// nesting and aliases; `at` moves past a document marker or a property. Returns whether
    /// the token is part of a plain scalar.
    fn token(
        &mut self,
        line: &str,
        number: usize,
        at: &mut usize,
        indent: usize,
    ) -> Result<bool, ScanRefusal> {
        let bytes = line.as_bytes();
        let byte = bytes[*at];
        let next = bytes.get(*at + 1).copied();
        let blank_next = next.is_none_or(|next| matches!(next, b' ' | b'\t' | b'\r'));
        let boundary = *at == 0 || b" \t[{,:".contains(&bytes[*at - 1]);
        let (expect_node, closed) = (self.expect_node, self.closed);
        let mut starts_node = false;
        let flow = self.depth > 0;
        match byte {
            b'[' | b'{' if expect_node || flow => {
                self.depth += 1;
                if self.depth > self.limits.depth {
                    return Err(ScanRefusal::Depth {
                        line: number + 1,
                        column: *at + 1,
                    });
                }
                self.nodes += 1;
                starts_node = true;
            }
            b']' | b'}' if flow => self.depth -= 1,
            b',' if flow => {
                self.nodes += 1;
                starts_node = true;
            }
            b':' if blank_next || (flow && (expect_node || closed)) => {
                self.nodes += 1;
                starts_node = true;
            }
            b'-' if blank_next && expect_node => {
                self.nodes += 1;
                starts_node = true;
            }
            b'?' if (blank_next || flow) && (expect_node || closed) => {
                self.nodes += 1;
                starts_node = true;
            }
            b'-' if *at == indent && line[*at..].starts_with("---") => {
                *at += 2;
                self.nodes += 1;
                starts_node = true;
            }
            b'&' | b'!' if expect_node => {
                // A property: the node after it may still start with a quote.
                while *at + 1 < bytes.len() && !b" \t\r,[]{}".contains(&bytes[*at + 1]) {
                    *at += 1;
                }
                starts_node = true;
            }
            b'*' if boundary
                && !blank_next
                && next.is_some_and(|next| !b",[]{}".contains(&next)) =>
            {
                self.aliases += 1;
                if self.aliases > self.limits.aliases {
                    return Err(ScanRefusal::Aliases);
                }
            }
            _ => {}
        }
        if self.nodes > self.limits.nodes {
            return Err(ScanRefusal::Nodes {
                line: number + 1,
                column: *at + 1,
            });
        }
        let closes = flow && matches!(byte, b']' | b'}');
        self.closed = closes;
        self.expect_node = starts_node;
        Ok(!starts_node && !closes)
    }
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

    const LIMITS: ScanLimits = ScanLimits {
        aliases: 100,
        depth: 64,
        nodes: 10_000,
    };

    fn count_aliases(text: &str, limit: usize) -> usize {
        let limits = ScanLimits {
            aliases: limit,
            ..LIMITS
        };
        match scan(text, limits) {
            Ok(count) => count,
            Err(ScanRefusal::Aliases) => limit + 1,
            Err(other) => panic!("{other:?}"),
        }
    }

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

    #[test]
    fn deep_flow_nesting_is_refused_where_it_passes_the_limit() {
        // Issue 17 round 2: `a: ` then `{a: [` 209,000 times costs libyaml minutes.
        let body = format!("a: {}", "{a: [".repeat(209_000));
        assert_eq!(
            scan(&body, LIMITS),
            Err(ScanRefusal::Depth {
                line: 1,
                column: 3 + 5 * 32 + 1
            })
        );
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(scan(&ok, LIMITS), Ok(0));
        // Brackets in quotes, comments and block scalars are not nesting.
        let quiet = format!(
            "a: \"{0}\"\nb: '{0}'\n# {0}\nc: |\n  {0}\nd: x{0}\n",
            "[".repeat(100)
        );
        assert_eq!(scan(&quiet, LIMITS), Ok(0));
    }

    #[test]
    fn a_quote_inside_a_plain_scalar_hides_no_brackets() {
        let deep = "[".repeat(100);
        for body in [
            format!("a: [b \"c, {deep}"),
            format!("a: [b:\"c, {deep}"),
            format!("a: b \"c\nd: {deep}"),
            format!("a: b\n  \"c\nd: {deep}"),
            format!("a: b &x \"c\nd: {deep}"),
            format!("a: b - 'c\nd: {deep}"),
        ] {
            assert!(
                matches!(scan(&body, LIMITS), Err(ScanRefusal::Depth { .. })),
                "{body:?}"
            );
        }
    }

    #[test]
    fn nodes_are_counted_before_the_parser_buffers_events() {
        let body = format!("[{}[]]", "[],".repeat(20_000));
        assert!(matches!(
            scan(&body, LIMITS),
            Err(ScanRefusal::Nodes { line: 1, .. })
        ));
        let patch = "id: p\ntarget: MAIN\nedits:\n  - {op: write, path: \"a\", content: \"[{\"}\n";
        assert_eq!(scan(patch, LIMITS), Ok(0));
    }
}
