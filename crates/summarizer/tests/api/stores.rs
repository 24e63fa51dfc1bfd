//! One suite, both stores: each test here runs twice, on the embedded SQLite index and on a
//! real PostgreSQL the test starts itself ([`TempPostgres`]: Debian's `initdb` and `pg_ctl` on
//! a free loopback port; skipped with a printed reason when PostgreSQL is not installed). Plus,
//! on PostgreSQL only, the server stopped mid-run and started again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ghost_proto::router::v1::PatchStatus;
use ghost_proto::summarizer::v1::ListRequest;
use ghost_runtime::config::Secret;
use ghost_testkit::postgres::TempPostgres;
use ghost_testkit::{disk, wait_for};
use summarizer::SummarizerConfig;
use summarizer::index::Index;

use crate::helpers::{
    FakeAlerter, T0, TestApp, created, get_error, main_one_per_page, outbox_tried, record,
    record_error, reserve_port, spawn_with, summary, test_config,
};
use crate::webhooks::{Receiver, subscription};

/// The store one run of a test uses: its data dir, and the database URL on PostgreSQL.
pub struct StoreUnderTest {
    dir: tempfile::TempDir,
    url: Option<String>,
    server: Option<Arc<TempPostgres>>,
}

impl StoreUnderTest {
    fn sqlite() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            url: None,
            server: None,
        }
    }

    /// A fresh database on a server of this test's own; `None` (printed) without PostgreSQL.
    fn postgres(test: &str) -> Option<Self> {
        let server = TempPostgres::start_or_skip(test)?;
        Some(Self {
            dir: tempfile::tempdir().unwrap(),
            url: Some(server.create_database()),
            server: Some(Arc::new(server)),
        })
    }

    /// [`test_config`] on this store.
    fn config(&self, alerter_url: Option<String>) -> SummarizerConfig {
        self.with_store(test_config(self.dir.path(), alerter_url))
    }

    /// `config` with `store.url` pointing at this store.
    fn with_store(&self, mut config: SummarizerConfig) -> SummarizerConfig {
        config.store.url = self.url.clone().map(Secret::new);
        config
    }

    /// The manifest of `target`: its file on SQLite, its row on PostgreSQL.
    async fn manifest(&self, target: &str) -> serde_json::Value {
        let bytes = match &self.url {
            None => std::fs::read(
                self.dir
                    .path()
                    .join(format!("summaries/{target}/patch-manifest.json")),
            )
            .unwrap(),
            Some(url) => {
                let pool = crate::helpers::summarizer_pool(url).await;
                let row = sqlx::query("SELECT body FROM manifests WHERE target = $1")
                    .bind(target)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                sqlx::Row::get(&row, 0)
            }
        };
        serde_json::from_slice(&bytes).unwrap()
    }

    async fn spawn(&self, alerter_url: Option<String>) -> TestApp {
        spawn_with(self.config(alerter_url)).await
    }

    /// A second summarizer on the same store, with a data dir of its own (`other_dir`).
    async fn spawn_replica(&self, other_dir: &std::path::Path) -> TestApp {
        spawn_with(self.with_store(test_config(other_dir, None))).await
    }
}

/// Runs `job` on the app's index from a blocking thread, as the store itself does.
async fn on_index<T: Send + 'static>(
    app: &TestApp,
    job: impl FnOnce(&Index) -> T + Send + 'static,
) -> T {
    let index = app.summaries.index().clone();
    tokio::task::spawn_blocking(move || job(&index))
        .await
        .unwrap()
}

/// Each named test function, run once per store: `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::StoreUnderTest::sqlite()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let test = concat!("stores::", stringify!($name), "::postgres");
                    let Some(store) = super::StoreUnderTest::postgres(test) else {
                        return;
                    };
                    super::$name(store).await;
                }
            }
        )*
    };
}

on_both_stores!(
    records_are_idempotent_listed_newest_first_and_served_after_a_restart,
    notifications_wait_in_the_outbox_across_a_restart_and_arrive_once,
    webhooks_are_delivered_in_order_and_a_full_outbox_dead_letters,
    a_database_newer_than_the_binary_is_refused,
    old_summaries_are_archived_then_expired_and_a_new_attempt_brings_one_back,
);

