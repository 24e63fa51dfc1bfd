//! HTML building blocks: the escaping every interpolated string goes through, the page
//! layout, and small formatters (times, durations, status badges).

use std::fmt::Write as _;

/// Escapes `text` for HTML text and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Percent-encodes `text` for a URL path segment or query value.
pub fn url_part(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// Which tab of the navigation is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Targets, executors, charts.
    Overview,
    /// The patch list and details.
    Patches,
    /// Alerts.
    Alerts,
    /// No navigation (login).
    None,
}

/// What the layout needs besides the page body.
pub struct Chrome<'a> {
    /// Page title.
    pub title: &'a str,
    /// Current tab.
    pub tab: Tab,
    /// Logged-in principal name (none on the login page).
    pub user: Option<&'a str>,
    /// CSRF token for the logout form.
    pub csrf: &'a str,
    /// Poll interval of the live region in ms (0: no live update).
    pub refresh_ms: u64,
}

/// A whole page: `body` must already be escaped HTML.
pub fn page(chrome: &Chrome<'_>, body: &str) -> String {
    let mut nav = String::new();
    if chrome.tab != Tab::None {
        for (tab, href, label) in [
            (Tab::Overview, "/ui", "Overview"),
            (Tab::Patches, "/ui/patches", "Patches"),
            (Tab::Alerts, "/ui/alerts", "Alerts"),
        ] {
            let current = if tab == chrome.tab {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
        }
    }
    let user = match chrome.user {
        Some(user) => format!(
            "<form class=\"logout\" method=\"post\" action=\"/ui/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <span class=\"user\">{user}</span> <button type=\"submit\">Log out</button></form>",
            csrf = esc(chrome.csrf),
            user = esc(user),
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Ghost Runner</title>\
         <link rel=\"stylesheet\" href=\"/ui/assets/app.css\">\
         <script src=\"/ui/assets/app.js\" defer></script></head>\
         <body><header><strong class=\"brand\">Ghost Runner</strong><nav>{nav}</nav>{user}</header>\
         <main id=\"live\" data-refresh-ms=\"{refresh}\">{body}</main></body></html>",
        title = esc(chrome.title),
        refresh = chrome.refresh_ms,
    )
}

/// Unix ms as `YYYY-MM-DD HH:MM:SSZ` (UTC); `—` for 0.
pub fn time(unix_ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    if unix_ms <= 0 {
        return "—".to_owned();
    }
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| "—".to_owned())
}

/// A duration in ms as `850 ms`, `12.3 s`, `4m 05s`, `3h 02m`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        return format!("{:.1} s", ms as f64 / 1000.0);
    }
    let secs = ms / 1000;
    if secs < 3600 {
        return format!("{}m {:02}s", secs / 60, secs % 60);
    }
    format!("{}h {:02}m", secs / 3600, secs % 3600 / 60)
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> String {
    let class = match status {
        "succeeded" => "ok",
        "failed" | "rolled_back" | "timed_out" | "lost" | "rejected" | "interrupted" => "bad",
        "cancelled" => "muted",
        "firing" | "critical" => "bad",
        "acked" | "warning" => "warn",
        "silenced" | "resolved" | "info" => "muted",
        _ => "busy",
    };
    format!(
        "<span class=\"badge {class}\" data-status=\"{status}\">{status}</span>",
        status = esc(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn url_parts_are_encoded() {
        assert_eq!(url_part("a b/c?d=e&f"), "a%20b%2Fc%3Fd%3De%26f");
        assert_eq!(url_part("fix-1.2_(x)"), "fix-1.2_%28x%29");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(time(0), "—");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20Z");
        assert_eq!(time(951_782_400_000), "2000-02-29 00:00:00Z");
    }

    #[test]
    fn durations_are_readable() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_340), "12.3 s");
        assert_eq!(duration(245_000), "4m 05s");
        assert_eq!(duration(3 * 3_600_000 + 120_000), "3h 02m");
    }
}
