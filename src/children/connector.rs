//! Fork events from the kernel's proc connector (netlink `NETLINK_CONNECTOR`, group
//! `CN_IDX_PROC`): one socket for the whole daemon, each `PROC_EVENT_FORK` dispatched by the
//! parent's tgid to the instance that watches that main process. When the socket overflowed
//! (`ENOBUFS`: events were dropped) every subscriber is told to rescan its main leaf's
//! cgroup.procs; the same rescan is the fallback when the connector cannot be opened at all (no
//! CAP_NET_ADMIN, a kernel without CONFIG_PROC_EVENTS, a network namespace other than the
//! initial one).
//!
//! Any local user makes proc events (a rename with `prctl(PR_SET_NAME)`, a thread, a fork), and
//! the reader runs on the daemon's runtime, so the events it does not need never reach it: a
//! socket filter (classic BPF, run by the kernel in the sender's context) passes only forks of a
//! process (not threads) whose parent is a watched main process; from 6.6 the kernel is also
//! asked for fork events only (`struct proc_input`). What still comes is read a bounded batch at
//! a time, rescans after lost events are coalesced, and their warnings rate-limited.
//!
//! Written by hand on purpose: the one crate for it, cnproc 0.2.1, sets NETLINK_NO_ENOBUFS (so an
//! overrun would go unnoticed and a child would stay unplaced until a periodic rescan), loops for
//! ever on an NLMSG_ERROR message, drops the parent's tgid (the only way to tell whose child it
//! is) and blocks its thread in recv(). What is left is small: nix has no protocol constant
//! for the connector (one libc::socket call), and the messages are parsed from bytes, with
//! no unsafe casts.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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
/// Datagrams read per wake-up before the other tasks get the thread.
const BATCH: usize = 64;
/// At most one rescan for lost events this often, however many overruns.
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// At most one warning about lost events this often (it counts what happened meanwhile).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Above this many watched main processes the filter passes every process fork (the program
/// holds two instructions per parent; the kernel takes 4096).
const MAX_FILTERED_PARENTS: usize = 2000;
/// The kernel that takes an event filter with the listen request (`struct proc_input`).
const EVENT_FILTER_SINCE: (u32, u32) = (6, 6);

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
    hub: &'static Hub,
    parent: u32,
    /// Which registration for `parent` is this one's: the pid may since be another instance's
    /// main, whose registration this one's drop must leave alone.
    token: u64,
    pub rx: mpsc::UnboundedReceiver<Note>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.parent, self.token);
    }
}

/// Each parent's registration: its token and its channel.
type Subs = HashMap<u32, (u64, mpsc::UnboundedSender<Note>)>;

struct Hub {
    subs: Mutex<Subs>,
    next_token: std::sync::atomic::AtomicU64,
    /// The socket (a duplicate of the reader's), for the filter; None in tests.
    sock: Option<OwnedFd>,
}

impl Hub {
    fn new(sock: Option<OwnedFd>) -> Hub {
        Hub {
            subs: Mutex::new(HashMap::new()),
            next_token: std::sync::atomic::AtomicU64::new(0),
            sock,
        }
    }

    fn subscribe(&'static self, parent: u32) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let token = self
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.insert(parent, (token, tx));
        self.refilter(&subs);
        Subscription {
            hub: self,
            parent,
            token,
            rx,
        }
    }

    fn unsubscribe(&self, parent: u32, token: u64) {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        if subs.get(&parent).is_some_and(|(t, _)| *t == token) {
            subs.remove(&parent);
            self.refilter(&subs);
        }
    }

    /// The socket filter for the parents now watched. Called with the map locked, so the filter
    /// and the map change together. A subscriber rescans right after subscribing: a fork made
    /// before its parent was in the filter is found there.
    fn refilter(&self, subs: &Subs) {
        let Some(sock) = &self.sock else { return };
        let mut parents: Vec<u32> = subs.keys().copied().collect();
        parents.sort_unstable();
        let program = if parents.len() <= MAX_FILTERED_PARENTS {
            filter_program(Some(&parents))
        } else {
            filter_program(None)
        };
        if let Err(e) = attach_filter(sock.as_fd(), &program) {
            warn!("proc connector: cannot update the socket filter ({e}): forks of other processes may reach the daemon");
        }
    }

    fn dispatch(&self, datagram: &[u8]) {
        let at = Instant::now();
        let subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        for f in parse(datagram) {
            if let Some((_, tx)) = subs.get(&f.parent_tgid) {
                let _ = tx.send(Note::Forked { child: f.child, at });
            }
        }
    }

    fn broadcast(&self, note: Note) {
        for (_, tx) in self.subs.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = tx.send(note);
        }
    }
}

