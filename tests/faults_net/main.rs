//! Partitions between the services (issue 24, point 4), with real mechanisms: the five real
//! binaries, each in a network namespace of its own joined by veth pairs to a bridge
//! ([`netns`]), `iptables` DROP rules for partitions and `tc netem` for delay and loss. Root
//! only, with `ip`, `iptables` and `tc`: elsewhere each test prints why and passes (CI runs as
//! root and installs iproute2 and iptables).
//!
//! For each of gateway↔router, router↔executor, router↔summarizer and summarizer↔alerter, one
//! short partition (2 s) and one longer than the lease (3 s here) and the outboxes' backoff
//! growth ([`LONG`]). Patches are submitted one at a time before, during and after each
//! partition (each retried with its id until it is accepted: 202), each appending its id to
//! `log.txt`. Asserted: every 202 ends exactly once (`succeeded`, one terminal event) with its
//! effect once (its id once in the log, one summary, one Slack message); FIFO (the log is in
//! submission order); the signal while a long partition lasts (below); recovery within
//! [`RECOVERY_BOUND`] after healing. Each run prints a table row: fault, accepted, lost,
//! doubled, detection time, recovery time.
//!
//! The signal of each partition, as the services give it today:
//! - gateway↔router: intake answers 503 problem+json with `Retry-After`;
//! - router↔executor: `executor_lost/MAIN` fires at the alerter (the router dropped the
//!   session), and is resolved after healing;
//! - router↔summarizer: the router's outcome outbox logs each failed delivery (a warning) and
//!   its `ghost_outbox_oldest_age_seconds{outbox="outcomes"}` grows (what `GhostOutboxLag`
//!   alerts on), back to 0 once the outbox drained after healing;
//! - summarizer↔alerter: the summarizer's notify outbox logs each failed delivery (the outbox
//!   engine's warning "delivery failed; will retry", an error after five tries) and `ghost_outbox_oldest_age_seconds{outbox="notifications"}`
//!   grows, back to 0 after healing (the alerter itself is the partitioned side, so the
//!   metric is the path that does not need it).
//!
//! Fencing ([`a_partitioned_executor_stops_applying_and_the_patch_still_ends_once`]): an
//! executor whose Work stream broke cancels the attempt it was running, which rolls back; the
//! router re-leases the patch after the lease expired and it ends exactly once.

mod netns;
mod system;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ghost_testkit::{try_wait_until, wait_for, wait_until};
use system::{Cluster, Submitted};

/// The short partition.
const SHORT: Duration = Duration::from_secs(2);
/// The long partition: longer than the lease (3 s), than the silent-peer bound (10 s: a
/// broken stream is noticed) and than several outbox backoff steps (0.5 s doubling).
const LONG: Duration = Duration::from_secs(20);
/// The router's lease in these tests.
const LEASE: &str = "3s";
/// Every patch accepted so far must have ended, with its summary and Slack message, within
/// this after a partition healed.
const RECOVERY_BOUND: Duration = Duration::from_secs(75);
/// A long partition must be signalled within this after it began.
const DETECTION_BOUND: Duration = Duration::from_secs(18);
/// Patches submitted before, during (at most) and after each partition.
const BEFORE: usize = 2;
const DURING: usize = 3;
const AFTER: usize = 2;
/// One submission is retried (same id) at most this long.
const SUBMIT_BOUND: Duration = Duration::from_secs(60);

/// Which two services are cut apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pair {
    GatewayRouter,
    RouterExecutor,
    RouterSummarizer,
    SummarizerAlerter,
}

impl Pair {
    fn services(self) -> (&'static str, &'static str) {
        match self {
            Self::GatewayRouter => ("gateway", "router"),
            Self::RouterExecutor => ("router", "executor"),
            Self::RouterSummarizer => ("router", "summarizer"),
            Self::SummarizerAlerter => ("summarizer", "alerter"),
        }
    }

    fn name(self) -> String {
        let (a, b) = self.services();
        format!("partition {a}↔{b}")
    }

