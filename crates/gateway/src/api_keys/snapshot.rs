//! The gateway's copy of the runtime API keys the router keeps, for authentication.
//!
//! [`sync`] holds a `SnapshotApiKeys` long poll on the router: the router answers it as soon
//! as the key set changes (a key created or revoked through any gateway), so every gateway
//! refuses a revoked key within one round trip of the change; when the router cannot be
//! reached the poll is retried every [`RETRY`], so the bound is then one retry after the
//! router is back. Until then the gateway keeps its last snapshot and says so
//! (`ghost_gateway_api_keys_stale` is 1): it never drops to "no keys needed", and keys from
//! config keep working.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use ghost_core::TargetName;
use ghost_proto::router::v1::{self as wire, api_key_service_client::ApiKeyServiceClient};
use ghost_runtime::propagation::TracedChannel;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::{Principal, Scope};

/// How long one snapshot call is held by the router when nothing changes.
pub const HOLD: Duration = Duration::from_secs(20);
/// Pause before asking again after a failed call.
pub const RETRY: Duration = Duration::from_millis(500);

/// One runtime key as the gateway authenticates it.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) key: wire::ApiKey,
    hash: [u8; 32],
    principal: Principal,
}

#[derive(Default)]
struct Snapshot {
    version: u64,
    keys: Vec<Live>,
}

/// The runtime keys as last learnt from the router.
pub struct KeyStore {
    snapshot: RwLock<Snapshot>,
    /// Names config gives: a runtime key with one of them is never used.
    reserved: Vec<String>,
    stale: AtomicBool,
    /// Bumped on every install, so work running for a key can check it is still valid.
    installed: watch::Sender<u64>,
}

fn scope_of(raw: &str) -> Option<Scope> {
    match raw {
        "submit" => Some(Scope::Submit),
        "read" => Some(Scope::Read),
        "admin" => Some(Scope::Admin),
        _ => None,
    }
}

/// A key from the router as the gateway uses it; `None` (and a warning) when it cannot be.
fn live(stored: wire::StoredApiKey) -> Option<Live> {
    let key = stored.key?;
    let Some(hash) = crate::auth::decode_hex32(&stored.sha256) else {
        tracing::warn!(name = %key.name, "a runtime api key from the router has no valid hash; ignored");
        return None;
    };
    let scopes: Option<Vec<Scope>> = key.scopes.iter().map(|s| scope_of(s)).collect();
    let targets: Result<Vec<TargetName>, _> =
        key.targets.iter().map(|t| TargetName::parse(t)).collect();
    let (Some(scopes), Ok(targets)) = (scopes, targets) else {
        tracing::warn!(name = %key.name, "a runtime api key from the router has unknown scopes or bad targets; ignored");
        return None;
    };
    let principal = Principal::new(
        key.name.clone(),
        scopes,
        (!targets.is_empty()).then_some(targets),
    )
    .with_runtime_key(hash);
    Some(Live {
        key,
        hash,
        principal,
    })
}

impl KeyStore {
    /// No runtime keys yet; `reserved` are the names config gives.
    pub fn new(reserved: Vec<String>) -> Self {
        Self {
            snapshot: RwLock::new(Snapshot::default()),
            reserved,
            stale: AtomicBool::new(true),
            installed: watch::Sender::new(0),
        }
    }

    /// The holder of the key whose SHA-256 is `digest`. Compares with every key, in constant
    /// time each, with no early exit.
    pub fn find(&self, digest: &[u8; 32]) -> Option<Principal> {
        let snapshot = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for candidate in &snapshot.keys {
            if bool::from(digest.ct_eq(&candidate.hash)) {
                found = Some(candidate.principal.clone());
            }
        }
        found
    }

    /// True while a key with this SHA-256 exists.
    pub fn holds(&self, digest: &[u8; 32]) -> bool {
        self.find(digest).is_some()
    }

    /// The version of the set held.
    pub fn version(&self) -> u64 {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .version
    }

