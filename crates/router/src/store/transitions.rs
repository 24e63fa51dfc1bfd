//! Unit tests of the store's transitions, one suite on both stores: each test runs on
//! [`SqliteStore`] in a temp dir and on [`PgStore`] on a real PostgreSQL the test starts itself
//! ([`TempPostgres`]; skipped, with the reason printed, when PostgreSQL is not installed). A
//! lease and its fencing token, lease expiry and renewal, a stale token refused, dependents
//! released or failed with their dependency, pause and resume of a target.
//!
//! Rule time is a [`HandClock`] given to the store: it stands still until a test moves it, so
//! "30 s later" is one call and no test sleeps. (Not tokio's paused clock: with a real
//! PostgreSQL connection in flight, paused time would jump to the pool's timeouts.)

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ghost_core::{ApplyReport, Patch, Status};
use ghost_proto::router::v1 as wire;
use ghost_runtime::clock::RuleClock;
use ghost_testkit::postgres::TempPostgres;

use crate::store::{
    Completed, Delivery, Inserted, LeaseEnded, NewAlert, Outbox, PatchRecord, PgStore, RouterStore,
    SqliteStore,
};

/// Rule time the tests' clock starts at.
const START_MS: i64 = 1_700_000_000_000;
/// The lease length the tests take leases with.
const LEASE_MS: i64 = 30_000;
/// How long the replicas of the claims test hold a claimed outbox row.
const CLAIM_MS: i64 = 10_000;

/// Rule time that moves only when the test moves it ([`HandClock::advance`]).
#[derive(Debug)]
struct HandClock(AtomicI64);

impl HandClock {
    /// A clock at [`START_MS`].
    fn starting() -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(START_MS)))
    }

    /// Moves rule time `ms` forward.
    fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl RuleClock for HandClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The store one run of a test uses, and the clock it reads rule time from.
struct Subject {
    /// The store under test.
    store: Arc<dyn RouterStore>,
    /// Its rule clock.
    clock: Arc<HandClock>,
    _dir: tempfile::TempDir,
    _server: Option<TempPostgres>,
}

impl Subject {
    /// A SQLite store in a temp dir.
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = HandClock::starting();
        let store = SqliteStore::open_with_clock(&dir.path().join("router.db"), clock.clone())
            .expect("store");
        Self {
            store: Arc::new(store),
            clock,
            _dir: dir,
            _server: None,
        }
    }

    /// A PostgreSQL store on a server of this test's own; `None` (printed) without PostgreSQL.
    async fn postgres(test: &str) -> Option<Self> {
        let server = TempPostgres::start_or_skip(test)?;
        let url = server.create_database();
        let clock = HandClock::starting();
        let store = PgStore::connect(&url).await.expect("connect");
        Some(Self {
            store: Arc::new(store.with_clock(clock.clone())),
            clock,
            _dir: tempfile::tempdir().expect("tempdir"),
            _server: Some(server),
        })
    }

    /// Submits `id` on `target`, depending on `depends_on`; it must be new.
    async fn submit(&self, id: &str, target: &str, depends_on: &[&str]) {
        let inserted = self
            .store
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

    /// The next lease of `target` for `owner`, if any.
    async fn lease(&self, target: &str, owner: &str) -> Option<PatchRecord> {
        self.store
            .lease_next(target.to_owned(), owner.to_owned(), LEASE_MS, false)
            .await
            .expect("lease")
    }

    /// Reports `status` for `id` as `owner` under the lease `token`; the completion if the
    /// store accepted it.
    async fn complete(
        &self,
        id: &str,
        owner: &str,
        token: u64,
        status: Status,
    ) -> Option<Completed> {
        let error = if status == Status::Succeeded {
            ""
        } else {
            "it broke"
        };
        self.store
            .complete(
                id.to_owned(),
                owner.to_owned(),
                token,
                ApplyReport::ended(status, error),
            )
            .await
            .expect("complete")
    }

    /// Ends the leases whose deadline passed in rule time (3 attempts allowed).
    async fn end_expired(&self) -> Vec<LeaseEnded> {
        self.store
            .end_leases(None, "expired".to_owned(), 3)
            .await
            .expect("end")
    }

    async fn status_of(&self, id: &str) -> Status {
        self.store
            .get(id.to_owned())
            .await
            .expect("get")
            .expect("stored")
            .status
    }
}

/// Runs each named `async fn(Subject)` twice: `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::Subject::sqlite()).await;
                }

                #[tokio::test]
                async fn postgres() {
                    let test = concat!(module_path!(), "::postgres");
                    let Some(subject) = super::Subject::postgres(test).await else {
                        return;
                    };
                    super::$name(subject).await;
                }
            }
        )*
    };
}

on_both_stores!(
    a_lease_goes_to_the_oldest_patch_with_a_fresh_fencing_token,
    a_lease_expires_only_once_its_deadline_passed_on_the_rule_clock,
    renewing_a_lease_moves_its_deadline,
    a_stale_fencing_token_is_refused_after_the_patch_was_leased_again,
    a_dependent_patch_is_leased_only_after_its_dependency_succeeded,
    a_dependent_patch_fails_when_its_dependency_fails,
    a_paused_target_hands_out_nothing_until_resumed,
);

