//! The Work stream's Hello: caps checked before anything is done per claimed target, then the
//! credential (a per-executor token, the shared executor token, the service credential, or
//! nothing when the router has none of them), then the token's scope.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ghost_proto::executor::v1::Hello;

use super::{RouterGrpc, same_secret};
use crate::error::RouterError;
use crate::store::{NewAlert, TokenRow};
use crate::tokens::hash_secret;

/// Longest credential accepted in Hello, in bytes (a token is 67).
const MAX_HELLO_TOKEN: usize = 512;
/// Longest executor id, in bytes.
const MAX_EXECUTOR_ID: usize = 128;
/// Most workspaces one executor may claim.
const MAX_WORKSPACES: usize = 256;
/// How long the router waits to queue the revocation status on a stream being cut.
pub(super) const REFUSAL_SEND: Duration = Duration::from_secs(1);

/// Refuses a Hello over the caps before anything is done per claimed target.
pub(super) fn check_hello(hello: &Hello) -> Result<(), RouterError> {
    let over = |field: &str, limit: usize, unit: &str, got: usize| RouterError::InvalidArgument {
        field: field.to_owned(),
        message: format!("at most {limit} {unit}, got {got}"),
    };
    if hello.token.len() > MAX_HELLO_TOKEN {
        return Err(over(
            "hello.token",
            MAX_HELLO_TOKEN,
            "bytes",
            hello.token.len(),
        ));
    }
    if hello.executor_id.len() > MAX_EXECUTOR_ID {
        return Err(over(
            "hello.executor_id",
            MAX_EXECUTOR_ID,
            "bytes",
            hello.executor_id.len(),
        ));
    }
    if hello.workspaces.len() > MAX_WORKSPACES {
        return Err(over(
            "hello.workspaces",
            MAX_WORKSPACES,
            "workspaces",
            hello.workspaces.len(),
        ));
    }
    Ok(())
}

/// Where a Work stream came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Peer {
    /// The remote address, when known (refusals are coalesced by it).
    pub addr: Option<IpAddr>,
    /// The remote address is known and loopback.
    pub loopback: bool,
    /// It came through the executor port (`executor_listen`), or may have.
    pub via_executor_port: bool,
}

/// What a Hello proved.
pub(super) enum Credential {
    /// A per-executor token, scoped to its targets.
    Token(TokenRow),
    /// The router's shared `executor_token`: every target.
    Shared,
    /// The deployment's service credential: every target.
    Service,
    /// Nothing is configured, no token was ever issued, and the stream came from loopback
    /// and not through the executor port: a local executor.
    Anonymous,
}

/// At most one audit row (and alert) per token or peer per this long; the refusals in
/// between are counted into the next row.
const AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// Most tokens and peers whose refusals are coalesced at once; past it, refusals from new
/// ones are only counted in the log.
const MAX_AUDIT_WINDOWS: usize = 10_000;

/// Coalesces repeated refused Hellos in memory, so a refusing loop cannot flood the single
/// store writer with audit rows and alerts.
#[derive(Default)]
pub struct RefusalAudit {
    windows: std::sync::Mutex<HashMap<String, AuditWindow>>,
}

struct AuditWindow {
    opened: Instant,
    coalesced: u64,
}

impl RefusalAudit {
    /// `Some(refusals coalesced since the last row)` when a row is due for `key` now;
    /// `None` when this refusal is only counted.
    fn due(&self, key: String) -> Option<u64> {
        let now = Instant::now();
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(window) = windows.get_mut(&key) {
            if now.duration_since(window.opened) < AUDIT_WINDOW {
                window.coalesced += 1;
                return None;
            }
            let coalesced = window.coalesced;
            *window = AuditWindow {
                opened: now,
                coalesced: 0,
            };
            return Some(coalesced);
        }
        if windows.len() >= MAX_AUDIT_WINDOWS {
            windows.retain(|_, window| now.duration_since(window.opened) < AUDIT_WINDOW);
            if windows.len() >= MAX_AUDIT_WINDOWS {
                return None;
            }
        }
        windows.insert(
            key,
            AuditWindow {
                opened: now,
                coalesced: 0,
            },
        );
        Some(0)
    }
}

/// The audit detail of a refusal, with the count of those coalesced into it.
fn with_coalesced(detail: String, coalesced: u64) -> String {
    if coalesced == 0 {
        detail
    } else {
        format!("{detail} (and {coalesced} more refusals in the last minute)")
    }
}

