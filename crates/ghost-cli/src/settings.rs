//! Where `ghost` finds the gateway and its key: a flag, then the environment (`GHOST_URL`,
//! `GHOST_API_KEY`; clap merges these two), then `ghost`'s config file, then the default.
//!
//! The config file is TOML with two optional keys, `url` and `api_key`; any other key is an
//! error naming it. It is `--config FILE` (or `GHOST_CLI_CONFIG`) when given, which must then
//! exist, else `$XDG_CONFIG_HOME/ghost/config.toml` (or `~/.config/ghost/config.toml`) if present.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CliError;

/// The gateway URL when nothing else names one (what `ghost up` listens on).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The contents of `ghost`'s config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Gateway base URL.
    pub url: Option<String>,
    /// API key.
    pub api_key: Option<String>,
}

/// The settings a command runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Gateway base URL.
    pub url: String,
    /// API key, if any layer gave one.
    pub api_key: Option<String>,
}

/// Where the config file may be.
#[derive(Debug, Clone)]
pub enum ConfigFile {
    /// Named by `--config`: must exist.
    Explicit(PathBuf),
    /// The default location: read only if present.
    Default(PathBuf),
    /// No home directory to look in.
    None,
}

impl ConfigFile {
    /// The default location from `XDG_CONFIG_HOME` or `HOME` (values passed in, not read here).
    pub fn default_location(xdg_config_home: Option<&str>, home: Option<&str>) -> Self {
        let base = match (xdg_config_home, home) {
            (Some(xdg), _) if !xdg.is_empty() => PathBuf::from(xdg),
            (_, Some(home)) if !home.is_empty() => Path::new(home).join(".config"),
            _ => return Self::None,
        };
        Self::Default(base.join("ghost").join("config.toml"))
    }

    fn read(&self) -> Result<FileSettings, CliError> {
        let path = match self {
            Self::Explicit(path) => path,
            Self::Default(path) if path.exists() => path,
            Self::Default(_) | Self::None => return Ok(FileSettings::default()),
        };
        let text = std::fs::read_to_string(path).map_err(|err| {
            CliError::Settings(format!("cannot read config file {}: {err}", path.display()))
        })?;
        toml::from_str(&text).map_err(|err| {
            CliError::Settings(format!(
                "config file {}{}: {}",
                path.display(),
                line_of(&text, err.span()),
                err.message().trim_end()
            ))
        })
    }
}

/// `:LINE` of a TOML error's span, or nothing.
pub fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.and_then(|span| text.get(..span.start))
        .map(|before| format!(":{}", before.matches('\n').count() + 1))
        .unwrap_or_default()
}

/// Resolves the settings: `url`/`api_key` are the flag-or-env values clap found.
pub fn resolve(
    url: Option<String>,
    api_key: Option<String>,
    file: &ConfigFile,
) -> Result<Settings, CliError> {
    let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let from_file = file.read()?;
    Ok(Settings {
        url: non_empty(url)
            .or_else(|| non_empty(from_file.url))
            .unwrap_or_else(|| DEFAULT_URL.to_owned()),
        api_key: non_empty(api_key).or_else(|| non_empty(from_file.api_key)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(text: &str) -> (tempfile::TempDir, ConfigFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        (dir, ConfigFile::Explicit(path))
    }

    #[test]
    fn flag_or_env_beats_file_beats_default() {
        let (_dir, file) = file_with("url = \"http://file:1\"\napi_key = \"file-key\"\n");
        let both = resolve(Some("http://flag:1".into()), Some("flag-key".into()), &file).unwrap();
        assert_eq!(both.url, "http://flag:1");
        assert_eq!(both.api_key.as_deref(), Some("flag-key"));
        let from_file = resolve(None, None, &file).unwrap();
        assert_eq!(from_file.url, "http://file:1");
        assert_eq!(from_file.api_key.as_deref(), Some("file-key"));
        let defaults = resolve(None, None, &ConfigFile::None).unwrap();
        assert_eq!(defaults.url, DEFAULT_URL);
        assert_eq!(defaults.api_key, None);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_named() {
        let (_dir, file) = file_with("url = \"http://x:1\"\napi_kee = \"typo\"\n");
        let err = resolve(None, None, &file).unwrap_err().to_string();
        assert!(err.contains("api_kee"), "{err}");
    }

    #[test]
    fn a_missing_default_file_is_fine_a_missing_explicit_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("none.toml");
        assert!(resolve(None, None, &ConfigFile::Default(absent.clone())).is_ok());
        assert!(resolve(None, None, &ConfigFile::Explicit(absent)).is_err());
    }

    #[test]
    fn default_location_prefers_xdg() {
        let xdg = ConfigFile::default_location(Some("/x"), Some("/home/u"));
        assert!(matches!(xdg, ConfigFile::Default(p) if p == Path::new("/x/ghost/config.toml")));
        let home = ConfigFile::default_location(None, Some("/home/u"));
        assert!(
            matches!(home, ConfigFile::Default(p) if p == Path::new("/home/u/.config/ghost/config.toml"))
        );
        assert!(matches!(
            ConfigFile::default_location(None, None),
            ConfigFile::None
        ));
    }
}