/// A patch writing one file on `target`, depending on `depends_on`.
pub(crate) fn patch(id: &str, target: &str, depends_on: &[&str]) -> Patch {
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

async fn a_lease_goes_to_the_oldest_patch_with_a_fresh_fencing_token(s: Subject) {
    s.submit("p-1", "MAIN", &[]).await;
    s.submit("p-2", "MAIN", &[]).await;
    let first = s.lease("MAIN", "exec#1").await.expect("a lease");
    assert_eq!(first.patch.id.as_str(), "p-1");
    assert_eq!(first.status, Status::Leased);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.leased_to, "exec#1");
    assert!(first.fencing_token > 0);
    // (One lease per target at a time: PostgreSQL refuses a second itself, for its replicas;
    // on SQLite the one router's routing never asks. So the first ends before the next.)
    s.complete("p-1", "exec#1", first.fencing_token, Status::Succeeded)
        .await
        .expect("accepted");
    let second = s.lease("MAIN", "exec#1").await.expect("a lease");
    assert_eq!(second.patch.id.as_str(), "p-2");
    assert!(
        second.fencing_token > first.fencing_token,
        "tokens only grow"
    );
    assert!(s.lease("MAIN", "exec#1").await.is_none(), "queue empty");
    assert!(s.lease("OTHER", "exec#1").await.is_none(), "other target");
}

async fn a_lease_expires_only_once_its_deadline_passed_on_the_rule_clock(s: Subject) {
    s.submit("p-1", "MAIN", &[]).await;
    s.lease("MAIN", "exec#1").await.expect("a lease");
    s.clock.advance(LEASE_MS - 1);
    let ended = s.end_expired().await;
    assert!(ended.is_empty(), "not yet: {ended:?}");
    assert_eq!(s.status_of("p-1").await, Status::Leased);
    s.clock.advance(2);
    let ended = s.end_expired().await;
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert!(!ended[0].lost, "requeued, attempts left");
    assert_eq!(s.status_of("p-1").await, Status::Queued);
}

async fn renewing_a_lease_moves_its_deadline(s: Subject) {
    s.submit("p-1", "MAIN", &[]).await;
    let leased = s.lease("MAIN", "exec#1").await.expect("a lease");
    s.clock.advance(20_000);
    s.store
        .renew("exec#1".to_owned(), vec![leased.fencing_token], LEASE_MS)
        .await
        .expect("renew");
    s.clock.advance(20_000);
    let ended = s.end_expired().await;
    assert!(ended.is_empty(), "renewed 20 s ago: {ended:?}");
}

async fn a_stale_fencing_token_is_refused_after_the_patch_was_leased_again(s: Subject) {
    s.submit("p-1", "MAIN", &[]).await;
    let stale = s.lease("MAIN", "exec#1").await.expect("a lease");
    s.clock.advance(LEASE_MS + 1);
    s.end_expired().await;
    let live = s.lease("MAIN", "exec#2").await.expect("leased again");
    assert_eq!(live.attempt, 2);
    assert!(live.fencing_token > stale.fencing_token);
    // The old holder, its old token: refused, whether progress or result.
    let progressed = s
        .store
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
    let completed = s
        .complete("p-1", "exec#1", stale.fencing_token, Status::Succeeded)
        .await;
    assert!(completed.is_none(), "stale token refused");
    // The live token, but not its holder: refused too.
    let foreign = s
        .complete("p-1", "exec#1", live.fencing_token, Status::Succeeded)
        .await;
    assert!(foreign.is_none(), "someone else's lease refused");
    assert_eq!(s.status_of("p-1").await, Status::Leased);
    let done = s
        .complete("p-1", "exec#2", live.fencing_token, Status::Succeeded)
        .await
        .expect("live token accepted");
    assert_eq!(done.record.status, Status::Succeeded);
}

async fn a_dependent_patch_is_leased_only_after_its_dependency_succeeded(s: Subject) {
    s.submit("base", "MAIN", &[]).await;
    s.submit("next", "SIDE", &["base"]).await;
    assert!(s.lease("SIDE", "side#1").await.is_none(), "waits for base");
    let base = s.lease("MAIN", "main#1").await.expect("base leased");
    assert!(
        s.lease("SIDE", "side#1").await.is_none(),
        "base still running"
    );
    let done = s
        .complete("base", "main#1", base.fencing_token, Status::Succeeded)
        .await
        .expect("accepted");
    assert_eq!(done.dependent_targets, vec!["SIDE".to_owned()]);
    let next = s.lease("SIDE", "side#1").await.expect("now runnable");
    assert_eq!(next.patch.id.as_str(), "next");
}

