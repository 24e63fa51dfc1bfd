//! Configuration loading: struct defaults, then an optional TOML file (`--config FILE` or
//! `GHOST_CONFIG`), then environment variables `GHOST_<SVC>__KEY` (`__` nests). Unknown keys
//! are errors, so a typo fails at start instead of being ignored.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::connections::IpRange;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or the merged result does not fit the config struct.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ::config::ConfigError),
    /// The config file named on the command line does not exist.
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    /// The effective config could not be rendered for `--print-config`.
    #[error("cannot render configuration: {0}")]
    Render(#[from] toml::ser::Error),
}

/// A secret value (token, key): deserialised normally, always rendered as `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            serializer.serialize_str("")
        } else {
            serializer.serialize_str("[redacted]")
        }
    }
}

/// Where a service listens and how it drains; embedded in every service config as `server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address (`/healthz`, `/readyz`, `/metrics`, and any public API).
    pub http_listen: SocketAddr,
    /// After a stop signal, how long `/readyz` reports 503 while still serving, so load
    /// balancers stop sending new work first.
    #[serde(with = "humantime_serde")]
    pub drain_grace: Duration,
    /// Upper bound on waiting for in-flight requests once listeners are closed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Longest wait for a request's headers on the HTTP side: for the first request counted
    /// from the connection's start (so it closes connections that never send anything), for
    /// later ones from their first byte (the wait before it is `keep_alive_timeout`).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next request on an HTTP keep-alive connection once a request has
    /// been answered; longer than the usual reverse proxy's idle timeout (60 s), so a proxy
    /// never sends a request on a connection the server is closing. The first request's
    /// headers, and a request's headers once they start, still have `header_read_timeout`.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Longest an HTTP connection's answer may wait to be written without a byte read or
    /// written meanwhile: a client that sends a request and never reads the answer is closed.
    /// Streams that send data are unaffected (the MCP endpoint's SSE streams ping every 15 s).
    /// Reads are bounded by `header_read_timeout`, `keep_alive_timeout` and each service's
    /// body deadline.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP connections open at once over every client; more are closed as soon as they are
    /// accepted, so file descriptors are never exhausted.
    pub max_connections: usize,
    /// HTTP connections open at once from one client address (an IPv6 /64 counts as one);
    /// more are closed as soon as they are accepted. Trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// Reverse proxies in front of the HTTP side (addresses or CIDR ranges): exempt from
    /// `max_connections_per_address`, and their `X-Forwarded-For` names the client. Empty (the
    /// default): every peer is a client and the header is ignored.
    pub trusted_proxies: Vec<IpRange>,
}

impl ServerConfig {
    /// Loopback listeners on the given ports.
    pub fn loopback(grpc_port: u16, http_port: u16) -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], grpc_port)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], http_port)),
            ..Self::default()
        }
    }

    /// Loopback listeners on free ports and a short drain: what tests and `ghost up` want.
    pub fn ephemeral() -> Self {
        Self {
            drain_grace: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(5),
            ..Self::loopback(0, 0)
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            drain_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 64,
            trusted_proxies: Vec::new(),
        }
    }
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
    let mut builder =
        ::config::Config::builder().add_source(::config::Config::try_from(&T::default())?);
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::MissingFile(path.to_owned()));
        }
        builder = builder.add_source(
            ::config::File::from(path)
                .format(::config::FileFormat::Toml)
                .required(true),
        );
    }
    let environment = ::config::Environment::with_prefix(&env_prefix(service))
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(env));
    Ok(builder.add_source(environment).build()?.try_deserialize()?)
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
}
