//! [`Subscription`]: one `subscriptions` entry as configured, and [`Prepared`], the same entry
//! checked: its URL (http or https, no userinfo, not aimed at a private, loopback or link-local
//! address unless `allow_private`), its `whsec_` secret, its events and targets.
//!
//! Literal addresses and `localhost` are refused here, when the config loads; host names are
//! resolved at delivery by [`GuardedResolver`], which checks every address the name resolves
//! to and hands only those checked addresses to the connection (no DNS rebinding between the
//! check and the connect).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ghost_core::{Status, TargetName};
use ghost_runtime::config::Secret;
use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize};

/// Most subscriptions one summarizer delivers to.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Longest subscription URL, in bytes.
const MAX_URL_LEN: usize = 2048;
/// Decoded length bounds of a `whsec_` secret (Standard Webhooks: 24 to 64 random bytes).
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
/// The event name matching every terminal status.
pub const ALL_EVENTS: &str = "*";

/// One push subscription (`[[subscriptions]]` in `ghost.toml`, `subscriptions` in the
/// summarizer's config): every terminal outcome matching `events` and `targets` is POSTed to
/// `url` as a Standard Webhooks message signed with `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// A stable name (1 to 64 of `A-Z a-z 0-9 . _ -`): the subscription's identity in the
    /// outbox, in `webhook-id`s and in metric labels, so its URL can change (a rotated token)
    /// without losing its pending messages. Default: the URL itself (labelled by its hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where to POST, `http://` or `https://`, without `user:password@`. Rendered (e.g. by
    /// `--print-config`) as its origin and `/…`: its path or query may carry a token.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: String,
    /// `whsec_<base64 of 24 to 64 random bytes>`, the Standard Webhooks signing secret.
    pub secret: Secret,
    /// The secret being rotated out, same format: while set, each message carries both
    /// signatures (`v1,<new> v1,<old>`), so receivers still on the old secret verify it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<Secret>,
    /// `patch.<terminal status>` names (`patch.succeeded`, `patch.failed`, …) or `"*"`.
    pub events: Vec<String>,
    /// Targets whose outcomes are sent; empty: every target.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Allow private, loopback and link-local addresses (off: refused, against SSRF).
    #[serde(default)]
    pub allow_private: bool,
}

/// `url` as shown: its origin, and `/…` when it has a path, query or fragment (which may carry
/// a token).
pub fn redacted_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(parsed) if parsed.origin().is_tuple() => {
            let origin = parsed.origin().ascii_serialization();
            if parsed.path() == "/" && parsed.query().is_none() && parsed.fragment().is_none() {
                format!("{origin}/")
            } else {
                format!("{origin}/…")
            }
        }
        _ => ghost_runtime::config::REDACTED.to_owned(),
    }
}

fn serialize_redacted_url<S: serde::Serializer>(
    url: &str,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&redacted_url(url))
}

/// A [`Subscription`] that passed every check, ready to match outcomes and sign messages.
#[derive(Clone)]
pub struct Prepared {
    /// Its position in the config, for messages (`subscriptions[N]`).
    pub index: usize,
    /// The subscription's identity in the outbox and in `webhook-id`s: its `name`, or else its
    /// URL, normalised (so rewriting it in another case or spelling keeps its pending
    /// messages).
    pub key: String,
    /// Its metric label: its `name`, or `url-` and a hash of its URL (never the URL, whose
    /// path or query may carry a token).
    pub label: String,
    /// The parsed URL.
    pub url: Url,
    /// The decoded signing key.
    pub secret: Vec<u8>,
    /// The decoded key being rotated out, also signed with.
    pub previous_secret: Option<Vec<u8>>,
    /// The statuses sent, in [`Status::ALL`] order.
    pub statuses: Vec<Status>,
    /// The targets sent; empty: all.
    pub targets: BTreeSet<String>,
    /// Private addresses allowed.
    pub allow_private: bool,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("index", &self.index)
            .field("origin", &self.url.origin().ascii_serialization())
            .field("statuses", &self.statuses)
            .field("targets", &self.targets)
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// True when an attempt of a patch on `target` that ended `status` is sent here.
    pub fn wants(&self, target: &str, status: Status) -> bool {
        self.statuses.contains(&status)
            && (self.targets.is_empty() || self.targets.contains(target))
    }

    /// `subscriptions[N] (scheme://host:port)`: names the subscription in logs and errors
    /// without its path or query, which may carry a token.
    pub fn name(&self) -> String {
        name(self.index, &self.url)
    }
}

/// Longest subscription name.
const MAX_NAME_LEN: usize = 64;

fn check_name(raw: &str) -> Result<(), String> {
    if raw.is_empty() || raw.len() > MAX_NAME_LEN {
        return Err(format!(
            "name must be 1 to {MAX_NAME_LEN} characters, not {}",
            raw.len()
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "name {:?} has {bad:?}; use only A-Z, a-z, 0-9, '.', '_' and '-'",
            shown(raw)
        ));
    }
    Ok(())
}

/// `url-` and 8 hex digits of the SHA-256 of `key`: a stable label that does not show it.
pub fn hashed_label(key: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("url-{hex}")
}