async fn a_dependent_patch_fails_when_its_dependency_fails(s: Subject) {
    s.submit("base", "MAIN", &[]).await;
    s.submit("next", "MAIN", &["base"]).await;
    s.submit("last", "MAIN", &["next"]).await;
    let base = s.lease("MAIN", "main#1").await.expect("base leased");
    let done = s
        .complete("base", "main#1", base.fencing_token, Status::Failed)
        .await
        .expect("accepted");
    assert!(done.dependent_targets.is_empty());
    assert_eq!(s.status_of("next").await, Status::Failed);
    assert_eq!(s.status_of("last").await, Status::Failed, "down the chain");
    assert!(s.lease("MAIN", "main#1").await.is_none());
    // Submitted after its dependency failed: fails at once.
    s.submit("late", "MAIN", &["base"]).await;
    assert_eq!(s.status_of("late").await, Status::Failed);
}

async fn a_paused_target_hands_out_nothing_until_resumed(s: Subject) {
    s.submit("p-1", "MAIN", &[]).await;
    s.submit("o-1", "OTHER", &[]).await;
    s.store
        .set_paused("MAIN".to_owned(), true)
        .await
        .expect("pause");
    assert!(s.lease("MAIN", "exec#1").await.is_none(), "paused");
    assert!(
        s.lease("OTHER", "exec#1").await.is_some(),
        "others unaffected"
    );
    let targets = s.store.targets().await.expect("targets");
    let main = targets
        .iter()
        .find(|row| row.target == "MAIN")
        .expect("MAIN");
    assert!(main.paused);
    assert_eq!(main.queued, 1);
    s.store
        .set_paused("MAIN".to_owned(), false)
        .await
        .expect("resume");
    let leased = s.lease("MAIN", "exec#1").await.expect("resumed");
    assert_eq!(leased.patch.id.as_str(), "p-1");
}

/// The rows of `outbox` that `store` claims now.
async fn claimed(store: &PgStore, outbox: Outbox) -> Vec<i64> {
    match outbox {
        Outbox::Outcomes => store.outbox_due(10).await.expect("claim outcomes"),
        Outbox::Alerts => {
            let rows = store.alerts_due(10).await.expect("claim alerts");
            return rows.iter().map(|row| row.id).collect();
        }
    }
    .iter()
    .map(|row| row.id)
    .collect()
}

/// Replica A claims a row of each outbox and stalls; its claim runs out and replica B takes the
/// row over. A's late release, and its late retry, must leave B's claim alone: else replica
/// C claims the row and sends it while B still is. PostgreSQL only (one SQLite router keeps
/// no claims).
#[tokio::test]
async fn a_replica_whose_claim_ran_out_neither_releases_nor_retries_the_row_taken_over() {
    let test = "store::transitions::claims_of_a_replica_taken_over";
    let Some(server) = TempPostgres::start_or_skip(test) else {
        return;
    };
    let url = server.create_database();
    let clock = HandClock::starting();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let store = PgStore::connect(&url).await.expect("connect");
        let claim = std::time::Duration::from_millis(CLAIM_MS.unsigned_abs());
        replicas.push(store.with_clock(clock.clone()).with_claim_timeout(claim));
    }
    let [a, b, c] = &replicas[..] else {
        unreachable!("three replicas")
    };
    // An outcome (a patch cancelled while queued) and an alert, one row each.
    let queued = patch("p-1", "MAIN", &[]);
    let key = String::new();
    a.insert(queued, "gateway".to_owned(), key.clone(), Vec::new(), key)
        .await
        .expect("insert");
    a.cancel_queued("p-1".to_owned(), "test".to_owned())
        .await
        .expect("cancel");
    let alert = NewAlert {
        key: "executor_lost/MAIN".to_owned(),
        severity: "critical",
        summary: "no executor".to_owned(),
        labels: Vec::new(),
    };
    assert!(a.raise_alert(alert).await.expect("raise"));

    for outbox in [Outbox::Outcomes, Outbox::Alerts] {
        let rows = claimed(a, outbox).await;
        assert_eq!(rows.len(), 1, "{outbox:?}: A claims the row");
        assert!(
            claimed(b, outbox).await.is_empty(),
            "{outbox:?}: A's claim holds"
        );
        clock.advance(CLAIM_MS + 1);
        assert_eq!(claimed(b, outbox).await, rows, "{outbox:?}: B takes over");
        a.release_claims(outbox, rows.clone())
            .await
            .expect("release");
        assert!(
            claimed(c, outbox).await.is_empty(),
            "{outbox:?}: A's late release dropped B's claim"
        );
        let retry = rows.iter().map(|id| (*id, Delivery::RetryIn(0))).collect();
        a.settle(outbox, retry).await.expect("settle");
        assert!(
            claimed(c, outbox).await.is_empty(),
            "{outbox:?}: A's late retry dropped B's claim"
        );
        // B's own release frees the row at once.
        b.release_claims(outbox, rows.clone())
            .await
            .expect("release");
        assert_eq!(claimed(c, outbox).await, rows, "{outbox:?}: released by B");
        let delivered = rows.iter().map(|id| (*id, Delivery::Delivered)).collect();
        c.settle(outbox, delivered).await.expect("settle");
        clock.advance(CLAIM_MS + 1);
        assert!(claimed(a, outbox).await.is_empty(), "{outbox:?}: delivered");
    }
}
