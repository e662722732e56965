//! WebSocket plumbing shared by the native and Hippie protocols: handshake, batched writes that a
//! connection's end interrupts, close codes, and the connection loop.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use pgpush_protocol::{ErrorCode, Message as PushMessage};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        error::{CapacityError, Error as WsError},
        handshake::derive_accept_key,
        protocol::{
            CloseFrame, Role, WebSocketConfig,
            frame::{
                Frame,
                coding::{CloseCode, Data, OpCode},
            },
        },
    },
};
use tracing::debug;

use crate::{
    core::queue::Inbox,
    error::ClientError,
    http::{Body, ConnInfo, full},
    ops::stats::Stats,
    services::{Services, drain::Ticks},
    transport::ends::{Ending, Ends},
};

/// Most messages written per flush.
const BATCH: usize = 256;
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ended, and what to tell the client.
#[derive(Debug)]
pub(crate) enum End {
    /// The client closed or vanished; nothing to send.
    Gone,
    /// Send a close frame.
    Close(CloseCode, &'static str),
}

/// Close code for a connection whose token expired: reconnect with a fresh token.
pub(crate) const TOKEN_EXPIRED: u16 = 4001;
/// Close code for a connection whose user the operator disconnected: do not reconnect with the
/// same token.
pub(crate) const DISCONNECTED: u16 = 4002;
/// Close code for a connection whose token the operator revoked: it is refused everywhere.
pub(crate) const REVOKED: u16 = 4003;

impl From<Ending> for End {
    /// The close frame that tells the client why, and how to come back.
    fn from(ending: Ending) -> End {
        match ending {
            Ending::Draining => End::Close(
                CloseCode::Restart,
                "node draining; reconnect with your cursor",
            ),
            Ending::SlowConsumer => End::Close(
                CloseCode::Again,
                "slow consumer: queue overflowed; reconnect",
            ),
            Ending::Superseded => End::Close(
                CloseCode::Normal,
                "another connection took over this client_id",
            ),
            Ending::TokenExpired => End::Close(
                CloseCode::from(TOKEN_EXPIRED),
                "token expired; reconnect with a fresh token",
            ),
            Ending::Disconnected => End::Close(
                CloseCode::from(DISCONNECTED),
                "disconnected by the server; do not reconnect with this token",
            ),
            Ending::Revoked => End::Close(CloseCode::from(REVOKED), "token revoked"),
        }
    }
}

/// The WebSocket settings: a small read buffer (clients send little; idle connections cost
/// little memory), an inbound message cap, and a write buffer that coalesces a batch into few
/// syscalls.
fn websocket_config(max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(16 * 1024 + max.max(8 << 20) * 2)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Checks an RFC 6455 upgrade request and derives `Sec-WebSocket-Accept`.
pub(crate) fn accept_key(headers: &HeaderMap) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::new(ErrorCode::BadRequest, reason);
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or("")
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(bad("expected a WebSocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(bad("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad("Sec-WebSocket-Key is missing"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Answers `101 Switching Protocols` and runs `serve` on the socket once hyper hands it over.
/// Call only after [`accept_key`] succeeded.
pub(crate) fn upgrade<F, Fut>(
    services: &Services,
    conn: Arc<ConnInfo>,
    request: &mut Request<Incoming>,
    accept: String,
    serve: F,
) -> Response<Body>
where
    F: FnOnce(WsIo) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on_upgrade = hyper::upgrade::on(request);
    let config = websocket_config(services.lifetimes.settings.max_message_bytes);
    // The socket's connection permit lives as long as the WebSocket, not just its handshake.
    services.lifetimes.tracker.spawn(async move {
        let _connection = conn;
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                serve(WsIo::new(socket)).await;
            }
            Err(error) => debug!(%error, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// An accepted WebSocket.
pub(crate) struct WsIo {
    socket: WebSocketStream<TokioIo<Upgraded>>,
}

impl WsIo {
    fn new(socket: WebSocketStream<TokioIo<Upgraded>>) -> WsIo {
        WsIo { socket }
    }

    /// Writes text frames with one flush; abandoned with [`End`] when the connection ends first.
    pub(crate) async fn write_texts(
        &mut self,
        texts: impl Iterator<Item = Bytes>,
        ends: &Ends,
    ) -> Result<(), End> {
        let socket = &mut self.socket;
        let write = async {
            for text in texts {
                socket.feed(text_frame(text)).await?;
            }
            socket.flush().await
        };
        tokio::select! {
            result = write => result.map_err(|error| {
                debug!(%error, "websocket write failed");
                End::Gone
            }),
            ending = ends.wait() => Err(ending.into()),
        }
    }

    /// Sends one text frame.
    pub(crate) async fn send_text(&mut self, text: Bytes, ends: &Ends) -> Result<(), End> {
        self.write_texts(std::iter::once(text), ends).await
    }

    /// Sends a close frame (bounded in time), then waits briefly for the client's close.
    pub(crate) async fn close(&mut self, code: CloseCode, reason: &'static str) {
        Box::pin(self.close_inline(code, reason)).await
    }

    async fn close_inline(&mut self, code: CloseCode, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let sent =
            tokio::time::timeout(CLOSE_TIMEOUT, self.socket.send(Message::Close(Some(frame))))
                .await;
        if matches!(sent, Ok(Ok(()))) {
            let drain = async { while let Some(Ok(_)) = self.socket.next().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
    }
}

/// What distinguishes one WebSocket protocol from another.
pub(crate) trait WsProtocol {
    /// The frame for a queued message.
    fn frame(message: &PushMessage) -> Bytes;

    /// Handles a text frame from the client.
    async fn on_text(&mut self, io: &mut WsIo, text: &str, ends: &Ends) -> Result<(), End>;

    /// The reply to a binary frame (the protocols speak JSON text only).
    fn binary_refused(&self) -> Bytes;

    /// An application-level keepalive sent every `keepalive` interval, if any.
    fn keepalive(&self) -> Option<Bytes> {
        None
    }
}

/// Serves one connection until it ends: drains the queue in batches, reads client frames,
/// pings on every `ping` tick (closing a client silent for two `ping_interval`s), sends the
/// protocol's keepalive on every `keepalive` tick.
pub(crate) async fn serve<P: WsProtocol>(
    io: &mut WsIo,
    inbox: &mut Inbox,
    stats: &Stats,
    protocol: &mut P,
    ends: &Ends,
    beats: Beats,
) -> End {
    let Beats {
        mut ping,
        ping_interval,
        mut keepalive,
    } = beats;
    let mut last_heard = Instant::now();
    let mut batch = Vec::new();
    loop {
        let step = tokio::select! {
            biased;
            ending = ends.wait() => Err(ending.into()),
            received = inbox.recv_many(&mut batch, BATCH) => {
                if received == 0 {
                    Err(End::Gone)
                } else {
                    let count = batch.len();
                    let result = io.write_texts(batch.drain(..).map(|m| P::frame(&m)), ends).await;
                    batch.clear();
                    if result.is_ok() {
                        stats.delivered(count);
                    }
                    result
                }
            }
            incoming = io.socket.next() => match incoming {
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    match message {
                        // Boxed: a client frame is rare next to an idle connection, and this
                        // future (publish, subscribe and replay) is large; inline, every idle
                        // connection would carry its space.
                        Message::Text(text) => Box::pin(protocol.on_text(io, text.as_str(), ends)).await,
                        Message::Binary(_) => {
                            let reply = protocol.binary_refused();
                            io.send_text(reply, ends).await
                        }
                        // tungstenite queued the pong; send it now rather than with the next message.
                        Message::Ping(_) => io.socket.flush().await.map_err(|_| End::Gone),
                        // tungstenite answers a close; the stream ends on the next read.
                        Message::Pong(_) | Message::Frame(_) | Message::Close(_) => Ok(()),
                    }
                }
                Some(Err(error)) => Err(read_error(error)),
                None => Err(End::Gone),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_interval * 2 {
                    Err(End::Close(CloseCode::Away, "no pong for two ping intervals"))
                } else {
                    io.socket.send(Message::Ping(Bytes::new())).await.map_err(|_| End::Gone)
                }
            }
            _ = tick(&mut keepalive) => {
                match protocol.keepalive() {
                    Some(frame) => io.send_text(frame, ends).await,
                    None => Ok(()),
                }
            }
        };
        if let Err(end) = step {
            return end;
        }
    }
}

/// The heartbeats a connection follows.
pub(crate) struct Beats {
    /// Ping the client on each tick.
    pub(crate) ping: Ticks,
    /// The ping period: a client silent for two is gone.
    pub(crate) ping_interval: Duration,
    /// Send the protocol's keepalive message on each tick.
    pub(crate) keepalive: Option<Ticks>,
}

/// The next tick of an optional heartbeat; never completes when there is none.
async fn tick(ticks: &mut Option<Ticks>) {
    match ticks {
        Some(ticks) => ticks.tick().await,
        None => std::future::pending().await,
    }
}

/// A text frame around bytes we encoded ourselves (valid UTF-8 JSON): wrapping them in a raw
/// frame skips tungstenite's re-validation and shares one encoding across subscribers.
fn text_frame(bytes: Bytes) -> Message {
    Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
}

fn read_error(error: WsError) -> End {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            End::Close(CloseCode::Size, "message too big")
        }
        WsError::Utf8(_) => End::Close(CloseCode::Invalid, "text frame is not UTF-8"),
        WsError::Protocol(_) => End::Close(CloseCode::Protocol, "protocol error"),
        other => {
            debug!(error = %other, "websocket read failed");
            End::Gone
        }
    }
}
