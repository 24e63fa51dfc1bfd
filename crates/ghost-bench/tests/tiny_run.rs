//! A tiny benchmark against the real service binaries (debug build): every patch must end
//! exactly once with a summary and one Slack post, and the JSON report must parse. No timing
//! assertions: speeds are figures, not tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The folder holding this package's binaries; the services' debug binaries are built into it
/// (a no-op when they are fresh). Built exactly as `scripts/test` builds (`--workspace
/// --all-targets`): any other selection unifies features differently and compiles every
/// dependency a second time, inside the test's time limit.
fn service_binaries() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ghost-bench"));
    let dir = bench.parent().expect("binary folder").to_owned();
    let target_dir = dir.parent().expect("target folder").to_owned();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--all-targets"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build for the service binaries");
    assert!(status.success(), "building the service binaries failed");
    dir
}

/// The smallest run: 20 patches, 2 at a time, over 2 targets.
const TINY: &[&str] = &[
    "-n",
    "20",
    "-c",
    "2",
    "-t",
    "2",
    "--timeout",
    "60s",
    "--fsync-samples",
    "20",
];

/// Runs ghost-bench on `args` against the service binaries with its state in `work`, with
/// `env` added; returns its stdout and the JSON report. Fails the test if it fails.
fn run_bench(
    work: &std::path::Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> (String, serde_json::Value) {
    let bins = service_binaries();
    let json = work.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ghost-bench"))
        .args(args)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--work-dir")
        .arg(work)
        .arg("--json")
        .arg(&json)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "ghost-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (stdout, report)
}

/// Every one of `patches` patches was accepted, ended once as succeeded, was summarised and
/// posted to Slack once.
fn assert_every_patch_once(report: &serde_json::Value, patches: u64) {
    let counts = &report["counts"];
    for count in [
        "submitted",
        "accepted",
        "ended_once",
        "summaries",
        "slack_once",
    ] {
        assert_eq!(counts[count], patches, "{count}: {counts}");
    }
    assert_eq!(counts["statuses"]["succeeded"], patches, "{counts}");
    for zero in [
        "not_ended",
        "ended_twice",
        "slack_missing",
        "slack_duplicates",
        "unfinished",
    ] {
        assert_eq!(counts[zero], 0, "{zero}: {counts}");
    }
}

/// The names of the report's per-service rows.
fn service_names(report: &serde_json::Value) -> Vec<&str> {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

#[test]
fn a_tiny_run_ends_every_patch_once_and_writes_parsable_json() {
    let work = tempfile::tempdir().unwrap();
    let (stdout, report) = run_bench(work.path(), TINY, &[]);
    assert!(stdout.contains("fsync floor"), "{stdout}");
    assert!(stdout.contains("store: sqlite"), "{stdout}");
    assert_every_patch_once(&report, 20);
    assert_eq!(
        service_names(&report),
        [
            "alerter",
            "summarizer",
            "router",
            "executor-1",
            "executor-2",
            "gateway"
        ]
    );
    assert!(report["fsync"]["path_fsyncs"].as_u64().unwrap() > 0);
}

/// `--store postgres`: the router, summarizer and alerter on a throwaway PostgreSQL started
/// for the run. Every patch still ends once, with a summary (its time read from the
/// summarizer's table: there is no file) and one Slack post, and the server's CPU is reported
/// as a row of its own. Skipped, with the reason printed, when PostgreSQL is not installed.
#[test]
fn a_tiny_run_on_a_throwaway_postgres_ends_every_patch_once() {
    if ghost_testkit::postgres::bin_dir().is_none() {
        eprintln!("SKIP tiny run on PostgreSQL: PostgreSQL is not installed");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let args = [TINY, &["--store", "postgres"]].concat();
    let (stdout, report) = run_bench(work.path(), &args, &[]);
    assert!(stdout.contains("store: postgres"), "{stdout}");
    assert_every_patch_once(&report, 20);
    assert_eq!(
        report["shape"]["store"]
            .as_str()
            .map(|s| s.starts_with("postgres")),
        Some(true)
    );
    assert!(service_names(&report).contains(&"postgres"), "{report}");
    let summaries = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ended → summary file mtime*")
        .expect("the summary stage");
    assert_eq!(summaries["stats"]["n"], 20, "{summaries}");
}

/// fsync + fdatasync calls per executable, as deploy/bench/slow-fsync.c wrote them at exit.
fn fsync_calls(dir: &std::path::Path) -> HashMap<String, u64> {
    let mut calls = HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let (name, count) = text.trim().rsplit_once(' ').expect("`name count`");
        *calls.entry(name.to_owned()).or_default() += count.parse::<u64>().unwrap();
    }
    calls
}

/// deploy/bench/slow-disk.sh's shim reaches ghost-bench's floor probe (3 ms added per call:
/// its p50 is at least that) and every service, and counts their fsyncs: the difference
/// between a 10-patch and a 2-patch run, one patch at a time, gives each service's fsyncs per
/// patch, checked against the path ghost-bench's floor is built from (`PATH_FSYNCS`): the
/// executor's 6 exactly (journal temp file, journal folder; the written file, its directory;
/// ledger entry, ledger folder — every one through libc, so the shim sees it: the directory
/// fsync once went through rustix's raw syscall and was missed, counting 5), at least the router's 4 (submit, lease, applying, completion), the
/// summarizer's 4 and the alerter's 1 on the path to the Slack post, none in the gateway.
#[test]
fn the_slow_disk_shim_reaches_every_service_and_counts_the_fsyncs_of_a_patch() {
    let work = tempfile::tempdir().unwrap();
    let shim = work.path().join("slow-fsync.so");
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = Command::new("cc")
        .args(["-O2", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(repo.join("deploy/bench/slow-fsync.c"))
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(built.success(), "cc failed on slow-fsync.c");
    let run = |patches: &str, delay_us: &str| {
        let state = work.path().join(format!("run-{patches}"));
        let counts = state.join("fsync-counts");
        std::fs::create_dir_all(&counts).unwrap();
        let (_, report) = run_bench(
            &state,
            &["-n", patches, "-c", "1", "-t", "1", "--timeout", "60s"],
            &[
                ("LD_PRELOAD", shim.as_os_str()),
                ("GHOST_FSYNC_DELAY_US", std::ffi::OsStr::new(delay_us)),
                ("GHOST_FSYNC_COUNT_DIR", counts.as_os_str()),
            ],
        );
        assert_eq!(
            report["counts"]["ended_once"],
            patches.parse::<u64>().unwrap(),
            "{}",
            report["counts"]
        );
        (fsync_calls(&counts), report)
    };
    let (two, _) = run("2", "0");
    let (ten, report) = run("10", "3000");
    let probe = report["fsync"]["p50_ms"].as_f64().expect("probe p50");
    assert!(
        probe >= 3.0,
        "probe p50 {probe} ms: the delay did not reach it"
    );
    let per_patch = |service: &str| {
        let calls = |counts: &HashMap<String, u64>| *counts.get(service).unwrap_or(&0) as f64;
        (calls(&ten) - calls(&two)) / 8.0
    };
    let seen = format!("2 patches: {two:?}; 10 patches: {ten:?}");
    assert_eq!(per_patch("executor"), 6.0, "{seen}");
    assert!(per_patch("router") >= 4.0, "{seen}");
    assert!(per_patch("summarizer") >= 4.0, "{seen}");
    assert!(per_patch("alerter") >= 1.0, "{seen}");
    assert_eq!(per_patch("gateway"), 0.0, "{seen}");
}

/// SIGTERM in the middle of the tiny run (paced at one patch a second, so it is still
/// submitting): ghost-bench stops every service it started before it exits, and says why it
/// stopped; none is left running.
#[tokio::test]
async fn a_sigterm_mid_run_stops_every_service_it_started() {
    let work = tempfile::tempdir().unwrap();
    let bins = service_binaries();
    let url_file = work.path().join("url");
    let args = [TINY, &["--rate", "1"]].concat();
    let mut bench = Command::new(env!("CARGO_BIN_EXE_ghost-bench"))
        .args(&args)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--work-dir")
        .arg(work.path())
        .arg("--url-file")
        .arg(&url_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = bench.id();
    // The URL file is written once every service is ready, just before the first patch.
    ghost_testkit::wait_until(
        "ghost-bench to start its services",
        Duration::from_secs(120),
        ghost_testkit::POLL_INTERVAL,
        async || {
            assert!(
                bench.try_wait().unwrap().is_none(),
                "ghost-bench ended early"
            );
            if url_file.exists() { Ok(()) } else { Err(()) }
        },
    )
    .await;
    let services = ghost_bench::procfs::children_of(pid);
    assert_eq!(
        services.len(),
        6,
        "five services, two executors: {services:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = ghost_testkit::wait_for("ghost-bench to exit after SIGTERM", async || {
        bench.try_wait().unwrap().ok_or(())
    })
    .await;
    let left: Vec<u32> = services
        .into_iter()
        .filter(|pid| !ghost_testkit::process::gone(*pid))
        .collect();
    for pid in &left {
        // Not to leave them running when this test fails: the ones this test's child started.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(*pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        left.is_empty(),
        "still running after ghost-bench exited: {left:?}; {stderr}"
    );
    assert!(!status.success(), "a stopped run is not a result: {stderr}");
    assert!(stderr.contains("SIGTERM"), "{stderr}");
}
