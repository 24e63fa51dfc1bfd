//! Dashboard sessions: a login with an API key creates a random session id (256 bits) that
//! the browser keeps in an HttpOnly, SameSite=Strict cookie; the gateway maps it to the
//! principal, an expiry and a per-session CSRF token. The key itself is never stored in the
//! cookie nor kept after the login. Sessions live in memory: a restart logs everyone out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::Principal;
use crate::error::GatewayError;

/// Name of the session cookie.
pub const COOKIE: &str = "ghost_session";

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who logged in.
    pub principal: Principal,
    /// Token every state-changing form must carry.
    pub csrf: String,
    /// When the session ends.
    pub expires: Instant,
}

impl Session {
    /// True when `presented` is this session's CSRF token (constant-time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// Every live session, keyed by the SHA-256 of its id.
pub struct Sessions {
    ttl: Duration,
    max: usize,
    live: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes as hex.
fn random_token() -> Result<String, GatewayError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| GatewayError::Internal(format!("no randomness for a session: {err}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Sessions lasting `ttl`, at most `max` at once.
    pub fn new(ttl: Duration, max: usize) -> Self {
        Self {
            ttl,
            max: max.max(1),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a session for `principal`; returns its id (for the cookie only).
    pub fn start(&self, principal: Principal, now: Instant) -> Result<String, GatewayError> {
        let id = random_token()?;
        let session = Session {
            principal,
            csrf: random_token()?,
            expires: now + self.ttl,
        };
        let mut live = self.lock();
        live.retain(|_, session| session.expires > now);
        if live.len() >= self.max {
            return Err(GatewayError::Overloaded("too many dashboard sessions"));
        }
        live.insert(digest(&id), session);
        Ok(id)
    }

    /// The live session with this id, if any.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let key = digest(id);
        let mut live = self.lock();
        match live.get(&key) {
            Some(session) if session.expires > now => Some(session.clone()),
            Some(_) => {
                live.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session with this id.
    pub fn end(&self, id: &str) {
        self.lock().remove(&digest(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Principal;
    use ghost_core::TargetName;

    fn someone() -> Principal {
        Principal::inbox(&TargetName::parse("MAIN").unwrap())
    }

    #[test]
    fn sessions_expire_and_end() {
        let sessions = Sessions::new(Duration::from_secs(60), 10);
        let now = Instant::now();
        let id = sessions.start(someone(), now).unwrap();
        assert_eq!(id.len(), 64);
        let session = sessions.get(&id, now).expect("live");
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches("x"));
        assert!(sessions.get("other", now).is_none());
        assert!(sessions.get(&id, now + Duration::from_secs(61)).is_none());
        let id = sessions.start(someone(), now).unwrap();
        sessions.end(&id);
        assert!(sessions.get(&id, now).is_none());
    }

    #[test]
    fn the_session_count_is_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        sessions.start(someone(), now).unwrap();
        sessions.start(someone(), now).unwrap();
        assert!(sessions.start(someone(), now).is_err());
        // Expired ones make room.
        assert!(
            sessions
                .start(someone(), now + Duration::from_secs(61))
                .is_ok()
        );
    }
}
