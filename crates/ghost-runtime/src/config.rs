//! Configuration loading: struct defaults, then an optional TOML file (`--config FILE` or
//! `GHOST_CONFIG`), then environment variables `GHOST_<SVC>__KEY` (`__` nests). Unknown keys
//! are errors, so a typo fails at start instead of being ignored: a file's error names
//! `FILE:LINE:COL`, an environment error names the variable, and an unknown key comes with the
//! nearest valid one ("did you mean `public_url`?").
//!
//! The layers are merged as TOML trees ([`merge`]) and deserialised once at the end; `ghost up`
//! uses the same pieces ([`parse_file`], [`env_layer`], [`build`]) for its one-file config.
//!
//! The sections every service shares are in [`server`] (`server`, `server.tls`, `store`); the
//! redacted value type is in [`secret`].

mod secret;
mod server;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::secret::{REDACTED, Secret, is_placeholder};
pub use self::server::{ServerConfig, StoreConfig, TlsConfig};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer does not fit the config struct: the message names where (`FILE:LINE:COL`, or the
    /// environment variable) and what.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The config file named on the command line does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `server.internal_token_file` cannot be read or holds no token.
    #[error("server.internal_token_file {path}: {detail}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The effective config could not be rendered for `--print-config`.
    #[error("cannot render configuration: {0}")]
    Render(#[from] toml::ser::Error),
}

/// Levenshtein distance between two short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// The candidate nearest to `name` (at most a third of its length away, and at least 1 edit
/// tolerated), when there is one.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lowered = name.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            (
                edit_distance(&lowered, &candidate.to_lowercase()),
                candidate,
            )
        })
        .filter(|(distance, _)| *distance <= (name.chars().count() / 3).max(2))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `message` with the contents of every quoted value after `string "` replaced by `…`: a type
/// error on a secret (`invalid type: string "whsec_…"`) must not print it; the error already
/// says where the value is (`FILE:LINE:COL` or the variable).
pub fn without_string_values(message: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let (before, after) = rest.split_at(at + MARK.len());
        out.push_str(before);
        let mut escaped = false;
        let mut end = None;
        for (index, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(index);
                    break;
                }
                _ => {}
            }
        }
        out.push('…');
        match end {
            Some(index) => rest = &after[index..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// serde's message for an unknown key (``unknown field `naem`, expected one of `a`, `b` ``)
/// with the nearest expected key appended ("; did you mean `name`?"); string values in it are
/// left out ([`without_string_values`]).
fn with_suggestion(message: &str) -> String {
    let cleaned = without_string_values(message);
    let message = cleaned.trim_end();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match nearest(unknown, candidates) {
        Some(near) => format!("{message}; did you mean `{near}`?"),
        None => message.to_owned(),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// A TOML error in `file` as `FILE:LINE:COL: message` (with the nearest key for an unknown one).
fn file_error(file: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let message = with_suggestion(error.message());
    match error.span() {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            ConfigError::Invalid(format!("{}:{line}:{column}: {message}", file.display()))
        }
        None => ConfigError::Invalid(format!("{}: {message}", file.display())),
    }
}

/// Reads `file` and checks it against `T` (every key known, every value of the right type),
/// so a mistake is reported with `FILE:LINE:COL`; returns its TOML tree for merging.
pub fn parse_file<T: DeserializeOwned>(file: &Path) -> Result<toml::Table, ConfigError> {
    if !file.exists() {
        return Err(ConfigError::MissingFile(file.to_owned()));
    }
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        path: file.to_owned(),
        source,
    })?;
    toml::from_str::<T>(&text).map_err(|err| file_error(file, &text, &err))?;
    toml::from_str::<toml::Table>(&text).map_err(|err| file_error(file, &text, &err))
}

/// Merges `over` into `base`: tables key by key, anything else replaced.
pub fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// One environment variable of a config layer.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvVar {
    /// The variable, e.g. `GHOST_ROUTER__SERVER__GRPC_LISTEN`.
    pub name: String,
    /// The key path it sets, lowercase: `["server", "grpc_listen"]`.
    pub path: Vec<String>,
    /// Its value.
    pub raw: String,
}

