//! Fork events from the kernel's proc connector (netlink `NETLINK_CONNECTOR`, group
//! `CN_IDX_PROC`): one socket for the whole daemon, each `PROC_EVENT_FORK` dispatched by the
//! parent's tgid to the instance that watches that main process. Thread creation (child pid !=
//! child tgid) is ignored. When the socket overflowed (`ENOBUFS`: events were dropped) every
//! subscriber is told to rescan its main leaf's cgroup.procs; the same rescan is the fallback
//! when the connector cannot be opened at all (no CAP_NET_ADMIN, a kernel without
//! CONFIG_PROC_EVENTS, a network namespace other than the initial one).
//!
//! Written by hand on purpose: the one crate for it, cnproc 0.2.1, sets NETLINK_NO_ENOBUFS (so an
//! overrun would go unnoticed and a child would stay unplaced until a periodic rescan), loops for
//! ever on an NLMSG_ERROR message, drops the parent's tgid (the only way to tell whose child it
//! is) and blocks its thread in recv(). What is left is small: nix has no protocol constant
//! for the connector (one libc::socket call), and the messages are parsed from bytes, with
//! no unsafe casts.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

// linux/netlink.h, linux/connector.h, linux/cn_proc.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const CN_MSG_LEN: usize = 20;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
/// struct proc_event: what (4), cpu (4), timestamp_ns (8), then the union.
const EVENT_DATA: usize = 16;
/// Enough for a burst: fork events are small (~76 bytes each), and every overrun costs a rescan.
const RCVBUF: usize = 4 << 20;

/// What a subscriber hears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// The watched process forked `child` (a process, not a thread); `at` is when the daemon read
    /// the event.
    Forked { child: u32, at: Instant },
    /// Events may have been lost: rescan.
    Rescan,
}

/// A registration for one main process's forks; dropping it unregisters.
pub struct Subscription {
    parent: u32,
    pub rx: mpsc::UnboundedReceiver<Note>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(Some(hub)) = HUB.get() {
            hub.subs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.parent);
        }
    }
}

struct Hub {
    subs: Mutex<HashMap<u32, mpsc::UnboundedSender<Note>>>,
}

/// Opened on the first subscription (inside the runtime); None for good when it cannot be.
static HUB: OnceLock<Option<Hub>> = OnceLock::new();

/// Fork events of `parent`'s children, or None when the connector is unavailable (the caller
/// rescans on a timer instead; the reason was logged once).
pub fn subscribe(parent: u32) -> Option<Subscription> {
    let hub = HUB.get_or_init(start).as_ref()?;
    let (tx, rx) = mpsc::unbounded_channel();
    hub.subs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(parent, tx);
    Some(Subscription { parent, rx })
}

/// Whether fork events are coming (for the logs and the rescan interval).
pub fn available() -> bool {
    matches!(HUB.get(), Some(Some(_)))
}

fn start() -> Option<Hub> {
    if std::env::var_os("OOMGUARD_TEST_NO_PROC_CONNECTOR").is_some_and(|v| v == "1") {
        warn!("proc connector disabled for tests (OOMGUARD_TEST_NO_PROC_CONNECTOR=1): children are placed by rescanning cgroup.procs");
        return None;
    }
    match open() {
        Ok(fd) => {
            info!("listening for fork events on the kernel's proc connector");
            tokio::spawn(read_loop(fd));
            Some(Hub {
                subs: Mutex::new(HashMap::new()),
            })
        }
        Err(e) => {
            warn!("the kernel's proc connector is not available ({e}): children are placed by rescanning cgroup.procs, which is slower");
            None
        }
    }
}

fn open() -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: socket() takes three integers and returns a new fd or -1.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_CONNECTOR,
        )
    };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A bigger buffer makes overruns rarer; FORCE (root) goes past rmem_max. Best effort.
    let size = RCVBUF;
    if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &size).is_err() {
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &size);
    }
    // Port id 0: the kernel picks a unique one.
    let addr = nix::sys::socket::NetlinkAddr::new(0, CN_IDX_PROC);
    nix::sys::socket::bind(fd.as_raw_fd(), &addr).map_err(std::io::Error::from)?;
    let listen = subscribe_message();
    nix::sys::socket::send(fd.as_raw_fd(), &listen, nix::sys::socket::MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    // SAFETY: the AsyncFd owns the fd for its whole lifetime.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
}

/// nlmsghdr + cn_msg + PROC_CN_MCAST_LISTEN, in native byte order as the kernel reads it.
fn subscribe_message() -> Vec<u8> {
    let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&0u16.to_ne_bytes()); // nlmsg_flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes()); // id.idx
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes()); // id.val
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    m
}

