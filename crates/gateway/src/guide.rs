//! The guide for models: one markdown source in the repository (`docs/guide/guide.md`), compiled
//! in and rendered in three versions. `GET /v1/guide` serves them (public: the text holds no
//! secret); the MCP prompt `ghost_patch_guide` and resource `ghost://guide` serve the long one;
//! `docs/gpt-instructions.md` and `docs/mcp-system-prompt.md` are rendered from the same source
//! by a test, so none of them can drift from the others.
//!
//! Source markers, each alone on a line: `<!-- only: long gpt mcp -->` … `<!-- /only -->` keeps
//! the lines between for the named versions only; lines outside are in every version. A leading
//! `<!-- … -->` comment is the maintainers' note and is never rendered. A fence's info string is
//! cut to its first word (`json ghost-example id=…` renders as `json`): the rest marks the
//! examples a test submits to a running system ([`examples`]).

use axum::Router;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::GatewayError;

/// The source, as committed.
pub const SOURCE: &str = include_str!("../../../docs/guide/guide.md");

/// The most characters the `gpt` version may have: a Custom GPT's instructions field.
pub const GPT_MAX_CHARS: usize = 8_000;

/// The media type every version is served as.
pub const MEDIA_TYPE: &str = "text/markdown; charset=utf-8";

/// One rendering of the guide: `long` (the default: every op with an example, for MCP clients
/// and reading), `gpt` (at most 8,000 characters, for a Custom GPT's instructions) or
/// `system-prompt` (the short one for an MCP client's system prompt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "kebab-case")]
pub enum Version {
    /// Everything: for MCP clients and `GET /v1/guide` (the default).
    Long,
    /// The short one for a Custom GPT's instructions field (at most [`GPT_MAX_CHARS`]).
    Gpt,
    /// The short one for an MCP client's system prompt.
    SystemPrompt,
}

impl Version {
    /// Every version.
    pub const ALL: [Self; 3] = [Self::Long, Self::Gpt, Self::SystemPrompt];

    /// The name in `?format=` and in the source's `only:` markers (`mcp` for the system prompt).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Long => "long",
            Self::Gpt => "gpt",
            Self::SystemPrompt => "system-prompt",
        }
    }

    fn marker(self) -> &'static str {
        match self {
            Self::Long => "long",
            Self::Gpt => "gpt",
            Self::SystemPrompt => "mcp",
        }
    }

    /// The version `?format=` names.
    pub fn parse(name: &str) -> Result<Self, GatewayError> {
        Self::ALL
            .into_iter()
            .find(|version| version.as_str() == name)
            .ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "query parameter format={:?} is not a guide version; give long, gpt or system-prompt",
                    name.chars().take(64).collect::<String>()
                ))
            })
    }
}

/// Renders `source` for `version` (see the module's doc for the markers).
pub fn render(source: &str, version: Version) -> String {
    let mut out = String::with_capacity(source.len());
    let mut lines = source.lines().peekable();
    if lines.peek().is_some_and(|line| line.trim() == "<!--") {
        for line in lines.by_ref() {
            if line.trim() == "-->" {
                break;
            }
        }
        while lines.peek().is_some_and(|line| line.trim().is_empty()) {
            lines.next();
        }
    }
    let mut keep = true;
    for line in lines {
        let trimmed = line.trim();
        if let Some(names) = trimmed
            .strip_prefix("<!-- only:")
            .and_then(|rest| rest.strip_suffix("-->"))
        {
            keep = names
                .split_whitespace()
                .any(|name| name == version.marker());
            continue;
        }
        if trimmed == "<!-- /only -->" {
            keep = true;
            continue;
        }
        if !keep {
            continue;
        }
        match line.strip_prefix("```") {
            Some(info) if !info.is_empty() => {
                out.push_str("```");
                out.push_str(info.split_whitespace().next().unwrap_or(""));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    // A marker line between two blank lines leaves two: keep one.
    while out.contains("\n\n\n") {
        out = out.replace("\n\n\n", "\n\n");
    }
    out
}

/// One fenced block of the source marked `ghost-example` or `ghost-fixture`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The fence's language (`json`, `text`).
    pub language: String,
    /// `ghost-example` or `ghost-fixture`.
    pub kind: String,
    /// The `key=value` attributes (a value may be double-quoted to hold spaces).
    pub attributes: Vec<(String, String)>,
    /// The block's text, each line ending in a newline.
    pub body: String,
}

impl Example {
    /// The value of attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }
}

/// `key=value key="a value"` as pairs.
fn attributes(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => after.split_once(' ').unwrap_or((after, "")),
        };
        pairs.push((key.trim().to_owned(), value.to_owned()));
        rest = next.trim_start();
    }
    pairs
}

