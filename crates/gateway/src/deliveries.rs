//! Standard Webhooks ids, remembered per sender only once their delivery has been committed (a
//! 2xx answer), with that answer and a digest of the body: a sender retrying an id after a 429
//! or 503 (as the specification says senders do) is served normally, one retrying an id already
//! committed gets the same answer again without anything being done twice, and the same id with
//! another body is refused. Ids are kept per sender, so one sender can neither read another's
//! stored answer nor pre-empt another's delivery by guessing its ids.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Ids remembered at most; past it the oldest committed ones are forgotten in a batch (a
/// replay of one then runs again, which for a patch is the router's idempotent replay).
const MAX_REMEMBERED: usize = 50_000;

/// Largest answer remembered; a larger one is sent but not stored, and its id stays free.
/// Answers are small documents (an accepted patch, a message outcome).
const MAX_STORED_ANSWER: u64 = 256 * 1024;

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
    body: [u8; 32],
    at: Instant,
}

/// A delivery's key: the verified sender and its webhook id.
type Key = (String, String);
type Entries = Arc<Mutex<HashMap<Key, Entry>>>;

/// Every webhook id seen within the keep window, per sender.
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
    /// The sender used this id before with another body.
    OtherBody,
}

/// A delivery in progress; forgotten on drop unless committed, so a refusal, an error or a
/// cancelled request leaves the id free for the sender's retry.
pub struct Ticket {
    entries: Entries,
    key: Key,
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

    /// Starts the delivery of `id` from `sender` with `body`, or says it must not be
    /// delivered now.
    pub fn begin(&self, sender: &str, id: &str, body: &[u8]) -> Begin {
        let now = Instant::now();
        let digest: [u8; 32] = Sha256::digest(body).into();
        let key = (sender.to_owned(), id.to_owned());
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get(&key) {
            let expired = now.duration_since(entry.at) >= self.keep;
            match &entry.state {
                State::InProgress if entry.body != digest => return Begin::OtherBody,
                State::InProgress => return Begin::InProgress,
                State::Committed(_) if expired => {}
                State::Committed(_) if entry.body != digest => return Begin::OtherBody,
                State::Committed(answer) => return Begin::Replay(answer.clone()),
            }
        }
        if entries.len() >= MAX_REMEMBERED {
            self.make_room(&mut entries, now);
        }
        entries.insert(
            key.clone(),
            Entry {
                state: State::InProgress,
                body: digest,
                at: now,
            },
        );
        Begin::Deliver(Ticket {
            entries: Arc::clone(&self.entries),
            key,
            committed: false,
        })
    }

    /// Forgets expired committed ids, then the oldest committed ones down to nine tenths of
    /// the cap: one scan frees room for many new ids, so a flood of new ids costs a scan per
    /// tenth of the cap, not per id. Deliveries in progress are never forgotten (they are as
    /// few as the requests in flight, and their tickets still point at them).
    fn make_room(&self, entries: &mut HashMap<Key, Entry>, now: Instant) {
        entries.retain(|_, entry| {
            matches!(entry.state, State::InProgress) || now.duration_since(entry.at) < self.keep
        });
        let target = MAX_REMEMBERED / 10 * 9;
        if entries.len() <= target {
            return;
        }
        let mut committed: Vec<(Instant, Key)> = entries
            .iter()
            .filter(|(_, entry)| matches!(entry.state, State::Committed(_)))
            .map(|(key, entry)| (entry.at, key.clone()))
            .collect();
        let excess = (entries.len() - target).min(committed.len());
        if excess == 0 {
            return;
        }
        committed.select_nth_unstable_by_key(excess - 1, |(at, _)| *at);
        for (_, key) in committed.into_iter().take(excess) {
            entries.remove(&key);
        }
    }
}

