//! The latency floor of durability on this disk: a small write followed by `fdatasync`, as
//! every commit costs at least one; and the fsyncs a one-file patch without commands meets on
//! its way, counted from the code.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

/// One durable step on a patch's path that waits for the disk.
#[derive(Debug, Clone, Serialize)]
pub struct PathFsync {
    /// Service.
    pub service: &'static str,
    /// What is made durable.
    pub step: &'static str,
    /// fsync/fdatasync calls of this step.
    pub fsyncs: u32,
    /// True when the step is on the latency path from submit to the Slack post (false: after
    /// the post, overlapped with the next patch, or with this patch's next step).
    pub on_latency_path: bool,
}

/// The fsyncs of a one-file patch with no commands, from `POST /v1/patches` to its Slack post,
/// as the code stands (SQLite WAL with `synchronous=FULL` syncs the WAL once per commit).
/// Counted per service by deploy/bench/slow-fsync.c (test
/// `the_slow_disk_shim_reaches_every_service_and_counts_the_fsyncs_of_a_patch`, one patch at a
/// time): executor 6 per patch, router 4.5, summarizer 5, alerter 2, gateway 0.
pub const PATH_FSYNCS: &[PathFsync] = &[
    step(
        "router",
        "Submit: patch row + received/queued events (group commit)",
        1,
        true,
    ),
    step("router", "lease: attempt row + leased event", 1, true),
    step(
        "executor",
        "journal seal: one journal file (header, entries, originals) + its folder",
        2,
        true,
    ),
    step(
        "executor",
        "workspace file: temp file + its dir (atomic rename)",
        2,
        true,
    ),
    step("executor", "ledger entry: temp file + its dir", 2, true),
    // Off the serial path: the executor sends `applying` and goes on applying without waiting
    // for this commit, which ends while the executor's own fsyncs run.
    step(
        "router",
        "progress: applying event (overlaps the executor's apply)",
        1,
        false,
    ),
    step(
        "router",
        "complete: status, attempt, terminal event, outbox row",
        1,
        true,
    ),
    step(
        "summarizer",
        "summary-<id>.md and .json: two temp files + one folder fsync",
        3,
        true,
    ),
    step(
        "summarizer",
        "index commit: summary, attempt, changelog, notify outbox",
        1,
        true,
    ),
    step(
        "summarizer",
        "patch-manifest.json: temp file + dir, at most once per 500 ms for all patches",
        2,
        false,
    ),
    step(
        "alerter",
        "Notify: dedup row + Slack messages stored",
        1,
        true,
    ),
    step(
        "router",
        "outbox rows settled after Record answered (one commit per round of up to 16)",
        1,
        false,
    ),
    step("summarizer", "notify outbox row marked delivered", 1, false),
    step(
        "alerter",
        "Slack messages marked sent (+ thread ts), one commit per round",
        1,
        false,
    ),
];

const fn step(
    service: &'static str,
    step: &'static str,
    fsyncs: u32,
    on_latency_path: bool,
) -> PathFsync {
    PathFsync {
        service,
        step,
        fsyncs,
        on_latency_path,
    }
}

/// fsyncs up to the router's terminal event (router and executor steps on the path).
pub fn ended_path_fsyncs() -> u32 {
    PATH_FSYNCS
        .iter()
        .filter(|s| s.on_latency_path && (s.service == "router" || s.service == "executor"))
        .map(|s| s.fsyncs)
        .sum()
}

/// fsyncs on the latency path of one patch, up to its Slack post.
pub fn latency_path_fsyncs() -> u32 {
    PATH_FSYNCS
        .iter()
        .filter(|step| step.on_latency_path)
        .map(|step| step.fsyncs)
        .sum()
}

/// Percentiles of the probe.
#[derive(Debug, Clone, Serialize)]
pub struct FsyncFloor {
    /// Samples taken.
    pub samples: usize,
    /// Median write + fdatasync, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Median of rewriting one 4 KiB block in place + fdatasync (no size change, so no
    /// file-system journal commit: what a SQLite WAL commit into a reused WAL costs), ms.
    pub overwrite_p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub overwrite_p99_ms: f64,
    /// fsyncs on a one-file patch's latency path to its Slack post ([`latency_path_fsyncs`]).
    pub path_fsyncs: u32,
    /// `path_fsyncs × p50_ms`: the submit → Slack floor if nothing overlapped.
    pub path_floor_ms: f64,
    /// fsyncs up to the router's terminal event ([`ended_path_fsyncs`]).
    pub ended_fsyncs: u32,
    /// `ended_fsyncs × p50_ms`: the submit → ended floor.
    pub ended_floor_ms: f64,
}

/// Appends 4 KiB and fdatasyncs `samples` times in a file under `dir` (the floor, as the
/// router's `submit_load` measures it), then rewrites its first block in place and fdatasyncs
/// as often, then removes it.
pub fn measure(dir: &Path, samples: usize) -> std::io::Result<FsyncFloor> {
    let path = dir.join("fsync-probe");
    let mut times = Vec::with_capacity(samples);
    {
        let mut file = std::fs::File::create(&path)?;
        let block = [0u8; 4096];
        for _ in 0..samples.max(1) {
            let begin = Instant::now();
            file.write_all(&block)?;
            file.sync_data()?;
            times.push(begin.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut rewrites = Vec::with_capacity(samples);
    {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
        let block = [1u8; 4096];
        for _ in 0..samples.max(1) {
            let begin = Instant::now();
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&block)?;
            file.sync_data()?;
            rewrites.push(begin.elapsed().as_secs_f64() * 1e3);
        }
    }
    std::fs::remove_file(&path)?;
    let rewrite = crate::report::Stats::of(&mut rewrites);
    let stats = crate::report::Stats::of(&mut times);
    let path_fsyncs = latency_path_fsyncs();
    Ok(FsyncFloor {
        samples: stats.n,
        p50_ms: stats.p50,
        p99_ms: stats.p99,
        overwrite_p50_ms: rewrite.p50,
        overwrite_p99_ms: rewrite.p99,
        path_fsyncs,
        path_floor_ms: f64::from(path_fsyncs) * stats.p50,
        ended_fsyncs: ended_path_fsyncs(),
        ended_floor_ms: f64::from(ended_path_fsyncs()) * stats.p50,
    })
}
