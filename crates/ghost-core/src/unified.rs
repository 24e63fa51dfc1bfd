//! Unified diffs: hunks for one file, git-style multi-file documents, and applying hunks.
//!
//! Hunks are placed with the matching ladder ([`crate::ladder`]); a hunk's header line is a
//! hint that wins when the text there matches exactly. A file whose every line ends in CRLF
//! keeps CRLF for the lines a hunk adds. `\ No newline at end of file` is honoured on both sides.
//!
//! This file holds hunks and applying them; multi-file documents are read in `multi`.

mod multi;

pub use multi::{FileDiff, parse_multi};

use crate::ladder::{self, Indent, MatchError, MatchStep};

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HunkLine {
    /// Present before and after.
    Context(String),
    /// Present only before.
    Remove(String),
    /// Present only after.
    Add(String),
}

/// One hunk: the lines it expects and the lines it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hunk {
    /// The header as written (`@@ -1,2 +1,3 @@`), for error messages.
    pub header: String,
    /// 1-based old start line from the header, when it had one.
    pub old_start: Option<usize>,
    /// Lines that must be found (V4A `@@ anchor`), in order, before the hunk itself.
    pub anchors: Vec<String>,
    /// The body.
    pub lines: Vec<HunkLine>,
    /// The old side's last line has no newline at the end of the file.
    pub old_no_eol: bool,
    /// The new side's last line has no newline at the end of the file.
    pub new_no_eol: bool,
    /// The hunk must match at the end of the file (V4A `*** End of File`).
    pub at_eof: bool,
}

impl Hunk {
    fn old_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|line| match line {
                HunkLine::Context(text) | HunkLine::Remove(text) => Some(text.as_str()),
                HunkLine::Add(_) => None,
            })
            .collect()
    }
}

/// Why a diff could not be read or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    /// The diff text is malformed.
    #[error("diff line {line}: {message}")]
    Syntax {
        /// 1-based line in the diff.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A hunk could not be placed.
    #[error("hunk {index} ({header}): {source}")]
    Hunk {
        /// 1-based hunk number.
        index: usize,
        /// Its header.
        header: String,
        /// Why.
        #[source]
        source: MatchError,
    },
}

fn syntax(line: usize, message: impl Into<String>) -> DiffError {
    DiffError::Syntax {
        line,
        message: message.into(),
    }
}

/// Parses `@@ -a,b +c,d @@`: (old start, old count, new count); `None` for a bare `@@`.
fn parse_header(line: &str) -> Option<(usize, usize, usize)> {
    let rest = line.strip_prefix("@@ -")?;
    let (ranges, _) = rest.split_once(" @@")?;
    let (old, new) = ranges.split_once(" +")?;
    let range = |raw: &str| -> Option<(usize, usize)> {
        match raw.split_once(',') {
            Some((start, count)) => Some((start.parse().ok()?, count.parse().ok()?)),
            None => Some((raw.parse().ok()?, 1)),
        }
    };
    let (old_start, old_count) = range(old)?;
    let (_, new_count) = range(new)?;
    Some((old_start, old_count, new_count))
}

