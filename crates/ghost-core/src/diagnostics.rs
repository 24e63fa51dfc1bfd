//! Locating what a check reported: compiler errors, lint findings and failed tests, parsed from
//! the check's output into [`Diagnostic`]s, so a model reads `src/a.ts:12:5 TS2322 …` instead of
//! a 16 KB log.
//!
//! Recognised, in this order for each line: rustc (`error[E0308]: …` then `--> path:l:c`), tsc
//! (`path(l,c): error TSnnnn: …` and the `--pretty` form `path:l:c - error TSnnnn: …`),
//! pytest (`path.py:l: Error` with the first `E` line, and `FAILED path::test - …`), jest
//! (`● Suite › test`, then the first `at … (path:l:c)` outside `node_modules`, or the `> l |`
//! code frame under the `FAIL path` header), eslint stylish (a file-name line, then
//! `  l:c  error  message  rule`), gcc and clang (`path:l:c: error: … [-Wflag]`), go
//! (`./a.go:l:c: …`, also `vet:`), and a generic `path:l[:c]: message`. The whole output of
//! eslint `--format json` (one JSON array line) is read as such.
//!
//! Every input is untrusted: ANSI colour codes are stripped, a line is read up to
//! [`MAX_LINE_BYTES`] (an eslint JSON line up to [`MAX_JSON_BYTES`]), messages are one line of at
//! most [`MAX_MESSAGE_CHARS`], at most [`MAX_DIAGNOSTICS`] are kept and the rest counted. Each
//! byte is looked at a bounded number of times, so the cost is linear in the output. The
//! [`Parser`] takes the output in chunks as it streams, so a caller that keeps only the head
//! and tail of a long output still sees every diagnostic in it.

mod text;

use std::collections::HashSet;

use serde::Deserialize;

use crate::report::{Diagnostic, Severity};
use text::{
    clip, compiler_severity, is_identifier, is_rule, number_of, path_line_col, plausible_path,
    rustc_header, sanitize, split_location, strip_ansi, tsc_tail,
};

/// Most diagnostics kept from one output; the rest are counted in [`Found::dropped`].
pub const MAX_DIAGNOSTICS: usize = 1_000;
/// Longest line read; the rest of a longer line is ignored.
pub const MAX_LINE_BYTES: usize = 4_096;
/// Longest eslint `--format json` line read; a longer one is not parsed.
pub const MAX_JSON_BYTES: usize = 8 << 20;
/// Longest message kept, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;
/// Longest path kept, in characters.
pub const MAX_PATH_CHARS: usize = 1_024;
/// Longest check name (or command line) kept in each diagnostic's `check`, in characters:
/// every diagnostic carries one, so a long command line is not copied a thousand times.
pub const MAX_CHECK_CHARS: usize = 200;

/// How an eslint `--format json` line starts.
const ESLINT_JSON: &[u8] = b"[{\"filePath\"";

/// The diagnostics in `output`, the whole output of the check (or command) `check`. Pure.
pub fn parse(output: &str, check: &str) -> Vec<Diagnostic> {
    let mut parser = Parser::new(check);
    parser.feed(output.as_bytes());
    parser.finish().diagnostics
}

/// `check` (a check's name or command line) as diagnostics carry it: at most
/// [`MAX_CHECK_CHARS`] characters, `…` when cut.
pub fn check_label(check: &str) -> String {
    clip(check, MAX_CHECK_CHARS)
}

/// What a [`Parser`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The diagnostics, in the order the output gave them (at most [`MAX_DIAGNOSTICS`]).
    pub diagnostics: Vec<Diagnostic>,
    /// How many more were recognised and not kept.
    pub dropped: u64,
}

/// Parses one stream of output, fed in chunks of any size.
#[derive(Debug)]
pub struct Parser {
    check: String,
    line: Vec<u8>,
    state: State,
    found: Found,
}

/// What the multi-line formats remember between lines.
#[derive(Debug, Default)]
struct State {
    /// The file of the eslint stylish block being read.
    eslint_file: Option<String>,
    /// A rustc header waiting for its `-->` on the next line.
    rustc: Option<(Severity, String, String)>,
    /// The test file of the jest `FAIL` header being read.
    jest_file: Option<String>,
    /// The jest failure being read.
    jest: Option<JestFailure>,
    /// The pytest test whose traceback is being read, and its first `E` line.
    pytest_test: String,
    pytest_error: Option<String>,
    /// `path::test` of the pytest failures already located, so `FAILED` lines do not repeat them.
    pytest_seen: HashSet<String>,
}

