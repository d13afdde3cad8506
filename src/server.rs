//! The unix-socket server: binds the socket with its owner and mode, decides what each peer may
//! do from its kernel-reported credentials (SO_PEERCRED), and answers requests through the
//! [`Api`] seam that the daemon implements. One task per connection; `slots` caps them per uid
//! and keeps some for root and admins.
//!
//! Who may do what (never decided from anything the client says):
//! - read (`status`, `events`, `metrics`): root, members of the socket's group, `admin_uids`;
//! - change (`restart`, `reload`): root and `admin_uids` only.
//!
//! The file mode is the first gate (connect(2) needs write permission on the socket), the peer
//! credentials the second, so a socket left with a wrong mode still refuses strangers.
//!
//! Submodules: `access` (roles), `slots` (connection limits), `follow` (event streams),
//! `redact` (what readers may not see), `socket` (the socket file), `http` (`--metrics-listen`).

mod access;
mod follow;
mod http;
mod redact;
mod slots;
mod socket;

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use self::access::Role;
pub use self::access::{Access, DEFAULT_GROUP};
pub use self::http::{serve_metrics, HttpLimits};
pub use self::slots::{Refusal, SlotLimits};
use self::slots::{Slot, Slots};
pub use self::socket::bind;
use crate::metrics;
use crate::observations::PolicyObservations;
pub use crate::protocol::{ApiError, ReloadReport};
use crate::protocol::{
    ErrorCode, EventRecord, Request, Response, RestartReply, StatusReport, MAX_REQUEST_LINE,
};

/// How long a connection closing after an error reply discards the peer's input.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// What the server needs from the daemon. Futures may be dropped when the server shuts down,
/// so they must be cancel-safe (send a command to the state's owner, await its answer).
pub trait Api: Send + Sync + 'static {
    /// `None`: everything; "policy" or "policy/N": just that (`not_found` if it does not exist).
    fn status(&self, target: Option<&str>) -> Result<StatusReport, ApiError>;
    /// The last `last` events of the bounded history, oldest first.
    fn events(&self, last: usize) -> Vec<EventRecord>;
    /// Every event published from now on.
    fn subscribe(&self) -> broadcast::Receiver<EventRecord>;
    /// "policy/N": restart that instance; "policy": every instance, one at a time. Ok(message).
    fn restart(&self, target: &str) -> impl Future<Output = Result<String, ApiError>> + Send;
    /// Re-read the policies; on failure nothing changed and `details` lists every problem.
    fn reload(&self) -> impl Future<Output = Result<ReloadReport, ApiError>> + Send;
    /// False once the daemon started shutting down: `restart` and `reload` then get
    /// `shutting_down` (nothing may start while workers are being stopped); reads still work.
    fn accepting_changes(&self) -> bool {
        true
    }
    /// A policy's recorded worker lifetimes (`oomguard recommend`); `not_found` when it neither
    /// runs nor has any.
    fn observations(&self, policy: &str) -> Result<PolicyObservations, ApiError> {
        Err(ApiError::not_found(format!(
            "no observations of policy {policy:?}"
        )))
    }
}

/// Robustness limits; [`serve`] uses the defaults, tests shrink them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once; the next one gets `busy` and is closed.
    pub max_connections: usize,
    /// Of `max_connections`, how many only root and admin uids may take, so readers holding
    /// follow streams can never lock root out of `restart`/`reload`.
    pub admin_reserved: usize,
    /// Connections one non-admin uid may hold at once.
    pub per_uid: usize,
    /// `events --follow` streams one non-admin uid may hold at once.
    pub follows_per_uid: usize,
    /// A follow stream silent this long gets an empty keepalive line, so a client that stopped
    /// reading fills its socket buffer and is cut by `write_timeout` instead of holding its slot.
    pub follow_keepalive: Duration,
    /// Longest request line; longer gets `too_large` and the connection is closed.
    pub max_line: usize,
    /// Time allowed for a complete request line, so a silent or trickling client lets go.
    pub idle_timeout: Duration,
    /// Time allowed for writing one reply line to a client that does not read.
    pub write_timeout: Duration,
    /// After shutdown, how long connections get to finish before they are aborted.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            admin_reserved: 8,
            per_uid: 16,
            follows_per_uid: 4,
            follow_keepalive: Duration::from_secs(60),
            max_line: MAX_REQUEST_LINE,
            idle_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// Serves until `shutdown` resolves, with the default [`Limits`].
