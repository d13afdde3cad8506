//! `events --follow` streams: the history, then live events, with keepalives while quiet.

use tokio::io::AsyncReadExt;
use tokio::sync::broadcast::error::RecvError;

use super::{Api, Connection};
use crate::protocol::{ErrorCode, Response};

impl<A: Api> Connection<A> {
    /// History first, then live events, one response line each, until the peer hangs up.
    /// Subscribing before reading the history leaves no gap; sequence numbers drop duplicates.
    pub(super) async fn follow(&mut self, last: usize) {
        let mut live = self.api.subscribe();
        let history = self.api.events(last);
        let mut seen = history.last().map(|e| e.seq);
        for event in history {
            if !self.send(&Response::ok(&self.peer.visible(event))).await {
                return;
            }
        }
        let mut scratch = [0u8; 512];
        loop {
            let keepalive = tokio::time::sleep(self.limits.follow_keepalive);
            let next = tokio::select! {
                () = keepalive => {
                    // An empty line: clients skip it (docs/protocol.md). A peer that does not
                    // read is cut by the write timeout once its buffer is full.
                    if self.send_raw(b"\n").await {
                        continue;
                    }
                    return;
                }
                _ = self.shutdown.changed() => {
                    self.send(&Response::error(ErrorCode::ShuttingDown, "the daemon is shutting down")).await;
                    return;
                }
                // Whatever the client sends now is ignored; EOF means it left.
                read = self.reader.read(&mut scratch) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                next = live.recv() => next,
            };
            let resp = match next {
                Ok(event) if seen.is_some_and(|s| event.seq <= s) => continue,
                Ok(event) => {
                    seen = Some(event.seq);
                    Response::ok(&self.peer.visible(event))
                }
                Err(RecvError::Lagged(n)) => Response::error(
                    ErrorCode::Lagged,
                    format!("reading too slowly: {n} events were dropped from this stream"),
                ),
                Err(RecvError::Closed) => {
                    self.send(&Response::error(
                        ErrorCode::ShuttingDown,
                        "the event stream ended",
                    ))
                    .await;
                    return;
                }
            };
            if !self.send(&resp).await {
                return;
            }
        }
    }
}
