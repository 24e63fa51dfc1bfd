//! `ghost up --store` and `[store]` of `ghost.toml`: one PostgreSQL database for the router,
//! the summarizer and the alerter (each service's own `[store] url`), instead of SQLite under
//! the data dir. The URL may hold a password: it is a [`Secret`], read from the flag, the
//! `GHOST_STORE` variable, `[store] url` or `[store] url_file`, and shown only as
//! `postgres://user@host:port/db`.

use std::path::PathBuf;

use ghost_runtime::config::{EnvVar, Secret};
use serde::Deserialize;

use crate::error::CliError;

/// The services that keep their state in the store.
pub const STORED: [&str; 3] = ["router", "summarizer", "alerter"];

/// `[store]` of `ghost.toml`. Unset: each service keeps SQLite under the data dir.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSpec {
    /// `postgres://user:password@host:port/db`: the router, summarizer and alerter share it
    /// (`--store` / `GHOST_STORE` win).
    pub url: Option<Secret>,
    /// A file holding the URL (mode 0600, or a mounted secret), so the password is in neither
    /// `ghost.toml` nor the command line; relative to the file's directory.
    pub url_file: Option<PathBuf>,
}

/// Where `ghost up` found the URL, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Flag,
    File,
    UrlFile,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Self::Flag => "--store (or GHOST_STORE)",
            Self::File => "[store] url",
            Self::UrlFile => "[store] url_file",
        }
    }
}

/// The store URL: the flag over the file's `url` or `url_file` (not both); `None` for SQLite.
/// Refuses a URL that is not `postgres://`/`postgresql://`, naming where it came from and its
/// scheme only (the rest may hold a password).
pub fn resolve(flag: Option<String>, spec: &StoreSpec) -> Result<Option<Secret>, CliError> {
    if spec.url.is_some() && spec.url_file.is_some() {
        return Err(CliError::Input(
            "[store] has both url and url_file: set one of them".to_owned(),
        ));
    }
    let (url, source) = match (flag, &spec.url, &spec.url_file) {
        (Some(flag), _, _) => (flag, Source::Flag),
        (None, Some(url), _) => (url.expose().to_owned(), Source::File),
        (None, None, Some(path)) => (read_url_file(path)?, Source::UrlFile),
        (None, None, None) => return Ok(None),
    };
    let url = url.trim().to_owned();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Some(Secret::new(url)));
    }
    let scheme = match url.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme.len() <= 20
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+') =>
        {
            format!("`{scheme}://`")
        }
        _ => "no scheme".to_owned(),
    };
    let err = format!(
        "{} must be a PostgreSQL URL, postgres://USER:PASSWORD@HOST:PORT/DB (leave it unset for \
         SQLite under the data dir); it has {scheme}",
        source.name()
    );
    Err(match source {
        Source::Flag => CliError::Settings(err),
        Source::File | Source::UrlFile => CliError::Input(err),
    })
}

/// The first non-empty line of `path`.
fn read_url_file(path: &std::path::Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        CliError::Input(format!(
            "[store] url_file {}: cannot read it: {err}",
            path.display()
        ))
    })?;
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            CliError::Input(format!(
                "[store] url_file {} is empty: it must hold postgres://USER:PASSWORD@HOST:PORT/DB",
                path.display()
            ))
        })
}

/// `url` as `postgres://user@host:port/db`: no password, no query (`?password=` is possible),
/// the port 5432 when the URL has none.
pub fn shown(url: &Secret) -> String {
    let Ok(parsed) = reqwest::Url::parse(url.expose()) else {
        return "postgres://[unparsable URL, not shown]".to_owned();
    };
    let user = match parsed.username() {
        "" => String::new(),
        user => format!("{user}@"),
    };
    let host = parsed.host_str().unwrap_or("localhost");
    let port = parsed.port().unwrap_or(5432);
    format!("{}://{user}{host}:{port}{}", parsed.scheme(), parsed.path())
}

/// The `[store]` tree each stored service's config gets: `store.url` = the URL.
pub fn tree(url: &Secret) -> toml::Value {
    let store = toml::Table::from_iter([(
        "url".to_owned(),
        toml::Value::String(url.expose().to_owned()),
    )]);
    toml::Value::Table(toml::Table::from_iter([(
        "store".to_owned(),
        toml::Value::Table(store),
    )]))
}

