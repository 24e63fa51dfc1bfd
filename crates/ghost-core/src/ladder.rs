//! The matching ladder: finds where a block of lines sits in a file, from strict to lenient.
//!
//! Rungs, in order: exact → ignore trailing whitespace → trim (blank lines around the block
//! dropped) → Unicode punctuation normalised → uniform indentation offset. Each rung compares
//! more leniently than the one before; the first rung with any match decides: exactly one match
//! is used, two or more are an ambiguity error listing the candidate lines. When no rung
//! matches, the error names the nearest region of the file.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt;

/// The rung of the ladder that found a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchStep {
    /// Byte-for-byte equal lines.
    Exact,
    /// Equal once trailing whitespace is ignored.
    TrailingWhitespace,
    /// Equal once blank lines around the searched block are dropped.
    Trim,
    /// Equal once typographic quotes, dashes, ellipses and non-breaking spaces are normalised.
    Punctuation,
    /// Equal once one uniform indentation offset is applied to every line.
    Indentation,
}

impl MatchStep {
    /// Every rung, strictest first.
    pub const ALL: [Self; 5] = [
        Self::Exact,
        Self::TrailingWhitespace,
        Self::Trim,
        Self::Punctuation,
        Self::Indentation,
    ];

    /// The name recorded in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::TrailingWhitespace => "trailing_whitespace",
            Self::Trim => "trim",
            Self::Punctuation => "punctuation",
            Self::Indentation => "indentation",
        }
    }
}

impl fmt::Display for MatchStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a block was found and how to adapt replacement lines to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Index (0-based) of the first matched line in the haystack.
    pub start: usize,
    /// Number of haystack lines matched.
    pub len: usize,
    /// The rung that matched.
    pub step: MatchStep,
    /// Blank needle lines dropped at the start by the `trim` rung (and later rungs).
    pub trimmed_front: usize,
    /// Blank needle lines dropped at the end.
    pub trimmed_back: usize,
    /// The indentation difference, for the `indentation` rung.
    pub indent: Indent,
}

/// A uniform indentation difference between the file and the searched block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Indent {
    /// Same indentation.
    #[default]
    Same,
    /// The file's lines carry this extra prefix.
    Add(String),
    /// The file's lines lack this prefix.
    Remove(String),
}

impl Indent {
    /// Adapts one replacement line to the file's indentation.
    pub fn apply(&self, line: &str) -> String {
        match self {
            Self::Same => line.to_owned(),
            Self::Add(prefix) if !line.trim().is_empty() => format!("{prefix}{line}"),
            Self::Add(_) => line.to_owned(),
            Self::Remove(prefix) => line
                .strip_prefix(prefix.as_str())
                .unwrap_or(line)
                .to_owned(),
        }
    }
}

/// Why a block could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    /// The block matches in several places on the first rung that matched at all.
    #[error("the text matches {} places (lines {}) at step {step}; add context to make it unique", lines.len(), join(lines))]
    Ambiguous {
        /// 1-based first lines of the candidates.
        lines: Vec<usize>,
        /// The rung that found them.
        step: MatchStep,
    },
    /// No rung matched.
    #[error("the text was not found; nearest region is lines {}-{} ({matching} of {total} lines similar)", nearest.0, nearest.1)]
    NotFound {
        /// 1-based first and last line of the most similar region.
        nearest: (usize, usize),
        /// Lines of that region equal after trimming.
        matching: usize,
        /// Lines searched for.
        total: usize,
    },
    /// The searched block has no non-blank line.
    #[error("the text to find is empty")]
    Empty,
}

fn join(lines: &[usize]) -> String {
    lines
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Typographic punctuation mapped to ASCII.
pub fn normalise_punctuation(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for ch in line.chars() {
        match ch {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' | '\u{2032}' => out.push('\''),
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{2033}' => out.push('"'),
            '\u{2010}'..='\u{2015}' | '\u{2212}' => out.push('-'),
            '\u{2026}' => out.push_str("..."),
            '\u{00A0}' | '\u{2007}' | '\u{202F}' => out.push(' '),
            other => out.push(other),
        }
    }
    out
}

fn leading_ws(line: &str) -> &str {
    &line[..line.len() - line.trim_start().len()]
}

