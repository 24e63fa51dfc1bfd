//! A [`TempPostgres`] does not outlive its process: SIGKILL the process holding one (as a
//! nextest timeout does) and its watchdog stops the server and removes its dir.
//!
//! The holder is the `pg_holder` binary of this crate (`src/bin/pg_holder.rs`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ghost_testkit::postgres::TempPostgres;
use ghost_testkit::process::gone;
use ghost_testkit::wait_for;

/// Runs `pg_holder` in a child process; returns it and its `HOLDING` line's pids and dir, or
/// `None` when PostgreSQL is not installed.
fn start_holder() -> Option<(std::process::Child, u32, u32, PathBuf)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pg_holder"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the holder");
    let stdout = child.stdout.take().expect("holder stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("holder output");
        if line.trim() == "SKIP" {
            let _ = child.wait();
            return None;
        }
        let Some(rest) = line.strip_prefix("HOLDING ") else {
            continue;
        };
        let mut words = rest.splitn(3, ' ');
        let mut next = || words.next().expect("HOLDING pid pid dir");
        let postmaster = next().parse().expect("postmaster pid");
        let watchdog = next().parse().expect("watchdog pid");
        let dir = PathBuf::from(next());
        return Some((child, postmaster, watchdog, dir));
    }
    let status = child.wait().expect("holder ends");
    panic!("the holder ended ({status}) without starting a server");
}

#[tokio::test]
async fn a_killed_holder_leaves_no_postgres_behind() {
    let Some((mut holder, postmaster, watchdog, dir)) = start_holder() else {
        eprintln!("SKIP a_killed_holder_leaves_no_postgres_behind: PostgreSQL is not installed");
        return;
    };
    assert!(!gone(postmaster), "the server runs while its holder does");
    assert!(dir.join("data").is_dir(), "{}", dir.display());
    // SIGKILL: no destructor runs in the holder; only its watchdog can stop the server.
    holder
        .kill()
        .expect("kill the holder (our own child, by its PID)");
    holder.wait().expect("reap the holder");
    wait_for("the killed holder's postgres to be gone", async || {
        if gone(postmaster) {
            Ok(())
        } else {
            Err(postmaster)
        }
    })
    .await;
    wait_for(
        "its dir to be removed and its watchdog to end",
        async || {
            let dir_left = Path::new(&dir).exists();
            if !dir_left && gone(watchdog) {
                Ok(())
            } else {
                Err((dir_left, gone(watchdog)))
            }
        },
    )
    .await;
}

#[test]
fn a_dropped_server_takes_its_watchdog_with_it() {
    let Some(server) = TempPostgres::start_or_skip("a_dropped_server_takes_its_watchdog_with_it")
    else {
        return;
    };
    let (postmaster, watchdog) = (
        server.pid().expect("pid"),
        server.watchdog_pid().expect("wd"),
    );
    let dir = server.dir().to_owned();
    assert!(
        !gone(watchdog),
        "the watchdog waits while the server is held"
    );
    drop(server);
    assert!(gone(postmaster), "stopped by the drop");
    assert!(gone(watchdog), "killed and reaped by the drop");
    assert!(!dir.exists(), "{}", dir.display());
}
