//! The `wait` of `GET /v1/patches/{id}?wait=30s` and of MCP `get_patch`: how long to hold the
//! answer until the patch ends. The router wakes the call on its own commit of the end.

use std::time::Duration;

use crate::error::GatewayError;

/// The longest wait a caller may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Added to the wait for the router call's deadline and the HTTP request's: the answer itself
/// (and the summary read after the end) must fit too.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// Parses `30s`, `1500ms` or `30` (seconds), at most 60 s, exactly as the documented pattern
/// says (no leading zero, no blank); the error names `parameter`.
pub fn parse_wait(parameter: &str, raw: &str) -> Result<Duration, GatewayError> {
    let refuse = |why: &str| {
        GatewayError::BadRequest(format!(
            "query parameter {parameter}={raw:?} {why}; give seconds (30), `30s` or `1500ms`, at \
             most 60s"
        ))
    };
    let text = raw;
    let (digits, unit_ms) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1000)
    } else {
        (text, 1000)
    };
    if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse("is not a duration"));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(refuse("has a leading zero"));
    }
    let value: u64 = digits.parse().map_err(|_| refuse("is not a duration"))?;
    let wait = Duration::from_millis(value.saturating_mul(unit_ms));
    if wait > MAX_WAIT {
        return Err(refuse("is over the limit"));
    }
    Ok(wait)
}

/// The wait of a request line's query (`wait=...`), if it names one that parses; anything
/// else is `None` (the handler answers 400 for a bad one).
pub fn wait_in_query(query: Option<&str>) -> Option<Duration> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "wait")
        .and_then(|(_, value)| parse_wait("wait", value).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_spellings_and_the_cap() {
        assert_eq!(parse_wait("wait", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_wait("wait", "1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_wait("wait", "30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_wait("wait", "60s").unwrap(), MAX_WAIT);
        for bad in [
            "61s",
            "60001ms",
            "-1",
            "1m",
            "",
            "s",
            "3.5s",
            "99999999999999",
            "007",
            "01s",
            "0500ms",
            " 5s",
        ] {
            let err = parse_wait("wait", bad).expect_err(bad);
            assert!(err.to_string().contains("wait"), "{err}");
        }
        assert_eq!(
            wait_in_query(Some("a=1&wait=2s")),
            Some(Duration::from_secs(2))
        );
        assert_eq!(wait_in_query(Some("wait=nope")), None);
    }
}