fn name(index: usize, url: &Url) -> String {
    format!(
        "subscriptions[{index}] ({})",
        url.origin().ascii_serialization()
    )
}

/// The event name of a terminal status: `patch.<status>`.
pub fn event_name(status: Status) -> String {
    format!("patch.{}", status.as_str())
}

/// Every event name a subscription may list.
pub fn valid_events() -> Vec<String> {
    std::iter::once(ALL_EVENTS.to_owned())
        .chain(
            Status::ALL
                .into_iter()
                .filter(|status| status.is_terminal())
                .map(event_name),
        )
        .collect()
}

/// At most the first 64 characters of caller text, for an error message.
fn shown(raw: &str) -> String {
    let mut shown: String = raw.chars().take(64).collect();
    if shown.len() < raw.len() {
        shown.push('…');
    }
    shown
}

impl Subscription {
    /// Checks this entry (number `index` in its list); the error names it and the rule broken.
    pub fn prepare(&self, index: usize) -> Result<Prepared, String> {
        let at = format!("subscriptions[{index}]");
        if self.url.len() > MAX_URL_LEN {
            return Err(format!("{at}: url is longer than {MAX_URL_LEN} bytes"));
        }
        let url =
            Url::parse(&self.url).map_err(|err| format!("{at}: url is not a valid URL ({err})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "{at}: url must be http:// or https://, not {}://",
                shown(url.scheme())
            ));
        }
        let named = name(index, &url);
        if let Some(given) = &self.name {
            check_name(given).map_err(|why| format!("{named}: {why}"))?;
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "{named}: url must not carry user:password@; the signature authenticates the sender"
            ));
        }
        if !self.allow_private {
            check_host(&url).map_err(|rule| {
                format!(
                    "{named}: {rule}; webhooks to private, loopback and link-local addresses are \
                     refused unless allow_private = true"
                )
            })?;
        }
        let secret = decode_secret(self.secret.expose()).map_err(|why| {
            format!(
                "{named}: secret must be whsec_ followed by the base64 of {} to {} random bytes \
                 (Standard Webhooks); {why}",
                SECRET_BYTES.start(),
                SECRET_BYTES.end()
            )
        })?;
        let previous_secret = self
            .previous_secret
            .as_ref()
            .map(|previous| {
                decode_secret(previous.expose()).map_err(|why| {
                    format!(
                        "{named}: previous_secret must be whsec_ followed by the base64 of {} to \
                         {} random bytes (Standard Webhooks); {why}",
                        SECRET_BYTES.start(),
                        SECRET_BYTES.end()
                    )
                })
            })
            .transpose()?;
        let statuses = self.statuses().map_err(|why| format!("{named}: {why}"))?;
        let mut targets = BTreeSet::new();
        for target in &self.targets {
            let parsed = TargetName::parse(target).map_err(|err| {
                format!(
                    "{named}: targets: {:?} is not a target name ({err})",
                    shown(target)
                )
            })?;
            targets.insert(parsed.to_string());
        }
        let key = self.name.clone().unwrap_or_else(|| url.as_str().to_owned());
        let label = match &self.name {
            Some(given) => given.clone(),
            None => hashed_label(&key),
        };
        Ok(Prepared {
            index,
            key,
            label,
            url,
            secret,
            previous_secret,
            statuses,
            targets,
            allow_private: self.allow_private,
        })
    }

    fn statuses(&self) -> Result<Vec<Status>, String> {
        let valid = valid_events();
        if self.events.is_empty() {
            return Err(format!(
                "events is empty; list some of: {}",
                valid.join(", ")
            ));
        }
        let mut wanted = Vec::new();
        for event in &self.events {
            if event == ALL_EVENTS {
                wanted.extend(Status::ALL.into_iter().filter(|s| s.is_terminal()));
                continue;
            }
            let status = event
                .strip_prefix("patch.")
                .and_then(|name| name.parse::<Status>().ok())
                .filter(|status| status.is_terminal())
                .ok_or_else(|| {
                    format!(
                        "unknown event {:?}; valid events: {}",
                        shown(event),
                        valid.join(", ")
                    )
                })?;
            wanted.push(status);
        }
        Ok(Status::ALL
            .into_iter()
            .filter(|status| wanted.contains(status))
            .collect())
    }
}

/// Checks a whole list: each entry, their number, and that no name or URL appears twice.
pub fn prepare_all(subscriptions: &[Subscription]) -> Result<Vec<Prepared>, String> {
    if subscriptions.len() > MAX_SUBSCRIPTIONS {
        return Err(format!(
            "subscriptions: {} entries; at most {MAX_SUBSCRIPTIONS}",
            subscriptions.len()
        ));
    }
    let mut prepared: Vec<Prepared> = Vec::with_capacity(subscriptions.len());
    for (index, subscription) in subscriptions.iter().enumerate() {
        let checked = subscription.prepare(index)?;
        if let Some(first) = prepared.iter().find(|p| p.url == checked.url) {
            return Err(format!(
                "{}: the same url as subscriptions[{}]; list its events in one entry",
                checked.name(),
                first.index
            ));
        }
        if let Some(first) = prepared.iter().find(|p| p.key == checked.key) {
            return Err(format!(
                "{}: the same name as subscriptions[{}]; names must differ",
                checked.name(),
                first.index
            ));
        }
        prepared.push(checked);
    }
    Ok(prepared)
}

