//! Reading `ghost.toml`: parsed with `FILE:LINE:COL` errors (no string values in them: they may
//! be secrets), then its relative paths made relative to the file's directory, as in a compose
//! file, so `ghost up -f DIR/ghost.toml` means the same directories from anywhere.

use std::path::{Path, PathBuf};

use ghost_runtime::config as layers;

use super::{DEFAULT_DATA_DIR, GhostFile, config_error, invalid};
use crate::error::CliError;

/// The file (none: empty) as its typed keys and as the table its service sections are read
/// from, with its relative paths anchored at its directory.
pub(super) fn read_file(file: Option<&Path>) -> Result<(GhostFile, toml::Table), CliError> {
    let Some(path) = file else {
        return Ok((GhostFile::default(), toml::Table::new()));
    };
    let table = layers::parse_file::<GhostFile>(path).map_err(config_error)?;
    let parsed: GhostFile =
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|err: toml::de::Error| {
                invalid(format!(
                    "{}: {}",
                    path.display(),
                    layers::without_string_values(&err.to_string())
                ))
            })?;
    Ok(match path.parent() {
        Some(base) => anchor_file_paths(base, parsed, table),
        None => (parsed, table),
    })
}

/// Keys of the service sections that hold paths, as `(section, key)`.
const SECTION_PATHS: [(&str, &str); 7] = [
    ("gateway", "inbox"),
    ("gateway", "data_dir"),
    ("gateway", "privacy_policy_file"),
    ("router", "data_dir"),
    ("executor", "state_dir"),
    ("summarizer", "data_dir"),
    ("alerter", "data_dir"),
];

/// `path` under `base` when it is relative (`.` parts dropped), else `path` itself.
fn anchored(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_owned();
    }
    let joined: PathBuf = base
        .join(path)
        .components()
        .filter(|part| !matches!(part, std::path::Component::CurDir))
        .collect();
    if joined.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        joined
    }
}

/// The file's relative paths made relative to the file's directory `base` instead of the
/// working directory: `data_dir` (the default one too: state sits beside the file), each
/// target's `root` and agent `inbox`, and the path keys of the service sections.
fn anchor_file_paths(
    base: &Path,
    mut parsed: GhostFile,
    mut sections: toml::Table,
) -> (GhostFile, toml::Table) {
    if base.as_os_str().is_empty() || base == Path::new(".") {
        return (parsed, sections);
    }
    let data_dir = parsed
        .data_dir
        .take()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    parsed.data_dir = Some(anchored(base, &data_dir));
    for target in &mut parsed.targets {
        target.root = anchored(base, &target.root);
        if let Some(inbox) = target.agent.as_mut().and_then(|a| a.inbox.as_mut()) {
            *inbox = anchored(base, inbox);
        }
    }
    for path in [
        &mut parsed.tls.cert,
        &mut parsed.tls.key,
        &mut parsed.store.url_file,
    ]
    .into_iter()
    .flatten()
    {
        *path = anchored(base, path);
    }
    for (section, key) in SECTION_PATHS {
        if let Some(toml::Value::String(path)) = sections
            .get_mut(section)
            .and_then(|table| table.get_mut(key))
        {
            *path = anchored(base, Path::new(path.as_str()))
                .display()
                .to_string();
        }
    }
    (parsed, sections)
}
