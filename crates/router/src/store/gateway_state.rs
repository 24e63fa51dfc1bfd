//! State the gateway replicas share (`ghost.router.v1.GatewayStateService`): dashboard
//! sessions and Standard Webhooks deliveries.
//!
//! Sessions are stored by the SHA-256 of their id (the id itself never reaches the router),
//! with the SHA-256 of the key that logged in, the CSRF token and the expiry; expired ones are
//! purged whenever a session starts, and at most a given number are live at once.
//!
//! A delivery is keyed by its sender and webhook id, with the SHA-256 of its body. It is in
//! progress under a lease (a random token, [`DELIVERY_LEASE_MS`]) until the gateway settles
//! it: committed with its answer (kept for the keep window) or released. An in-progress row
//! whose lease ran out (its gateway died) no longer blocks the id.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::sqlite::SqliteStore;

/// How long a delivery stays in progress without being settled.
pub const DELIVERY_LEASE_MS: i64 = 60_000;
/// Delivery rows kept at most; past it the expired ones, then the oldest committed ones are
/// forgotten in a batch down to nine tenths (a replay of one then runs again, which for a
/// patch is the router's idempotent replay).
pub const MAX_DELIVERIES: i64 = 50_000;
/// Largest answer stored (a larger one is refused by the service).
pub const MAX_STORED_ANSWER: usize = 256 * 1024;
/// Live sessions at most, whatever a gateway asks for.
pub const MAX_SESSIONS: i64 = 100_000;

/// A live session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// SHA-256 of the key that logged in.
    pub credential: Vec<u8>,
    /// The CSRF token.
    pub csrf: String,
    /// Unix ms.
    pub expires_ms: i64,
}

/// A committed delivery's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerRow {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, empty if none.
    pub content_type: String,
    /// `Location`, empty if none.
    pub location: String,
    /// The body.
    pub body: Vec<u8>,
}

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryBegun {
    /// Deliver it and settle it with this lease.
    Deliver(String),
    /// Being delivered now under a live lease.
    InProgress,
    /// Committed: answer this again.
    Replay(AnswerRow),
    /// The sender used this id with another body.
    OtherBody,
    /// [`MAX_DELIVERIES`] rows are live (in progress or within their keep window).
    Full,
}

/// The store's side of the gateways' shared state.
#[tonic::async_trait]
pub trait GatewayStateStore: Send + Sync + 'static {
    /// Stores a session unless `max` are live; false when full. Purges expired ones first.
    async fn start_session(
        &self,
        id: Vec<u8>,
        session: SessionRow,
        max: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The live session with this id hash.
    async fn session(&self, id: Vec<u8>, now_ms: i64) -> Result<Option<SessionRow>, StoreError>;
    /// Forgets a session.
    async fn end_session(&self, id: Vec<u8>) -> Result<(), StoreError>;
    /// Begins a delivery; `lease` is the token given with [`DeliveryBegun::Deliver`].
    async fn begin_delivery(
        &self,
        sender: String,
        id: String,
        body: Vec<u8>,
        lease: String,
        now_ms: i64,
    ) -> Result<DeliveryBegun, StoreError>;
    /// Commits (`Some` answer, kept until `now_ms + keep_ms`) or releases a delivery held
    /// under `lease`; true when committed.
    async fn settle_delivery(
        &self,
        sender: String,
        id: String,
        lease: String,
        answer: Option<AnswerRow>,
        keep_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
}

fn start_tx(
    conn: &Connection,
    id: &[u8],
    session: &SessionRow,
    max: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    conn.execute(
        "DELETE FROM gateway_sessions WHERE expires_ms <= ?1",
        params![now_ms],
    )?;
    let live: i64 = conn.query_row("SELECT COUNT(*) FROM gateway_sessions", [], |row| {
        row.get(0)
    })?;
    if live >= max.clamp(1, MAX_SESSIONS) {
        return Ok(false);
    }
    conn.execute(
        "INSERT OR REPLACE INTO gateway_sessions (id_sha256, credential_sha256, csrf, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, session.credential, session.csrf, now_ms, session.expires_ms],
    )?;
    Ok(true)
}

fn session_read(
    conn: &Connection,
    id: &[u8],
    now_ms: i64,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT credential_sha256, csrf, expires_ms FROM gateway_sessions
             WHERE id_sha256 = ?1 AND expires_ms > ?2",
            params![id, now_ms],
            |row| {
                Ok(SessionRow {
                    credential: row.get(0)?,
                    csrf: row.get(1)?,
                    expires_ms: row.get(2)?,
                })
            },
        )
        .optional()?)
}

/// A stored row of a delivery.
struct DeliveryRow {
    body: Vec<u8>,
    committed: bool,
    until_ms: i64,
    answer: AnswerRow,
}

