//! Issue 17 item 11: a command's whole process tree dies with it — at its deadline, on cancel,
//! and when it ends normally — even the descendants that left its process group or session
//! (`setsid`, a double-fork daemon), and a bounded fork bomb leaves nothing behind and does not
//! stop the executor from running the next patch. Each command writes the pids it started into
//! a file beside the workspace (outside it, so the rollback leaves the file alone). The checks
//! on every child of the test process assume nextest's one process per test.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use executor::apply::{self, Lease};
use executor::{CommandPolicy, TargetPolicy};
use ghost_core::Status;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestWorkspace, patch, workspace_with};

fn shell_workspace() -> TestWorkspace {
    workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        shell: true,
        kill_grace: Duration::from_millis(200),
        ..TargetPolicy::default()
    })
}

/// The file, beside the workspace, the command writes its pids into.
fn pid_file(ws: &TestWorkspace) -> PathBuf {
    ws.root().parent().unwrap().join("pids")
}

/// Every pid written into `file` so far.
fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect()
}

/// Kills, on drop, whatever the command started that is still there, so a failing run (as on
/// main) does not leave sleepers behind on the machine; the pids are ones this test started.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in pids_in(&self.0) {
            if exists(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether `pid` is still in the process table, as a zombie too: a zombie nobody reaps is a
/// leak of its own.
fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Pids of the processes whose parent is this test process (the executor in it), zombies too.
fn children_of_this_process() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        if fields.get(1) == Some(&me.as_str()) {
            found.push(entry.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    found
}

fn validate(command: &str, timeout_s: u32) -> String {
    let command = serde_json::to_string(command).unwrap();
    format!(
        r#""edits":[{{"op":"write","path":"a.txt","contents":"x"}}],"validate":[{{"run":{command},"timeout_s":{timeout_s}}}]"#
    )
}

/// Waits (bounded) until `file` holds at least `count` pids.
fn wait_for_pids(file: &Path, count: usize) -> Vec<i32> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let pids = pids_in(file);
        if pids.len() >= count {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the command never wrote {count} pid(s) into {}",
        file.display()
    );
}

/// A grandchild in its own session (`setsid`) that writes its pid, then sleeps; the command
/// waits until the pid is written, so the grandchild exists before the command goes on.
fn setsid_grandchild(file: &Path) -> String {
    let file = file.display();
    format!(
        "setsid sh -c 'echo $$ >> {file}; exec sleep 1000' </dev/null >/dev/null 2>&1 & \
         while [ ! -s {file} ]; do sleep 0.01; done"
    )
}

#[test]
fn a_setsid_grandchild_is_gone_after_the_deadline() {
    let ws = shell_workspace();
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    let command = format!("{}; sleep 1000", setsid_grandchild(&file));
    let report = ws.apply(&patch("p", &validate(&command, 1)));
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
    let pids = pids_in(&file);
    assert_eq!(pids.len(), 1, "the grandchild wrote its pid");
    assert!(
        !exists(pids[0]),
        "setsid grandchild {} outlived the deadline",
        pids[0]
    );
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
    eprintln!(
        "deadline 1 s, grace 0.2 s: the command (tree gone) took {} ms",
        report.commands[0].duration_ms
    );
}

#[test]
fn a_double_fork_daemon_dies_when_its_command_ends_normally() {
    let ws = shell_workspace();
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    // The classic daemon: a subshell forks the daemon and exits at once, so the daemon is
    // orphaned in its own session before the command itself exits 0.
    let daemon = setsid_grandchild(&file);
    let command = format!("( {daemon} ) ; true");
    let report = ws.apply(&patch("p", &validate(&command, 30)));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let pids = pids_in(&file);
    assert_eq!(pids.len(), 1, "the daemon wrote its pid");
    assert!(!exists(pids[0]), "daemon {} outlived its patch", pids[0]);
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
}

#[test]
fn a_setsid_grandchild_is_gone_after_a_cancel() {
    let ws = shell_workspace();
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    let command = format!("{}; sleep 1000", setsid_grandchild(&file));
    let cancel = CancellationToken::new();
    let report = std::thread::scope(|scope| {
        let running = scope.spawn(|| {
            apply::apply(
                &ws.ctx,
                &patch("p", &validate(&command, 60)),
                Lease::default(),
                false,
                &cancel,
            )
        });
        wait_for_pids(&file, 1);
        cancel.cancel();
        running.join().unwrap()
    });
    assert_eq!(report.status, Status::Cancelled, "{}", report.error);
    let pids = pids_in(&file);
    assert!(
        !exists(pids[0]),
        "setsid grandchild {} outlived the cancel",
        pids[0]
    );
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
}

#[test]
fn a_bounded_fork_bomb_is_stopped_and_the_next_patch_still_runs() {
    let ws = shell_workspace();
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    // 2,000 sleepers, each in a session of its own so that no process-group kill reaches
    // them, all ignoring SIGTERM; the deadline comes while the loop is still forking or
    // waiting on them.
    let command = format!(
        "trap '' TERM; i=0; while [ $i -lt 2000 ]; do setsid sleep 1000 </dev/null >/dev/null 2>&1 & \
         echo $! >> {file}; i=$((i+1)); done; wait",
        file = file.display()
    );
    let report = ws.apply(&patch("p", &validate(&command, 1)));
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
    let pids = pids_in(&file);
    assert!(!pids.is_empty(), "the bomb started");
    let survivors: Vec<i32> = pids.iter().copied().filter(|&pid| exists(pid)).collect();
    assert!(
        survivors.is_empty(),
        "{} of {} bomb processes survived, e.g. {:?}",
        survivors.len(),
        pids.len(),
        &survivors[..survivors.len().min(5)]
    );
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
    eprintln!(
        "fork bomb: {} processes started before the 1 s deadline; the command (tree gone) took {} ms",
        pids.len(),
        report.commands[0].duration_ms
    );
    let next = ws.apply(&patch("q", &validate("echo still here", 30)));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
    assert_eq!(next.commands[0].output_tail, "still here\n");
}

/// The cgroup v1 `pids` hierarchy, when this machine has one we may write to (as root).
fn writable_pids_hierarchy() -> Option<PathBuf> {
    let dir = PathBuf::from("/sys/fs/cgroup/pids");
    let probe = dir.join(format!("ghost-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    std::fs::remove_dir(&probe).ok()?;
    Some(dir)
}

#[test]
fn with_a_pids_cgroup_the_fork_bomb_is_capped_and_the_cgroup_removed() {
    let Some(hierarchy) = writable_pids_hierarchy() else {
        eprintln!("no writable cgroup v1 pids hierarchy here: nothing to check");
        return;
    };
    let ws = workspace_with(TargetPolicy {
        commands: CommandPolicy::Any,
        shell: true,
        kill_grace: Duration::from_millis(200),
        max_processes: 100,
        pids_cgroup: Some(hierarchy.clone()),
        ..TargetPolicy::default()
    });
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    // Without the cap this loop reaches 2,000 sleepers and then waits for them until its
    // 30 s deadline; with it, forks start failing at 100 processes in the cgroup.
    let command = format!(
        "i=0; while [ $i -lt 2000 ]; do setsid sleep 1000 </dev/null >/dev/null 2>&1 & \
         echo $! >> {file}; i=$((i+1)); done; wait",
        file = file.display()
    );
    let report = ws.apply(&patch("p", &validate(&command, 30)));
    let pids = pids_in(&file);
    assert!(
        pids.len() < 100,
        "{} sleepers started under pids.max 100 ({:?}: {})",
        pids.len(),
        report.status,
        report.error
    );
    assert!(
        pids.iter().all(|&pid| !exists(pid)),
        "a capped sleeper survived"
    );
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
    let prefix = format!("ghost-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir(&hierarchy)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "command cgroups left behind");
    eprintln!(
        "pids.max 100: {} sleepers started, status {:?}, the command took {} ms",
        pids.len(),
        report.status,
        report.commands[0].duration_ms
    );
    let next = ws.apply(&patch("q", &validate("echo still here", 30)));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
}

#[test]
fn a_sweep_spares_another_running_command_and_the_executors_own_children() {
    let first = shell_workspace();
    let second = shell_workspace();
    let first_pids = pid_file(&first);
    let second_pids = pid_file(&second);
    let _leftovers = (
        Leftovers(first_pids.clone()),
        Leftovers(second_pids.clone()),
    );
    let dir = |ws: &TestWorkspace| ws.root().parent().unwrap().to_owned();
    let (second_started, first_ready, go) = (
        dir(&second).join("started"),
        dir(&first).join("ready"),
        dir(&first).join("go"),
    );
    // The first command orphans a daemon (still in its session) only once the second command
    // runs, so the daemon is younger than both; it holds on while the second one ends and is
    // swept, then succeeds only if its daemon is still there.
    let command = format!(
        "while [ ! -e {second_started} ]; do sleep 0.01; done; \
         ( sh -c 'echo $$ >> {file}; exec sleep 1000' </dev/null >/dev/null 2>&1 & ); \
         while [ ! -s {file} ]; do sleep 0.01; done; touch {first_ready}; \
         while [ ! -e {go} ]; do sleep 0.01; done; kill -0 $(cat {file})",
        second_started = second_started.display(),
        first_ready = first_ready.display(),
        go = go.display(),
        file = first_pids.display()
    );
    let second_command = format!(
        "touch {second_started}; ( {daemon} ); while [ ! -e {first_ready} ]; do sleep 0.01; done",
        second_started = second_started.display(),
        daemon = setsid_grandchild(&second_pids),
        first_ready = first_ready.display(),
    );
    // A child of the executor's process of its own, as `git` is: no sweep may kill or reap it.
    let mut own = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let own_file = dir(&first).join("own");
    std::fs::write(&own_file, own.id().to_string()).unwrap();
    let _own_leftover = Leftovers(own_file);
    let (first_report, second_report) = std::thread::scope(|scope| {
        let running = scope.spawn(|| first.apply(&patch("p", &validate(&command, 60))));
        let second_report = second.apply(&patch("q", &validate(&second_command, 60)));
        std::fs::write(&go, "").unwrap();
        (running.join().unwrap(), second_report)
    });
    assert_eq!(
        second_report.status,
        Status::Succeeded,
        "{}",
        second_report.error
    );
    assert!(
        !exists(pids_in(&second_pids)[0]),
        "the second command's daemon survived"
    );
    assert_eq!(
        first_report.status,
        Status::Succeeded,
        "the second command's sweep killed the first one's daemon: {:?}",
        first_report.commands
    );
    assert!(
        !exists(pids_in(&first_pids)[0]),
        "the first command's daemon survived"
    );
    assert!(
        matches!(own.try_wait(), Ok(None)),
        "a sweep killed or reaped a child that was not a command's"
    );
    own.kill().unwrap();
    assert_eq!(own.wait().unwrap().signal(), Some(9));
}
