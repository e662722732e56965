//! `/v1/ws`: the WebSocket transport, one task per connection reading frames and writing batches.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::{body::Incoming, upgrade::Upgraded};
use hyper_util::rt::TokioIo;
use pgpush_protocol::{
    Channel, ClientFrame, ErrorCode, Message as PushMessage, PublishMode, ServerFrame,
    parse_client_frame, raw_reference,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        error::{CapacityError, Error as WsError},
        handshake::derive_accept_key,
        protocol::{
            CloseFrame, Role,
            frame::{
                Frame,
                coding::{CloseCode, Data, OpCode},
            },
        },
    },
};
use tracing::debug;

use crate::{
    Node,
    http::{ApiError, Body, ConnInfo, full, query_channels, query_pairs},
    hub::{Inbox, Session},
    policy, publish,
    stats::Transport,
};

/// Most messages written per flush.
const BATCH: usize = 256;
/// How long a close frame may take to go out before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Answers the WebSocket handshake and starts the connection task once hyper hands over the
/// socket. Channels in the query are validated before the upgrade (errors are plain HTTP).
pub(crate) fn upgrade(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let accept_key = handshake_accept_key(request.headers())?;
    let channels = query_channels(&query_pairs(&request))?;
    let on_upgrade = hyper::upgrade::on(&mut request);
    node.tracker.clone().spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(node.websocket_config()),
                )
                .await;
                run(node, conn, socket, channels).await;
            }
            Err(error) => debug!(%error, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key).map_err(|_| bad_handshake("bad key"))?,
    );
    Ok(response)
}

/// Checks an RFC 6455 upgrade request and derives `Sec-WebSocket-Accept`.
pub(crate) fn handshake_accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
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
        return Err(bad_handshake("expected a WebSocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(bad_handshake("Sec-WebSocket-Version must be 13"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| bad_handshake("Sec-WebSocket-Key is missing"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

fn bad_handshake(reason: &str) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, reason)
}

/// Why a connection loop ended, and what to tell the client.
enum End {
    /// The client closed or vanished; nothing to send.
    Gone,
    /// Send a close frame.
    Close(CloseCode, &'static str),
}

struct Connection {
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    socket: Socket,
    session: Session,
    inbox: Inbox,
    batch: Vec<Arc<PushMessage>>,
    last_heard: Instant,
}

async fn run(node: Arc<Node>, conn: Arc<ConnInfo>, socket: Socket, channels: Vec<Channel>) {
    let _guard = node.stats.connection(Transport::WebSocket);
    let (outbox, inbox) = node.hub.outbox(conn.kill.clone());
    let session = Session::new(node.hub.clone(), outbox);
    let mut connection = Connection {
        node,
        conn,
        socket,
        session,
        inbox,
        batch: Vec::with_capacity(0),
        last_heard: Instant::now(),
    };
    let end = match connection.start(channels).await {
        Ok(()) => connection.serve().await,
        Err(end) => end,
    };
    if let End::Close(code, reason) = end {
        connection.close(code, reason).await;
    }
}

impl Connection {
    async fn start(&mut self, channels: Vec<Channel>) -> Result<(), End> {
        if !channels.is_empty() {
            self.subscribe(channels, None).await?;
        }
        Ok(())
    }