/// Reads hunks starting at `lines[at]`; stops at a line that cannot belong to a hunk.
/// Returns the hunks and the index of the first unread line.
fn read_hunks(lines: &[&str], mut at: usize) -> Result<(Vec<Hunk>, usize), DiffError> {
    let mut hunks = Vec::new();
    while at < lines.len() && lines[at].starts_with("@@") {
        let header_line = at + 1;
        let header = lines[at].trim_end_matches('\r').to_owned();
        let counts = parse_header(&header);
        let mut hunk = Hunk {
            old_start: counts.map(|(start, _, _)| start),
            header,
            ..Hunk::default()
        };
        at += 1;
        let (mut old_left, mut new_left) = counts.map_or((usize::MAX, usize::MAX), |c| (c.1, c.2));
        while at < lines.len() {
            let line = lines[at];
            let counted = counts.is_some();
            if counted && old_left == 0 && new_left == 0 {
                if let Some(rest) = line.strip_prefix('\\') {
                    mark_no_eol(&mut hunk, rest);
                    at += 1;
                    continue;
                }
                break;
            }
            let (kind, text) = match line.chars().next() {
                Some(' ') => ('c', &line[1..]),
                Some('-') if counted || !line.starts_with("--- ") => ('r', &line[1..]),
                Some('+') if counted || !line.starts_with("+++ ") => ('a', &line[1..]),
                Some('\\') => {
                    mark_no_eol(&mut hunk, &line[1..]);
                    at += 1;
                    continue;
                }
                None if counted || at + 1 < lines.len() => ('c', ""),
                _ => break,
            };
            match kind {
                'c' => {
                    hunk.lines.push(HunkLine::Context(text.to_owned()));
                    old_left = old_left.wrapping_sub(1);
                    new_left = new_left.wrapping_sub(1);
                }
                'r' => {
                    hunk.lines.push(HunkLine::Remove(text.to_owned()));
                    old_left = old_left.wrapping_sub(1);
                }
                _ => {
                    hunk.lines.push(HunkLine::Add(text.to_owned()));
                    new_left = new_left.wrapping_sub(1);
                }
            }
            if counted && (old_left == usize::MAX || new_left == usize::MAX) {
                return Err(syntax(
                    header_line,
                    "hunk has more lines than its header counts",
                ));
            }
            at += 1;
        }
        if counts.is_some() && (old_left != 0 || new_left != 0) {
            return Err(syntax(
                header_line,
                format!("hunk is truncated: {old_left} old and {new_left} new lines missing"),
            ));
        }
        hunks.push(hunk);
    }
    Ok((hunks, at))
}

fn mark_no_eol(hunk: &mut Hunk, _marker: &str) {
    match hunk.lines.last() {
        Some(HunkLine::Context(_)) => {
            hunk.old_no_eol = true;
            hunk.new_no_eol = true;
        }
        Some(HunkLine::Remove(_)) => hunk.old_no_eol = true,
        Some(HunkLine::Add(_)) => hunk.new_no_eol = true,
        None => {}
    }
}

/// Splits on `\n` only, so a CR that belongs to a line's content survives.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last().is_some_and(|last| last.is_empty()) {
        lines.pop();
    }
    lines
}

/// Parses the hunks of a one-file diff (`---`/`+++` headers optional).
pub fn parse_hunks(diff: &str) -> Result<Vec<Hunk>, DiffError> {
    let lines = split_lines(diff);
    let mut at = 0;
    while at < lines.len() && !lines[at].starts_with("@@") {
        let line = lines[at];
        let header = line.starts_with("--- ")
            || line.starts_with("+++ ")
            || line.starts_with("diff ")
            || line.starts_with("index ")
            || line.trim().is_empty();
        if !header {
            return Err(syntax(at + 1, "expected a hunk header starting with @@"));
        }
        at += 1;
    }
    let (hunks, end) = read_hunks(&lines, at)?;
    if let Some(extra) = lines.get(end)
        && !lines[end..].iter().all(|l| l.trim().is_empty())
    {
        return Err(syntax(
            end + 1,
            format!("unexpected line after the hunks: {extra:?}"),
        ));
    }
    if hunks.is_empty() {
        return Err(syntax(1, "the diff has no hunks"));
    }
    Ok(hunks)
}

/// A file's text split into lines, with its line-ending convention.
struct Text {
    lines: Vec<String>,
    final_newline: bool,
    crlf: bool,
}

impl Text {
    fn parse(text: &str) -> Self {
        let newlines = text.matches('\n').count();
        let crlf = newlines > 0 && text.matches("\r\n").count() == newlines;
        let body = if crlf {
            text.replace("\r\n", "\n")
        } else {
            text.to_owned()
        };
        let final_newline = body.ends_with('\n');
        let trimmed = body.strip_suffix('\n').unwrap_or(&body);
        let lines = if body.is_empty() {
            Vec::new()
        } else {
            trimmed.split('\n').map(str::to_owned).collect()
        };
        Self {
            lines,
            final_newline,
            crlf,
        }
    }

    fn render(&self) -> String {
        let eol = if self.crlf { "\r\n" } else { "\n" };
        let mut out = self.lines.join(eol);
        if self.final_newline && !self.lines.is_empty() {
            out.push_str(eol);
        }
        out
    }
}

