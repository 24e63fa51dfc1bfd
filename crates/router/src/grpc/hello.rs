//! The Work stream's Hello: caps checked before anything is done per claimed target, then the
//! credential (a per-executor token, the shared executor token, the service credential, or
//! nothing when the router has none of them), then the token's scope.

use std::time::Duration;

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
                    tracing::warn!(target: "audit", %executor, token = %row.name, "work stream refused: revoked executor token");
                    let _ = store
                        .audit_token(
                            "refused".to_owned(),
                            row.name.clone(),
                            format!("executor:{executor}"),
                            "revoked".to_owned(),
                        )
                        .await;
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
        tracing::warn!(%executor, "work stream refused: unknown or missing executor token");
        Err(RouterError::Unauthenticated(if token.is_empty() {
            "an executor token is required".to_owned()
        } else {
            "unknown executor token".to_owned()
        }))
    }

    /// Refuses (audited, with an `executor_refused/<token>` alert) a Hello claiming targets
    /// its token may not serve.
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
        tracing::warn!(target: "audit", %executor, token = %token.name, refused = %foreign, "work stream refused: targets outside the token's scope");
        let _ = self
            .tokens
            .store()
            .audit_token(
                "refused".to_owned(),
                token.name.clone(),
                format!("executor:{executor}"),
                format!("may not serve {foreign}"),
            )
            .await;
        self.routing
            .raise(NewAlert {
                key: format!("executor_refused/{}", token.name),
                severity: "warning",
                summary: format!(
                    "executor {executor} with token {} claimed {foreign}, outside its scope",
                    token.name
                ),
                labels: vec![
                    ("token".to_owned(), token.name.clone()),
                    ("executor".to_owned(), executor.to_owned()),
                    ("targets".to_owned(), foreign.clone()),
                ],
            })
            .await;
        Err(RouterError::PermissionDenied(format!(
            "executor token {} may not serve {foreign} (it serves {})",
            token.name,
            token.targets.join(", ")
        )))
    }
}
