//! Reading `/proc`: a process's parent, group, session and start time, the whole process
//! table, a command's tag, and a process's children.

use super::TAG_VAR;
use std::collections::HashMap;

/// The fields of `/proc/<pid>/stat` a sweep needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Proc {
    pub(super) state: u8,
    pub(super) ppid: i32,
    pub(super) sid: i32,
    /// Threads still running: a zombie-state process with more than one is alive.
    pub(super) threads: u32,
    /// Start time in clock ticks since boot: tells a process from a later one given its pid.
    pub(super) start: u64,
}

impl Proc {
    /// Shown as a zombie: dead, or only its main thread exited.
    pub(super) fn is_zombie(&self) -> bool {
        self.state == b'Z'
    }

    /// Dead for good, waiting to be reaped.
    pub(super) fn is_dead(&self) -> bool {
        self.is_zombie() && self.threads <= 1
    }

    /// Stopped, or in uninterruptible sleep: either way it cannot fork now.
    pub(super) fn cannot_fork(&self) -> bool {
        matches!(self.state, b'T' | b't' | b'D')
    }
}

pub(super) fn parse_stat(text: &str) -> Option<Proc> {
    // The command name in parentheses may itself hold spaces and parentheses.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Proc {
        state: fields.first()?.bytes().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        threads: fields.get(17)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

pub(super) fn stat(pid: i32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every process on the machine.
pub(super) fn table() -> HashMap<i32, Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The [`TAG_VAR`] value `pid` was started with, if any.
pub(super) fn tag_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{TAG_VAR}=");
    environ
        .split(|byte| *byte == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// The children of every thread of `pid` (`/proc/<pid>/task/<tid>/children`).
pub(super) fn children(pid: i32) -> Vec<i32> {
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