/// The outcome of applying hunks to a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new text.
    pub text: String,
    /// The most lenient ladder rung any hunk needed.
    pub step: MatchStep,
    /// Lines added.
    pub added: u32,
    /// Lines removed.
    pub removed: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A diff line as the file spells it: without its `\r` when the file's lines end in CRLF
/// (the ending is restored when the text is rendered).
fn strip_cr(line: &str, crlf: bool) -> String {
    if crlf {
        line.strip_suffix('\r').unwrap_or(line).to_owned()
    } else {
        line.to_owned()
    }
}

/// Where a hunk is expected (0-based): at the end for an EOF hunk, else at its header's line
/// moved by the drift of the hunks before it.
fn hunk_hint(hunk: &Hunk, old_len: usize, drift: isize, hay_len: usize) -> Option<usize> {
    if hunk.at_eof {
        return Some(hay_len.saturating_sub(old_len));
    }
    hunk.old_start.map(|start| {
        let base = if old_len == 0 {
            start
        } else {
            start.saturating_sub(1)
        };
        // Saturating: a header may claim any line number, up to usize::MAX.
        usize::try_from(isize::try_from(base).unwrap_or(0).saturating_add(drift)).unwrap_or(0)
    })
}

/// Writes a hunk's body over the region `found` matched: context kept, removals dropped,
/// additions indented as the match was. Returns the lines added and removed.
fn write_hunk(
    hunk: &Hunk,
    found: &ladder::Found,
    old_total: usize,
    hay: &[&str],
    out: &mut Vec<String>,
    crlf: bool,
) -> (usize, usize) {
    let (mut added, mut removed) = (0usize, 0usize);
    // Walk the hunk body against the matched region; lines the trim rung dropped are skipped.
    let mut body_old_index = 0usize;
    let mut hay_index = found.start;
    for line in &hunk.lines {
        let in_block = |i: usize| i >= found.trimmed_front && i < old_total - found.trimmed_back;
        match line {
            HunkLine::Context(_) => {
                if in_block(body_old_index) {
                    out.push(hay[hay_index].to_owned());
                    hay_index += 1;
                }
                body_old_index += 1;
            }
            HunkLine::Remove(_) => {
                if in_block(body_old_index) {
                    hay_index += 1;
                    removed += 1;
                }
                body_old_index += 1;
            }
            HunkLine::Add(new) => {
                out.push(found.indent.apply(&strip_cr(new, crlf)));
                added += 1;
            }
        }
    }
    (added, removed)
}

