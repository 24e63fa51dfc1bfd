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

#[test]
fn a_tiny_run_ends_every_patch_once_and_writes_parsable_json() {
    let bins = service_binaries();
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ghost-bench"))
        .args([
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
        ])
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--work-dir")
        .arg(work.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ghost-bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("fsync floor"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
