//! The CLI side of the socket: one request, one reply (or a stream of events), and ready-made
//! commands that print and return the exit code: 0 ok, 1 refused or failed, 3 daemon unreachable
//! (2 is clap's usage error).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::protocol::{
    ErrorBody, ErrorCode, EventRecord, ReloadReport, Request, Response, ResponseError,
    RestartReply, StatusReport, Target,
};
use crate::table;

mod recommend;
pub use recommend::cmd_recommend;

/// Exit codes of the `cmd_*` functions.
pub const EXIT_OK: u8 = 0;
pub const EXIT_REFUSED: u8 = 1;
/// 3, as systemctl's "not running": 2 is clap's usage error, and a typo must not read as a dead daemon.
pub const EXIT_UNREACHABLE: u8 = 3;

/// How long a read-only request may take; restart and reload wait as long as the daemon works
/// (a rolling restart takes one grace period per instance).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest reply line this client reads; a status of 1000 instances is well under 1 MiB.
const MAX_REPLY_LINE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect at all.
    #[error("cannot reach the oomguard daemon at {}: {source}; {hint}", path.display())]
    Unreachable {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    /// Connected, then the daemon went away before answering.
    #[error("lost the connection to the oomguard daemon at {}: {source}", path.display())]
    Disconnected { path: PathBuf, source: io::Error },
    /// Connected, and no answer came in time.
    #[error("the oomguard daemon at {} did not answer within {}s", path.display(), after.as_secs())]
    Timeout { path: PathBuf, after: Duration },
    /// The daemon answered with an error: refused, bad request, not found, failed...
    #[error("{0}")]
    Refused(ErrorBody),
    /// The daemon answered something this client cannot read (another version?).
    #[error("unreadable reply from the oomguard daemon at {}: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
}

impl ClientError {
    /// 3 when the daemon could not be reached or went away, 1 when it answered with a no.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Timeout { .. } => EXIT_UNREACHABLE,
            ClientError::Refused(_) | ClientError::Protocol { .. } => EXIT_REFUSED,
        }
    }
}

fn hint(kind: io::ErrorKind) -> &'static str {
    match kind {
        io::ErrorKind::NotFound => {
            "no socket there: the daemon is not running, or it uses another path (--socket)"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied: you are not in the group that owns the socket (usually `oomguard`; \
             `sudo usermod -aG oomguard $USER`, then log in again), or use sudo"
        }
        io::ErrorKind::ConnectionRefused => {
            "a socket file is there but nobody listens: the daemon is not running"
        }
        _ => "is the daemon running, and is --socket right?",
    }
}

/// A connection with its request sent.
struct Conn {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    line: Vec<u8>,
    /// Why sending the request failed, if it did.
    write_error: Option<io::Error>,
}

impl Conn {
    async fn open(socket: &Path, req: &Request) -> Result<Conn, ClientError> {
        let path = socket.to_path_buf();
        let mut stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: path.clone(),
                    hint: hint(source.kind()),
                    source,
                })?;
        let mut line = req.to_line();
        line.push('\n');
        // A daemon that refuses (busy) may close before our request lands; its reply is still
        // readable, so a failed write is only reported if no reply follows.
        let write_error = stream.write_all(line.as_bytes()).await.err();
        Ok(Conn {
            path,
            reader: BufReader::new(stream),
            line: Vec::new(),
            write_error,
        })
    }

    /// The next reply; `None` when the daemon closed the connection. Empty lines are the
    /// daemon's keepalives on a quiet follow stream (docs/protocol.md) and are skipped.
    async fn next(&mut self) -> Result<Option<Response>, ClientError> {
        loop {
            self.line.clear();
            let n = (&mut self.reader)
                .take(MAX_REPLY_LINE)
                .read_until(b'\n', &mut self.line)
                .await;
            match (n, self.write_error.take()) {
                (Ok(n), _) if n > 0 => {}
                (_, Some(source)) | (Err(source), None) => {
                    return Err(ClientError::Disconnected {
                        path: self.path.clone(),
                        source,
                    })
                }
                (Ok(_), None) => return Ok(None),
            }
            if !self.line.trim_ascii().is_empty() {
                break;
            }
        }
        Response::parse(&self.line)
            .map(Some)
            .map_err(|detail| ClientError::Protocol {
                path: self.path.clone(),
                detail,
            })
    }

    async fn reply(&mut self) -> Result<Response, ClientError> {
        self.next().await?.ok_or_else(|| ClientError::Disconnected {
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::UnexpectedEof, "closed without a reply"),
        })
    }
}

