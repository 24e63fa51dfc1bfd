//! Unit tests of the SQLite store's transitions, on a temp dir and tokio's paused clock (no
//! sleeps): a lease and its fencing token, lease expiry, a stale token refused, dependents
//! released or failed with their dependency, pause and resume of a target.

use std::time::Duration;

use ghost_core::{ApplyReport, Patch, Status};
use ghost_proto::router::v1 as wire;
use ghost_runtime::clock::TokioClock;

use crate::store::{Inserted, PatchRecord, RouterStore, SqliteStore};

/// Rule time the tests' clock starts at.
const START_MS: i64 = 1_700_000_000_000;
/// The lease length the tests take leases with.
const LEASE_MS: i64 = 30_000;

fn patch(id: &str, target: &str, depends_on: &[&str]) -> Patch {
    Patch::try_from(wire::Patch {
        id: id.to_owned(),
        target: target.to_owned(),
        description: "store transition test".to_owned(),
        priority: wire::Priority::Normal as i32,
        depends_on: depends_on.iter().map(|dep| (*dep).to_owned()).collect(),
        edits: vec![wire::Edit {
            op: Some(wire::edit::Op::Write(wire::WriteFile {
                path: "a.txt".to_owned(),
                contents: "a\n".to_owned(),
            })),
        }],
        ..wire::Patch::default()
    })
    .expect("valid patch")
}

/// A store on a clock that moves only with tokio's (paused) time.
fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open_with_clock(&dir.path().join("router.db"), TokioClock::shared(START_MS))
        .expect("store")
}

async fn submit(store: &SqliteStore, id: &str, target: &str, depends_on: &[&str]) {
    let inserted = store
        .insert(
            patch(id, target, depends_on),
            "gateway".to_owned(),
            String::new(),
            Vec::new(),
            String::new(),
        )
        .await
        .expect("insert");
    assert!(matches!(inserted, Inserted::Created(_)), "{id} created");
}

async fn lease(store: &SqliteStore, target: &str, owner: &str) -> Option<PatchRecord> {
    store
        .lease_next(target.to_owned(), owner.to_owned(), LEASE_MS, false)
        .await
        .expect("lease")
}

async fn status_of(store: &SqliteStore, id: &str) -> Status {
    store
        .get(id.to_owned())
        .await
        .expect("get")
        .expect("stored")
        .status
}

#[tokio::test(start_paused = true)]
async fn a_lease_goes_to_the_oldest_patch_with_a_fresh_fencing_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "p-1", "MAIN", &[]).await;
    submit(&store, "p-2", "MAIN", &[]).await;
    let first = lease(&store, "MAIN", "exec#1").await.expect("a lease");
    assert_eq!(first.patch.id.as_str(), "p-1");
    assert_eq!(first.status, Status::Leased);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.leased_to, "exec#1");
    assert!(first.fencing_token > 0);
    let second = lease(&store, "MAIN", "exec#1").await.expect("a lease");
    assert_eq!(second.patch.id.as_str(), "p-2");
    assert!(
        second.fencing_token > first.fencing_token,
        "tokens only grow"
    );
    assert!(
        lease(&store, "MAIN", "exec#1").await.is_none(),
        "queue empty"
    );
    assert!(
        lease(&store, "OTHER", "exec#1").await.is_none(),
        "other target"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_expires_only_once_its_deadline_passed_on_the_rule_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "p-1", "MAIN", &[]).await;
    lease(&store, "MAIN", "exec#1").await.expect("a lease");
    tokio::time::advance(Duration::from_millis(
        u64::try_from(LEASE_MS - 1).expect("ms"),
    ))
    .await;
    let ended = store
        .end_leases(None, "expired".to_owned(), 3)
        .await
        .expect("end");
    assert!(ended.is_empty(), "not yet: {ended:?}");
    assert_eq!(status_of(&store, "p-1").await, Status::Leased);
    tokio::time::advance(Duration::from_millis(2)).await;
    let ended = store
        .end_leases(None, "expired".to_owned(), 3)
        .await
        .expect("end");
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(!ended[0].lost, "requeued, attempts left");
    assert_eq!(status_of(&store, "p-1").await, Status::Queued);
}

