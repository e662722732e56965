//! `/v1/ws`: the native WebSocket protocol (subscribe, unsubscribe, publish, ping frames).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel, ClientFrame, ErrorCode, Message, PublishMode, ServerFrame, parse_client_frame,
    raw_reference,
};

use crate::{
    Node,
    http::{ApiError, Body, ConnInfo, query_channels, query_pairs},
    hub::Session,
    policy, publish,
    stats::Transport,
    transport::websocket::{self, End, Interrupt, WsIo, WsProtocol},
};

/// Answers the WebSocket handshake; channels in the query are validated first (errors are plain
/// HTTP) and subscribed once the socket is handed over.
pub(crate) fn upgrade(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let accept = websocket::accept_key(request.headers())?;
    let channels = query_channels(&query_pairs(&request))?;
    let task_node = node.clone();
    Ok(websocket::upgrade(&node, &mut request, accept, move |io| {
        run(task_node, conn, io, channels)
    }))
}

async fn run(node: Arc<Node>, conn: Arc<ConnInfo>, mut io: WsIo, channels: Vec<Channel>) {
    let _guard = node.stats.connection(Transport::WebSocket);
    let (outbox, mut inbox) = node.hub.outbox(Some(conn.kill.clone()));
    let mut protocol = Native {
        node: node.clone(),
        session: Session::new(node.hub.clone(), outbox),
    };
    let interrupt = Interrupt {
        shutdown: &node.shutdown,
        kill: &conn.kill,
        superseded: None,
    };
    let mut end = Ok(());
    if !channels.is_empty() {
        end = protocol
            .subscribe(&mut io, channels, None, &interrupt)
            .await;
    }
    let end = match end {
        Ok(()) => {
            websocket::serve(
                &mut io,
                &mut inbox,
                &node.stats,
                &mut protocol,
                &interrupt,
                node.config.ping_interval,
                None,
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
            // Durable resume (`since`) arrives with the events table; ephemeral subscriptions have
            // nothing to replay.
            ClientFrame::Subscribe { channels, since: _ } => {
                self.subscribe(io, channels, reference, interrupt).await
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
                let published = match policy::check_client_access(&channel) {
                    Ok(()) => {
                        publish::publish(
                            &self.node,
                            &channel,
                            data,
                            mode.unwrap_or(PublishMode::Durable),
                        )
                        .await
                    }
                    Err(error) => Err(error),
                };
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
    async fn subscribe(
        &mut self,
        io: &mut WsIo,
        channels: Vec<Channel>,
        reference: Option<&str>,
        interrupt: &Interrupt<'_>,
    ) -> Result<(), End> {
        if let Some(error) = channels
            .iter()
            .find_map(|c| policy::check_client_access(c).err())
        {
            return send_error(io, error.code, &error.reason, reference, interrupt).await;
        }
        match self
            .session
            .subscribe(&channels, self.node.config.subscribe_timeout)
            .await
        {
            Ok(()) => {
                let subscribed = ServerFrame::Subscribed {
                    channels: &channels,
                    cursor: None,
                };
                io.send_text(subscribed.encode(), interrupt).await
            }
            Err(error) => {
                send_error(
                    io,
                    ErrorCode::Unavailable,
                    &error.to_string(),
                    reference,
                    interrupt,
                )
                .await
            }
        }
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
