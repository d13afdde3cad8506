use std::collections::BTreeMap;
use std::io::{IoSliceMut, Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

use nix::sys::socket::{recvmsg, ControlMessageOwned};
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// One entry in the native format, parsed back: field name to values, in order.
fn parse(mut d: &[u8]) -> BTreeMap<String, Vec<Vec<u8>>> {
    let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    while !d.is_empty() {
        let end = d
            .iter()
            .position(|&c| c == b'\n' || c == b'=')
            .expect("name ends");
        let name = String::from_utf8(d[..end].to_vec()).expect("ascii name");
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|c| c == b'_' || c.is_ascii_uppercase() || c.is_ascii_digit()),
            "{name:?}"
        );
        let value;
        if d[end] == b'=' {
            let nl = d[end..]
                .iter()
                .position(|&c| c == b'\n')
                .expect("value ends")
                + end;
            value = d[end + 1..nl].to_vec();
            d = &d[nl + 1..];
        } else {
            let len = u64::from_le_bytes(d[end + 1..end + 9].try_into().unwrap()) as usize;
            value = d[end + 9..end + 9 + len].to_vec();
            assert_eq!(d[end + 9 + len], b'\n', "{name}: value ends in a newline");
            d = &d[end + 10 + len..];
        }
        out.entry(name).or_default().push(value);
    }
    out
}

fn one(f: &BTreeMap<String, Vec<Vec<u8>>>, name: &str) -> String {
    let v = f
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing in {:?}", f.keys()));
    assert_eq!(v.len(), 1, "{name} once");
    String::from_utf8(v[0].clone()).unwrap()
}

/// A bound socket standing in for journald, and a sink sending to it.
fn journal() -> (tempfile::TempDir, UnixDatagram, Arc<Sink>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let rx = UnixDatagram::bind(&path).unwrap();
    rx.set_nonblocking(true).unwrap();
    let sink = Sink::connect(&path, "oomguard").unwrap();
    // The empty probe of connect().
    let mut buf = [0u8; 16];
    assert_eq!(rx.recv(&mut buf).unwrap(), 0);
    (dir, rx, sink)
}

fn datagrams(rx: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = rx.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Runs `f` with a subscriber made of `layer` as the default, on this thread.
fn with_layer(layer: Layer, f: impl FnOnce()) {
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, f);
}

#[test]
fn fields_round_trip_in_the_native_format() {
    let (_dir, rx, sink) = journal();
    let none: Option<u64> = None;
    with_layer(Layer::new(sink.clone(), Some("OOMGUARD")), || {
        tracing::warn!(
            instance = "celery/0",
            pid = 4242_u32,
            gone = none,
            ratio = 0.25,
            "two\nlines"
        );
    });
    with_layer(Layer::new(sink.clone(), None), || {
        tracing::info!(target: "oomguard::event::journal", message_id = "931ff1f3ccd24e48ab311b16fb7477f2", oomguard_seq = 7_u64, "restart (pressure)");
    });
    let got = datagrams(&rx);
    assert_eq!(got.len(), 2);

    let line = parse(&got[0]);
    assert_eq!(one(&line, "PRIORITY"), "4");
    assert_eq!(one(&line, "MESSAGE"), "two\nlines");
    assert_eq!(one(&line, "SYSLOG_IDENTIFIER"), "oomguard");
    assert_eq!(one(&line, "OOMGUARD_INSTANCE"), "celery/0");
    assert_eq!(one(&line, "OOMGUARD_PID"), "4242");
    assert_eq!(one(&line, "OOMGUARD_RATIO"), "0.25");
    assert!(one(&line, "CODE_FILE").ends_with("journald_tests.rs"));
    one(&line, "CODE_LINE").parse::<u32>().unwrap();
    assert!(one(&line, "TARGET").starts_with("oomguard"));
    // An empty Option is left out, as tracing-journald did.
    assert!(!line.contains_key("OOMGUARD_GONE"));

    let event = parse(&got[1]);
    assert_eq!(one(&event, "PRIORITY"), "5");
    assert_eq!(
        one(&event, "MESSAGE_ID"),
        "931ff1f3ccd24e48ab311b16fb7477f2"
    );
    assert_eq!(one(&event, "OOMGUARD_SEQ"), "7");
    assert_eq!(one(&event, "MESSAGE"), "restart (pressure)");
    assert_eq!(one(&event, "TARGET"), "oomguard::event::journal");
    assert_eq!(sink.dropped(), 0);
}

#[test]
fn a_journal_that_does_not_read_never_blocks_the_logger() {
    let (_dir, rx, sink) = journal();
    let (done_tx, done_rx) = mpsc::channel();
    let logging = sink.clone();
    // On a thread of its own: if a send blocked, the test fails on the timeout instead of hanging.
    std::thread::spawn(move || {
        with_layer(Layer::new(logging, Some("OOMGUARD")), || {
            for i in 0..5000 {
                tracing::info!(i, "line {i} that nobody reads");
            }
        });
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("5000 lines to a full journal socket are sent or dropped without waiting");
    let dropped = sink.dropped();
    let queued = datagrams(&rx);
    assert!(dropped > 0, "the queue filled up: {} queued", queued.len());
    assert_eq!(dropped + queued.len() as u64, 5000);
    assert!(dropped_total() >= dropped);

    // The journal reads again: the next line goes through, then one notice with the count.
    with_layer(Layer::new(sink.clone(), Some("OOMGUARD")), || {
        tracing::info!("back");
        tracing::info!("and again");
    });
    let after: Vec<_> = datagrams(&rx).iter().map(|d| parse(d)).collect();
    assert_eq!(
        after.len(),
        3,
        "the line, the notice, the next line (no second notice)"
    );
    assert_eq!(one(&after[0], "MESSAGE"), "back");
    assert_eq!(one(&after[1], "OOMGUARD_LOG_DROPPED"), dropped.to_string());
    assert_eq!(one(&after[1], "PRIORITY"), "4");
    assert!(one(&after[1], "MESSAGE").contains("oomguard_log_dropped_total"));
    assert_eq!(one(&after[2], "MESSAGE"), "and again");
}

#[test]
fn an_entry_too_big_for_a_datagram_goes_as_a_memfd() {
    let (_dir, rx, sink) = journal();
    rx.set_nonblocking(false).unwrap();
    // Above any send buffer the host allows (wmem_max), so the datagram path says EMSGSIZE.
    let big = "x".repeat(17 << 20);
    with_layer(Layer::new(sink.clone(), None), || tracing::info!("{big}"));
    assert_eq!(sink.dropped(), 0);

    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(rx.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
    assert_eq!(msg.bytes, 0);
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("an fd passed");
    // SAFETY: the fd came with the message and is ours now.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // journald maps the whole file; the offset is where the daemon's write left it.
    file.rewind().unwrap();
    let mut payload = Vec::new();
    file.read_to_end(&mut payload).unwrap();
    assert_eq!(one(&parse(&payload), "MESSAGE"), big);
}

#[test]
fn no_journal_there_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Sink::connect(&dir.path().join("socket"), "oomguard").is_err());
}
