//! Apply + rollback of a 3-file patch in a small and in a large workspace: the rollback must
//! leave every file as it was whatever the size, and the time is printed (median of 20), not
//! asserted. The large size is 2,000 files by default; the reported figure uses
//! `GHOST_TIMING_FILES=100000 cargo nextest run -p executor --no-capture timing`.

use std::time::Instant;

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;

use crate::helpers::{patch, snapshot, workspace_with};

fn median_ms(files: usize) -> (f64, f64) {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        ..TargetPolicy::default()
    });
    for i in 0..files {
        ws.write(&format!("d{}/f{i}.txt", i % 1000), "some content\n");
    }
    let body = r#""edits":[{"op":"write","path":"d1/f1.txt","contents":"a"},{"op":"replace","path":"d2/f2.txt","search":"some","replace":"other"},{"op":"write","path":"new/x.txt","contents":"b"}],"commands":["false"]"#;
    let before = snapshot(ws.root());
    let mut totals = Vec::new();
    let mut stages = Vec::new();
    for run in 0..20 {
        let started = Instant::now();
        let report = ws.apply(&patch(&format!("t{run}"), body));
        totals.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(report.status, Status::RolledBack, "{}", report.error);
        let own: u64 = report
            .stages
            .iter()
            .filter(|s| s.stage != "commands")
            .map(|s| s.duration_ms)
            .sum();
        stages.push(own as f64);
    }
    assert_eq!(
        snapshot(ws.root()),
        before,
        "20 rolled-back patches leave the {files}-file workspace as it was"
    );
    totals.sort_by(f64::total_cmp);
    stages.sort_by(f64::total_cmp);
    (totals[10], stages[10])
}

#[test]
fn apply_and_rollback_cost_follows_touched_files_not_workspace_size() {
    let large = std::env::var("GHOST_TIMING_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    for files in [10, large] {
        let (total, own) = median_ms(files);
        eprintln!(
            "{files} files: median apply+rollback {total:.2} ms (without the failing command: {own:.0} ms)"
        );
    }
}
