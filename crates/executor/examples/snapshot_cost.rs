//! What the complete rollback's snapshot costs: the first snapshot (every file read, hashed
//! and copied), a second one with nothing changed (stat only), one after a command changed
//! 10 files, and the restore after a command made, changed and deleted a few files.
//!
//! `cargo run -p executor --example snapshot_cost -- 10 100000` (workspace sizes in files;
//! each file is ~200 bytes, 100 files per directory). Prints one line per size. Builds and
//! removes its workspaces under the system temp dir.

// An example run by hand: its figures are its output.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use executor::TargetPolicy;
use executor::beneath::RootId;
use executor::snapshot::{self, Scope};
use executor::workspace::Workspace;

fn build(root: &Path, files: usize) -> std::io::Result<()> {
    for i in 0..files {
        let dir = root.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(
            dir.join(format!("f{i}.ts")),
            format!("export const value{i} = {i};\n").repeat(6),
        )?;
    }
    Ok(())
}

/// Moves every file's mtime out of the racy window (as a workspace not edited in the last
/// seconds is), so the second snapshot shows the steady-state cost.
fn age(root: &Path) -> std::io::Result<()> {
    let old = rustix::fs::Timespec {
        tv_sec: 1_600_000_000,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: old,
        last_modification: old,
    };
    for dir in std::fs::read_dir(root)? {
        for file in std::fs::read_dir(dir?.path())? {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                file?.path(),
                &times,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
    }
    Ok(())
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

fn measure(files: usize) -> std::io::Result<()> {
    let base = std::env::temp_dir().join(format!(
        "ghost-snapshot-cost-{}-{files}",
        std::process::id()
    ));
    let root = base.join("ws");
    std::fs::create_dir_all(&root)?;
    std::fs::create_dir_all(base.join("state"))?;
    build(&root, files)?;
    age(&root)?;
    let root = std::fs::canonicalize(&root)?;
    let workspace = Workspace {
        target: "MAIN".to_owned(),
        root: root.clone(),
        state_dir: base.join("state"),
        policy: TargetPolicy::default(),
    };
    let scope = Scope::new(&workspace, RootId::of(&root)?, 10 * 1024 * 1024)
        .map_err(std::io::Error::other)?;

    let started = Instant::now();
    let first = snapshot::take(&scope, "first")?;
    let first_time = started.elapsed();
    snapshot::release(&scope)?;

    let started = Instant::now();
    let second = snapshot::take(&scope, "second")?;
    let second_time = started.elapsed();
    snapshot::release(&scope)?;

    for i in 0..10 {
        let path = root.join(format!("d0000/f{i}.ts"));
        std::fs::write(path, format!("changed {i}\n"))?;
    }
    let started = Instant::now();
    let third = snapshot::take(&scope, "third")?;
    let third_time = started.elapsed();

    // A "command": changes 5 files, deletes 3, makes 20 new ones in a new directory.
    for i in 0..5 {
        std::fs::write(root.join(format!("d0000/f{i}.ts")), "prettier was here\n")?;
    }
    for i in 7..10 {
        std::fs::remove_file(root.join(format!("d0000/f{i}.ts")))?;
    }
    std::fs::create_dir_all(root.join("generated"))?;
    for i in 0..20 {
        std::fs::write(root.join(format!("generated/g{i}.js")), "x")?;
    }
    let started = Instant::now();
    let restored = third.restore(&scope);
    let restore_time = started.elapsed();
    snapshot::release(&scope)?;
    assert!(restored.errors.is_empty(), "{:?}", restored.errors);

    println!(
        "{files} files: first snapshot {} ({} hashed, {} blobs, {} KiB); unchanged {} ({} hashed); \
         10 changed {} ({} hashed); restore {} ({} restored, {} removed)",
        ms(first_time),
        first.taken.hashed,
        first.taken.stored,
        first.taken.stored_bytes / 1024,
        ms(second_time),
        second.taken.hashed,
        ms(third_time),
        third.taken.hashed,
        ms(restore_time),
        restored.restored,
        restored.removed,
    );
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

fn main() -> std::io::Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100_000]
    } else {
        sizes
    };
    for files in sizes {
        measure(files)?;
    }
    Ok(())
}