/// Refuses a service's own `store` (its section in the file, or a `GHOST_<SVC>__STORE__…`
/// variable) beside the deployment's: the services would end on two databases.
pub fn refuse_service_stores(
    section: impl Fn(&str) -> Option<toml::Value>,
    env_for: impl Fn(&str) -> Vec<EnvVar>,
) -> Result<(), CliError> {
    for service in STORED {
        if section(service).is_some_and(|s| s.get("store").is_some()) {
            return Err(CliError::Input(format!(
                "[{service}.store] is set in the file, but --store or [store] sets the store \
                 of the router, summarizer and alerter: set it once, in [store]"
            )));
        }
        if let Some(var) = env_for(service)
            .into_iter()
            .find(|var| var.path.first().is_some_and(|k| k == "store"))
        {
            return Err(CliError::Input(format!(
                "environment variable {} sets {service}.store, but --store or [store] sets the \
                 store of the router, summarizer and alerter: set it once (GHOST_STORE)",
                var.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "postgres://ghost:hunter2@db.internal:6432/ghost?sslmode=require";

    #[test]
    fn the_flag_wins_over_the_file_and_url_file_is_read_and_trimmed() {
        let spec = StoreSpec {
            url: Some(Secret::new("postgres://file@h/db")),
            url_file: None,
        };
        let url = resolve(Some(URL.to_owned()), &spec).unwrap().unwrap();
        assert_eq!(url.expose(), URL);
        let url = resolve(None, &spec).unwrap().unwrap();
        assert_eq!(url.expose(), "postgres://file@h/db");
        assert!(resolve(None, &StoreSpec::default()).unwrap().is_none());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db-url");
        std::fs::write(&file, format!("\n{URL}\n")).unwrap();
        let spec = StoreSpec {
            url: None,
            url_file: Some(file.clone()),
        };
        assert_eq!(resolve(None, &spec).unwrap().unwrap().expose(), URL);
        let both = StoreSpec {
            url: Some(Secret::new(URL)),
            url_file: Some(file),
        };
        let err = resolve(None, &both).unwrap_err().to_string();
        assert!(err.contains("both url and url_file"), "{err}");
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let empty = StoreSpec {
            url: None,
            url_file: Some(dir.path().join("empty")),
        };
        let err = resolve(None, &empty).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");
    }

    #[test]
    fn a_url_that_is_not_postgres_is_refused_naming_where_it_came_from_never_its_password() {
        for bad in [
            "mysql://root:hunter2@x/db",
            "hunter2",
            "sqlite:///tmp/hunter2.db",
        ] {
            let err = resolve(Some(bad.to_owned()), &StoreSpec::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("--store"), "{err}");
            assert!(err.contains("postgres://"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
            let spec = StoreSpec {
                url: Some(Secret::new(bad)),
                url_file: None,
            };
            let err = resolve(None, &spec).unwrap_err().to_string();
            assert!(err.contains("[store] url"), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = resolve(Some("mysql://x".to_owned()), &StoreSpec::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`mysql://`"), "{err}");
        assert!(resolve(Some("postgresql://h/db".to_owned()), &StoreSpec::default()).is_ok());
    }

    #[test]
    fn the_url_is_shown_without_its_password_or_query() {
        assert_eq!(
            shown(&Secret::new(URL)),
            "postgres://ghost@db.internal:6432/ghost"
        );
        assert_eq!(
            shown(&Secret::new("postgresql://db/ghost")),
            "postgresql://db:5432/ghost"
        );
        assert_eq!(
            shown(&Secret::new("postgres://u:p%40ss@[::1]/x")),
            "postgres://u@[::1]:5432/x"
        );
        assert!(!shown(&Secret::new("postgres://u:hunter2@")).contains("hunter2"));
    }

    #[test]
    fn the_tree_sets_store_url() {
        let tree = tree(&Secret::new(URL));
        assert_eq!(tree["store"]["url"].as_str(), Some(URL));
    }
}
