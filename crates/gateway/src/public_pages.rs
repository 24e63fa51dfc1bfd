//! The two public routes, answered without credentials: `GET /privacy`, the privacy policy a
//! public Custom GPT must link to (from config, else a built-in text saying what the gateway
//! stores), and `GET /v1/info`, the URLs a client is set up with (`ghost connect` reads it).
//!
//! `/privacy` is HTML by default (a browser's and ChatGPT's reviewer's view): the text is
//! HTML-escaped, blank lines part paragraphs and lines starting with `#` become headings;
//! nothing else of markdown is interpreted. `/privacy?format=markdown` (or an `Accept` of
//! `text/markdown` only) answers the text itself as `text/markdown`.

use std::path::Path;

use axum::Router;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::config::GatewayConfig;

/// Largest privacy-policy file read.
const MAX_POLICY_BYTES: u64 = 256 * 1024;

/// The policy served when config gives none.
pub const DEFAULT_POLICY: &str = "# Privacy policy

This service is a Ghost Runner gateway. It receives code patches from the models and tools its operator connected to it, and hands them to executors that apply them to the operator's workspaces.

## What it stores

- The patches sent to it: their ids, target workspace, description, file edits and commands, and the diff that was applied.
- Their outcome and summaries: status, the output of commands and checks, and the summary text written for the caller.
- The names of the credentials that called it (API keys, webhook senders, executor tokens), never their secrets: keys are kept as SHA-256 hashes.
- Logs: each request's time, route, caller name, client address and result, kept as long as the operator keeps logs.

## What it does not do

It does not sell or share this data. It sends data elsewhere only where its operator configured it to (for example alerts to a Slack channel). It uses no cookies except the dashboard's session cookie, for people who log in.

## Contact

Questions about this data go to the operator of this gateway, who can delete patches and logs.
";

/// `GET /v1/info`.
#[derive(Debug, Serialize)]
pub struct Info {
    /// `public_url` from config; null when the gateway has none (use the URL you reached it at).
    pub public_url: Option<String>,
    /// The OpenAPI document (to import as a GPT Action).
    pub openapi_path: &'static str,
    /// The MCP endpoint (streamable HTTP).
    pub mcp_path: &'static str,
    /// The privacy policy.
    pub privacy_path: &'static str,
    /// The guide for models.
    pub guide_path: &'static str,
    /// The gateway's version.
    pub version: &'static str,
}

/// The policy text: `privacy_policy`, else `privacy_policy_file`, else [`DEFAULT_POLICY`].
pub fn policy(config: &GatewayConfig) -> anyhow::Result<String> {
    match (&config.privacy_policy, &config.privacy_policy_file) {
        (Some(_), Some(_)) => {
            anyhow::bail!("gateway privacy_policy and privacy_policy_file: set one, not both")
        }
        (Some(text), None) if text.trim().is_empty() => {
            anyhow::bail!("gateway privacy_policy is empty; leave it out for the built-in text")
        }
        (Some(text), None) => Ok(text.clone()),
        (None, Some(file)) => read_policy(file),
        (None, None) => Ok(DEFAULT_POLICY.to_owned()),
    }
}

fn read_policy(file: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(file)
        .map_err(|err| anyhow::anyhow!("gateway privacy_policy_file {}: {err}", file.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "gateway privacy_policy_file {} is not a file",
            file.display()
        );
    }
    if meta.len() > MAX_POLICY_BYTES {
        anyhow::bail!(
            "gateway privacy_policy_file {} is {} bytes; at most {MAX_POLICY_BYTES}",
            file.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(file)
        .map_err(|err| anyhow::anyhow!("gateway privacy_policy_file {}: {err}", file.display()))?;
    if text.trim().is_empty() {
        anyhow::bail!("gateway privacy_policy_file {} is empty", file.display());
    }
    Ok(text)
}

/// The policy as an HTML page: escaped paragraphs and `#` headings, nothing else.
pub fn render_html(policy: &str) -> String {
    let mut body = String::new();
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |paragraph: &mut Vec<&str>, body: &mut String| {
        if !paragraph.is_empty() {
            body.push_str(&format!(
                "<p>{}</p>\n",
                crate::ui::esc(&paragraph.join("\n")).replace('\n', "<br>\n")
            ));
            paragraph.clear();
        }
    };
    for line in policy.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            flush(&mut paragraph, &mut body);
        } else if let Some(heading) = trimmed.strip_prefix('#') {
            flush(&mut paragraph, &mut body);
            let level = 1 + heading.chars().take_while(|c| *c == '#').count().min(5);
            let text = heading.trim_start_matches('#').trim();
            body.push_str(&format!("<h{level}>{}</h{level}>\n", crate::ui::esc(text)));
        } else {
            paragraph.push(line);
        }
    }
    flush(&mut paragraph, &mut body);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Privacy policy</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\n<body style=\"max-width:40em;margin:2em auto;font-family:sans-serif\">\n{body}</body></html>\n"
    )
}

fn wants_markdown(query: Option<&str>, headers: &HeaderMap) -> bool {
    let by_query = query.is_some_and(|q| q.split('&').any(|pair| pair == "format=markdown"));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    by_query || (accept.contains("text/markdown") && !accept.contains("text/html"))
}

/// The public routes; fails when the configured policy cannot be read.
pub fn routes(config: &GatewayConfig) -> anyhow::Result<Router> {
    let public_url = config.public_url.trim_end_matches('/');
    let info = serde_json::to_value(Info {
        public_url: (!public_url.is_empty()).then(|| public_url.to_owned()),
        openapi_path: "/openapi.json",
        mcp_path: "/mcp",
        privacy_path: "/privacy",
        guide_path: "/v1/guide",
        version: env!("CARGO_PKG_VERSION"),
    })?;
    let policy: std::sync::Arc<str> = policy(config)?.into();
    let html: std::sync::Arc<str> = render_html(&policy).into();
    Ok(Router::new()
        .route(
            "/privacy",
            get(move |RawQuery(query): RawQuery, headers: HeaderMap| {
                let (policy, html) = (policy.clone(), html.clone());
                async move {
                    if wants_markdown(query.as_deref(), &headers) {
                        (
                            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
                            policy.to_string(),
                        )
                            .into_response()
                    } else {
                        (
                            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                            html.to_string(),
                        )
                            .into_response()
                    }
                }
            }),
        )
        .route(
            "/v1/info",
            get(move || {
                let info = info.clone();
                async move { axum::Json(info).into_response() }
            }),
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_paragraphed() {
        let html = render_html("# Title\n\nA <script>x</script> & b\nnext\n\n## Sub\nlast");
        assert!(html.contains("<h1>Title</h1>"));
        assert!(html.contains("<p>A &lt;script&gt;x&lt;/script&gt; &amp; b<br>\nnext</p>"));
        assert!(html.contains("<h2>Sub</h2>"));
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn both_policy_settings_are_refused() {
        let config = GatewayConfig {
            privacy_policy: Some("x".to_owned()),
            privacy_policy_file: Some("/nonexistent".into()),
            ..GatewayConfig::default()
        };
        assert!(
            policy(&config)
                .unwrap_err()
                .to_string()
                .contains("not both")
        );
    }
}