/// Compares one file line with one needle line at `step`; for indentation, `indent` is
/// fixed by the first non-blank pair and must hold for every later line. For the punctuation
/// and indentation rungs both lines come already normalised ([`normalise_punctuation`]).
fn line_eq(step: MatchStep, hay: &str, needle: &str, indent: &mut Option<Indent>) -> bool {
    match step {
        MatchStep::Exact => hay == needle,
        MatchStep::TrailingWhitespace | MatchStep::Trim | MatchStep::Punctuation => {
            hay.trim_end() == needle.trim_end()
        }
        MatchStep::Indentation => {
            let (hay, needle) = (hay.trim_end(), needle.trim_end());
            if hay.is_empty() || needle.is_empty() {
                return hay.is_empty() && needle.is_empty();
            }
            let (hay_ws, needle_ws) = (leading_ws(hay), leading_ws(needle));
            if hay.trim_start() != needle.trim_start() {
                return false;
            }
            let this = if let Some(extra) = hay_ws.strip_prefix(needle_ws) {
                if extra.is_empty() {
                    Indent::Same
                } else {
                    Indent::Add(extra.to_owned())
                }
            } else if let Some(missing) = needle_ws.strip_prefix(hay_ws) {
                Indent::Remove(missing.to_owned())
            } else {
                return false;
            };
            match indent {
                Some(fixed) => *fixed == this,
                None => {
                    *indent = Some(this);
                    true
                }
            }
        }
    }
}

fn window_matches<S: AsRef<str>>(step: MatchStep, hay: &[S], needle: &[S]) -> Option<Indent> {
    let mut indent = None;
    for (h, n) in hay.iter().zip(needle) {
        if !line_eq(step, h.as_ref(), n.as_ref(), &mut indent) {
            return None;
        }
    }
    Some(indent.unwrap_or_default())
}

