//! `ghost connect <client>`: the exact setup of one model client against a running gateway.
//!
//! The gateway's URL is its `public_url` when `GET /v1/info` gives one, else the `--url` given.
//! ChatGPT gets the Action's import URL, its auth, the scopes a key needs, the privacy-policy
//! URL and the instructions to paste (`GET /v1/guide?format=gpt` when the gateway serves it,
//! else a short built-in text pointing to the guide). MCP clients get a snippet in their own
//! config format with the MCP URL and an `Authorization: Bearer` header. The key in it is
//! `<YOUR_API_KEY>` unless `--key-scope` creates one (`POST /v1/keys`, admin key needed); the
//! caller's own key is never put in a snippet.
//!
//! Where each format comes from (each client's own documentation):
//! - Claude Desktop: `claude_desktop_config.json`, `mcpServers` with `command`/`args`/`env`.
//!   It starts stdio servers only, so the remote server goes through `mcp-remote`, whose README
//!   documents `npx mcp-remote <url> --header "Authorization:${AUTH_HEADER}"` with the value
//!   in `env` (no space in the argument, which Claude Desktop on Windows mangles) and
//!   `--allow-http` for a plain-http URL.
//! - Claude Code: `claude mcp add --transport http <name> <url> --header "..."`, and the
//!   project's `.mcp.json`: `mcpServers` with `type: "http"`, `url`, `headers`.
//! - Cursor: `~/.cursor/mcp.json` (or `.cursor/mcp.json`), `mcpServers` with `url`, `headers`.
//! - Codex: `~/.codex/config.toml`, `[mcp_servers.<name>]` with `url` (streamable HTTP) and
//!   `http_headers` (literal headers; `bearer_token_env_var` names a variable instead).
//! - VS Code: `.vscode/mcp.json`, `servers` with `type: "http"`, `url`, `headers`.

use clap::ValueEnum;
use serde_json::{Value, json};

use crate::client::GatewayClient;
use crate::error::CliError;
use crate::exit::Exit;
use crate::render::Output;

/// The key placeholder of a snippet when no key is created.
pub const PLACEHOLDER: &str = "<YOUR_API_KEY>";

/// The clients `ghost connect` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Client {
    /// A Custom GPT's Action (OpenAPI import).
    Chatgpt,
    /// Claude Desktop (through mcp-remote).
    ClaudeDesktop,
    /// Claude Code (`claude mcp add` or `.mcp.json`).
    ClaudeCode,
    /// Cursor (`~/.cursor/mcp.json`).
    Cursor,
    /// OpenAI Codex (`~/.codex/config.toml`).
    Codex,
    /// VS Code (`.vscode/mcp.json`).
    Vscode,
    /// Any MCP client: the URL and the header.
    GenericMcp,
}

impl Client {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Chatgpt => "chatgpt",
            Self::ClaudeDesktop => "claude-desktop",
            Self::ClaudeCode => "claude-code",
            Self::Cursor => "cursor",
            Self::Codex => "codex",
            Self::Vscode => "vscode",
            Self::GenericMcp => "generic-mcp",
        }
    }
}

/// The scopes `--key-scope` accepts.
const SCOPES: [&str; 3] = ["submit", "read", "admin"];