/// Opened on the first subscription (inside the runtime); None for good when it cannot be.
static HUB: OnceLock<Option<Hub>> = OnceLock::new();

/// Fork events of `parent`'s children, or None when the connector is unavailable (the caller
/// rescans on a timer instead; the reason was logged once).
pub fn subscribe(parent: u32) -> Option<Subscription> {
    Some(HUB.get_or_init(start).as_ref()?.subscribe(parent))
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
        Ok((fd, sock)) => {
            info!("listening for fork events on the kernel's proc connector");
            tokio::spawn(read_loop(fd));
            Some(Hub::new(Some(sock)))
        }
        Err(e) => {
            warn!("the kernel's proc connector is not available ({e}): children are placed by rescanning cgroup.procs, which is slower");
            None
        }
    }
}

/// The socket for the reader, and a duplicate of it for the filter updates.
fn open() -> std::io::Result<(AsyncFd<OwnedFd>, OwnedFd)> {
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
    // Before bind: nothing unfiltered is ever queued. Nothing is watched yet.
    attach_filter(fd.as_fd(), &filter_program(Some(&[])))?;
    // A bigger buffer makes overruns rarer; FORCE (root) goes past rmem_max. Best effort.
    let size = RCVBUF;
    if nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &size).is_err() {
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &size);
    }
    // Port id 0: the kernel picks a unique one.
    let addr = nix::sys::socket::NetlinkAddr::new(0, CN_IDX_PROC);
    nix::sys::socket::bind(fd.as_raw_fd(), &addr).map_err(std::io::Error::from)?;
    let release = crate::procfs::kernel_release();
    let forks_only =
        crate::hostcheck::kernel_version(&release).is_some_and(|v| v >= EVENT_FILTER_SINCE);
    let listen = subscribe_message(forks_only);
    nix::sys::socket::send(fd.as_raw_fd(), &listen, nix::sys::socket::MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let sock = fd.try_clone()?;
    // SAFETY: the AsyncFd owns the fd for its whole lifetime.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    Ok((fd, sock))
}

