//! The TLS gRPC listener's accept loop ([`tls_incoming`]): handshakes apart from each other,
//! under the same connection caps as the HTTP side.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::{AddressCounts, AddressSlot, HttpLimits, is_trusted_proxy};
use crate::tls::OncePerPeer;

/// The connections of a TLS gRPC listener, each handed on once its handshake is done. Every
/// handshake runs in its own task, bounded by `handshake_timeout`, by [`MAX_HANDSHAKES`] in
/// flight and by [`MAX_HANDSHAKES_PER_ADDRESS`] from one address (counted by
/// [`super::address_key`]; more are closed at once), so a slow or garbage client never holds up
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
