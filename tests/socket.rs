//! The socket server and client over a real unix socket in a tempdir, with a fake daemon.
//!
//! Permission tests need root (to chown the socket and to run a client as another uid); they
//! say so and return when not root. The other uid is real: the test binary re-runs itself as
//! that uid (`helper_client_as_other_uid`) and reports what the daemon answered.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oomguard::client::{self, ClientError, StreamItem};
use oomguard::protocol::{
    DaemonInfo, ErrorCode, EventRecord, InstanceStatus, PolicyStatus, Request, Response,
    RestartReply, StatusReport,
};
use oomguard::server::{self, Access, Api, ApiError, Limits, ReloadReport};
use oomguard::vocabulary::Mode;
use oomguard::vocabulary::{InstanceState, Reason};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// nobody:nogroup exist on Debian-family hosts; the socket's group in these tests.
const NOBODY: u32 = 65534;
const NOGROUP: &str = "nogroup";
/// The `daemon` user (1:1): unprivileged and not in nogroup.
const OUTSIDER: u32 = 1;

#[path = "socket/redact.rs"]
mod redact;
#[path = "socket/slots.rs"]
mod slots;

// ---------------------------------------------------------------------------------------------
// A fake daemon
// ---------------------------------------------------------------------------------------------

struct FakeApi {
    report: StatusReport,
    history: Vec<EventRecord>,
    events: broadcast::Sender<EventRecord>,
    /// Targets restarted, in order, so tests can tell a refusal from a call.
    restarted: Mutex<Vec<String>>,
    reload: Result<ReloadReport, ApiError>,
    /// Set: the daemon is shutting down.
    closing: AtomicBool,
}

impl Api for FakeApi {
    fn status(&self, target: Option<&str>) -> Result<StatusReport, ApiError> {
        let Some(target) = target else {
            return Ok(self.report.clone());
        };
        let mut report = self.report.clone();
        for p in &mut report.policies {
            p.instances.retain(|i| p.name == target || i.id == target);
        }
        report.policies.retain(|p| !p.instances.is_empty());
        if report.policies.is_empty() {
            return Err(ApiError::not_found(format!(
                "no policy or instance {target:?}"
            )));
        }
        Ok(report)
    }

    fn events(&self, last: usize) -> Vec<EventRecord> {
        self.history[self.history.len().saturating_sub(last)..].to_vec()
    }

    fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    fn restart(
        &self,
        target: &str,
    ) -> impl std::future::Future<Output = Result<String, ApiError>> + Send {
        self.restarted
            .lock()
            .expect("not poisoned")
            .push(target.to_string());
        let message = format!("restarted {target}");
        async move { Ok(message) }
    }

    fn reload(&self) -> impl std::future::Future<Output = Result<ReloadReport, ApiError>> + Send {
        let result = self.reload.clone();
        async move { result }
    }

    fn accepting_changes(&self) -> bool {
        !self.closing.load(Ordering::SeqCst)
    }
}

fn instance(id: &str) -> InstanceStatus {
    InstanceStatus {
        id: id.into(),
        state: InstanceState::Running,
        pids: vec![1000],
        memory_current: Some(100 << 20),
        memory_high: Some(1 << 30),
        boundary: None,
        memory_max: Some(2 << 30),
        memory_peak: Some(200 << 20),
        psi_some_avg10: Some(1.5),
        psi_full_avg10: Some(0.0),
        psi_some_total_us: Some(10),
        psi_full_total_us: Some(0),
        restarts: 0,
        restarts_by_reason: BTreeMap::new(),
        last_restart_reason: None,
        last_restart_at: None,
        oom_kills: 0,
        children: Vec::new(),
        child_recycles: 0,
        draining_pid: None,
        unarmed: Vec::new(),
    }
}

fn event(seq: u64) -> EventRecord {
    EventRecord {
        seq,
        time_ms: 1_700_000_000_000 + seq,
        memory_current: Some(1 << 30),
        psi_some_avg10: Some(40.0),
        ..EventRecord::blank(
            "celery/0",
            Reason::Pressure,
            "restart",
            format!("event {seq}"),
        )
    }
}

