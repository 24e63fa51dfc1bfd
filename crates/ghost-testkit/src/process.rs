//! What a test asks about a process it started (or its child started), from `/proc`.

/// Whether `pid` has ended: no `/proc/<pid>`, or a zombie waiting to be reaped.
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}