    /// True once a snapshot from the router was installed (before, an unknown key may be a
    /// runtime key the gateway has not learnt yet).
    pub fn ever_loaded(&self) -> bool {
        *self.installed.borrow() > 0
    }

    /// True while the last call to the router failed (the keys held may be out of date).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Resolves once no key with this SHA-256 is held (at once when none is).
    pub async fn revoked(&self, hash: [u8; 32]) {
        let mut installed = self.installed.subscribe();
        loop {
            if !self.holds(&hash) {
                return;
            }
            if installed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Replaces the set with the router's answer; `only_newer`: unless it is older than the
    /// one held (an answer to a call made after a change may overtake the long poll).
    pub(crate) fn install(&self, answer: wire::SnapshotApiKeysResponse, only_newer: bool) {
        let mut keys = Vec::with_capacity(answer.keys.len());
        for stored in answer.keys {
            let Some(key) = live(stored) else { continue };
            if self.reserved.contains(&key.key.name) {
                tracing::warn!(name = %key.key.name, "a runtime api key has the name of a key in this gateway's config; the config key wins and the runtime key is not used here");
                continue;
            }
            keys.push(key);
        }
        {
            let mut snapshot = self
                .snapshot
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if only_newer && answer.version < snapshot.version {
                return;
            }
            let changed = snapshot.version != answer.version;
            *snapshot = Snapshot {
                version: answer.version,
                keys,
            };
            if changed {
                tracing::debug!(version = answer.version, "runtime api keys updated");
            }
        }
        self.set_stale(false);
        self.installed
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    fn set_stale(&self, stale: bool) {
        let was = self.stale.swap(stale, Ordering::Relaxed);
        metrics::gauge!("ghost_gateway_api_keys_stale").set(if stale { 1.0 } else { 0.0 });
        if stale && !was {
            tracing::warn!(
                "cannot reach the router for the runtime api keys; the last ones learnt stay in use"
            );
        } else if !stale && was {
            tracing::info!("runtime api keys in step with the router");
        }
    }
}

fn with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Asks the router for the current set at once and installs it unless older than the one held.
pub async fn refresh(
    store: &KeyStore,
    client: &ApiKeyServiceClient<TracedChannel>,
    timeout: Duration,
) -> Result<(), tonic::Status> {
    let answer = client
        .clone()
        .snapshot_api_keys(with_deadline(
            wire::SnapshotApiKeysRequest {
                since_version: 0,
                wait_ms: 0,
            },
            timeout,
        ))
        .await?
        .into_inner();
    store.install(answer, true);
    Ok(())
}

/// Keeps `store` in step with the router until `stop`.
pub async fn sync(
    store: &KeyStore,
    client: ApiKeyServiceClient<TracedChannel>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let hold_ms = u32::try_from(HOLD.as_millis()).unwrap_or(u32::MAX);
    loop {
        let mut caller = client.clone();
        // Out of step (never loaded, or the last call failed): answered at once, not held
        // (an empty set is version 0, which a call "since 0" would wait on for a whole hold).
        let behind = store.is_stale() || !store.ever_loaded();
        let call = caller.snapshot_api_keys(with_deadline(
            wire::SnapshotApiKeysRequest {
                since_version: if behind { 0 } else { store.version() },
                wait_ms: if behind { 0 } else { hold_ms },
            },
            HOLD + timeout,
        ));
        let asked = tokio::time::Instant::now();
        let held = store.version();
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            answer = call => answer,
        };
        match answer {
            Ok(answer) => {
                let answer = answer.into_inner();
                // Answered at once with nothing new (the router holds too many polls): pause
                // rather than ask again in a tight loop.
                let pause = (answer.version == held && !store.is_stale())
                    .then(|| RETRY.saturating_sub(asked.elapsed()));
                store.install(answer, false);
                if let Some(pause) = pause.filter(|pause| !pause.is_zero()) {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
            Err(status) => {
                if !store.is_stale() {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "runtime api keys: the router did not answer");
                }
                store.set_stale(true);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}
