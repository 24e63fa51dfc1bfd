//! Standard Webhooks ids, remembered per sender only once their delivery has been committed (a
//! 2xx answer), with that answer and a digest of the body: a sender retrying an id after a 429
//! or 503 (as the specification says senders do) is served normally, one retrying an id already
//! committed gets the same answer again without anything being done twice, and the same id with
//! another body is refused. Ids are kept per sender, so one sender can neither read another's
//! stored answer nor pre-empt another's delivery by guessing its ids.
//!
//! The ids live in a [`DeliveryLedger`]: the router's database in a running gateway, so a
//! replay sent to another gateway replica is caught too. A delivery in progress holds a lease
//! there; a gateway that dies mid-delivery blocks its id only until the lease runs out.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;

/// Largest answer remembered; a larger one is sent but not stored, and its id stays free.
/// Answers are small documents (an accepted patch, a message outcome).
pub const MAX_STORED_ANSWER: u64 = 256 * 1024;

/// Longest webhook id remembered (Standard Webhooks ids are short, e.g. `msg_…`).
pub const MAX_ID_BYTES: usize = 256;

/// The answer given to a committed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// HTTP status (2xx).
    pub status: u16,
    /// `Content-Type`, empty if none.
    pub content_type: String,
    /// `Location`, empty if none.
    pub location: String,
    /// The body.
    pub body: Bytes,
}

impl IntoResponse for StoredAnswer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut response = (status, self.body).into_response();
        let headers = response.headers_mut();
        headers.remove(header::CONTENT_TYPE);
        for (name, value) in [
            (header::CONTENT_TYPE, &self.content_type),
            (header::LOCATION, &self.location),
        ] {
            if let Ok(value) = HeaderValue::from_str(value)
                && !value.is_empty()
            {
                headers.insert(name, value);
            }
        }
        response
    }
}

/// What the ledger says about a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// Deliver it, then settle it with this lease.
    Deliver(String),
    /// The same id is being delivered right now.
    InProgress,
    /// Already committed: answer this again.
    Replay(StoredAnswer),
    /// The sender used this id before with another body.
    OtherBody,
    /// Too many ids are remembered or in progress.
    Full,
}

/// Where delivery ids are remembered (the router, over gRPC:
/// [`crate::upstream::GrpcGatewayState`]).
#[tonic::async_trait]
pub trait DeliveryLedger: Send + Sync {
    /// Starts the delivery of `id` from `sender` with a body of SHA-256 `body`.
    async fn begin(&self, sender: &str, id: &str, body: [u8; 32]) -> Result<Begun, GatewayError>;
    /// Commits a delivery held under `lease` with `answer`, remembered for `keep`; false when
    /// the lease had run out (the id then stays free).
    async fn commit(
        &self,
        sender: &str,
        id: &str,
        lease: &str,
        answer: StoredAnswer,
        keep: Duration,
    ) -> Result<bool, GatewayError>;
    /// Frees a delivery held under `lease` for the sender's retry.
    async fn release(&self, sender: &str, id: &str, lease: &str) -> Result<(), GatewayError>;
}

/// Every webhook id seen within the keep window, per sender.
pub struct Deliveries {
    keep: Duration,
    ledger: Arc<dyn DeliveryLedger>,
}

/// What to do with a delivery.
pub enum Begin {
    /// First time (or retried after a refusal): deliver it, then settle the ticket.
    Deliver(Ticket),
    /// The same id is being delivered right now.
    InProgress,
    /// Already committed: answer this again.
    Replay(StoredAnswer),
    /// The sender used this id before with another body.
    OtherBody,
}

/// A delivery in progress; released on drop unless settled, so a refusal, an error or a
/// cancelled request leaves the id free for the sender's retry (and if even the release is
/// lost, the lease runs out).
pub struct Ticket {
    ledger: Arc<dyn DeliveryLedger>,
    sender: String,
    id: String,
    lease: String,
    keep: Duration,
    settled: bool,
}

impl Deliveries {
    /// Ids are kept `keep` (twice the timestamp tolerance: a replay older is refused anyway),
    /// in `ledger`.
    pub fn new(keep: Duration, ledger: Arc<dyn DeliveryLedger>) -> Self {
        Self { keep, ledger }
    }

