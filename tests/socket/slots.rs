//! Connection slots (issue 7, defect 8): readers holding `events --follow` streams must never lock
//! root out, one uid is capped, and a quiet follow stream gets keepalives. The reader is a real
//! other uid: this binary re-run as nobody (`helper_hold_follow_streams`), which holds its
//! connections until the parent closes its stdin.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::*;

/// Not a test of its own: run as another uid by the tests below. Opens
/// `OOMGUARD_TEST_HOLD` follow streams one after the other, prints what each got
/// (`ok`, or the error message), and keeps the accepted ones open until stdin closes.
#[test]
#[ignore = "run by the slot tests as another uid"]
fn helper_hold_follow_streams() {
    let (Ok(socket), Ok(count)) = (
        std::env::var("OOMGUARD_TEST_SOCKET"),
        std::env::var("OOMGUARD_TEST_HOLD"),
    ) else {
        eprintln!("nothing to do: only meaningful when run by the slot tests");
        return;
    };
    let count: usize = count.parse().expect("a count");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut held = Vec::new();
        let mut outcomes = Vec::new();
        let follow = Request::Events {
            last: 1,
            follow: true,
        };
        for _ in 0..count {
            let mut c = Raw::connect(Path::new(&socket)).await;
            // A refused connection may be closed before the request lands; that is fine.
            let _ = c
                .writer
                .write_all((follow.to_line() + "\n").as_bytes())
                .await;
            match c.recv().await {
                Some(Response::Ok(_)) => {
                    outcomes.push("ok".to_string());
                    held.push(c);
                }
                Some(Response::Err(body)) => {
                    outcomes.push(format!("{}: {}", body.code, body.message))
                }
                None => outcomes.push("closed".to_string()),
            }
        }
        println!(
            "HELPER-HOLD {}",
            serde_json::to_string(&outcomes).expect("json")
        );
        // Blocking is fine: this runtime has nothing else to do while the streams are held.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
        drop(held);
    });
}

/// A reader (nobody) holding up to `count` follow streams; dropping it (closing its stdin)
/// lets them go. `outcomes` is what each attempt got.
struct Holder {
    child: Child,
    /// Kept open and drained on release: the helper's harness still prints after its report.
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    outcomes: Vec<String>,
}

impl Holder {
    async fn start(socket: &Path, count: usize) -> Holder {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--ignored",
                "--exact",
                "slots::helper_hold_follow_streams",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("OOMGUARD_TEST_SOCKET", socket)
            .env("OOMGUARD_TEST_HOLD", count.to_string())
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the helper");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let outcomes = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read helper output") {
                if let Some(i) = line.find("HELPER-HOLD ") {
                    return serde_json::from_str(&line[i + "HELPER-HOLD ".len()..])
                        .expect("a JSON list");
                }
            }
            panic!("the helper ended without reporting");
        })
        .await
        .expect("the helper reports within 30s");
        Holder {
            child,
            stdout: lines,
            outcomes,
        }
    }

    async fn release(mut self) {
        drop(self.child.stdin.take());
        while let Ok(Some(_)) = self.stdout.next_line().await {}
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the helper exits once its stdin closes")
            .expect("wait");
        assert!(status.success(), "helper failed: {status}");
    }
}

fn small_limits() -> Limits {
    Limits {
        max_connections: 4,
        admin_reserved: 2,
        per_uid: 10,
        follows_per_uid: 10,
        ..Limits::default()
    }
}

#[tokio::test]
async fn a_reader_filling_every_slot_it_can_does_not_lock_root_out() {
    if !is_root() {
        return;
    }
    let srv = start_with(fake(), Access::new(Some(NOGROUP), vec![]), small_limits()).await;
    let holder = Holder::start(&srv.path, 4).await;
    assert_eq!(holder.outcomes[..2], ["ok", "ok"], "{:?}", holder.outcomes);
    for refused in &holder.outcomes[2..] {
        assert!(
            refused.starts_with("busy: ") && refused.contains("kept for root and admins"),
            "{refused}"
        );
    }
    // Root still gets in, twice over (the reserved slots), and may restart.
    let reply: RestartReply = client::call(&srv.path, &restart_req())
        .await
        .expect("root is not locked out");
    assert_eq!(reply.message, "restarted celery/0");
    let mut root_follow = client::follow(&srv.path, 1).await.expect("connect");
    assert!(matches!(
        root_follow.next().await,
        Ok(Some(StreamItem::Event(_)))
    ));
    holder.release().await;
    srv.stop().await;
}

#[tokio::test]
async fn one_uid_is_capped_with_a_clear_busy_message() {
    if !is_root() {
        return;
    }
    let limits = Limits {
        per_uid: 2,
        ..Limits::default()
    };
    let srv = start_with(fake(), Access::new(Some(NOGROUP), vec![]), limits).await;
    let holder = Holder::start(&srv.path, 3).await;
    assert_eq!(holder.outcomes[..2], ["ok", "ok"], "{:?}", holder.outcomes);
    assert_eq!(
        holder.outcomes[2],
        "busy: uid 65534 already has 2 connections open (limit 2 per uid); close some (e.g. \
         `oomguard events --follow`) and try again"
    );
    // Another uid (root) is not affected by nobody's cap.
    client::call::<StatusReport>(&srv.path, &Request::Status { target: None })
        .await
        .expect("root reads status");
    holder.release().await;
    srv.stop().await;
}

#[tokio::test]
async fn follow_streams_are_capped_per_uid() {
    if !is_root() {
        return;
    }
    let limits = Limits {
        follows_per_uid: 1,
        ..Limits::default()
    };
    let srv = start_with(fake(), Access::new(Some(NOGROUP), vec![]), limits).await;
    let holder = Holder::start(&srv.path, 2).await;
    assert_eq!(holder.outcomes[0], "ok");
    assert!(
        holder.outcomes[1].starts_with("busy: uid 65534 already has 1 `events --follow` streams"),
        "{:?}",
        holder.outcomes
    );
    holder.release().await;
    srv.stop().await;
}

/// A quiet stream gets empty keepalive lines, which the client skips.
#[tokio::test]
async fn a_quiet_follow_stream_gets_keepalives() {
    let limits = Limits {
        follow_keepalive: Duration::from_millis(50),
        ..Limits::default()
    };
    let srv = start_with(fake(), Access::new(Some(NOGROUP), vec![]), limits).await;
    let mut raw = Raw::connect(&srv.path).await;
    raw.send(b"{\"v\":1,\"cmd\":\"events\",\"last\":0,\"follow\":true}\n")
        .await;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), raw.reader.read_line(&mut line))
        .await
        .expect("a keepalive within 5s")
        .expect("read");
    assert_eq!(line, "\n");

    let mut stream = client::follow(&srv.path, 0).await.expect("connect");
    // Let a few keepalives pass before the event, so the client has to skip them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    srv.api.events.send(event(9)).expect("a subscriber");
    match stream.next().await {
        Ok(Some(StreamItem::Event(e))) => assert_eq!(e.seq, 9),
        other => panic!("expected event 9, got {other:?}"),
    }
    srv.stop().await;
}
