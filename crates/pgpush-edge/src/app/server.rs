//! The accept loop and per-connection HTTP/1.1 serving with upgrades, until shutdown drains.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::{
    admission::limits::ConnectionPermit,
    app::{Node, observe, router::route},
    error::ClientError,
    http::{ConnInfo, proxy_protocol, status},
    ops::stats::Stats,
};

/// How long the metrics address waits for a request head.
const METRICS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused connection's request is waited for before it is answered anyway, and then
/// how long it may take to read the answer before it is dropped.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// How long a connection cut as slow may keep writing what it has (its error event, its close
/// frame) before it is dropped.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// Accepts clients until `node.services.lifetimes.shutdown` is cancelled, then waits (up to the shutdown timeout)
/// for every connection task to finish.
pub(crate) async fn serve(socket: TcpListener, node: Arc<Node>) {
    loop {
        tokio::select! {
            _ = node.services.lifetimes.shutdown.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    node.services.lifetimes.tracker.spawn(serve_connection(stream, peer, node.clone()));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Stop accepting: new connections are refused by the kernel from here on.
    drop(socket);
    node.services.lifetimes.tracker.close();
    let open = node.services.lifetimes.tracker.len();
    let span = tracing::debug_span!("drain", open, left = tracing::field::Empty);
    async {
        info!(open, "draining connections");
        let settings = &node.services.lifetimes.settings;
        let deadline = settings.drain_window + settings.shutdown_timeout;
        if tokio::time::timeout(deadline, node.services.lifetimes.tracker.wait())
            .await
            .is_err()
        {
            let left = node.services.lifetimes.tracker.len();
            tracing::Span::current().record("left", left);
            warn!(left, "shutdown timeout reached with connections still open");
        }
    }
    .instrument(span)
    .await;
}

/// Serves the operator's routes on the metrics address until `stop` (after the drain).
pub(crate) async fn serve_metrics(socket: TcpListener, node: Arc<Node>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| observe::metrics_route(node.clone(), request));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(METRICS_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn serve_connection(mut stream: TcpStream, mut peer: SocketAddr, node: Arc<Node>) {
    let settings = &node.services.lifetimes.settings;
    let _ = stream.set_nodelay(true);
    set_idle_timeout(&stream, settings.idle_timeout);
    let mut early_bytes = Vec::new();
    if settings.proxy_protocol {
        let header = tokio::time::timeout(settings.handshake_timeout, async {
            if proxy_protocol::has_header(&stream).await? {
                proxy_protocol::read_header(&mut stream).await.map(Some)
            } else {
                Ok(None)
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no PROXY header in time",
            ))
        });
        match header {
            Ok(None) => {}
            Ok(Some((source, rest))) => {
                // Believed only from a trusted proxy: anyone else could name any address.
                if let (Some(source), true) = (source, is_trusted_proxy(&node, peer)) {
                    peer = source;
                }
                early_bytes = rest;
            }
            Err(error) => {
                debug!(%error, %peer, "connection without a valid PROXY header refused");
                return;
            }
        }
    }
    // Trusted proxies carry many clients: only a client's own address is limited.
    let permit = match node
        .services
        .limits
        .admit((!is_trusted_proxy(&node, peer)).then(|| peer.ip().to_canonical()))
    {
        Ok(permit) => {
            debug!(%peer, "connection admitted");
            permit
        }
        Err(refused) => {
            debug!(%peer, ?refused, "connection refused by a limit");
            refuse_connection(stream, refused.error()).await;
            return;
        }
    };
    let stats = node.services.stats.clone();
    if early_bytes.is_empty() {
        serve_http(
            CountingIo {
                inner: stream,
                stats,
            },
            peer,
            permit,
            node,
        )
        .await;
    } else {
        // Bytes read after the PROXY header are the start of the request: hyper reads them first.
        let (reader, writer) = stream.into_split();
        let stream = tokio::io::join(std::io::Cursor::new(early_bytes).chain(reader), writer);
        serve_http(
            CountingIo {
                inner: stream,
                stats,
            },
            peer,
            permit,
            node,
        )
        .await;
    }
}

/// True when `peer` is one of the configured trusted proxies (`--trusted-proxy`).
fn is_trusted_proxy(node: &Node, peer: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    node.services
        .lifetimes
        .settings
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&ip))
}

/// Makes the kernel drop a connection whose peer stops acknowledging (a half-open socket): TCP
/// keepalive probes on an idle one, and `TCP_USER_TIMEOUT` on one with unacknowledged data.
fn set_idle_timeout(stream: &TcpStream, timeout: Duration) {
    let socket = socket2::SockRef::from(stream);
    let probes = socket2::TcpKeepalive::new()
        .with_time(timeout / 2)
        .with_interval((timeout / 6).max(Duration::from_secs(1)))
        .with_retries(3);
    let _ = socket.set_tcp_keepalive(&probes);
    let _ = socket.set_tcp_user_timeout(Some(timeout));
}

/// Answers a connection over a limit with its error and closes it, holding it at most twice
/// [`REFUSAL_LINGER`]: the request head is read (so an HTTP client sees the answer, not a reset)
/// or waited for that long, the answer is written, and what else arrives is read and dropped
/// until the client closes or the linger passes.
async fn refuse_connection(mut stream: TcpStream, error: ClientError) {
    use tokio::io::AsyncWriteExt;
    let mut sink = [0u8; 1024];
    let mut head = Vec::new();
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&sink[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    let status = status(error.code);
    let body = pgpush_protocol::http_error_body(error.code, &error.reason);
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// A client socket that adds what is written to it to `pgpush_bytes_sent_total`.
struct CountingIo<I> {
    inner: I,
    stats: Arc<Stats>,
}

impl<I> CountingIo<I> {
    fn count(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.stats.bytes_out.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountingIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountingIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&written);
        written
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

/// Serves HTTP/1.1 (with upgrades) on one connection until it ends, the node drains, or the
/// connection is cut as a slow consumer.
async fn serve_http<I>(stream: I, peer: SocketAddr, permit: ConnectionPermit, node: Arc<Node>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(ConnInfo {
        peer,
        kill: CancellationToken::new(),
        _permit: Some(permit),
    });
    let service = {
        let node = node.clone();
        let conn = conn.clone();
        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            // One span per request up to its response head (for WebSocket: the upgrade).
            let span = tracing::debug_span!(
                "accept",
                method = %request.method(),
                path = request.uri().path(),
                peer = %conn.peer,
                subject = tracing::field::Empty,
            );
            route(node.clone(), conn.clone(), request).instrument(span)
        })
    };
    // Title-case header names: byte-exact with the original Perl server for old clients.
    let settings = &node.services.lifetimes.settings;
    let connection = http1::Builder::new()
        .title_case_headers(true)
        .timer(TokioTimer::new())
        .header_read_timeout(settings.handshake_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = node.services.lifetimes.shutdown.cancelled() => {
            // Finish the request in flight (streams end on the same token), then close.
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(settings.drain_window + settings.shutdown_timeout, connection.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
        _ = conn.kill.cancelled() => {
            tokio::time::timeout(KILL_GRACE, connection.as_mut()).await.unwrap_or(Ok(()))
        }
    };
    if let Err(error) = result {
        // Clients hanging up mid-request are routine, not server errors.
        debug!(%error, %peer, "connection ended with an error");
    }
}