/// Applies `hunks` to `original` in order.
pub fn apply_hunks(original: &str, hunks: &[Hunk]) -> Result<Applied, DiffError> {
    let mut text = Text::parse(original);
    let was_empty = text.lines.is_empty();
    let crlf = text.crlf;
    let strip = |line: &str| strip_cr(line, crlf);
    let hay: Vec<&str> = text.lines.iter().map(String::as_str).collect();
    let mut out: Vec<String> = Vec::with_capacity(hay.len());
    let mut cursor = 0usize;
    let mut drift: isize = 0;
    let mut worst = MatchStep::Exact;
    let (mut added, mut removed) = (0usize, 0usize);
    let mut final_newline = text.final_newline || was_empty;
    for (index, hunk) in hunks.iter().enumerate() {
        let fail = |source| DiffError::Hunk {
            index: index + 1,
            header: hunk.header.clone(),
            source,
        };
        let mut from = cursor;
        for anchor in &hunk.anchors {
            let found = ladder::find(&hay, &[strip(anchor).as_str()], from, None).map_err(fail)?;
            worst = worst.max(found.step);
            from = found.start + 1;
        }
        let old_owned: Vec<String> = hunk.old_lines().into_iter().map(strip).collect();
        let old: Vec<&str> = old_owned.iter().map(String::as_str).collect();
        let hint = hunk_hint(hunk, old.len(), drift, hay.len());
        let found = if old.iter().all(|l| l.trim().is_empty()) && old.is_empty() {
            let at = hint.unwrap_or(hay.len()).clamp(from, hay.len());
            ladder::Found {
                start: at,
                len: 0,
                step: MatchStep::Exact,
                trimmed_front: 0,
                trimmed_back: 0,
                indent: Indent::Same,
            }
        } else {
            ladder::find(&hay, &old, from, hint).map_err(fail)?
        };
        if hunk.at_eof && found.start + found.len != hay.len() {
            return Err(fail(MatchError::NotFound {
                nearest: (found.start + 1, found.start + found.len),
                matching: found.len,
                total: old.len(),
            }));
        }
        worst = worst.max(found.step);
        if let Some(start) = hunk.old_start {
            let expected = isize::try_from(start.saturating_sub(1)).unwrap_or(0);
            drift = isize::try_from(found.start)
                .unwrap_or(0)
                .saturating_sub(expected);
        }
        out.extend(hay[cursor..found.start].iter().map(|l| (*l).to_owned()));
        let (hunk_added, hunk_removed) = write_hunk(hunk, &found, old.len(), &hay, &mut out, crlf);
        added += hunk_added;
        removed += hunk_removed;
        cursor = found.start + found.len;
        if hunk.old_no_eol || hunk.new_no_eol || (was_empty && !hunk.lines.is_empty()) {
            final_newline = !hunk.new_no_eol;
        }
    }
    out.extend(hay[cursor..].iter().map(|l| (*l).to_owned()));
    text.lines = out;
    text.final_newline = final_newline;
    Ok(Applied {
        text: text.render(),
        step: worst,
        added: count(added),
        removed: count(removed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hunks_apply_with_drift_and_keep_crlf() {
        let original = "a\r\nb\r\nc\r\nd\r\n";
        let hunks = parse_hunks("@@ -2,2 +2,2 @@\n b\n-c\n+C\n").unwrap();
        let applied = apply_hunks(original, &hunks).unwrap();
        assert_eq!(applied.text, "a\r\nb\r\nC\r\nd\r\n");
        assert_eq!((applied.added, applied.removed), (1, 1));
    }

    #[test]
    fn no_newline_markers_are_honoured() {
        let hunks = parse_hunks("@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+a\n").unwrap();
        assert_eq!(apply_hunks("a", &hunks).unwrap().text, "a\n");
        let hunks = parse_hunks("@@ -0,0 +1 @@\n+x\n\\ No newline at end of file\n").unwrap();
        assert_eq!(apply_hunks("", &hunks).unwrap().text, "x");
    }

    #[test]
    fn a_huge_header_line_after_drift_is_no_overflow() {
        // Found by fuzzing: drift 2 plus a header at isize::MAX overflowed the hint.
        let hunks = parse_hunks(
            "@@ -1,1 +1,1 @@\n-one\n+1\n@@ -9223372036854775807,1 +9223372036854775807,1 @@\n-two\n+2\n",
        )
        .unwrap();
        let applied = apply_hunks("x\ny\none\ntwo\n", &hunks).unwrap();
        assert_eq!(applied.text, "x\ny\n1\n2\n");
    }

    #[test]
    fn a_git_line_split_inside_a_character_is_no_panic() {
        // Found by the fuzzer: the middle of "a/éé b/xy" is inside the second 'é'.
        let files = parse_multi("diff --git a/\u{e9}\u{e9} b/xy\n").unwrap();
        assert_eq!(files[0].old_path.as_deref(), Some("\u{e9}\u{e9}"));
        assert_eq!(files[0].new_path.as_deref(), Some("xy"));
    }

    #[test]
    fn git_documents_name_renames_modes_and_deletions() {
        let doc = "diff --git a/x.sh b/x.sh\nold mode 100644\nnew mode 100755\n\
diff --git a/old name b/new name\nsimilarity index 100%\nrename from old name\nrename to new name\n\
diff --git a/gone b/gone\ndeleted file mode 100644\nindex e69de29..0000000\n";
        let files = parse_multi(doc).unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].new_mode, Some(0o755));
        assert_eq!(files[1].old_path.as_deref(), Some("old name"));
        assert_eq!(files[1].new_path.as_deref(), Some("new name"));
        assert_eq!(files[2].new_path, None);
    }
}