    /// True once the partition is signalled (see the module doc); `refused` counts intake's
    /// loud refusals so far.
    async fn signalled(
        self,
        cluster: &Cluster,
        marks: &BTreeMap<&str, usize>,
        refused: usize,
    ) -> bool {
        let logged_since = |service: &str, needles: &[&str]| {
            let log = cluster.log(service);
            let start = marks.get(service).copied().unwrap_or(0).min(log.len());
            needles.iter().any(|needle| log[start..].contains(needle))
        };
        match self {
            Self::GatewayRouter => refused > 0,
            Self::RouterExecutor => cluster.alert_firing("executor_lost/MAIN").await,
            // The outbox engine's warnings (`outbox=outcomes`, `outbox=notifications`).
            Self::RouterSummarizer => {
                logged_since("router", ENGINE_RETRY)
                    && self.outbox_age(cluster).await.is_some_and(|age| age > 0.0)
            }
            Self::SummarizerAlerter => {
                logged_since("summarizer", ENGINE_RETRY)
                    && self.outbox_age(cluster).await.is_some_and(|age| age > 0.0)
            }
        }
    }

    /// For the partitions an outbox rides out: the sender's
    /// `ghost_outbox_oldest_age_seconds` of that outbox (what `GhostOutboxLag` alerts on).
    async fn outbox_age(self, cluster: &Cluster) -> Option<f64> {
        let (service, outbox) = match self {
            Self::RouterSummarizer => ("router", "outcomes"),
            Self::SummarizerAlerter => ("summarizer", "notifications"),
            Self::GatewayRouter | Self::RouterExecutor => return None,
        };
        cluster
            .outbox_gauge(service, "ghost_outbox_oldest_age_seconds", outbox)
            .await
    }
}

/// What `ghost_runtime::outbox` logs when a delivery fails and the row is kept for a retry.
const ENGINE_RETRY: &[&str] = &[
    "delivery failed; will retry",
    "receiver still failing; row kept",
];

/// One table row.
struct Row {
    fault: String,
    accepted: usize,
    lost: usize,
    doubled: usize,
    detection: Option<Duration>,
    recovery: Duration,
}

