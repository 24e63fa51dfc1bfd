//! Issue 17 item 11: a command's whole process tree dies with it — at its deadline, on cancel,
//! and when it ends normally — even the descendants that left its process group or session
//! (`setsid`, a double-fork daemon), and a bounded fork bomb leaves nothing behind and does not
//! stop the executor from running the next patch. Each command writes the pids it started into
//! a file beside the workspace (outside it, so the rollback leaves the file alone). The checks
//! on every child of the test process assume that no other test in this process runs a
//! command meanwhile: nextest runs one test per process, and under plain `cargo test` the
//! tests of this file take [`ONE_AT_A_TIME`] (the other files' tests still run beside them).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use executor::apply::{self, Lease};
use executor::{CommandPolicy, TargetPolicy};
use ghost_core::{ApplyReport, Status};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestWorkspace, patch, workspace_with};

/// Held by each test of this file, so that under plain `cargo test` (many tests in one
/// process) one test's checks on the children of the process do not see another's commands.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one may still run.
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn shell_workspace() -> TestWorkspace {
    workspace_with(TargetPolicy {
        // The commands write their pids beside the workspace, outside the sandbox.
        sandbox: executor::SandboxMode::Off,
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
    let _one = one_at_a_time();
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
    let _one = one_at_a_time();
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
    let _one = one_at_a_time();
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
    let _one = one_at_a_time();
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
    let _one = one_at_a_time();
    let Some(hierarchy) = writable_pids_hierarchy() else {
        eprintln!("no writable cgroup v1 pids hierarchy here: nothing to check");
        return;
    };
    let ws = workspace_with(TargetPolicy {
        // The commands write their pids beside the workspace, outside the sandbox.
        sandbox: executor::SandboxMode::Off,
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

/// Runs `commands[0]` in `workspaces[0]` and, while it waits for `go`, `commands[1]` in
/// `workspaces[1]`; then lets the first finish. Both must succeed (neither sweep killed the
/// other's daemon) and each daemon (its pid first in its file) must be gone.
fn run_side_by_side(
    workspaces: [&TestWorkspace; 2],
    commands: [&str; 2],
    go: &Path,
    pid_files: [&Path; 2],
) {
    let [first, second] = workspaces;
    let (first_report, second_report) = std::thread::scope(|scope| {
        let running = scope.spawn(|| first.apply(&patch("p", &validate(commands[0], 60))));
        let second_report = second.apply(&patch("q", &validate(commands[1], 60)));
        std::fs::write(go, "").unwrap();
        (running.join().unwrap(), second_report)
    });
    assert_eq!(
        second_report.status,
        Status::Succeeded,
        "{}",
        second_report.error
    );
    assert!(
        !exists(pids_in(pid_files[1])[0]),
        "the second command's daemon survived"
    );
    assert_eq!(
        first_report.status,
        Status::Succeeded,
        "the second command's sweep killed the first one's daemon: {:?}",
        first_report.commands
    );
    assert!(
        !exists(pids_in(pid_files[0])[0]),
        "the first command's daemon survived"
    );
}

#[test]
fn a_sweep_spares_another_running_command_and_the_executors_own_children() {
    let _one = one_at_a_time();
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
    run_side_by_side(
        [&first, &second],
        [&command, &second_command],
        &go,
        [&first_pids, &second_pids],
    );
    assert!(
        matches!(own.try_wait(), Ok(None)),
        "a sweep killed or reaped a child that was not a command's"
    );
    own.kill().unwrap();
    assert_eq!(own.wait().unwrap().signal(), Some(9));
}

/// Applies `patch` on a thread and waits for it a bounded time; past it (the apply hangs, as
/// on main for a leader whose main thread exited), kills the pids the command wrote into
/// `file`, which lets the apply end, and fails.
fn apply_within(ws: &TestWorkspace, patch: &ghost_core::Patch, file: &Path) -> ApplyReport {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel();
        scope.spawn(move || {
            let _ = tx.send(ws.apply(patch));
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(report) => report,
            Err(_) => {
                drop(Leftovers(file.to_owned()));
                panic!("the apply did not return within 30 s of a 1 s deadline");
            }
        }
    })
}

/// A program whose main thread exits while another thread runs on: /proc then shows the
/// process as a zombie (`Z`) although it is alive. Built with the machine's C compiler;
/// `None` (the test says it skipped) where there is none.
fn main_thread_exits(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("orphan_thread.c");
    std::fs::write(
        &source,
        r#"#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *hold(void *arg) { (void)arg; for (;;) pause(); return 0; }
int main(int argc, char **argv) {
    pthread_t thread;
    if (argc < 2 || pthread_create(&thread, 0, hold, 0) != 0) return 1;
    FILE *file = fopen(argv[1], "a");
    if (!file) return 1;
    fprintf(file, "%d\n", (int)getpid());
    fclose(file);
    pthread_exit(0);
}
"#,
    )
    .unwrap();
    let program = dir.join("orphan_thread");
    let built = std::process::Command::new("cc")
        .arg("-pthread")
        .arg("-o")
        .arg(&program)
        .arg(&source)
        .status()
        .ok()?;
    built.success().then_some(program)
}

#[test]
fn a_command_whose_main_thread_exited_is_killed_at_its_deadline() {
    let _one = one_at_a_time();
    let ws = shell_workspace();
    let dir = ws.root().parent().unwrap().to_owned();
    let Some(program) = main_thread_exits(&dir) else {
        eprintln!("no C compiler here: skipped");
        return;
    };
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    let command = format!("{} {}", program.display(), file.display());
    let report = apply_within(&ws, &patch("p", &validate(&command, 1)), &file);
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
    let pids = pids_in(&file);
    assert_eq!(pids.len(), 1, "the program wrote its pid");
    assert!(
        !exists(pids[0]),
        "process {} outlived the deadline",
        pids[0]
    );
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
    eprintln!(
        "main thread gone, one thread left, deadline 1 s: the command took {} ms",
        report.commands[0].duration_ms
    );
}

/// A program that vforks a child which never execs: the parent waits in uninterruptible
/// sleep (`D`), where SIGSTOP cannot stop it. Both write their pids into the file.
fn stuck_in_vfork(dir: &Path) -> Option<PathBuf> {
    let source = dir.join("stuck_in_vfork.c");
    std::fs::write(
        &source,
        r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 1;
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd < 0) return 1;
    dprintf(fd, "%d\n", (int)getpid());
    if (vfork() == 0) {
        dprintf(fd, "%d\n", (int)getpid());
        for (;;) pause();
    }
    return 0;
}
"#,
    )
    .unwrap();
    let program = dir.join("stuck_in_vfork");
    let built = std::process::Command::new("cc")
        .arg("-o")
        .arg(&program)
        .arg(&source)
        .status()
        .ok()?;
    built.success().then_some(program)
}

#[test]
fn a_process_that_cannot_be_stopped_is_killed_with_the_rest() {
    let _one = one_at_a_time();
    let ws = shell_workspace();
    let dir = ws.root().parent().unwrap().to_owned();
    let Some(program) = stuck_in_vfork(&dir) else {
        eprintln!("no C compiler here: skipped");
        return;
    };
    let file = pid_file(&ws);
    let _leftovers = Leftovers(file.clone());
    // Beside it, sleepers that left the session: they are stopped and killed as usual. All
    // ignore SIGTERM, so the sweep after the grace period is what ends them.
    let command = format!(
        "trap '' TERM; {program} {file} & for i in 1 2 3; do setsid sleep 1000 </dev/null >/dev/null 2>&1 & \
         echo $! >> {file}; done; wait",
        program = program.display(),
        file = file.display()
    );
    let report = apply_within(&ws, &patch("p", &validate(&command, 1)), &file);
    assert_eq!(report.status, Status::TimedOut, "{}", report.error);
    let pids = pids_in(&file);
    assert_eq!(pids.len(), 5, "all wrote their pids: {pids:?}");
    let survivors: Vec<i32> = pids.iter().copied().filter(|&pid| exists(pid)).collect();
    assert_eq!(survivors, Vec::<i32>::new(), "survived the deadline");
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
    eprintln!(
        "a process in D beside three sleepers, deadline 1 s, grace 0.2 s: the command took {} ms",
        report.commands[0].duration_ms
    );
}

/// The pids cgroup this process is in, relative to the hierarchy's root.
fn own_pids_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|name| name == "pids")
                .then(|| path.to_owned())
        })
        .unwrap_or_default()
}

