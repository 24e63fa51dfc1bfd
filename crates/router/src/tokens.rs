//! Per-executor tokens: issued scoped to targets, stored as SHA-256 only, checked in the Work
//! stream's Hello, and revoked with their live streams cut at once.
//!
//! `ghost.router.v1.ExecutorTokenService` (Create/List/Revoke) is the admin face; the gateway
//! calls it for `/v1/executor-tokens` with its caller's name as the actor. Creation,
//! revocation and refusals go to the token audit trail in the store and to the log (target
//! `audit`); the secret itself is never stored or logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ghost_core::TargetName;
use ghost_proto::router::v1::{self as wire, executor_token_service_server::ExecutorTokenService};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

use crate::error::RouterError;
use crate::grpc::refused_alert_key;
use crate::routing::Routing;
use crate::store::{NewToken, Revoked, RouterStore, TokenRow};

/// Every token starts with this, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "gx_";
/// Longest token name.
pub const MAX_NAME: usize = 64;
/// Most targets one token may serve.
pub const MAX_TARGETS: usize = 64;

/// Hex SHA-256 of a secret: what the store keeps and looks tokens up by.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A fresh secret: the prefix and 32 random bytes in hex.
fn new_secret() -> Result<String, RouterError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| RouterError::Internal(format!("no randomness for a token: {err}")))?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

