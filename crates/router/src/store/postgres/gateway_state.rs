//! Placeholder for RPK's gateway sessions and webhook deliveries on PostgreSQL: the lead
//! replaces this file at merge. Every function answers [`StoreError::Closed`].

use sqlx::PgPool;

use crate::store::{AnswerRow, DeliveryBegun, SessionRow, StoreError};

/// See `GatewayStateStore::start_session`.
pub async fn start_session(
    _pool: &PgPool,
    _id: Vec<u8>,
    _session: SessionRow,
    _max: i64,
    _now_ms: i64,
) -> Result<bool, StoreError> {
    Err(StoreError::Closed)
}

/// See `GatewayStateStore::session`.
pub async fn session(
    _pool: &PgPool,
    _id: Vec<u8>,
    _now_ms: i64,
) -> Result<Option<SessionRow>, StoreError> {
    Err(StoreError::Closed)
}

/// See `GatewayStateStore::end_session`.
pub async fn end_session(_pool: &PgPool, _id: Vec<u8>) -> Result<(), StoreError> {
    Err(StoreError::Closed)
}

/// See `GatewayStateStore::begin_delivery`.
pub async fn begin_delivery(
    _pool: &PgPool,
    _sender: String,
    _id: String,
    _body: Vec<u8>,
    _lease: String,
    _now_ms: i64,
) -> Result<DeliveryBegun, StoreError> {
    Err(StoreError::Closed)
}

/// See `GatewayStateStore::settle_delivery`.
pub async fn settle_delivery(
    _pool: &PgPool,
    _sender: String,
    _id: String,
    _lease: String,
    _answer: Option<AnswerRow>,
    _keep_ms: i64,
    _now_ms: i64,
) -> Result<bool, StoreError> {
    Err(StoreError::Closed)
}
