//! Each scenario runs against [`SqliteStore`](super::super::super::SqliteStore) (through
//! [`GatewayStateStore`]) and against the PostgreSQL functions, comparing the answers; the
//! races run two tasks against PostgreSQL alone (SQLite has one writer).

use sqlx::postgres::PgPool;

use super::super::super::GatewayStateStore;
use super::super::super::gateway_state::MAX_STORED_ANSWER;
use super::super::keys::tests::{Both, on_both, same};
use super::*;

fn answer(body: Vec<u8>) -> AnswerRow {
    AnswerRow {
        status: 202,
        content_type: "application/json".to_owned(),
        location: "/v1/patches/p".to_owned(),
        body,
    }
}

fn session(expires_ms: i64) -> SessionRow {
    SessionRow {
        credential: vec![7; 32],
        csrf: "c".to_owned(),
        expires_ms,
    }
}

/// Begins delivery (`sender`, `id`) with body `body` under `lease` at `now` on both stores.
macro_rules! begin {
    ($both:expr, $sender:expr, $id:expr, $body:expr, $lease:expr, $now:expr) => {
        same!(
            $both,
            begin_delivery(
                $sender.to_owned(),
                $id.to_owned(),
                $body.to_vec(),
                $lease.to_owned(),
                $now
            )
        )
    };
}

