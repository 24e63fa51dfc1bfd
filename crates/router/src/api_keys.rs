//! API keys made at run time, shared by every gateway: `ghost.router.v1.ApiKeyService`.
//!
//! The gateway's `/v1/keys` is a thin adapter over Create/List/Revoke (passing its caller's
//! name as the actor and its config's key names as reserved); every gateway keeps an
//! in-memory copy of the set for authentication through `SnapshotApiKeys`, a long poll that
//! answers at once when the caller's version is behind and otherwise holds until the set
//! changes. So a key revoked through one gateway is refused by every gateway as soon as their
//! held polls are answered. The router generates each secret and stores only its SHA-256;
//! creations, revocations and refusals go to the token audit trail and the `audit` log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ghost_core::TargetName;
use ghost_proto::router::v1::{self as wire, api_key_service_server::ApiKeyService};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response};

use crate::error::RouterError;
use crate::store::{
    ApiKeyRow, KeyCreated, KeyRevoked, KeysImported, MAX_API_KEYS, MAX_TOTAL_TARGETS, NewApiKey,
    Revoker, RouterStore, now_ms,
};
use crate::tokens::{check_name, hash_secret};

/// The prefix of every runtime key's secret, so a leaked one is recognisable.
pub const SECRET_PREFIX: &str = "gr_";
/// Most targets one key may name.
pub const MAX_TARGETS: usize = 64;
/// Longest a snapshot call is held.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// Snapshot calls held at once; past this a call is answered at once (the caller asks again).
pub const MAX_WAITERS: usize = 256;
/// Reserved names passed by a gateway, at most.
const MAX_RESERVED: usize = 10_000;
/// The scopes a key may have.
const SCOPES: [&str; 3] = ["submit", "read", "admin"];

/// The runtime keys: the store and the version every held snapshot call watches.
pub struct ApiKeys {
    store: Arc<dyn RouterStore>,
    version: watch::Sender<u64>,
    waiters: AtomicUsize,
    shutdown: CancellationToken,
}

fn invalid(field: &str, message: impl Into<String>) -> RouterError {
    RouterError::InvalidArgument {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// A fresh secret: the prefix and 32 random bytes, base64url without padding (43 characters).
fn new_secret() -> Result<String, RouterError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|err| RouterError::Internal(format!("no randomness for an api key: {err}")))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// 1 to 3 known scopes, in the order submit, read, admin, each once.
fn check_scopes(scopes: &[String]) -> Result<Vec<String>, RouterError> {
    if scopes.is_empty() {
        return Err(invalid(
            "scopes",
            "give at least one scope: submit, read or admin",
        ));
    }
    for (index, scope) in scopes.iter().enumerate() {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(invalid(
                &format!("scopes[{index}]"),
                format!(
                    "{:?} is not a scope: use submit, read or admin",
                    bounded(scope)
                ),
            ));
        }
    }
    Ok(SCOPES
        .iter()
        .filter(|known| scopes.iter().any(|scope| scope == *known))
        .map(|scope| (*scope).to_owned())
        .collect())
}

/// At most 64 valid target names, each once; empty: every target.
fn check_targets(targets: &[String]) -> Result<Vec<String>, RouterError> {
    let mut checked: Vec<String> = Vec::with_capacity(targets.len().min(MAX_TARGETS));
    for (index, raw) in targets.iter().enumerate() {
        let target = TargetName::parse(raw)
            .map_err(|err| invalid(&format!("targets[{index}]"), err.to_string()))?
            .to_string();
        if !checked.contains(&target) {
            checked.push(target);
        }
    }
    if checked.len() > MAX_TARGETS {
        return Err(invalid(
            "targets",
            format!("at most {MAX_TARGETS} targets, got {}", checked.len()),
        ));
    }
    Ok(checked)
}

/// A name from a request as it may appear in a log or message: at most 64 characters, control
/// and invisible characters escaped.
pub fn bounded(raw: &str) -> String {
    let mut out = String::new();
    for (index, ch) in raw.chars().enumerate() {
        if index == 64 {
            out.push('…');
            break;
        }
        if ch.is_control() || ghost_core::invisible::is_invisible(ch) {
            out.extend(ch.escape_unicode());
        } else {
            out.push(ch);
        }
    }
    out
}

