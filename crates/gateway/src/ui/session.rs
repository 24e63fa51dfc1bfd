//! Dashboard sessions: a login with an API key creates a random session id (256 bits) that
//! the browser keeps in an HttpOnly, SameSite=Strict cookie, and a per-session CSRF token.
//! The session is kept by a [`SessionStore`] (the router's database in a running gateway, so
//! every gateway replica sees it and it survives a restart), which holds only the SHA-256 of
//! the id, the SHA-256 of the key that logged in, the CSRF token and the expiry. The key
//! itself is never stored nor put in the cookie. At each request the gateway finds the caller
//! again from its own current credentials, so a revoked or removed key ends its sessions.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Principal;
use crate::error::GatewayError;

/// Name of the session cookie.
pub const COOKIE: &str = "ghost_session";

/// One logged-in browser, as a request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in (as the gateway's credentials say now).
    pub principal: Principal,
    /// Token every state-changing form must carry.
    pub csrf: String,
}

impl Session {
    /// True when `presented` is this session's CSRF token (constant-time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// A session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// SHA-256 of the key that logged in.
    pub credential: [u8; 32],
    /// The CSRF token.
    pub csrf: String,
}

/// Where sessions live (the router, over gRPC: [`crate::upstream::GrpcGatewayState`]).
#[tonic::async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a session for `ttl` unless `max` are live; false when full.
    async fn start(
        &self,
        id_sha256: [u8; 32],
        session: StoredSession,
        ttl: Duration,
        max: usize,
    ) -> Result<bool, GatewayError>;
    /// The live session with this id hash.
    async fn get(&self, id_sha256: [u8; 32]) -> Result<Option<StoredSession>, GatewayError>;
    /// Forgets a session.
    async fn end(&self, id_sha256: [u8; 32]) -> Result<(), GatewayError>;
}

/// The dashboard's sessions: ids and tokens made here, kept by a [`SessionStore`].
pub struct Sessions {
    ttl: Duration,
    max: usize,
    store: Arc<dyn SessionStore>,
}

/// 32 random bytes as hex.
fn random_token() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| GatewayError::Internal(format!("no randomness for a session: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The SHA-256 of a session id; `None` for a value no session id can have (64 lowercase hex
/// digits), so a forged cookie costs no call to the store.
fn digest(id: &str) -> Option<[u8; 32]> {
    let well_formed = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    well_formed.then(|| Sha256::digest(id.as_bytes()).into())
}

impl Sessions {
    /// Sessions lasting `ttl`, at most `max` at once, kept in `store`.
    pub fn new(store: Arc<dyn SessionStore>, ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            store,
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a session for the key whose SHA-256 is `credential`; returns its id (for the
    /// cookie only).
    pub async fn start(&self, credential: [u8; 32]) -> Result<String, GatewayError> {
        let id = random_token()?;
        let key = digest(&id)
            .ok_or_else(|| GatewayError::Internal("a session id is not hex".to_owned()))?;
        let session = StoredSession {
            credential,
            csrf: random_token()?,
        };
        if !self.store.start(key, session, self.ttl, self.max).await? {
            return Err(GatewayError::Overloaded("too many dashboard sessions"));
        }
        Ok(id)
    }

    /// The live session with this id, if any.
    pub async fn get(&self, id: &str) -> Result<Option<StoredSession>, GatewayError> {
        match digest(id) {
            Some(key) => self.store.get(key).await,
            None => Ok(None),
        }
    }

    /// Ends the session with this id.
    pub async fn end(&self, id: &str) -> Result<(), GatewayError> {
        match digest(id) {
            Some(key) => self.store.end(key).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_ids_reach_the_store() {
        assert!(digest(&"a".repeat(64)).is_some());
        assert!(digest(&"A".repeat(64)).is_none());
        assert!(digest("other").is_none());
        assert!(digest(&"a".repeat(65)).is_none());
    }

    #[test]
    fn the_csrf_compare_refuses_empty_and_other_tokens() {
        let session = Session {
            principal: Principal::inbox(&ghost_core::TargetName::parse("MAIN").unwrap()),
            csrf: random_token().unwrap(),
        };
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches("x"));
    }
}