/// Where a diagnostic points.
struct At<'a> {
    path: &'a str,
    line: u32,
    column: Option<u32>,
}

impl<'a> At<'a> {
    fn new(path: &'a str, line: u32, column: Option<u32>) -> Self {
        Self { path, line, column }
    }
}

#[derive(Debug, Default)]
struct JestFailure {
    title: String,
    message: Option<String>,
    frame_line: Option<u32>,
    frame_column: Option<u32>,
    /// The last line was the code frame's `>` line: the caret line follows.
    caret_next: bool,
}

impl Parser {
    /// A parser for the output of `check` (the check's name or command line).
    pub fn new(check: &str) -> Self {
        Self {
            check: check_label(check),
            line: Vec::new(),
            state: State::default(),
            found: Found::default(),
        }
    }

    /// Reads the next chunk of output.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|b| *b == b'\n');
            let (part, rest) = match end {
                Some(at) => (&bytes[..at], &bytes[at + 1..]),
                None => (bytes, &[][..]),
            };
            let cap = if self.json_line(part) {
                MAX_JSON_BYTES
            } else {
                MAX_LINE_BYTES
            };
            let room = cap.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..room.min(part.len())]);
            if end.is_some() {
                self.end_line();
            }
            bytes = rest;
        }
    }

    /// Whether the line being read, continued by `part`, is an eslint JSON line.
    fn json_line(&self, part: &[u8]) -> bool {
        let have = self.line.len().min(ESLINT_JSON.len());
        let need = ESLINT_JSON.len() - have;
        self.line[..have] == ESLINT_JSON[..have]
            && part.len() >= need
            && part[..need] == ESLINT_JSON[have..]
    }

    /// Reads the last (unterminated) line and returns what was found.
    pub fn finish(mut self) -> Found {
        if !self.line.is_empty() {
            self.end_line();
        }
        self.flush_jest();
        self.found
    }

    fn end_line(&mut self) {
        let raw = std::mem::take(&mut self.line);
        if raw.starts_with(ESLINT_JSON) {
            self.eslint_json(&raw);
            return;
        }
        let text = strip_ansi(&String::from_utf8_lossy(&raw));
        self.line_read(text.trim_end());
    }

    fn emit(&mut self, diagnostic: Diagnostic) {
        if self.found.diagnostics.len() < MAX_DIAGNOSTICS {
            self.found.diagnostics.push(diagnostic);
        } else {
            self.found.dropped += 1;
        }
    }

    fn located(&mut self, tool: &str, at: At<'_>, severity: Severity, code: &str, message: &str) {
        let diagnostic = Diagnostic {
            path: clip(&sanitize(at.path), MAX_PATH_CHARS),
            line: at.line,
            column: at.column,
            severity,
            code: clip(&sanitize(code), 100),
            message: clip(&sanitize(message), MAX_MESSAGE_CHARS),
            tool: tool.to_owned(),
            check: self.check.clone(),
        };
        self.emit(diagnostic);
    }

    fn line_read(&mut self, line: &str) {
        if let Some((severity, code, message)) = self.state.rustc.take()
            && let Some(at) = line.trim_start().strip_prefix("--> ")
            && let Some((path, number, column)) = path_line_col(at.trim())
        {
            self.located(
                "rustc",
                At::new(path, number, column),
                severity,
                &code,
                &message,
            );
            return;
        }
        if let Some(header) = rustc_header(line) {
            self.state.rustc = Some(header);
            return;
        }
        if self.tsc(line) || self.pytest(line) || self.jest(line) || self.eslint_stylish(line) {
            return;
        }
        self.located_line(line);
    }

    fn tsc(&mut self, line: &str) -> bool {
        // `path(l,c): error TSnnnn: message`
        if let Some(open) = line.find("): ")
            && let Some((severity, code, message)) = tsc_tail(&line[open + 3..])
            && let Some(paren) = line[..open].rfind('(')
            && let Some((number, column)) = line[paren + 1..open].split_once(',')
            && let (Some(number), Some(column)) = (number_of(number), number_of(column))
            && paren > 0
        {
            let path = &line[..paren];
            self.located(
                "tsc",
                At::new(path, number, Some(column)),
                severity,
                code,
                message,
            );
            return true;
        }
        // `path:l:c - error TSnnnn: message` (--pretty)
        if let Some(dash) = line.find(" - ")
            && let Some((severity, code, message)) = tsc_tail(&line[dash + 3..])
            && let Some((path, number, column)) = path_line_col(&line[..dash])
        {
            self.located(
                "tsc",
                At::new(path, number, column),
                severity,
                code,
                message,
            );
            return true;
        }
        false
    }

    fn pytest(&mut self, line: &str) -> bool {
        if line.len() > 6 && line.starts_with("___") && line.ends_with("___") {
            let name = line.trim_matches('_').trim();
            if !name.is_empty() && !name.contains(' ') {
                self.state.pytest_test = name.to_owned();
                self.state.pytest_error = None;
            }
            return true;
        }
        if let Some(error) = line.strip_prefix("E ") {
            if self.state.pytest_error.is_none() && !error.trim().is_empty() {
                self.state.pytest_error = Some(error.trim().to_owned());
            }
            return true;
        }
        for prefix in ["FAILED ", "ERROR "] {
            if let Some(rest) = line.strip_prefix(prefix)
                && let Some((path, test)) = rest.split_once("::")
                && path.ends_with(".py")
                && plausible_path(path)
            {
                let (test, message) = test.split_once(" - ").unwrap_or((test, ""));
                let key = format!("{path}::{test}");
                if !self.state.pytest_seen.contains(&key) {
                    let message = if message.is_empty() {
                        format!("{test} failed")
                    } else {
                        format!("{test}: {message}")
                    };
                    self.located(
                        "pytest",
                        At::new(path, 0, None),
                        Severity::Error,
                        "",
                        &message,
                    );
                }
                return true;
            }
        }
        // `path.py:l: ExceptionName`, the last frame of a failure's traceback.
        if let Some((path, number, None, rest)) = split_location(line)
            && path.ends_with(".py")
            && is_identifier(rest)
        {
            let test = self.state.pytest_test.clone();
            let error = self
                .state
                .pytest_error
                .take()
                .unwrap_or_else(|| rest.to_owned());
            let message = if test.is_empty() {
                error
            } else {
                format!("{test}: {error}")
            };
            if self.state.pytest_seen.len() < MAX_DIAGNOSTICS && !test.is_empty() {
                self.state.pytest_seen.insert(format!("{path}::{test}"));
            }
            self.located(
                "pytest",
                At::new(path, number, None),
                Severity::Error,
                rest,
                &message,
            );
            return true;
        }
        false
    }

    fn jest(&mut self, line: &str) -> bool {
        let trimmed = line.trim();
        if let Some(file) = trimmed
            .strip_prefix("FAIL ")
            .or_else(|| trimmed.strip_prefix("PASS "))
            && plausible_path(file.trim())
        {
            self.flush_jest();
            self.state.jest_file = Some(file.trim().to_owned());
            return true;
        }
        if let Some(title) = trimmed.strip_prefix("● ") {
            self.flush_jest();
            if title.trim() != "Console" {
                self.state.jest = Some(JestFailure {
                    title: title.trim().to_owned(),
                    ..JestFailure::default()
                });
            }
            return true;
        }
        if trimmed.starts_with("Test Suites:") {
            self.flush_jest();
            return false;
        }
        let Some(failure) = self.state.jest.as_mut() else {
            return false;
        };
        if failure.caret_next {
            failure.caret_next = false;
            if let (Some(bar), Some(caret)) = (line.find('|'), line.find('^'))
                && caret > bar + 1
            {
                failure.frame_column = u32::try_from(caret - bar - 1).ok();
            }
            return true;
        }
        if let Some(frame) = trimmed.strip_prefix("> ")
            && let Some((number, _)) = frame.split_once(" |")
            && let Some(number) = number_of(number.trim())
        {
            failure.frame_line = Some(number);
            failure.caret_next = true;
            return true;
        }
        if let Some(at) = trimmed.strip_prefix("at ") {
            let location = match (at.rfind('('), at.strip_suffix(')')) {
                (Some(open), Some(inner)) => &inner[open + 1..],
                _ => at,
            };
            if let Some((path, number, column)) = path_line_col(location)
                && !path.contains("node_modules")
                && !path.starts_with("node:")
                && !path.starts_with("internal/")
            {
                let failure = self.state.jest.take().unwrap_or_default();
                let message = failure.describe();
                self.located(
                    "jest",
                    At::new(path, number, column),
                    Severity::Error,
                    "",
                    &message,
                );
            }
            return true;
        }
        if failure.message.is_none() && !trimmed.is_empty() {
            failure.message = Some(trimmed.to_owned());
        }
        true
    }

    /// Reports a jest failure located only by its code frame, under its `FAIL` header.
    fn flush_jest(&mut self) {
        let Some(failure) = self.state.jest.take() else {
            return;
        };
        if let (Some(number), Some(path)) = (failure.frame_line, self.state.jest_file.clone()) {
            let message = failure.describe();
            let column = failure.frame_column;
            self.located(
                "jest",
                At::new(&path, number, column),
                Severity::Error,
                "",
                &message,
            );
        }
    }

    fn eslint_stylish(&mut self, line: &str) -> bool {
        if line.starts_with('✖') || line.is_empty() {
            self.state.eslint_file = None;
            return false;
        }
        if line.starts_with(char::is_whitespace) {
            let Some(file) = self.state.eslint_file.clone() else {
                return false;
            };
            let parts: Vec<&str> = line
                .trim()
                .split("  ")
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .collect();
            let [position, severity, rest @ ..] = parts.as_slice() else {
                return false;
            };
            let Some((number, column)) = position.split_once(':') else {
                return false;
            };
            let (Some(number), Some(column)) = (number_of(number), number_of(column)) else {
                return false;
            };
            let severity = match *severity {
                "error" => Severity::Error,
                "warning" => Severity::Warning,
                _ => return false,
            };
            let (message, rule) = match rest {
                [] => return false,
                [message] => (vec![*message], ""),
                [message @ .., rule] if is_rule(rule) => (message.to_vec(), *rule),
                all => (all.to_vec(), ""),
            };
            let message = message.join(" ");
            self.located(
                "eslint",
                At::new(&file, number, Some(column)),
                severity,
                rule,
                &message,
            );
            return true;
        }
        // A file-name line opens a block; only lines like the above make use of it.
        if split_location(line).is_none() && !line.contains(": ") && plausible_path(line) {
            self.state.eslint_file = Some(line.to_owned());
        }
        false
    }

    /// gcc and clang, go, then the generic `path:l[:c]: message`.
    fn located_line(&mut self, line: &str) {
        let line = line.strip_prefix("vet: ").unwrap_or(line);
        let Some((path, number, column, rest)) = split_location(line) else {
            return;
        };
        if !plausible_path(path) || rest.is_empty() {
            return;
        }
        let path = path.strip_prefix("./").unwrap_or(path);
        if let Some(column) = column
            && let Some((severity, message)) = compiler_severity(rest)
        {
            let (message, flag) = match message
                .strip_suffix(']')
                .and_then(|m| m.rsplit_once(" [-W"))
            {
                Some((message, flag)) => (message, format!("-W{flag}")),
                None => (message, String::new()),
            };
            self.located(
                "gcc",
                At::new(path, number, Some(column)),
                severity,
                &flag,
                message,
            );
            return;
        }
        if path.ends_with(".go") {
            self.located(
                "go",
                At::new(path, number, column),
                Severity::Error,
                "",
                rest,
            );
            return;
        }
        let (severity, message) = compiler_severity(rest).unwrap_or((Severity::Error, rest));
        self.located(
            "generic",
            At::new(path, number, column),
            severity,
            "",
            message,
        );
    }

    fn eslint_json(&mut self, raw: &[u8]) {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct FileResult {
            file_path: String,
            #[serde(default)]
            messages: Vec<Message>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Message {
            #[serde(default)]
            line: u32,
            #[serde(default)]
            column: Option<u32>,
            #[serde(default)]
            severity: u8,
            #[serde(default)]
            message: String,
            #[serde(default)]
            rule_id: Option<String>,
        }
        /// The array read one file result at a time, each made diagnostics at once: memory
        /// holds the line and one file's messages, never the whole parsed array.
        struct Files<'p>(&'p mut Parser);
        impl<'de> serde::de::Visitor<'de> for Files<'_> {
            type Value = ();
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an eslint JSON array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
                while let Some(file) = seq.next_element::<FileResult>()? {
                    for message in file.messages {
                        let severity = if message.severity >= 2 {
                            Severity::Error
                        } else {
                            Severity::Warning
                        };
                        let rule = message.rule_id.unwrap_or_default();
                        self.0.located(
                            "eslint",
                            At::new(&file.file_path, message.line, message.column),
                            severity,
                            &rule,
                            &message.message,
                        );
                    }
                }
                Ok(())
            }
        }
        // A line cut at the cap ends in a parse error: what was read whole before it stands,
        // nothing is made up from the cut part.
        let mut reader = serde_json::Deserializer::from_slice(raw);
        let _ = serde::Deserializer::deserialize_seq(&mut reader, Files(self));
    }
}

impl JestFailure {
    fn describe(&self) -> String {
        match &self.message {
            Some(message) => format!("{}: {message}", self.title),
            None => self.title.clone(),
        }
    }
}