pub async fn serve<A: Api>(
    listener: UnixListener,
    api: Arc<A>,
    access: Access,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, api, access, Limits::default(), shutdown).await
}

/// [`serve`] with explicit limits. On shutdown it stops accepting, tells every connection
/// (in-flight requests are dropped with `shutting_down`), waits up to `shutdown_grace`, and
/// removes the socket file if it is still the one it was serving.
pub async fn serve_with<A: Api>(
    listener: UnixListener,
    api: Arc<A>,
    access: Access,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let socket_file = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(PathBuf::from));
    let socket_inode = socket_file
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.dev(), m.ino()));
    // Connections hold receivers; dropping the sender is the shutdown broadcast.
    let (notify_shutdown, shutdown_rx) = watch::channel(());
    let slots = Slots::new(limits.slots());
    let access = Arc::new(access);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match take_slot(&stream, &slots, &access) {
                    Ok(slot) => {
                        let conn = Connection::new(stream, &api, &access, limits, shutdown_rx.clone());
                        tasks.spawn(async move {
                            if let Some(conn) = conn.await {
                                conn.run(slot).await;
                            }
                        });
                    }
                    Err(why) => refuse_busy(stream, &why),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => log_join(done),
        }
    }
    drop(notify_shutdown);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while let Some(done) = tasks.join_next().await {
            log_join(done);
        }
    })
    .await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "connections still busy after the shutdown grace; aborting them"
        );
        tasks.shutdown().await;
    }
    if let (Some(path), Some(inode)) = (socket_file, socket_inode) {
        let same = std::fs::symlink_metadata(&path).is_ok_and(|m| (m.dev(), m.ino()) == inode);
        if same {
            let _ = std::fs::remove_file(&path);
        }
    }
    info!("socket server stopped");
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            error!(error = %e, "connection task panicked");
        }
    }
}

impl Limits {
    fn slots(&self) -> SlotLimits {
        SlotLimits {
            max_connections: self.max_connections,
            admin_reserved: self.admin_reserved,
            per_uid: self.per_uid,
            follows_per_uid: self.follows_per_uid,
        }
    }
}

/// A slot for the peer, decided from its uid alone (admin or not needs no user database, so the
/// accept loop never blocks). No credentials: refused, as the peer could not be authorized anyway.
fn take_slot(stream: &UnixStream, slots: &Arc<Slots>, access: &Access) -> Result<Slot, String> {
    let uid = stream
        .peer_cred()
        .map_err(|e| format!("cannot read your credentials: {e}"))?
        .uid();
    slots
        .connect(uid, access.is_admin(uid))
        .map_err(|why| why.to_string())
}

