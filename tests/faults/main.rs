//! Storage faults, with real mechanisms: the real alerter, router, executor and gateway
//! binaries, and the router's disk failing under them.
//!
//! - **Full disk:** the router's data dir on a size-limited tmpfs (root only: skipped with a
//!   message otherwise), filled by a filler file, then freed.
//! - **EIO, failing fsync, stalling fsync:** `disk-fault.c` (built with `cc` here) preloaded
//!   into the router, switched at run time by a control file.
//!
//! For each fault, patches are submitted before, during and after it, one at a time (each
//! retried with the same id until it is accepted: 202), each appending its id to its target's
//! `log.txt`. Two targets: `MAIN`'s executor runs throughout (slowed, so patches are queued and
//! one is being applied when the fault starts: its result must be stored once the disk heals),
//! `LATE`'s executor starts only once the fault has begun (its first leases fail while the
//! target is free: the dispatcher must retry them by itself). Once the disk heals, every patch
//! accepted so far must end with no new submission to nudge the router (nothing stranded);
//! then more are submitted.
//! It asserts: every 202 ends exactly once (`succeeded`, one terminal event) with its effect
//! once (its id once in the log); FIFO per target (each log is in submission order); while the fault lasts
//! the router's `/readyz` answers 503 with the reason, `storage_unavailable/router` fires at
//! the alerter, and intake answers 503 problem+json with `Retry-After` and a detail naming the
//! disk; after it heals, the router is ready again within [`RECOVERY_BOUND`], the alert is
//! resolved and the patches run. It prints one table row per fault.

mod system;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ghost_e2e::TERMINAL;
use ghost_testkit::disk::{Tmpfs, build_disk_fault_shim, fill, is_root};
use ghost_testkit::{POLL_INTERVAL, try_wait_until, wait_until};
use system::{LATE, MAIN, RouterEnv, Submitted, System};
use tokio::sync::Mutex;

/// Patches submitted to `MAIN` just before the fault (some are still queued when it starts).
const BEFORE: usize = 12;
/// Patches submitted to `LATE` before the fault (all queued: no executor serves it yet).
const LATE_BEFORE: usize = 4;
/// Patches submitted after it healed.
const AFTER: usize = 8;
/// How long the fault lasts once it was detected.
const HOLD: Duration = Duration::from_secs(3);
/// The fault must be detected (router `/readyz` 503) within this after it started; a stall is
/// detected after the router's 5 s stall limit.
const DETECTION_BOUND: Duration = Duration::from_secs(15);
/// The router must be ready again within this after the fault healed.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Every patch accepted before the disk healed must have ended within this after it healed,
/// with nothing else submitted meanwhile.
const UNSTRANDED_BOUND: Duration = Duration::from_secs(20);
/// Every accepted patch must have ended within this at the end.
const SETTLE_BOUND: Duration = Duration::from_secs(90);
/// One submission is retried (same id) at most this long.
const SUBMIT_BOUND: Duration = Duration::from_secs(60);

const ALERT: &str = "storage_unavailable/router";

/// How a fault is made and healed.
enum Fault {
    /// The data dir is a tmpfs of this many MiB; a filler file takes the rest.
    FullDisk { mount: PathBuf },
    /// The shim's control file: the word written to start the fault.
    Shim {
        control: PathBuf,
        word: &'static str,
    },
}

impl Fault {
    fn start(&self) {
        match self {
            Fault::FullDisk { mount } => {
                fill(mount);
            }
            Fault::Shim { control, word } => std::fs::write(control, word).expect("control"),
        }
    }

    fn heal(&self) {
        match self {
            Fault::FullDisk { mount } => std::fs::remove_file(mount.join("filler")).expect("free"),
            Fault::Shim { control, .. } => std::fs::write(control, "ok").expect("control"),
        }
    }
}

/// One row of the table.
struct Row {
    fault: &'static str,
    accepted: usize,
    lost: usize,
    doubled: usize,
    intake_503: usize,
    detection: Duration,
    recovery: Duration,
}

/// What the submitter saw.
#[derive(Default)]
struct Seen {
    /// (target, id) accepted, in order.
    accepted: Vec<(String, String)>,
    /// 503 answers, and those whose detail named the disk.
    unavailable: usize,
    unavailable_with_reason: usize,
}