/// A fork of a process (not a thread creation): (parent tgid, child pid).
#[derive(Debug, PartialEq, Eq)]
struct Fork {
    parent_tgid: u32,
    child: u32,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The process forks in one datagram (several netlink messages may share it). Anything short or
/// of another kind is skipped.
fn parse(buf: &[u8]) -> Vec<Fork> {
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(len) = u32_at(buf, off) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        if u16_at(msg, 4) != Some(NLMSG_ERROR) {
            if let Some(f) = parse_event(&msg[NLMSG_HDRLEN..]) {
                out.push(f);
            }
        }
        off += (len + 3) & !3;
    }
    out
}

fn parse_event(cn: &[u8]) -> Option<Fork> {
    if u32_at(cn, 0)? != CN_IDX_PROC || u32_at(cn, 4)? != CN_VAL_PROC {
        return None;
    }
    let ev = cn.get(CN_MSG_LEN..)?;
    if u32_at(ev, 0)? != PROC_EVENT_FORK {
        return None;
    }
    let d = EVENT_DATA;
    let (parent_tgid, child_pid, child_tgid) =
        (u32_at(ev, d + 4)?, u32_at(ev, d + 8)?, u32_at(ev, d + 12)?);
    // A new thread has its own pid but its process's tgid.
    (child_pid == child_tgid).then_some(Fork {
        parent_tgid,
        child: child_pid,
    })
}

async fn read_loop(fd: AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                error!("proc connector: cannot wait on the socket ({e}); children are placed by rescans from now on");
                broadcast(Note::Rescan);
                return;
            }
        };
        loop {
            match nix::sys::socket::recv(
                fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => break,
                Ok(n) => dispatch(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ENOBUFS) => {
                    warn!("proc connector: events were lost (ENOBUFS, the socket buffer overflowed): rescanning every instance's children");
                    broadcast(Note::Rescan);
                }
                Err(e) => {
                    error!(
                        "proc connector: recv failed ({e}): rescanning every instance's children"
                    );
                    broadcast(Note::Rescan);
                    guard.clear_ready();
                    break;
                }
            }
        }
    }
}

fn dispatch(datagram: &[u8]) {
    let at = Instant::now();
    let Some(Some(hub)) = HUB.get() else { return };
    let subs = hub.subs.lock().unwrap_or_else(|e| e.into_inner());
    for f in parse(datagram) {
        if let Some(tx) = subs.get(&f.parent_tgid) {
            let _ = tx.send(Note::Forked { child: f.child, at });
        }
    }
}

fn broadcast(note: Note) {
    let Some(Some(hub)) = HUB.get() else { return };
    for tx in hub.subs.lock().unwrap_or_else(|e| e.into_inner()).values() {
        let _ = tx.send(note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message carrying one proc event, as the kernel sends it.
    fn event(
        what: u32,
        parent_pid: u32,
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    ) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&0u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&0u64.to_ne_bytes()); // timestamp
        for v in [parent_pid, parent_tgid, child_pid, child_tgid] {
            ev.extend_from_slice(&v.to_ne_bytes());
        }
        let total = NLMSG_HDRLEN + CN_MSG_LEN + ev.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(total as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&ev);
        m
    }

    #[test]
    fn forks_are_parsed_and_threads_ignored() {
        let mut dgram = event(PROC_EVENT_FORK, 100, 100, 101, 101);
        dgram.extend(event(PROC_EVENT_FORK, 102, 100, 103, 100)); // a thread of 100
        dgram.extend(event(0x8000_0000, 0, 0, 0, 0)); // exit
        dgram.extend(event(PROC_EVENT_FORK, 105, 100, 106, 106)); // a thread of 100 forked
        assert_eq!(
            parse(&dgram),
            vec![
                Fork {
                    parent_tgid: 100,
                    child: 101
                },
                Fork {
                    parent_tgid: 100,
                    child: 106
                }
            ]
        );
    }

    #[test]
    fn short_or_foreign_messages_are_skipped() {
        let full = event(PROC_EVENT_FORK, 1, 1, 2, 2);
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).is_empty(), "cut at {cut}");
        }
        let mut foreign = full.clone();
        foreign[NLMSG_HDRLEN] = 9; // another connector index
        assert!(parse(&foreign).is_empty());
        let mut zero_len = full.clone();
        zero_len[..4].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse(&zero_len).is_empty(), "a zero length must not loop");
    }

    #[test]
    fn the_listen_message_has_the_kernel_layout() {
        let m = subscribe_message();
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u32_at(&m, 16), Some(CN_IDX_PROC));
        assert_eq!(u16_at(&m, 32), Some(4));
        assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
    }
}
