//! The process tree of one command: tracked while it runs, then stopped and killed as a whole.
//!
//! A command may leave its process group (`setpgid`) or its session (`setsid`) and may orphan
//! its children (a double fork), so neither a group kill nor the leader's exit reaches them.
//! The executor is therefore a child subreaper: an orphan anywhere below it is re-parented to
//! the executor instead of init, so its parent link still leads to us. A command's tree is its
//! leader, every process seen below it while it ran, every process whose parent is in the
//! tree, and every orphan the executor adopted that is the command's: still in the command's
//! session, or out of it, started after the leader and claimed by no other live command. The
//! executor's own children are never taken: they are in its session, which a command (started
//! in a session of its own) can never get back into. Killing the tree stops every member
//! first (SIGSTOP, so none can fork while the others die), then SIGKILLs them all, repeating
//! until /proc shows none, and reaps the adopted ones by pid — only those: a `waitpid(-1)`
//! would steal the exit status of a child someone else in this process waits for (the
//! command's leader is waited for by its `std::process::Child`, `git` by `Command::output`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::cgroup::CommandCgroup;

/// A live command as other commands' sweeps see it.
struct Entry {
    leader: i32,
    /// The members seen so far.
    pids: BTreeSet<i32>,
}

/// Every live command, by a number of its own (a leader's pid may be reused once reaped), so
/// that one command's sweep leaves another's processes alone. Process-wide, as the subreaper
/// flag and the orphans it brings are.
static LIVE: Mutex<BTreeMap<u64, Entry>> = Mutex::new(BTreeMap::new());
static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

/// Rounds of SIGSTOP before the kill goes ahead anyway (a process in uninterruptible sleep
/// does not stop until it wakes).
const MAX_STOP_ROUNDS: u32 = 50;
/// How long one sweep may take before it gives up and reports what is left.
const SWEEP_BUDGET: Duration = Duration::from_secs(10);
/// Largest tree tracked while the command runs; past it only the final /proc scan finds more.
const MAX_TRACKED: usize = 8192;

/// Makes this process the reaper of its orphaned descendants, so that a command's daemonised
/// grandchildren stay findable (and killable) below the executor instead of moving to init.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

fn live() -> MutexGuard<'static, BTreeMap<u64, Entry>> {
    // A panic elsewhere while holding the lock leaves the map itself intact.
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The fields of `/proc/<pid>/stat` a sweep needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    state: u8,
    ppid: i32,
    sid: i32,
    /// Start time in clock ticks since boot: tells a process from a later one given its pid.
    start: u64,
}

impl Proc {
    fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }

    fn is_stopped(&self) -> bool {
        matches!(self.state, b'T' | b't')
    }
}

