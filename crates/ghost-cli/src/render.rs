//! What `ghost` prints: the gateway's JSON turned into short tables and texts for people, or
//! passed through whole for `--json`. Colours only when the stream is a terminal and
//! `NO_COLOR` is unset. Every renderer returns a `String` so it can be tested without a tty.
//!
//! This file holds the streams ([`Output`]), the styling ([`Paint`]) and the table and text
//! helpers every renderer uses; `render/patches.rs` renders one patch or a list of them
//! (detail, events, command output, why it failed), `render/system.rs` the running system
//! (targets, executors, executor tokens, the `ghost status` overview).

mod patches;
mod system;

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::Value;

pub use self::patches::{events, failure, logs, patch_detail, patch_list, progress_line};
pub use self::system::{executor_tokens, executors, issued_token, overview, targets};

/// ANSI styling, on or off.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Styling on (`true`) or off.
    pub fn new(on: bool) -> Self {
        Self { on }
    }

    fn wrap(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Bold.
    pub fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// Dim, for secondary facts.
    pub fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }

    /// Red, for errors.
    pub fn red(self, text: &str) -> String {
        self.wrap("31", text)
    }

    /// A status coloured by what it means: green success, red failure, yellow in progress.
    pub fn status(self, status: &str) -> String {
        let code = match status {
            "succeeded" => "32",
            "failed" | "rolled_back" | "timed_out" | "rejected" | "lost" | "interrupted" => "31",
            "cancelled" => "35",
            _ => "33",
        };
        self.wrap(code, status)
    }
}

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: one JSON document on stdout, nothing else there.
    pub json: bool,
    /// Styling of stdout.
    pub out: Paint,
    /// Styling of stderr.
    pub err: Paint,
}

impl Output {
    /// Colours where each stream is a terminal, unless `no_color` (`NO_COLOR` set).
    pub fn detect(json: bool, no_color: bool) -> Self {
        use std::io::IsTerminal;
        Self {
            json,
            out: Paint::new(!no_color && !json && std::io::stdout().is_terminal()),
            err: Paint::new(!no_color && std::io::stderr().is_terminal()),
        }
    }

    /// Text to stdout (a closed pipe is not worth a panic).
    pub fn print(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = stdout.write_all(b"\n");
        }
    }

    /// One JSON document to stdout, pretty-printed.
    pub fn print_json(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
        self.print(&text);
    }

    /// `value` as JSON with `--json`, else `human(value)`.
    pub fn show(&self, value: &Value, human: impl FnOnce(&Value, Paint) -> String) {
        if self.json {
            self.print_json(value);
        } else {
            self.print(&human(value, self.out));
        }
    }

    /// A progress or diagnostic line on stderr.
    pub fn note(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}

/// The string at `key`, or empty.
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

/// `text`, or `-` when it is empty.
fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

/// `2026-11-21 20:03:34Z` for Unix milliseconds (`-` for 0 or absent).
pub fn utc(unix_ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    if unix_ms <= 0 {
        return "-".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// Rows as aligned columns; `paint` styles a cell after padding so colours keep alignment.
fn table(header: &[&str], rows: &[Vec<String>], paint: impl Fn(usize, &str) -> String) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>| -> String {
        cells
            .into_iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == widths.len() {
                    cell
                } else {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let _ = writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_uppercase()).collect())
    );
    for row in rows {
        let padded: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = if i + 1 == widths.len() {
                    0
                } else {
                    widths[i].saturating_sub(cell.chars().count())
                };
                format!("{}{}", paint(i, cell), " ".repeat(pad))
            })
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    }
    out
}

/// `text` on one line (whitespace runs folded), cut to `max` characters with `…`.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "-");
        assert_eq!(utc(86_400_000), "1970-01-02 00:00:00Z");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29 12:34:56Z");
    }

    #[test]
    fn tables_align_and_paint_after_padding() {
        let list = [
            json!({"id": "a", "target": "MAIN", "status": "queued", "attempt": 0}),
            json!({"id": "longer-id", "target": "MAIN", "status": "succeeded", "attempt": 1}),
        ];
        let plain = patch_list(&list, "42", Paint::new(false));
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("ID         TARGET"), "{plain}");
        assert!(lines[1].starts_with("a          MAIN"), "{plain}");
        assert!(plain.contains("--page-token 42"));
        assert!(!plain.contains('\x1b'));
        let coloured = patch_list(&list, "", Paint::new(true));
        assert!(coloured.contains("\x1b[32msucceeded\x1b[0m"));
    }
}