async fn old_summaries_are_archived_then_expired_and_a_new_attempt_brings_one_back(
    store: StoreUnderTest,
) {
    const DAY: i64 = 86_400_000;
    let mut app = store.spawn(None).await;
    for (id, days_ago) in [("old", 40), ("older", 400), ("fresh", 1)] {
        let mut request = record(id, 1, PatchStatus::Failed);
        request.outcome.as_mut().unwrap().finished_unix_ms = T0 - days_ago * DAY;
        app.client.record(request).await.unwrap();
    }
    let days = |n: u64| Duration::from_secs(n * 86_400);
    let report = app
        .summaries
        .archive(T0, Some(days(30)), None)
        .await
        .unwrap();
    assert_eq!((report.archived, report.expired), (2, 0));
    let got = summary(&mut app.client, "old").await;
    assert!(
        got.path.starts_with("summaries/MAIN/.archive/"),
        "{}",
        got.path
    );
    assert!(
        got.markdown.starts_with("# ❌ old failed"),
        "{}",
        got.markdown
    );

    // Retention: archived summaries past a year are deleted, row and bodies.
    let report = app
        .summaries
        .archive(T0, Some(days(30)), Some(days(365)))
        .await
        .unwrap();
    assert_eq!((report.archived, report.expired), (0, 1));
    let gone = get_error(&mut app.client, "older").await;
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // Its attempt stays recorded: a redelivery is a no-op.
    let mut replay = record("older", 1, PatchStatus::Failed);
    replay.outcome.as_mut().unwrap().finished_unix_ms = T0 - 400 * DAY;
    assert!(
        !app.client
            .record(replay)
            .await
            .unwrap()
            .into_inner()
            .created
    );

    // A new attempt of an archived summary brings it back to the live folder, history kept.
    assert!(created(&mut app.client, record("old", 2, PatchStatus::Succeeded)).await);
    let got = summary(&mut app.client, "old").await;
    assert_eq!(got.path, "summaries/MAIN/summary-old.md");
    assert!(
        got.markdown.contains("attempt 1: ❌ failed"),
        "{}",
        got.markdown
    );
    let manifest = store.manifest("MAIN").await;
    let ids: Vec<_> = manifest["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|patch| patch["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["fresh", "old"], "{manifest}");
    app.stop().await;
}

async fn records_are_idempotent_listed_newest_first_and_served_after_a_restart(
    store: StoreUnderTest,
) {
    let mut app = store.spawn(None).await;
    for (id, attempt, status) in [
        ("older", 1, PatchStatus::RolledBack),
        ("newer", 1, PatchStatus::Failed),
        ("newer", 3, PatchStatus::Succeeded),
    ] {
        let recorded = app
            .client
            .record(record(id, attempt, status))
            .await
            .unwrap()
            .into_inner();
        assert!(recorded.created, "{id} {attempt}");
    }
    // The same attempt again, with other content: nothing changes.
    let mut changed = record("older", 1, PatchStatus::Succeeded);
    changed.outcome.as_mut().unwrap().description = "something else".into();
    assert!(!created(&mut app.client, changed.clone()).await);
    let mut other = record("elsewhere", 1, PatchStatus::Failed);
    other.outcome.as_mut().unwrap().target = "CYOPS".into();
    app.client.record(other).await.unwrap();
    app.stop().await;

    let mut app = store.spawn(None).await;
    let again = app.client.record(changed).await.unwrap().into_inner();
    assert!(!again.created, "a redelivery after a restart is a no-op");
    let got = summary(&mut app.client, "newer").await;
    assert!(
        got.markdown.starts_with("# ✅ newer succeeded"),
        "{}",
        got.markdown
    );
    assert!(
        got.markdown.contains("attempt 1: ❌ failed"),
        "{}",
        got.markdown
    );
    assert_eq!(got.status, PatchStatus::Succeeded as i32);

    let page = main_one_per_page(&mut app.client, String::new()).await;
    assert_eq!(page.total, 2);
    assert_eq!(page.summaries[0].patch_id, "newer");
    assert_eq!(page.next_page_token, "1");
    let rest = main_one_per_page(&mut app.client, page.next_page_token).await;
    assert_eq!(rest.summaries[0].patch_id, "older");
    assert_eq!(rest.next_page_token, "");
    let failed = app
        .client
        .list(ListRequest {
            status: PatchStatus::Failed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = failed
        .summaries
        .iter()
        .map(|s| s.patch_id.as_str())
        .collect();
    assert_eq!(ids, ["elsewhere"]);
    let missing = get_error(&mut app.client, "never-recorded").await;
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // The manifest's changelog comes from the index: three recorded transitions of MAIN.
    let manifest = store.manifest("MAIN").await;
    let changelog = manifest["changelog"].as_array().unwrap();
    assert_eq!(changelog.len(), 3, "{manifest}");
    assert_eq!(changelog[2]["from"], "failed");
    assert_eq!(changelog[2]["to"], "succeeded");
    app.stop().await;
}

async fn notifications_wait_in_the_outbox_across_a_restart_and_arrive_once(store: StoreUnderTest) {
    let alerter_addr = reserve_port();
    let alerter_url = format!("http://{alerter_addr}");
    let mut app = store.spawn(Some(alerter_url.clone())).await;
    for (id, attempt, status) in [
        ("down-1", 1, PatchStatus::Succeeded),
        ("down-2", 1, PatchStatus::RolledBack),
        ("down-2", 2, PatchStatus::Failed),
    ] {
        app.client
            .record(record(id, attempt, status))
            .await
            .unwrap();
    }
    // A replay queues nothing more.
    app.client
        .record(record("down-1", 1, PatchStatus::Succeeded))
        .await
        .unwrap();
    let rows = outbox_tried(&app, 1).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    app.stop().await;

    let app = store.spawn(Some(alerter_url)).await;
    assert_eq!(on_index(&app, |index| index.outbox_len().unwrap()).await, 3);
    let alerter = FakeAlerter::start_on(alerter_addr).await;
    let received = alerter.wait_for(3).await;
    let mut keys: Vec<(String, u32)> = received
        .iter()
        .map(|n| (n.patch_id.clone(), n.attempt))
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ("down-1".to_owned(), 1),
            ("down-2".to_owned(), 1),
            ("down-2".to_owned(), 2)
        ]
    );
    wait_for("the outbox to empty", async || {
        match on_index(&app, |index| index.outbox_len().unwrap()).await {
            0 => Ok(()),
            left => Err(left),
        }
    })
    .await;
    app.stop().await;
}