fn parse_stat(text: &str) -> Option<Proc> {
    // The command name in parentheses may itself hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        state: fields.first()?.bytes().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

fn stat(pid: i32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on the machine.
fn table() -> HashMap<i32, Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The children of every thread of `pid` (`/proc/<pid>/task/<tid>/children`).
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|word| word.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// What the other live commands hold.
#[derive(Default)]
struct Others {
    leaders: HashSet<i32>,
    pids: HashSet<i32>,
}

impl Others {
    fn of(live: &BTreeMap<u64, Entry>, entry: u64) -> Self {
        let mut others = Self::default();
        for (_, other) in live.iter().filter(|(id, _)| **id != entry) {
            others.leaders.insert(other.leader);
            others.pids.insert(other.leader);
            others.pids.extend(other.pids.iter().copied());
        }
        others
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Processes sent SIGKILL.
    pub killed: usize,
    /// Whether no member was left when it ended.
    pub gone: bool,
    /// How long it took.
    pub took: Duration,
}

/// One command's process tree, registered as live until dropped.
pub struct Tree {
    entry: u64,
    leader: i32,
    leader_start: u64,
    /// Members seen so far, with their start times.
    known: HashMap<i32, u64>,
    me: Pid,
    my_sid: i32,
    /// The command's own cgroup, when it has one: its list of members is complete. Dropped
    /// (removed) after the registry entry, when the tree is gone.
    cgroup: Option<CommandCgroup>,
}

impl Tree {
    /// Runs `spawn` (whose child moves itself into `cgroup`, if any) and registers its child as
    /// a live command's leader. Both happen under the registry lock, so no other command's
    /// sweep sees the new leader as an unclaimed orphan.
    pub fn spawn(
        cgroup: Option<CommandCgroup>,
        spawn: impl FnOnce() -> std::io::Result<Child>,
    ) -> std::io::Result<(Child, Self)> {
        let mut live = live();
        let child = spawn()?;
        let leader = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let entry = NEXT_ENTRY.fetch_add(1, Ordering::Relaxed);
        live.insert(
            entry,
            Entry {
                leader,
                pids: BTreeSet::new(),
            },
        );
        drop(live);
        let me = nix::unistd::getpid();
        let tree = Self {
            entry,
            leader,
            leader_start: stat(leader).map_or(0, |proc| proc.start),
            known: HashMap::new(),
            me,
            my_sid: nix::unistd::getsid(None).map_or(0, Pid::as_raw),
            cgroup,
        };
        Ok((child, tree))
    }

    /// Whether `pid`, adopted by this process, is an orphan of this command. Sure when it is
    /// still in the command's session (the leader's pid); one that left it is taken when it
    /// started after the leader, and — `sure_only` — no other command is live to own it.
    fn owns_orphan(&self, pid: i32, proc: &Proc, others: &Others, sure_only: bool) -> bool {
        if pid == self.leader
            || others.pids.contains(&pid)
            || proc.sid == self.my_sid
            || others.leaders.contains(&proc.sid)
        {
            return false;
        }
        let alone = others.leaders.is_empty();
        proc.sid == self.leader || (proc.start >= self.leader_start && (alone || !sure_only))
    }

    /// Records the processes now below the leader or a known member, and the orphans adopted
    /// since that can only be this command's. Cheap: it reads only the `children` files of the
    /// tree and of this process, so it can run often while the command does.
    pub fn track(&mut self) {
        let mut live = live();
        let others = Others::of(&live, self.entry);
        self.known
            .retain(|pid, start| stat(*pid).is_some_and(|proc| proc.start == *start));
        let mut stack: Vec<i32> = std::iter::once(self.leader)
            .chain(self.known.keys().copied())
            .collect();
        for orphan in children(self.me.as_raw()) {
            if self.known.contains_key(&orphan) {
                continue;
            }
            if let Some(proc) = stat(orphan)
                && self.owns_orphan(orphan, &proc, &others, true)
            {
                self.known.insert(orphan, proc.start);
                stack.push(orphan);
            }
        }
        while let Some(pid) = stack.pop() {
            for child in children(pid) {
                if self.known.len() >= MAX_TRACKED || self.known.contains_key(&child) {
                    continue;
                }
                if let Some(proc) = stat(child) {
                    self.known.insert(child, proc.start);
                    stack.push(child);
                }
            }
        }
        self.publish(&mut live);
    }

    fn publish(&self, live: &mut BTreeMap<u64, Entry>) {
        if let Some(entry) = live.get_mut(&self.entry) {
            entry.pids = self.known.keys().copied().collect();
        }
    }

    /// Whether the leader or any tracked member is still running.
    pub fn any_running(&self) -> bool {
        let leader = stat(self.leader)
            .is_some_and(|proc| proc.start == self.leader_start && !proc.is_zombie());
        leader
            || self.known.iter().any(|(pid, start)| {
                stat(*pid).is_some_and(|proc| proc.start == *start && !proc.is_zombie())
            })
    }

    /// The members in /proc now (zombies too); the newly found are remembered.
    fn scan(&mut self) -> Vec<(i32, Proc)> {
        let mut live = live();
        let others = Others::of(&live, self.entry);
        let table = table();
        let me = self.me.as_raw();
        let mut members: HashSet<i32> = self
            .known
            .iter()
            .chain(std::iter::once((&self.leader, &self.leader_start)))
            .filter(|(pid, start)| table.get(pid).is_some_and(|proc| proc.start == **start))
            .map(|(pid, _)| *pid)
            .collect();
        members.extend(table.iter().filter_map(|(pid, proc)| {
            (proc.ppid == me && self.owns_orphan(*pid, proc, &others, false)).then_some(*pid)
        }));
        if let Some(cgroup) = &self.cgroup {
            members.extend(
                cgroup
                    .pids()
                    .into_iter()
                    .filter(|pid| table.contains_key(pid)),
            );
        }
        let mut below: HashMap<i32, Vec<i32>> = HashMap::new();
        for (pid, proc) in &table {
            below.entry(proc.ppid).or_default().push(*pid);
        }
        let mut stack: Vec<i32> = members.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for child in below.get(&pid).into_iter().flatten() {
                if members.insert(*child) {
                    stack.push(*child);
                }
            }
        }
        let found: Vec<(i32, Proc)> = members
            .into_iter()
            .filter_map(|pid| Some((pid, *table.get(&pid)?)))
            .collect();
        for (pid, proc) in &found {
            self.known.insert(*pid, proc.start);
        }
        self.publish(&mut live);
        // A zombie adopted from outside the executor's session is an orphan too, of an
        // earlier command or of a detached `git gc`, say; nobody else will reap it.
        for (pid, proc) in &table {
            let stray = proc.ppid == me
                && proc.is_zombie()
                && *pid != self.leader
                && !others.pids.contains(pid)
                && proc.sid != self.my_sid;
            if stray {
                self.reap(*pid);
            }
        }
        found
    }

    fn reap(&self, pid: i32) {
        // By pid only, never -1: see the module comment.
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    }

    /// Sends `signal` to every member now.
    pub fn signal_all(&mut self, signal: Signal) {
        for (pid, proc) in self.scan() {
            if !proc.is_zombie() {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Stops and kills every member and reaps those adopted by this process, until /proc
    /// shows none (or the budget runs out). The leader, once dead, is left for its `Child` to
    /// reap.
    pub fn kill_all(&mut self) -> Sweep {
        let started = Instant::now();
        let mut killed: HashSet<(i32, u64)> = HashSet::new();
        let mut stop_rounds = 0;
        let me = self.me.as_raw();
        let gone = loop {
            if started.elapsed() > SWEEP_BUDGET {
                break false;
            }
            let members = self.scan();
            let mut pending = false;
            let mut fresh = Vec::new();
            for (pid, proc) in &members {
                if proc.is_zombie() {
                    if *pid == self.leader {
                        continue;
                    }
                    if proc.ppid == me {
                        self.reap(*pid);
                    }
                    // Either just reaped or about to be re-parented to us as its parent dies.
                    pending = true;
                } else if killed.contains(&(*pid, proc.start)) {
                    pending = true;
                } else {
                    fresh.push((*pid, *proc));
                }
            }
            if fresh.is_empty() {
                if !pending {
                    break true;
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // Freeze first: a stopped process cannot fork while its tree is being killed.
            if stop_rounds < MAX_STOP_ROUNDS && fresh.iter().any(|(_, proc)| !proc.is_stopped()) {
                stop_rounds += 1;
                for (pid, _) in &fresh {
                    let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for (pid, proc) in &fresh {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
                killed.insert((*pid, proc.start));
            }
        };
        Sweep {
            killed: killed.len(),
            gone,
            took: started.elapsed(),
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        live().remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let line = "42 (a) b (c)) S 7 42 40 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 2 3";
        assert_eq!(
            parse_stat(line),
            Some(Proc {
                state: b'S',
                ppid: 7,
                sid: 40,
                start: 12345
            })
        );
        assert_eq!(parse_stat("42 (x) S 7"), None);
    }
}
