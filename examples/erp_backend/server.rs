//! The HTTP serving loop: hyper's HTTP/1.1 connections with the limits a server on the open
//! internet needs, which `axum::serve` does not offer.
//!
//! - **Header-read timeout** (`HTTP_HEADER_TIMEOUT_SECS`, 10 s): a client has this long to send
//!   a request's head, counted from when the server starts waiting for it: the connection's
//!   start, or the end of the previous answer on a kept-alive connection. So it is also how
//!   long an idle kept-alive connection stays open. A client that sends its headers a byte at
//!   a time is closed when the time is up, however busy it looks.
//! - **Idle timeout** (`HTTP_IDLE_TIMEOUT_SECS`, 60 s): a connection on which nothing is read
//!   or written for this long in the middle of a request (a stalled upload, a client that
//!   stops reading its answer) is closed.
//! - **Connection limit** (`HTTP_MAX_CONNECTIONS`, 1024): at the limit, the server stops
//!   accepting until a connection ends; the next ones wait in the kernel's backlog. The
//!   timeouts above are what keep slow clients from holding the slots.
//! - Handlers can read the peer's address with `ConnectInfo<SocketAddr>`.
//! - WebSocket upgrades work as with `axum::serve`: an upgraded connection leaves this loop
//!   (and its limits: `ws.rs` has its own caps and heartbeats).
//! - Graceful shutdown: on the stop signal no new connection is accepted, idle connections
//!   close at once and busy ones after their current answer.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

/// The limits of the serving loop (environment variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `HTTP_HEADER_TIMEOUT_SECS`.
    pub header_timeout: Duration,
    /// `HTTP_IDLE_TIMEOUT_SECS`.
    pub idle_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS`.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

impl ServerConfig {
    /// Reads the limits from the environment's variables; unset ones keep their defaults.
    ///
    /// # Errors
    /// A message naming the variable that is not a positive whole number (within a sane
    /// range).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, String> {
        let number = |name: &str, max: u64| -> Result<Option<u64>, String> {
            match vars.get(name).map(|v| v.trim()) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .map(Some)
                    .ok_or_else(|| {
                        format!("{name}={v:?} is invalid: not a whole number in 1-{max}")
                    }),
            }
        };
        let mut c = Self::default();
        if let Some(s) = number("HTTP_HEADER_TIMEOUT_SECS", 3600)? {
            c.header_timeout = Duration::from_secs(s);
        }
        if let Some(s) = number("HTTP_IDLE_TIMEOUT_SECS", 86_400)? {
            c.idle_timeout = Duration::from_secs(s);
        }
        if let Some(n) = number("HTTP_MAX_CONNECTIONS", 1_000_000)? {
            c.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        Ok(c)
    }
}

/// Serves `router` on `listener` until `stop` resolves, then lets the open connections finish
/// their current answer. Returns when every connection (not counting upgraded WebSockets)
/// has ended; bound it with a timeout for a grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    stop: impl std::future::Future<Output = ()> + Send,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let (stopping_tx, stopping_rx) = watch::channel(false);
    // Every connection task holds a sender: when all are dropped, every connection has ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut stop = std::pin::pin!(stop);
    let mut at_limit_logged = false;

    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_limit_logged = false;
                p
            }
            Err(_) => {
                if !at_limit_logged {
                    tracing::warn!(
                        limit = config.max_connections,
                        "connection limit reached (HTTP_MAX_CONNECTIONS): new connections wait"
                    );
                    at_limit_logged = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break, // The semaphore is never closed.
                    },
                    () = &mut stop => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let http = Arc::clone(&http);
        let router = router.clone();
        let stopping = stopping_rx.clone();
        let alive = alive_tx.clone();
        let idle_timeout = config.idle_timeout;
        tokio::spawn(async move {
            serve_connection(&http, stream, peer, router, idle_timeout, stopping).await;
            drop(permit);
            drop(alive);
        });
    }

    drop(listener);
    let _ = stopping_tx.send(true);
    drop(alive_tx);
    // `None` once every connection task has dropped its sender.
    let _ = alive_rx.recv().await;
}

/// One connection, until it ends, is upgraded, times out, or the server stops.
async fn serve_connection(
    http: &hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    idle_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        tower::ServiceExt::oneshot(router.clone(), req)
    });
    let conn = http.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        let quiet_until = activity.last() + idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    // Timeouts, resets and malformed requests: the client's doing, not ours.
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(quiet_until) => {
                if activity.last() + idle_timeout <= Instant::now() {
                    tracing::debug!(?idle_timeout, "connection idle: closed");
                    return;
                }
            }
            changed = stopping.changed(), if !shutting_down => {
                if changed.is_err() || *stopping.borrow() {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// When a connection last read or wrote a byte.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A TCP stream that notes every read and write in an [`Activity`].
#[derive(Debug)]
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::vars;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(
            ServerConfig::from_vars(&vars(&[])).unwrap(),
            ServerConfig::default()
        );
        let c = ServerConfig::from_vars(&vars(&[
            ("HTTP_HEADER_TIMEOUT_SECS", "3"),
            ("HTTP_IDLE_TIMEOUT_SECS", "30"),
            ("HTTP_MAX_CONNECTIONS", "50"),
        ]))
        .unwrap();
        assert_eq!(c.header_timeout, Duration::from_secs(3));
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.max_connections, 50);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (k, v) in [
            ("HTTP_HEADER_TIMEOUT_SECS", "0"),
            ("HTTP_IDLE_TIMEOUT_SECS", "soon"),
            ("HTTP_MAX_CONNECTIONS", "-1"),
        ] {
            let err = ServerConfig::from_vars(&vars(&[(k, v)])).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }
}
