//! Deadlines and keep-alives for every gRPC connection between the services, in one place: a
//! peer that accepts a connection and then never answers (a stopped process, a black-holed
//! route, a half-open TCP connection) is noticed within [`PeerTimeouts::silent_peer_bound`]
//! instead of holding a call, a stream or a pooled connection forever.
//!
//! Clients build their [`tonic::transport::Endpoint`] with [`PeerTimeouts::endpoint`]; servers
//! take their HTTP/2 keep-alive from [`PEER_TIMEOUTS`] and set TCP keep-alive on each accepted
//! socket with [`PeerTimeouts::tcp_keepalive_on`].

use std::time::Duration;

/// The bounds every gRPC client and server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerTimeouts {
    /// Longest wait for a TCP connection (and its TLS handshake) to a peer.
    pub connect: Duration,
    /// Deadline of a unary call whose caller sets none (a `grpc-timeout` the caller set, such
    /// as a long poll's, is kept). Streams are bounded by the keep-alive instead.
    pub call: Duration,
    /// An HTTP/2 PING is sent after this long without a frame from the peer, also while no
    /// call is open on the connection.
    pub ping_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed and every call and
    /// stream on it fails with `UNAVAILABLE` (callers then retry or reconnect).
    pub ping_timeout: Duration,
    /// TCP keep-alive: idle time before the first probe, and the time between probes. Catches
    /// a peer whose host vanished even where HTTP/2 PINGs are not sent (an HTTP/1 leg).
    pub tcp_keepalive: Duration,
}

/// The defaults: a silent peer is noticed within 10 s, a hung unary call fails after 10 s.
pub const PEER_TIMEOUTS: PeerTimeouts = PeerTimeouts {
    connect: Duration::from_secs(3),
    call: Duration::from_secs(10),
    ping_interval: Duration::from_secs(5),
    ping_timeout: Duration::from_secs(5),
    tcp_keepalive: Duration::from_secs(10),
};

impl PeerTimeouts {
    /// The longest a connection to a peer that has gone silent stays open: a PING is due
    /// after `ping_interval` of silence and the connection closes `ping_timeout` later.
    #[must_use]
    pub fn silent_peer_bound(&self) -> Duration {
        self.ping_interval + self.ping_timeout
    }

    /// A client endpoint to `url` with these bounds (connect timeout, HTTP/2 keep-alive while
    /// idle, TCP keep-alive, no Nagle delay). TLS is the caller's to add.
    ///
    /// # Errors
    /// An invalid URL, named in the message.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<tonic::transport::Endpoint> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(|err| anyhow::anyhow!("peer URL {url}: {err}"))?;
        Ok(self.apply(endpoint))
    }

    /// Applies these bounds to an endpoint built elsewhere.
    #[must_use]
    pub fn apply(&self, endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
        endpoint
            .connect_timeout(self.connect)
            .http2_keep_alive_interval(self.ping_interval)
            .keep_alive_timeout(self.ping_timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(self.tcp_keepalive))
            .tcp_nodelay(true)
    }

    /// Turns on TCP keep-alive (probes after `tcp_keepalive` idle, then every `tcp_keepalive`)
    /// on an accepted socket. A failure is logged: the HTTP/2 keep-alive still bounds the
    /// connection.
    pub fn tcp_keepalive_on(&self, stream: &tokio::net::TcpStream) {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(self.tcp_keepalive)
            .with_interval(self.tcp_keepalive);
        if let Err(err) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %err, "cannot turn on TCP keep-alive on an accepted connection");
        }
    }
}

/// Sets `timeout` as the deadline of `request` unless its caller set one (`grpc-timeout`).
pub fn default_deadline<T>(request: &mut tonic::Request<T>, timeout: Duration) {
    if request.metadata().get("grpc-timeout").is_none() {
        request.set_timeout(timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_noticed_within_ten_seconds_by_default() {
        assert!(PEER_TIMEOUTS.silent_peer_bound() <= Duration::from_secs(10));
        assert!(PEER_TIMEOUTS.connect < PEER_TIMEOUTS.call);
    }

    #[test]
    fn a_callers_own_deadline_is_kept_and_a_missing_one_is_set() {
        let mut long_poll = tonic::Request::new(());
        long_poll.set_timeout(Duration::from_secs(65));
        default_deadline(&mut long_poll, PEER_TIMEOUTS.call);
        assert_eq!(
            long_poll
                .metadata()
                .get("grpc-timeout")
                .map(|v| v.to_str().ok()),
            Some(Some("65000000u"))
        );
        let mut plain = tonic::Request::new(());
        default_deadline(&mut plain, PEER_TIMEOUTS.call);
        assert_eq!(
            plain
                .metadata()
                .get("grpc-timeout")
                .map(|v| v.to_str().ok()),
            Some(Some("10000000u"))
        );
    }

    #[test]
    fn a_bad_url_is_named() {
        let err = PEER_TIMEOUTS
            .endpoint("http://bad host")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http://bad host"), "{err}");
    }
}