impl RouterGrpc {
    /// Who the Hello's `token` proves the caller to be.
    pub(super) async fn credential(
        &self,
        token: &str,
        executor: &str,
        peer: Peer,
    ) -> Result<Credential, RouterError> {
        let store = self.tokens.store();
        if !token.is_empty() {
            if let Some(row) = store.token_by_hash(hash_secret(token)).await? {
                if row.revoked_ms != 0 {
                    if let Some(coalesced) = self.refusal_audit.due(format!("token:{}", row.id)) {
                        tracing::warn!(target: "audit", executor = ?executor, token = %row.name, token_id = row.id, coalesced, "work stream refused: revoked executor token");
                        let _ = store
                            .audit_token(
                                "refused".to_owned(),
                                row.id,
                                row.name.clone(),
                                format!("executor:{executor:?}"),
                                with_coalesced("revoked".to_owned(), coalesced),
                            )
                            .await;
                    }
                    return Err(RouterError::Unauthenticated(format!(
                        "executor token {} was revoked",
                        row.name
                    )));
                }
                return Ok(Credential::Token(row));
            }
            if !self.executor_token.is_empty() && same_secret(token, self.executor_token.expose()) {
                return Ok(Credential::Shared);
            }
            if !self.internal_token.is_empty() && same_secret(token, self.internal_token.expose()) {
                return Ok(Credential::Service);
            }
        }
        if self.executor_token.is_empty()
            && self.internal_token.is_empty()
            && peer.loopback
            && !peer.via_executor_port
            && !store.any_token().await?
        {
            return Ok(Credential::Anonymous);
        }
        let why = if token.is_empty() {
            "an executor token is required"
        } else {
            "unknown executor token"
        };
        let peer_name = peer
            .addr
            .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
        if let Some(coalesced) = self.refusal_audit.due(format!("peer:{peer_name}")) {
            tracing::warn!(target: "audit", executor = ?executor, peer = %peer_name, coalesced, "work stream refused: unknown or missing executor token");
            let _ = store
                .audit_token(
                    "refused".to_owned(),
                    0,
                    String::new(),
                    format!("peer:{peer_name} executor:{executor:?}"),
                    with_coalesced(why.to_owned(), coalesced),
                )
                .await;
        }
        Err(RouterError::Unauthenticated(why.to_owned()))
    }

    /// Refuses (audited, with an `executor_refused/<token id>` alert) a Hello claiming
    /// targets its token may not serve.
    pub(super) async fn check_scope(
        &self,
        token: &TokenRow,
        executor: &str,
        targets: &[String],
    ) -> Result<(), RouterError> {
        let foreign: Vec<&str> = targets
            .iter()
            .filter(|target| !token.targets.contains(target))
            .map(String::as_str)
            .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        let foreign = foreign.join(", ");
        if let Some(coalesced) = self.refusal_audit.due(format!("token:{}", token.id)) {
            tracing::warn!(target: "audit", executor = ?executor, token = %token.name, token_id = token.id, refused = %foreign, coalesced, "work stream refused: targets outside the token's scope");
            let _ = self
                .tokens
                .store()
                .audit_token(
                    "refused".to_owned(),
                    token.id,
                    token.name.clone(),
                    format!("executor:{executor:?}"),
                    with_coalesced(format!("may not serve {foreign}"), coalesced),
                )
                .await;
            self.routing
                .raise(NewAlert {
                    key: refused_alert_key(token.id),
                    severity: "warning",
                    summary: format!(
                        "executor {executor:?} with token {} claimed {foreign}, outside its scope",
                        token.name
                    ),
                    labels: vec![
                        ("token".to_owned(), token.name.clone()),
                        ("token_id".to_owned(), token.id.to_string()),
                        ("executor".to_owned(), executor.to_owned()),
                        ("targets".to_owned(), foreign.clone()),
                    ],
                })
                .await;
        }
        Err(RouterError::PermissionDenied(format!(
            "executor token {} may not serve {foreign} (it serves {})",
            token.name,
            token.targets.join(", ")
        )))
    }
}

/// The alert raised when token `id` claims targets outside its scope; resolved when it is
/// revoked. By id, so a name issued again starts clean.
pub fn refused_alert_key(id: i64) -> String {
    format!("executor_refused/{id}")
}