fn begin_tx(
    conn: &Connection,
    sender: &str,
    id: &str,
    body: &[u8],
    lease: &str,
    now_ms: i64,
) -> Result<DeliveryBegun, StoreError> {
    let found = conn
        .query_row(
            "SELECT body_sha256, committed, until_ms, status, content_type, location, answer
             FROM gateway_deliveries WHERE sender = ?1 AND id = ?2",
            params![sender, id],
            |row| {
                Ok(DeliveryRow {
                    body: row.get(0)?,
                    committed: row.get(1)?,
                    until_ms: row.get(2)?,
                    answer: AnswerRow {
                        status: row.get(3)?,
                        content_type: row.get(4)?,
                        location: row.get(5)?,
                        body: row.get(6)?,
                    },
                })
            },
        )
        .optional()?;
    // A row past its time (an expired lease or keep window) no longer counts.
    if let Some(row) = found.filter(|row| row.until_ms > now_ms) {
        return Ok(match (row.committed, row.body.as_slice() == body) {
            (_, false) => DeliveryBegun::OtherBody,
            (false, true) => DeliveryBegun::InProgress,
            (true, true) => DeliveryBegun::Replay(row.answer),
        });
    }
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM gateway_deliveries", [], |row| {
        row.get(0)
    })?;
    if rows >= MAX_DELIVERIES && !make_room(conn, now_ms)? {
        return Ok(DeliveryBegun::Full);
    }
    conn.execute(
        "INSERT OR REPLACE INTO gateway_deliveries
             (sender, id, body_sha256, committed, lease, until_ms, at_ms, status, content_type, location, answer)
         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, 0, '', '', X'')",
        params![sender, id, body, lease, now_ms + DELIVERY_LEASE_MS, now_ms],
    )?;
    Ok(DeliveryBegun::Deliver(lease.to_owned()))
}

/// Forgets rows past their time, then the oldest committed ones down to nine tenths of the
/// cap: one scan frees room for many new ids. Deliveries in progress under a live lease are
/// never forgotten. False when no room could be made.
fn make_room(conn: &Connection, now_ms: i64) -> Result<bool, StoreError> {
    conn.execute(
        "DELETE FROM gateway_deliveries WHERE until_ms <= ?1",
        params![now_ms],
    )?;
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM gateway_deliveries", [], |row| {
        row.get(0)
    })?;
    let target = MAX_DELIVERIES / 10 * 9;
    if rows > target {
        conn.execute(
            "DELETE FROM gateway_deliveries WHERE rowid IN (
                 SELECT rowid FROM gateway_deliveries WHERE committed = 1
                 ORDER BY at_ms LIMIT ?1)",
            params![rows - target],
        )?;
    }
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM gateway_deliveries", [], |row| {
        row.get(0)
    })?;
    Ok(rows < MAX_DELIVERIES)
}

fn settle_tx(
    conn: &Connection,
    sender: &str,
    id: &str,
    lease: &str,
    answer: Option<&AnswerRow>,
    keep_ms: i64,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let Some(answer) = answer else {
        conn.execute(
            "DELETE FROM gateway_deliveries
             WHERE sender = ?1 AND id = ?2 AND lease = ?3 AND committed = 0",
            params![sender, id, lease],
        )?;
        return Ok(false);
    };
    let changed = conn.execute(
        "UPDATE gateway_deliveries
         SET committed = 1, until_ms = ?4, at_ms = ?5, status = ?6, content_type = ?7,
             location = ?8, answer = ?9
         WHERE sender = ?1 AND id = ?2 AND lease = ?3 AND committed = 0 AND until_ms > ?5",
        params![
            sender,
            id,
            lease,
            now_ms.saturating_add(keep_ms),
            now_ms,
            answer.status,
            answer.content_type,
            answer.location,
            answer.body
        ],
    )?;
    Ok(changed == 1)
}