impl Row {
    fn print(&self) {
        let detection = self.detection.map_or_else(
            || "none".to_owned(),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        eprintln!(
            "| {} | {} | {} | {} | {} | {:.1} s |",
            self.fault,
            self.accepted,
            self.lost,
            self.doubled,
            detection,
            self.recovery.as_secs_f64()
        );
    }
}

/// The ids accepted in one test, in submission order.
#[derive(Default)]
struct Accepted {
    ids: Vec<String>,
}

impl Accepted {
    async fn submit(&mut self, cluster: &Cluster, id: String, commands: &[&str]) {
        cluster
            .submit_until_accepted(&id, commands, SUBMIT_BOUND)
            .await;
        self.ids.push(id);
    }
}

/// Waits (at most `bound`) until every id has ended, been summarized and told to Slack;
/// answers how long it took.
async fn settle(cluster: &Cluster, ids: &[String], bound: Duration, what: &str) -> Duration {
    let start = Instant::now();
    for id in ids {
        let awaited = format!(
            "{id} ended, summarized and told to Slack {what} (logs in {})",
            cluster.dir.display()
        );
        let left = bound.saturating_sub(start.elapsed());
        wait_until(&awaited, left, Duration::from_millis(100), async || {
            let (ended, summarized) = (cluster.ended(id).await, cluster.summarized(id).await);
            let slack = cluster.slack_messages_of(id);
            if ended && summarized && slack > 0 {
                Ok(())
            } else {
                Err((cluster.outcome(id).await, summarized, slack))
            }
        })
        .await;
    }
    start.elapsed()
}

/// Lost and doubled among `ids`, and FIFO: each ended `succeeded` with one terminal event,
/// its id once in the log, one Slack message; the log in submission order.
async fn check(cluster: &Cluster, ids: &[String]) -> (usize, usize) {
    let applied = cluster.applied();
    let (mut lost, mut doubled) = (0, 0);
    for id in ids {
        let outcome = cluster.outcome(id).await;
        let times = applied.iter().filter(|line| *line == id).count();
        let messages = cluster.slack_messages_of(id);
        match outcome.as_ref() {
            Some((status, 1)) if status == "succeeded" && times == 1 && messages == 1 => continue,
            Some((_, terminal)) if *terminal > 1 || times > 1 || messages > 1 => doubled += 1,
            _ => lost += 1,
        }
        eprintln!("{id}: {outcome:?}, {times} times in the log, {messages} Slack messages");
    }
    assert_eq!(
        applied, ids,
        "the log holds each accepted patch once, in submission order (FIFO)"
    );
    (lost, doubled)
}

/// One partition of `hold` between `pair`'s services, with patches before, during and after.
async fn partition(
    cluster: &Cluster,
    accepted: &mut Accepted,
    pair: Pair,
    hold: Duration,
    label: &str,
) -> Row {
    let (a, b) = pair.services();
    let first = accepted.ids.len();
    for n in 0..BEFORE {
        accepted
            .submit(cluster, format!("{label}-before-{n}"), &[])
            .await;
    }
    let marks: BTreeMap<&str, usize> = ["router", "summarizer"]
        .into_iter()
        .map(|service| (service, cluster.log(service).len()))
        .collect();
    cluster.net.partition(a, b);
    let start = Instant::now();
    let (mut detection, mut refused, mut during, mut pending) = (None, 0, 0, None::<String>);
    while start.elapsed() < hold {
        if during < DURING || pending.is_some() {
            let id = pending
                .take()
                .unwrap_or_else(|| format!("{label}-during-{during}"));
            match cluster.submit(&id, &[]).await {
                Submitted::Accepted => {
                    accepted.ids.push(id);
                    during += 1;
                }
                Submitted::Unavailable => {
                    refused += 1;
                    pending = Some(id);
                }
                Submitted::Other(_) => pending = Some(id),
            }
        }
        if detection.is_none() && pair.signalled(cluster, &marks, refused).await {
            detection = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if hold >= LONG {
        assert!(
            detection.is_some_and(|d| d <= DETECTION_BOUND),
            "{} of {hold:?} not signalled within {DETECTION_BOUND:?} (detected: {detection:?}); logs in {}",
            pair.name(),
            cluster.dir.display()
        );
    }
    cluster.net.heal(a, b);
    let healed = Instant::now();
    if let Some(id) = pending {
        accepted.submit(cluster, id, &[]).await;
    }
    settle(
        cluster,
        &accepted.ids[first..],
        RECOVERY_BOUND,
        "after healing",
    )
    .await;
    if pair == Pair::RouterExecutor && detection.is_some() {
        let left = RECOVERY_BOUND.saturating_sub(healed.elapsed());
        let what = "executor_lost/MAIN resolved after healing";
        wait_until(
            what,
            left,
            Duration::from_millis(200),
            async || match cluster.alert_firing("executor_lost/MAIN").await {
                true => Err("firing"),
                false => Ok(()),
            },
        )
        .await;
    }
    if matches!(pair, Pair::RouterSummarizer | Pair::SummarizerAlerter) && detection.is_some() {
        // The outbox drained: its age gauge (and so GhostOutboxLag) goes back to 0.
        let left = RECOVERY_BOUND.saturating_sub(healed.elapsed());
        let what = format!(
            "{}: the outbox age gauge back to 0 after healing",
            pair.name()
        );
        wait_until(&what, left, Duration::from_millis(200), async || match pair
            .outbox_age(cluster)
            .await
        {
            Some(0.0) => Ok(()),
            age => Err(age),
        })
        .await;
    }
    let recovery = healed.elapsed();
    for n in 0..AFTER {
        accepted
            .submit(cluster, format!("{label}-after-{n}"), &[])
            .await;
    }
    settle(
        cluster,
        &accepted.ids[first..],
        RECOVERY_BOUND,
        "after the partition",
    )
    .await;
    let ids = &accepted.ids[first..];
    let (lost, doubled) = check(cluster, &accepted.ids).await;
    let row = Row {
        fault: format!("{} for {} s", pair.name(), hold.as_secs()),
        accepted: ids.len(),
        lost,
        doubled,
        detection,
        recovery,
    };
    row.print();
    row
}

/// A short then a long partition between `pair`'s services.
async fn short_and_long(pair: Pair) {
    if let Some(why) = netns::unsupported() {
        eprintln!("skipped: {} needs network namespaces: {why}", pair.name());
        return;
    }
    let cluster = Cluster::start(LEASE).await;
    let mut accepted = Accepted::default();
    let mut rows = Vec::new();
    for (hold, label) in [(SHORT, "short"), (LONG, "long")] {
        rows.push(partition(&cluster, &mut accepted, pair, hold, label).await);
    }
    eprintln!("| fault | accepted | lost | doubled | detection | recovery |");
    eprintln!("|---|---|---|---|---|---|");
    for row in &rows {
        row.print();
        assert_eq!((row.lost, row.doubled), (0, 0), "{}", row.fault);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_gateway_and_router_loses_nothing() {
    short_and_long(Pair::GatewayRouter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_router_and_executor_loses_nothing() {
    short_and_long(Pair::RouterExecutor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_router_and_summarizer_loses_nothing() {
    short_and_long(Pair::RouterSummarizer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_between_summarizer_and_alerter_loses_nothing() {
    short_and_long(Pair::SummarizerAlerter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_and_loss_between_router_and_executor_lose_nothing() {
    if let Some(why) = netns::unsupported() {
        eprintln!("skipped: delay and loss need network namespaces: {why}");
        return;
    }
    let cluster = Cluster::start(LEASE).await;
    let how = cluster.net.degrade("router", "executor", 200, 10);
    eprintln!("router↔executor: {how}");
    let mut accepted = Accepted::default();
    let start = Instant::now();
    for n in 0..8 {
        accepted.submit(&cluster, format!("lossy-{n}"), &[]).await;
    }
    let ids = accepted.ids.clone();
    settle(&cluster, &ids, RECOVERY_BOUND, "under delay and loss").await;
    let took = start.elapsed();
    cluster.net.heal("router", "executor");
    let (lost, doubled) = check(&cluster, &ids).await;
    eprintln!("| fault | accepted | lost | doubled | detection | recovery |");
    eprintln!("|---|---|---|---|---|---|");
    Row {
        fault: format!("router↔executor {how}"),
        accepted: ids.len(),
        lost,
        doubled,
        detection: None,
        recovery: took,
    }
    .print();
    assert_eq!((lost, doubled), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_executor_stops_applying_and_the_patch_still_ends_once() {
    if let Some(why) = netns::unsupported() {
        eprintln!("skipped: fencing needs network namespaces: {why}");
        return;
    }
    let cluster = Cluster::start(LEASE).await;
    let mut accepted = Accepted::default();
    accepted.submit(&cluster, "fence-0".to_owned(), &[]).await;
    // The patch holds its attempt open (its edit made) until the hold file goes.
    let hold = cluster.scratch_file("hold");
    std::fs::write(&hold, "").expect("hold file");
    let wait = format!(
        "sh -c 'while [ -e {} ]; do sleep 0.1; done'",
        hold.display()
    );
    accepted
        .submit(&cluster, "fence-1".to_owned(), &[wait.as_str()])
        .await;
    wait_for("fence-1 to start applying", async || {
        let applied = cluster.applied();
        if applied.contains(&"fence-1".to_owned()) {
            Ok(())
        } else {
            Err(applied)
        }
    })
    .await;
    cluster.net.partition("router", "executor");
    let start = Instant::now();
    // The executor notices the broken stream (the silent-peer bound, 10 s) and rolls back.
    let bound = Duration::from_secs(25);
    let rolled_back = try_wait_until(
        "the partitioned executor to roll fence-1 back",
        bound,
        Duration::from_millis(100),
        async || {
            let applied = cluster.applied();
            if applied.contains(&"fence-1".to_owned()) {
                Err(applied)
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert!(
        rolled_back.is_ok(),
        "the partitioned executor kept applying fence-1 for {bound:?} after its lease was lost \
         (no fencing); executor log:\n{}",
        cluster.log("executor")
    );
    let fenced = start.elapsed();
    std::fs::remove_file(&hold).expect("remove the hold file");
    cluster.net.heal("router", "executor");
    let healed = Instant::now();
    let ids = accepted.ids.clone();
    settle(&cluster, &ids, RECOVERY_BOUND, "after healing").await;
    let recovery = healed.elapsed();
    for n in 0..2 {
        accepted
            .submit(&cluster, format!("fence-after-{n}"), &[])
            .await;
    }
    let ids = accepted.ids.clone();
    settle(&cluster, &ids, RECOVERY_BOUND, "after the partition").await;
    let (lost, doubled) = check(&cluster, &ids).await;
    eprintln!("| fault | accepted | lost | doubled | detection | recovery |");
    eprintln!("|---|---|---|---|---|---|");
    Row {
        fault: "partition router↔executor mid-apply (fencing: rolled back)".to_owned(),
        accepted: ids.len(),
        lost,
        doubled,
        detection: Some(fenced),
        recovery,
    }
    .print();
    assert_eq!((lost, doubled), (0, 0));
}
