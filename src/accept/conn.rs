//! The ingest connection loop: accepts TCP connections up to `limits.max_connections`, runs the
//! TLS handshake (when the listener has TLS) under its timeout, and serves HTTP/1.1 and HTTP/2
//! with the limits of [`ConnectionLimits`]:
//!
//! | bound | enforced by | when hit |
//! |---|---|---|
//! | open connections | a semaphore held by every connection | new clients wait in the kernel backlog |
//! | TLS handshake time | a timeout around the handshake | connection closed (`tls_handshake_timeout`) |
//! | HTTP/1.1 head size and header count | hyper's read buffer and header array | 431, connection closed (`header_too_large`) |
//! | HTTP/1.1 head time | hyper's header read timer | connection closed (`header_timeout`) |
//! | HTTP/2 streams per connection | SETTINGS_MAX_CONCURRENT_STREAMS | further streams refused |
//! | HTTP/2 header list | SETTINGS_MAX_HEADER_LIST_SIZE | stream refused (431) |
//! | HTTP/2 rapid resets | h2's pending-accept reset budget | GOAWAY `ENHANCE_YOUR_CALM` (`http2_reset_flood`) |
//! | idle time | a watchdog per connection, see [`Activity`] | connection closed (`idle_timeout`) |
//!
//! Every bound that closes or refuses is counted in `sluice_limit_refusals_total{limit}`; the
//! open connections are the gauge `sluice_ingest_connections`. Request-level bounds (body size
//! and time, buffered bodies) are enforced by the ingest handler.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::tls::{HandshakeError, PeerIdentity, SharedServerConfig, accept_tls};
use crate::config::Limits;

/// Pause after a failed `accept()` (for instance out of file descriptors) so the loop does not
/// spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Per-connection bounds of the ingest listener (from `[limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once (handshaking or serving); at the limit accepting pauses.
    pub max_connections: usize,
    /// From TCP accept to a finished TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// To receive a complete HTTP/1.1 request head.
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
    /// Largest request head (HTTP/1.1 read buffer, HTTP/2 header list), at least 8 KiB.
    pub max_header_bytes: usize,
    /// Most header fields of an HTTP/1.1 request.
    pub max_headers: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    pub http2_max_concurrent_streams: u32,
    /// Streams a client may reset before they are accepted (rapid reset protection).
    pub http2_max_pending_reset_streams: usize,
    /// Streams the server may reset for client errors before it closes the connection.
    pub http2_max_local_reset_streams: usize,
}

impl ConnectionLimits {
    pub fn from_limits(limits: &Limits) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: limits.max_connections,
            tls_handshake_timeout: Duration::from_secs(limits.tls_handshake_timeout_secs),
            header_read_timeout: Duration::from_secs(limits.header_read_timeout_secs),
            idle_timeout: Duration::from_secs(limits.idle_timeout_secs),
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            http2_max_concurrent_streams: limits.http2_max_concurrent_streams,
            http2_max_pending_reset_streams: limits.http2_max_pending_reset_streams,
            http2_max_local_reset_streams: limits.http2_max_local_reset_streams,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::from_limits(&Limits::default())
    }
}

/// Counts one refusal by a limit in `sluice_limit_refusals_total{limit}`.
pub fn count_refusal(limit: &'static str) {
    metrics::counter!("sluice_limit_refusals_total", "limit" => limit).increment(1);
}

/// Serves `app` on `listener` until `shutdown` completes: over TLS when `tls` is given (each
/// connection with the configuration it holds when the connection arrives; every
/// request then carries the `Option<Arc<PeerIdentity>>` extension of its client certificate),
/// plain HTTP otherwise (the extension is `None`).
///
/// On `shutdown`: stop accepting, abandon handshakes in progress, let open connections finish
/// their requests (HTTP/2 GOAWAY, HTTP/1.1 close after the current response), and return once
/// every connection is closed.
pub async fn serve_connections(
    listener: TcpListener,
    tls: Option<SharedServerConfig>,
    app: axum::Router,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    // Connections still in their handshake are not yet watched by `graceful`; this tells them
    // to give up (the value only ever goes from false to true).
    let (stop_handshakes, handshakes_stopped) = watch::channel(false);
    let http = Arc::new(http_builder(limits));
    let open = Arc::new(AtomicUsize::new(0));

    let mut shutdown = pin!(shutdown);
    loop {
        let permit = match connection_slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                count_refusal("connections");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    permit = connection_slots.clone().acquire_owned() => {
                        permit.expect("the connection semaphore is never closed")
                    }
                }
            }
        };
        let (tcp, remote) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a TCP connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, error = %err, "cannot set TCP_NODELAY");
        }

        // The TLS configuration in force when the connection arrives serves it to its end: a
        // reload changes what later connections see, never an open one.
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.load_full()));
        let app = app.clone();
        let http = http.clone();
        let watcher = graceful.watcher();
        let mut handshakes_stopped = handshakes_stopped.clone();
        let limits = limits.clone();
        let open_guard = OpenConnection::new(open.clone());
        tokio::spawn(async move {
            let _connection_slot = permit;
            let _open = open_guard;
            let activity = Arc::new(Activity::new());
            let tcp = TrackedIo::new(tcp, activity.clone());
            let Some(acceptor) = acceptor else {
                serve_one(&http, watcher, tcp, None, app, activity, &limits, remote).await;
                return;
            };
            let handshake = tokio::select! {
                result = tokio::time::timeout(limits.tls_handshake_timeout, accept_tls(&acceptor, tcp)) => {
                    result.unwrap_or_else(|_elapsed| Err(HandshakeError::timed_out()))
                }
                // Changed or sender gone: either way the server is shutting down.
                _ = handshakes_stopped.changed() => return,
            };
            let (stream, identity) = match handshake {
                Ok(accepted) => accepted,
                Err(err) => {
                    if err.reason == "timeout" {
                        count_refusal("tls_handshake_timeout");
                    }
                    super::tls::record_refused_handshake(&err, remote);
                    return;
                }
            };
            let identity = identity.map(Arc::new);
            serve_one(
                &http, watcher, stream, identity, app, activity, &limits, remote,
            )
            .await;
        });
    }

    drop(listener);
    // Send fails only when no task is handshaking, which is fine.
    let _ = stop_handshakes.send(true);
    graceful.shutdown().await;
}

fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        // The head must fit the read buffer: a larger one is answered 431.
        .max_buf_size(limits.max_header_bytes.max(8 << 10));
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.http2_max_pending_reset_streams)
        .max_local_error_reset_streams(limits.http2_max_local_reset_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    http
}

/// Serves HTTP on one connection (TLS finished, if any) until it ends or goes idle.
#[allow(clippy::too_many_arguments)]
async fn serve_one<IO>(
    http: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: IO,
    identity: Option<Arc<PeerIdentity>>,
    app: axum::Router,
    activity: Arc<Activity>,
    limits: &ConnectionLimits,
    remote: SocketAddr,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = activity.clone();
    let service = tower::service_fn(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(identity.clone());
        let in_progress = RequestInProgress::new(requests.clone());
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            drop(in_progress);
            response
        }
    });
    let connection =
        watcher.watch(http.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
    tokio::select! {
        served = connection => {
            if let Err(err) = served {
                match connection_error_limit(err.as_ref()) {
                    Some(limit) => {
                        count_refusal(limit);
                        tracing::debug!(%remote, limit, error = %err, "connection closed by a limit");
                    }
                    None => tracing::debug!(%remote, error = %err, "connection ended with an error"),
                }
            }
        }
        () = activity.idle(limits.idle_timeout) => {
            count_refusal("idle_timeout");
            tracing::debug!(%remote, "idle connection closed");
        }
    }
}

/// The limit behind an error that ended a connection, if one was.
fn connection_error_limit(
    err: &(dyn std::error::Error + Send + Sync + 'static),
) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(hyper_error) = err.downcast_ref::<hyper::Error>() {
            if hyper_error.is_timeout() {
                return Some("header_timeout");
            }
            if hyper_error.is_parse_too_large() {
                return Some("header_too_large");
            }
        }
        if let Some(h2_error) = err.downcast_ref::<h2::Error>()
            && h2_error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
        {
            return Some("http2_reset_flood");
        }
        source = err.source();
    }
    None
}

/// Keeps `sluice_ingest_connections` equal to the connections open.
struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>) -> OpenConnection {
        let now = open.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("sluice_ingest_connections").set(now as f64);
        OpenConnection(open)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("sluice_ingest_connections").set(now as f64);
    }
}

/// What the idle watchdog of one connection looks at: when bytes last moved, and how many
/// requests are being handled. A connection is idle when no request is in progress and no byte
/// was read or written for the idle timeout.
pub struct Activity {
    started: Instant,
    /// Milliseconds since `started` at the last read or write that moved bytes.
    last_io_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            started: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_io_ms.store(now, Ordering::Relaxed);
    }

    /// Completes once the connection has been idle for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
            let quiet = self.started.elapsed().saturating_sub(last);
            let wait = if self.requests.load(Ordering::Relaxed) > 0 {
                timeout
            } else if quiet >= timeout {
                return;
            } else {
                timeout - quiet
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Marks a request in progress on its connection's [`Activity`].
struct RequestInProgress(Arc<Activity>);

impl RequestInProgress {
    fn new(activity: Arc<Activity>) -> RequestInProgress {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        RequestInProgress(activity)
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that records in its [`Activity`] when bytes move.
struct TrackedIo<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO> TrackedIo<IO> {
    fn new(inner: IO, activity: Arc<Activity>) -> TrackedIo<IO> {
        activity.touch();
        TrackedIo { inner, activity }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for TrackedIo<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for TrackedIo<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
