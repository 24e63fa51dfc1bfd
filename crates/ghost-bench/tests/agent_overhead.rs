//! `ghost-bench agent-overhead` on a tiny workspace: it runs the no-op agent through the
//! executor's apply path, prints its table and writes JSON with one figure per size. No
//! timing assertions: the figures are measured, not tested.

use std::process::Command;

#[test]
fn agent_overhead_measures_each_size_and_writes_its_figures_as_json() {
    let work = tempfile::tempdir().unwrap();
    let json = work.path().join("overhead.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ghost-bench"))
        .args(["agent-overhead", "--files", "3,20", "--runs", "2", "--git"])
        .arg("--work-dir")
        .arg(work.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("no-op agent overhead"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["git"], true);
    let sizes = report["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2, "{report}");
    assert_eq!(sizes[0]["files"], 3);
    assert_eq!(sizes[1]["files"], 20);
    for size in sizes {
        assert_eq!(size["overhead_ms"]["n"], 2, "{size}");
        assert!(size["overhead_ms"]["p50"].as_f64().unwrap() > 0.0, "{size}");
        assert!(size["first_snapshot_ms"].as_f64().unwrap() > 0.0, "{size}");
    }
    eprintln!("{stdout}");
}

#[test]
fn agent_overhead_refuses_zero_runs_naming_the_flag() {
    let output = Command::new(env!("CARGO_BIN_EXE_ghost-bench"))
        .args(["agent-overhead", "--files", "3", "--runs", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--runs"), "{stderr}");
}
