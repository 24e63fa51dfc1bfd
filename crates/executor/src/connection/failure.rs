//! Why a session with the router failed, told in one line a person can act on: a certificate
//! this executor cannot verify (and why), a refused or revoked token, targets the token does
//! not cover, plaintext sent to a TLS port. Classified from the error chain tonic, hyper and
//! rustls give; each distinct cause is logged once until it changes, not on every retry.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::error::ExecutorError;

/// What the router (or the way to it) answered, in the terms the fix needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The router's certificate chains to no CA this executor trusts.
    UnknownCa,
    /// The router's certificate has expired or is not yet valid.
    Expired,
    /// The router's certificate does not name the host in the router URL.
    NameMismatch,
    /// Another certificate or TLS problem.
    Tls(String),
    /// `http://` to a port that speaks TLS.
    PlaintextToTls,
    /// The token is not one the router knows (UNAUTHENTICATED).
    TokenRefused(String),
    /// The token was revoked (UNAUTHENTICATED, "revoked").
    TokenRevoked(String),
    /// The token does not cover these targets (PERMISSION_DENIED).
    Forbidden {
        /// The targets this executor claimed.
        targets: Vec<String>,
        /// The router's message.
        message: String,
    },
    /// The router could not be reached or the stream broke.
    Unreachable(String),
}

impl Failure {
    /// Whether fast retries are pointless (wait the longest between attempts).
    pub fn is_final(&self) -> bool {
        matches!(self, Self::TokenRevoked(_))
    }

    /// Whether a plaintext probe may explain it (no answer from a gRPC server came back).
    pub fn maybe_plaintext(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownCa => write!(
                f,
                "cannot verify the router's certificate: it is signed by a CA this executor does \
                 not trust; give the CA that signed it (--ca FILE, or router_ca in the config; for \
                 a router started by `ghost up`, its <data-dir>/tls/ca.pem), and check that the \
                 one given is the router's"
            ),
            Self::Expired => write!(
                f,
                "cannot verify the router's certificate: it has expired (or is not valid yet); \
                 renew it on the router, and check this machine's clock"
            ),
            Self::NameMismatch => write!(
                f,
                "cannot verify the router's certificate: it is not valid for the host name in \
                 --router; use a name the certificate lists, or reissue it for this name"
            ),
            Self::Tls(detail) => write!(f, "TLS with the router failed: {detail}"),
            Self::PlaintextToTls => write!(
                f,
                "the router's port speaks TLS but --router says http://; use https://HOST:PORT \
                 (with --ca FILE for a private CA)"
            ),
            Self::TokenRefused(message) => write!(
                f,
                "the router refused the executor token (UNAUTHENTICATED: {message}); check \
                 --token-file or GHOST_EXECUTOR_TOKEN (`token` / GHOST_EXECUTOR__TOKEN in an \
                 executor config), or create a token on the control plane \
                 with `ghost token create --target TARGET --name NAME`"
            ),
            Self::TokenRevoked(message) => write!(
                f,
                "the executor token was revoked (UNAUTHENTICATED: {message}); create a new one \
                 with `ghost token create --target TARGET --name NAME` and restart with it \
                 (retrying at the longest interval meanwhile)"
            ),
            Self::Forbidden { targets, message } => write!(
                f,
                "the executor token does not cover the targets {} (PERMISSION_DENIED: \
                 {message}); create a token for them with `ghost token create --target T ...`, \
                 or serve only the targets the token was made for",
                targets.join(", ")
            ),
            Self::Unreachable(detail) => write!(f, "cannot reach the router: {detail}"),
        }
    }
}

/// The cause of `err`, for a session that claimed `targets`.
pub fn classify(err: &ExecutorError, targets: &[String]) -> Failure {
    if let ExecutorError::Rpc(status) = err {
        match status.code() {
            tonic::Code::Unauthenticated => {
                let message = status.message().to_owned();
                return if message.to_ascii_lowercase().contains("revoked") {
                    Failure::TokenRevoked(message)
                } else {
                    Failure::TokenRefused(message)
                };
            }
            tonic::Code::PermissionDenied => {
                return Failure::Forbidden {
                    targets: targets.to_vec(),
                    message: status.message().to_owned(),
                };
            }
            _ => {}
        }
    }
    if let Some(tls) = rustls_error(err) {
        return match tls {
            rustls::Error::InvalidCertificate(cert) => match cert {
                rustls::CertificateError::UnknownIssuer => Failure::UnknownCa,
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. }
                | rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. } => Failure::Expired,
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => Failure::NameMismatch,
                other => Failure::Tls(format!("invalid certificate: {other:?}")),
            },
            rustls::Error::InvalidMessage(_) => Failure::Tls(format!(
                "the router's port does not answer in TLS ({tls}); is --router's port the \
                 router's TLS executor port?"
            )),
            other => Failure::Tls(other.to_string()),
        };
    }
    if let ExecutorError::Router(message) = err {
        return Failure::Tls(message.clone());
    }
    Failure::Unreachable(chain(err))
}

/// Whether the port of an `http://` URL speaks TLS ([`speaks_tls`]); false for other URLs.
pub async fn url_speaks_tls(url: &str) -> bool {
    match plaintext_authority(url) {
        Some(addr) => speaks_tls(&addr).await,
        None => false,
    }
}

/// `host:port` of an `http://` URL (the port defaulting to 80); `None` for any other scheme.
fn plaintext_authority(url: &str) -> Option<String> {
    let uri: tonic::codegen::http::Uri = url.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(80);
    Some(format!("{host}:{port}"))
}

/// The first rustls error in the chain of `err` (also inside `io::Error`s, whose `source`
/// skips the error they wrap).
fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            && let Some(found) = rustls_error(inner)
        {
            return Some(found);
        }
        current = err.source();
    }
    None
}

/// `err` and its sources, `: `-joined (tonic's own text is often just "transport error").
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut current = err.source();
    while let Some(source) = current {
        let part = source.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        current = source.source();
    }
    text
}

/// Asks `addr` (`host:port`) once in plain HTTP/1.1: true when the answer is a TLS alert
/// record, or the router's plaintext answer on its TLS port ("this port speaks TLS").
pub async fn speaks_tls(addr: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while answer.len() < 4096 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        Some(answer)
    };
    let Ok(Some(answer)) = tokio::time::timeout(Duration::from_secs(3), probe).await else {
        return false;
    };
    // 0x15: a TLS record of content type alert, version 3.x.
    let alert = answer.len() >= 2 && answer[0] == 0x15 && answer[1] == 0x03;
    alert
        || String::from_utf8_lossy(&answer)
            .to_ascii_lowercase()
            .contains("this port speaks tls")
}

/// Logs each distinct failure once (warn, error for the ones a person must fix), and its
/// repeats at debug, until the cause changes or a session succeeds.
#[derive(Debug, Default)]
pub struct Reporter {
    last: Option<Failure>,
}

impl Reporter {
    /// Logs `failure` unless it is the one logged last; true when it was logged.
    pub fn report(&mut self, failure: &Failure, retry_in: Duration) -> bool {
        if self.last.as_ref() == Some(failure) {
            tracing::debug!(error = %failure, ?retry_in, "router session failed again");
            return false;
        }
        match failure {
            Failure::Unreachable(_) => {
                tracing::warn!(error = %failure, ?retry_in, "router session ended; retrying");
            }
            _ => tracing::error!(?retry_in, "{failure}"),
        }
        self.last = Some(failure.clone());
        true
    }

    /// After a session the router welcomed: the next failure is news again.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests;
