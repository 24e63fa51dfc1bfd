//! Issue 17, item 5: a directory swapped for a symlink (pointing outside the workspace) while
//! patches run under it. Every workspace operation is done relative to directory handles, so
//! nothing lands outside and every rollback restores what the patch wrote, wherever the
//! directory it wrote into has been renamed to meanwhile.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;
use rustix::fs::{CWD, RenameFlags};

use crate::helpers::{RunningExecutor, patch, snapshot, workspace_with};

/// Swaps `a` and `b` atomically (RENAME_EXCHANGE), or in three renames where the file system
/// cannot exchange.
fn swap(a: &Path, b: &Path, spare: &Path) {
    match rustix::fs::renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => {}
        Err(_) => {
            let _ = fs::rename(a, spare);
            let _ = fs::rename(b, a);
            let _ = fs::rename(spare, b);
        }
    }
}

/// Runs `swap` as fast as it can until `stop`, bounded in count and time; returns the count.
fn flipper(a: PathBuf, b: PathBuf, spare: PathBuf, stop: Arc<AtomicBool>) -> u64 {
    let started = Instant::now();
    let mut swaps = 0u64;
    while !stop.load(Ordering::Relaxed)
        && swaps < 50_000_000
        && started.elapsed() < Duration::from_secs(300)
    {
        swap(&a, &b, &spare);
        swaps += 1;
    }
    swaps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_flipped_with_a_symlink_lets_nothing_out_and_rollbacks_stay_whole() {
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        // The complete rollback restores paths (not directory handles): a directory that
        // something outside the executor keeps renaming is left to the edits journal, which
        // restores through the handles it wrote with.
        rollback_ignore: vec!["d".to_owned(), "flip".to_owned(), "spare".to_owned()],
        ..TargetPolicy::default()
    });
    let outside = tempfile::tempdir().unwrap();
    let outside_path = fs::canonicalize(outside.path()).unwrap();
    ws.write("d/keep.txt", "keep\n");
    let real = ws.root().join("d");
    let flip = ws.root().join("flip");
    std::os::unix::fs::symlink(&outside_path, &flip).unwrap();
    let mut executor = RunningExecutor::start(&ws).await;

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (a, b, spare) = (real.clone(), flip.clone(), ws.root().join("spare"));
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || flipper(a, b, spare, stop))
    };

    const PATCHES: usize = 1_000;
    let mut outcomes = Vec::with_capacity(PATCHES);
    for i in 0..PATCHES {
        let body = match i % 4 {
            0 => format!(
                r#""edits":[{{"op":"write","path":"d/n{i}","contents":"v{i}"}},{{"op":"mkdir","path":"d/m{i}"}}]"#
            ),
            1 => format!(
                r#""edits":[{{"op":"write","path":"d/n{i}","contents":"v{i}"}},{{"op":"write","path":"d/keep.txt","contents":"changed"}}],"commands":["false"]"#
            ),
            2 => format!(
                r#""edits":[{{"op":"write","path":"d/n{i}","contents":"v{i}"}},{{"op":"chmod","path":"d/keep.txt","mode":"{}"}}]"#,
                if i % 8 == 2 { "600" } else { "644" }
            ),
            _ => format!(
                r#""edits":[{{"op":"write","path":"d/r{i}","contents":"r{i}"}},{{"op":"rename","from":"d/r{i}","to":"d/s{i}"}}]"#
            ),
        };
        let report = executor.apply(&patch(&format!("race-{i}"), &body)).await;
        outcomes.push(report);
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    // Leave the real directory at `d` again.
    if fs::symlink_metadata(&real)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        swap(&real, &flip, &ws.root().join("spare"));
    }

    let escaped = snapshot(&outside_path);
    assert!(
        escaped.is_empty(),
        "{} entries were written outside the workspace, e.g. {:?}",
        escaped.len(),
        escaped.keys().take(5).collect::<Vec<_>>()
    );
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut expected: BTreeMap<String, (Option<Vec<u8>>, u32)> = BTreeMap::new();
    let mut keep_mode = 0o644;
    for (i, report) in outcomes.iter().enumerate() {
        *counts.entry(report.status.to_string()).or_default() += 1;
        assert!(
            matches!(
                report.status,
                Status::Succeeded | Status::RolledBack | Status::Rejected | Status::Failed
            ),
            "patch {i}: {:?} {}",
            report.status,
            report.error
        );
        if let Some(rollback) = &report.rollback {
            assert!(
                rollback.error.is_empty(),
                "patch {i}: rollback incomplete: {}",
                rollback.error
            );
        }
        if report.status != Status::Succeeded {
            continue;
        }
        match i % 4 {
            0 => {
                expected.insert(format!("n{i}"), (Some(format!("v{i}").into_bytes()), 0o644));
                expected.insert(format!("m{i}"), (None, 0o755));
            }
            1 => panic!("patch {i} ran `false` and succeeded"),
            2 => {
                expected.insert(format!("n{i}"), (Some(format!("v{i}").into_bytes()), 0o644));
                keep_mode = if i % 8 == 2 { 0o600 } else { 0o644 };
            }
            _ => {
                expected.insert(format!("s{i}"), (Some(format!("r{i}").into_bytes()), 0o644));
            }
        }
    }
    expected.insert("keep.txt".to_owned(), (Some(b"keep\n".to_vec()), keep_mode));
    eprintln!("{PATCHES} patches against {swaps} directory/symlink swaps: {counts:?}");
    assert!(swaps > 0, "the swapper never ran");
    assert!(
        counts.get("succeeded").copied().unwrap_or(0) > 0,
        "no patch got through: {counts:?}"
    );
    let found = snapshot(&real);
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the directory holds exactly what the succeeded patches wrote"
    );
    assert_eq!(found, expected);
    assert!(
        !ws.ctx
            .workspace
            .state_dir
            .join("journal/MAIN.journal")
            .exists()
    );
    let after = executor
        .apply(&patch(
            "after",
            r#""edits":[{"op":"write","path":"d/after","contents":"ok"}]"#,
        ))
        .await;
    assert_eq!(after.status, Status::Succeeded, "{}", after.error);
    executor.stop().await;
    let mode = fs::metadata(real.join("keep.txt"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, keep_mode);
}
