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
//!   closed. Both are logged once per peer address per minute.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

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

/// What the first bytes of a connection to a TLS port look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstBytes {
    /// A TLS record (handshake).
    Tls,
    /// Plaintext HTTP/1 (a client that forgot `https://`).
    PlainHttp,
    /// The plaintext HTTP/2 preface (a gRPC client that forgot `https://`).
    PlainHttp2,
    /// Anything else.
    Garbage,
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

const HTTP_STARTS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// True when `first` is a beginning of `start` or starts with it.
fn starts_like(first: &[u8], start: &[u8]) -> bool {
    let len = start.len().min(first.len());
    first[..len] == start[..len]
}

/// Classifies the first bytes read (at least one).
pub fn classify(first: &[u8]) -> FirstBytes {
    match first.first() {
        None => FirstBytes::Garbage,
        Some(0x16) => FirstBytes::Tls,
        Some(_) if starts_like(first, HTTP2_PREFACE) => FirstBytes::PlainHttp2,
        Some(_) => {
            let http = HTTP_STARTS.iter().any(|start| starts_like(first, start));
            if http {
                FirstBytes::PlainHttp
            } else {
                FirstBytes::Garbage
            }
        }
    }
}

/// Logs at most once a minute per peer address (IPv6: per /64, as
/// [`crate::connections::address_key`] counts them), and at most [`LINES_PER_MINUTE`] lines a
/// minute in the whole process, so a client retrying in a loop, a scanner or an attacker
/// cycling through addresses cannot flood the log. Remembers at most [`PEERS_REMEMBERED`]
/// peers, forgetting the oldest first.
#[derive(Debug, Clone, Default)]
pub struct OncePerPeer(Arc<Mutex<PeersSeen>>);

/// The peers an [`OncePerPeer`] logged, newest last.
#[derive(Debug, Default)]
pub struct PeersSeen {
    last: HashMap<IpAddr, Instant>,
    order: std::collections::VecDeque<(IpAddr, Instant)>,
}

const LOG_EVERY: Duration = Duration::from_secs(60);

/// Peers one [`OncePerPeer`] remembers.
pub const PEERS_REMEMBERED: usize = 4096;

/// Lines all [`OncePerPeer`]s of the process let through a minute.
pub const LINES_PER_MINUTE: u32 = 32;

/// The process-wide line budget: the start of the current minute and the lines let through in it.
static BUDGET: Mutex<Option<(Instant, u32)>> = Mutex::new(None);

fn within_budget(now: Instant) -> bool {
    let mut budget = BUDGET.lock().unwrap_or_else(PoisonError::into_inner);
    match budget.as_mut() {
        Some((start, lines)) if now.duration_since(*start) < LOG_EVERY => {
            if *lines >= LINES_PER_MINUTE {
                return false;
            }
            *lines += 1;
            true
        }
        _ => {
            *budget = Some((now, 1));
            true
        }
    }
}

impl OncePerPeer {
    /// True when `peer` (its /64 for IPv6) has not been logged in the last minute and the
    /// process's line budget allows one more (and records it now).
    pub fn first(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        let key = crate::connections::address_key(peer);
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if seen
            .last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < LOG_EVERY)
        {
            return false;
        }
        seen.last.insert(key, now);
        seen.order.push_back((key, now));
        // Forget the oldest: entries past their minute, and any beyond the cap. An entry whose
        // peer was recorded again later is only a stale place in the queue.
        while let Some(&(oldest, at)) = seen.order.front() {
            if seen.order.len() <= PEERS_REMEMBERED && now.duration_since(at) < LOG_EVERY {
                break;
            }
            seen.order.pop_front();
            if seen.last.get(&oldest) == Some(&at) {
                seen.last.remove(&oldest);
            }
        }
        drop(seen);
        within_budget(now)
    }

    /// How many peers it remembers now.
    pub fn remembered(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last
            .len()
    }
}

/// The plaintext answer to an HTTP/1 request: `400` with [`PLAINTEXT_ANSWER`].
fn http1_refusal() -> Vec<u8> {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PLAINTEXT_ANSWER}",
        PLAINTEXT_ANSWER.len()
    )
    .into_bytes()
}