/// Over a limit: one `busy` line, written without waiting (a fresh socket's buffer is empty),
/// then closed. Runs inline in the accept loop so a flood spawns nothing.
fn refuse_busy(stream: UnixStream, why: &str) {
    warn!(reason = why, "connection refused: busy");
    let line = Response::error(ErrorCode::Busy, why).to_line() + "\n";
    if let Ok(std_stream) = stream.into_std() {
        let _ = (&std_stream).write_all(line.as_bytes());
        let _ = std_stream.shutdown(std::net::Shutdown::Write);
        // Discard the request the client already sent (the stream is non-blocking): closing
        // with unread input would reset the client before it reads `busy`.
        let mut scratch = [0u8; 8192];
        for _ in 0..8 {
            match (&std_stream).read(&mut scratch) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
}

/// The peer as the kernel reports it.
#[derive(Clone, Copy, Debug)]
struct Peer {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
    role: Role,
}

impl Peer {
    /// An event as this peer may see it: whole for root and admins, without the worker's
    /// command line (which may hold secrets) for readers.
    fn visible(&self, event: EventRecord) -> EventRecord {
        match self.role {
            Role::Admin => event,
            Role::Reader | Role::Stranger => redact::for_reader(event),
        }
    }
}

struct Connection<A> {
    api: Arc<A>,
    access: Arc<Access>,
    limits: Limits,
    peer: Peer,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Resolves (with an error) once the server shuts down.
    shutdown: watch::Receiver<()>,
}

/// How reading one request line ended.
enum Line {
    Complete,
    Eof,
    TooLarge,
}

impl<A: Api> Connection<A> {
    /// Reads the peer's credentials; `None` (connection dropped) if the kernel cannot tell.
    fn new(
        stream: UnixStream,
        api: &Arc<A>,
        access: &Arc<Access>,
        limits: Limits,
        shutdown: watch::Receiver<()>,
    ) -> impl Future<Output = Option<Connection<A>>> + Send + 'static {
        let (api, access) = (Arc::clone(api), Arc::clone(access));
        async move {
            let cred = match stream.peer_cred() {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot read peer credentials; closing");
                    return None;
                }
            };
            let (uid, gid) = (cred.uid(), cred.gid());
            let role = access.role_of(uid, gid).await;
            let peer = Peer {
                uid,
                gid,
                pid: cred.pid(),
                role,
            };
            debug!(uid, gid, pid = peer.pid, role = ?role, "connection accepted");
            let (r, w) = stream.into_split();
            Some(Connection {
                api,
                access,
                limits,
                peer,
                reader: BufReader::new(r),
                writer: w,
                shutdown,
            })
        }
    }

    /// Serves requests until the peer leaves; `slot` is given back when this returns.
    async fn run(mut self, slot: Slot) {
        let mut line = Vec::new();
        loop {
            let read = tokio::select! {
                // Between requests nothing is lost by just closing.
                _ = self.shutdown.changed() => return,
                r = tokio::time::timeout(
                    self.limits.idle_timeout,
                    read_line(&mut self.reader, &mut line, self.limits.max_line),
                ) => r,
            };
            match read {
                Err(_) => {
                    debug!(
                        uid = self.peer.uid,
                        pid = self.peer.pid,
                        "no complete request in time; closing"
                    );
                    let msg = format!(
                        "no complete request line within {}s; closing",
                        self.limits.idle_timeout.as_secs_f64()
                    );
                    self.send(&Response::error(ErrorCode::Timeout, msg)).await;
                    self.close_after_error().await;
                    return;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "read failed; closing");
                    return;
                }
                Ok(Ok(Line::Eof)) => return,
                Ok(Ok(Line::TooLarge)) => {
                    warn!(
                        uid = self.peer.uid,
                        pid = self.peer.pid,
                        max = self.limits.max_line,
                        "request too large"
                    );
                    let msg = format!(
                        "request line longer than {} bytes; closing",
                        self.limits.max_line
                    );
                    self.send(&Response::error(ErrorCode::TooLarge, msg)).await;
                    self.close_after_error().await;
                    return;
                }
                Ok(Ok(Line::Complete)) => {}
            }
            if line.trim_ascii().is_empty() {
                continue;
            }
            let req = match Request::parse(&line) {
                Ok(req) => req,
                Err(body) => {
                    debug!(uid = self.peer.uid, error = %body.message, "bad request");
                    if self.send(&Response::Err(body)).await {
                        continue;
                    }
                    return;
                }
            };
            if let Err(body) =
                self.access
                    .authorize(self.peer.role, self.peer.uid, self.peer.gid, &req)
            {
                warn!(uid = self.peer.uid, gid = self.peer.gid, pid = self.peer.pid, request = %req.to_line(), "request refused");
                if self.send(&Response::Err(body)).await {
                    continue;
                }
                return;
            }
            if let Request::Events { last, follow: true } = req {
                let follow_slot = match slot.follow() {
                    Ok(f) => f,
                    Err(why) => {
                        warn!(uid = self.peer.uid, pid = self.peer.pid, reason = %why, "follow refused: busy");
                        self.send(&Response::error(ErrorCode::Busy, why.to_string()))
                            .await;
                        self.close_after_error().await;
                        return;
                    }
                };
                self.follow(last).await;
                drop(follow_slot);
                return;
            }
            let resp = tokio::select! {
                _ = self.shutdown.changed() => {
                    self.send(&Response::error(ErrorCode::ShuttingDown, "the daemon is shutting down")).await;
                    return;
                }
                resp = execute(&*self.api, req, &self.peer) => resp,
            };
            if !self.send(&resp).await {
                return;
            }
        }
    }

    /// Closing a unix socket with unread input resets the peer, whose read then fails before it
    /// sees our last reply. So stop writing (the peer reads the reply, then EOF) and discard
    /// input until the peer closes, for at most a second and a megabyte.
    async fn close_after_error(&mut self) {
        let _ = self.writer.shutdown().await;
        let mut scratch = [0u8; 8192];
        let mut budget: usize = 1 << 20;
        let _ = tokio::time::timeout(DRAIN_TIME, async {
            while budget > 0 {
                match self.reader.read(&mut scratch).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => budget = budget.saturating_sub(n),
                }
            }
        })
        .await;
    }

    /// Writes one line; false if the peer is gone or did not read within the write timeout.
    async fn send(&mut self, resp: &Response) -> bool {
        let mut line = resp.to_line();
        line.push('\n');
        self.send_raw(line.as_bytes()).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        matches!(
            tokio::time::timeout(self.limits.write_timeout, self.writer.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }
}

/// Reads up to and without the newline into `buf`; a final line without newline counts.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = (&mut *reader).take(limit).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Complete);
    }
    Ok(if buf.len() > max {
        Line::TooLarge
    } else {
        Line::Complete
    })
}

