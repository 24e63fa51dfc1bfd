//! The configuration sections every service shares: where it listens and how it drains
//! ([`ServerConfig`], with [`TlsConfig`]), and where a stateful service keeps its state
//! ([`StoreConfig`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Secret};
use crate::connections::IpRange;

/// Where a stateful service (router, summarizer, alerter) keeps its state: `[store]`, the same
/// key in all three.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Unset: SQLite under the service's `data_dir` (the embedded default, one replica).
    /// `postgres://user:pass@host/db` (or `postgresql://`): PostgreSQL, so replicas share one
    /// database (each service in its own schema). A secret (it may hold a password): redacted by
    /// `--print-config`, never logged; `GHOST_<SERVICE>__STORE__URL_FILE` reads it from a file.
    pub url: Option<Secret>,
}

impl StoreConfig {
    /// The PostgreSQL URL, `None` for SQLite, or why `url` is neither (naming only its scheme,
    /// never the rest: it may hold a password).
    pub fn postgres_url(&self) -> Result<Option<&str>, String> {
        let Some(url) = self.url.as_ref().map(Secret::expose) else {
            return Ok(None);
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Some(url));
        }
        let scheme = match url.split_once("://") {
            Some((scheme, _))
                if scheme.len() <= 20
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+') =>
            {
                format!("`{scheme}://`")
            }
            _ => "no scheme".to_owned(),
        };
        Err(format!(
            "store.url must be unset (SQLite in data_dir) or a postgres:// URL; it has {scheme}"
        ))
    }
}

/// Where a service listens and how it drains; embedded in every service config as `server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// HTTP listen address: the public HTTP routes of the gateway (`/v1`, `/ui`, `/mcp`,
    /// `/openapi.json`, `/privacy`) and the alerter (`/slack/*`), and the operations routes
    /// (`/healthz`, `/readyz`, `/metrics`) while `ops_listen` is unset.
    pub http_listen: SocketAddr,
    /// The operations listener: `/healthz`, `/readyz` and `/metrics`, and nothing else. Unset
    /// (the default): they are served on `http_listen`, beside the public routes, which suits a
    /// service on loopback. Set: they are served only here and `http_listen` answers 404 for
    /// them, so a firewall or NetworkPolicy can open the public port to everyone and this one to
    /// the monitoring system alone. The router, executor and summarizer have no public HTTP
    /// routes: their one HTTP listener is this one, bound at `ops_listen` when set (and
    /// `http_listen` is then not bound), else at `http_listen`. Same limits as the HTTP side
    /// (timeouts, connection caps, counted apart) and the same TLS (`tls.http`).
    pub ops_listen: Option<SocketAddr>,
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
    /// TLS on this service's listeners, and the CA it trusts when it dials `https://` peers.
    pub tls: TlsConfig,
    /// The deployment's service credential: every gRPC call between services carries it
    /// (`authorization: Bearer …`), and this service's control RPCs refuse a call without it
    /// (UNAUTHENTICATED). Health checks, reflection and the executors' `Work` stream (which
    /// authenticates with executor tokens) do not need it. Empty (the default) is allowed only
    /// while the gRPC listener is on a loopback address: then local callers need no credential.
    /// `ghost up`, compose and k8s always set one.
    pub internal_token: Secret,
    /// A file holding the service credential (its first line), read at start; used when
    /// `internal_token` is empty. For secrets mounted as files (compose, k8s).
    pub internal_token_file: Option<PathBuf>,
    /// Let this service send the service credential to `http://` peers off loopback (compose
    /// service names, in-cluster k8s names). Off (the default), such a peer URL is refused when
    /// the service is built: the credential would cross the network in plaintext. Turn it on
    /// only for a trusted network (one host, or a cluster behind a NetworkPolicy); use
    /// `https://` peers (or a mesh) beyond that.
    pub allow_plaintext_peers: bool,
}

/// TLS on one service's listeners (rustls only). With `cert` and `key` set, the gRPC and the
/// HTTP side serve TLS (each can be turned off with `grpc`/`http`), and both files are
/// re-read when they change, without a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain served to clients (leaf first). Unset: plaintext listeners.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Serve TLS on the gRPC listener when `cert` and `key` are set.
    pub grpc: bool,
    /// Serve TLS on the HTTP listener when `cert` and `key` are set.
    pub http: bool,
    /// PEM CA certificate(s) trusted when this service dials an `https://` peer (e.g. the
    /// private CA `ghost up` makes). Unset: the public web PKI roots.
    pub ca: Option<PathBuf>,
    /// How often `cert` and `key` are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            grpc: true,
            http: true,
            ca: None,
            reload_interval: Duration::from_secs(2),
        }
    }
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

    /// The deployment's service credential: `internal_token`, else the first line of
    /// `internal_token_file` (trimmed), else empty. Read once, when a service is built.
    pub fn internal_token(&self) -> Result<Secret, ConfigError> {
        if !self.internal_token.is_empty() {
            return Ok(self.internal_token.clone());
        }
        let Some(path) = &self.internal_token_file else {
            return Ok(Secret::default());
        };
        let error = |detail: String| ConfigError::TokenFile {
            path: path.clone(),
            detail,
        };
        let text =
            std::fs::read_to_string(path).map_err(|err| error(format!("cannot read it: {err}")))?;
        let token = text.lines().next().unwrap_or_default().trim();
        if token.is_empty() {
            return Err(error(
                "its first line is empty: it must hold the service credential".to_owned(),
            ));
        }
        Ok(Secret::new(token))
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
            ops_listen: None,
            drain_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(20),
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 64,
            trusted_proxies: Vec::new(),
            tls: TlsConfig::default(),
            internal_token: Secret::default(),
            internal_token_file: None,
            allow_plaintext_peers: false,
        }
    }
}