/// The plaintext answer to the HTTP/2 preface: an empty SETTINGS frame (the server preface)
/// and a GOAWAY refusing every stream (REFUSED_STREAM, which gRPC clients report as
/// UNAVAILABLE) with [`PLAINTEXT_ANSWER`] as its debug data. An HTTP/1 `400` would reach an
/// HTTP/2 client as a malformed frame, which gRPC clients report as INTERNAL.
fn http2_refusal() -> Vec<u8> {
    const REFUSED_STREAM: u32 = 0x7;
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let length = u32::try_from(8 + PLAINTEXT_ANSWER.len()).unwrap_or(8);
    frames.extend_from_slice(&length.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&0_u32.to_be_bytes());
    frames.extend_from_slice(&REFUSED_STREAM.to_be_bytes());
    frames.extend_from_slice(PLAINTEXT_ANSWER.as_bytes());
    frames
}

/// Answers plaintext HTTP on a TLS port, in plaintext, and closes.
async fn refuse_plaintext(mut stream: TcpStream, answer: &[u8]) {
    if stream.write_all(answer).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Read what the client sent (bounded) so closing does not reset the connection before the
    // client has read the answer.
    let mut sink = [0_u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(read) => drained += read,
            }
        }
    })
    .await;
}

/// Looks at the first bytes of a connection to a TLS port: the stream back when a TLS
/// handshake starts; plaintext HTTP is answered `400` and closed, other bytes are closed; both
/// are logged once a minute per peer (in `log`). The caller bounds the wait.
pub async fn screen(stream: TcpStream, peer: SocketAddr, log: &OncePerPeer) -> Option<TcpStream> {
    let mut first = [0_u8; 16];
    let read = stream.peek(&mut first).await.ok()?;
    if read == 0 {
        return None;
    }
    match classify(&first[..read]) {
        FirstBytes::Tls => Some(stream),
        FirstBytes::PlainHttp | FirstBytes::PlainHttp2 => {
            if log.first(peer.ip()) {
                tracing::warn!(%peer, "plaintext sent to a TLS port; refused (use https://)");
            }
            let answer = if classify(&first[..read]) == FirstBytes::PlainHttp2 {
                http2_refusal()
            } else {
                http1_refusal()
            };
            refuse_plaintext(stream, &answer).await;
            None
        }
        FirstBytes::Garbage => {
            if log.first(peer.ip()) {
                tracing::warn!(%peer, "bytes that are neither TLS nor HTTP sent to a TLS port; closed");
            }
            None
        }
    }
}

/// [`screen`], then the TLS handshake, all within `timeout`. `None` when the connection did
/// not become a TLS session.
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    timeout: Duration,
    log: &OncePerPeer,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = async {
        let stream = screen(stream, peer, log).await?;
        acceptor
            .accept(stream)
            .await
            .inspect_err(|err| tracing::debug!(%peer, error = %err, "tls handshake failed"))
            .ok()
    };
    match tokio::time::timeout(timeout, handshake).await {
        Ok(tls) => tls,
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "tls handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_are_told_apart() {
        assert_eq!(classify(&[0x16, 0x03, 0x01]), FirstBytes::Tls);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), FirstBytes::PlainHttp2);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstBytes::PlainHttp);
        assert_eq!(classify(b"PO"), FirstBytes::PlainHttp);
        assert_eq!(classify(b"\x00\xffgarbage"), FirstBytes::Garbage);
        assert_eq!(classify(b"GETX"), FirstBytes::Garbage);
    }

    #[test]
    fn a_peer_is_logged_once_a_minute() {
        let log = OncePerPeer::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(log.first(ip));
        assert!(!log.first(ip));
        assert!(log.first("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn ipv6_peers_count_by_their_64_the_memory_is_capped_and_the_process_budget_holds() {
        let log = OncePerPeer::default();
        assert!(log.first("2001:db8:1:2::1".parse().unwrap()));
        assert!(!log.first("2001:db8:1:2:ffff::9".parse().unwrap()));
        let mut logged = 1;
        for n in 0..(PEERS_REMEMBERED as u32 * 3) {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            if log.first(peer) {
                logged += 1;
            }
            assert!(log.remembered() <= PEERS_REMEMBERED);
        }
        assert_eq!(
            logged, LINES_PER_MINUTE,
            "one minute's budget for the process"
        );
    }
}
