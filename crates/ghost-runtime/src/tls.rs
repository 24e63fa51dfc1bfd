//! TLS on a service's listeners (rustls with the ring provider, never the process default):
//! loading a PEM certificate chain and key, a certificate resolver that follows the files when
//! they are replaced, and the first look at a connection made to a TLS port.
//!
//! - [`ServerTls::load`] reads `server.tls.cert`/`key` once at build; every error names the file.
//! - [`ServerTls::watch`] re-reads both every `reload_interval`; a changed, valid pair is swapped
//!   in for new handshakes (live connections keep their session), a bad one is logged once and
//!   the current pair stays.
//! - [`accept`] classifies a fresh connection: a TLS handshake is completed (bounded by a
//!   timeout); plaintext HTTP gets a plaintext `400` saying the port speaks TLS; anything else is
//!   closed. Both are logged once per peer address per minute. That first look is
//!   [`first_look`]'s.

mod first_look;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

pub use self::first_look::{
    FirstBytes, LINES_PER_MINUTE, OncePerPeer, PEERS_REMEMBERED, PeersSeen, accept, classify,
    screen,
};
use crate::config::TlsConfig;

/// ALPN protocols of a gRPC listener.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN protocols of an HTTP listener.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The answer to plaintext HTTP sent to a TLS port.
pub const PLAINTEXT_ANSWER: &str = "this port speaks TLS: use https://";

/// The crypto provider of every rustls config Ghost Runner builds: ring, explicitly, since
/// another dependency brings aws-lc-rs and the process default is then ambiguous.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate or key could not be used. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read the TLS {what} {path}: {source}")]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file is not PEM, or holds no certificate.
    #[error("the TLS certificate {path} is not a PEM certificate chain: {detail}")]
    NotPemCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file holds no private key.
    #[error(
        "the TLS key {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1 expected): {detail}"
    )]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key is not the certificate's, or cannot sign.
    #[error("the TLS key {key} does not match the certificate {cert}: {detail}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Only one of `cert` and `key` is set.
    #[error("server.tls.cert and server.tls.key must be set together (only {set} is set)")]
    Half {
        /// The one that is set.
        set: &'static str,
    },
    /// rustls refused the configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    /// A CA file to trust holds no certificate.
    #[error("the CA file {path} holds no PEM certificate: {detail}")]
    NotPemCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM chain; `None` with what is wrong.
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if !pem.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err("no PEM block (-----BEGIN …) in it".to_owned());
    }
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| err.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in it".to_owned());
    }
    Ok(certs)
}

/// Reads a PEM CA file (one or more certificates) for clients to trust.
pub fn read_ca(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = read("CA", path)?;
    pem_certificates(&pem).map_err(|detail| TlsError::NotPemCa {
        path: path.to_owned(),
        detail,
    })?;
    Ok(pem)
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = pem_certificates(cert_pem).map_err(|detail| TlsError::NotPemCertificate {
        path: cert.to_owned(),
        detail,
    })?;
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| TlsError::NoKey {
        path: key.to_owned(),
        detail: err.to_string(),
    })?;
    let mismatch = |detail: String| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        detail,
    };
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|err| mismatch(err.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(err) => Err(mismatch(err.to_string())),
    }
}

/// The `notAfter` of a DER certificate as `YYYY-MM-DDTHH:MM:SSZ`, or `unknown`.
pub fn not_after(der: &[u8]) -> String {
    expiry(der).unwrap_or_else(|| "unknown".to_owned())
}

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, byte| (len << 8) | usize::from(*byte));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expiry(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_element(der)?;
    let (_, tbs, _) = der_element(certificate)?;
    let mut rest = tbs;
    // [0] version, optional
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    // serial, signature algorithm, issuer, then validity
    for _ in 0..3 {
        rest = der_element(rest)?.2;
    }
    let (_, validity, _) = der_element(rest)?;
    let (_, _, after) = der_element(validity)?;
    let (tag, time, _) = der_element(after)?;
    let text = std::str::from_utf8(time).ok()?;
    let full = match tag {
        // UTCTime YYMMDDHHMMSSZ
        0x17 if text.len() >= 12 => {
            let year: u32 = text[..2].parse().ok()?;
            let century = if year >= 50 { "19" } else { "20" };
            format!("{century}{text}")
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ
        0x18 if text.len() >= 14 => text.to_owned(),
        _ => return None,
    };
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        full.get(..4)?,
        full.get(4..6)?,
        full.get(6..8)?,
        full.get(8..10)?,
        full.get(10..12)?,
        full.get(12..14)?
    ))
}