#[tokio::test(start_paused = true)]
async fn renewing_a_lease_moves_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "p-1", "MAIN", &[]).await;
    let leased = lease(&store, "MAIN", "exec#1").await.expect("a lease");
    tokio::time::advance(Duration::from_millis(20_000)).await;
    store
        .renew("exec#1".to_owned(), vec![leased.fencing_token], LEASE_MS)
        .await
        .expect("renew");
    tokio::time::advance(Duration::from_millis(20_000)).await;
    let ended = store
        .end_leases(None, "expired".to_owned(), 3)
        .await
        .expect("end");
    assert!(ended.is_empty(), "renewed 20 s ago: {ended:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stale_fencing_token_is_refused_after_the_patch_was_leased_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "p-1", "MAIN", &[]).await;
    let stale = lease(&store, "MAIN", "exec#1").await.expect("a lease");
    tokio::time::advance(Duration::from_millis(
        u64::try_from(LEASE_MS + 1).expect("ms"),
    ))
    .await;
    store
        .end_leases(None, "expired".to_owned(), 3)
        .await
        .expect("end");
    let live = lease(&store, "MAIN", "exec#2").await.expect("leased again");
    assert_eq!(live.attempt, 2);
    assert!(live.fencing_token > stale.fencing_token);
    let report = ApplyReport::ended(Status::Succeeded, "");
    // The old holder, its old token: refused, whether progress or result.
    let progressed = store
        .progress(
            "p-1".to_owned(),
            "exec#1".to_owned(),
            stale.fencing_token,
            Status::Applying,
            String::new(),
        )
        .await
        .expect("progress");
    assert!(!progressed);
    let completed = store
        .complete(
            "p-1".to_owned(),
            "exec#1".to_owned(),
            stale.fencing_token,
            report.clone(),
        )
        .await
        .expect("complete");
    assert!(completed.is_none(), "stale token refused");
    // The live token, but not its holder: refused too.
    let foreign = store
        .complete(
            "p-1".to_owned(),
            "exec#1".to_owned(),
            live.fencing_token,
            report.clone(),
        )
        .await
        .expect("complete");
    assert!(foreign.is_none(), "someone else's lease refused");
    assert_eq!(status_of(&store, "p-1").await, Status::Leased);
    let done = store
        .complete(
            "p-1".to_owned(),
            "exec#2".to_owned(),
            live.fencing_token,
            report,
        )
        .await
        .expect("complete")
        .expect("live token accepted");
    assert_eq!(done.record.status, Status::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_dependent_patch_is_leased_only_after_its_dependency_succeeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "base", "MAIN", &[]).await;
    submit(&store, "next", "SIDE", &["base"]).await;
    assert!(
        lease(&store, "SIDE", "side#1").await.is_none(),
        "waits for base"
    );
    let base = lease(&store, "MAIN", "main#1").await.expect("base leased");
    assert!(
        lease(&store, "SIDE", "side#1").await.is_none(),
        "base still running"
    );
    let done = store
        .complete(
            "base".to_owned(),
            "main#1".to_owned(),
            base.fencing_token,
            ApplyReport::ended(Status::Succeeded, ""),
        )
        .await
        .expect("complete")
        .expect("accepted");
    assert_eq!(done.dependent_targets, vec!["SIDE".to_owned()]);
    let next = lease(&store, "SIDE", "side#1").await.expect("now runnable");
    assert_eq!(next.patch.id.as_str(), "next");
}

#[tokio::test(start_paused = true)]
async fn a_dependent_patch_fails_when_its_dependency_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "base", "MAIN", &[]).await;
    submit(&store, "next", "MAIN", &["base"]).await;
    submit(&store, "last", "MAIN", &["next"]).await;
    let base = lease(&store, "MAIN", "main#1").await.expect("base leased");
    let done = store
        .complete(
            "base".to_owned(),
            "main#1".to_owned(),
            base.fencing_token,
            ApplyReport::ended(Status::Failed, "it broke"),
        )
        .await
        .expect("complete")
        .expect("accepted");
    assert!(done.dependent_targets.is_empty());
    assert_eq!(status_of(&store, "next").await, Status::Failed);
    assert_eq!(
        status_of(&store, "last").await,
        Status::Failed,
        "down the chain"
    );
    assert!(lease(&store, "MAIN", "main#1").await.is_none());
    // Submitted after its dependency failed: fails at once.
    submit(&store, "late", "MAIN", &["base"]).await;
    assert_eq!(status_of(&store, "late").await, Status::Failed);
}

#[tokio::test(start_paused = true)]
async fn a_paused_target_hands_out_nothing_until_resumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&dir);
    submit(&store, "p-1", "MAIN", &[]).await;
    submit(&store, "o-1", "OTHER", &[]).await;
    store
        .set_paused("MAIN".to_owned(), true)
        .await
        .expect("pause");
    assert!(lease(&store, "MAIN", "exec#1").await.is_none(), "paused");
    assert!(
        lease(&store, "OTHER", "exec#1").await.is_some(),
        "others unaffected"
    );
    let targets = store.targets().await.expect("targets");
    let main = targets
        .iter()
        .find(|row| row.target == "MAIN")
        .expect("MAIN");
    assert!(main.paused);
    assert_eq!(main.queued, 1);
    store
        .set_paused("MAIN".to_owned(), false)
        .await
        .expect("resume");
    let leased = lease(&store, "MAIN", "exec#1").await.expect("resumed");
    assert_eq!(leased.patch.id.as_str(), "p-1");
}