fn fake() -> FakeApi {
    FakeApi {
        report: StatusReport {
            daemon: DaemonInfo {
                version: "0.1.0".into(),
                pid: 1,
                uptime_seconds: 60,
                cgroup_root: "/sys/fs/cgroup/oomguard".into(),
                log_dropped: 0,
                container: None,
            },
            policies: vec![PolicyStatus {
                name: "celery".into(),
                mode: Mode::Enforce,
                instances: vec![instance("celery/0"), instance("celery/1")],
            }],
        },
        history: (1..=3).map(event).collect(),
        events: broadcast::channel(16).0,
        restarted: Mutex::new(Vec::new()),
        reload: Ok(ReloadReport {
            unchanged: vec!["celery".into()],
            ..Default::default()
        }),
        closing: AtomicBool::new(false),
    }
}

// ---------------------------------------------------------------------------------------------
// A running server
// ---------------------------------------------------------------------------------------------

struct Running {
    /// Kept so the directory outlives the server.
    _dir: tempfile::TempDir,
    path: PathBuf,
    api: Arc<FakeApi>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().expect("stopped once").send(());
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("serve returns promptly after shutdown")
            .expect("serve did not panic");
    }
}

async fn start_with(api: FakeApi, access: Access, limits: Limits) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    // Other uids must reach the socket through the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod tempdir");
    let path = dir.path().join("run/oomguard.sock");
    let listener = server::bind(&path, Some(NOGROUP)).expect("bind");
    let api = Arc::new(api);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_with(
        listener,
        Arc::clone(&api),
        access,
        limits,
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        _dir: dir,
        path,
        api,
        stop: Some(stop),
        task,
    }
}

async fn start() -> Running {
    start_with(
        fake(),
        Access::new(Some(NOGROUP), vec![]),
        Limits::default(),
    )
    .await
}

fn is_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    oomguard::testing::skip_without_root(
        "needs root to chown the socket and run clients as other uids",
    );
    false
}

/// A raw connection for the tests that misbehave on purpose.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let (r, w) = UnixStream::connect(path)
            .await
            .expect("connect")
            .into_split();
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// The next response line; `None` at EOF.
    async fn recv(&mut self) -> Option<Response> {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
            .await
            .expect("a reply within 5s")
            .expect("read");
        (n > 0).then(|| Response::parse(line.as_bytes()).expect("a well-formed response"))
    }

    async fn expect_error(&mut self, code: ErrorCode) -> String {
        match self.recv().await {
            Some(Response::Err(body)) if body.code == code => body.message,
            other => panic!("expected {code} error, got {other:?}"),
        }
    }
}

fn status_line() -> Vec<u8> {
    (Request::Status { target: None }.to_line() + "\n").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Running a client as another uid
// ---------------------------------------------------------------------------------------------

/// Not a test of its own: the permission tests run this binary with `--ignored --exact` under
/// another uid, with the socket and request in the environment.
#[test]
#[ignore = "run by the permission tests as another uid"]
fn helper_client_as_other_uid() {
    let (Ok(socket), Ok(request)) = (
        std::env::var("OOMGUARD_TEST_SOCKET"),
        std::env::var("OOMGUARD_TEST_REQUEST"),
    ) else {
        eprintln!("nothing to do: only meaningful when run by the permission tests");
        return;
    };
    let req = Request::parse(request.as_bytes()).expect("the parent sends a valid request");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(client::request(Path::new(&socket), &req)) {
        Ok(resp) => println!("HELPER-RESULT {}", resp.to_line()),
        Err(e) => println!("HELPER-ERROR {} {e}", e.exit_code()),
    }
}

/// What a client running as `uid:gid` got: a response, or the client error (exit code, text).
async fn as_uid(
    uid: u32,
    gid: u32,
    socket: &Path,
    req: &Request,
) -> Result<Response, (u8, String)> {
    let exe = std::env::current_exe().expect("test binary path");
    let out = tokio::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "helper_client_as_other_uid",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OOMGUARD_TEST_SOCKET", socket)
        .env("OOMGUARD_TEST_REQUEST", req.to_line())
        .uid(uid)
        .gid(gid)
        .output()
        .await
        .expect("run the helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Make sure the helper really ran under that uid and did its work.
    assert!(out.status.success(), "helper failed: {stdout}\n{stderr}");
    // The harness prints "test helper_client_as_other_uid ... " on the same line first.
    let after = |line: &str, marker: &str| {
        line.find(marker)
            .map(|i| line[i + marker.len()..].to_string())
    };
    for line in stdout.lines() {
        if let Some(json) = after(line, "HELPER-RESULT ") {
            return Ok(Response::parse(json.as_bytes()).expect("helper prints a response"));
        }
        if let Some(err) = after(line, "HELPER-ERROR ") {
            let (code, text) = err.split_once(' ').expect("code and message");
            return Err((code.parse().expect("exit code"), text.to_string()));
        }
    }
    panic!("helper printed no result:\n{stdout}\n{stderr}");
}

fn restart_req() -> Request {
    Request::Restart {
        target: "celery/0".try_into().expect("valid target"),
    }
}

// ---------------------------------------------------------------------------------------------
// Socket file and permissions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn socket_is_root_group_0660_in_a_new_0755_directory() {
    if !is_root() {
        return;
    }
    let srv = start().await;
    let meta = std::fs::symlink_metadata(&srv.path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, NOBODY));
    let dir = std::fs::metadata(srv.path.parent().expect("has a parent")).expect("dir exists");
    assert_eq!(dir.mode() & 0o7777, 0o755);
    srv.stop().await;
}

