//! `ghost init [DIR]`: writes a commented `DIR/ghost.toml` — one example target, three API keys
//! (admin, submit-only, read-only) stored as SHA-256 hashes, and every service section with
//! `ghost up`'s defaults commented out — and prints the three keys once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use gateway::auth::Scope;
use gateway::config::ApiKeyConfig;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::CliError;
use crate::exit::Exit;
use crate::render::Output;
use crate::up_config::{self, DEFAULT_DATA_DIR, DEFAULT_FILE, SECTIONS, TargetSpec};

/// One generated key: the key itself (printed once) and how it is stored.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// The key to present as `Authorization: Bearer <key>`.
    pub key: String,
    /// Its `[[keys]]` entry.
    pub stored: ApiKeyConfig,
}

/// Lowercase hex SHA-256 of `key`, as `[[keys]] sha256` wants it.
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn generate(name: &str, scopes: Vec<Scope>) -> Result<GeneratedKey, CliError> {
    let key = crate::up::random_key()?;
    Ok(GeneratedKey {
        stored: ApiKeyConfig {
            name: name.to_owned(),
            sha256: sha256_hex(&key),
            scopes,
            targets: Vec::new(),
        },
        key,
    })
}

/// One line saying what each section is for.
fn section_comment(section: &str) -> &'static str {
    match section {
        "gateway" => {
            "The public door: auth, limits, parsing, REST API, OpenAPI, MCP, inbox. Its targets, \
             default_target and api_keys come from [[targets]] and [[keys]]."
        }
        "router" => "The durable queue: leases, dependencies, alerts, outboxes.",
        "executor" => {
            "Applies patches to the workspaces and runs commands. Its workspaces and per-target \
             command policy and agent come from [[targets]]."
        }
        "summarizer" => "Summaries, the manifest and the archive on disk.",
        "alerter" => "Slack out and in, the alert lifecycle, the health monitor.",
        _ => "",
    }
}

/// The services' config sources, whose doc comments become the file's comments (read from
/// this repository at compile time, so they cannot drift apart).
const CONFIG_SOURCES: [&str; 8] = [
    include_str!("../../gateway/src/config.rs"),
    include_str!("../../router/src/config.rs"),
    include_str!("../../executor/src/config.rs"),
    include_str!("../../summarizer/src/config.rs"),
    include_str!("../../alerter/src/config.rs"),
    include_str!("../../alerter/src/routing.rs"),
    include_str!("../../ghost-runtime/src/config/server.rs"),
    include_str!("../../ghost-runtime/src/telemetry.rs"),
];

/// The struct a section is: `gateway` → `GatewayConfig`.
fn section_struct(section: &str) -> &'static str {
    match section {
        "gateway" => "GatewayConfig",
        "router" => "RouterConfig",
        "executor" => "ExecutorConfig",
        "summarizer" => "SummarizerConfig",
        "alerter" => "AlerterConfig",
        _ => "",
    }
}

/// One documented field: its type and the first sentence of its doc comment.
#[derive(Debug, Clone)]
struct FieldDoc {
    ty: String,
    doc: String,
}

/// Every `pub struct`'s `pub` fields with their type and first doc sentence, by struct name.
fn field_docs() -> HashMap<String, HashMap<String, FieldDoc>> {
    let mut structs: HashMap<String, HashMap<String, FieldDoc>> = HashMap::new();
    for source in CONFIG_SOURCES {
        let mut current: Option<String> = None;
        let mut doc = String::new();
        for line in source.lines() {
            let trimmed = line.trim();
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.strip_suffix(" {").map(|name| name.trim().to_owned());
                doc.clear();
                continue;
            }
            if line == "}" {
                current = None;
                continue;
            }
            let Some(name) = &current else { continue };
            if let Some(text) = trimmed.strip_prefix("///") {
                if !doc.is_empty() {
                    doc.push(' ');
                }
                doc.push_str(text.trim());
                continue;
            }
            if let Some(field) = trimmed.strip_prefix("pub ")
                && let Some((field, ty)) = field.split_once(':')
            {
                let first = first_sentence(&doc).to_owned();
                structs.entry(name.clone()).or_default().insert(
                    field.trim().to_owned(),
                    FieldDoc {
                        ty: ty.trim().trim_end_matches(',').to_owned(),
                        doc: first,
                    },
                );
                doc.clear();
            } else if !trimmed.starts_with("#[") {
                doc.clear();
            }
        }
    }
    structs
}

/// `doc` up to the end of its first sentence (an "e.g." or "i.e." does not end one).
fn first_sentence(doc: &str) -> &str {
    let mut from = 0;
    while let Some(found) = doc[from..].find(". ") {
        let end = from + found;
        if !(doc[..end].ends_with("e.g") || doc[..end].ends_with("i.e")) {
            return doc[..=end].trim();
        }
        from = end + 2;
    }
    doc.trim()
}