/// nlmsghdr + cn_msg + the listen request, in native byte order as the kernel reads it. With
/// `forks_only` (6.6+) the request is a `struct proc_input` asking for fork events only; an
/// older kernel ignores a request of that size, so it gets the bare operation.
fn subscribe_message(forks_only: bool) -> Vec<u8> {
    let data: &[u32] = if forks_only {
        &[PROC_CN_MCAST_LISTEN, PROC_EVENT_FORK]
    } else {
        &[PROC_CN_MCAST_LISTEN]
    };
    let total = NLMSG_HDRLEN + CN_MSG_LEN + 4 * data.len();
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
    m.extend_from_slice(&(4 * data.len() as u16).to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    for v in data {
        m.extend_from_slice(&v.to_ne_bytes());
    }
    m
}

// Classic BPF (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JEQ_X: u16 = 0x1d;
const BPF_TAX: u16 = 0x07;
const BPF_RET_K: u16 = 0x06;
/// Offsets in a datagram: the event's `what`, and the fork's parent tgid, child pid and tgid.
const AT_WHAT: u32 = (NLMSG_HDRLEN + CN_MSG_LEN) as u32;
const AT_PARENT_TGID: u32 = AT_WHAT + EVENT_DATA as u32 + 4;
const AT_CHILD_PID: u32 = AT_WHAT + EVENT_DATA as u32 + 8;
const AT_CHILD_TGID: u32 = AT_WHAT + EVENT_DATA as u32 + 12;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A native-order field as BPF's absolute load sees it (network order).
fn as_loaded(v: u32) -> u32 {
    u32::from_be_bytes(v.to_ne_bytes())
}

/// Passes a fork of a process (child pid == child tgid: not a thread) whose parent's tgid is one
/// of `parents` (every parent with None); drops everything else, short datagrams included.
fn filter_program(parents: Option<&[u32]>) -> Vec<libc::sock_filter> {
    let mut p = vec![
        op(BPF_LD_W_ABS, 0, 0, AT_WHAT),
        op(BPF_JEQ_K, 1, 0, as_loaded(PROC_EVENT_FORK)),
        op(BPF_RET_K, 0, 0, 0),
        op(BPF_LD_W_ABS, 0, 0, AT_CHILD_PID),
        op(BPF_TAX, 0, 0, 0),
        op(BPF_LD_W_ABS, 0, 0, AT_CHILD_TGID),
        op(BPF_JEQ_X, 1, 0, 0),
        op(BPF_RET_K, 0, 0, 0),
    ];
    match parents {
        None => p.push(op(BPF_RET_K, 0, 0, u32::MAX)),
        Some(parents) => {
            p.push(op(BPF_LD_W_ABS, 0, 0, AT_PARENT_TGID));
            for parent in parents {
                p.push(op(BPF_JEQ_K, 0, 1, as_loaded(*parent)));
                p.push(op(BPF_RET_K, 0, 0, u32::MAX));
            }
            p.push(op(BPF_RET_K, 0, 0, 0));
        }
    }
    p
}

/// SO_ATTACH_FILTER: replaces the socket's filter at once.
fn attach_filter(sock: BorrowedFd<'_>, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| std::io::Error::other("filter too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: prog points at `program`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::from_ref(&prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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

/// Lost events, coalesced: the first loss rescans at once, later ones within [`RESCAN_EVERY`]
/// leave one rescan pending for the end of that interval. Counts for rate-limited warnings.
#[derive(Debug, Default)]
struct Losses {
    last_rescan: Option<Instant>,
    pending: bool,
    lost: u64,
    rescans: u64,
    warned_at: Option<Instant>,
    /// (lost, rescans) at the last warning.
    warned: (u64, u64),
}

impl Losses {
    /// Events were lost at `now`: whether to rescan now.
    fn lost(&mut self, now: Instant) -> bool {
        self.lost += 1;
        if self.last_rescan.is_some_and(|t| now < t + RESCAN_EVERY) {
            self.pending = true;
            return false;
        }
        self.rescanned(now);
        true
    }

    /// When the pending rescan is due.
    fn due(&self) -> Option<Instant> {
        self.pending
            .then_some(self.last_rescan?)
            .map(|t| t + RESCAN_EVERY)
    }

    /// The pending rescan's time came: whether to rescan.
    fn fire(&mut self, now: Instant) -> bool {
        if self.due().is_some_and(|d| now >= d) {
            self.rescanned(now);
            return true;
        }
        false
    }

    fn rescanned(&mut self, now: Instant) {
        self.pending = false;
        self.last_rescan = Some(now);
        self.rescans += 1;
    }

    /// Losses and rescans since the last warning, when one is due.
    fn warning(&mut self, now: Instant) -> Option<(u64, u64)> {
        if self.lost == self.warned.0 || self.warned_at.is_some_and(|t| now < t + WARN_EVERY) {
            return None;
        }
        let since = (self.lost - self.warned.0, self.rescans - self.warned.1);
        self.warned = (self.lost, self.rescans);
        self.warned_at = Some(now);
        Some(since)
    }
}

fn hub() -> Option<&'static Hub> {
    HUB.get()?.as_ref()
}

async fn read_loop(fd: AsyncFd<OwnedFd>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut losses = Losses::default();
    loop {
        let due = losses.due();
        tokio::select! {
            ready = fd.readable() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        error!("proc connector: cannot wait on the socket ({e}); children are placed by rescans from now on");
                        if let Some(h) = hub() { h.broadcast(Note::Rescan) }
                        return;
                    }
                };
                let mut read = 0;
                while read < BATCH {
                    read += 1;
                    match nix::sys::socket::recvfrom::<nix::sys::socket::NetlinkAddr>(
                        fd.as_raw_fd(),
                        &mut buf,
                    ) {
                        // Only the kernel (port 0) speaks for the connector.
                        Ok((n, Some(from))) if from.pid() == 0 => {
                            if let Some(h) = hub() { h.dispatch(&buf[..n]) }
                        }
                        Ok(_) => {}
                        Err(nix::errno::Errno::EAGAIN) => {
                            guard.clear_ready();
                            break;
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(e) => {
                            on_lost(&mut losses, e);
                            if e != nix::errno::Errno::ENOBUFS {
                                guard.clear_ready();
                                break;
                            }
                        }
                    }
                }
                drop(guard);
                if read >= BATCH {
                    tokio::task::yield_now().await;
                }
            }
            _ = crate::deadline::sleep_until_opt(due) => {
                if losses.fire(Instant::now()) {
                    if let Some(h) = hub() { h.broadcast(Note::Rescan) }
                }
            }
        }
    }
}

/// ENOBUFS (the socket overflowed) or another recv error: events may be lost.
fn on_lost(losses: &mut Losses, e: nix::errno::Errno) {
    let now = Instant::now();
    if losses.lost(now) {
        if let Some(h) = hub() {
            h.broadcast(Note::Rescan)
        }
    }
    if let Some((lost, rescans)) = losses.warning(now) {
        warn!("proc connector: events were lost {lost} times ({e}; ENOBUFS: the socket buffer overflowed) since the last such warning: {rescans} rescans of every instance's children (at most one every {}s)", RESCAN_EVERY.as_secs());
    }
}

#[cfg(test)]
#[path = "connector_tests.rs"]
mod tests;