/// Who asks, for the audit trail.
fn actor_of(actor: &str) -> String {
    let actor = actor.trim();
    if actor.is_empty() {
        "api".to_owned()
    } else {
        bounded(actor)
    }
}

fn wire_key(key: &ApiKeyRow) -> wire::ApiKey {
    wire::ApiKey {
        name: key.name.clone(),
        scopes: key.scopes.clone(),
        targets: key.targets.clone(),
        created_unix_ms: key.created_ms,
        created_by: key.created_by.clone(),
        imported: key.imported,
    }
}

fn is_hex64(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ApiKeys {
    /// The keys in `store`, watched from `version` (read at start).
    pub async fn open(
        store: Arc<dyn RouterStore>,
        shutdown: CancellationToken,
    ) -> Result<Self, RouterError> {
        let (_, version) = store.api_keys().await?;
        Ok(Self {
            store,
            version: watch::Sender::new(version),
            waiters: AtomicUsize::new(0),
            shutdown,
        })
    }

    /// Wakes held snapshot calls for `version`; changes finishing out of order never lower
    /// the version watched below the database's.
    fn changed(&self, version: u64) {
        self.version.send_if_modified(|current| {
            if version > *current {
                *current = version;
                true
            } else {
                false
            }
        });
    }

    async fn snapshot(&self) -> Result<wire::SnapshotApiKeysResponse, RouterError> {
        let (keys, version) = self.store.api_keys().await?;
        Ok(wire::SnapshotApiKeysResponse {
            version,
            keys: keys
                .iter()
                .map(|key| wire::StoredApiKey {
                    key: Some(wire_key(key)),
                    sha256: key.sha256.clone(),
                })
                .collect(),
        })
    }
}

/// Leaves the count of held snapshot calls when dropped.
struct Held<'a>(&'a AtomicUsize);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gRPC face: `ghost.router.v1.ApiKeyService`.
#[derive(Clone)]
pub struct ApiKeyGrpc {
    /// The keys.
    pub keys: Arc<ApiKeys>,
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyGrpc {
    #[tracing::instrument(skip_all, fields(name))]
    async fn create_api_key(
        &self,
        request: Request<wire::CreateApiKeyRequest>,
    ) -> Result<Response<wire::CreateApiKeyResponse>, tonic::Status> {
        let request = request.into_inner();
        check_name(&request.name)?;
        tracing::Span::current().record("name", request.name.as_str());
        let scopes = check_scopes(&request.scopes)?;
        let targets = check_targets(&request.targets)?;
        let actor = actor_of(&request.actor);
        if request.reserved_names.len() > MAX_RESERVED {
            return Err(invalid("reserved_names", format!("at most {MAX_RESERVED}")).into());
        }
        if request.reserved_names.contains(&request.name) {
            // Audited like an acceptance, in the store and the log.
            self.keys
                .store
                .audit_token(
                    "api_key.refused".to_owned(),
                    0,
                    request.name.clone(),
                    actor.clone(),
                    "create: a key from the gateway's config".to_owned(),
                )
                .await
                .map_err(RouterError::from)?;
            tracing::warn!(target: "audit", action = "api_key.refused", name = %request.name, %actor, "api key refused: the name is a config key's");
            return Err(RouterError::ApiKeyExists(request.name).into());
        }
        let secret = new_secret()?;
        let outcome = self
            .keys
            .store
            .create_api_key(NewApiKey {
                name: request.name.clone(),
                sha256: hash_secret(&secret),
                scopes,
                targets,
                created_ms: now_ms(),
                created_by: actor.clone(),
            })
            .await
            .map_err(RouterError::from)?;
        match outcome {
            KeyCreated::NameTaken => Err(RouterError::ApiKeyExists(request.name).into()),
            KeyCreated::Full => Err(RouterError::ResourceExhausted(format!(
                "{MAX_API_KEYS} runtime keys exist already, the most kept; delete one first"
            ))
            .into()),
            KeyCreated::TooManyTargets(total) => Err(RouterError::ResourceExhausted(format!(
                "this key would make {total} targets across all runtime keys; at most \
                 {MAX_TOTAL_TARGETS} are kept (a key for every target names none): delete a key \
                 or name fewer targets"
            ))
            .into()),
            KeyCreated::Created(key, version) => {
                self.keys.changed(version);
                tracing::info!(target: "audit", action = "api_key.create", name = %key.name, %actor, scopes = ?key.scopes, targets = ?key.targets, "api key created");
                Ok(Response::new(wire::CreateApiKeyResponse {
                    key: Some(wire_key(&key)),
                    secret,
                    version,
                }))
            }
        }
    }

    #[tracing::instrument(skip_all)]
    async fn list_api_keys(
        &self,
        _request: Request<wire::ListApiKeysRequest>,
    ) -> Result<Response<wire::ListApiKeysResponse>, tonic::Status> {
        let (keys, _) = self
            .keys
            .store
            .api_keys()
            .await
            .map_err(RouterError::from)?;
        Ok(Response::new(wire::ListApiKeysResponse {
            keys: keys.iter().map(wire_key).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_api_key(
        &self,
        request: Request<wire::RevokeApiKeyRequest>,
    ) -> Result<Response<wire::RevokeApiKeyResponse>, tonic::Status> {
        let request = request.into_inner();
        let actor = actor_of(&request.actor);
        let shown = bounded(&request.name);
        if request.reserved_names.contains(&request.name) {
            // Audited like an acceptance, in the store and the log.
            self.keys
                .store
                .audit_token(
                    "api_key.refused".to_owned(),
                    0,
                    shown.clone(),
                    actor.clone(),
                    "revoke: a key from the gateway's config".to_owned(),
                )
                .await
                .map_err(RouterError::from)?;
            tracing::warn!(target: "audit", action = "api_key.refused", name = %shown, %actor, "api key revocation refused: a key from the gateway's config");
            return Err(RouterError::ApiKeyReserved(shown).into());
        }
        if let Err(err) = check_name(&request.name) {
            self.keys
                .store
                .audit_token(
                    "api_key.refused".to_owned(),
                    0,
                    shown.clone(),
                    actor.clone(),
                    "revoke: not a key name".to_owned(),
                )
                .await
                .map_err(RouterError::from)?;
            tracing::warn!(target: "audit", action = "api_key.refused", name = %shown, %actor, "api key revocation refused: not a key name");
            return Err(err.into());
        }
        let revoker = Revoker {
            actor: actor.clone(),
            targets: request.actor_limited.then_some(request.actor_targets),
        };
        let outcome = self
            .keys
            .store
            .revoke_api_key(request.name.clone(), revoker)
            .await
            .map_err(RouterError::from)?;
        match outcome {
            KeyRevoked::Unknown => {
                tracing::warn!(target: "audit", action = "api_key.refused", name = %shown, %actor, "api key revocation refused: no such key");
                Err(RouterError::ApiKeyNotFound(shown).into())
            }
            KeyRevoked::Wider(key) => {
                tracing::warn!(target: "audit", action = "api_key.refused", name = %key.name, %actor, "api key revocation refused: the key has targets the caller may not touch");
                Err(RouterError::PermissionDenied(format!(
                    "credential {actor:?} may not touch every target of key {:?}",
                    key.name
                ))
                .into())
            }
            KeyRevoked::Now(key, version) => {
                self.keys.changed(version);
                tracing::info!(target: "audit", action = "api_key.revoke", name = %key.name, %actor, "api key revoked");
                Ok(Response::new(wire::RevokeApiKeyResponse {
                    key: Some(wire_key(&key)),
                    version,
                }))
            }
        }
    }

    async fn snapshot_api_keys(
        &self,
        request: Request<wire::SnapshotApiKeysRequest>,
    ) -> Result<Response<wire::SnapshotApiKeysResponse>, tonic::Status> {
        let request = request.into_inner();
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_WAIT);
        let mut watching = self.keys.version.subscribe();
        let current = *watching.borrow_and_update();
        if current == request.since_version && !wait.is_zero() {
            let held = self.keys.waiters.fetch_add(1, Ordering::Relaxed);
            let _held = Held(&self.keys.waiters);
            if held < MAX_WAITERS {
                tokio::select! {
                    _ = watching.changed() => {}
                    () = tokio::time::sleep(wait) => {}
                    () = self.keys.shutdown.cancelled() => {}
                }
            }
        }
        Ok(Response::new(self.keys.snapshot().await?))
    }

    #[tracing::instrument(skip_all)]
    async fn import_api_keys(
        &self,
        request: Request<wire::ImportApiKeysRequest>,
    ) -> Result<Response<wire::ImportApiKeysResponse>, tonic::Status> {
        let request = request.into_inner();
        let actor = actor_of(&request.actor);
        if request.keys.len() > MAX_API_KEYS {
            return Err(invalid(
                "keys",
                format!("at most {MAX_API_KEYS}, got {}", request.keys.len()),
            )
            .into());
        }
        let mut keys = Vec::with_capacity(request.keys.len());
        for (index, stored) in request.keys.iter().enumerate() {
            let field = |name: &str| format!("keys[{index}].{name}");
            let key = stored
                .key
                .as_ref()
                .ok_or_else(|| invalid(&field("key"), "required"))?;
            check_name(&key.name).map_err(|err| invalid(&field("name"), err.to_string()))?;
            let sha256 = stored.sha256.to_ascii_lowercase();
            if !is_hex64(&sha256) {
                return Err(invalid(&field("sha256"), "must be 64 hex digits").into());
            }
            keys.push(NewApiKey {
                name: key.name.clone(),
                sha256,
                scopes: check_scopes(&key.scopes)
                    .map_err(|err| invalid(&field("scopes"), err.to_string()))?,
                targets: check_targets(&key.targets)
                    .map_err(|err| invalid(&field("targets"), err.to_string()))?,
                created_ms: key.created_unix_ms,
                created_by: actor_of(&key.created_by),
            });
        }
        let outcome = self
            .keys
            .store
            .import_api_keys(keys, actor.clone())
            .await
            .map_err(RouterError::from)?;
        match outcome {
            KeysImported::Conflict(names) => Err(RouterError::ApiKeyExists(format!(
                "{} (held by keys with another secret)",
                names.join(", ")
            ))
            .into()),
            KeysImported::Full(total) => Err(RouterError::ResourceExhausted(format!(
                "importing would make {total} runtime keys; at most {MAX_API_KEYS} are kept"
            ))
            .into()),
            KeysImported::Revoked(names) => {
                let names: Vec<String> = names.iter().map(|name| bounded(name)).collect();
                tracing::warn!(target: "audit", action = "api_key.refused", %actor, names = ?names, "api key import refused: revoked keys");
                Err(RouterError::ApiKeyRevoked(names.join(", ")).into())
            }
            KeysImported::TooManyTargets(total) => Err(RouterError::ResourceExhausted(format!(
                "importing would make {total} targets across all runtime keys; at most \
                 {MAX_TOTAL_TARGETS} are kept"
            ))
            .into()),
            KeysImported::Done(imported, present, version) => {
                self.keys.changed(version);
                tracing::info!(target: "audit", action = "api_key.import", %actor, imported, present, "api keys imported");
                Ok(Response::new(wire::ImportApiKeysResponse {
                    imported,
                    present,
                    version,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_known_ordered_and_once() {
        let scopes =
            |raw: &[&str]| check_scopes(&raw.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            scopes(&["read", "submit", "read"]).unwrap(),
            ["submit", "read"]
        );
        assert!(scopes(&[]).is_err());
        assert!(scopes(&["root"]).is_err());
    }

    #[test]
    fn names_in_logs_are_bounded_and_escaped() {
        assert_eq!(bounded("ok-name"), "ok-name");
        assert_eq!(bounded("a\nb"), "a\\u{a}b");
        assert_eq!(bounded("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(bounded(&"x".repeat(500)).chars().count(), 65);
    }

    #[test]
    fn secrets_carry_the_prefix_and_43_characters() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX));
        assert_eq!(secret.len(), SECRET_PREFIX.len() + 43);
    }
}