/// The struct a table path names, following field types from the section's struct
/// (`gateway.server` → `ServerConfig`); `None` for maps and unknown types.
fn struct_at<'a>(
    docs: &'a HashMap<String, HashMap<String, FieldDoc>>,
    path: &[&str],
) -> Option<&'a HashMap<String, FieldDoc>> {
    let (section, rest) = path.split_first()?;
    let mut fields = docs.get(section_struct(section))?;
    for key in rest {
        let ty = &fields.get(*key)?.ty;
        let ty = ty
            .strip_prefix("Option<")
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(ty);
        fields = docs.get(ty)?;
    }
    Some(fields)
}

/// Keys of a section that [[targets]] and [[keys]] set, left out of the commented defaults.
fn derived_keys(section: &str) -> &'static [&'static str] {
    match section {
        "gateway" => &["targets", "default_target", "api_keys"],
        "executor" => &["workspaces", "targets"],
        _ => &[],
    }
}

/// `section` of `ghost up`'s defaults as TOML with every line but the section header commented
/// out as `#key = value` (remove the `#` to change it).
fn commented_section(section: &str, defaults: &toml::Value) -> Result<String, CliError> {
    let mut value = defaults
        .get(section)
        .cloned()
        .unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(table) = &mut value {
        for key in derived_keys(section) {
            table.remove(*key);
        }
    }
    let wrapped = toml::Table::from_iter([(section.to_owned(), value)]);
    let text = toml::to_string(&wrapped).map_err(|err| CliError::Other(err.into()))?;
    let header = format!("[{section}]");
    let docs = field_docs();
    let mut path = vec![section.to_owned()];
    let mut out = format!("# {}\n{header}\n", section_comment(section));
    for line in text.lines().filter(|line| *line != header) {
        if let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            path = table.split('.').map(str::to_owned).collect();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            let doc = struct_at(&docs, &segments)
                .and_then(|fields| fields.get(key.trim()))
                .map(|field| field.doc.as_str())
                .filter(|doc| !doc.is_empty());
            if let Some(doc) = doc {
                out.push_str(&format!("# {doc}\n"));
            }
        }
        if !line.is_empty() {
            out.push('#');
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

/// The text of a fresh `ghost.toml` with these keys.
pub fn file_text(keys: &[ApiKeyConfig]) -> Result<String, CliError> {
    #[derive(Serialize)]
    struct Active<'a> {
        targets: Vec<TargetSpec>,
        keys: &'a [ApiKeyConfig],
    }
    let active = Active {
        targets: vec![TargetSpec::bare("MAIN", PathBuf::from("./workspace"), true)],
        keys,
    };
    let active = toml::to_string(&active).map_err(|err| CliError::Other(err.into()))?;
    let defaults = up_config::defaults(Path::new(DEFAULT_DATA_DIR));
    let mut defaults_tree =
        ghost_runtime::config::tree(&defaults).map_err(|err| CliError::Other(err.into()))?;
    if let Some(table) = defaults_tree.as_table_mut() {
        for section in SECTIONS {
            if let Some(toml::Value::Table(inner)) = table.get_mut(section) {
                inner.retain(|_, v| !matches!(v, toml::Value::Table(t) if t.is_empty()));
            }
        }
    }
    let mut text = String::from(
        "# ghost.toml: the one config file of `ghost up` (`ghost up -f FILE`; ./ghost.toml is read\n\
         # when present). Layers, each over the one before: built-in defaults < this file <\n\
         # GHOST_<SERVICE>__KEY environment variables (e.g. GHOST_GATEWAY__PUBLIC_URL, `__` nests) <\n\
         # flags (--listen, --public-url, --data-dir, --workspace, --log-format, --api-key).\n\
         # A line `#key = value` shows a default: remove the `#` to change it. Each section takes\n\
         # the same keys as that service's own config file. Relative paths are relative to this\n\
         # file's directory. `ghost up --print-config` shows the effective config.\n\
         \n\
         # Where the services keep their state (--data-dir wins).\n",
    );
    text.push_str(&format!("#data_dir = {DEFAULT_DATA_DIR:?}\n\n"));
    text.push_str(
        "# [[targets]]: a workspace patches are applied to. `aliases`: other names routed here\n\
         # (e.g. the old system's BRAUN or DEV); `default = true`: takes patches that name no\n\
         # target (else the first target does); `commands`: \"deny\", \"any\" or the programs\n\
         # allowed, e.g. [\"cargo\", \"npm\"]; `agent = { inbox = \"./agent-inbox\" }` hands\n\
         # `agent.task` patches to a coding agent (optional `command`, `timeout`).\n\
         # [[keys]]: API keys as SHA-256 hashes only (the keys were printed once by `ghost init`);\n\
         # scopes \"read\", \"submit\", \"admin\" (admin implies the others); `targets`: empty = all.\n",
    );
    text.push_str(&active);
    for section in SECTIONS {
        text.push('\n');
        text.push_str(&commented_section(section, &defaults_tree)?);
    }
    Ok(text)
}

/// Writes `contents` to `path` readable by its owner only (0600; it holds key hashes and may
/// hold secrets): into a new temporary file beside it, then moved into place, so a symlink at
/// `path` is replaced, never followed. Without `replace` an existing `path` is kept and the
/// write fails with `AlreadyExists`.
fn write_private(path: &Path, contents: &[u8], replace: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        });
    let placed = written.and_then(|()| {
        if replace {
            std::fs::rename(&temp, path)
        } else {
            // A hard link fails when `path` exists (even as a dangling symlink): no overwrite.
            std::fs::hard_link(&temp, path).and_then(|()| std::fs::remove_file(&temp))
        }
    });
    if placed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    placed
}

