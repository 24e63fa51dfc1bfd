//! Standard Webhooks ids, remembered only once their delivery has been committed (a 2xx answer),
//! with that answer: a sender retrying an id after a 429 or 503 (as the specification says
//! senders do) is served normally, and one retrying an id already committed gets the same
//! answer again without anything being done twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Ids remembered at most; past it the oldest is forgotten (a replay of it then runs again,
/// which for a patch is the router's idempotent replay).
const MAX_REMEMBERED: usize = 50_000;

/// The answer given to a committed delivery.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl IntoResponse for StoredAnswer {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        for (name, value) in &self.headers {
            response.headers_mut().insert(name, value.clone());
        }
        response
    }
}

#[derive(Debug, Clone)]
enum State {
    /// Being delivered now.
    InProgress,
    /// Committed with this answer.
    Committed(StoredAnswer),
}

#[derive(Debug)]
struct Entry {
    state: State,
    at: Instant,
}

type Entries = Arc<Mutex<HashMap<String, Entry>>>;

/// Every webhook id seen within the keep window.
pub struct Deliveries {
    keep: Duration,
    entries: Entries,
}

/// What to do with a delivery.
pub enum Begin {
    /// First time (or retried after a refusal): deliver it, then settle the ticket.
    Deliver(Ticket),
    /// The same id is being delivered right now.
    InProgress,
    /// Already committed: answer this again.
    Replay(StoredAnswer),
}

/// A delivery in progress; forgotten on drop unless committed, so a refusal, an error or a
/// cancelled request leaves the id free for the sender's retry.
pub struct Ticket {
    entries: Entries,
    id: String,
    committed: bool,
}

impl Deliveries {
    /// Ids are kept `keep` (twice the timestamp tolerance: a replay older is refused anyway).
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            entries: Arc::default(),
        }
    }

    /// Starts the delivery of `id`, or says it must not be delivered again.
    pub fn begin(&self, id: &str) -> Begin {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, entry| now.duration_since(entry.at) < self.keep);
        if let Some(entry) = entries.get(id) {
            return match &entry.state {
                State::InProgress => Begin::InProgress,
                State::Committed(answer) => Begin::Replay(answer.clone()),
            };
        }
        if entries.len() >= MAX_REMEMBERED {
            let oldest = entries
                .iter()
                .min_by_key(|(_, entry)| entry.at)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            id.to_owned(),
            Entry {
                state: State::InProgress,
                at: now,
            },
        );
        Begin::Deliver(Ticket {
            entries: Arc::clone(&self.entries),
            id: id.to_owned(),
            committed: false,
        })
    }
}

impl Ticket {
    /// Settles the delivery with `response`: a 2xx is committed and remembered with its answer,
    /// anything else leaves the id free. Returns the response to send.
    pub async fn settle(mut self, response: Response) -> Response {
        if !response.status().is_success() {
            return response;
        }
        let (parts, body) = response.into_parts();
        // Answers are small documents (an accepted patch, a message outcome).
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "").into_response();
        };
        let mut headers = HeaderMap::new();
        for name in [header::CONTENT_TYPE, header::LOCATION] {
            if let Some(value) = parts.headers.get(&name) {
                headers.insert(name, value.clone());
            }
        }
        let answer = StoredAnswer {
            status: parts.status,
            headers,
            body: bytes.clone(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            self.id.clone(),
            Entry {
                state: State::Committed(answer),
                at: Instant::now(),
            },
        );
        self.committed = true;
        drop(entries);
        Response::from_parts(parts, Body::from(bytes))
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(
            entries.get(&self.id),
            Some(Entry {
                state: State::InProgress,
                ..
            })
        ) {
            entries.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_id_is_remembered_only_once_committed_and_then_replayed() {
        let deliveries = Deliveries::new(Duration::from_secs(600));
        let Begin::Deliver(ticket) = deliveries.begin("msg_1") else {
            panic!("first delivery refused");
        };
        assert!(matches!(deliveries.begin("msg_1"), Begin::InProgress));
        let refused = ticket
            .settle(StatusCode::TOO_MANY_REQUESTS.into_response())
            .await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let Begin::Deliver(ticket) = deliveries.begin("msg_1") else {
            panic!("a refused delivery was remembered");
        };
        let accepted = ticket
            .settle((StatusCode::ACCEPTED, "{\"id\":\"p\"}").into_response())
            .await;
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let Begin::Replay(answer) = deliveries.begin("msg_1") else {
            panic!("a committed delivery was not replayed");
        };
        let replayed = answer.into_response();
        assert_eq!(replayed.status(), StatusCode::ACCEPTED);
        let body = axum::body::to_bytes(replayed.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"id\":\"p\"}");
    }

    #[test]
    fn a_dropped_delivery_frees_its_id() {
        let deliveries = Deliveries::new(Duration::from_secs(600));
        let Begin::Deliver(ticket) = deliveries.begin("msg_2") else {
            panic!("first delivery refused");
        };
        drop(ticket);
        assert!(matches!(deliveries.begin("msg_2"), Begin::Deliver(_)));
    }
}