async fn webhooks_are_delivered_in_order_and_a_full_outbox_dead_letters(store: StoreUnderTest) {
    let port = reserve_port().port();
    let url = format!("http://127.0.0.1:{port}/hooks/ghost");
    let config = SummarizerConfig {
        webhook_outbox_max: 2,
        ..crate::webhooks::config(
            store.dir.path(),
            vec![subscription(
                &url,
                &["patch.failed", "patch.succeeded"],
                &["MAIN"],
            )],
        )
    };
    // The receiver is down: the messages wait; the third finds the outbox full.
    let app = spawn_with(store.with_store(config.clone())).await;
    for (id, attempt, status) in [
        ("hook-1", 1, PatchStatus::Failed),
        ("hook-1", 2, PatchStatus::Succeeded),
        ("hook-2", 1, PatchStatus::Failed),
    ] {
        let recorded = app
            .client
            .clone()
            .record(record(id, attempt, status))
            .await
            .unwrap()
            .into_inner();
        assert!(
            recorded.created,
            "the record succeeds even with the outbox full"
        );
    }
    let (pending, dead) = on_index(&app, |index| {
        (
            index.webhooks_pending().unwrap(),
            index.webhook_dead_letters().unwrap(),
        )
    })
    .await;
    let pending: Vec<_> = pending
        .iter()
        .map(|row| (row.patch_id.as_str(), row.attempt))
        .collect();
    assert_eq!(pending, [("hook-1", 1), ("hook-1", 2)]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].patch_id, "hook-2");
    assert!(dead[0].reason.starts_with("outbox full"), "{dead:?}");
    app.stop().await;

    let receiver = Receiver::start(port, 0.0, 204).await;
    let app = spawn_with(store.with_store(config)).await;
    let received = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2, "{received:#?}");
    for message in &received {
        assert_eq!(message["verified"], true, "{message:#?}");
    }
    assert_eq!(received[0]["type"], "patch.failed");
    assert_eq!(received[1]["type"], "patch.succeeded");
    assert_eq!(received[1]["payload"]["data"]["attempt"], 2);
    wait_for("no webhook pending", async || {
        let pending = on_index(&app, |index| index.webhooks_pending().unwrap()).await;
        if pending.is_empty() {
            Ok(())
        } else {
            Err(pending.len())
        }
    })
    .await;
    let counts = on_index(&app, |index| index.webhook_counts().unwrap()).await;
    assert_eq!(counts, (0, 1));
    app.stop().await;
}

