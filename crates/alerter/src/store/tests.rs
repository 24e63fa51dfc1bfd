//! The outbox's head-of-line, retry and priority rules, each on SQLite in memory and on a real
//! PostgreSQL ([`TempPostgres`], skipped with a printed reason when it is not installed); the
//! SQLite file's versioning; on PostgreSQL, the sender lease of a channel between two stores.

use ghost_testkit::postgres::TempPostgres;

use serde_json::json;

use super::*;

/// When `ready_heads` at `now` says to look again, given the earliest pending `next`: then on
/// SQLite; on PostgreSQL never later than one poll away (another replica may store meanwhile).
fn next_look(store: &Store, now: i64, next: Option<i64>) -> Option<i64> {
    if !store.is_shared() {
        return next;
    }
    let poll = now + i64::try_from(super::postgres::POLL.as_millis()).unwrap();
    Some(next.map_or(poll, |next| next.min(poll)))
}

/// Runs each named `async fn(Store)` once on SQLite in memory and once on PostgreSQL.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::Store::open(None).unwrap()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let test = concat!("store::tests::", stringify!($name), "::postgres");
                    let Some(server) = super::TempPostgres::start_or_skip(test) else {
                        return;
                    };
                    let url = server.create_database();
                    super::$name(super::Store::open_postgres(&url).await.unwrap()).await;
                }
            }
        )*
    };
}

on_both_stores!(
    ready_heads_are_the_oldest_pending_message_of_each_thread,
    a_head_waiting_for_a_retry_holds_its_thread_and_says_when,
    notifications_and_alert_events_are_accepted_once,
    a_later_failure_goes_first_but_never_overtakes_its_own_thread,
    a_threads_copies_are_the_threads_named_after_it_and_no_other,
);

fn message(thread: &str, kind: Kind, text: &str) -> NewMessage {
    NewMessage {
        thread: thread.to_owned(),
        channel: "#c".to_owned(),
        kind,
        body: json!({ "text": text }),
        traceparent: None,
        priority: Priority::Thread,
    }
}

fn texts(ready: &ReadyHeads) -> Vec<Value> {
    ready
        .heads
        .iter()
        .map(|head| head.message.body["text"].clone())
        .collect()
}

async fn ready_heads_are_the_oldest_pending_message_of_each_thread(store: Store) {
    store
        .enqueue(
            vec![
                message("a", Kind::Post, "a1"),
                message("b", Kind::Post, "b1"),
                message("a", Kind::Reply, "a2"),
            ],
            10,
        )
        .await
        .unwrap();
    let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&ready), [json!("a1"), json!("b1")]);
    assert_eq!(ready.next_at_ms, next_look(&store, 10, None));
    assert!(ready.heads.iter().all(|head| head.parent.is_none()));
    let limited = store.ready_heads(10, 1, Vec::new()).await.unwrap();
    assert_eq!(texts(&limited), [json!("a1")]);
    let parent = ThreadParent {
        channel: "C1".into(),
        ts: "1.1".into(),
    };
    store
        .settle(vec![
            Outcome::Sent {
                id: ready.heads[0].message.id,
                ts: "1.1".into(),
                parent: Some(("a".into(), parent.clone())),
            },
            Outcome::Dead {
                id: ready.heads[1].message.id,
                error: "channel_not_found".into(),
            },
        ])
        .await
        .unwrap();
    let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&ready), [json!("a2")]);
    assert_eq!(ready.heads[0].parent, Some(parent));
    let counts = store.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.sent, counts.dead), (1, 1, 1));
}

async fn a_head_waiting_for_a_retry_holds_its_thread_and_says_when(store: Store) {
    store
        .enqueue(
            vec![
                message("a", Kind::Post, "a1"),
                message("a", Kind::Update, "a2"),
                message("b", Kind::Post, "b1"),
            ],
            10,
        )
        .await
        .unwrap();
    let first = store.ready_heads(10, 8, Vec::new()).await.unwrap();
    store
        .settle(vec![Outcome::Retry {
            id: first.heads[0].message.id,
            next_at_ms: 500,
            error: "http 500".into(),
        }])
        .await
        .unwrap();
    let ready = store.ready_heads(20, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&ready), [json!("b1")]);
    assert_eq!(ready.next_at_ms, next_look(&store, 20, Some(500)));
    let skipped = store
        .ready_heads(20, 8, vec!["#c".to_owned()])
        .await
        .unwrap();
    assert!(skipped.heads.is_empty());
    let due = store.ready_heads(500, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&due), [json!("a1"), json!("b1")]);
    assert_eq!(due.heads[0].message.tries, 1);
}

