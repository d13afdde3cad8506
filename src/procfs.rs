//! What oomguard reads of /proc about a process. The one place that parses /proc/<pid> files,
//! so the supervisor (finding a main pid) and the children (who forked whom, verifying a move)
//! share it instead of importing each other.

/// A process's parent pid from /proc; None once it is gone.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}