/// Every `ghost-example` and `ghost-fixture` block of `source`, in order.
pub fn examples(source: &str) -> Vec<Example> {
    let mut found = Vec::new();
    let mut open: Option<Example> = None;
    for line in source.lines() {
        if let Some(mut example) = open.take() {
            if line.trim_end() == "```" {
                found.push(example);
            } else {
                example.body.push_str(line);
                example.body.push('\n');
                open = Some(example);
            }
            continue;
        }
        let Some(info) = line.strip_prefix("```") else {
            continue;
        };
        let mut words = info.splitn(3, ' ');
        let language = words.next().unwrap_or("");
        let kind = words.next().unwrap_or("");
        if kind == "ghost-example" || kind == "ghost-fixture" {
            open = Some(Example {
                language: language.to_owned(),
                kind: kind.to_owned(),
                attributes: attributes(words.next().unwrap_or("")),
                body: String::new(),
            });
        }
    }
    found
}

/// The versions, rendered once at start.
#[derive(Debug, Clone)]
struct Rendered {
    long: axum::body::Bytes,
    gpt: axum::body::Bytes,
    system_prompt: axum::body::Bytes,
}

/// `GET /v1/guide` with its OpenAPI description. Public: no credential is needed.
pub fn routes() -> (Router, utoipa::openapi::OpenApi) {
    let rendered = Rendered {
        long: render(SOURCE, Version::Long).into(),
        gpt: render(SOURCE, Version::Gpt).into(),
        system_prompt: render(SOURCE, Version::SystemPrompt).into(),
    };
    OpenApiRouter::new()
        .routes(routes!(get_guide))
        .with_state(rendered)
        .split_for_parts()
}

/// Query of `GET /v1/guide`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GuideQuery {
    /// `long` (the default: every op with an example, for MCP clients and reading), `gpt` (at
    /// most 8,000 characters, for a Custom GPT's instructions) or `system-prompt` (the short
    /// one for an MCP client's system prompt).
    // Documented as [`Version`]; read as text so that [`Version::parse`] names a wrong one.
    #[param(value_type = Option<Version>, inline)]
    pub format: Option<String>,
}

/// How to write patches that apply, written for models.
#[utoipa::path(
    get, path = "/v1/guide", operation_id = "getGuide", tag = "guide",
    description = "The guide for models, as markdown: the patch format with an example of every edit op, how to pick an op (the matching ladder), what failures and diagnostics mean and how to resubmit, ids and replays, dry run, long poll, revert, and client limits. No credential needed.",
    params(GuideQuery),
    responses(
        (status = 200, description = "The guide", content_type = "text/markdown; charset=utf-8", body = String),
        (status = 400, description = "`format` is not long, gpt or system-prompt", body = crate::http::Problem, content_type = "application/problem+json"),
    )
)]
async fn get_guide(
    axum::extract::State(rendered): axum::extract::State<Rendered>,
    query: Result<Query<GuideQuery>, QueryRejection>,
) -> Result<impl IntoResponse, GatewayError> {
    let Query(query) = query.map_err(|err| GatewayError::BadRequest(err.body_text()))?;
    let version = match query.format.as_deref() {
        None => Version::Long,
        Some(name) => Version::parse(name)?,
    };
    let body = match version {
        Version::Long => rendered.long,
        Version::Gpt => rendered.gpt,
        Version::SystemPrompt => rendered.system_prompt,
    };
    Ok(([(header::CONTENT_TYPE, MEDIA_TYPE)], body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_format_enum_is_every_version_by_name() {
        let schema = serde_json::to_value(<Version as utoipa::PartialSchema>::schema())
            .expect("a schema serialises");
        let names: Vec<&str> = Version::ALL.into_iter().map(Version::as_str).collect();
        assert_eq!(schema["enum"], serde_json::json!(names));
    }

    const SOURCE_TEXT: &str = "<!--\nnote\n-->\n\n# T\nall\n<!-- only: gpt mcp -->\nshort\n<!-- /only -->\n<!-- only: long -->\nlong\n```json ghost-example id=a expect=failed error=\"two words\"\n{}\n```\n<!-- /only -->\nend\n";

    #[test]
    fn versions_keep_their_sections_and_drop_the_note_and_fence_attributes() {
        assert_eq!(render(SOURCE_TEXT, Version::Gpt), "# T\nall\nshort\nend\n");
        assert_eq!(
            render(SOURCE_TEXT, Version::Long),
            "# T\nall\nlong\n```json\n{}\n```\nend\n"
        );
    }

    #[test]
    fn examples_carry_their_attributes() {
        let found = examples(SOURCE_TEXT);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].attribute("id"), Some("a"));
        assert_eq!(found[0].attribute("error"), Some("two words"));
        assert_eq!(found[0].body, "{}\n");
    }

    #[test]
    fn an_unknown_format_is_refused_by_name() {
        let err = Version::parse("tiny").unwrap_err().to_string();
        assert!(err.contains("format=\"tiny\""), "{err}");
    }
}