async fn notifications_and_alert_events_are_accepted_once(store: Store) {
    let batch = vec![message("patch/p", Kind::Post, "p")];
    assert!(
        store
            .accept_notification("p", 1, 1, batch.clone())
            .await
            .unwrap()
    );
    assert!(!store.accept_notification("p", 1, 2, batch).await.unwrap());
    assert_eq!(store.all_messages().await.unwrap().len(), 1);
    assert!(store.accept_alert_event("k", false, 5).await.unwrap());
    assert!(!store.accept_alert_event("k", false, 5).await.unwrap());
    assert!(store.accept_alert_event("k", true, 5).await.unwrap());
}

async fn a_later_failure_goes_first_but_never_overtakes_its_own_thread(store: Store) {
    let with = |thread: &str, kind, text: &str, priority| NewMessage {
        priority,
        ..message(thread, kind, text)
    };
    store
        .enqueue(
            vec![
                with("a", Kind::Post, "a1", Priority::Thread),
                with("b", Kind::Post, "b1", Priority::Digest),
                with("a", Kind::Reply, "a2 failure", Priority::Failure),
                with("c", Kind::Post, "c1 failure", Priority::Failure),
            ],
            10,
        )
        .await
        .unwrap();
    let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(
        texts(&ready),
        [json!("c1 failure"), json!("a1"), json!("b1")],
        "the failure stored last goes first; a2 waits behind a1 in its thread"
    );
    let first = store.ready_heads(10, 1, Vec::new()).await.unwrap();
    assert_eq!(texts(&first), [json!("c1 failure")]);
    store
        .settle(vec![
            Outcome::Sent {
                id: first.heads[0].message.id,
                ts: "1.1".into(),
                parent: None,
            },
            Outcome::Sent {
                id: ready.heads[1].message.id,
                ts: "1.2".into(),
                parent: None,
            },
        ])
        .await
        .unwrap();
    let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&ready), [json!("a2 failure"), json!("b1")]);
}

#[tokio::test]
async fn a_file_from_before_versioning_is_adopted_as_version_1_with_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerter.db");
    {
        // The oldest schema: no `schema_migrations`, no `priority` column.
        let conn = rusqlite::Connection::open(&path).unwrap();
        let old = include_str!("schema/v1.sqlite.sql");
        conn.execute_batch(old).unwrap();
        conn.execute(
            "INSERT INTO outbox (thread, channel, kind, body, next_at_ms, created_ms)
             VALUES ('patch/p', '#c', 'post', '{\"text\":\"kept\"}', 1, 1)",
            [],
        )
        .unwrap();
    }
    let store = Store::open(Some(&path)).unwrap();
    let ready = store.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&ready), [json!("kept")]);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Adopted as version 1, then the later migrations ran.
    let expected: Vec<i64> =
        (1..=i64::try_from(crate::store::migrations::MIGRATIONS.len()).unwrap()).collect();
    assert_eq!(versions, expected);
}