impl EnvVar {
    /// The value as a TOML literal when it is one (`true`, `42`, `["a","b"]`, `"quoted"`), else
    /// the string as written (`127.0.0.1:9`, `2024-01-01`).
    fn value(&self, literal: bool) -> toml::Value {
        let parsed = literal
            .then(|| toml::from_str::<toml::Table>(&format!("v = {}", self.raw)).ok())
            .flatten()
            .and_then(|mut table| table.remove("v"))
            .filter(|value| !matches!(value, toml::Value::Datetime(_)));
        parsed.unwrap_or_else(|| toml::Value::String(self.raw.clone()))
    }

    /// A tree with only this variable's key set. Each key takes the spelling of an existing key
    /// of `base` equal to it but for case (so `…__TARGETS__MAIN__SHELL` reaches the map key
    /// `MAIN`), else stays lowercase.
    fn tree(&self, base: &toml::Value, literal: bool) -> toml::Value {
        let mut keys = Vec::new();
        let mut at = Some(base);
        for key in &self.path {
            let existing = at
                .and_then(toml::Value::as_table)
                .and_then(|table| table.keys().find(|k| k.to_lowercase() == *key))
                .cloned();
            let spelled = existing.unwrap_or_else(|| key.clone());
            at = at.and_then(|value| value.get(&spelled));
            keys.push(spelled);
        }
        keys.into_iter()
            .rev()
            .fold(self.value(literal), |value, key| {
                toml::Value::Table(toml::Table::from_iter([(key, value)]))
            })
    }
}

/// The variables of `env` that configure `service` (`GHOST_<SVC>__A__B=…` sets `a.b`), sorted by
/// name so the result does not depend on the map's order.
pub fn env_layer(service: &str, env: &HashMap<String, String>) -> Vec<EnvVar> {
    let prefix = format!("{}__", env_prefix(service));
    let mut vars: Vec<EnvVar> = env
        .iter()
        .filter_map(|(name, raw)| {
            let rest = name.strip_prefix(&prefix)?;
            Some(EnvVar {
                name: name.clone(),
                path: rest.split("__").map(str::to_lowercase).collect(),
                raw: raw.clone(),
            })
        })
        .collect();
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    vars
}

/// Deserialises `T` from `base` with `env` merged over it. Each variable is checked on its own
/// first, so an error names it; a value that parses as a TOML literal but does not fit (a
/// numeric token for a string key) is taken as the string.
pub fn build<T: DeserializeOwned>(base: toml::Value, env: &[EnvVar]) -> Result<T, ConfigError> {
    let mut tree = base;
    for var in env {
        let mut literal = tree.clone();
        merge(&mut literal, var.tree(&tree, true));
        let literal_error = match T::deserialize(literal.clone()) {
            Ok(_) => {
                tree = literal;
                continue;
            }
            Err(err) => err,
        };
        let mut string = tree.clone();
        merge(&mut string, var.tree(&tree, false));
        let string_error = match T::deserialize(string.clone()) {
            Ok(_) => {
                tree = string;
                continue;
            }
            Err(err) => err,
        };
        // `GHOST_<SVC>__A__KEY_FILE` where the config has no `key_file`: `a.key` is read from
        // that file (secrets mounted as files: compose `secrets:`, k8s Secret volumes).
        if let Some(from_file) = file_variant(var, env)? {
            let mut read = tree.clone();
            merge(&mut read, from_file.tree(&tree, false));
            match T::deserialize(read.clone()) {
                Ok(_) => {
                    tree = read;
                    continue;
                }
                Err(err) => {
                    return Err(ConfigError::Invalid(format!(
                        "environment variable {} (the file {}): {}",
                        var.name,
                        var.raw,
                        with_suggestion(err.message())
                    )));
                }
            }
        }
        // A literal's own error ("must be at least 1") says more than "expected u32".
        let is_literal = !matches!(var.value(true), toml::Value::String(_));
        let err = if is_literal {
            literal_error
        } else {
            string_error
        };
        return Err(ConfigError::Invalid(format!(
            "environment variable {}: {}",
            var.name,
            with_suggestion(err.message())
        )));
    }
    T::deserialize(tree).map_err(|err| ConfigError::Invalid(with_suggestion(err.message())))
}