/// Writes `DIR/ghost.toml` (refusing to overwrite one unless `force`) and prints the keys once.
pub fn run(dir: &Path, force: bool, output: &Output) -> Result<Exit, CliError> {
    let path = dir.join(DEFAULT_FILE);
    if path.symlink_metadata().is_ok() && !force {
        return Err(CliError::Input(format!(
            "{} already exists; not overwriting it (use --force to replace it, and its keys)",
            path.display()
        )));
    }
    let keys = [
        generate("admin", vec![Scope::Admin])?,
        generate("submit", vec![Scope::Submit])?,
        generate("read", vec![Scope::Read])?,
    ];
    let stored: Vec<ApiKeyConfig> = keys.iter().map(|k| k.stored.clone()).collect();
    let text = file_text(&stored)?;
    std::fs::create_dir_all(dir)
        .map_err(|err| CliError::Input(format!("cannot create {}: {err}", dir.display())))?;
    write_private(&path, text.as_bytes(), force)
        .map_err(|err| CliError::Input(format!("cannot write {}: {err}", path.display())))?;
    let mut shown = format!(
        "Wrote {} (only the keys' SHA-256 hashes are stored).\nAPI keys (shown once, keep them):\n",
        path.display()
    );
    for (generated, scope) in keys.iter().zip(["admin", "submit", "read"]) {
        shown.push_str(&format!("  {scope:<7} {}\n", generated.key));
    }
    shown.push_str(&format!("Run with: ghost up -f {}", path.display()));
    if output.json {
        output.print_json(&serde_json::json!({
            "file": path.display().to_string(),
            "keys": keys.iter().map(|k| serde_json::json!({
                "name": k.stored.name,
                "key": k.key,
                "scopes": k.stored.scopes,
            })).collect::<Vec<_>>(),
        }));
    } else {
        output.print(&shown);
    }
    Ok(Exit::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_defaults_uncommented_are_the_defaults_and_every_key_is_known() {
        let keys = vec![ApiKeyConfig {
            name: "admin".to_owned(),
            sha256: sha256_hex("k"),
            scopes: vec![Scope::Admin],
            targets: Vec::new(),
        }];
        let text = file_text(&keys).unwrap();
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(text, uncommented);
        // Every default shown has its one-line comment above it (from the struct's doc).
        let lines: Vec<&str> = text.lines().collect();
        let mut in_sections = false;
        for (i, line) in lines.iter().enumerate() {
            in_sections |= *line == "[gateway]";
            let is_value = line.starts_with('#')
                && line.contains(" = ")
                && line[1..].starts_with(|c: char| c.is_ascii_lowercase());
            let in_map = lines[..i]
                .iter()
                .rev()
                .find(|l| l.starts_with("#[") || l.starts_with('['))
                .is_some_and(|table| table.ends_with(".services]"));
            if in_sections && is_value && !in_map {
                assert!(
                    lines[i - 1].starts_with("# "),
                    "{line} has no comment above it"
                );
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let commented_file = dir.path().join("commented.toml");
        let uncommented_file = dir.path().join("uncommented.toml");
        std::fs::write(&commented_file, &text).unwrap();
        std::fs::write(&uncommented_file, &uncommented).unwrap();
        let load = |file: &Path| {
            up_config::load(
                up_config::UpFlags {
                    file: Some(file.to_owned()),
                    ..Default::default()
                },
                &Default::default(),
            )
            .unwrap_or_else(|err| panic!("{}: {err}", file.display()))
            .render()
            .unwrap()
            // The file's relative paths are relative to its directory; plain `up` has none.
            .replace(&format!("{}/", dir.path().display()), "./")
        };
        let plain = up_config::load(up_config::UpFlags::default(), &Default::default())
            .unwrap()
            .render()
            .unwrap();
        assert_eq!(load(&commented_file), load(&uncommented_file));
        let without_keys = |rendered: String| {
            let mut value: toml::Table = toml::from_str(&rendered).unwrap();
            if let Some(gateway) = value.get_mut("gateway").and_then(|g| g.as_table_mut()) {
                gateway.remove("api_keys");
            }
            value
        };
        assert_eq!(without_keys(load(&commented_file)), without_keys(plain));
    }
}