#[tokio::test]
async fn a_file_written_by_a_newer_alerter_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerter.db");
    drop(Store::open(Some(&path)).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')",
        [],
    )
    .unwrap();
    drop(conn);
    let err = Store::open(Some(&path)).err().unwrap().to_string();
    assert!(err.contains("schema version 99"), "{err}");
    assert!(err.contains("newer than this alerter"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_one_store_at_a_time_sends_to_a_channel_and_leads() {
    let Some(server) = TempPostgres::start_or_skip("store::tests::leases") else {
        return;
    };
    let url = server.create_database();
    let first = Store::open_postgres(&url).await.unwrap();
    let second = Store::open_postgres(&url).await.unwrap();
    first
        .enqueue(vec![message("a", Kind::Post, "a1")], 10)
        .await
        .unwrap();
    let taken = first.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&taken), [json!("a1")]);
    let other = second.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert!(other.heads.is_empty(), "#c's lease is the first store's");
    let ttl = std::time::Duration::from_secs(30);
    assert!(first.hold_lease("monitor", ttl).await.unwrap());
    assert!(!second.hold_lease("monitor", ttl).await.unwrap());
    assert!(first.hold_lease("monitor", ttl).await.unwrap(), "renewed");
    first.release_leases().await.unwrap();
    let moved = second.ready_heads(10, 8, Vec::new()).await.unwrap();
    assert_eq!(texts(&moved), [json!("a1")], "released at shutdown");
    assert!(second.hold_lease("monitor", ttl).await.unwrap());
    // A lease that ran out moves without a release.
    let short = std::time::Duration::from_millis(1);
    assert!(second.hold_lease("short", short).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(first.hold_lease("short", ttl).await.unwrap());
}

fn firing(key: &str) -> AlertState {
    use crate::alert::{Phase, Severity};
    AlertState {
        key: key.to_owned(),
        group: crate::lifecycle::group_of(key).to_owned(),
        severity: Severity::Critical,
        summary: "stale".to_owned(),
        labels: std::collections::BTreeMap::new(),
        source: "router".to_owned(),
        raised_ms: 1,
        phase: Phase::Firing,
        thread: Some(format!("alert/{key}")),
        notified_ms: Some(2),
        last_notified_ms: 2,
        ack: None,
        escalated: false,
        resolved_ms: None,
    }
}

/// A stored state with a phase this alerter does not know.
const FROM_THE_FUTURE: &str = r#"{"key":"queue_stale/MAIN","group":"queue_stale","severity":"critical","summary":"s","labels":{},"source":"r","raised_ms":1,"phase":"exploded","thread":null,"notified_ms":null,"last_notified_ms":0,"ack":null,"escalated":false,"resolved_ms":null}"#;

fn assert_unreadable(err: &StoreError) {
    let text = err.to_string();
    assert!(
        matches!(err, StoreError::UnreadableAlert { key, .. } if key == "queue_stale/MAIN"),
        "{err:?}"
    );
    assert!(
        text.contains("queue_stale/MAIN") && text.contains("exploded"),
        "{text}"
    );
}

#[tokio::test]
async fn alert_states_round_trip_typed_and_an_unknown_stored_state_is_a_clear_error_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerter.db");
    let store = Store::open(Some(&path)).unwrap();
    let alert = firing("queue_stale/MAIN");
    store.save_alert(&alert).await.unwrap();
    assert_eq!(store.active_alerts().await.unwrap(), [alert]);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE alerts SET state = ?1", [FROM_THE_FUTURE])
        .unwrap();
    drop(conn);
    let store = Store::open(Some(&path)).unwrap();
    assert_unreadable(&store.active_alerts().await.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_states_round_trip_typed_and_an_unknown_stored_state_is_a_clear_error_on_postgres() {
    let Some(server) = TempPostgres::start_or_skip("store::tests::unreadable_alert") else {
        return;
    };
    let url = server.create_database();
    let store = Store::open_postgres(&url).await.unwrap();
    let alert = firing("queue_stale/MAIN");
    store.save_alert(&alert).await.unwrap();
    assert_eq!(store.active_alerts().await.unwrap(), [alert]);
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE alerter.alerts SET state = $1")
        .bind(FROM_THE_FUTURE)
        .execute(&pool)
        .await
        .unwrap();
    assert_unreadable(&store.active_alerts().await.unwrap_err());
}

/// SQLite's plan for `sql` (its parameters bound to `params`) on a migrated file, a step per
/// line.
fn sqlite_plan(path: &std::path::Path, sql: &str, params: &[&str]) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut statement = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let steps = statement
        .query_map(rusqlite::params_from_iter(params), |row| {
            row.get::<_, String>(3)
        })
        .unwrap();
    steps.map(|step| step.unwrap() + "\n").collect()
}

#[tokio::test]
async fn the_lookups_made_for_every_outcome_use_an_index_not_a_scan_of_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alerter.db");
    drop(Store::open(Some(&path)).unwrap());
    for (sql, params, index) in [
        (
            super::sqlite::THREAD_STARTED,
            &["patch/p"][..],
            "outbox_thread",
        ),
        (
            super::sqlite::THREAD_CHANNEL,
            &["patch/p"][..],
            "outbox_thread",
        ),
        (
            super::sqlite::THREAD_COPIES,
            &["patch/p@", "patch/pA"][..],
            "outbox_thread",
        ),
        (super::sqlite::PENDING_IN, &["#c"][..], "outbox_channel"),
    ] {
        let plan = sqlite_plan(&path, sql, params);
        assert!(plan.contains(index), "{sql}: {plan}");
        assert!(!plan.contains("SCAN outbox"), "{sql}: {plan}");
    }
}

async fn a_threads_copies_are_the_threads_named_after_it_and_no_other(store: Store) {
    for (thread, channel) in [
        ("patch/p", "#a"),
        ("patch/p@#b", "#b"),
        ("patch/p@#c", "#c"),
        ("patch/pq", "#d"),
        ("patch/p-2@#e", "#e"),
        ("patch/pA", "#f"),
    ] {
        store
            .enqueue(
                vec![NewMessage {
                    channel: channel.to_owned(),
                    ..message(thread, Kind::Post, thread)
                }],
                1,
            )
            .await
            .unwrap();
    }
    let copies = store.thread_copies("patch/p").await.unwrap();
    assert_eq!(
        copies,
        [
            ("patch/p@#b".to_owned(), "#b".to_owned()),
            ("patch/p@#c".to_owned(), "#c".to_owned())
        ]
    );
}