async fn a_database_newer_than_the_binary_is_refused(store: StoreUnderTest) {
    let app = store.spawn(None).await;
    app.stop().await;
    match &store.url {
        None => {
            let db = rusqlite::Connection::open(store.dir.path().join("summarizer.db")).unwrap();
            db.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')",
                [],
            )
            .unwrap();
        }
        Some(url) => {
            let pool = crate::helpers::summarizer_pool(url).await;
            sqlx::query(
                "INSERT INTO schema_migrations (version, name) VALUES (99, 'from the future')",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
    }
    let Err(err) = summarizer::App::build(store.config(None)).await else {
        panic!("a database at schema version 99 was opened");
    };
    let err = format!("{err:#}");
    assert!(err.contains("schema version 99"), "{err}");
    assert!(err.contains("newer than this summarizer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_degrades_the_summarizer_which_loses_nothing_and_resumes() {
    let test = "a_postgres_restart_mid_run_degrades_the_summarizer...";
    let Some(store) = StoreUnderTest::postgres(test) else {
        return;
    };
    let server = Arc::clone(store.server.as_ref().unwrap());
    let alerter = FakeAlerter::start().await;
    let mut app = store.spawn(Some(alerter.url.clone())).await;
    let http = format!("http://{}", app.http_addr);
    assert!(
        created(
            &mut app.client,
            record("p-before", 1, PatchStatus::Succeeded)
        )
        .await
    );
    assert_eq!(disk::readyz(&http).await.0, 200);

    // `pg_ctl stop -m fast`: the server ends every session and goes away.
    server.stop();
    let started = Instant::now();
    let refused = record_error(&mut app.client, record("p-during", 1, PatchStatus::Failed)).await;
    let detection = started.elapsed();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with(ghost_runtime::storage::UNAVAILABLE_PREFIX),
        "{refused:?}"
    );
    // The reason names the database, not the disk.
    assert!(
        refused
            .message()
            .ends_with("the summarizer's database is unreachable"),
        "{refused:?}"
    );
    let (status, body) = disk::readyz(&http).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "degraded: the summarizer's database is unreachable");
    let gauge = disk::degraded_gauge(&http, "summarizer").await;
    assert!(
        gauge.as_deref().is_some_and(|line| line.ends_with(" 1")),
        "{gauge:?}"
    );
    // Reads fail as UNAVAILABLE too (retryable), never as an internal error.
    let read = get_error(&mut app.client, "p-before").await;
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
    // Still down: refused again, at once (the degraded store does not try).
    let again = record_error(&mut app.client, record("p-during", 1, PatchStatus::Failed)).await;
    assert_eq!(again.code(), tonic::Code::Unavailable, "{again:?}");

    server.restart();
    let restarted = Instant::now();
    let healed = disk::within(Duration::from_secs(30), || {
        let http = http.clone();
        async move { disk::readyz(&http).await.0 == 200 }
    })
    .await;
    assert!(
        healed.is_some(),
        "readiness stayed 503 after PostgreSQL came back"
    );
    eprintln!(
        "PostgreSQL stopped: record refused after {} ms; back: ready after {} ms",
        detection.as_millis(),
        restarted.elapsed().as_millis()
    );

    // The refused record, retried as the router's outbox would, is recorded now; nothing
    // recorded before is lost; the alerter hears of both once.
    assert!(created(&mut app.client, record("p-during", 1, PatchStatus::Failed)).await);
    for id in ["p-before", "p-during"] {
        summary(&mut app.client, id).await;
    }
    let notified = alerter.wait_for(2).await;
    let mut ids: Vec<_> = notified.iter().map(|n| n.patch_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["p-before", "p-during"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_summarizers_on_one_database_serve_each_others_summaries_and_write_no_files() {
    let test = "two_summarizers_on_one_database_serve_each_others_summaries...";
    let Some(store) = StoreUnderTest::postgres(test) else {
        return;
    };
    let other_dir = tempfile::tempdir().unwrap();
    let mut first = store.spawn(None).await;
    let mut second = store.spawn_replica(other_dir.path()).await;
    assert!(
        created(
            &mut first.client,
            record("shared", 1, PatchStatus::RolledBack)
        )
        .await
    );
    // The second replica sees the attempt as recorded, and records the next one on top of it.
    assert!(
        !created(
            &mut second.client,
            record("shared", 1, PatchStatus::RolledBack)
        )
        .await
    );
    assert!(
        created(
            &mut second.client,
            record("shared", 2, PatchStatus::Succeeded)
        )
        .await
    );
    for app in [&mut first, &mut second] {
        let got = summary(&mut app.client, "shared").await;
        assert!(
            got.markdown.starts_with("# ✅ shared succeeded"),
            "{}",
            got.markdown
        );
        assert!(
            got.markdown.contains("attempt 1: ❌ rolled_back"),
            "{}",
            got.markdown
        );
    }
    let manifest = store.manifest("MAIN").await;
    assert_eq!(manifest["patches"][0]["attempts"], 2, "{manifest}");
    // No summary, artifact or manifest file in either data dir: the bodies are in the database.
    for dir in [store.dir.path(), other_dir.path()] {
        let files = crate::snapshot(dir);
        assert!(files.is_empty(), "{:?}", files.keys());
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_attempts_recorded_at_once_on_two_summarizers_both_stay_in_the_history() {
    let test = "two_attempts_recorded_at_once_on_two_summarizers...";
    let Some(store) = StoreUnderTest::postgres(test) else {
        return;
    };
    let other_dir = tempfile::tempdir().unwrap();
    let first = store.spawn(None).await;
    let second = store.spawn_replica(other_dir.path()).await;
    const PATCHES: usize = 20;
    let mut retried = 0;
    for n in 0..PATCHES {
        let id = format!("race-{n}");
        let mut calls = Vec::new();
        for (app, attempt, status) in [
            (&first, 1, PatchStatus::RolledBack),
            (&second, 2, PatchStatus::Succeeded),
        ] {
            let mut client = app.client.clone();
            let request = record(&id, attempt, status);
            calls.push(tokio::spawn(async move {
                // As the router's outbox does: UNAVAILABLE is tried again (bounded here).
                for tries in 0..50 {
                    match client.record(request.clone()).await {
                        Ok(response) => return (response.into_inner().created, tries),
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(status) => panic!("{status:?}"),
                    }
                }
                panic!("still refused after 50 tries");
            }));
        }
        for call in calls {
            let (created, tries) = call.await.unwrap();
            assert!(created);
            retried += tries;
        }
    }
    let rows = on_index(&first, |index| index.all().unwrap()).await;
    assert_eq!(rows.len(), PATCHES, "{rows:?}");
    for row in &rows {
        assert_eq!(row.attempts, 2, "an attempt was lost: {row:?}");
        assert_eq!(row.status, "succeeded", "{row:?}");
    }
    // The manifest, rewritten by both, ends with every patch's latest state.
    let manifest = store.manifest("MAIN").await;
    let patches = manifest["patches"].as_array().unwrap();
    assert_eq!(patches.len(), PATCHES, "{manifest}");
    for patch in patches {
        assert_eq!(patch["attempts"], 2, "a stale manifest: {patch}");
    }
    eprintln!("{PATCHES} patches, two attempts each at once: {retried} records retried");
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_store_url_or_an_unreachable_database_fails_the_start_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), None);
    config.store.url = Some(Secret::new("mysql://root:hunter2@127.0.0.1/ghost"));
    let Err(err) = summarizer::App::build(config).await else {
        panic!("a mysql:// store.url was accepted");
    };
    let err = format!("{err:#}");
    assert!(err.contains("store.url must be unset"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let test = "a_bad_store_url_or_an_unreachable_database...";
    let Some(server) = TempPostgres::start_or_skip(test) else {
        return;
    };
    let port = server.port();
    drop(server);
    let mut config = test_config(dir.path(), None);
    config.store.url = Some(Secret::new(format!(
        "postgres://postgres:hunter2@127.0.0.1:{port}/ghost"
    )));
    let started = Instant::now();
    let Err(err) = summarizer::App::build(config).await else {
        panic!("a summarizer started on a database that is not there");
    };
    let err = format!("{err:#}");
    assert!(
        err.contains(&format!(
            "cannot connect to the PostgreSQL server of store.url (127.0.0.1:{port})"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    eprintln!(
        "unreachable database: the start failed after {} ms: {err}",
        started.elapsed().as_millis()
    );
}