fn invalid(field: &str, message: impl Into<String>) -> RouterError {
    RouterError::InvalidArgument {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Checks a token name: 1–64 of letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), RouterError> {
    if name.is_empty() {
        return Err(invalid("name", "required"));
    }
    if name.len() > MAX_NAME {
        return Err(invalid(
            "name",
            format!("at most {MAX_NAME} characters, got {}", name.len()),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            "name",
            format!("{bad:?} is not allowed: use letters, digits, '.', '_' and '-'"),
        ));
    }
    Ok(())
}

/// Checks the targets of a new token: 1–64 valid target names; duplicates are dropped.
fn check_targets(targets: &[String]) -> Result<Vec<String>, RouterError> {
    if targets.is_empty() {
        return Err(invalid("targets", "a token must serve at least one target"));
    }
    if targets.len() > MAX_TARGETS {
        return Err(invalid(
            "targets",
            format!("at most {MAX_TARGETS} targets, got {}", targets.len()),
        ));
    }
    let mut checked: Vec<String> = Vec::with_capacity(targets.len());
    for (index, raw) in targets.iter().enumerate() {
        let target = TargetName::parse(raw)
            .map_err(|err| invalid(&format!("targets[{index}]"), err.to_string()))?
            .to_string();
        if !checked.contains(&target) {
            checked.push(target);
        }
    }
    Ok(checked)
}

/// Who asks, for the audit trail.
fn actor_of(actor: &str) -> String {
    let actor = actor.trim();
    if actor.is_empty() {
        return "api".to_owned();
    }
    // Control and invisible characters are written out (`\u{0}`): an audit row shows what was
    // sent, and PostgreSQL's text cannot hold a NUL at all.
    let mut out = String::new();
    for ch in actor.chars().take(128) {
        if ch.is_control() || ghost_core::invisible::is_invisible(ch) {
            out.extend(ch.escape_unicode());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The live Work streams of each token, so a revocation can cut them.
pub struct ExecutorTokens {
    routing: Arc<Routing>,
    live: Mutex<HashMap<String, HashMap<u64, CancellationToken>>>,
    next: AtomicU64,
    /// Cancelled when a token is created: anonymous Work streams end then (no new one opens
    /// once any token exists).
    anonymous: CancellationToken,
}

/// A Work stream opened with a token; leaves the registry when dropped.
pub struct LiveStream {
    tokens: Arc<ExecutorTokens>,
    name: String,
    id: u64,
    /// Cancelled when the token is revoked.
    pub cut: CancellationToken,
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        let mut live = self
            .tokens
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(streams) = live.get_mut(&self.name) {
            streams.remove(&self.id);
            if streams.is_empty() {
                live.remove(&self.name);
            }
        }
    }
}

impl ExecutorTokens {
    /// Tokens kept in the store of `routing` (which raises and resolves their alerts).
    pub fn new(routing: Arc<Routing>) -> Self {
        Self {
            routing,
            live: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            anonymous: CancellationToken::new(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn RouterStore> {
        self.routing.store()
    }

    /// Registers a Work stream opened with token `name`.
    pub fn open(self: &Arc<Self>, name: &str) -> LiveStream {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cut = CancellationToken::new();
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .insert(id, cut.clone());
        LiveStream {
            tokens: Arc::clone(self),
            name: name.to_owned(),
            id,
            cut,
        }
    }

    /// The cut signal of anonymous Work streams.
    pub fn anonymous_cut(&self) -> CancellationToken {
        self.anonymous.clone()
    }

    /// Work streams open with token `name` now.
    pub fn live_streams(&self, name: &str) -> u32 {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.get(name).map_or(0, |streams| {
            u32::try_from(streams.len()).unwrap_or(u32::MAX)
        })
    }

    /// Cuts every Work stream open with token `name`; how many.
    fn cut(&self, name: &str) -> u32 {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(streams) = live.get(name) else {
            return 0;
        };
        for cut in streams.values() {
            cut.cancel();
        }
        u32::try_from(streams.len()).unwrap_or(u32::MAX)
    }

    fn wire(&self, token: &TokenRow) -> wire::ExecutorToken {
        wire::ExecutorToken {
            name: token.name.clone(),
            targets: token.targets.clone(),
            created_unix_ms: token.created_ms,
            revoked_unix_ms: token.revoked_ms,
            last_used_unix_ms: token.last_used_ms,
            created_by: token.created_by.clone(),
            live_streams: if token.revoked_ms == 0 {
                self.live_streams(&token.name)
            } else {
                0
            },
        }
    }
}

/// The gRPC face: `ghost.router.v1.ExecutorTokenService`.
#[derive(Clone)]
pub struct TokenService {
    /// The registry.
    pub tokens: Arc<ExecutorTokens>,
}

#[tonic::async_trait]
impl ExecutorTokenService for TokenService {
    #[tracing::instrument(skip_all, fields(name))]
    async fn create_executor_token(
        &self,
        request: Request<wire::CreateExecutorTokenRequest>,
    ) -> Result<Response<wire::CreateExecutorTokenResponse>, tonic::Status> {
        let request = request.into_inner();
        check_name(&request.name)?;
        tracing::Span::current().record("name", request.name.as_str());
        let targets = check_targets(&request.targets)?;
        let actor = actor_of(&request.actor);
        let secret = new_secret()?;
        let created = self
            .tokens
            .store()
            .create_token(NewToken {
                name: request.name.clone(),
                hash: hash_secret(&secret),
                targets: targets.clone(),
                actor: actor.clone(),
            })
            .await
            .map_err(RouterError::from)?
            .ok_or_else(|| RouterError::TokenExists(request.name.clone()))?;
        self.tokens.anonymous.cancel();
        tracing::info!(target: "audit", action = "executor_token.create", name = %created.name, %actor, ?targets, "executor token created");
        Ok(Response::new(wire::CreateExecutorTokenResponse {
            token: Some(self.tokens.wire(&created)),
            secret,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_executor_tokens(
        &self,
        _request: Request<wire::ListExecutorTokensRequest>,
    ) -> Result<Response<wire::ListExecutorTokensResponse>, tonic::Status> {
        let tokens = self
            .tokens
            .store()
            .tokens()
            .await
            .map_err(RouterError::from)?
            .iter()
            .map(|token| self.tokens.wire(token))
            .collect();
        Ok(Response::new(wire::ListExecutorTokensResponse { tokens }))
    }

    #[tracing::instrument(skip_all, fields(name))]
    async fn revoke_executor_token(
        &self,
        request: Request<wire::RevokeExecutorTokenRequest>,
    ) -> Result<Response<wire::RevokeExecutorTokenResponse>, tonic::Status> {
        let request = request.into_inner();
        check_name(&request.name)?;
        tracing::Span::current().record("name", request.name.as_str());
        let actor = actor_of(&request.actor);
        match self
            .tokens
            .store()
            .revoke_token(request.name.clone(), actor.clone())
            .await
            .map_err(RouterError::from)?
        {
            Revoked::Unknown => Err(RouterError::TokenNotFound(request.name).into()),
            Revoked::Already => Err(RouterError::TokenRevoked(request.name).into()),
            Revoked::Now(token) => {
                let streams_cut = self.tokens.cut(&token.name);
                self.tokens
                    .routing
                    .resolve(
                        refused_alert_key(token.id),
                        format!("executor token {} was revoked", token.name),
                    )
                    .await;
                tracing::info!(target: "audit", action = "executor_token.revoke", name = %token.name, %actor, streams_cut, "executor token revoked");
                Ok(Response::new(wire::RevokeExecutorTokenResponse {
                    token: Some(self.tokens.wire(&token)),
                    streams_cut,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_is_trimmed_bounded_and_its_control_characters_written_out() {
        assert_eq!(super::actor_of("  "), "api");
        assert_eq!(super::actor_of(" ops "), "ops");
        assert_eq!(super::actor_of("a\0b\u{202e}c"), "a\\u{0}b\\u{202e}c");
        assert_eq!(super::actor_of(&"x".repeat(500)).len(), 128);
    }

    #[test]
    fn names_are_letters_digits_dots_underscores_and_dashes() {
        assert!(check_name("alice-laptop.v2_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("é").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn secrets_carry_the_prefix_and_32_random_bytes() {
        let one = new_secret().unwrap();
        let two = new_secret().unwrap();
        assert!(one.starts_with(TOKEN_PREFIX));
        assert_eq!(one.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(one, two);
        assert_eq!(hash_secret(&one).len(), 64);
    }
}
