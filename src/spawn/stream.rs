//! A worker's stdout and stderr on a journal stream of its own.
//!
//! Inherited, they would be the daemon's own stream: journald then counts a chatty worker's
//! lines against oomguard.service's rate limit and drops the daemon's entries (the MESSAGE_IDs
//! operators alert on), and a worker could print lines that read as the daemon's. So, when the
//! daemon logs to the journal, each worker connects to journald's stdout socket itself, between
//! fork and exec, after it moved into its cgroup and dropped its privileges: journald takes the
//! stream's pid, uid and cgroup from that connection, so the entries carry the worker's `_PID`
//! and `_UID`, `_SYSTEMD_UNIT=oomguard-workers.service` (another rate-limit bucket), and the
//! instance ("celery/0") as `SYSLOG_IDENTIFIER`. The protocol is the one systemd uses for
//! `StandardOutput=journal` (a header of seven lines, then the text); no crate speaks it, and
//! it has to run without allocating in the forked child, hence by hand.

use std::mem::MaybeUninit;

/// journald's stream socket (systemd-journald.socket).
const STDOUT_SOCKET: &[u8] = b"/run/systemd/journal/stdout";

/// Everything the child needs, prepared in the parent (the child may not allocate).
pub struct JournalStream {
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    header: Vec<u8>,
}

impl JournalStream {
    /// The stream for `identifier`, or None when the identifier cannot be one header line.
    pub fn new(identifier: &str) -> Option<JournalStream> {
        if identifier.is_empty() || identifier.contains('\n') {
            return None;
        }
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(STDOUT_SOCKET) {
            *dst = *src as libc::c_char;
        }
        let addr_len =
            (std::mem::size_of::<libc::sa_family_t>() + STDOUT_SOCKET.len() + 1) as libc::socklen_t;
        Some(JournalStream {
            addr,
            addr_len,
            header: header(identifier),
        })
    }

    /// In the child between fork and exec: connects, sends the header and puts the stream on
    /// fds 1 and 2. Best effort: if journald is not there, the worker keeps what it inherited.
    ///
    /// # Safety
    /// Only async-signal-safe calls (socket, connect, shutdown, write, dup2, close) on memory
    /// prepared before the fork.
    pub unsafe fn attach(&self) {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return;
        }
        let addr = (&self.addr as *const libc::sockaddr_un).cast::<libc::sockaddr>();
        let ok = libc::connect(fd, addr, self.addr_len) == 0
            && libc::shutdown(fd, libc::SHUT_RD) == 0
            && write_all(fd, &self.header);
        if ok {
            // dup2 clears close-on-exec on the copies: the worker keeps them.
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
        }
        libc::close(fd);
    }
}

/// systemd's stdout stream header: identifier, unit id (none: journald reads the unit from the
/// peer's cgroup), priority 6 (info), level prefix on (a worker's `<3>` marks an error line, as
/// under systemd), and no forwarding to syslog, kmsg or the console.
fn header(identifier: &str) -> Vec<u8> {
    format!("{identifier}\n\n6\n1\n0\n0\n0\n").into_bytes()
}

/// write(2) until done; false on an error. Async-signal-safe.
unsafe fn write_all(fd: libc::c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        if n <= 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_header_is_systemds_seven_lines() {
        assert_eq!(header("celery/0"), b"celery/0\n\n6\n1\n0\n0\n0\n");
        assert!(JournalStream::new("a\nb").is_none());
        assert!(JournalStream::new("").is_none());
    }

    /// The same calls the child makes, against a listener standing in for journald.
    #[test]
    fn attach_sends_the_header_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let listener = UnixListener::bind(&path).unwrap();
        let mut stream = JournalStream::new("web/1").unwrap();
        let bytes = path.as_os_str().as_encoded_bytes();
        stream.addr.sun_path = [0; 108];
        for (dst, src) in stream.addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        stream.addr_len =
            (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        // In a child process: attach() replaces fds 1 and 2, which the test harness needs.
        // SAFETY: the child only calls attach (async-signal-safe) and write, then _exit.
        match unsafe { libc::fork() } {
            0 => unsafe {
                stream.attach();
                let line = b"hello from the worker\n";
                libc::write(1, line.as_ptr().cast(), line.len());
                libc::_exit(0);
            },
            pid => {
                assert!(pid > 0);
                let (mut conn, _) = listener.accept().unwrap();
                let mut got = String::new();
                conn.read_to_string(&mut got).unwrap();
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(got, "web/1\n\n6\n1\n0\n0\n0\nhello from the worker\n");
            }
        }
    }
}