/// Now as RFC 3339 UTC to the second (`2026-12-06T05:00:00Z`), the shape [`not_after`] gives.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The current certificate, swapped whole when the files change.
#[derive(Debug)]
struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A service's server certificate, following `server.tls.cert`/`key`.
#[derive(Clone)]
pub struct ServerTls {
    slot: Arc<CertSlot>,
    cert: PathBuf,
    key: PathBuf,
    reload_interval: Duration,
    /// The contents last loaded (or last refused), to notice a change.
    seen: Arc<Mutex<(Vec<u8>, Vec<u8>)>>,
}

impl std::fmt::Debug for ServerTls {
    // Never the key's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("reload_interval", &self.reload_interval)
            .finish_non_exhaustive()
    }
}

/// What one check of the certificate files found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are what is served (or what was refused last).
    Unchanged,
    /// A changed file cannot be read now (mid-replacement, or removed): checked again later.
    Unreadable,
    /// A changed, valid pair is served from now on.
    Reloaded,
    /// A changed pair is invalid; it is refused once it stays unchanged for one more check.
    Pending,
    /// The invalid pair was logged as an error; the previous pair is still served.
    Refused,
}

impl ServerTls {
    /// Loads the pair named by `config`; `None` when neither file is set.
    pub fn load(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (&config.cert, &config.key) {
            (None, None) => return Ok(None),
            (Some(_), None) => return Err(TlsError::Half { set: "cert" }),
            (None, Some(_)) => return Err(TlsError::Half { set: "key" }),
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        };
        let cert_pem = read("certificate", &cert)?;
        let key_pem = read("key", &key)?;
        let certified = certified_key(&cert, &cert_pem, &key, &key_pem)?;
        Ok(Some(Self {
            slot: Arc::new(CertSlot(RwLock::new(Arc::new(certified)))),
            cert,
            key,
            reload_interval: config.reload_interval.max(Duration::from_millis(100)),
            seen: Arc::new(Mutex::new((cert_pem, key_pem))),
        }))
    }

    /// The `notAfter` of the certificate served now.
    pub fn expiry(&self) -> String {
        self.slot
            .current()
            .end_entity_cert()
            .map_or_else(|_| "unknown".to_owned(), |der| not_after(der))
    }

    /// A rustls server config offering `alpn`, resolving to the current certificate.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let resolver: Arc<dyn ResolvesServerCert> = Arc::clone(&self.slot) as _;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Config(err.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// An acceptor offering `alpn`.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::from(self.server_config(alpn)?))
    }

    /// Checks the files once: swaps in a changed valid pair, logs a changed invalid one (once)
    /// and keeps the current one. A pair is refused only once it has stayed the same for one
    /// check, so a rotation that writes the certificate and then the key logs no error.
    /// `pending` carries the invalid pair seen last from one check to the next.
    pub fn check(&self, pending: &mut Option<(Vec<u8>, Vec<u8>)>) -> Reload {
        let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read(&self.cert), std::fs::read(&self.key))
        else {
            return Reload::Unreadable;
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.0 == cert_pem && seen.1 == key_pem {
            *pending = None;
            return Reload::Unchanged;
        }
        let pair = (cert_pem, key_pem);
        let checked = certified_key(&self.cert, &pair.0, &self.key, &pair.1)
            .map_err(|err| err.to_string())
            .and_then(|certified| {
                let expires = certified
                    .end_entity_cert()
                    .map_or_else(|_| "unknown".to_owned(), |der| not_after(der));
                // RFC 3339 UTC strings of one shape compare as times.
                if expires != "unknown" && expires < now_rfc3339() {
                    return Err(format!(
                        "{}: the certificate expired at {expires}",
                        self.cert.display()
                    ));
                }
                Ok((certified, expires))
            });
        match checked {
            Ok((certified, expires)) => {
                // A chain cut short (the leaf written, its intermediates not yet) is served only
                // once it stays so for one more check.
                let served = self.slot.current().cert.len();
                if certified.cert.len() < served && pending.as_ref() != Some(&pair) {
                    *pending = Some(pair);
                    return Reload::Pending;
                }
                self.slot.replace(certified);
                *seen = pair;
                *pending = None;
                tracing::info!(cert = %self.cert.display(), not_after = %expires, "tls certificate reloaded");
                Reload::Reloaded
            }
            Err(err) => {
                if pending.as_ref() == Some(&pair) {
                    tracing::error!(error = %err, "cannot reload the tls certificate; still serving the previous one");
                    *seen = pair;
                    *pending = None;
                    Reload::Refused
                } else {
                    *pending = Some(pair);
                    Reload::Pending
                }
            }
        }
    }

    /// Re-reads the files every `reload_interval` until `stop` is cancelled.
    pub async fn watch(self, stop: CancellationToken) {
        let mut pending = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.reload_interval) => {}
            }
            let this = self.clone();
            let kept = pending.take();
            pending = tokio::task::spawn_blocking(move || {
                let mut pending = kept;
                let _ = this.check(&mut pending);
                pending
            })
            .await
            .unwrap_or_default();
        }
    }
}
