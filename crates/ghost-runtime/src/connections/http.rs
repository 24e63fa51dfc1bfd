//! The HTTP accept loop ([`serve_http`]) and what bounds one HTTP connection: the header read
//! timer, the inactivity watch on its socket, the head buffer cap.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{AddressCounts, AddressSlot, HttpLimits, is_trusted_proxy};
use crate::tls::OncePerPeer;

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
    let caps = Caps::new(&limits);
    let connections = TaskTracker::new();
    let served = Served {
        router,
        limits,
        tls,
        plaintext_log: OncePerPeer::default(),
        stop,
    };
    while let Some((stream, peer)) = accept(&listener, &served.stop).await {
        let Some(held) = caps.admit(peer, &served.limits) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        crate::peers::PEER_TIMEOUTS.tcp_keepalive_on(&stream);
        connections.spawn(served.clone().connection(stream, peer, held));
    }
    // Nothing more is accepted: new connections are refused at once instead of waiting in the
    // backlog until the drain ends.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The next connection on `listener`; `None` once `stop` is cancelled.
async fn accept(
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(err) => {
                    // Out of file descriptors, mostly: wait instead of spinning on the error.
                    tracing::warn!(error = %err, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The caps of one HTTP listener: its connections in all, and per client address.
struct Caps {
    open: Arc<Semaphore>,
    counts: AddressCounts,
}

/// A connection's places under [`Caps`], given back when it closes.
type Places = (OwnedSemaphorePermit, Option<AddressSlot>);

impl Caps {
    fn new(limits: &HttpLimits) -> Self {
        Self {
            open: Arc::new(Semaphore::new(
                limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            counts: AddressCounts::default(),
        }
    }

    /// Places for a connection from `peer`, or `None` (it is to be closed) when a cap is
    /// reached.
    fn admit(&self, peer: SocketAddr, limits: &HttpLimits) -> Option<Places> {
        let Ok(place) = Arc::clone(&self.open).try_acquire_owned() else {
            tracing::warn!(%peer, "HTTP connections at their global cap; closed");
            return None;
        };
        // A trusted proxy carries many clients' connections: only the clients are capped (by
        // the service, per request).
        if is_trusted_proxy(&limits.trusted_proxies, peer.ip()) {
            return Some((place, None));
        }
        match self
            .counts
            .take(peer.ip(), limits.max_connections_per_address)
        {
            Some(slot) => Some((place, Some(slot))),
            None => {
                tracing::debug!(%peer, "connection cap of this address reached; closed");
                None
            }
        }
    }
}

/// What every connection of one HTTP listener is served with.
#[derive(Clone)]
struct Served {
    router: axum::Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    /// Plaintext sent to the TLS port is logged once per peer.
    plaintext_log: OncePerPeer,
    stop: CancellationToken,
}

impl Served {
    /// Serves one accepted connection from `peer`, after its TLS handshake when the listener
    /// serves TLS. `places` are held until it closes.
    async fn connection(self, stream: TcpStream, peer: SocketAddr, places: Places) {
        let _places = places;
        let service = self
            .router
            .map_request(move |mut request: http::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let activity = Arc::new(Activity::default());
        let connection = Connection {
            peer,
            timer: HeadTimer {
                activity: Arc::clone(&activity),
                header_read_timeout: self.limits.header_read_timeout,
                keep_alive_timeout: self.limits.keep_alive_timeout,
            },
            header_read_timeout: self.limits.header_read_timeout,
            stop: self.stop,
        };
        let idle_timeout = self.limits.idle_timeout;
        let Some(acceptor) = self.tls else {
            let stream = Watched::new(stream, activity, idle_timeout);
            connection.serve(stream, false, service).await;
            return;
        };
        let handshake = async {
            let stream = crate::tls::screen(stream, peer, &self.plaintext_log).await?;
            let stream = Watched::new(stream, Arc::clone(&activity), idle_timeout);
            acceptor
                .accept(stream)
                .await
                .inspect_err(|err| tracing::debug!(%peer, error = %err, "tls handshake failed"))
                .ok()
        };
        let Ok(Some(stream)) =
            tokio::time::timeout(connection.header_read_timeout, handshake).await
        else {
            return;
        };
        // The handshake's bytes are not a request's: the head timer starts afresh.
        activity.bytes_read.store(0, Ordering::Relaxed);
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        connection.serve(stream, h2, service).await;
    }
}

/// One accepted HTTP connection's settings.
struct Connection {
    peer: SocketAddr,
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