#[test]
fn a_command_that_moves_the_executor_into_its_cgroup_does_not_get_it_stopped_or_killed() {
    let _one = one_at_a_time();
    let Some(hierarchy) = writable_pids_hierarchy() else {
        eprintln!("no writable cgroup v1 pids hierarchy here: nothing to check");
        return;
    };
    let ws = workspace_with(TargetPolicy {
        // The commands write their pids beside the workspace, outside the sandbox.
        sandbox: executor::SandboxMode::Off,
        commands: CommandPolicy::Any,
        shell: true,
        kill_grace: Duration::from_millis(200),
        pids_cgroup: Some(hierarchy.clone()),
        ..TargetPolicy::default()
    });
    let file = pid_file(&ws);
    // The leader is `/bin/sh -c`, started by the executor (this process): its $PPID is the
    // executor, which it moves into its own cgroup, whose members the sweep then kills.
    let command = format!(
        "echo $PPID; echo $PPID > {hierarchy}$(sed -n 's/^[0-9]*:pids://p' /proc/self/cgroup)/cgroup.procs",
        hierarchy = hierarchy.display()
    );
    let report = apply_within(&ws, &patch("p", &validate(&command, 30)), &file);
    assert_eq!(
        report.commands[0].output_tail.trim(),
        std::process::id().to_string(),
        "the command saw the executor as its parent ({:?}: {})",
        report.status,
        report.error
    );
    assert!(
        !own_pids_cgroup().contains("ghost-"),
        "the executor was left in a command's cgroup: {}",
        own_pids_cgroup()
    );
    let next = ws.apply(&patch("q", &validate("echo still here", 30)));
    assert_eq!(next.status, Status::Succeeded, "{}", next.error);
    assert_eq!(next.commands[0].output_tail, "still here\n");
    let prefix = format!("ghost-{}-", std::process::id());
    let left: Vec<String> = std::fs::read_dir(&hierarchy)
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "command cgroups left behind");
}

