//! `/v1/ws`: the native WebSocket protocol (subscribe, unsubscribe, publish, ping frames).

use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel, ClientFrame, ErrorCode, Message, PublishMode, ServerFrame, parse_client_frame,
    raw_reference,
};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::{
    Node,
    http::{ApiError, Body, ConnInfo, client_address, query_channels, query_pairs},
    hub::Session,
    limits::Bucket,
    policy::{Action, Grant},
    publish,
    resume::{self, ReplayBatch},
    stats::{PublishVia, Transport},
    transport::websocket::{self, Beats, End, Expiry, Interrupt, WsIo, WsProtocol},
};

/// Answers the WebSocket handshake; channels in the query are validated first (errors are plain
/// HTTP) and subscribed once the socket is handed over.
pub(crate) fn upgrade(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
    grant: Grant,
) -> Result<Response<Body>, ApiError> {
    let accept = websocket::accept_key(request.headers())?;
    let pairs = query_pairs(&request);
    let channels = query_channels(&node, &pairs, &grant)?;
    let address = client_address(
        conn.peer.ip(),
        request.headers(),
        &node.config.trusted_proxies,
    );
    let since = pairs
        .iter()
        .find(|(name, _)| name == "since")
        .map(|(_, value)| value.to_string());
    if let Some(since) = &since {
        node.durable.check_cursor(since)?;
    }
    drop(pairs);
    let task_node = node.clone();
    let client = Client { grant, address };
    Ok(websocket::upgrade(
        &node,
        conn.clone(),
        &mut request,
        accept,
        move |io| run(task_node, conn, io, channels, since, client),
    ))
}

/// Who is on the other end of a connection: what it may do, and from where.
struct Client {
    grant: Grant,
    address: IpAddr,
}

async fn run(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    mut io: WsIo,
    channels: Vec<Channel>,
    since: Option<String>,
    client: Client,
) {
    let _guard = node.stats.connection(Transport::WebSocket);
    let (outbox, mut inbox) = node.hub.outbox(Some(conn.kill.clone()));
    let expiry = Expiry::at(client.grant.expires());
    let mut protocol = Native {
        node: node.clone(),
        session: Session::new(node.hub.clone(), outbox),
        publishes: node.limits.connection_publishes(),
        client,
    };
    let interrupt = Interrupt {
        drain: node.drain.slot(),
        kill: &conn.kill,
        superseded: None,
        expiry: &expiry,
    };
    let mut end = Ok(());
    if !channels.is_empty() {
        // Boxed for the same reason as client frames: it happens once, and is large.
        end = Box::pin(protocol.subscribe(&mut io, channels, since, None, &interrupt)).await;
    }
    let end = match end {
        Ok(()) => {
            websocket::serve(
                &mut io,
                &mut inbox,
                &node.stats,
                &mut protocol,
                &interrupt,
                Beats {
                    ping: node.heartbeat.subscribe(),
                    ping_interval: node.config.ping_interval,
                    keepalive: None,
                },
            )
            .await
        }
        Err(end) => end,
    };
    if let End::Close(code, reason) = end {
        io.close(code, reason).await;
    }
}

struct Native {
    node: Arc<Node>,
    session: Session,
    client: Client,
    /// This connection's publish rate.
    publishes: Bucket,
}

impl WsProtocol for Native {
    fn frame(message: &Message) -> Bytes {
        message.websocket_text().clone()
    }

    async fn on_text(
        &mut self,
        io: &mut WsIo,
        text: &str,
        interrupt: &Interrupt<'_>,
    ) -> Result<(), End> {
        let parsed = match parse_client_frame(text) {
            Ok(parsed) => parsed,
            Err(error) => {
                return send_error(
                    io,
                    error.code,
                    &error.reason,
                    error.reference.as_deref(),
                    interrupt,
                )
                .await;
            }
        };
        let reference = parsed.reference;
        match parsed.frame {
            ClientFrame::Subscribe { channels, since } => {
                self.subscribe(io, channels, since, reference, interrupt)
                    .await
            }
            ClientFrame::Unsubscribe { channels } => {
                self.session.unsubscribe(&channels);
                io.send_text(
                    ServerFrame::Unsubscribed {
                        channels: &channels,
                    }
                    .encode(),
                    interrupt,
                )
                .await
            }
            ClientFrame::Publish {
                channel,
                data,
                mode,
            } => {
                let mode = mode.unwrap_or(PublishMode::Durable);
                let published = match self.may_publish(&channel) {
                    Ok(()) => publish::publish(&self.node, &channel, data, mode, None, None).await,
                    Err(error) => Err(error),
                };
                self.node.stats.count_publish(
                    PublishVia::WebSocket,
                    Some(mode),
                    &published.as_ref().map_err(|e| e.code),
                );
                match published {
                    Ok(cursor) => {
                        let reference = raw_reference(reference);
                        let ack = ServerFrame::Ack {
                            reference: reference.as_deref(),
                            cursor: cursor.as_deref(),
                        };
                        io.send_text(ack.encode(), interrupt).await
                    }
                    Err(error) => {
                        send_error(io, error.code, &error.reason, reference, interrupt).await
                    }
                }
            }
            ClientFrame::Auth { token } => match self.reauthorize(&token) {
                Ok(()) => {
                    interrupt.expiry.set(self.client.grant.expires());
                    let reference = raw_reference(reference);
                    let ack = ServerFrame::Ack {
                        reference: reference.as_deref(),
                        cursor: None,
                    };
                    io.send_text(ack.encode(), interrupt).await
                }
                Err(error) => send_error(io, error.code, &error.reason, reference, interrupt).await,
            },
            ClientFrame::Ping => {
                let reference = raw_reference(reference);
                io.send_text(
                    ServerFrame::Pong {
                        reference: reference.as_deref(),
                    }
                    .encode(),
                    interrupt,
                )
                .await
            }
        }
    }

