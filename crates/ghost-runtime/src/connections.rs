//! The HTTP side's accept loop: HTTP/1.1 connections with a header read timeout, a longer idle
//! keep-alive timeout between requests, an inactivity timeout while reading or writing (a client
//! that never reads its answer is closed), a bounded header buffer, a global connection cap, and
//! a cap on connections per client address, so one client cannot hold every socket with slow or
//! idle connections. Trusted reverse proxies (which carry many clients' connections) are exempt
//! from the per-address cap. Each request carries the peer as axum's `ConnectInfo<SocketAddr>`.
//!
//! Here: the caps and what they count ([`IpRange`], [`HttpLimits`], [`AddressCounts`]). The
//! HTTP accept loop is [`serve_http`]; the TLS gRPC listener's is [`tls_incoming`].
mod grpc;
mod http;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::grpc::{Held, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS, tls_incoming};
pub use self::http::serve_http;
use crate::config::ServerConfig;

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
