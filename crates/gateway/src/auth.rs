//! Who is calling: API keys (SHA-256 hashes, scopes, target allowlists) and Standard Webhooks
//! signatures (HMAC-SHA256, `whsec_` secrets, rotation, ±tolerance; replayed ids are handled
//! by [`crate::deliveries`] once a delivery is committed).
//! Every secret comparison is constant-time.

use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ghost_core::TargetName;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api_keys::snapshot::KeyStore;
use crate::config::GatewayConfig;
use crate::error::GatewayError;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Submit patches (`POST /v1/patches`, `/v1/messages`, MCP `submit_patch`).
    Submit,
    /// Read patches, events, targets.
    Read,
    /// Cancel and retry; implies the others.
    Admin,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Name from config (rate-limit key and log field).
    pub name: String,
    scopes: Vec<Scope>,
    targets: Option<Vec<TargetName>>,
    /// The SHA-256 of a runtime key (`/v1/keys`), so a session it opened ends when it is
    /// revoked; `None` for every other credential.
    runtime_key: Option<[u8; 32]>,
    /// True when the request proved itself with a Standard Webhooks signature (not an API key).
    signed_webhook: bool,
}

impl Principal {
    /// A caller with these scopes and, when given, only these targets.
    pub(crate) fn new(name: String, scopes: Vec<Scope>, targets: Option<Vec<TargetName>>) -> Self {
        Self {
            name,
            scopes,
            targets,
            runtime_key: None,
            signed_webhook: false,
        }
    }

    /// The same caller, holding the runtime key whose SHA-256 is `hash`.
    pub(crate) fn with_runtime_key(mut self, hash: [u8; 32]) -> Self {
        self.runtime_key = Some(hash);
        self
    }

    /// True when the request proved itself with a webhook signature rather than an API key.
    pub(crate) fn is_signed_webhook(&self) -> bool {
        self.signed_webhook
    }

    /// The SHA-256 of the runtime key it holds; `None` for every other credential.
    pub(crate) fn runtime_key(&self) -> Option<[u8; 32]> {
        self.runtime_key
    }

    /// What it may do.
    pub(crate) fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// The targets it may touch; `None`: all.
    pub(crate) fn targets(&self) -> Option<&[TargetName]> {
        self.targets.as_deref()
    }

    /// The inbox of one target: may submit to that target only.
    pub fn inbox(target: &TargetName) -> Self {
        Self {
            name: format!("inbox:{target}"),
            scopes: vec![Scope::Submit],
            targets: Some(vec![target.clone()]),
            runtime_key: None,
            signed_webhook: false,
        }
    }

    /// Refuses with 403 unless the caller holds `scope` (admin holds every scope).
    pub fn require(&self, scope: Scope) -> Result<(), GatewayError> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            return Ok(());
        }
        Err(GatewayError::Forbidden(format!(
            "credential {:?} lacks the {scope:?} scope",
            self.name
        )))
    }

    /// Refuses with 403 unless the caller may touch `target`.
    pub fn allow_target(&self, target: &str) -> Result<(), GatewayError> {
        match &self.targets {
            Some(allowed) if !allowed.iter().any(|t| t.as_str() == target) => {
                Err(GatewayError::Forbidden(format!(
                    "credential {:?} may not touch target {target}",
                    self.name
                )))
            }
            _ => Ok(()),
        }
    }

    /// True when the caller may touch only some targets.
    pub fn is_limited(&self) -> bool {
        self.targets.is_some()
    }

    /// True when the caller may touch `target`.
    pub fn may_touch(&self, target: &str) -> bool {
        self.allow_target(target).is_ok()
    }
}

struct ApiKey {
    hash: [u8; 32],
    principal: Principal,
}

struct Webhook {
    secrets: Vec<Vec<u8>>,
    principal: Principal,
}

/// Every configured credential.
pub struct Credentials {
    keys: Vec<ApiKey>,
    /// Keys created at runtime (`/v1/keys`, kept by the router), checked after the configured
    /// ones.
    stored: std::sync::Arc<KeyStore>,
    webhooks: Vec<Webhook>,
    tolerance: Duration,
}

fn targets(raw: &[String], owner: &str) -> anyhow::Result<Option<Vec<TargetName>>> {
    if raw.is_empty() {
        return Ok(None);
    }
    let parsed = raw
        .iter()
        .map(|t| TargetName::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow::anyhow!("credential {owner}: {err}"))?;
    Ok(Some(parsed))
}

