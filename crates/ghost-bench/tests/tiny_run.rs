//! A tiny benchmark against the real service binaries (debug build): every patch must end
//! exactly once with a summary and one Slack post, and the JSON report must parse. No timing
//! assertions: speeds are figures, not tests.

use std::path::PathBuf;
use std::process::Command;

/// The folder holding this package's binaries; the services' debug binaries are built into it
/// (a no-op when they are fresh).
fn service_binaries() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_ghost-bench"));
    let dir = bench.parent().expect("binary folder").to_owned();
    let target_dir = dir.parent().expect("target folder").to_owned();
    let status = Command::new(env!("CARGO"))
        .args([
            "build", "--bins", "-p", "router", "-p", "executor", "-p", "gateway",
        ])
        .args(["-p", "summarizer", "-p", "alerter"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build for the service binaries");
    assert!(status.success(), "building the service binaries failed");
    dir
}

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

#[test]
fn a_tiny_run_ends_every_patch_once_and_writes_parsable_json() {
    let work = tempfile::tempdir().unwrap();
    let (stdout, report) = run_bench(
        work.path(),
        &[
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
        ],
        &[],
    );
    assert!(stdout.contains("fsync floor"), "{stdout}");
    let counts = &report["counts"];
    assert_eq!(counts["submitted"], 20, "{counts}");
    assert_eq!(counts["accepted"], 20, "{counts}");
    assert_eq!(counts["ended_once"], 20, "{counts}");
    assert_eq!(counts["summaries"], 20, "{counts}");
    assert_eq!(counts["slack_once"], 20, "{counts}");
    assert_eq!(counts["statuses"]["succeeded"], 20, "{counts}");
    for zero in [
        "not_ended",
        "ended_twice",
        "slack_missing",
        "slack_duplicates",
        "unfinished",
    ] {
        assert_eq!(counts[zero], 0, "{zero}: {counts}");
    }
    let services: Vec<&str> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
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

/// deploy/bench/slow-disk.sh's shim reaches the floor probe and every service: with each
/// fsync made 3 ms slower, the probe's p50 is at least 3 ms, and no patch can reach its `ended`
/// event in less than the 8 fsyncs before it (router submit and lease, the executor's 6; the
/// 9th is the completion's own commit, stamped before its fsync). A lower bound that a
/// sleep guarantees, not a speed: it checks the fsync count the floor is built from.
#[test]
fn the_slow_disk_shim_slows_every_fsync_on_the_path() {
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
    let delay_ms = 3.0;
    let (_, report) = run_bench(
        work.path(),
        &[
            "-n",
            "6",
            "-c",
            "1",
            "-t",
            "1",
            "--timeout",
            "60s",
            "--fsync-samples",
            "10",
        ],
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("GHOST_FSYNC_DELAY_US", std::ffi::OsStr::new("3000")),
        ],
    );
    assert_eq!(report["counts"]["ended_once"], 6, "{}", report["counts"]);
    assert_eq!(report["fsync"]["ended_fsyncs"], 9, "{}", report["fsync"]);
    let probe = report["fsync"]["p50_ms"].as_f64().expect("probe p50");
    assert!(probe >= delay_ms, "probe p50 {probe} ms");
    let ended = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|stage| stage["name"] == "e2e submit → ended")
        .expect("e2e stage");
    let fastest = ended["stats"]["min"].as_f64().expect("min");
    assert!(
        fastest >= 8.0 * delay_ms,
        "a patch ended {fastest} ms after its submit: fewer than 8 fsyncs on its path? {ended}"
    );
}