#[tonic::async_trait]
impl GatewayStateStore for SqliteStore {
    async fn start_session(
        &self,
        id: Vec<u8>,
        session: SessionRow,
        max: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| start_tx(conn, &id, &session, max, now_ms))
            .await
    }

    async fn session(&self, id: Vec<u8>, now_ms: i64) -> Result<Option<SessionRow>, StoreError> {
        self.read(move |conn| session_read(conn, &id, now_ms)).await
    }

    async fn end_session(&self, id: Vec<u8>) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM gateway_sessions WHERE id_sha256 = ?1",
                params![id],
            )?;
            Ok(())
        })
        .await
    }

    async fn begin_delivery(
        &self,
        sender: String,
        id: String,
        body: Vec<u8>,
        lease: String,
        now_ms: i64,
    ) -> Result<DeliveryBegun, StoreError> {
        self.write(move |conn| begin_tx(conn, &sender, &id, &body, &lease, now_ms))
            .await
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
        self.write(move |conn| {
            settle_tx(conn, &sender, &id, &lease, answer.as_ref(), keep_ms, now_ms)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("router.db")).unwrap();
        (dir, store)
    }

    fn answer() -> AnswerRow {
        AnswerRow {
            status: 202,
            content_type: "application/json".to_owned(),
            location: String::new(),
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn a_delivery_whose_gateway_died_frees_its_id_when_the_lease_runs_out() {
        let (_dir, store) = store();
        let begun = store
            .begin_delivery("s".into(), "m".into(), vec![1], "l1".into(), 1_000)
            .await
            .unwrap();
        assert_eq!(begun, DeliveryBegun::Deliver("l1".into()));
        let again = store
            .begin_delivery("s".into(), "m".into(), vec![1], "l2".into(), 2_000)
            .await
            .unwrap();
        assert_eq!(again, DeliveryBegun::InProgress);
        let later = 1_000 + DELIVERY_LEASE_MS;
        let taken = store
            .begin_delivery("s".into(), "m".into(), vec![1], "l3".into(), later)
            .await
            .unwrap();
        assert_eq!(taken, DeliveryBegun::Deliver("l3".into()));
        // The dead gateway's late settle changes nothing.
        let late = store
            .settle_delivery(
                "s".into(),
                "m".into(),
                "l1".into(),
                Some(answer()),
                600_000,
                later,
            )
            .await
            .unwrap();
        assert!(!late);
        assert!(
            store
                .settle_delivery(
                    "s".into(),
                    "m".into(),
                    "l3".into(),
                    Some(answer()),
                    600_000,
                    later
                )
                .await
                .unwrap()
        );
        let replay = store
            .begin_delivery("s".into(), "m".into(), vec![1], "l4".into(), later + 1)
            .await
            .unwrap();
        assert_eq!(replay, DeliveryBegun::Replay(answer()));
        // Another sender's id of the same name is its own.
        let other = store
            .begin_delivery("t".into(), "m".into(), vec![1], "l5".into(), later + 1)
            .await
            .unwrap();
        assert_eq!(other, DeliveryBegun::Deliver("l5".into()));
        // Past the keep window the id is free again.
        let expired = store
            .begin_delivery(
                "s".into(),
                "m".into(),
                vec![2],
                "l6".into(),
                later + 600_001,
            )
            .await
            .unwrap();
        assert_eq!(expired, DeliveryBegun::Deliver("l6".into()));
    }

    #[tokio::test]
    async fn a_full_delivery_table_forgets_the_oldest_committed_never_one_in_progress() {
        let (dir, store) = store();
        let held = store
            .begin_delivery("s".into(), "held".into(), vec![1], "h".into(), 10)
            .await
            .unwrap();
        assert_eq!(held, DeliveryBegun::Deliver("h".into()));
        {
            let mut conn = Connection::open(dir.path().join("router.db")).unwrap();
            let tx = conn.transaction().unwrap();
            for index in 0..MAX_DELIVERIES {
                tx.execute(
                    "INSERT INTO gateway_deliveries (sender, id, body_sha256, committed, lease, until_ms, at_ms, status, content_type, location, answer)
                     VALUES ('s', ?1, X'00', 1, '', 9999999, ?2, 200, '', '', X'')",
                    params![format!("old-{index}"), index],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let new = store
            .begin_delivery("s".into(), "new".into(), vec![1], "n".into(), 20)
            .await
            .unwrap();
        assert_eq!(new, DeliveryBegun::Deliver("n".into()));
        let conn = Connection::open(dir.path().join("router.db")).unwrap();
        let (rows, held): (i64, i64) = conn
            .query_row(
                "SELECT COUNT(*), SUM(id = 'held') FROM gateway_deliveries",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert!(rows <= MAX_DELIVERIES / 10 * 9 + 1, "{rows}");
        assert_eq!(held, 1);
    }

    #[tokio::test]
    async fn sessions_are_capped_and_expire() {
        let (_dir, store) = store();
        let row = |expires_ms| SessionRow {
            credential: vec![7; 32],
            csrf: "c".into(),
            expires_ms,
        };
        assert!(store.start_session(vec![1], row(100), 2, 0).await.unwrap());
        assert!(store.start_session(vec![2], row(100), 2, 0).await.unwrap());
        assert!(!store.start_session(vec![3], row(100), 2, 0).await.unwrap());
        assert_eq!(store.session(vec![1], 50).await.unwrap(), Some(row(100)));
        assert_eq!(store.session(vec![1], 100).await.unwrap(), None);
        // Expired ones make room.
        assert!(
            store
                .start_session(vec![3], row(300), 2, 100)
                .await
                .unwrap()
        );
        store.end_session(vec![3]).await.unwrap();
        assert_eq!(store.session(vec![3], 150).await.unwrap(), None);
    }
}