/// The `_FILE` variant of a variable: `…__KEY_FILE=/run/secrets/x` as `…__KEY` = the file's
/// contents (trailing whitespace and newlines removed). `None` when the name does not end in
/// `_FILE`. Errors: the file cannot be read or is empty, or `…__KEY` is set as well.
fn file_variant(var: &EnvVar, env: &[EnvVar]) -> Result<Option<EnvVar>, ConfigError> {
    let (Some(name), Some((last, parents))) =
        (var.name.strip_suffix("_FILE"), var.path.split_last())
    else {
        return Ok(None);
    };
    let Some(key) = last.strip_suffix("_file").filter(|key| !key.is_empty()) else {
        return Ok(None);
    };
    if env.iter().any(|other| other.name == name) {
        return Err(ConfigError::Invalid(format!(
            "environment variables {name} and {} are both set: set only one of them",
            var.name
        )));
    }
    let text = std::fs::read_to_string(&var.raw).map_err(|err| {
        ConfigError::Invalid(format!(
            "environment variable {}: cannot read the file {}: {err}",
            var.name, var.raw
        ))
    })?;
    let value = text.trim_end();
    if value.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "environment variable {}: the file {} is empty: it must hold the value of {name}",
            var.name, var.raw
        )));
    }
    let mut path = parents.to_vec();
    path.push(key.to_owned());
    Ok(Some(EnvVar {
        name: name.to_owned(),
        path,
        raw: value.to_owned(),
    }))
}

/// `value` as a TOML tree (the base layer of a merge).
pub fn tree<T: Serialize>(value: &T) -> Result<toml::Value, ConfigError> {
    Ok(toml::Value::try_from(value)?)
}

/// Environment prefix of a service: `router` → `GHOST_ROUTER`.
pub fn env_prefix(service: &str) -> String {
    format!("GHOST_{}", service.to_uppercase().replace('-', "_"))
}

/// Merges the layers for `service` from an explicit file and environment map.
///
/// Tests call this with their own map instead of touching the process environment.
pub fn load_from<T>(
    service: &str,
    file: Option<&Path>,
    env: HashMap<String, String>,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut base = tree(&T::default())?;
    if let Some(path) = file {
        merge(&mut base, toml::Value::Table(parse_file::<T>(path)?));
    }
    build(base, &env_layer(service, &env))
}

/// Renders a config as TOML with every [`Secret`] redacted.
pub fn render<T: Serialize>(config: &T) -> Result<String, ConfigError> {
    Ok(toml::to_string_pretty(config)?)
}

/// Command-line flags every service binary accepts.
#[derive(Debug, clap::Parser)]
#[command(about = "A Ghost Runner service", long_about = None)]
struct Flags {
    /// TOML config file (layered over the built-in defaults, under the environment).
    #[arg(long, env = "GHOST_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Ask this service's own `/readyz` (on the configured HTTP port) and exit 0 when it
    /// answers 200, 1 otherwise: the container health check, with no shell or curl needed.
    #[arg(long, conflicts_with = "print_config")]
    healthcheck: bool,
}