/// Parses `--key-scope submit,read` into distinct scopes; refuses an unknown one by name.
pub fn parse_scopes(raw: &str) -> Result<Vec<String>, CliError> {
    let mut scopes: Vec<String> = Vec::new();
    for scope in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !SCOPES.contains(&scope) {
            return Err(CliError::Input(format!(
                "--key-scope: unknown scope {scope:?}; use submit, read or admin, comma-separated"
            )));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    if scopes.is_empty() {
        return Err(CliError::Input(
            "--key-scope needs at least one scope, e.g. submit,read".to_owned(),
        ));
    }
    Ok(scopes)
}

/// The instructions pasted into a GPT when the gateway has no `/v1/guide`.
pub const FALLBACK_INSTRUCTIONS: &str = "You change code in the user's workspaces through the Ghost Runner Action.
- Send one patch per change with submitPatch: a target, a description and edits (write, replace, diff, delete, rename, chmod, mkdir). Prefer replace with enough surrounding context to match exactly once.
- Then read it with getPatch (wait=40s) until its status ends; on failure read the error and the report, fix the patch and submit it again under a new id.
- Use dry_run=true to check a patch without applying it.
The full guide for models is at GET /v1/guide on this gateway.";

fn random_suffix() -> Result<String, CliError> {
    let mut bytes = [0u8; 3];
    getrandom::fill(&mut bytes)
        .map_err(|err| CliError::Other(anyhow::anyhow!("no randomness: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A TOML basic string (quoted, escaped).
/// `text` as one POSIX shell word: single-quoted, a `'` written as `'\''`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// What an MCP client is given: the snippet, its format, where it goes, and for Claude Code
/// the command line that adds it.
struct Snippet {
    /// The config text to paste.
    text: String,
    /// `json` or `toml`.
    format: &'static str,
    /// Where the client keeps it.
    path_hint: &'static str,
    /// A command line doing the same (Claude Code's `claude mcp add`).
    command: Option<String>,
}

impl Snippet {
    /// A JSON snippet with no command line.
    fn json(value: &Value, path_hint: &'static str) -> Self {
        Self {
            text: pretty(value),
            format: "json",
            path_hint,
            command: None,
        }
    }
}

/// The snippet of an MCP client, for the server at `mcp_url` with `key`.
fn mcp_snippet(client: Client, mcp_url: &str, key: &str) -> Snippet {
    let bearer = format!("Bearer {key}");
    let headers = json!({ "Authorization": bearer });
    match client {
        Client::ClaudeDesktop => claude_desktop(mcp_url, &bearer),
        Client::ClaudeCode => claude_code(mcp_url, &bearer, headers),
        Client::Cursor => Snippet::json(
            &json!({"mcpServers": {"ghost": {"url": mcp_url, "headers": headers}}}),
            "~/.cursor/mcp.json (every project) or .cursor/mcp.json (one project)",
        ),
        Client::Vscode => Snippet::json(
            &json!({"servers": {"ghost": {
                "type": "http",
                "url": mcp_url,
                "headers": headers,
            }}}),
            ".vscode/mcp.json in the workspace (or MCP: Open User Configuration)",
        ),
        Client::Codex => Snippet {
            text: format!(
                "# Or keep the key out of this file: bearer_token_env_var = \"GHOST_API_KEY\" instead of http_headers.\n\
                 [mcp_servers.ghost]\nurl = {}\nhttp_headers = {{ Authorization = {} }}\n",
                toml_string(mcp_url),
                toml_string(&bearer)
            ),
            format: "toml",
            path_hint: "~/.codex/config.toml (or .codex/config.toml in a trusted project)",
            command: None,
        },
        Client::GenericMcp | Client::Chatgpt => Snippet::json(
            &json!({
                "url": mcp_url,
                "transport": "streamable-http",
                "headers": headers,
            }),
            "your MCP client's settings: a streamable HTTP server with this URL and header",
        ),
    }
}

/// Claude Desktop starts stdio servers only: the remote server goes through `mcp-remote`,
/// the header's value in `env` (no space in the argument, which Windows mangles).
fn claude_desktop(mcp_url: &str, bearer: &str) -> Snippet {
    let mut args = vec![
        json!("-y"),
        json!("mcp-remote"),
        json!(mcp_url),
        json!("--header"),
        json!("Authorization:${AUTH_HEADER}"),
    ];
    if mcp_url.starts_with("http://") {
        args.push(json!("--allow-http"));
    }
    Snippet::json(
        &json!({"mcpServers": {"ghost": {
            "command": "npx",
            "args": args,
            "env": {"AUTH_HEADER": bearer},
        }}}),
        "claude_desktop_config.json (Settings > Developer > Edit Config; macOS: ~/Library/Application Support/Claude/, Windows: %APPDATA%\\Claude\\); needs Node.js for npx",
    )
}

/// Claude Code: `.mcp.json`, or the `claude mcp add` command line.
fn claude_code(mcp_url: &str, bearer: &str, headers: Value) -> Snippet {
    // Pasted into a shell: the URL comes from the gateway, so nothing in it may run.
    let command = format!(
        "claude mcp add --transport http ghost {} --header {}",
        shell_quote(mcp_url),
        shell_quote(&format!("Authorization: {bearer}"))
    );
    Snippet {
        command: Some(command),
        ..Snippet::json(
            &json!({"mcpServers": {"ghost": {
                "type": "http",
                "url": mcp_url,
                "headers": headers,
            }}}),
            ".mcp.json at the project root (or run the command line)",
        )
    }
}

/// What `ghost connect` needs besides the client.
pub struct ConnectOptions {
    /// The client.
    pub client: Client,
    /// `--key-scope`: create a key with these scopes for the client.
    pub key_scopes: Option<Vec<String>>,
}

/// `ghost connect <client>`.
pub async fn run(
    gateway: &GatewayClient,
    output: &Output,
    options: &ConnectOptions,
) -> Result<Exit, CliError> {
    let client = options.client;
    let url = public_url(gateway).await?;
    let key = match &options.key_scopes {
        Some(scopes) => Some(create_key(gateway, client, scopes).await?),
        None => None,
    };
    let secret = key
        .as_ref()
        .and_then(|k| k["key"].as_str())
        .unwrap_or(PLACEHOLDER)
        .to_owned();
    let mut document = json!({
        "client": client.name(),
        "url": url,
        "mcp_url": format!("{url}/mcp"),
        "openapi_url": format!("{url}/openapi.json"),
        "privacy_url": format!("{url}/privacy"),
    });
    if let Some(key) = &key {
        document["key"] = key.clone();
    }
    let text = if client == Client::Chatgpt {
        chatgpt(gateway, &url, &secret, &mut document).await?
    } else {
        mcp(client, &url, &secret, &mut document)
    };
    if output.json {
        output.print_json(&document);
    } else {
        output.print(&format!("{text}{}", key_note(key.as_ref(), options)));
    }
    Ok(Exit::Success)
}

/// The gateway's URL: its `public_url` when `GET /v1/info` gives one, else the URL given (an
/// older gateway has no `/v1/info`). An unreachable gateway is an error.
async fn public_url(gateway: &GatewayClient) -> Result<String, CliError> {
    match gateway.info().await {
        Ok(info) => Ok(info["public_url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(|u| u.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| gateway.base_url().to_owned())),
        Err(crate::client::ClientError::Unreachable { url, reason }) => {
            Err(crate::client::ClientError::Unreachable { url, reason }.into())
        }
        Err(_) => Ok(gateway.base_url().to_owned()),
    }
}

/// Creates a key with `scopes` for `client` (`POST /v1/keys`): its name, secret, scopes and
/// targets.
async fn create_key(
    gateway: &GatewayClient,
    client: Client,
    scopes: &[String],
) -> Result<Value, CliError> {
    let name = format!("{}-{}", client.name(), random_suffix()?);
    let issued = gateway.create_api_key(&name, scopes).await?;
    let secret = issued["key"].as_str().ok_or_else(|| {
        CliError::Other(anyhow::anyhow!(
            "the gateway answered POST /v1/keys without a key"
        ))
    })?;
    // A key limited to targets makes one limited to the same targets (the gateway gives a new
    // key its creator's targets when none are asked for).
    let targets = issued["targets"].clone();
    Ok(json!({"name": name, "key": secret, "scopes": scopes, "targets": targets}))
}

/// ChatGPT's setup: the Action's import URL, its auth, the privacy policy and the
/// instructions (the gateway's `/v1/guide?format=gpt`, else [`FALLBACK_INSTRUCTIONS`]); added
/// to `document`, returned as text.
async fn chatgpt(
    gateway: &GatewayClient,
    url: &str,
    secret: &str,
    document: &mut Value,
) -> Result<String, CliError> {
    let guide = gateway.text(&["v1", "guide"], "format=gpt").await?;
    let (instructions, source) = match guide.filter(|g| !g.trim().is_empty()) {
        Some(guide) => (guide, "gateway"),
        None => (FALLBACK_INSTRUCTIONS.to_owned(), "built-in"),
    };
    document["snippet"] = json!(instructions);
    document["format"] = json!("markdown");
    document["path_hint"] = json!(
        "the GPT editor: Configure > Instructions; Actions > Create new action > Import from URL"
    );
    document["auth"] = json!({"type": "API Key", "auth_type": "Bearer", "key": secret});
    document["scopes"] = json!(["submit", "read"]);
    document["instructions_source"] = json!(source);
    let source_line = if source == "gateway" {
        format!("from {url}/v1/guide?format=gpt")
    } else {
        "built-in (this gateway serves no /v1/guide?format=gpt)".to_owned()
    };
    Ok(format!(
        "ChatGPT (Custom GPT Action)\n\n\
         1. Import URL:       {url}/openapi.json\n\
         2. Authentication:   API Key, Auth Type Bearer; the key: {secret}\n\
         \x20                   (a key with the submit and read scopes: `ghost connect chatgpt --key-scope submit,read`)\n\
         3. Privacy policy:   {url}/privacy\n\
         4. Instructions to paste ({source_line}):\n\n{instructions}\n"
    ))
}

/// An MCP client's setup: the server URL, the header and the client's snippet; added to
/// `document`, returned as text.
fn mcp(client: Client, url: &str, secret: &str, document: &mut Value) -> String {
    let mcp_url = format!("{url}/mcp");
    let snippet = mcp_snippet(client, &mcp_url, secret);
    document["snippet"] = json!(snippet.text);
    document["format"] = json!(snippet.format);
    document["path_hint"] = json!(snippet.path_hint);
    if let Some(command) = &snippet.command {
        document["command"] = json!(command);
    }
    let mut text = format!(
        "{} (MCP, streamable HTTP)\n\nServer URL: {mcp_url}\nHeader:     Authorization: Bearer {secret}\n\n",
        client.name()
    );
    let path_hint = snippet.path_hint;
    if let Some(command) = snippet.command {
        text.push_str(&format!("Run:\n\n{command}\n\nor put in {path_hint}:\n\n"));
    } else {
        text.push_str(&format!("Put in {path_hint}:\n\n"));
    }
    text.push_str(&snippet.text);
    text
}

/// The text's last line: the key created (shown only now) and how to revoke it, or how to
/// make one for the placeholder.
fn key_note(key: Option<&Value>, options: &ConnectOptions) -> String {
    match key {
        Some(key) => format!(
            "\nCreated API key {} (scopes {}; targets {}); it is shown only now. Revoke it with DELETE /v1/keys/{}.\n",
            key["name"].as_str().unwrap_or(""),
            options.key_scopes.as_deref().unwrap_or_default().join(","),
            targets_text(&key["targets"]),
            key["name"].as_str().unwrap_or("")
        ),
        None => format!(
            "\nReplace {PLACEHOLDER} with a key (e.g. `ghost connect {} --key-scope submit,read` makes one).\n",
            options.client.name()
        ),
    }
}

/// The targets of a created key as the text output says them (none listed: all).
fn targets_text(targets: &Value) -> String {
    let names: Vec<&str> = targets
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "all".to_owned()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_so_nothing_in_them_runs() {
        assert_eq!(shell_quote("http://h/mcp"), "'http://h/mcp'");
        assert_eq!(shell_quote("http://h/$(id);'x"), "'http://h/$(id);'\\''x'");
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(
            parse_scopes("submit, read,submit").unwrap(),
            ["submit", "read"]
        );
        assert!(parse_scopes("root").is_err());
        assert!(parse_scopes(",").is_err());
    }

    #[test]
    fn codex_snippet_is_toml_with_its_keys() {
        let snippet = mcp_snippet(Client::Codex, "http://h/mcp", "k\"x");
        assert_eq!(snippet.format, "toml");
        let parsed: toml::Table = toml::from_str(&snippet.text).unwrap();
        let server = &parsed["mcp_servers"]["ghost"];
        assert_eq!(server["url"].as_str(), Some("http://h/mcp"));
        assert_eq!(
            server["http_headers"]["Authorization"].as_str(),
            Some("Bearer k\"x")
        );
    }
}
