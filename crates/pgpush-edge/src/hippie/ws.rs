//! `<prefix>/ws/<channel>`: Hippie over WebSocket, JSON frames both ways.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel, Message,
    hippie::{error_message, ping_message, set_client_id_message},
};

use crate::{
    Node,
    hippie::{
        CreatedOver, HippieResult, RequestInfo, check_origin, checked_client_id, epoch_seconds,
        new_client_id, publish, refuse,
    },
    http::ConnInfo,
    limits::Bucket,
    stats::Transport,
    transport::websocket::{self, Beats, End, Expiry, Interrupt, WsIo, WsProtocol},
};

pub(crate) fn upgrade(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
    channel: Channel,
    info: RequestInfo,
) -> HippieResult {
    let Some(hippie) = node.hippie.as_ref() else {
        return Err(refuse(StatusCode::NOT_FOUND, "Not found"));
    };
    check_origin(hippie, request.headers())?;
    let accept = match websocket::accept_key(request.headers()) {
        Ok(accept) => accept,
        Err(error) => return Err(refuse(StatusCode::BAD_REQUEST, error.reason)),
    };
    let client_id = match info.client_id.clone() {
        Some(id) => match checked_client_id(&id) {
            Ok(()) => id,
            Err(refused) => return Err(refused),
        },
        None => new_client_id(),
    };
    let task_node = node.clone();
    Ok(websocket::upgrade(
        &node,
        conn.clone(),
        &mut request,
        accept,
        move |io| run(task_node, conn, io, channel, client_id, info),
    ))
}

async fn run(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    mut io: WsIo,
    channel: Channel,
    client_id: String,
    info: RequestInfo,
) {
    let Some(hippie) = node.hippie.as_ref() else {
        return;
    };
    let _guard = node.stats.connection(Transport::WebSocket);
    let attachment = match hippie
        .open_queue(&node, &channel, &client_id, &info, CreatedOver::WebSocket)
        .await
    {
        Ok(attachment) => attachment,
        Err(error) => {
            let interrupt = Interrupt {
                drain: node.drain.slot(),
                kill: &conn.kill,
                superseded: None,
                expiry: &Expiry::default(),
            };
            let _ = io
                .send_text(
                    error_message(error.code().as_str(), &error.to_string()),
                    &interrupt,
                )
                .await;
            io.close(
                tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Again,
                "unavailable",
            )
            .await;
            return;
        }
    };
    let mut reader = attachment.read(conn.kill.clone(), true).await;
    attachment.take_fresh();
    let expiry = Expiry::at(info.grant.expires());
    let interrupt = Interrupt {
        drain: node.drain.slot(),
        kill: &conn.kill,
        superseded: Some(attachment.superseded()),
        expiry: &expiry,
    };
    // set_client_id first (on every resume, so the client's reconnect backoff resets), then
    // what was queued while the client was away, then any overflow it missed.
    let mut first = vec![set_client_id_message(attachment.client_id())];
    first.extend(reader.drain().iter().map(|m| HippieWs::frame(m)));
    first.extend(reader.notices());
    let count = first.len();
    let mut end = io.write_texts(first.into_iter(), &interrupt).await;
    if end.is_ok() {
        node.stats.delivered(count - 1);
        let mut protocol = HippieWs {
            publishes: node.limits.connection_publishes(),
            node: node.clone(),
            channel,
            info,
        };
        end = Err(websocket::serve(
            &mut io,
            reader.inbox(),
            &node.stats,
            &mut protocol,
            &interrupt,
            Beats {
                ping: node.heartbeat.subscribe(),
                ping_interval: node.config.ping_interval,
                keepalive: Some(node.hippie_keepalive.subscribe()),
            },
        )
        .await);
    }
    drop(reader);
    drop(attachment);
    if let Err(End::Close(code, reason)) = end {
        io.close(code, reason).await;
    }
}

struct HippieWs {
    node: Arc<Node>,
    channel: Channel,
    info: RequestInfo,
    /// This connection's publish rate.
    publishes: Bucket,
}

impl WsProtocol for HippieWs {
    fn frame(message: &Message) -> Bytes {
        message.hippie_json().clone()
    }

    /// Every frame is published on the URL's channel, stamped with `time` and `address`; it
    /// comes back to this client through PostgreSQL like to everyone else.
    async fn on_text(
        &mut self,
        io: &mut WsIo,
        text: &str,
        interrupt: &Interrupt<'_>,
    ) -> Result<(), End> {
        let published = match self.node.limits.publish_on(&mut self.publishes) {
            Ok(()) => publish::stamp_and_publish(&self.node, &self.info, &self.channel, text).await,
            Err(error) => Err(error),
        };
        match published {
            Ok(()) => Ok(()),
            Err(error) => {
                io.send_text(error_message(error.code.as_str(), &error.reason), interrupt)
                    .await
            }
        }
    }

    fn binary_refused(&self) -> Bytes {
        error_message(
            "bad_frame",
            "binary frames are not supported; send JSON text frames",
        )
    }

    fn keepalive(&self) -> Option<Bytes> {
        Some(ping_message(epoch_seconds()))
    }
}
