//! Slack request signing, version `v0`: `X-Slack-Signature: v0=hex(HMAC-SHA256(signing secret,
//! "v0:" + X-Slack-Request-Timestamp + ":" + raw body))`.
//!
//! A request is refused when a header is missing or malformed, when its timestamp is more than
//! 300 s from the injected clock's now (either way), when the signature does not match
//! (compared in constant time), or when the same signature was already accepted within the
//! window (a replay).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ghost_runtime::config::Secret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use ghost_runtime::clock::SharedClock;

/// Largest accepted distance between the request's timestamp and now.
pub const WINDOW_SECS: i64 = 300;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signing secret is configured, so nothing can be verified.
    #[error("slack signing is not configured")]
    NotConfigured,
    /// A signing header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The timestamp is not a Unix time in seconds.
    #[error("x-slack-request-timestamp is not a unix time")]
    BadTimestamp,
    /// The timestamp is outside the window.
    #[error("request timestamp is {age_secs} s away from now (limit {WINDOW_SECS} s)")]
    Stale {
        /// Distance from now, in seconds.
        age_secs: i64,
    },
    /// The signature is not `v0=` and 64 hex digits.
    #[error("x-slack-signature is not v0=<64 hex digits>")]
    BadSignatureFormat,
    /// The signature does not match the body.
    #[error("signature mismatch")]
    Mismatch,
    /// This exact signed request was already accepted.
    #[error("request replayed")]
    Replayed,
}

/// The `v0=<hex>` signature of `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut hex = String::with_capacity(67);
    hex.push_str("v0=");
    for byte in mac_of(secret, timestamp, body) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// HMAC-SHA256 of the v0 basestring; empty only if HMAC refused the key, which it never does
/// (HMAC takes keys of any length), and an empty MAC matches no signature.
fn mac_of(secret: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies Slack requests against one signing secret and a clock; remembers accepted
/// signatures for the window to refuse replays.
pub struct Verifier {
    secret: Secret,
    clock: SharedClock,
    seen: Mutex<HashMap<String, i64>>,
}

impl Verifier {
    /// A verifier for `secret` (empty: every request is refused).
    pub fn new(secret: Secret, clock: SharedClock) -> Self {
        Self {
            secret,
            clock,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks one request: the two header values (if present) and the raw body.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        if self.secret.is_empty() {
            return Err(SignatureError::NotConfigured);
        }
        let timestamp =
            timestamp.ok_or(SignatureError::MissingHeader("x-slack-request-timestamp"))?;
        let signature = signature.ok_or(SignatureError::MissingHeader("x-slack-signature"))?;
        let sent_secs: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let now_secs = self.clock.now_ms().div_euclid(1000);
        let age_secs = now_secs.saturating_sub(sent_secs);
        if age_secs.abs() > WINDOW_SECS {
            return Err(SignatureError::Stale { age_secs });
        }
        let given = signature
            .strip_prefix("v0=")
            .filter(|hex| hex.len() == 64)
            .and_then(decode_hex)
            .ok_or(SignatureError::BadSignatureFormat)?;
        let expected = mac_of(self.secret.expose(), timestamp, body);
        if expected.is_empty() || !bool::from(expected.as_slice().ct_eq(&given)) {
            return Err(SignatureError::Mismatch);
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, at| now_secs.saturating_sub(*at) <= 2 * WINDOW_SECS);
        if seen
            .insert(signature.to_ascii_lowercase(), now_secs)
            .is_some()
        {
            return Err(SignatureError::Replayed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use ghost_runtime::clock::TokioClock;

    /// Slack's documented example ("Verifying requests from Slack").
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TIMESTAMP: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    /// A verifier whose clock reads `secs` now and moves with paused tokio time.
    fn verifier_at(secs: i64) -> Verifier {
        Verifier::new(Secret::new(SECRET), TokioClock::shared(secs * 1000))
    }

    #[tokio::test(start_paused = true)]
    async fn slacks_documented_example_verifies_at_its_time() {
        assert_eq!(sign(SECRET, TIMESTAMP, BODY.as_bytes()), SIGNATURE);
        let verifier = verifier_at(1_531_420_618);
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes()),
            Ok(())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stale_replayed_tampered_and_unsigned_requests_are_refused() {
        // Five minutes and a second before the request was signed: from the future.
        let verifier = verifier_at(1_531_420_618 - 301);
        assert!(matches!(
            verifier.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::Stale { .. })
        ));
        // Ten minutes and a second later: five minutes after it, at the edge of the window.
        tokio::time::advance(std::time::Duration::from_secs(601)).await;
        let tampered = BODY.replace("roadrunner", "coyote");
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some(SIGNATURE), tampered.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        let other_ts = "1531420619";
        assert_eq!(
            verifier.verify(Some(other_ts), Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.verify(None, Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::MissingHeader("x-slack-request-timestamp"))
        );
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), None, BODY.as_bytes()),
            Err(SignatureError::MissingHeader("x-slack-signature"))
        );
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some("v1=abc"), BODY.as_bytes()),
            Err(SignatureError::BadSignatureFormat)
        );
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some("v0="), BODY.as_bytes()),
            Err(SignatureError::BadSignatureFormat)
        );
        assert_eq!(
            verifier.verify(Some("2001"), Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::Stale {
                age_secs: 1_531_420_918 - 2001
            })
        );
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes()),
            Ok(())
        );
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::Replayed)
        );
        // One second more and it is stale.
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert_eq!(
            verifier.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::Stale { age_secs: 301 })
        );
        let unconfigured = Verifier::new(Secret::default(), TokioClock::shared(1_531_420_618_000));
        assert_eq!(
            unconfigured.verify(Some(TIMESTAMP), Some(SIGNATURE), BODY.as_bytes()),
            Err(SignatureError::NotConfigured)
        );
    }
}