    /// Starts the delivery of `id` from `sender` with `body`, or says it must not be
    /// delivered now; an error when the ledger cannot tell (503: the sender retries).
    pub async fn begin(&self, sender: &str, id: &str, body: &[u8]) -> Result<Begin, GatewayError> {
        if id.len() > MAX_ID_BYTES {
            return Err(GatewayError::BadRequest(format!(
                "webhook-id is {} bytes; at most {MAX_ID_BYTES} are accepted",
                id.len()
            )));
        }
        let digest: [u8; 32] = Sha256::digest(body).into();
        Ok(match self.ledger.begin(sender, id, digest).await? {
            Begun::Deliver(lease) => Begin::Deliver(Ticket {
                ledger: Arc::clone(&self.ledger),
                sender: sender.to_owned(),
                id: id.to_owned(),
                lease,
                keep: self.keep,
                settled: false,
            }),
            Begun::InProgress => Begin::InProgress,
            Begun::Replay(answer) => Begin::Replay(answer),
            Begun::OtherBody => Begin::OtherBody,
            Begun::Full => {
                return Err(GatewayError::Overloaded(
                    "too many webhook ids are remembered or in progress",
                ));
            }
        })
    }
}

impl Ticket {
    async fn release(&mut self) {
        self.settled = true;
        if let Err(err) = self
            .ledger
            .release(&self.sender, &self.id, &self.lease)
            .await
        {
            tracing::warn!(webhook_id = %self.id, error = %err, "cannot free a webhook id; it is free again when its lease runs out");
        }
    }