#[tokio::test]
async fn a_missing_group_leaves_the_socket_root_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("oomguard.sock");
    let _listener = server::bind(&path, Some("oomguard-no-such-group")).expect("bind");
    let meta = std::fs::symlink_metadata(&path).expect("socket exists");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.gid(), nix::unistd::getegid().as_raw());
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind std")); // leaves the file
    assert!(stale.exists());
    let live = server::bind(&stale, Some(NOGROUP)).expect("a stale socket is replaced");

    let err = server::bind(&stale, Some(NOGROUP)).expect_err("a live socket is not stolen");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    drop(live);

    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").expect("write");
    let err = server::bind(&file, Some(NOGROUP)).expect_err("a regular file is not removed");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(
        std::fs::read_to_string(&file).expect("still there"),
        "keep me"
    );
}

#[tokio::test]
async fn a_group_member_reads_status_but_may_not_restart() {
    if !is_root() {
        return;
    }
    let srv = start().await;
    let status = as_uid(NOBODY, NOBODY, &srv.path, &Request::Status { target: None }).await;
    let report: StatusReport = status
        .expect("reachable")
        .into_result()
        .expect("status allowed");
    assert_eq!(report.policies[0].instances.len(), 2);

    let refused = as_uid(NOBODY, NOBODY, &srv.path, &restart_req())
        .await
        .expect("reachable");
    match refused {
        Response::Err(body) => {
            assert_eq!(body.code, ErrorCode::Forbidden);
            assert!(
                body.message
                    .contains("needs root or a uid listed in admin_uids"),
                "{}",
                body.message
            );
            assert!(body.message.contains("uid 65534"), "{}", body.message);
        }
        other => panic!("restart by a reader was not refused: {other:?}"),
    }
    assert!(
        srv.api.restarted.lock().expect("not poisoned").is_empty(),
        "the daemon was never asked"
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_admin_uid_may_restart() {
    if !is_root() {
        return;
    }
    let srv = start_with(
        fake(),
        Access::new(Some(NOGROUP), vec![NOBODY]),
        Limits::default(),
    )
    .await;
    let reply: RestartReply = as_uid(NOBODY, NOBODY, &srv.path, &restart_req())
        .await
        .expect("reachable")
        .into_result()
        .expect("allowed");
    assert_eq!(reply.message, "restarted celery/0");
    assert_eq!(
        *srv.api.restarted.lock().expect("not poisoned"),
        vec!["celery/0"]
    );
    srv.stop().await;
}

#[tokio::test]
async fn an_outsider_cannot_connect_and_is_refused_even_through_an_open_mode() {
    if !is_root() {
        return;
    }
    let srv = start().await;
    let status = Request::Status { target: None };
    let (code, message) = as_uid(OUTSIDER, OUTSIDER, &srv.path, &status)
        .await
        .expect_err("mode 0660 keeps it out");
    assert_eq!(code, client::EXIT_UNREACHABLE);
    assert!(
        message.contains(&srv.path.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("not in the group that owns the socket"),
        "{message}"
    );

    // Someone loosened the mode: SO_PEERCRED still decides.
    std::fs::set_permissions(&srv.path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    match as_uid(OUTSIDER, OUTSIDER, &srv.path, &status)
        .await
        .expect("connects now")
    {
        Response::Err(body) => {
            assert_eq!(body.code, ErrorCode::Forbidden);
            assert!(
                body.message
                    .contains("membership of group `nogroup` (gid 65534)"),
                "{}",
                body.message
            );
        }
        other => panic!("an outsider got status: {other:?}"),
    }
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_lines_get_an_error_and_the_connection_stays_usable() {
    let srv = start().await;
    let mut c = Raw::connect(&srv.path).await;
    c.send(b"{\"v\":1,\"cmd\":\n").await;
    assert!(c
        .expect_error(ErrorCode::BadRequest)
        .await
        .contains("malformed JSON"));
    c.send(b"{\"v\":9,\"cmd\":\"status\"}\n").await;
    c.expect_error(ErrorCode::BadVersion).await;
    c.send(b"{\"v\":1,\"cmd\":\"shutdown\"}\n\n").await; // a blank line is skipped
    assert!(c
        .expect_error(ErrorCode::BadRequest)
        .await
        .contains("unknown variant `shutdown`"));
    c.send(&status_line()).await;
    let report: StatusReport = c
        .recv()
        .await
        .expect("a reply")
        .into_result()
        .expect("status");
    assert_eq!(report.daemon.version, "0.1.0");
    srv.stop().await;
}

#[tokio::test]
async fn an_oversized_request_gets_too_large_and_is_closed() {
    let srv = start().await;
    let mut c = Raw::connect(&srv.path).await;
    let mut big = vec![b'x'; 100 * 1024];
    big.push(b'\n');
    c.send(&big).await;
    assert!(c
        .expect_error(ErrorCode::TooLarge)
        .await
        .contains("65536 bytes"));
    assert_eq!(c.recv().await, None, "closed after too_large");
    srv.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_clients_all_get_answers() {
    let srv = start().await;
    let path = Arc::new(srv.path.clone());
    let clients: Vec<_> = (0..50)
        .map(|i| {
            let path = Arc::clone(&path);
            tokio::spawn(async move {
                let target = format!("celery/{}", i % 2)
                    .as_str()
                    .try_into()
                    .expect("valid");
                client::call::<StatusReport>(
                    &path,
                    &Request::Status {
                        target: Some(target),
                    },
                )
                .await
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let report = c.await.expect("no panic").expect("answered");
        assert_eq!(
            report.policies[0].instances[0].id,
            format!("celery/{}", i % 2)
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_busy() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let srv = start_with(fake(), Access::new(Some(NOGROUP), vec![]), limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(&srv.path).await;
        c.send(&status_line()).await;
        assert!(
            matches!(c.recv().await, Some(Response::Ok(_))),
            "within the limit"
        );
        held.push(c);
    }
    let mut third = Raw::connect(&srv.path).await;
    assert!(third
        .expect_error(ErrorCode::Busy)
        .await
        .contains("limit 2"));
    assert_eq!(third.recv().await, None, "closed after busy");
    // A real client has sent its request before the refusal: it still reads `busy`.
    for _ in 0..10 {
        match client::call::<StatusReport>(&srv.path, &Request::Status { target: None }).await {
            Err(ClientError::Refused(b)) => assert_eq!(b.code, ErrorCode::Busy),
            other => panic!("expected busy, got {other:?}"),
        }
    }

    drop(held.pop());
    // The slot comes back once the server notices the hang-up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client::call::<StatusReport>(&srv.path, &Request::Status { target: None }).await {
            Ok(_) => break,
            Err(ClientError::Refused(b))
                if b.code == ErrorCode::Busy && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("slot never came back: {e}"),
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn stalled_clients_do_not_hold_up_others_and_are_timed_out() {
    let idle = Duration::from_secs(2);
    let limits = Limits {
        idle_timeout: idle,
        ..Limits::default()
    };
    let srv = start_with(fake(), Access::new(Some(NOGROUP), vec![]), limits).await;
    let mut silent = Raw::connect(&srv.path).await;
    let mut half = Raw::connect(&srv.path).await;
    half.send(b"{\"v\":1,\"cmd\":\"sta").await;

    let t0 = Instant::now();
    for _ in 0..5 {
        client::call::<StatusReport>(&srv.path, &Request::Status { target: None })
            .await
            .expect("answered");
    }
    assert!(
        t0.elapsed() < idle / 4,
        "others answered in {:?} while two clients stall",
        t0.elapsed()
    );

    for stalled in [&mut silent, &mut half] {
        assert!(stalled
            .expect_error(ErrorCode::Timeout)
            .await
            .contains("no complete request line within 2s"));
        assert_eq!(stalled.recv().await, None, "closed after timeout");
    }
    let waited = t0.elapsed();
    assert!(
        waited >= idle - Duration::from_millis(100) && waited < idle * 2,
        "timed out after {waited:?}"
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Requests end to end
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn follow_streams_history_then_new_events_without_duplicates() {
    let srv = start().await;
    let mut stream = client::follow(&srv.path, 1).await.expect("connected");
    // The history comes after the server subscribed, so seeing it means the subscription is live.
    assert_eq!(
        stream.next().await.expect("ok"),
        Some(StreamItem::Event(event(3)))
    );
    srv.api.events.send(event(3)).expect("subscribed"); // published while the history was read
    srv.api.events.send(event(4)).expect("subscribed");
    let next = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("in time");
    assert_eq!(
        next.expect("ok"),
        Some(StreamItem::Event(event(4))),
        "seq 3 is not sent twice"
    );

    // The server notices the follower leaving; a new follower is served.
    drop(stream);
    let mut again = client::follow(&srv.path, 0).await.expect("connected");
    tokio::time::sleep(Duration::from_millis(100)).await; // let it subscribe (no history to wait on)
    srv.api.events.send(event(5)).expect("subscribed");
    assert_eq!(
        again.next().await.expect("ok"),
        Some(StreamItem::Event(event(5)))
    );
    srv.stop().await;
}

#[tokio::test]
async fn events_status_targets_metrics_and_errors_from_the_daemon() {
    let srv = start().await;
    let last: Vec<EventRecord> = client::call(
        &srv.path,
        &Request::Events {
            last: 2,
            follow: false,
        },
    )
    .await
    .expect("events");
    assert_eq!(last, vec![event(2), event(3)]);

    let one: StatusReport = client::call(
        &srv.path,
        &Request::Status {
            target: Some("celery/1".try_into().expect("valid")),
        },
    )
    .await
    .expect("status");
    assert_eq!(
        one.policies[0]
            .instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["celery/1"]
    );

    let missing = Request::Status {
        target: Some("web".try_into().expect("valid")),
    };
    match client::call::<StatusReport>(&srv.path, &missing).await {
        Err(ClientError::Refused(b)) => assert_eq!(b.code, ErrorCode::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }

    let text: String = client::call(&srv.path, &Request::Metrics)
        .await
        .expect("metrics");
    assert!(text.starts_with("# HELP oomguard_build_info"), "{text}");
    assert!(
        text.contains("oomguard_memory_current_bytes{policy=\"celery\",index=\"1\"} 104857600\n"),
        "{text}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_rejected_reload_carries_every_problem() {
    let mut api = fake();
    let problems = vec![
        "/etc/oomguard/policies/a.yaml: memory.high: \"12Q\" is not a size".to_string(),
        "/etc/oomguard/policies/b.yaml: run.command[0]: must be an absolute path".to_string(),
    ];
    api.reload = Err(ApiError::failed_with(
        "reload rejected, nothing changed: 2 problems",
        problems.clone(),
    ));
    let srv = start_with(api, Access::new(Some(NOGROUP), vec![]), Limits::default()).await;
    match client::call::<ReloadReport>(&srv.path, &Request::Reload).await {
        Err(ClientError::Refused(b)) => {
            assert_eq!(b.code, ErrorCode::Failed);
            assert_eq!(b.details, problems);
        }
        other => panic!("expected the reload to fail, got {other:?}"),
    }
    assert_eq!(client::cmd_reload(&srv.path).await, client::EXIT_REFUSED);
    srv.stop().await;
}

#[tokio::test]
async fn commands_return_their_exit_codes() {
    let srv = start().await;
    assert_eq!(
        client::cmd_status(&srv.path, None, false).await,
        client::EXIT_OK
    );
    assert_eq!(
        client::cmd_status(&srv.path, Some("celery/0".into()), true).await,
        client::EXIT_OK
    );
    assert_eq!(
        client::cmd_status(&srv.path, Some("nope".into()), false).await,
        client::EXIT_REFUSED
    );
    assert_eq!(
        client::cmd_status(&srv.path, Some("Bad Target".into()), false).await,
        client::EXIT_REFUSED
    );
    assert_eq!(
        client::cmd_events(&srv.path, 2, false, false).await,
        client::EXIT_OK
    );
    assert_eq!(
        client::cmd_restart(&srv.path, "celery").await,
        client::EXIT_OK
    );
    assert_eq!(client::cmd_reload(&srv.path).await, client::EXIT_OK);
    assert_eq!(client::cmd_metrics(&srv.path).await, client::EXIT_OK);
    assert_eq!(
        *srv.api.restarted.lock().expect("not poisoned"),
        vec!["celery"]
    );
    let path = srv.path.clone();
    srv.stop().await;
    assert_eq!(
        client::cmd_status(&path, None, false).await,
        client::EXIT_UNREACHABLE
    );
}

#[tokio::test]
async fn shutdown_ends_streams_and_removes_the_socket() {
    let srv = start().await;
    let mut stream = client::follow(&srv.path, 1).await.expect("connected");
    assert!(matches!(
        stream.next().await,
        Ok(Some(StreamItem::Event(_)))
    ));
    let path = srv.path.clone();
    srv.stop().await;
    match stream.next().await {
        Err(ClientError::Refused(b)) => assert_eq!(b.code, ErrorCode::ShuttingDown),
        other => panic!("expected shutting_down, got {other:?}"),
    }
    assert!(!path.exists(), "socket file removed");
    match client::request(&path, &Request::Status { target: None }).await {
        Err(e @ ClientError::Unreachable { .. }) => {
            assert!(e.to_string().contains("the daemon is not running"), "{e}");
            assert_eq!(e.exit_code(), client::EXIT_UNREACHABLE);
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn during_shutdown_changes_are_refused_and_reads_still_work() {
    let srv = start().await;
    srv.api.closing.store(true, Ordering::SeqCst);
    for req in [restart_req(), Request::Reload] {
        match client::request(&srv.path, &req).await {
            Ok(Response::Err(b)) => {
                assert_eq!(b.code, ErrorCode::ShuttingDown, "{b}");
                assert!(b.message.contains("shutting down"), "{b}");
            }
            other => panic!("{req:?}: expected shutting_down, got {other:?}"),
        }
    }
    assert_eq!(client::cmd_reload(&srv.path).await, client::EXIT_REFUSED);
    assert!(
        srv.api.restarted.lock().expect("not poisoned").is_empty(),
        "the restart reached the daemon"
    );
    assert_eq!(
        client::cmd_status(&srv.path, None, false).await,
        client::EXIT_OK
    );
    assert_eq!(
        client::cmd_events(&srv.path, 2, false, false).await,
        client::EXIT_OK
    );
    srv.stop().await;
}

#[tokio::test]
async fn bind_refuses_a_symlink_at_the_socket_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real.sock");
    drop(std::os::unix::net::UnixListener::bind(&real).expect("a stale socket"));
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").expect("victim");
    for target in [&real, &victim] {
        let path = dir.path().join("oomguard.sock");
        std::os::unix::fs::symlink(target, &path).expect("symlink");
        let err = server::bind(&path, Some(NOGROUP)).expect_err("a symlink");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(target.exists(), "the symlink's target was removed");
        std::fs::remove_file(&path).expect("rm symlink");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
}

/// `observations` (what `oomguard recommend` asks) is per policy: an instance is a bad request;
/// a daemon with nothing recorded answers not_found, never an empty success.
#[tokio::test]
async fn observations_are_per_policy_and_missing_ones_are_not_found() {
    let srv = start().await;
    let ask = |policy: &str| Request::Observations {
        policy: policy.try_into().expect("valid"),
    };
    for (policy, code) in [
        ("celery/0", ErrorCode::BadRequest),
        ("celery", ErrorCode::NotFound),
    ] {
        match client::call::<serde_json::Value>(&srv.path, &ask(policy)).await {
            Err(ClientError::Refused(b)) => assert_eq!(b.code, code, "{policy}: {}", b.message),
            other => panic!("{policy}: expected {code:?}, got {other:?}"),
        }
    }
}