/// Sends one request and returns the daemon's reply, which may itself be an error body.
pub async fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let exchange = async {
        let mut conn = Conn::open(socket, req).await?;
        conn.reply().await
    };
    if req.changes_state() {
        exchange.await
    } else {
        tokio::time::timeout(READ_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                path: socket.to_path_buf(),
                after: READ_TIMEOUT,
            })?
    }
}

/// [`request`], with an error body turned into [`ClientError::Refused`] and the data decoded.
pub async fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    request(socket, req)
        .await?
        .into_result()
        .map_err(|e| match e {
            ResponseError::Refused(body) => ClientError::Refused(body),
            ResponseError::Decode(detail) => ClientError::Protocol {
                path: socket.to_path_buf(),
                detail,
            },
        })
}

/// One item of a followed event stream.
// One item exists at a time and is consumed at once; boxing the event would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum StreamItem {
    Event(EventRecord),
    /// The daemon dropped events because this client read too slowly; the stream goes on.
    Lagged(String),
}

/// A `follow` stream: the last events of the history, then every new one.
pub struct EventStream {
    conn: Conn,
}

impl EventStream {
    /// The next event; `Ok(None)` when the daemon closed the stream. Errors (forbidden,
    /// shutting_down...) end it.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, ClientError> {
        match self.conn.next().await? {
            None => Ok(None),
            Some(Response::Err(body)) if body.code == ErrorCode::Lagged => {
                Ok(Some(StreamItem::Lagged(body.message)))
            }
            Some(resp) => resp
                .into_result()
                .map(|e| Some(StreamItem::Event(e)))
                .map_err(|e| match e {
                    ResponseError::Refused(body) => ClientError::Refused(body),
                    ResponseError::Decode(detail) => ClientError::Protocol {
                        path: self.conn.path.clone(),
                        detail,
                    },
                }),
        }
    }
}

/// Starts following events; nothing is read until [`EventStream::next`].
pub async fn follow(socket: &Path, last: usize) -> Result<EventStream, ClientError> {
    Ok(EventStream {
        conn: Conn::open(socket, &Request::Events { last, follow: true }).await?,
    })
}

// ---------------------------------------------------------------------------------------------
// Commands for the CLI: print, return the exit code.
// ---------------------------------------------------------------------------------------------

