//! Who is at the other end, by network address, and the limits kept per address: requests at
//! once, login attempts and failed credential checks. They are taken before any shared place
//! or credential check, so one address cannot exhaust what every caller needs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use ghost_runtime::connections::{
    AddressCounts, AddressSlot, IpRange, address_key, is_trusted_proxy,
};

use crate::config::{ClientLimitsConfig, RateLimitConfig};

/// The client address of a request, as resolved by [`Clients::address`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub IpAddr);

/// An `X-Forwarded-For` header from a trusted proxy whose client entry cannot be read.
#[derive(Debug, Clone, Copy)]
pub struct UnreadableForwardedFor;

/// One `X-Forwarded-For` entry: an address, optionally with a port (`[...]` around IPv6).
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let ip = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// Token buckets per client address, at most `cap` addresses remembered.
pub struct AddressBuckets {
    per_second: f64,
    burst: f64,
    cap: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl AddressBuckets {
    /// Buckets refilling at `rate`, remembering at most `cap` addresses.
    pub fn new(rate: &RateLimitConfig, cap: usize) -> Self {
        Self {
            per_second: f64::from(rate.per_minute.max(1)) / 60.0,
            burst: f64::from(rate.burst.max(1)),
            cap: cap.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, bucket: Bucket, now: Instant) -> Bucket {
        let earned = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        Bucket {
            tokens: (bucket.tokens + earned).min(self.burst),
            at: now,
        }
    }

    fn wait(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens) / self.per_second).max(0.0))
    }

    /// Err(wait) while `ip` has less than one token; takes nothing.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = address_key(ip);
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        match buckets.get(&key) {
            Some(bucket) => {
                let bucket = self.refilled(*bucket, Instant::now());
                if bucket.tokens >= 1.0 {
                    Ok(())
                } else {
                    Err(self.wait(bucket.tokens))
                }
            }
            None => Ok(()),
        }
    }

    /// Takes one token from `ip`'s bucket; Err(wait) when it had none (nothing is taken then).
    pub fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = address_key(ip);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let current = match buckets.get(&key) {
            Some(bucket) => self.refilled(*bucket, now),
            None => {
                self.make_room(&mut buckets, now);
                Bucket {
                    tokens: self.burst,
                    at: now,
                }
            }
        };
        if current.tokens < 1.0 {
            buckets.insert(key, current);
            return Err(self.wait(current.tokens));
        }
        buckets.insert(
            key,
            Bucket {
                tokens: current.tokens - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    /// Keeps the map under its cap: full buckets carry nothing worth remembering; if too few
    /// are full, the longest unused go, down to nine tenths of the cap. Room is made in a batch
    /// so that a flood of new addresses costs one scan per tenth of the cap, not one per
    /// address, under the lock every request takes.
    fn make_room(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        if buckets.len() < self.cap {
            return;
        }
        buckets.retain(|_, bucket| self.refilled(*bucket, now).tokens < self.burst);
        let target = self.cap - self.cap.div_ceil(10);
        if buckets.len() <= target {
            return;
        }
        let excess = buckets.len() - target;
        let mut by_age: Vec<(Instant, IpAddr)> = buckets
            .iter()
            .map(|(key, bucket)| (bucket.at, *key))
            .collect();
        by_age.select_nth_unstable_by_key(excess - 1, |(at, _)| *at);
        for (_, key) in by_age.into_iter().take(excess) {
            buckets.remove(&key);
        }
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Everything kept per client address.
pub struct Clients {
    trusted_proxies: Vec<IpRange>,
    max_in_flight: usize,
    in_flight: AddressCounts,
    /// Dashboard login attempts.
    pub logins: AddressBuckets,
    /// Failed credential checks.
    pub failures: AddressBuckets,
}

impl Clients {
    /// The per-address limits from config.
    pub fn new(limits: &ClientLimitsConfig, trusted_proxies: &[IpRange]) -> Self {
        Self {
            trusted_proxies: trusted_proxies.to_vec(),
            max_in_flight: limits.max_in_flight,
            in_flight: AddressCounts::default(),
            logins: AddressBuckets::new(&limits.login, limits.max_tracked_addresses),
            failures: AddressBuckets::new(&limits.auth_failures, limits.max_tracked_addresses),
        }
    }

    /// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
    /// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it
    /// are whatever the client claimed and cannot be believed). Entries may carry a port
    /// (`192.0.2.7:5678`, `[2001:db8::1]:443`). Err when the entry that names the client cannot
    /// be read (`unknown`, empty, garbage): the request is refused rather than charged to the
    /// proxy, whose address every client behind it shares.
    pub fn address(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
    ) -> Result<IpAddr, UnreadableForwardedFor> {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| {
                info.0.ip().to_canonical()
            });
        if !is_trusted_proxy(&self.trusted_proxies, peer) {
            return Ok(peer);
        }
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|value| value.to_str().map_err(|_| UnreadableForwardedFor))
            .collect::<Result<_, _>>()?;
        if values.is_empty() {
            // The proxy's own request (a health check), not one it forwards.
            return Ok(peer);
        }
        let mut leftmost = None;
        for entry in values.iter().rev().flat_map(|value| value.rsplit(',')) {
            let ip = forwarded_address(entry.trim()).ok_or(UnreadableForwardedFor)?;
            if !is_trusted_proxy(&self.trusted_proxies, ip) {
                return Ok(ip);
            }
            leftmost = Some(ip);
        }
        // Every hop is a trusted proxy: the first of them sent the request itself.
        Ok(leftmost.unwrap_or(peer))
    }

    /// A place for one more request from `ip`, or None when it has its share in flight.
    pub fn admit(&self, ip: IpAddr) -> Option<AddressSlot> {
        self.in_flight.take(ip, self.max_in_flight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn a_spent_bucket_refuses_until_it_refills_and_others_are_untouched() {
        let buckets = AddressBuckets::new(
            &RateLimitConfig {
                per_minute: 1,
                burst: 2,
            },
            100,
        );
        assert!(buckets.take(ip(1)).is_ok());
        assert!(buckets.check(ip(1)).is_ok());
        assert!(buckets.take(ip(1)).is_ok());
        let wait = buckets.check(ip(1)).unwrap_err();
        assert!(wait > Duration::from_secs(50), "{wait:?}");
        assert!(buckets.take(ip(1)).is_err());
        assert!(buckets.take(ip(2)).is_ok());
    }

    #[test]
    fn many_addresses_do_not_grow_the_map_past_its_cap() {
        let buckets = AddressBuckets::new(
            &RateLimitConfig {
                per_minute: 1,
                burst: 1,
            },
            50,
        );
        for last in 0..=255 {
            let _ = buckets.take(ip(last));
        }
        assert!(buckets.len() <= 50, "{}", buckets.len());
    }

    fn extensions(peer: &str) -> Extensions {
        let mut extensions = Extensions::new();
        extensions.insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        extensions
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.9, 192.0.2.7".parse().unwrap(),
        );
        let untrusted = Clients::new(&ClientLimitsConfig::default(), &[]);
        assert_eq!(
            untrusted
                .address(&extensions("127.0.0.5:4000"), &headers)
                .unwrap(),
            ip(5)
        );
        let proxies = [
            "127.0.0.0/30".parse().unwrap(),
            "127.0.0.5".parse().unwrap(),
        ];
        let trusted = Clients::new(&ClientLimitsConfig::default(), &proxies);
        assert_eq!(
            trusted
                .address(&extensions("127.0.0.5:4000"), &headers)
                .unwrap(),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted
                .address(&extensions("127.0.0.5:4000"), &HeaderMap::new())
                .unwrap(),
            ip(5)
        );
    }

    fn forwarded(value: &str) -> Result<IpAddr, UnreadableForwardedFor> {
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        let clients = Clients::new(&ClientLimitsConfig::default(), &proxies);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        clients.address(&extensions("10.0.0.1:4000"), &headers)
    }

    #[test]
    fn forwarded_for_is_read_from_the_right_with_ports_and_trusted_hops_skipped() {
        let addr = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(forwarded("192.0.2.7").unwrap(), addr("192.0.2.7"));
        assert_eq!(forwarded("192.0.2.7:5678").unwrap(), addr("192.0.2.7"));
        assert_eq!(forwarded("[2001:db8::1]:443").unwrap(), addr("2001:db8::1"));
        assert_eq!(forwarded("[2001:db8::1]").unwrap(), addr("2001:db8::1"));
        assert_eq!(
            forwarded("unknown, , 198.51.100.1, 192.0.2.7, 10.1.1.1").unwrap(),
            addr("192.0.2.7")
        );
        assert_eq!(forwarded("10.2.2.2, 10.1.1.1").unwrap(), addr("10.2.2.2"));
        // Garbage where the client should be: refused, never charged to the proxy.
        assert!(forwarded("192.0.2.7, unknown").is_err());
        assert!(forwarded("192.0.2.7, ").is_err());
        assert!(forwarded("192.0.2.7, 10.1.1.1, not-an-ip").is_err());
        assert!(forwarded("192.0.2.7:99999").is_err());
    }
}
