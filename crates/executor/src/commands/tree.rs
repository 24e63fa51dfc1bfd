//! The process tree of one command: tracked while it runs, then stopped and killed as a whole.
//!
//! A command may leave its process group (`setpgid`) or its session (`setsid`) and may orphan
//! its children (a double fork), so neither a group kill nor the leader's exit reaches them.
//! The executor is therefore a child subreaper: an orphan anywhere below it is re-parented to
//! the executor instead of init, so its parent link still leads to us. A command's tree is its
//! leader, every process seen below it while it ran, every process whose parent is in the
//! tree, every process in its pids cgroup that descends from the executor, and every orphan
//! the executor adopted that is the command's: still in the command's session; or out of it
//! and carrying the command's tag (an environment variable each command's processes inherit,
//! [`TAG_VAR`]); or, untagged, started after the leader and claimed by no other live command.
//! The tag is a hint that keeps one command's sweep off another's daemons, not a boundary: a
//! process can clear its environment. Never a member, however it was found: the executor
//! itself, its own children (they are in its session, which a command, started in a session
//! of its own, can never get back into), and what another live command holds or tags.
//!
//! Killing the tree first SIGKILLs the leader and its process group (which needs no /proc),
//! then stops every member (SIGSTOP, so none can fork while the others die; a process in
//! uninterruptible sleep counts as stopped, it cannot fork either), then SIGKILLs them all,
//! repeating until /proc shows none. A process whose main thread exited shows as a zombie
//! while its other threads run, so zombies are signalled too (harmless for real ones). Each
//! signal goes only to the process first seen under that pid (its start time is checked just
//! before), so a reused pid is left alone. Adopted members are reaped by pid — only those: a
//! `waitpid(-1)` would steal the exit status of a child someone else in this process waits
//! for (the command's leader is waited for by its `std::process::Child`, `git` by
//! `Command::output`). What a sweep cannot kill within its budget is logged, counted
//! (`ghost_command_sweep_leftovers_total`) and retried by every later sweep.

mod janitor;
mod procs;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use super::cgroup::CommandCgroup;

use self::janitor::{janitor, leave_to_janitor};
use self::procs::{Proc, children, stat, table, tag_of};

/// The environment variable that tags each command's processes with the command's number.
pub const TAG_VAR: &str = "GHOST_COMMAND_TAG";

/// A live command as other commands' sweeps see it.
struct Entry {
    leader: i32,
    /// Its processes' [`TAG_VAR`] value.
    tag: String,
    /// The members seen so far.
    pids: HashSet<i32>,
}

/// Every live command, by a number of its own (a leader's pid may be reused once reaped), so
/// that one command's sweep leaves another's processes alone. Process-wide, as the subreaper
/// flag and the orphans it brings are. Held only to read or publish, never across /proc reads.
static LIVE: Mutex<BTreeMap<u64, Entry>> = Mutex::new(BTreeMap::new());
static NEXT_ENTRY: AtomicU64 = AtomicU64::new(0);

/// SIGSTOPs sent to one process before the kill goes ahead without it being stopped.
const MAX_STOP_TRIES: u32 = 20;
/// How long one sweep may take before it gives up and hands what is left to the janitor.
const SWEEP_BUDGET: Duration = Duration::from_secs(10);
/// Longest pause between two /proc scans of a sweep that is waiting for its kills to land.
const MAX_POLL: Duration = Duration::from_millis(50);
/// Largest tree tracked while the command runs; past it only the final /proc scan finds more.
const MAX_TRACKED: usize = 8192;

/// Makes this process the reaper of its orphaned descendants, so that a command's daemonised
/// grandchildren stay findable (and killable) below the executor instead of moving to init.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