pub(crate) fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Credentials {
    /// Reads the credentials from config; refuses malformed hashes and secrets.
    pub fn from_config(config: &GatewayConfig) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        if !config.api_key.is_empty() {
            if config.api_key.expose().len() < 16 {
                anyhow::bail!("gateway api_key must be at least 16 characters");
            }
            keys.push(ApiKey {
                hash: Sha256::digest(config.api_key.expose().as_bytes()).into(),
                principal: Principal {
                    name: "api_key".to_owned(),
                    scopes: vec![Scope::Submit, Scope::Read, Scope::Admin],
                    targets: None,
                    runtime_key: None,
                    signed_webhook: false,
                },
            });
        }
        for key in &config.api_keys {
            let Some(hash) = decode_hex32(&key.sha256) else {
                anyhow::bail!("api key {}: sha256 must be 64 hex digits", key.name);
            };
            keys.push(ApiKey {
                hash,
                principal: Principal {
                    name: key.name.clone(),
                    scopes: key.scopes.clone(),
                    targets: targets(&key.targets, &key.name)?,
                    runtime_key: None,
                    signed_webhook: false,
                },
            });
        }
        let mut webhooks = Vec::new();
        for hook in &config.webhooks {
            let mut secrets = Vec::new();
            for secret in &hook.secrets {
                let encoded = secret
                    .expose()
                    .strip_prefix("whsec_")
                    .unwrap_or(secret.expose());
                let Ok(bytes) = STANDARD.decode(encoded) else {
                    anyhow::bail!("webhook {}: a secret is not whsec_<base64>", hook.name);
                };
                secrets.push(bytes);
            }
            if secrets.is_empty() {
                anyhow::bail!("webhook {}: at least one secret is required", hook.name);
            }
            webhooks.push(Webhook {
                secrets,
                principal: Principal {
                    name: hook.name.clone(),
                    scopes: hook.scopes.clone(),
                    targets: targets(&hook.targets, &hook.name)?,
                    runtime_key: None,
                    signed_webhook: true,
                },
            });
        }
        if keys.is_empty() && webhooks.is_empty() {
            anyhow::bail!(
                "the gateway needs a credential: set api_key (GHOST_GATEWAY__API_KEY, 16+ characters), api_keys or webhooks"
            );
        }
        let reserved = keys
            .iter()
            .map(|key| &key.principal.name)
            .chain(webhooks.iter().map(|hook| &hook.principal.name))
            .cloned()
            .collect();
        Ok(Self {
            keys,
            stored: std::sync::Arc::new(KeyStore::new(reserved)),
            webhooks,
            tolerance: config.webhook_tolerance,
        })
    }

    /// The caller holding the key whose SHA-256 is `digest` (a dashboard session's), as the
    /// credentials are now: `None` once the key is revoked or gone from config; 503 while
    /// the runtime keys are not learnt from the router yet and no configured key matches.
    pub(crate) fn by_hash(&self, digest: &[u8; 32]) -> Result<Option<Principal>, GatewayError> {
        let mut found = None;
        for candidate in &self.keys {
            if bool::from(digest.ct_eq(&candidate.hash)) {
                found = Some(candidate.principal.clone());
            }
        }
        let stored = self.stored.find(digest);
        match found.or(stored) {
            Some(principal) => Ok(Some(principal)),
            None if !self.stored.ever_loaded() => Err(GatewayError::KeysNotLearnt),
            None => Ok(None),
        }
    }

    /// The keys created at runtime.
    pub(crate) fn store(&self) -> &KeyStore {
        &self.stored
    }

    /// The keys created at runtime, shared (long polls watch them for revocations).
    pub(crate) fn shared_store(&self) -> std::sync::Arc<KeyStore> {
        std::sync::Arc::clone(&self.stored)
    }

    /// The names config gives (keys and webhook senders): a runtime key may not take one.
    pub(crate) fn config_names(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| &key.principal.name)
            .chain(self.webhooks.iter().map(|hook| &hook.principal.name))
            .cloned()
            .collect()
    }

    /// The API keys from config, as `GET /v1/keys` lists them.
    pub(crate) fn config_views(&self) -> Vec<crate::api_keys::KeyView> {
        self.keys
            .iter()
            .map(|key| crate::api_keys::config_view(&key.principal))
            .collect()
    }

    /// True when the request carries Standard Webhooks headers.
    pub fn is_webhook(headers: &HeaderMap) -> bool {
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .any(|name| headers.contains_key(*name))
    }

    /// True when the request presents an API key (a wrong one counts as a failed check; none
    /// at all is only a 401).
    pub fn presents_key(headers: &HeaderMap) -> bool {
        presented_key(headers).is_some()
    }

    /// The caller behind an API key, or 401.
    pub fn api_key(&self, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        let key = presented_key(headers).ok_or(GatewayError::Unauthorized)?;
        self.key(key)
    }

    /// The caller holding `key` (e.g. typed into the dashboard's login form), or 401.
    pub fn key(&self, key: &str) -> Result<Principal, GatewayError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare against every key so timing does not reveal which one (or whether any) matched.
        let mut found = None;
        for candidate in &self.keys {
            if bool::from(digest.ct_eq(&candidate.hash)) {
                found = Some(candidate.principal.clone());
            }
        }
        // Always checked too, so a configured key costs the same time as a runtime one.
        let stored = self.stored.find(&digest);
        found.or(stored).ok_or_else(|| {
            if !self.stored.ever_loaded() {
                // Maybe a runtime key: the gateway has not reached the router yet, so it
                // cannot tell; the caller may retry (keys from config work meanwhile).
                tracing::warn!("request with an unknown API key: the runtime keys are not learnt from the router yet");
                return GatewayError::KeysNotLearnt;
            }
            tracing::warn!("request with an unknown API key refused");
            GatewayError::Unauthorized
        })
    }

    /// The sender of a signed webhook and its `webhook-id`, or 401; `now_unix` is the current
    /// time in seconds.
    pub fn webhook(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_unix: i64,
    ) -> Result<(Principal, String), GatewayError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| GatewayError::BadSignature(format!("missing header {name}")))
        };
        let id = header("webhook-id")?;
        let timestamp = header("webhook-timestamp")?;
        let signatures = header("webhook-signature")?;
        let Ok(sent_at) = timestamp.parse::<i64>() else {
            return Err(GatewayError::BadSignature(
                "webhook-timestamp must be whole seconds since the epoch".to_owned(),
            ));
        };
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if (now_unix - sent_at).abs() > tolerance {
            return Err(GatewayError::BadSignature(format!(
                "webhook-timestamp is {} s away from now; at most {tolerance} s allowed",
                (now_unix - sent_at).abs()
            )));
        }
        let presented: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);
        let mut found = None;
        for hook in &self.webhooks {
            for secret in &hook.secrets {
                let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
                    continue;
                };
                mac.update(&signed);
                let expected = mac.finalize().into_bytes();
                for candidate in &presented {
                    if bool::from(candidate.as_slice().ct_eq(expected.as_slice())) {
                        found = Some(hook.principal.clone());
                    }
                }
            }
        }
        let Some(principal) = found else {
            tracing::warn!("webhook with no valid signature refused");
            return Err(GatewayError::BadSignature(
                "no signature matches a configured secret".to_owned(),
            ));
        };
        Ok((principal, id.to_owned()))
    }
}

