//! `--metrics-listen ADDR:PORT`: the text of `oomguard metrics` over HTTP, for a Prometheus
//! scrape where no node_exporter textfile collector runs (a Kubernetes pod, a host scraped
//! directly). `GET /metrics` only; anything else gets 404 or 405.
//!
//! Off by default, because TCP has no peer credentials: whoever reaches the port reads what the
//! socket's readers read (policy and instance names, numbers; never command lines, which the
//! metrics do not carry). Bounded like the socket: a few connections at once, a deadline on the
//! request head and on the whole connection, so a slow or silent client lets go.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// The Prometheus text exposition format's content type (format 0.0.4, as `metrics` renders).
const CONTENT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Robustness limits of the metrics listener; tests shrink them.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once; more are closed at accept. A scraper needs one.
    pub max_connections: usize,
    /// Time allowed for a request's head to arrive.
    pub header_timeout: Duration,
    /// Longest a connection (keep-alive included) is kept.
    pub connection_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 8,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `render()` (the metrics text, or why there is none) on `listener` until `shutdown`.
pub async fn serve_metrics<R>(
    listener: TcpListener,
    render: R,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning on accept.
                    warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics listener: all {} connections busy, closing", limits.max_connections);
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let render = Arc::clone(&render);
                async move { Ok::<_, Infallible>(answer(&req, &*render)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Err(e)) => debug!(%peer, "metrics connection: {e}"),
                Err(_) => {
                    debug!(%peer, "metrics connection: closed after {:?}", limits.connection_timeout)
                }
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

/// The reply to one request: pure apart from `render`.
fn answer(
    req: &Request<Incoming>,
    render: &dyn Fn() -> Result<String, String>,
) -> Response<Full<Bytes>> {
    reply_to(req.method(), req.uri().path(), render)
}

fn reply_to(
    method: &Method,
    path: &str,
    render: &dyn Fn() -> Result<String, String>,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if path != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "oomguard serves /metrics only\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("a valid header value"));
        return r;
    }
    match render() {
        Ok(body) => {
            let mut r = text(StatusCode::OK, body);
            r.headers_mut()
                .insert(CONTENT_TYPE, CONTENT.parse().expect("a valid header value"));
            r
        }
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn body(r: Response<Full<Bytes>>) -> String {
        let bytes = r
            .into_body()
            .collect()
            .await
            .expect("a full body")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn only_get_metrics_gets_the_text() {
        let ok = || Ok::<_, String>("oomguard_up 1\n".to_string());
        let r = reply_to(&Method::GET, "/metrics", &ok);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], CONTENT);
        assert_eq!(body(r).await, "oomguard_up 1\n");
        assert_eq!(
            reply_to(&Method::GET, "/", &ok).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            reply_to(&Method::GET, "/metrics/x", &ok).status(),
            StatusCode::NOT_FOUND
        );
        let post = reply_to(&Method::POST, "/metrics", &ok);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[ALLOW], "GET, HEAD");
        let down = || Err::<String, _>("the daemon is starting".to_string());
        let r = reply_to(&Method::GET, "/metrics", &down);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r).await, "the daemon is starting\n");
    }

    async fn get(addr: std::net::SocketAddr, head: &str) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connects");
        s.write_all(head.as_bytes()).await.expect("writes");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reads");
        out
    }

    #[tokio::test]
    async fn serves_over_tcp_and_lets_a_silent_client_go() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("an address");
        let limits = HttpLimits {
            max_connections: 2,
            header_timeout: Duration::from_millis(200),
            // Far beyond the test's bound below: only the head's timeout can close them.
            connection_timeout: Duration::from_secs(3600),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(
            listener,
            || Ok("oomguard_up 1\n".to_string()),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        let reply = get(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\noomguard_up 1\n"), "{reply}");
        // Two clients that never send a request hold both slots only until the head timeout:
        // then a scrape is served again.
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.expect("connects"));
        }
        for mut s in silent {
            let mut rest = Vec::new();
            // Closed by the server (a 408 or nothing), not left open.
            s.read_to_end(&mut rest)
                .await
                .expect("closed by the server");
        }
        // The server drops a connection's slot just after closing it: allow it that moment.
        let mut reply = String::new();
        for _ in 0..50 {
            reply = get(
                addr,
                "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            if !reply.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        stop.send(()).expect("server running");
        server.await.expect("server ends at shutdown");
    }
}