impl Ticket {
    /// Settles the delivery with `response`: a 2xx with a small answer is committed and
    /// remembered with that answer; anything else leaves the id free. Returns the response to
    /// send.
    pub async fn settle(mut self, response: Response) -> Response {
        if !response.status().is_success() {
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
            return response;
        }
        let (parts, body) = response.into_parts();
        let limit = usize::try_from(MAX_STORED_ANSWER).unwrap_or(usize::MAX);
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
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
        if let Some(entry) = entries.get_mut(&self.key) {
            entry.state = State::Committed(answer);
            entry.at = Instant::now();
            self.committed = true;
        }
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
            entries.get(&self.key),
            Some(Entry {
                state: State::InProgress,
                ..
            })
        ) {
            entries.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_id_is_remembered_only_once_committed_and_then_replayed() {
        let deliveries = Deliveries::new(Duration::from_secs(600));
        let Begin::Deliver(ticket) = deliveries.begin("s", "msg_1", b"body") else {
            panic!("first delivery refused");
        };
        assert!(matches!(
            deliveries.begin("s", "msg_1", b"body"),
            Begin::InProgress
        ));
        let refused = ticket
            .settle(StatusCode::TOO_MANY_REQUESTS.into_response())
            .await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        let Begin::Deliver(ticket) = deliveries.begin("s", "msg_1", b"body") else {
            panic!("a refused delivery was remembered");
        };
        let accepted = ticket
            .settle((StatusCode::ACCEPTED, "{\"id\":\"p\"}").into_response())
            .await;
        assert_eq!(accepted.status(), StatusCode::ACCEPTED);
        let Begin::Replay(answer) = deliveries.begin("s", "msg_1", b"body") else {
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
        let Begin::Deliver(ticket) = deliveries.begin("s", "msg_2", b"body") else {
            panic!("first delivery refused");
        };
        drop(ticket);
        assert!(matches!(
            deliveries.begin("s", "msg_2", b"body"),
            Begin::Deliver(_)
        ));
    }

    #[tokio::test]
    async fn ids_are_kept_per_sender_and_another_body_is_refused() {
        let deliveries = Deliveries::new(Duration::from_secs(600));
        let Begin::Deliver(ticket) = deliveries.begin("a", "msg_3", b"one") else {
            panic!("first delivery refused");
        };
        assert!(matches!(
            deliveries.begin("a", "msg_3", b"two"),
            Begin::OtherBody
        ));
        // Another sender's id is its own: no replay of a's answer, no collision.
        let Begin::Deliver(other) = deliveries.begin("b", "msg_3", b"two") else {
            panic!("another sender's delivery of the same id was refused");
        };
        drop(other);
        let _ = ticket
            .settle((StatusCode::ACCEPTED, "{}").into_response())
            .await;
        assert!(matches!(
            deliveries.begin("a", "msg_3", b"two"),
            Begin::OtherBody
        ));
        assert!(matches!(
            deliveries.begin("a", "msg_3", b"one"),
            Begin::Replay(_)
        ));
        assert!(matches!(
            deliveries.begin("b", "msg_3", b"one"),
            Begin::Deliver(_)
        ));
    }

    #[tokio::test]
    async fn a_large_answer_is_sent_but_not_remembered() {
        let deliveries = Deliveries::new(Duration::from_secs(600));
        let Begin::Deliver(ticket) = deliveries.begin("a", "msg_4", b"x") else {
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
            deliveries.begin("a", "msg_4", b"x"),
            Begin::Deliver(_)
        ));
    }

    #[test]
    fn a_full_store_never_forgets_a_delivery_in_progress() {
        let deliveries = Deliveries::new(Duration::from_secs(600));
        let Begin::Deliver(_held) = deliveries.begin("a", "held", b"x") else {
            panic!("first delivery refused");
        };
        {
            let mut entries = deliveries.entries.lock().unwrap();
            let old = Instant::now();
            for index in 0..MAX_REMEMBERED {
                entries.insert(
                    ("a".to_owned(), format!("old-{index}")),
                    Entry {
                        state: State::Committed(StoredAnswer {
                            status: StatusCode::OK,
                            headers: HeaderMap::new(),
                            body: Bytes::new(),
                        }),
                        body: [0; 32],
                        at: old,
                    },
                );
            }
        }
        assert!(matches!(
            deliveries.begin("a", "new", b"x"),
            Begin::Deliver(_)
        ));
        let entries = deliveries.entries.lock().unwrap();
        assert!(
            entries.len() <= MAX_REMEMBERED / 10 * 9 + 2,
            "{}",
            entries.len()
        );
        assert!(entries.contains_key(&("a".to_owned(), "held".to_owned())));
    }
}