/// The presented key: `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(key) = value.strip_prefix("Bearer ")
    {
        return Some(key.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhookConfig;
    use ghost_runtime::config::Secret;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn credentials() -> Credentials {
        let config = GatewayConfig {
            webhooks: vec![WebhookConfig {
                name: "hook".to_owned(),
                secrets: vec![Secret::new(SECRET)],
                scopes: vec![Scope::Submit],
                targets: Vec::new(),
            }],
            ..GatewayConfig::default()
        };
        Credentials::from_config(&config).unwrap()
    }

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.parse().unwrap());
        headers.insert("webhook-signature", signature.parse().unwrap());
        headers
    }

    /// The test vector of the Standard Webhooks specification.
    #[test]
    fn the_specification_test_vector_verifies() {
        let credentials = credentials();
        let body = br#"{"test": 2432232314}"#;
        let signed = headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            "v1,bogus v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        );
        let (_, id) = credentials.webhook(&signed, body, 1_614_265_330).unwrap();
        assert_eq!(id, "msg_p5jXN8AQM9LWM0D4loKWxJek");
        let stale = headers(
            "msg_other",
            "1614265330",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        );
        let late = credentials.webhook(&stale, body, 1_614_265_330 + 301);
        assert!(matches!(late, Err(GatewayError::BadSignature(m)) if m.contains("away")));
    }
}