    fn binary_refused(&self) -> Bytes {
        error_frame(
            ErrorCode::BadFrame,
            "binary frames are not supported; send JSON text frames",
            None,
        )
    }
}

impl Native {
    /// Replaces the connection's grant with a fresh token's, which must allow every channel the
    /// connection is subscribed to; on any error the old grant stays.
    fn reauthorize(&mut self, token: &str) -> Result<(), ApiError> {
        let grant = self.node.admission.reauthorize(token)?;
        for channel in self.session.channels() {
            grant.check(Action::Subscribe, channel)?;
        }
        self.client.grant = grant;
        Ok(())
    }

    /// Checks the channel against the grant, then this connection's and its address's rates.
    fn may_publish(&mut self, channel: &Channel) -> Result<(), ApiError> {
        self.client.grant.check(Action::Publish, channel)?;
        self.node.limits.publish_on(&mut self.publishes)?;
        self.node.limits.publish_from(self.client.address)
    }

    /// Subscribes (replaying after `since`), sends the replay and then `subscribed` with the
    /// connection's cursor; live messages queued meanwhile follow.
    async fn subscribe(
        &mut self,
        io: &mut WsIo,
        channels: Vec<Channel>,
        since: Option<String>,
        reference: Option<&str>,
        interrupt: &Interrupt<'_>,
    ) -> Result<(), End> {
        let allowed = channels
            .iter()
            .try_for_each(|c| self.client.grant.check(Action::Subscribe, c))
            .and_then(|()| {
                crate::http::check_subscription_count(
                    &self.node,
                    self.session.channels().count(),
                    channels
                        .iter()
                        .filter(|c| !self.session.channels().any(|s| s == *c))
                        .count(),
                )
            });
        if let Err(error) = allowed {
            return send_error(io, error.code, &error.reason, reference, interrupt).await;
        }
        let resumed =
            match resume::subscribe(&self.node, &mut self.session, &channels, since.as_deref())
                .await
            {
                Ok(resumed) => resumed,
                Err(error) => {
                    return send_error(io, error.code, &error.reason, reference, interrupt).await;
                }
            };
        let cursor = resumed.cursor(&self.node.durable);
        let batches = resume::batches(self.node.durable.clone(), channels.clone(), resumed.replay);
        let mut batches = std::pin::pin!(batches);
        while let Some(batch) = batches.next().await {
            match batch {
                Ok(ReplayBatch::Messages(messages)) => {
                    io.write_texts(
                        messages.iter().map(|m| m.websocket_text().clone()),
                        interrupt,
                    )
                    .await?;
                    self.node.stats.delivered(messages.len());
                }
                Ok(ReplayBatch::Reset(reason)) => {
                    self.node.stats.count_resets(reason, 1);
                    let reset = ServerFrame::Reset {
                        reason: reason.as_str(),
                        cursor: None,
                    };
                    io.send_text(reset.encode(), interrupt).await?;
                }
                Err(error) => {
                    // Live messages after the replay are queued already: continuing would leave
                    // a gap. Tell the client, and let it come back with its last cursor.
                    send_error(io, error.code, &error.reason, reference, interrupt).await?;
                    return Err(End::Close(
                        CloseCode::Again,
                        "replay failed; reconnect with your cursor",
                    ));
                }
            }
        }
        let subscribed = ServerFrame::Subscribed {
            channels: &channels,
            cursor: cursor.as_deref(),
        };
        io.send_text(subscribed.encode(), interrupt).await
    }
}

fn error_frame(code: ErrorCode, reason: &str, reference: Option<&str>) -> Bytes {
    let reference = raw_reference(reference);
    ServerFrame::Error {
        code: code.as_str(),
        reason,
        reference: reference.as_deref(),
    }
    .encode()
}

async fn send_error(
    io: &mut WsIo,
    code: ErrorCode,
    reason: &str,
    reference: Option<&str>,
    interrupt: &Interrupt<'_>,
) -> Result<(), End> {
    io.send_text(error_frame(code, reason, reference), interrupt)
        .await
}