fn lock<T>(mutex: &'static Mutex<T>) -> MutexGuard<'static, T> {
    // A panic elsewhere while holding the lock leaves the data itself intact.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Kills what commands of an earlier executor left running in `roots` (a crash leaves them
/// in sessions of their own, still writing): every process tagged with [`TAG_VAR`] by
/// another executor process whose working directory is inside one of `roots`. Call at
/// start, before the crash's rollback restores the workspace. Returns how many were killed.
/// A few passes, bounded, for processes forked meanwhile.
pub fn kill_leftovers(roots: &[std::path::PathBuf]) -> usize {
    let me = std::process::id();
    let mine = format!("{me}-");
    let mut killed = 0;
    for _ in 0..5 {
        let mut found = 0;
        for pid in table().into_keys() {
            if u32::try_from(pid).is_ok_and(|pid| pid == me) {
                continue;
            }
            let Some(tag) = tag_of(pid) else { continue };
            if tag.starts_with(&mine) {
                continue;
            }
            let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
                continue;
            };
            if !roots.iter().any(|root| cwd.starts_with(root)) {
                continue;
            }
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                tracing::warn!(pid, %tag, cwd = %cwd.display(),
                    "killed a command an earlier executor left running");
                found += 1;
            }
        }
        if found == 0 {
            break;
        }
        killed += found;
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

/// Sends `signal` to `pid` only if it is still the process that started at `start`. The
/// check and the kill are two steps, but a pid is reused only after the whole pid space has
/// gone round, so the gap between them is not a practical window.
fn signal_checked(pid: i32, start: u64, signal: Signal) -> bool {
    if stat(pid).is_some_and(|proc| proc.start == start) {
        kill(Pid::from_raw(pid), signal).is_ok()
    } else {
        false
    }
}

fn reap(pid: i32) {
    // By pid only, never -1: see the module comment.
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// What the other live commands hold.
#[derive(Default)]
struct Others {
    leaders: HashSet<i32>,
    pids: HashSet<i32>,
    tags: HashSet<String>,
}

impl Others {
    /// Read under the registry lock, which is held for nothing else.
    fn now(entry: u64) -> Self {
        let live = lock(&LIVE);
        let mut others = Self::default();
        for (_, other) in live.iter().filter(|(id, _)| **id != entry) {
            others.leaders.insert(other.leader);
            others.pids.insert(other.leader);
            others.pids.extend(other.pids.iter().copied());
            others.tags.insert(other.tag.clone());
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
    tag: String,
    leader: i32,
    leader_start: u64,
    /// Members seen so far, with their start times.
    known: HashMap<i32, u64>,
    me: i32,
    my_sid: i32,
    /// The command's own cgroup, when it has one. Its list of members is complete, but anyone
    /// allowed to may move any process in, so it is filtered like the rest. Dropped (removed)
    /// after the registry entry, when the tree is gone.
    cgroup: Option<CommandCgroup>,
}

impl Tree {
    /// Runs `spawn` with the command's tag (whose child moves itself into `cgroup`, if any)
    /// and registers its child as a live command's leader. Both happen under the registry
    /// lock, so no other command's sweep sees the new leader as an unclaimed orphan.
    pub fn spawn(
        cgroup: Option<CommandCgroup>,
        spawn: impl FnOnce(&str) -> std::io::Result<Child>,
    ) -> std::io::Result<(Child, Self)> {
        let me = nix::unistd::getpid().as_raw();
        let entry = NEXT_ENTRY.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{me}-{entry}");
        let mut live = lock(&LIVE);
        let child = spawn(&tag)?;
        let leader = i32::try_from(child.id()).unwrap_or(i32::MAX);
        live.insert(
            entry,
            Entry {
                leader,
                tag: tag.clone(),
                pids: HashSet::new(),
            },
        );
        drop(live);
        let tree = Self {
            entry,
            tag,
            leader,
            leader_start: stat(leader).map_or(0, |proc| proc.start),
            known: HashMap::new(),
            me,
            my_sid: nix::unistd::getsid(None).map_or(0, Pid::as_raw),
            cgroup,
        };
        Ok((child, tree))
    }

    /// Whether `pid` can never be this command's, whatever led to it.
    fn excluded(&self, pid: i32, proc: &Proc, others: &Others) -> bool {
        pid == self.me
            || proc.sid == self.my_sid
            || others.pids.contains(&pid)
            || others.leaders.contains(&proc.sid)
    }

    /// Whether `pid`, adopted by this process, is an orphan of this command: see the module
    /// comment. `sure_only`: an untagged one that left the session is not taken while any
    /// other command is live.
    fn owns_orphan(
        &self,
        pid: i32,
        proc: &Proc,
        tag: Option<&str>,
        others: &Others,
        sure_only: bool,
    ) -> bool {
        if pid == self.leader || self.excluded(pid, proc, others) {
            return false;
        }
        if proc.sid == self.leader {
            return true;
        }
        match tag {
            Some(tag) if tag == self.tag => true,
            Some(tag) if others.tags.contains(tag) => false,
            _ => proc.start >= self.leader_start && (others.leaders.is_empty() || !sure_only),
        }
    }

    /// The tags of the adopted processes whose ownership the session alone does not settle.
    fn orphan_tags<'a>(
        &self,
        orphans: impl Iterator<Item = (i32, &'a Proc)>,
    ) -> HashMap<i32, String> {
        orphans
            .filter(|(pid, proc)| {
                *pid != self.leader
                    && proc.sid != self.my_sid
                    && proc.sid != self.leader
                    && !self.known.contains_key(pid)
            })
            .filter_map(|(pid, _)| Some((pid, tag_of(pid)?)))
            .collect()
    }

    /// Records the processes now below the leader or a known member, and the orphans adopted
    /// since that can only be this command's. Cheap: it reads only the `children` files of the
    /// tree and of this process, so it can run often while the command does.
    pub fn track(&mut self) {
        self.known
            .retain(|pid, start| stat(*pid).is_some_and(|proc| proc.start == *start));
        let orphans: Vec<(i32, Proc)> = children(self.me)
            .into_iter()
            .filter(|pid| !self.known.contains_key(pid))
            .filter_map(|pid| Some((pid, stat(pid)?)))
            .collect();
        let tags = self.orphan_tags(orphans.iter().map(|(pid, proc)| (*pid, proc)));
        // After the reads: a command spawned meanwhile is in the registry by now.
        let others = Others::now(self.entry);
        self.evict_strangers(&others);
        let mut stack: Vec<i32> = std::iter::once(self.leader)
            .chain(self.known.keys().copied())
            .collect();
        for (orphan, proc) in &orphans {
            let tag = tags.get(orphan).map(String::as_str);
            if self.owns_orphan(*orphan, proc, tag, &others, true) {
                self.known.insert(*orphan, proc.start);
                stack.push(*orphan);
            }
        }
        while let Some(pid) = stack.pop() {
            for child in children(pid) {
                if self.known.len() >= MAX_TRACKED || self.known.contains_key(&child) {
                    continue;
                }
                if let Some(proc) = stat(child)
                    && !self.excluded(child, &proc, &others)
                {
                    self.known.insert(child, proc.start);
                    stack.push(child);
                }
            }
        }
        self.publish();
    }

    /// Moves the executor and its own children out of the command's cgroup as soon as the
    /// command moves them in: there, the cap would count (and soon refuse) their threads.
    fn evict_strangers(&self, others: &Others) {
        let Some(cgroup) = &self.cgroup else {
            return;
        };
        for pid in cgroup.pids() {
            if stat(pid).is_some_and(|proc| self.excluded(pid, &proc, others)) {
                tracing::warn!(
                    pid,
                    "the command moved a process not its own into its cgroup; moving it out"
                );
                cgroup.evict(pid);
            }
        }
    }

    fn publish(&self) {
        if let Some(entry) = lock(&LIVE).get_mut(&self.entry) {
            entry.pids = self.known.keys().copied().collect();
        }
    }

    /// Whether the leader or any tracked member is still running.
    pub fn any_running(&self) -> bool {
        std::iter::once((&self.leader, &self.leader_start))
            .chain(self.known.iter())
            .any(|(pid, start)| {
                stat(*pid).is_some_and(|proc| proc.start == *start && !proc.is_dead())
            })
    }

    /// Whether `pid` descends from this process in `table`.
    fn below_me(&self, pid: i32, table: &HashMap<i32, Proc>) -> bool {
        let mut at = pid;
        // Bounded: a table read at one instant has no cycles, but a torn read might.
        for _ in 0..=table.len() {
            match table.get(&at) {
                Some(proc) if proc.ppid == self.me => return true,
                Some(proc) if proc.ppid > 1 => at = proc.ppid,
                _ => return false,
            }
        }
        false
    }

    /// The members in /proc now (zombies too); the newly found are remembered.
    fn scan(&mut self) -> Vec<(i32, Proc)> {
        let table = table();
        let me = self.me;
        let adopted = table
            .iter()
            .filter(|(_, proc)| proc.ppid == me)
            .map(|(pid, proc)| (*pid, proc));
        let tags = self.orphan_tags(adopted);
        let in_cgroup = self
            .cgroup
            .as_ref()
            .map(CommandCgroup::pids)
            .unwrap_or_default();
        let others = Others::now(self.entry);
        let mut members: HashSet<i32> = self
            .known
            .iter()
            .chain(std::iter::once((&self.leader, &self.leader_start)))
            .filter(|(pid, start)| table.get(pid).is_some_and(|proc| proc.start == **start))
            .map(|(pid, _)| *pid)
            .collect();
        members.extend(table.iter().filter_map(|(pid, proc)| {
            let tag = tags.get(pid).map(String::as_str);
            (proc.ppid == me && self.owns_orphan(*pid, proc, tag, &others, false)).then_some(*pid)
        }));
        for pid in in_cgroup {
            let Some(proc) = table.get(&pid) else {
                continue;
            };
            if !self.excluded(pid, proc, &others) && self.below_me(pid, &table) {
                members.insert(pid);
            } else if !members.contains(&pid)
                && let Some(cgroup) = &self.cgroup
            {
                // Moved in from outside (the executor itself, say): not the command's to
                // kill, and it would keep the cgroup from being removed.
                tracing::warn!(
                    pid,
                    "a process not the command's was moved into its cgroup; moving it out"
                );
                cgroup.evict(pid);
            }
        }
        let mut below: HashMap<i32, Vec<i32>> = HashMap::new();
        for (pid, proc) in &table {
            below.entry(proc.ppid).or_default().push(*pid);
        }
        let mut stack: Vec<i32> = members.iter().copied().collect();
        while let Some(pid) = stack.pop() {
            for child in below.get(&pid).into_iter().flatten() {
                let excluded = table
                    .get(child)
                    .is_none_or(|proc| self.excluded(*child, proc, &others));
                if !excluded && members.insert(*child) {
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
        self.publish();
        // A zombie adopted from outside the executor's session is an orphan too, of an
        // earlier command, say; nobody else will reap it.
        for (pid, proc) in &table {
            let stray = proc.ppid == me
                && proc.is_dead()
                && *pid != self.leader
                && !others.pids.contains(pid)
                && proc.sid != self.my_sid;
            if stray {
                reap(*pid);
            }
        }
        found
    }

    /// Sends `signal` to every member now, zombie-looking ones too: a process whose main
    /// thread exited looks like one and is not.
    pub fn signal_all(&mut self, signal: Signal) {
        // Needs no /proc; the leader is not reaped yet, so its group id is still its own.
        let _ = killpg(Pid::from_raw(self.leader), signal);
        for (pid, proc) in self.scan() {
            signal_checked(pid, proc.start, signal);
        }
    }

    /// SIGKILLs the leader and its process group, stops and kills every other member and
    /// reaps those adopted by this process, until /proc shows none (or the budget runs out:
    /// the rest goes to the janitor). The leader must not be reaped yet (so its pid and group
    /// id cannot have been reused); it is left for its `Child` to reap.
    pub fn kill_all(&mut self, line: &str) -> Sweep {
        let started = Instant::now();
        let me = self.me;
        janitor(me);
        // Needs no /proc: the group and the leader die even where /proc shows nothing.
        let leader = Pid::from_raw(self.leader);
        let _ = killpg(leader, Signal::SIGKILL);
        let _ = kill(leader, Signal::SIGKILL);
        let mut killed: HashSet<(i32, u64)> = HashSet::new();
        let mut stop_tries: HashMap<(i32, u64), u32> = HashMap::new();
        let mut poll = Duration::from_millis(1);
        let mut left = Vec::new();
        let gone = loop {
            let members = self.scan();
            if started.elapsed() > SWEEP_BUDGET {
                left = members
                    .iter()
                    .filter(|(_, proc)| !proc.is_dead())
                    .map(|(pid, proc)| (*pid, proc.start))
                    .collect();
                break left.is_empty();
            }
            let pids: HashSet<i32> = members.iter().map(|(pid, _)| *pid).collect();
            let mut pending = false;
            let mut fresh = Vec::new();
            for (pid, proc) in &members {
                let key = (*pid, proc.start);
                if proc.is_dead() {
                    if *pid == self.leader {
                        continue;
                    }
                    if proc.ppid == me {
                        reap(*pid);
                    }
                    // Either just reaped or about to be re-parented to us as its parent (a
                    // member) dies; a parent outside the tree reaps it itself.
                    pending |= proc.ppid == me || pids.contains(&proc.ppid);
                } else if killed.contains(&key) {
                    pending = true;
                } else if proc.is_zombie() {
                    // Its main thread is gone, so it cannot be stopped: kill it now.
                    if signal_checked(*pid, proc.start, Signal::SIGKILL) {
                        killed.insert(key);
                    }
                    pending = true;
                } else {
                    fresh.push((key, *proc));
                }
            }
            if fresh.is_empty() {
                if !pending {
                    break true;
                }
                std::thread::sleep(poll);
                poll = (poll * 2).min(MAX_POLL);
                continue;
            }
            // Freeze first: a stopped process cannot fork while its tree is being killed.
            let mut stopping = false;
            for ((pid, start), proc) in &fresh {
                let tries = stop_tries.entry((*pid, *start)).or_default();
                if !proc.cannot_fork() && *tries < MAX_STOP_TRIES {
                    *tries += 1;
                    stopping = true;
                    signal_checked(*pid, *start, Signal::SIGSTOP);
                }
            }
            if stopping {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            for ((pid, start), _) in &fresh {
                if signal_checked(*pid, *start, Signal::SIGKILL) {
                    killed.insert((*pid, *start));
                }
            }
            poll = Duration::from_millis(1);
        };
        leave_to_janitor(&left, line);
        Sweep {
            killed: killed.len(),
            gone,
            took: started.elapsed(),
        }
    }

    /// The leader's pid and start time, for the janitor when it cannot be reaped.
    pub fn leader(&self) -> (i32, u64) {
        (self.leader, self.leader_start)
    }
}

/// Hands a process that outlived every attempt to kill it to the janitor.
pub fn abandon(pid: i32, start: u64, line: &str) {
    leave_to_janitor(&[(pid, start)], line);
}

impl Drop for Tree {
    fn drop(&mut self) {
        lock(&LIVE).remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::procs::parse_stat;
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
                threads: 1,
                start: 12345
            })
        );
        assert_eq!(parse_stat("42 (x) S 7"), None);
    }

    #[test]
    fn a_signal_reaches_only_the_process_first_seen_under_its_pid() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let start = stat(pid).unwrap().start;
        // Another start time: the pid now names some later process, which is left alone.
        assert!(!signal_checked(pid, start + 1, Signal::SIGKILL));
        assert!(matches!(child.try_wait(), Ok(None)));
        assert!(signal_checked(pid, start, Signal::SIGKILL));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&child.wait().unwrap()),
            Some(9)
        );
    }
}