    /// Settles the delivery with `response`: a 2xx with a small answer is committed and
    /// remembered with that answer; anything else leaves the id free. Returns the response to
    /// send.
    pub async fn settle(mut self, response: Response) -> Response {
        if !response.status().is_success() {
            self.release().await;
            return response;
        }
        // Only an answer of known, small size is stored; any other is sent as it is.
        let small = response
            .body()
            .size_hint()
            .upper()
            .is_some_and(|upper| upper <= MAX_STORED_ANSWER);
        if !small {
            tracing::warn!("webhook answer too large to remember; its id stays free");
            self.release().await;
            return response;
        }
        let (parts, body) = response.into_parts();
        let limit = usize::try_from(MAX_STORED_ANSWER).unwrap_or(usize::MAX);
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            self.release().await;
            return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
        };
        let text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        let answer = StoredAnswer {
            status: parts.status.as_u16(),
            content_type: text(header::CONTENT_TYPE),
            location: text(header::LOCATION),
            body: bytes.clone(),
        };
        self.settled = true;
        match self
            .ledger
            .commit(&self.sender, &self.id, &self.lease, answer, self.keep)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(webhook_id = %self.id, "webhook delivery outlived its lease; its id is not remembered");
            }
            Err(err) => {
                tracing::warn!(webhook_id = %self.id, error = %err, "cannot remember a committed webhook id; a replay of it runs again");
            }
        }
        Response::from_parts(parts, Body::from(bytes))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // The request was cancelled: free the id in the background (its lease bounds the
        // wait if this is lost).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let ledger = Arc::clone(&self.ledger);
        let (sender, id, lease) = (
            std::mem::take(&mut self.sender),
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.lease),
        );
        runtime.spawn(async move {
            if let Err(err) = ledger.release(&sender, &id, &lease).await {
                tracing::warn!(webhook_id = %id, error = %err, "cannot free a webhook id; it is free again when its lease runs out");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Body digest, answer once committed, lease.
    type Row = ([u8; 32], Option<StoredAnswer>, String);

    /// A ledger in memory, with the router's semantics minus time.
    #[derive(Default)]
    struct Memory {
        rows: Mutex<HashMap<(String, String), Row>>,
    }

    #[tonic::async_trait]
    impl DeliveryLedger for Memory {
        async fn begin(
            &self,
            sender: &str,
            id: &str,
            body: [u8; 32],
        ) -> Result<Begun, GatewayError> {
            let mut rows = self.rows.lock().unwrap();
            let key = (sender.to_owned(), id.to_owned());
            if let Some((digest, answer, _)) = rows.get(&key) {
                return Ok(match (answer, *digest == body) {
                    (_, false) => Begun::OtherBody,
                    (None, true) => Begun::InProgress,
                    (Some(answer), true) => Begun::Replay(answer.clone()),
                });
            }
            let lease = format!("lease-{}", rows.len());
            rows.insert(key, (body, None, lease.clone()));
            Ok(Begun::Deliver(lease))
        }

        async fn commit(
            &self,
            sender: &str,
            id: &str,
            lease: &str,
            answer: StoredAnswer,
            _keep: Duration,
        ) -> Result<bool, GatewayError> {
            let mut rows = self.rows.lock().unwrap();
            match rows.get_mut(&(sender.to_owned(), id.to_owned())) {
                Some(row) if row.2 == lease && row.1.is_none() => {
                    row.1 = Some(answer);
                    Ok(true)
                }
                _ => Ok(false),
            }
        }

        async fn release(&self, sender: &str, id: &str, lease: &str) -> Result<(), GatewayError> {
            let mut rows = self.rows.lock().unwrap();
            let key = (sender.to_owned(), id.to_owned());
            if rows
                .get(&key)
                .is_some_and(|row| row.2 == lease && row.1.is_none())
            {
                rows.remove(&key);
            }
            Ok(())
        }
    }

    fn deliveries() -> Deliveries {
        Deliveries::new(Duration::from_secs(600), Arc::new(Memory::default()))
    }

    #[tokio::test]
    async fn an_id_is_remembered_only_once_committed_and_then_replayed() {
        let deliveries = deliveries();
        let Ok(Begin::Deliver(ticket)) = deliveries.begin("s", "msg_1", b"body").await else {
            panic!("first delivery refused");
        };
        assert!(matches!(
            deliveries.begin("s", "msg_1", b"body").await,
            Ok(Begin::InProgress)
        ));
        let refused = ticket
            .settle(StatusCode::TOO_MANY_REQUESTS.into_response())
            .await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let Ok(Begin::Deliver(ticket)) = deliveries.begin("s", "msg_1", b"body").await else {
            panic!("a refused delivery was remembered");
        };
        let accepted = ticket
            .settle(
                (
                    StatusCode::ACCEPTED,
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"id\":\"p\"}",
                )
                    .into_response(),
            )
            .await;
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let Ok(Begin::Replay(answer)) = deliveries.begin("s", "msg_1", b"body").await else {
            panic!("a committed delivery was not replayed");
        };
        let replayed = answer.into_response();
        assert_eq!(replayed.status(), StatusCode::ACCEPTED);
        assert_eq!(
            replayed.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
        let body = axum::body::to_bytes(replayed.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"id\":\"p\"}");
        assert!(matches!(
            deliveries.begin("s", "msg_1", b"other").await,
            Ok(Begin::OtherBody)
        ));
    }

    #[tokio::test]
    async fn a_dropped_delivery_frees_its_id() {
        let deliveries = deliveries();
        let Ok(Begin::Deliver(ticket)) = deliveries.begin("s", "msg_2", b"body").await else {
            panic!("first delivery refused");
        };
        drop(ticket);
        for _ in 0..100 {
            if matches!(
                deliveries.begin("s", "msg_2", b"body").await,
                Ok(Begin::Deliver(_))
            ) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a dropped delivery kept its id");
    }

    #[tokio::test]
    async fn a_large_answer_is_sent_but_not_remembered() {
        let deliveries = deliveries();
        let Ok(Begin::Deliver(ticket)) = deliveries.begin("a", "msg_4", b"x").await else {
            panic!("first delivery refused");
        };
        let big = "x".repeat(usize::try_from(MAX_STORED_ANSWER).unwrap() + 1);
        let sent = ticket
            .settle((StatusCode::OK, big.clone()).into_response())
            .await;
        let body = axum::body::to_bytes(sent.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body.len(), big.len());
        assert!(matches!(
            deliveries.begin("a", "msg_4", b"x").await,
            Ok(Begin::Deliver(_))
        ));
    }

    #[tokio::test]
    async fn a_long_id_is_refused_before_the_ledger() {
        let deliveries = deliveries();
        let long = "m".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(
            deliveries.begin("a", &long, b"x").await,
            Err(GatewayError::BadRequest(_))
        ));
    }
}