/// Drops blank lines at both ends of `needle`: (kept, dropped in front, dropped at the back).
fn trim_block<'a>(needle: &'a [&'a str]) -> (&'a [&'a str], usize, usize) {
    let front = needle.iter().take_while(|l| l.trim().is_empty()).count();
    let rest = &needle[front..];
    let back = rest
        .iter()
        .rev()
        .take_while(|l| l.trim().is_empty())
        .count();
    (&rest[..rest.len() - back], front, back)
}

/// Finds `needle` in `hay[from..]` with the ladder.
///
/// `hint` is where the caller expects the block (a hunk header's line): an exact match there
/// is taken without looking further, since the diff itself names that position.
pub fn find(
    hay: &[&str],
    needle: &[&str],
    from: usize,
    hint: Option<usize>,
) -> Result<Found, MatchError> {
    if needle.iter().all(|l| l.trim().is_empty()) {
        return Err(MatchError::Empty);
    }
    if let Some(at) = hint
        && at >= from
        && at
            .checked_add(needle.len())
            .is_some_and(|end| end <= hay.len())
        && window_matches(MatchStep::Exact, &hay[at..at + needle.len()], needle).is_some()
    {
        return Ok(Found {
            start: at,
            len: needle.len(),
            step: MatchStep::Exact,
            trimmed_front: 0,
            trimmed_back: 0,
            indent: Indent::Same,
        });
    }
    // Normalised once, when a lenient rung is first reached, not once per comparison: a miss
    // in a large file would otherwise allocate for every (line, line) pair.
    let normalised: OnceCell<(Vec<String>, Vec<String>)> = OnceCell::new();
    for step in MatchStep::ALL {
        let (block, front, back) = if step >= MatchStep::Trim {
            trim_block(needle)
        } else {
            (needle, 0, 0)
        };
        if block.len() > hay.len() {
            continue;
        }
        let lenient = (step >= MatchStep::Punctuation).then(|| {
            let (hay_n, needle_n) = normalised.get_or_init(|| {
                let all = |lines: &[&str]| lines.iter().map(|l| normalise_punctuation(l)).collect();
                (all(hay), all(needle))
            });
            (hay_n, &needle_n[front..needle.len() - back])
        });
        let mut found: Vec<(usize, Indent)> = Vec::new();
        for start in from..=hay.len() - block.len() {
            let window = start..start + block.len();
            let matched = match lenient {
                Some((hay_n, block_n)) => window_matches(step, &hay_n[window], block_n),
                None => window_matches(step, &hay[window], block),
            };
            if let Some(indent) = matched {
                found.push((start, indent));
            }
        }
        match found.len() {
            0 => continue,
            1 => {
                let (start, indent) = found.remove(0);
                return Ok(Found {
                    start,
                    len: block.len(),
                    step,
                    trimmed_front: front,
                    trimmed_back: back,
                    indent,
                });
            }
            _ => {
                return Err(MatchError::Ambiguous {
                    lines: found.iter().map(|(start, _)| start + 1).collect(),
                    step,
                });
            }
        }
    }
    Err(nearest(hay, needle, from))
}

/// The region most similar to `needle` (lines equal after trimming), for a miss.
fn nearest(hay: &[&str], needle: &[&str], from: usize) -> MatchError {
    let (block, _, _) = trim_block(needle);
    let total = block.len();
    // Lines compared as numbers (equal numbers: equal once normalised and trimmed), so the
    // quadratic scan below allocates nothing.
    let mut numbers: HashMap<String, usize> = HashMap::new();
    let mut number = |line: &str| {
        let key = normalise_punctuation(line).trim().to_owned();
        let next = numbers.len();
        *numbers.entry(key).or_insert(next)
    };
    let block_numbers: Vec<usize> = block.iter().map(|line| number(line)).collect();
    let hay_numbers: Vec<usize> = hay.iter().map(|line| number(line)).collect();
    let mut best = (0usize, from.min(hay.len().saturating_sub(1)));
    let last_start = hay.len().saturating_sub(1);
    for start in from..=last_start {
        let score = block_numbers
            .iter()
            .enumerate()
            .filter(|(i, n)| hay_numbers.get(start + i) == Some(*n))
            .count();
        if score > best.0 {
            best = (score, start);
        }
    }
    let first = best.1 + 1;
    let last = (best.1 + total).min(hay.len()).max(first);
    MatchError::NotFound {
        nearest: (first, last),
        matching: best.0,
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.split('\n').collect()
    }

    #[test]
    fn each_rung_matches_only_what_stricter_rungs_miss() {
        let hay = lines("fn a() {\n    let x = \"q\";  \n    call(x);\n}\n");
        let exact = find(&hay, &lines("    call(x);"), 0, None).unwrap();
        assert_eq!((exact.start, exact.step), (2, MatchStep::Exact));
        let trailing = find(&hay, &lines("    let x = \"q\";"), 0, None).unwrap();
        assert_eq!(
            (trailing.start, trailing.step),
            (1, MatchStep::TrailingWhitespace)
        );
        let trim = find(&hay, &lines("\n    call(x);\n\n"), 0, None).unwrap();
        assert_eq!(
            (trim.start, trim.step, trim.trimmed_front),
            (2, MatchStep::Trim, 1)
        );
        let punct = find(&hay, &lines("    let x = \u{201C}q\u{201D};"), 0, None).unwrap();
        assert_eq!((punct.start, punct.step), (1, MatchStep::Punctuation));
        let indent = find(&hay, &lines("let x = \"q\";\ncall(x);"), 0, None).unwrap();
        assert_eq!((indent.start, indent.step), (1, MatchStep::Indentation));
        assert_eq!(indent.indent, Indent::Add("    ".to_owned()));
    }

    #[test]
    fn ambiguity_and_misses_name_lines() {
        let hay = lines("a\nx\nb\nx\nc\nfoo(1)\nbar(2)\n");
        let err = find(&hay, &["x"], 0, None).unwrap_err();
        assert_eq!(
            err,
            MatchError::Ambiguous {
                lines: vec![2, 4],
                step: MatchStep::Exact
            }
        );
        assert!(err.to_string().contains("lines 2, 4"), "{err}");
        let err = find(&hay, &["foo(1)", "baz(2)"], 0, None).unwrap_err();
        assert!(err.to_string().contains("lines 6-7"), "{err}");
    }

    #[test]
    fn a_miss_in_a_large_file_names_the_nearest_region() {
        // Found by fuzzing as a slow input: a miss compared every (line, line) pair by
        // normalising both (80 million allocations here). Now each line is normalised once.
        let mut hay: Vec<String> = (0..20_000)
            .map(|i| format!("line \u{201C}{i}\u{201D}"))
            .collect();
        hay[12_000] = "needle start".to_owned();
        let mut needle: Vec<String> = (0..2_000).map(|i| format!("other {i}")).collect();
        needle[0] = "needle start".to_owned();
        needle[1] = "line \"12001\"".to_owned();
        let hay: Vec<&str> = hay.iter().map(String::as_str).collect();
        let needle: Vec<&str> = needle.iter().map(String::as_str).collect();
        let err = find(&hay, &needle, 0, None).unwrap_err();
        assert_eq!(
            err,
            MatchError::NotFound {
                nearest: (12_001, 14_000),
                matching: 2,
                total: 2_000
            }
        );
    }

    #[test]
    fn an_exact_match_at_the_hint_wins_over_duplicates() {
        let hay = lines("}\n}\n}");
        assert_eq!(find(&hay, &["}"], 0, Some(1)).unwrap().start, 1);
        assert!(find(&hay, &["}"], 0, None).is_err());
    }
}
