//! The HTTP side's accept loop: HTTP/1.1 connections with a header read timeout, a longer idle
//! keep-alive timeout between requests, an inactivity timeout while reading or writing (a client
//! that never reads its answer is closed), a bounded header buffer, a global connection cap, and
//! a cap on connections per client address, so one client cannot hold every socket with slow or
//! idle connections. Trusted reverse proxies (which carry many clients' connections) are exempt
//! from the per-address cap. Each request carries the peer as axum's `ConnectInfo<SocketAddr>`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::tls::OncePerPeer;

/// An address, or a range of them in CIDR notation: `192.0.2.7`, `192.0.2.0/24`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// True when `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))?;
        let network = network.to_canonical();
        let longest = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= longest)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {longest}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl TryFrom<String> for IpRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<IpRange> for String {
    fn from(range: IpRange) -> Self {
        range.to_string()
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// True when `ip` is one of `proxies`.
pub fn is_trusted_proxy(proxies: &[IpRange], ip: IpAddr) -> bool {
    proxies.iter().any(|range| range.contains(ip))
}

/// The connection limits of the HTTP side, from [`ServerConfig`].
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// See [`ServerConfig::header_read_timeout`].
    pub header_read_timeout: Duration,
    /// See [`ServerConfig::keep_alive_timeout`].
    pub keep_alive_timeout: Duration,
    /// See [`ServerConfig::idle_timeout`].
    pub idle_timeout: Duration,
    /// See [`ServerConfig::max_connections`].
    pub max_connections: usize,
    /// See [`ServerConfig::max_connections_per_address`].
    pub max_connections_per_address: usize,
    /// See [`ServerConfig::trusted_proxies`]: exempt from the per-address cap.
    pub trusted_proxies: Arc<[IpRange]>,
}

impl From<&ServerConfig> for HttpLimits {
    fn from(config: &ServerConfig) -> Self {
        Self {
            header_read_timeout: config.header_read_timeout,
            keep_alive_timeout: config.keep_alive_timeout,
            idle_timeout: config.idle_timeout,
            max_connections: config.max_connections,
            max_connections_per_address: config.max_connections_per_address,
            trusted_proxies: config.trusted_proxies.clone().into(),
        }
    }
}

/// The key a client address is counted under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its
/// /64 prefix, since one host commonly holds a whole /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// How many of something (connections, requests in flight) each client address holds now.
/// Only addresses holding at least one are kept, so it is as large as what it counts.
#[derive(Debug, Clone, Default)]
pub struct AddressCounts(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl AddressCounts {
    /// One more for `ip` (counted by [`address_key`]), or None when it already holds `cap`.
    pub fn take(&self, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let held = map.entry(key).or_insert(0);
        if *held >= cap.max(1) {
            return None;
        }
        *held += 1;
        Some(AddressSlot {
            counts: self.clone(),
            key,
        })
    }
}

/// One unit counted against an address; given back on drop.
#[derive(Debug)]
pub struct AddressSlot {
    counts: AddressCounts,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = map.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Largest request head, and the read buffer's cap: a longer head is refused (431) instead of
/// growing memory per connection (hyper's default buffer is about 400 KiB).
const MAX_HEAD_BUFFER: usize = 64 * 1024;

/// Bytes read on one connection so far, shared by its socket and its header timer.
#[derive(Debug, Default)]
struct Activity {
    bytes_read: AtomicU64,
}

/// A socket whose writes fail with `TimedOut` once they have waited `limit` without a byte read
/// or written: a peer that stops reading its answer does not hold the connection forever, and
/// streams that send data (or keep-alive pings) keep making progress. A pending read does not
/// arm the timer, since hyper keeps a read pending for as long as a connection lives (between
/// requests, and to notice a hang-up while a handler runs); reads are bounded by the header
/// timer ([`HeadTimer`]) and by each service's body deadline, and a byte read counts as
/// progress.
struct Watched<S> {
    stream: S,
    activity: Arc<Activity>,
    limit: Duration,
    last_progress: Instant,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Watched<S> {
    fn new(stream: S, activity: Arc<Activity>, limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            stream,
            activity,
            limit,
            last_progress: now,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Called when a write must wait: the error once the connection has been inactive for
    /// `limit`, else Pending (with the timer armed to wake this task).
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let due = tokio::time::Instant::from_std(self.last_progress + self.limit);
        if self.deadline.deadline() != due {
            self.deadline.as_mut().reset(due);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no progress reading or writing",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let read = buf.filled().len() - before;
                if read > 0 {
                    this.activity
                        .bytes_read
                        .fetch_add(read as u64, Ordering::Relaxed);
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.progressed();
                Poll::Ready(result)
            }
            Poll::Pending => this.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.stalled(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_shutdown(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.stalled(cx),
        }
    }
}

/// hyper's header timer for one connection. hyper 1.x has a single timer for "waiting for a
/// request's head", started when the connection is ready for the next request, so on its own
/// it cannot tell an idle keep-alive connection from a slow header. This timer tells them
/// apart by the bytes read: before the first request, and once a later request's first byte is
/// in, the head has `header_read_timeout`; while nothing of a later request has arrived, the
/// connection may idle `keep_alive_timeout`.
#[derive(Clone)]
struct HeadTimer {
    activity: Arc<Activity>,
    header_read_timeout: Duration,
    keep_alive_timeout: Duration,
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(Instant::now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let started = deadline
            .checked_sub(self.header_read_timeout)
            .unwrap_or(deadline);
        let read_at_start = self.activity.bytes_read.load(Ordering::Relaxed);
        Box::pin(HeadSleep {
            activity: Arc::clone(&self.activity),
            header_read_timeout: self.header_read_timeout,
            keep_alive_until: (read_at_start > 0).then(|| started + self.keep_alive_timeout),
            read_at_start,
            head_deadline: deadline,
            head_started: read_at_start == 0,
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
        })
    }
}

/// One wait of [`HeadTimer`].
struct HeadSleep {
    activity: Arc<Activity>,
    header_read_timeout: Duration,
    /// Set between requests: how long the connection may idle before the next one starts.
    keep_alive_until: Option<Instant>,
    read_at_start: u64,
    head_deadline: Instant,
    head_started: bool,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.head_started {
            if this.activity.bytes_read.load(Ordering::Relaxed) > this.read_at_start {
                // hyper polls this after every read that leaves the head incomplete, so the
                // head's own deadline starts close to its first byte.
                this.head_started = true;
                this.head_deadline = Instant::now() + this.header_read_timeout;
            } else if let Some(until) = this.keep_alive_until {
                this.head_deadline = until;
            }
        }
        let due = tokio::time::Instant::from_std(this.head_deadline);
        if this.sleep.deadline() != due {
            this.sleep.as_mut().reset(due);
        }
        this.sleep.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for HeadSleep {}

/// Serves `router` on `listener` until `stop` is cancelled, then closes the listener, lets
/// every connection finish its request in flight (idle ones close at once) and returns when all
/// are closed. With `tls`, each connection first completes a TLS handshake (within
/// `header_read_timeout`; plaintext is answered as [`crate::tls::accept`] describes), and a
/// client that negotiates `h2` is served HTTP/2.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let counts = AddressCounts::default();
    let open = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let connections = TaskTracker::new();
    let plaintext_log = OncePerPeer::default();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, mostly: wait instead of spinning on the error.
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = Arc::clone(&open).try_acquire_owned() else {
            tracing::warn!(%peer, "HTTP connections at their global cap; closed");
            continue;
        };
        // A trusted proxy carries many clients' connections: only the clients are capped (by
        // the service, per request).
        let slot = if is_trusted_proxy(&limits.trusted_proxies, peer.ip()) {
            None
        } else {
            match counts.take(peer.ip(), limits.max_connections_per_address) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "connection cap of this address reached; closed");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        crate::peers::PEER_TIMEOUTS.tcp_keepalive_on(&stream);
        let service = router
            .clone()
            .map_request(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let stop = stop.clone();
        let activity = Arc::new(Activity::default());
        let timer = HeadTimer {
            activity: Arc::clone(&activity),
            header_read_timeout: limits.header_read_timeout,
            keep_alive_timeout: limits.keep_alive_timeout,
        };
        let header_read_timeout = limits.header_read_timeout;
        let idle_timeout = limits.idle_timeout;
        let tls = tls.clone();
        let plaintext_log = plaintext_log.clone();
        connections.spawn(async move {
            let _place = place;
            let _slot = slot;
            let Some(acceptor) = tls else {
                let stream = Watched::new(stream, activity, idle_timeout);
                let connection = Connection {
                    peer,
                    timer,
                    header_read_timeout,
                    stop,
                };
                connection.serve(stream, false, service).await;
                return;
            };
            let handshake = async {
                let stream = crate::tls::screen(stream, peer, &plaintext_log).await?;
                let stream = Watched::new(stream, Arc::clone(&activity), idle_timeout);
                acceptor
                    .accept(stream)
                    .await
                    .inspect_err(|err| tracing::debug!(%peer, error = %err, "tls handshake failed"))
                    .ok()
            };
            let Ok(Some(stream)) = tokio::time::timeout(header_read_timeout, handshake).await
            else {
                return;
            };
            // The handshake's bytes are not a request's: the head timer starts afresh.
            activity.bytes_read.store(0, Ordering::Relaxed);
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let connection = Connection {
                peer,
                timer,
                header_read_timeout,
                stop,
            };
            connection.serve(stream, h2, service).await;
        });
    }
    // Nothing more is accepted: new connections are refused at once instead of waiting in the
    // backlog until the drain ends.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One accepted HTTP connection's settings.
struct Connection {
    peer: std::net::SocketAddr,
    timer: HeadTimer,
    header_read_timeout: Duration,
    stop: CancellationToken,
}

impl Connection {
    /// Serves HTTP/1.1 (or HTTP/2 when `h2`) on `io` until the client leaves or `stop` ends
    /// it gracefully.
    async fn serve<I, S>(self, io: I, h2: bool, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: tower::Service<
                http::Request<Incoming>,
                Response = axum::response::Response,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let Self {
            peer,
            timer,
            header_read_timeout,
            stop,
        } = self;
        let result = if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(MAX_HEAD_BUFFER).unwrap_or(u32::MAX));
            let connection =
                builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        } else {
            let mut builder = http1::Builder::new();
            builder
                .timer(timer)
                .header_read_timeout(header_read_timeout)
                .max_header_size(MAX_HEAD_BUFFER)
                .max_buf_size(MAX_HEAD_BUFFER);
            let connection =
                builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        };
        if let Err(err) = result {
            // Timeouts and clients that hang up: routine, not the service's failure.
            tracing::debug!(%peer, error = %err, "http connection ended");
        }
    }
}

/// The connections of a TLS gRPC listener, each handed on once its handshake is done. Every
/// handshake runs in its own task, bounded by `handshake_timeout`, by [`MAX_HANDSHAKES`] in
/// flight and by [`MAX_HANDSHAKES_PER_ADDRESS`] from one address (counted by
/// [`address_key`]; more are closed at once), so a slow or garbage client never holds up
/// another. Each connection, handshaking or served, also counts against `limits`'
/// `max_connections` and (except from a trusted proxy) `max_connections_per_address` until it
/// closes. Ends when `stop` is cancelled or the receiver is dropped.
pub fn tls_incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    limits: HttpLimits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Held<tokio_rustls::server::TlsStream<TcpStream>>>> {
    let (sessions, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        let in_flight = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let open = Arc::new(Semaphore::new(
            limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        let handshakes = AddressCounts::default();
        let connections = AddressCounts::default();
        let plaintext_log = OncePerPeer::default();
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => break,
                () = sessions.closed() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(error = %err, "accepting a gRPC connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(place) = Arc::clone(&open).try_acquire_owned() else {
                tracing::warn!(%peer, "gRPC connections at their global cap; closed");
                continue;
            };
            let slot = if is_trusted_proxy(&limits.trusted_proxies, peer.ip()) {
                None
            } else {
                let Some(slot) = connections.take(peer.ip(), limits.max_connections_per_address)
                else {
                    tracing::debug!(%peer, "gRPC connection cap of this address reached; closed");
                    continue;
                };
                Some(slot)
            };
            let Some(handshaking) = handshakes.take(peer.ip(), MAX_HANDSHAKES_PER_ADDRESS) else {
                tracing::debug!(%peer, "too many TLS handshakes in flight from this address; closed");
                continue;
            };
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                tracing::debug!(%peer, "too many TLS handshakes in flight; closed");
                continue;
            };
            let _ = stream.set_nodelay(true);
            crate::peers::PEER_TIMEOUTS.tcp_keepalive_on(&stream);
            let acceptor = acceptor.clone();
            let plaintext_log = plaintext_log.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move {
                let session =
                    crate::tls::accept(stream, peer, &acceptor, handshake_timeout, &plaintext_log)
                        .await;
                drop(permit);
                drop(handshaking);
                if let Some(session) = session {
                    let held = Held {
                        stream: session,
                        _place: place,
                        _slot: slot,
                    };
                    let _ = sessions.send(Ok(held)).await;
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// TLS handshakes in flight at once on one gRPC listener.
pub const MAX_HANDSHAKES: usize = 256;

/// TLS handshakes in flight at once from one address (IPv6: one /64) on one gRPC listener.
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;

/// A served connection holding its places under the connection caps until it closes.
#[derive(Debug)]
pub struct Held<S> {
    stream: S,
    _place: tokio::sync::OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Held<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Held<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Held<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(address_key(mapped), "127.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn ranges_contain_their_addresses_and_parse_strictly() {
        let range: IpRange = "192.0.2.0/24".parse().unwrap();
        assert!(range.contains("192.0.2.200".parse().unwrap()));
        assert!(range.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!range.contains("192.0.3.1".parse().unwrap()));
        let single: IpRange = "127.0.0.9".parse().unwrap();
        assert!(single.contains("127.0.0.9".parse().unwrap()));
        assert!(!single.contains("127.0.0.8".parse().unwrap()));
        let v6: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("192.0.2.1".parse().unwrap()));
        let everything: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("198.51.100.1".parse().unwrap()));
        assert!("192.0.2.0/33".parse::<IpRange>().is_err());
        assert!("proxy.local".parse::<IpRange>().is_err());
        assert_eq!(range.to_string(), "192.0.2.0/24");
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_slots_are_released() {
        let counts = AddressCounts::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = counts.take(ip, 2).unwrap();
        let _second = counts.take(ip, 2).unwrap();
        assert!(counts.take(ip, 2).is_none());
        assert!(counts.take("127.0.0.2".parse().unwrap(), 2).is_some());
        drop(first);
        assert!(counts.take(ip, 2).is_some());
    }
}
