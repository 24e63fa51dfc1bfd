//! What `/proc` says about a process: its memory and CPU time ([`memory_of`]), its ended
//! children's CPU time and its live children, for the services and the run's PostgreSQL.

use serde::Serialize;

/// Memory of one process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// Resident set now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set (`VmHWM`).
    pub peak_kib: u64,
    /// Anonymous resident memory (`RssAnon`: heap, stacks), without the binary's mapped code.
    pub anon_kib: u64,
    /// CPU time used so far, user + system, ms (from `/proc/<pid>/stat`).
    pub cpu_ms: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
pub fn memory_of(pid: u32) -> std::io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        cpu_ms: cpu_ms_of(pid)?,
    })
}

/// Clock ticks per second in `/proc/<pid>/stat` (`USER_HZ`, fixed at 100 for userspace).
const USER_HZ: u64 = 100;

/// User + system CPU time of `pid`, ms.
fn cpu_ms_of(pid: u32) -> std::io::Result<u64> {
    // utime and stime are fields 14 and 15 of the line.
    stat_ms(pid, [14, 15])
}

/// CPU time of `pid`'s ended and waited-for children (`cutime` + `cstime`), ms.
pub fn children_cpu_ms(pid: u32) -> Option<u64> {
    // cutime and cstime are fields 16 and 17 of the line.
    stat_ms(pid, [16, 17]).ok()
}

/// The sum of two clock-tick fields of `/proc/<pid>/stat` (numbered from 1 as in proc(5)),
/// ms.
fn stat_ms(pid: u32, fields: [usize; 2]) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2, in parentheses) may hold spaces: count from after it, where
    // field 3 starts.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let after_name: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |field: usize| -> u64 {
        after_name
            .get(field - 3)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks(fields[0]) + ticks(fields[1])) * 1000 / USER_HZ)
}

/// The live children of `pid` (from `/proc/<pid>/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}
