//! The first look at a connection made to a TLS port: a TLS handshake is completed (bounded by
//! a timeout); plaintext HTTP gets a plaintext `400` saying the port speaks TLS; anything else is
//! closed. Both are logged once per peer address per minute ([`OncePerPeer`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::PLAINTEXT_ANSWER;

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