#[test]
fn a_command_whose_pids_cgroup_cannot_be_made_is_refused() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace_with(TargetPolicy {
        // The commands write their pids beside the workspace, outside the sandbox.
        sandbox: executor::SandboxMode::Off,
        commands: CommandPolicy::Any,
        shell: true,
        pids_cgroup: Some(dir.path().join("no-such-hierarchy")),
        ..TargetPolicy::default()
    });
    let ran = ws.root().parent().unwrap().join("ran");
    let report = ws.apply(&patch(
        "p",
        &validate(&format!("touch {}", ran.display()), 30),
    ));
    assert_eq!(report.status, Status::RolledBack, "{}", report.error);
    assert!(!ran.exists(), "the command ran without its pids cgroup");
    let output = &report.commands[0].output_tail;
    assert!(output.contains("pids cgroup"), "{output}");
    assert!(
        !output.contains("no-such-hierarchy"),
        "the client sees the executor's paths: {output}"
    );
}

#[test]
fn a_sweep_spares_another_running_commands_setsid_daemon() {
    let _one = one_at_a_time();
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
    // As above, but the first command's daemon leaves its session too: only what the
    // executor knows of the daemon's origin tells it from an orphan of the second command.
    let command = format!(
        "while [ ! -e {second_started} ]; do sleep 0.01; done; ( {daemon} ); touch {first_ready}; \
         while [ ! -e {go} ]; do sleep 0.01; done; kill -0 $(cat {file})",
        second_started = second_started.display(),
        daemon = setsid_grandchild(&first_pids),
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
    run_side_by_side(
        [&first, &second],
        [&command, &second_command],
        &go,
        [&first_pids, &second_pids],
    );
    assert_eq!(children_of_this_process(), Vec::<i32>::new());
}

/// Runs `git` in `root` for the test's own setup (no automatic gc of its own).
fn setup_git(root: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args([
            "-c",
            "gc.auto=0",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@localhost",
        ])
        .arg("-C")
        .arg(root)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

/// Loose objects in `root`'s repository.
fn loose_objects(root: &Path) -> usize {
    std::fs::read_dir(root.join(".git/objects"))
        .unwrap()
        .flatten()
        .filter(|dir| dir.file_name().len() == 2)
        .map(|dir| std::fs::read_dir(dir.path()).unwrap().count())
        .sum()
}

#[test]
fn the_executors_own_commit_starts_no_automatic_gc() {
    let _one = one_at_a_time();
    let ws = shell_workspace();
    let root = ws.root();
    // 3,000 committed blobs, all loose; with gc.auto=1 any `git commit` then runs
    // `git gc --auto` (in the foreground here, so that it is seen; detached, as by default,
    // it ends up in no session of ours and the next command's sweep takes it for an orphan).
    for n in 0..3000 {
        ws.write(&format!("blobs/{n}"), &format!("{n}\n"));
    }
    setup_git(root, &["init", "-q"]);
    setup_git(root, &["add", "-A"]);
    setup_git(root, &["commit", "-q", "-m", "base"]);
    setup_git(root, &["config", "gc.auto", "1"]);
    setup_git(root, &["config", "gc.autoDetach", "false"]);
    let before = loose_objects(root);
    assert!(before > 3000, "{before} loose objects");
    let report = ws.apply(&patch(
        "p",
        r#""edits":[{"op":"write","path":"a.txt","contents":"x"}],"commit":{"message":"m"}"#,
    ));
    assert_eq!(report.status, Status::Succeeded, "{}", report.error);
    let after = loose_objects(root);
    assert!(
        after > before,
        "the executor's commit ran a gc: {before} loose objects before, {after} after"
    );
}