/// `oomguard status [TARGET] [--json]`: the table, or exactly the StatusReport JSON.
pub async fn cmd_status(socket: &Path, target: Option<String>, json: bool) -> u8 {
    let target = match target.map(|t| Target::try_from(t.as_str())).transpose() {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    let req = Request::Status { target };
    if json {
        return match call::<serde_json::Value>(socket, &req).await {
            Ok(v) => finish(print(&format!("{v:#}\n"))),
            Err(e) => fail(&e),
        };
    }
    match call::<StatusReport>(socket, &req).await {
        Ok(report) => finish(print(&table::render_status(&report, now_unix()))),
        Err(e) => fail(&e),
    }
}

/// `oomguard events [--last N] [--follow] [--json]`: one line per event (JSON Lines with --json).
pub async fn cmd_events(socket: &Path, last: usize, follow: bool, json: bool) -> u8 {
    let line = |e: &EventRecord| {
        if json {
            serde_json::to_string(e)
                .map(|s| s + "\n")
                .unwrap_or_default()
        } else {
            table::render_event(e) + "\n"
        }
    };
    if !follow {
        return match call::<Vec<EventRecord>>(
            socket,
            &Request::Events {
                last,
                follow: false,
            },
        )
        .await
        {
            Ok(events) => finish(print(&events.iter().map(line).collect::<String>())),
            Err(e) => fail(&e),
        };
    }
    let mut stream = match self::follow(socket, last).await {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    loop {
        match stream.next().await {
            Ok(Some(StreamItem::Event(e))) => {
                if print(&line(&e)).is_err() {
                    return EXIT_OK; // stdout closed (`| head`): the reader is done.
                }
            }
            Ok(Some(StreamItem::Lagged(msg))) => eprintln!("oomguard: warning: {msg}"),
            Ok(None) => {
                eprintln!("oomguard: the daemon closed the event stream");
                return EXIT_UNREACHABLE;
            }
            Err(e) => return fail(&e),
        }
    }
}

/// `oomguard restart TARGET`: "policy/N" restarts one instance, "policy" all, one at a time.
pub async fn cmd_restart(socket: &Path, target: &str) -> u8 {
    let target = match Target::try_from(target) {
        Ok(t) => t,
        Err(e) => return usage(&e),
    };
    match call::<RestartReply>(socket, &Request::Restart { target }).await {
        Ok(r) => finish(print(&format!("{}\n", r.message))),
        Err(e) => fail(&e),
    }
}

/// `oomguard reload`: what changed, or every problem found (and nothing changed).
pub async fn cmd_reload(socket: &Path) -> u8 {
    match call::<ReloadReport>(socket, &Request::Reload).await {
        Ok(r) => finish(print(&reload_summary(&r))),
        Err(e) => fail(&e),
    }
}

/// `oomguard metrics`: Prometheus text, e.g. for node_exporter's textfile collector.
pub async fn cmd_metrics(socket: &Path) -> u8 {
    match call::<String>(socket, &Request::Metrics).await {
        Ok(text) => finish(print(&text)),
        Err(e) => fail(&e),
    }
}

/// "reloaded: added a; changed b, c; unchanged d" (empty groups left out).
pub fn reload_summary(r: &ReloadReport) -> String {
    let parts: Vec<String> = [
        ("added", &r.added),
        ("changed", &r.changed),
        ("removed", &r.removed),
        ("unchanged", &r.unchanged),
    ]
    .into_iter()
    .filter(|(_, names)| !names.is_empty())
    .map(|(what, names)| format!("{what} {}", names.join(", ")))
    .collect();
    let notes: String = r.next_start.iter().map(|n| format!("{n}\n")).collect();
    if parts.is_empty() {
        format!("reloaded: no policies\n{notes}")
    } else {
        format!("reloaded: {}\n{notes}", parts.join("; "))
    }
}

fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn finish(printed: io::Result<()>) -> u8 {
    // A closed stdout is the reader's choice, not a failure of the command.
    match printed {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            eprintln!("oomguard: cannot write output: {e}");
            EXIT_REFUSED
        }
        _ => EXIT_OK,
    }
}

fn fail(e: &ClientError) -> u8 {
    eprintln!("oomguard: {e}");
    e.exit_code()
}

fn usage(message: &str) -> u8 {
    eprintln!("oomguard: {message}");
    EXIT_REFUSED
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_summary_lists_non_empty_groups() {
        let r = ReloadReport {
            added: vec!["a".into()],
            changed: vec!["b".into(), "c".into()],
            removed: vec![],
            unchanged: vec!["d".into()],
            next_start: vec![],
        };
        assert_eq!(
            reload_summary(&r),
            "reloaded: added a; changed b, c; unchanged d\n"
        );
        let r = ReloadReport {
            changed: vec!["b".into()],
            next_start: vec![
                "b: run section changed; applies at each instance's next start".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            reload_summary(&r),
            "reloaded: changed b\nb: run section changed; applies at each instance's next start\n"
        );
        assert_eq!(
            reload_summary(&ReloadReport::default()),
            "reloaded: no policies\n"
        );
    }

    #[test]
    fn refusals_and_unreachable_have_distinct_exit_codes() {
        let path = PathBuf::from("/run/oomguard/oomguard.sock");
        let unreachable = ClientError::Unreachable {
            path: path.clone(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
            hint: hint(io::ErrorKind::PermissionDenied),
        };
        assert_eq!(unreachable.exit_code(), EXIT_UNREACHABLE);
        let msg = unreachable.to_string();
        assert!(
            msg.starts_with("cannot reach the oomguard daemon at /run/oomguard/oomguard.sock"),
            "{msg}"
        );
        assert!(
            msg.contains("not in the group that owns the socket"),
            "{msg}"
        );
        let refused =
            ClientError::Refused(ErrorBody::new(ErrorCode::Forbidden, "`restart` needs root"));
        assert_eq!(refused.exit_code(), EXIT_REFUSED);
        assert_eq!(refused.to_string(), "`restart` needs root (forbidden)");
    }
}