async fn execute<A: Api>(api: &A, req: Request, peer: &Peer) -> Response {
    let reply = |r: Result<Response, ApiError>| r.unwrap_or_else(|e| Response::Err(e.into()));
    if req.changes_state() && !api.accepting_changes() {
        info!(
            uid = peer.uid,
            pid = peer.pid,
            cmd = req.name(),
            "refused: shutting down"
        );
        return Response::error(
            ErrorCode::ShuttingDown,
            format!("the daemon is shutting down: no {} any more", req.name()),
        );
    }
    match req {
        Request::Status { target } => {
            let target = target.map(|t| t.to_string());
            reply(api.status(target.as_deref()).map(|s| Response::ok(&s)))
        }
        Request::Events { last, .. } => {
            let events: Vec<EventRecord> = api
                .events(last)
                .into_iter()
                .map(|e| peer.visible(e))
                .collect();
            Response::ok(&events)
        }
        Request::Restart { target } => {
            info!(uid = peer.uid, pid = peer.pid, target = %target, "restart requested over the socket");
            reply(
                api.restart(&target.to_string())
                    .await
                    .map(|message| Response::ok(&RestartReply { message })),
            )
        }
        Request::Reload => {
            info!(
                uid = peer.uid,
                pid = peer.pid,
                "reload requested over the socket"
            );
            reply(api.reload().await.map(|r| Response::ok(&r)))
        }
        Request::Metrics => reply(api.status(None).map(|s| Response::ok(&metrics::render(&s)))),
        Request::Observations { policy } => match policy.index {
            Some(_) => Response::error(
                ErrorCode::BadRequest,
                format!("observations are per policy: {policy} names an instance"),
            ),
            None => reply(api.observations(&policy.policy).map(|o| Response::ok(&o))),
        },
    }
}