/// Settles delivery (`s`, `m`) under `lease` at `now`, committing `answer` kept 600 s.
macro_rules! settle {
    ($both:expr, $lease:expr, $answer:expr, $now:expr) => {
        same!(
            $both,
            settle_delivery(
                "s".to_owned(),
                "m".to_owned(),
                $lease.to_owned(),
                $answer.clone(),
                600_000,
                $now
            )
        )
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_leased_expired_committed_replayed_and_released_as_on_sqlite() {
    let test = "gateway_state::a_delivery_is_leased_expired_committed_replayed_and_released";
    let Some(both) = Both::start(test).await else {
        return;
    };
    let ok = Some(answer(b"{}".to_vec()));
    let begun = begin!(both, "s", "m", [1], "l1", 1_000);
    assert_eq!(begun, DeliveryBegun::Deliver("l1".into()));
    assert_eq!(
        begin!(both, "s", "m", [1], "l2", 2_000),
        DeliveryBegun::InProgress
    );
    assert_eq!(
        begin!(both, "s", "m", [2], "l2", 2_000),
        DeliveryBegun::OtherBody
    );
    // The dead gateway's lease runs out: the id is free, and its late settle changes nothing.
    let later = 1_000 + DELIVERY_LEASE_MS;
    let taken = begin!(both, "s", "m", [1], "l3", later);
    assert_eq!(taken, DeliveryBegun::Deliver("l3".into()));
    assert!(!settle!(both, "l1", ok, later));
    assert!(settle!(both, "l3", ok, later));
    assert!(!settle!(both, "l3", ok, later), "committed once");
    let replay = begin!(both, "s", "m", [1], "l4", later + 1);
    assert_eq!(replay, DeliveryBegun::Replay(answer(b"{}".to_vec())));
    assert_eq!(
        begin!(both, "s", "m", [9], "l4", later + 1),
        DeliveryBegun::OtherBody
    );
    // Another sender's id of the same name is its own.
    let other = begin!(both, "t", "m", [1], "l5", later + 1);
    assert_eq!(other, DeliveryBegun::Deliver("l5".into()));
    // Past the keep window the id is free again; a release frees it at once.
    let expired = begin!(both, "s", "m", [2], "l6", later + 600_001);
    assert_eq!(expired, DeliveryBegun::Deliver("l6".into()));
    assert!(!settle!(both, "wrong", None::<AnswerRow>, later + 600_002));
    let held = begin!(both, "s", "m", [2], "l7", later + 600_002);
    assert_eq!(
        held,
        DeliveryBegun::InProgress,
        "a wrong lease releases nothing"
    );
    assert!(!settle!(both, "l6", None::<AnswerRow>, later + 600_002));
    let released = begin!(both, "s", "m", [2], "l8", later + 600_003);
    assert_eq!(released, DeliveryBegun::Deliver("l8".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_answer_is_replayed_byte_for_byte_as_on_sqlite() {
    let test = "gateway_state::the_largest_answer_is_replayed_byte_for_byte_as_on_sqlite";
    let Some(both) = Both::start(test).await else {
        return;
    };
    let body: Vec<u8> = (0..MAX_STORED_ANSWER)
        .map(|i| u8::try_from(i % 251).unwrap_or(0))
        .collect();
    let largest = Some(answer(body.clone()));
    begin!(both, "s", "m", [0; 32], "l", 10);
    assert!(settle!(both, "l", largest, 11));
    let replay = begin!(both, "s", "m", [0; 32], "l2", 12);
    assert_eq!(replay, DeliveryBegun::Replay(answer(body)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_purged_and_ended_as_on_sqlite() {
    let Some(both) = Both::start("gateway_state::sessions_are_capped_purged_and_ended").await
    else {
        return;
    };
    assert!(same!(both, start_session(vec![1], session(100), 2, 0)));
    assert!(same!(both, start_session(vec![2], session(100), 2, 0)));
    assert!(!same!(both, start_session(vec![3], session(100), 2, 0)));
    // A cap of 0 means 1; a cap past MAX_SESSIONS means MAX_SESSIONS.
    assert!(!same!(both, start_session(vec![3], session(100), 0, 0)));
    assert_eq!(same!(both, session(vec![1], 50)), Some(session(100)));
    assert_eq!(same!(both, session(vec![1], 100)), None, "expired");
    // Expired ones make room; a started id is replaced.
    assert!(same!(both, start_session(vec![3], session(300), 2, 100)));
    assert!(same!(both, start_session(vec![3], session(400), 2, 100)));
    assert_eq!(same!(both, session(vec![3], 150)), Some(session(400)));
    same!(both, end_session(vec![3]));
    assert_eq!(same!(both, session(vec![3], 150)), None);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gateway_sessions")
        .fetch_one(&both.pg)
        .await
        .expect("count");
    assert_eq!(rows, 0, "the expired ones were purged");
}

/// Fills the delivery table of both stores with `MAX_DELIVERIES` rows: committed (`true`,
/// kept long, ages 0..) or in progress under a live lease (`false`).
async fn fill(both: &Both, committed: bool) {
    let conn = rusqlite::Connection::open(&both.path).expect("open");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?1)
         INSERT INTO gateway_deliveries (sender, id, body_sha256, committed, lease, until_ms,
             at_ms, status, content_type, location, answer)
         SELECT 's', 'old-' || i, X'00', ?2, 'x', 9999999, i, 200, '', '', X'' FROM n",
        rusqlite::params![MAX_DELIVERIES, committed],
    )
    .expect("sqlite rows");
    sqlx::query(
        "INSERT INTO gateway_deliveries (sender, id, body_sha256, committed, lease, until_ms,
             at_ms, status, content_type, location, answer)
         SELECT 's', 'old-' || i, '\\x00'::bytea, $2, 'x', 9999999, i, 200, '', '', ''::bytea
         FROM generate_series(0, $1 - 1) AS i",
    )
    .bind(MAX_DELIVERIES)
    .bind(committed)
    .execute(&both.pg)
    .await
    .expect("postgres rows");
}

async fn delivery_rows(pool: &PgPool) -> (i64, i64) {
    let row =
        sqlx::query("SELECT COUNT(*), COUNT(*) FILTER (WHERE id = 'held') FROM gateway_deliveries")
            .fetch_one(pool)
            .await
            .expect("count");
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_delivery_table_forgets_the_oldest_committed_never_one_in_progress() {
    let test = "gateway_state::a_full_delivery_table_forgets_the_oldest_committed";
    let Some(both) = Both::start(test).await else {
        return;
    };
    let held = begin!(both, "s", "held", [1], "h", 10);
    assert_eq!(held, DeliveryBegun::Deliver("h".into()));
    fill(&both, true).await;
    let new = begin!(both, "s", "new", [1], "n", 20);
    assert_eq!(new, DeliveryBegun::Deliver("n".into()));
    let (rows, held) = delivery_rows(&both.pg).await;
    assert!(rows <= MAX_DELIVERIES / 10 * 9 + 1, "{rows}");
    assert_eq!(held, 1);
    // The oldest were forgotten: the youngest committed row is still answered.
    let young = format!("old-{}", MAX_DELIVERIES - 1);
    let replay = begin!(both, "s", young, [0], "y", 30);
    assert!(matches!(replay, DeliveryBegun::Replay(_)), "{replay:?}");
    // A figure, not asserted: new deliveries begun one after another with this many stored.
    let begins = 200;
    let started = std::time::Instant::now();
    for index in 0..begins {
        let id = format!("f{index}");
        let begun = both
            .sqlite
            .begin_delivery("f".into(), id, vec![1], "l".into(), 40);
        begun.await.expect("sqlite");
    }
    let sqlite = started.elapsed();
    let started = std::time::Instant::now();
    for index in 0..begins {
        let id = format!("f{index}");
        let begun = begin_delivery(&both.pg, "f".into(), id, vec![1], "l".into(), 40);
        begun.await.expect("postgres");
    }
    eprintln!(
        "{begins} deliveries begun in turn with {rows} stored: SQLite {sqlite:?}, PostgreSQL {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_full_of_deliveries_in_progress_refuses_a_new_one() {
    let test = "gateway_state::a_table_full_of_deliveries_in_progress_refuses_a_new_one";
    let Some(both) = Both::start(test).await else {
        return;
    };
    fill(&both, false).await;
    assert_eq!(begin!(both, "s", "new", [1], "n", 20), DeliveryBegun::Full);
    // Once their leases ran out, they make room.
    let later = begin!(both, "s", "new", [1], "n", 9_999_999);
    assert_eq!(later, DeliveryBegun::Deliver("n".into()));
    assert_eq!(delivery_rows(&both.pg).await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_gateways_beginning_one_delivery_exactly_one_delivers() {
    let test = "gateway_state::of_two_gateways_beginning_one_delivery_exactly_one_delivers";
    let Some(both) = Both::start(test).await else {
        return;
    };
    let begin = |id: String, lease: &str| {
        let (pool, lease) = (both.pg.clone(), lease.to_owned());
        tokio::spawn(async move {
            begin_delivery(&pool, "s".to_owned(), id, vec![1], lease, 1_000).await
        })
    };
    for round in 0..50 {
        let id = format!("m{round}");
        let (left, right) = tokio::join!(begin(id.clone(), "left"), begin(id, "right"));
        let mut answers = [left, right].map(|answer| answer.expect("task").expect("pg"));
        answers.sort_by_key(|answer| format!("{answer:?}"));
        assert!(
            matches!(
                &answers,
                [DeliveryBegun::Deliver(_), DeliveryBegun::InProgress]
            ),
            "round {round}: {answers:?}"
        );
    }
    // Two sessions for the one place left: one starts.
    assert!(
        start_session(&both.pg, vec![0], session(100), 2, 0)
            .await
            .expect("pg")
    );
    let start = |id: u8| {
        let pool = both.pg.clone();
        tokio::spawn(async move { start_session(&pool, vec![id], session(100), 2, 0).await })
    };
    let (left, right) = tokio::join!(start(1), start(2));
    let started = [left, right]
        .map(|answer| answer.expect("task").expect("pg"))
        .iter()
        .filter(|started| **started)
        .count();
    assert_eq!(started, 1);
}
