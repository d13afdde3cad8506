//! What oomguard reads of /proc about a process. The one place that parses /proc/<pid> files,
//! so the supervisor (finding a main pid, the younger generation) and the children (who forked
//! whom, verifying a move) share it instead of importing each other; and the kernel's release,
//! which start-up checks and the proc connector both ask for.

/// Field `n` of /proc/<pid>/stat, counted as proc(5) does (1 is the pid, 3 the state); None
/// once the process is gone. Only fields from 3 on: the command name (2) may contain spaces
/// and parentheses, so fields resume after the last ')'.
fn stat_field(pid: u32, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    field_of(&stat, n).map(str::to_owned)
}

/// Field `n` (from 3 on) of the text of a /proc/<pid>/stat read elsewhere.
pub fn field_of(stat: &str, n: usize) -> Option<&str> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// A process's parent pid (field 4); None once it is gone.
pub fn parent_pid(pid: u32) -> Option<u32> {
    stat_field(pid, 4)?.parse().ok()
}

/// When a process started, in clock ticks since boot (field 22): which of two is younger.
pub fn start_ticks(pid: u32) -> Option<u64> {
    stat_field(pid, 22)?.parse().ok()
}

/// A process's state letter (field 3): `R`, `S`, `Z` (a zombie not yet reaped), ...
pub fn state(pid: u32) -> Option<char> {
    stat_field(pid, 3)?.chars().next()
}

/// The running kernel's release ("6.1.0-57-cloud-amd64"); empty when /proc cannot say, which
/// every caller treats as "unknown version".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_running_with_its_parent_and_start() {
        let me = std::process::id();
        assert_eq!(parent_pid(me), Some(std::os::unix::process::parent_id()));
        assert!(matches!(state(me), Some('R' | 'S')));
        assert!(start_ticks(me).is_some());
        assert_eq!(
            stat_field(me, 2),
            None,
            "the command name is not a field here"
        );
        assert_eq!(parent_pid(u32::MAX), None);
    }
}