/// Submits `id` until it is accepted; every refusal must be a 503 problem with Retry-After.
/// A hand-written loop: it runs in a spawned task, and `ghost_testkit::wait_until`'s future
/// (an async closure's) is not `Send` there (a higher-ranked lifetime error).
async fn submit_until_accepted(system: &System, target: &str, id: &str, seen: &Mutex<Seen>) {
    let started = Instant::now();
    loop {
        match system.submit(target, id).await {
            Submitted::Accepted => {
                seen.lock()
                    .await
                    .accepted
                    .push((target.to_owned(), id.to_owned()));
                return;
            }
            Submitted::Unavailable {
                retry_after,
                problem,
                detail,
            } => {
                assert!(retry_after.is_some(), "503 for {id} without Retry-After");
                assert!(problem, "503 for {id} is not problem+json");
                let mut seen = seen.lock().await;
                seen.unavailable += 1;
                if detail.contains("router's disk") {
                    seen.unavailable_with_reason += 1;
                }
            }
            Submitted::NoAnswer => {}
            Submitted::Other(code, body) => {
                panic!("submit of {id} answered {code} (not 202 or 503): {body}")
            }
        }
        assert!(
            started.elapsed() < SUBMIT_BOUND,
            "{id} not accepted within {SUBMIT_BOUND:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Polls `check` every 20 ms until it holds; the time it took, or a panic naming `what`.
async fn until<F, Fut>(what: &str, bound: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    wait_until(what, bound, Duration::from_millis(20), async || {
        if check().await { Ok(()) } else { Err(()) }
    })
    .await;
    start.elapsed()
}

/// Waits until every patch in `accepted` has ended: `succeeded`, with one terminal event;
/// returns those that did not end within `bound` (each is looked at at least once).
async fn ended(system: &System, accepted: &[(String, String)], bound: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut open = Vec::new();
    for (_, id) in accepted {
        let left = bound.saturating_sub(started.elapsed()).max(LOOK);
        let what = format!("{id} to end");
        let outcome = try_wait_until(&what, left, POLL_INTERVAL, async || {
            match system.outcome(id).await {
                Some((status, terminal)) if TERMINAL.contains(&status.as_str()) => {
                    Ok((status, terminal))
                }
                other => Err(other),
            }
        })
        .await;
        match outcome {
            Ok((status, terminal)) => {
                assert_eq!(status, "succeeded", "{id} ended {status}");
                assert_eq!(terminal, 1, "{id} has {terminal} terminal events");
            }
            Err(_) => open.push(id.clone()),
        }
    }
    open
}

/// Time enough for one look at a patch's outcome.
const LOOK: Duration = Duration::from_secs(5);

async fn scenario(name: &'static str, mut system: System, fault: Fault) -> Row {
    let seen = Arc::new(Mutex::new(Seen::default()));
    for n in 0..LATE_BEFORE {
        submit_until_accepted(&system, LATE, &format!("{name}-late-{n:02}"), &seen).await;
    }
    for n in 0..BEFORE {
        submit_until_accepted(&system, MAIN, &format!("{name}-before-{n:02}"), &seen).await;
    }

    // The fault starts while the last of those are still queued; then LATE's executor comes;
    // a submitter keeps going.
    fault.start();
    let applied_at_fault = system.applied(MAIN).len();
    assert!(
        applied_at_fault < BEFORE,
        "{name}: every patch before the fault had run already; none was queued across it"
    );
    system.start_late_executor();
    let system = Arc::new(system);
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicUsize::new(0));
    let submitter = {
        let (system, seen, stop, during) = (
            Arc::clone(&system),
            Arc::clone(&seen),
            Arc::clone(&stop),
            Arc::clone(&during),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < 1000 {
                submit_until_accepted(&system, MAIN, &format!("{name}-during-{n:03}"), &seen).await;
                during.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
        })
    };
    let detection = until(
        "router /readyz 503 after the fault",
        DETECTION_BOUND,
        || async { system.router_ready().await.0 == 503 },
    )
    .await;
    let (code, body) = system.router_ready().await;
    assert!(
        code != 503 || body.contains("degraded: the router's disk"),
        "readyz body names the reason: {body:?}"
    );
    until(
        "the storage alert at the alerter",
        Duration::from_secs(10),
        || system.alert_firing(ALERT),
    )
    .await;
    until(
        "intake 503 naming the disk",
        Duration::from_secs(15),
        || async { seen.lock().await.unavailable_with_reason > 0 },
    )
    .await;
    tokio::time::sleep(HOLD).await;
    // Still degraded while the fault lasts.
    assert_eq!(
        system.router_ready().await.0,
        503,
        "ready again before the fault healed"
    );
    assert!(system.alert_firing(ALERT).await, "the alert stopped firing");
    let (ready_during, _) = system.router_ready().await;

    fault.heal();
    let recovery = until(
        "router ready again after healing",
        RECOVERY_BOUND,
        || async { system.router_ready().await.0 == 200 },
    )
    .await;
    until(
        "the storage alert resolved",
        Duration::from_secs(15),
        || async { !system.alert_firing(ALERT).await },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    submitter.await.expect("submitter");

    // Nothing stranded: what was accepted until now ends with nothing new submitted.
    let so_far = seen.lock().await.accepted.clone();
    let stranded = ended(&system, &so_far, UNSTRANDED_BOUND).await;
    assert!(
        stranded.is_empty(),
        "{name}: accepted, not ended {UNSTRANDED_BOUND:?} after the disk healed: {stranded:?} \
         (logs in {})",
        system.dir.display()
    );
    for n in 0..AFTER {
        let target = if n % 2 == 0 { MAIN } else { LATE };
        submit_until_accepted(&system, target, &format!("{name}-after-{n:02}"), &seen).await;
    }

    // Every 202 ends exactly once, with its effect once, in submission order per target.
    let accepted = seen.lock().await.accepted.clone();
    let lost = ended(&system, &accepted, SETTLE_BOUND).await;
    assert!(
        lost.is_empty(),
        "{name}: accepted but not ended: {lost:?} (logs in {})",
        system.dir.display()
    );
    let mut doubled = 0;
    for target in [MAIN, LATE] {
        let applied = system.applied(target);
        let once = applied
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        doubled += applied.len() - once;
        let expected: Vec<String> = accepted
            .iter()
            .filter(|(t, _)| t == target)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(
            applied,
            expected,
            "{name}: {target}'s log is not in submission order (FIFO), misses patches or has \
             one twice (logs in {})",
            system.dir.display()
        );
    }
    let seen = seen.lock().await;
    assert!(ready_during == 503);
    eprintln!(
        "{name}: {} accepted ({} queued when the fault started, {} accepted during it), {} intake \
         503s ({} naming the disk)",
        accepted.len(),
        BEFORE - applied_at_fault,
        during.load(Ordering::SeqCst),
        seen.unavailable,
        seen.unavailable_with_reason
    );
    Row {
        fault: name,
        accepted: accepted.len(),
        lost: lost.len(),
        doubled,
        intake_503: seen.unavailable,
        detection,
        recovery,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_degrade_loudly_and_lose_nothing() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    let mut skipped = Vec::new();

    // Full disk: a tmpfs under the router's data dir, filled, then freed.
    if is_root() {
        let dir = scratch.path().join("full");
        std::fs::create_dir_all(&dir).expect("dir");
        let data = dir.join("router");
        match Tmpfs::mount(&data, "16m") {
            Ok(mount) => {
                let system = System::start(&dir, &data, &RouterEnv::default()).await;
                let fault = Fault::FullDisk {
                    mount: data.clone(),
                };
                rows.push(scenario("full-disk", system, fault).await);
                drop(mount);
            }
            Err(err) => skipped.push(format!("full-disk: {err}")),
        }
    } else {
        skipped.push("full-disk: not root, cannot mount a tmpfs".to_owned());
    }

    // EIO, failing fsync, stalling fsync: the shim in the router.
    match build_disk_fault_shim(scratch.path()) {
        Ok(shim) => {
            for (name, word) in [
                ("eio", "eio"),
                ("fsync-fails", "fsync"),
                ("fsync-stalls", "stall"),
            ] {
                let dir = scratch.path().join(name);
                let data = dir.join("router");
                std::fs::create_dir_all(&data).expect("dir");
                let control = dir.join("fault-control");
                std::fs::write(&control, "ok").expect("control");
                let env = RouterEnv {
                    vars: vec![
                        ("LD_PRELOAD".to_owned(), shim.display().to_string()),
                        (
                            "GHOST_FAULT_CONTROL".to_owned(),
                            control.display().to_string(),
                        ),
                        ("GHOST_FAULT_DIR".to_owned(), data.display().to_string()),
                    ],
                };
                let system = System::start(&dir, &data, &env).await;
                rows.push(scenario(name, system, Fault::Shim { control, word }).await);
            }
        }
        Err(err) => skipped.push(format!("eio, fsync-fails, fsync-stalls: {err}")),
    }

    eprintln!();
    eprintln!("| fault | accepted | lost | doubled | intake 503s | detection | recovery |");
    eprintln!("|---|---|---|---|---|---|---|");
    for row in &rows {
        eprintln!(
            "| {} | {} | {} | {} | {} | {:.2} s | {:.2} s |",
            row.fault,
            row.accepted,
            row.lost,
            row.doubled,
            row.intake_503,
            row.detection.as_secs_f64(),
            row.recovery.as_secs_f64()
        );
    }
    for reason in &skipped {
        eprintln!("SKIPPED {reason}");
    }
}
