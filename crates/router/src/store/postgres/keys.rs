//! Placeholder for RPK's executor tokens, token audit and API keys on PostgreSQL: the lead
//! replaces this file at merge. Every function answers [`StoreError::Closed`].

use sqlx::PgPool;

use crate::store::{
    ApiKeyRow, KeyCreated, KeyRevoked, KeysImported, NewApiKey, NewToken, Revoked, Revoker,
    StoreError, TokenRow,
};

/// The tables of these functions (migration 1, after the core tables).
pub const SCHEMA: &str = include_str!("schema/v1_keys.sql");

/// See `RouterStore::create_token`.
pub async fn create_token(
    _pool: &PgPool,
    _token: NewToken,
) -> Result<Option<TokenRow>, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::tokens`.
pub async fn tokens(_pool: &PgPool) -> Result<Vec<TokenRow>, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::token_by_hash`.
pub async fn token_by_hash(_pool: &PgPool, _hash: String) -> Result<Option<TokenRow>, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::any_token`.
pub async fn any_token(_pool: &PgPool) -> Result<bool, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::revoke_token`.
pub async fn revoke_token(
    _pool: &PgPool,
    _name: String,
    _actor: String,
) -> Result<Revoked, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::token_used`.
pub async fn token_used(_pool: &PgPool, _id: i64, _at_ms: i64) -> Result<(), StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::audit_token`.
pub async fn audit_token(
    _pool: &PgPool,
    _action: String,
    _token_id: i64,
    _name: String,
    _actor: String,
    _detail: String,
) -> Result<(), StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::create_api_key`.
pub async fn create_api_key(_pool: &PgPool, _key: NewApiKey) -> Result<KeyCreated, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::api_keys`.
pub async fn api_keys(_pool: &PgPool) -> Result<(Vec<ApiKeyRow>, u64), StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::revoke_api_key`.
pub async fn revoke_api_key(
    _pool: &PgPool,
    _name: String,
    _revoker: Revoker,
) -> Result<KeyRevoked, StoreError> {
    Err(StoreError::Closed)
}

/// See `RouterStore::import_api_keys`.
pub async fn import_api_keys(
    _pool: &PgPool,
    _keys: Vec<NewApiKey>,
    _actor: String,
) -> Result<KeysImported, StoreError> {
    Err(StoreError::Closed)
}
