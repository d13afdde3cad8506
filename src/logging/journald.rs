//! The daemon's journal sink: journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL)
//! over a datagram socket that never blocks.
//!
//! Why not tracing-journald: its socket is private and blocking, so when journald is slow or
//! stalled (its receive queue full) every log line blocks the caller, and the caller is the
//! daemon's only runtime thread: no watchdog ping, no PSI trigger served, no status. Here each
//! entry is one `sendmsg(MSG_DONTWAIT)`; when the journal does not take it, it is dropped and
//! counted (`oomguard_log_dropped_total`), and the first entry the journal takes again is
//! preceded by one line saying how many were lost (at most one such line a minute). Why not a
//! writer thread with a bounded channel: it drops the same entries when journald stalls, only
//! later, and adds a thread and a copy per line. Why the notice goes to the journal and not to
//! stderr: under systemd stderr is journald's stream socket, blocking too.
//!
//! The entries carry the fields tracing-journald sent (the alerting contract in
//! docs/install.md): `PRIORITY`, `MESSAGE`, `SYSLOG_IDENTIFIER`, `TARGET`, `CODE_FILE`,
//! `CODE_LINE` and the event's fields, upper-cased, with an optional prefix. The daemon opens
//! no spans, so span fields are not sent.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's native socket (systemd-journald.socket).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// What sd-journal asks for (SNDBUF_SIZE in systemd's journal-send.c): room for a burst while
/// journald catches up, before anything is dropped.
const SNDBUF: usize = 8 << 20;

/// At most one "entries dropped" line per this long.
const NOTICE_EVERY: Duration = Duration::from_secs(60);

/// Drops since the daemon started, for `oomguard_log_dropped_total`.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Entries the journal did not take since the daemon started.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The socket and its drop bookkeeping, shared by the daemon's two journal layers.
pub struct Sink {
    socket: UnixDatagram,
    path: PathBuf,
    identifier: String,
    /// Dropped by this sink, in all.
    dropped: AtomicU64,
    /// Dropped and not said yet.
    unreported: AtomicU64,
    last_notice: Mutex<Option<Instant>>,
}