/// Loads a service's config from the command line, the file it names and the process
/// environment. With `--print-config` it prints the result and exits.
pub fn load<T>(service: &str) -> anyhow::Result<T>
where
    T: DeserializeOwned + Serialize + Default,
{
    use clap::Parser;
    let flags = Flags::parse();
    let prefix = format!("{}__", env_prefix(service));
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(key, _)| key.starts_with(&prefix))
        .collect();
    let config: T = load_from(service, flags.config.as_deref(), env)?;
    if flags.print_config {
        use std::io::Write;
        writeln!(std::io::stdout().lock(), "{}", render(&config)?)?;
        std::process::exit(0);
    }
    if flags.healthcheck {
        crate::probe::exit_with_probe(&serde_json::to_value(&config)?);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Sample {
        server: ServerConfig,
        token: Secret,
        name: String,
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Secrets {
        #[allow(dead_code)]
        secrets: Vec<Secret>,
    }

    #[test]
    fn a_printed_config_does_not_round_trip_its_redacted_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("router.toml");
        let printed = render(&Sample {
            token: Secret::new("sk-real"),
            ..Sample::default()
        })
        .unwrap();
        assert!(printed.contains("token = \"[redacted]\""), "{printed}");
        std::fs::write(&file, &printed).unwrap();
        let err = load_from::<Sample>("router", Some(&file), HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("router.toml:"), "{err}");
        assert!(
            err.contains("the placeholder --print-config shows"),
            "{err}"
        );
        let env = env(&[("GHOST_ROUTER__TOKEN", "[redacted]")]);
        let err = load_from::<Sample>("router", None, env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("GHOST_ROUTER__TOKEN"), "{err}");
        assert!(err.contains("placeholder"), "{err}");
    }

    #[test]
    fn a_secret_is_read_from_the_file_its_file_variable_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "sk-from-a-file\n").unwrap();
        let path = file.to_str().unwrap();
        let loaded: Sample =
            load_from("router", None, env(&[("GHOST_ROUTER__TOKEN_FILE", path)])).unwrap();
        assert_eq!(loaded.token.expose(), "sk-from-a-file");
        // Nested keys too, and a real `*_file` key keeps its own meaning.
        let loaded: Sample = load_from(
            "router",
            None,
            env(&[
                ("GHOST_ROUTER__NAME_FILE", path),
                ("GHOST_ROUTER__SERVER__INTERNAL_TOKEN_FILE", path),
            ]),
        )
        .unwrap();
        assert_eq!(loaded.name, "sk-from-a-file");
        assert_eq!(
            loaded.server.internal_token_file.as_deref(),
            Some(file.as_path())
        );
        assert!(loaded.server.internal_token.is_empty());

        let missing = dir.path().join("absent");
        let err = load_from::<Sample>(
            "router",
            None,
            env(&[("GHOST_ROUTER__TOKEN_FILE", missing.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GHOST_ROUTER__TOKEN_FILE"), "{err}");
        assert!(err.contains("cannot read the file"), "{err}");
        assert!(err.contains("absent"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = load_from::<Sample>(
            "router",
            None,
            env(&[("GHOST_ROUTER__TOKEN_FILE", empty.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("is empty"), "{err}");
        assert!(err.contains("GHOST_ROUTER__TOKEN"), "{err}");

        let err = load_from::<Sample>(
            "router",
            None,
            env(&[
                ("GHOST_ROUTER__TOKEN", "sk-inline"),
                ("GHOST_ROUTER__TOKEN_FILE", path),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("both set"), "{err}");
        assert!(!err.contains("sk-"), "{err}");

        // An unknown key stays an error, with or without the suffix.
        let err = load_from::<Sample>("router", None, env(&[("GHOST_ROUTER__NOPE_FILE", path)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("GHOST_ROUTER__NOPE_FILE"), "{err}");
        assert!(!err.contains("sk-from-a-file"), "{err}");
    }

    #[test]
    fn a_placeholder_secret_is_refused_naming_where_it_is() {
        for placeholder in [
            "replace-with-a-random-key-of-16-or-more-chars",
            "replace-with-a-random-token",
            "change-me",
            "CHANGE-ME-please",
        ] {
            let err =
                load_from::<Sample>("router", None, env(&[("GHOST_ROUTER__TOKEN", placeholder)]))
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("GHOST_ROUTER__TOKEN"), "{err}");
            assert!(err.contains("placeholder of .env.example"), "{err}");
            assert!(
                !err.contains("a-random") && !err.contains("please"),
                "{err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("router.toml");
        std::fs::write(&file, "token = \"change-me\"\n").unwrap();
        let err = load_from::<Sample>("router", Some(&file), HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("router.toml:1:9"), "{err}");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "replace-with-a-random-token\n").unwrap();
        let err = load_from::<Sample>(
            "router",
            None,
            env(&[("GHOST_ROUTER__TOKEN_FILE", secret.to_str().unwrap())]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GHOST_ROUTER__TOKEN_FILE"), "{err}");
        assert!(err.contains("placeholder"), "{err}");
        // A real value that merely contains the words is fine.
        let loaded: Sample = load_from(
            "router",
            None,
            env(&[("GHOST_ROUTER__TOKEN", "sk-do-not-change-me")]),
        )
        .unwrap();
        assert_eq!(loaded.token.expose(), "sk-do-not-change-me");
    }

    #[test]
    fn a_type_error_never_prints_the_string_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.toml");
        std::fs::write(&file, "secrets = \"whsec_REAL\"\n").unwrap();
        let err = parse_file::<Secrets>(&file).unwrap_err().to_string();
        assert!(!err.contains("whsec_REAL"), "{err}");
        assert!(err.contains("s.toml:1:11"), "{err}");
        assert!(err.contains("string \"…\""), "{err}");
        let base = toml::Value::Table(toml::Table::new());
        let vars = env_layer("router", &env(&[("GHOST_ROUTER__SECRETS", "whsec_ENV")]));
        let err = build::<Secrets>(base, &vars).unwrap_err().to_string();
        assert!(!err.contains("whsec_ENV"), "{err}");
        assert!(err.contains("GHOST_ROUTER__SECRETS"), "{err}");
        assert_eq!(
            without_string_values(r#"a string "x\"y" and string "z", end"#),
            r#"a string "…" and string "…", end"#
        );
        assert_eq!(without_string_values(r#"string "open"#), r#"string "…"#);
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let sample: Sample = load_from("router", None, HashMap::new()).unwrap();
        assert_eq!(sample, Sample::default());
    }

    #[test]
    fn env_overrides_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("router.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\n[server]\ndrain_grace = \"7s\"\ngrpc_listen = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let sample: Sample = load_from(
            "router",
            Some(&file),
            env(&[
                ("GHOST_ROUTER__NAME", "from-env"),
                ("GHOST_ROUTER__SERVER__HTTP_LISTEN", "127.0.0.1:9"),
            ]),
        )
        .unwrap();
        assert_eq!(sample.name, "from-env");
        assert_eq!(sample.server.drain_grace, Duration::from_secs(7));
        assert_eq!(sample.server.grpc_listen.port(), 1);
        assert_eq!(sample.server.http_listen.port(), 9);
    }

    #[test]
    fn unknown_keys_fail_loudly() {
        let err = load_from::<Sample>("router", None, env(&[("GHOST_ROUTER__NAEM", "typo")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("naem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[server]\ngrpc_listen = \"not an address\"\n").unwrap();
        assert!(load_from::<Sample>("router", Some(&file), HashMap::new()).is_err());
        assert!(matches!(
            load_from::<Sample>(
                "router",
                Some(&dir.path().join("none.toml")),
                HashMap::new()
            ),
            Err(ConfigError::MissingFile(_))
        ));
    }

    #[test]
    fn secrets_are_redacted_when_rendered() {
        let sample: Sample = load_from(
            "router",
            None,
            env(&[("GHOST_ROUTER__TOKEN", "s3cr3t-value")]),
        )
        .unwrap();
        assert_eq!(sample.token.expose(), "s3cr3t-value");
        let text = render(&sample).unwrap();
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
        assert!(!format!("{sample:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn an_unknown_key_in_a_file_names_file_line_column_and_the_nearest_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("router.toml");
        std::fs::write(
            &file,
            "name = \"x\"\n[server]\ngrpc_listne = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let err = load_from::<Sample>("router", Some(&file), HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{}:3:1:", file.display())), "{err}");
        assert!(err.contains("did you mean `grpc_listen`?"), "{err}");
    }

    #[test]
    fn an_unknown_env_key_names_the_variable_and_the_nearest_key() {
        let err = load_from::<Sample>(
            "router",
            None,
            env(&[("GHOST_ROUTER__SERVER__HTTP_LISTN", "127.0.0.1:9")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GHOST_ROUTER__SERVER__HTTP_LISTN"), "{err}");
        assert!(err.contains("did you mean `http_listen`?"), "{err}");
    }

    #[test]
    fn env_values_are_toml_literals_when_they_fit_else_strings() {
        let sample: Sample = load_from(
            "router",
            None,
            env(&[
                ("GHOST_ROUTER__NAME", "42"),
                ("GHOST_ROUTER__TOKEN", "123456"),
                ("GHOST_ROUTER__SERVER__MAX_CONNECTIONS", "7"),
                ("GHOST_ROUTER__SERVER__TRUSTED_PROXIES", "[\"10.0.0.0/8\"]"),
            ]),
        )
        .unwrap();
        assert_eq!(sample.name, "42");
        assert_eq!(sample.token.expose(), "123456");
        assert_eq!(sample.server.max_connections, 7);
        assert_eq!(sample.server.trusted_proxies.len(), 1);
    }

    #[test]
    fn nearest_tolerates_small_typos_only() {
        assert_eq!(
            nearest("publc_url", ["public_url", "router_url"]),
            Some("public_url")
        );
        assert_eq!(nearest("zzzzzz", ["public_url"]), None);
    }
}