/// `deserialize_with` for a `subscriptions` list: refuses it, naming the entry and the rule,
/// when any entry fails [`Subscription::prepare`].
pub fn deserialize_checked<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Subscription>, D::Error> {
    let subscriptions = Vec::<Subscription>::deserialize(deserializer)?;
    prepare_all(&subscriptions).map_err(serde::de::Error::custom)?;
    Ok(subscriptions)
}

fn decode_secret(raw: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = raw.strip_prefix("whsec_") else {
        return Err("it does not start with whsec_".to_owned());
    };
    let bytes = STANDARD
        .decode(encoded)
        .map_err(|_| "the rest is not base64".to_owned())?;
    if !SECRET_BYTES.contains(&bytes.len()) {
        return Err(format!("it decodes to {} bytes", bytes.len()));
    }
    Ok(bytes)
}

/// Refuses a URL whose host is a forbidden literal address or `localhost`; the error is the
/// rule broken.
fn check_host(url: &Url) -> Result<(), String> {
    let Some(host) = url.host_str() else {
        return Err("url has no host".to_owned());
    };
    // The URL parser has already normalised literal addresses (`0x7f.1`, `2130706433`, `[::1]`).
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return check_ip(ip);
    }
    let bare = host.trim_end_matches('.').to_ascii_lowercase();
    if bare == "localhost" || bare.ends_with(".localhost") {
        return Err(format!("{} is a loopback name", shown(host)));
    }
    Ok(())
}

/// Refuses a forbidden address; the error names it and its kind.
pub fn check_ip(ip: IpAddr) -> Result<(), String> {
    match forbidden(ip) {
        Some(kind) => Err(format!("{ip} is {kind}")),
        None => Ok(()),
    }
}

/// The kind of address `ip` is when webhooks may not go there without `allow_private`.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address (RFC 1918)")
    } else if ip.is_link_local() {
        Some("a link-local address (169.254.0.0/16, where cloud metadata lives)")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address (0.0.0.0/8)")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (CGNAT) address (100.64.0.0/10)")
    } else if a == 192 && b == 0 && c == 0 {
        Some("an IETF protocol assignment (192.0.0.0/24)")
    } else if a == 198 && b & 0xfe == 18 {
        Some("a benchmarking address (198.18.0.0/15)")
    } else if a >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a unique local address (fc00::/7)")
    } else if first & 0xffc0 == 0xfe80 {
        Some("a link-local address (fe80::/10)")
    } else if first & 0xffc0 == 0xfec0 {
        Some("a site-local address (fec0::/10)")
    } else if ip.segments()[..3] == [0x64, 0xff9b, 1] {
        Some("a local-use NAT64 address (64:ff9b:1::/48)")
    } else {
        embedded_v4(ip).into_iter().flatten().find_map(forbidden_v4)
    }
}

/// The IPv4 addresses inside an IPv6 address: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::/48`)
/// and Teredo (`2001:0:SERVER:…:CLIENT`, the client's address inverted), each reaching that
/// IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let segments = ip.segments();
    let octets = ip.octets();
    let at = |i: usize| Ipv4Addr::new(octets[i], octets[i + 1], octets[i + 2], octets[i + 3]);
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return [Some(at(12)), None];
    }
    if segments[0] == 0x2002 {
        return [Some(at(2)), None];
    }
    if segments[..2] == [0x2001, 0] {
        let client = Ipv4Addr::from(!u32::from(at(12)));
        return [Some(at(4)), Some(client)];
    }
    [ip.to_ipv4(), None]
}

/// Resolves a subscription's host name for the HTTP client and refuses the lookup when any
/// address it yields is forbidden (unless `allow_private`); the connection then goes only to
/// the addresses checked here.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// Skip the address checks.
    pub allow_private: bool,
}

/// A lookup the guard refused (the name resolves to a forbidden address): final, a delivery
/// is not retried.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl GuardedResolver {
    /// The checked addresses of `host`.
    pub async fn lookup(self, host: &str) -> Result<Vec<SocketAddr>, String> {
        self.checked(host).await.map_err(|err| err.to_string())
    }

    /// The checked addresses of `host`; a refusal is a [`Refused`].
    async fn checked(self, host: &str) -> Result<Vec<SocketAddr>, BoxError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|err| format!("cannot resolve {}: {err}", shown(host)))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} resolves to no address", shown(host)).into());
        }
        if !self.allow_private {
            for addr in &addrs {
                check_ip(addr.ip()).map_err(|rule| {
                    Refused(format!(
                        "{} resolves to {rule}; refused unless allow_private = true",
                        shown(host)
                    ))
                })?;
            }
        }
        Ok(addrs)
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = *self;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolver.checked(&host).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests;