    async fn serve(&mut self) -> End {
        let ping_interval = self.node.config.ping_interval;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
        loop {
            let step = tokio::select! {
                biased;
                _ = self.node.shutdown.cancelled() => Err(End::Close(CloseCode::Away, "server shutting down")),
                _ = self.conn.kill.cancelled() => Err(slow_consumer()),
                received = self.inbox.recv_many(&mut self.batch, BATCH) => {
                    if received == 0 { Err(End::Gone) } else { self.write_batch().await }
                }
                incoming = self.socket.next() => match incoming {
                    Some(Ok(message)) => {
                        self.last_heard = Instant::now();
                        self.handle(message).await
                    }
                    Some(Err(error)) => Err(read_error(error)),
                    None => Err(End::Gone),
                },
                _ = ping.tick() => self.ping(ping_interval).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Writes the batch with one flush, abandoning it if the client is cut off or the node
    /// shuts down while the socket is blocked.
    async fn write_batch(&mut self) -> Result<(), End> {
        let count = self.batch.len();
        let socket = &mut self.socket;
        let batch = &mut self.batch;
        let write = async {
            for message in batch.drain(..) {
                socket
                    .feed(text_frame(message.websocket_text().clone()))
                    .await?;
            }
            socket.flush().await
        };
        let result = tokio::select! {
            result = write => result,
            _ = self.conn.kill.cancelled() => return Err(slow_consumer()),
            _ = self.node.shutdown.cancelled() => return Err(End::Close(CloseCode::Away, "server shutting down")),
        };
        self.batch.clear();
        match result {
            Ok(()) => {
                self.node.stats.delivered(count);
                Ok(())
            }
            Err(error) => {
                debug!(%error, "websocket write failed");
                Err(End::Gone)
            }
        }
    }

    async fn ping(&mut self, interval: Duration) -> Result<(), End> {
        if self.last_heard.elapsed() > interval * 2 {
            return Err(End::Close(
                CloseCode::Away,
                "no pong for two ping intervals",
            ));
        }
        self.send(Message::Ping(Bytes::new())).await
    }

    async fn handle(&mut self, message: Message) -> Result<(), End> {
        match message {
            Message::Text(text) => self.handle_text(text.as_str()).await,
            Message::Binary(_) => {
                self.send_error(
                    ErrorCode::BadFrame,
                    "binary frames are not supported; send JSON text frames",
                    None,
                )
                .await
            }
            // tungstenite queued the pong; send it now rather than with the next message.
            Message::Ping(_) => self.socket.flush().await.map_err(|_| End::Gone),
            Message::Pong(_) | Message::Frame(_) => Ok(()),
            // tungstenite answers the close; the stream ends on the next read.
            Message::Close(_) => Ok(()),
        }
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), End> {
        let parsed = match parse_client_frame(text) {
            Ok(parsed) => parsed,
            Err(error) => {
                return self
                    .send_error(error.code, &error.reason, error.reference.as_deref())
                    .await;
            }
        };
        let reference = parsed.reference;
        match parsed.frame {
            ClientFrame::Subscribe { channels, since: _ } => {
                // Durable resume (`since`) arrives with the events table; ephemeral
                // subscriptions have nothing to replay.
                self.subscribe(channels, reference).await
            }
            ClientFrame::Unsubscribe { channels } => {
                self.session.unsubscribe(&channels);
                self.send(control(ServerFrame::Unsubscribed {
                    channels: &channels,
                }))
                .await
            }
            ClientFrame::Publish {
                channel,
                data,
                mode,
            } => {
                let result = match policy::check_client_access(&channel) {
                    Ok(()) => {
                        let mode = mode.unwrap_or(PublishMode::Durable);
                        publish::publish(&self.node, &channel, data, mode).await
                    }
                    Err(error) => Err(error),
                };
                match result {
                    Ok(cursor) => {
                        let reference = raw_reference(reference);
                        self.send(control(ServerFrame::Ack {
                            reference: reference.as_deref(),
                            cursor: cursor.as_deref(),
                        }))
                        .await
                    }
                    Err(error) => self.send_error(error.code, &error.reason, reference).await,
                }
            }
            ClientFrame::Ping => {
                let reference = raw_reference(reference);
                self.send(control(ServerFrame::Pong {
                    reference: reference.as_deref(),
                }))
                .await
            }
        }
    }

    async fn subscribe(
        &mut self,
        channels: Vec<Channel>,
        reference: Option<&str>,
    ) -> Result<(), End> {
        if let Some(error) = channels
            .iter()
            .find_map(|c| policy::check_client_access(c).err())
        {
            return self.send_error(error.code, &error.reason, reference).await;
        }
        let timeout = self.node.config.subscribe_timeout;
        match self.session.subscribe(&channels, timeout).await {
            Ok(()) => {
                self.send(control(ServerFrame::Subscribed {
                    channels: &channels,
                    cursor: None,
                }))
                .await
            }
            Err(error) => {
                self.send_error(ErrorCode::Unavailable, &error.to_string(), reference)
                    .await
            }
        }
    }

    async fn send_error(
        &mut self,
        code: ErrorCode,
        reason: &str,
        reference: Option<&str>,
    ) -> Result<(), End> {
        let reference = raw_reference(reference);
        self.send(control(ServerFrame::Error {
            code: code.as_str(),
            reason,
            reference: reference.as_deref(),
        }))
        .await
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        let send = self.socket.send(message);
        tokio::select! {
            result = send => result.map_err(|_| End::Gone),
            _ = self.conn.kill.cancelled() => Err(slow_consumer()),
        }
    }

    /// Sends a close frame (bounded in time), then waits briefly for the client's close.
    async fn close(&mut self, code: CloseCode, reason: &'static str) {
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

fn text_frame(bytes: Bytes) -> Message {
    // The bytes are JSON we encoded ourselves, so valid UTF-8; wrapping them in a raw frame
    // skips tungstenite's re-validation and shares the encoding across subscribers.
    Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
}

fn control(frame: ServerFrame<'_>) -> Message {
    text_frame(frame.encode())
}

fn slow_consumer() -> End {
    End::Close(
        CloseCode::Again,
        "slow consumer: queue overflowed; reconnect",
    )
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