impl Sink {
    /// A sink sending to `path`, checked by an empty datagram (journald discards it): an error
    /// when nobody listens there. A full queue is not an error (journald is there, busy).
    pub fn connect(path: &Path, identifier: &str) -> io::Result<Arc<Self>> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        // Best effort: the default buffer also works, it only drops sooner.
        let _ = nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::SndBuf, &SNDBUF);
        let sink = Self {
            socket,
            path: path.to_owned(),
            identifier: identifier.to_owned(),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            last_notice: Mutex::new(None),
        };
        match sink.send(&[]) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
            _ => Ok(Arc::new(sink)),
        }
    }

    /// Dropped by this sink so far.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, payload: &[u8]) -> io::Result<()> {
        match self.socket.send_to(payload, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => self.send_memfd(payload),
            Err(e) => Err(e),
        }
    }

    /// An entry too big for one datagram goes as a sealed memfd (the protocol's large-entry
    /// path); writing it is memory only, and the send does not wait either.
    fn send_memfd(&self, payload: &[u8]) -> io::Result<()> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; a new fd or -1.
        let fd = unsafe {
            libc::memfd_create(
                c"oomguard-journal".as_ptr(),
                libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.write_all(payload)?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let addr = UnixAddr::new(&self.path).map_err(io::Error::from)?;
        let fds = [file.as_raw_fd()];
        sendmsg(
            self.socket.as_raw_fd(),
            &[] as &[io::IoSlice],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            Some(&addr),
        )
        .map(drop)
        .map_err(io::Error::from)
    }

    /// Sends `entry`, or drops and counts it. Never waits.
    pub fn submit(&self, entry: &[u8]) {
        if self.send(entry).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.fetch_add(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.notice_drops();
    }

    /// After a successful send: one line about the entries lost before it, rate-limited.
    fn notice_drops(&self) {
        if self.unreported.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(mut last) = self.last_notice.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < NOTICE_EVERY) {
            return;
        }
        let n = self.unreported.swap(0, Ordering::Relaxed);
        let mut e = Entry::default();
        e.field("PRIORITY", b"4");
        e.field("SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        let message = format!(
            "{n} log entries dropped: the journal did not take them in time (journald slow or \
             stalled); oomguard_log_dropped_total counts them all"
        );
        e.field("MESSAGE", message.as_bytes());
        e.field("OOMGUARD_LOG_DROPPED", n.to_string().as_bytes());
        if self.send(&e.0).is_ok() {
            *last = Some(Instant::now());
        } else {
            self.unreported.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// One entry in the native format, each field length-encoded (always valid, newlines included).
#[derive(Default)]
pub struct Entry(pub Vec<u8>);

impl Entry {
    /// `name` as the journal takes it: upper case, `[A-Z0-9_]`, no leading underscore (those
    /// are journald's trusted fields).
    fn put_name(&mut self, prefix: Option<&str>, name: &str) {
        if let Some(p) = prefix {
            self.0.extend_from_slice(p.as_bytes());
            self.0.push(b'_');
        }
        self.0.extend(
            name.bytes()
                .map(|c| if c == b'.' { b'_' } else { c })
                .skip_while(|&c| c == b'_')
                .filter(|&c| c == b'_' || c.is_ascii_alphanumeric())
                .map(|c| c.to_ascii_uppercase()),
        );
    }

    fn put_value(&mut self, value: &[u8]) {
        self.0.push(b'\n');
        self.0
            .extend_from_slice(&(value.len() as u64).to_le_bytes());
        self.0.extend_from_slice(value);
        self.0.push(b'\n');
    }

    pub fn field(&mut self, name: &str, value: &[u8]) {
        self.put_name(None, name);
        self.put_value(value);
    }
}

/// A tracing layer writing each event to a [`Sink`]; `prefix` goes before every field's name
/// but `message`'s (which is `MESSAGE`).
pub struct Layer {
    sink: Arc<Sink>,
    prefix: Option<&'static str>,
}

impl Layer {
    pub fn new(sink: Arc<Sink>, prefix: Option<&'static str>) -> Self {
        Self { sink, prefix }
    }
}

fn priority(level: &Level) -> &'static [u8] {
    match *level {
        Level::ERROR => b"3",
        Level::WARN => b"4",
        Level::INFO => b"5",
        Level::DEBUG => b"6",
        Level::TRACE => b"7",
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut e = Entry(Vec::with_capacity(512));
        e.field("PRIORITY", priority(meta.level()));
        e.field("TARGET", meta.target().as_bytes());
        if let Some(file) = meta.file() {
            e.field("CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            e.field("CODE_LINE", line.to_string().as_bytes());
        }
        e.field("SYSLOG_IDENTIFIER", self.sink.identifier.as_bytes());
        event.record(&mut Fields {
            entry: &mut e,
            prefix: self.prefix,
            scratch: String::new(),
        });
        self.sink.submit(&e.0);
    }
}

struct Fields<'a> {
    entry: &'a mut Entry,
    prefix: Option<&'static str>,
    scratch: String,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: &[u8]) {
        let prefix = if field.name() == "message" {
            None
        } else {
            self.prefix
        };
        self.entry.put_name(prefix, field.name());
        self.entry.put_value(value);
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.as_bytes());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = std::mem::take(&mut self.scratch);
        s.clear();
        // Writing to a String cannot fail.
        let _ = write!(s, "{value:?}");
        self.put(field, s.as_bytes());
        self.scratch = s;
    }
}

/// The process's name as journald shows it (what tracing-journald took: argv[0]'s file name).
pub fn identifier() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        std::env::args_os()
            .next()
            .as_ref()
            .and_then(|p| {
                Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default()
    })
    .clone()
}

#[cfg(test)]
#[path = "journald_tests.rs"]
mod tests;
