//! The gateways' shared state ([`GatewayStateStore`]) on [`PgStore`]: RPK's statements in
//! `gateway_state.rs`, every result classified like the store's own.

use super::{PgStore, gateway_state};
use crate::store::{AnswerRow, DeliveryBegun, GatewayStateStore, SessionRow, StoreError};

#[tonic::async_trait]
impl GatewayStateStore for PgStore {
    async fn start_session(
        &self,
        id: Vec<u8>,
        session: SessionRow,
        max: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let started = gateway_state::start_session(&self.pool, id, session, max, now_ms).await;
        self.classify(started)
    }

    async fn session(&self, id: Vec<u8>, now_ms: i64) -> Result<Option<SessionRow>, StoreError> {
        self.classify(gateway_state::session(&self.pool, id, now_ms).await)
    }

    async fn end_session(&self, id: Vec<u8>) -> Result<(), StoreError> {
        self.classify(gateway_state::end_session(&self.pool, id).await)
    }

    async fn begin_delivery(
        &self,
        sender: String,
        id: String,
        body: Vec<u8>,
        lease: String,
        now_ms: i64,
    ) -> Result<DeliveryBegun, StoreError> {
        let begun =
            gateway_state::begin_delivery(&self.pool, sender, id, body, lease, now_ms).await;
        self.classify(begun)
    }

    async fn settle_delivery(
        &self,
        sender: String,
        id: String,
        lease: String,
        answer: Option<AnswerRow>,
        keep_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let settled =
            gateway_state::settle_delivery(&self.pool, sender, id, lease, answer, keep_ms, now_ms)
                .await;
        self.classify(settled)
    }
}
