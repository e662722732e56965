//! `<prefix>/ws/<channel>`: Hippie over WebSocket, JSON frames both ways.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel, ErrorCode, Message,
    hippie::{ping_message, set_client_id_message},
};

use crate::{
    admission::limits::Bucket,
    error::ClientError,
    hippie::{
        CreatedOver, Hippie, HippieResult, RequestInfo, check_origin, checked_client_id,
        epoch_seconds, error_text, new_client_id, publish,
    },
    http::ConnInfo,
    ops::stats::Transport,
    transport::{
        ends::Ends,
        websocket::{self, Beats, End, WsIo, WsProtocol},
    },
};

pub(crate) fn upgrade(
    hippie: Arc<Hippie>,
    conn: Arc<ConnInfo>,
    mut request: Request<Incoming>,
    channel: Channel,
    info: RequestInfo,
) -> HippieResult {
    check_origin(&hippie, request.headers())?;
    let accept = websocket::accept_key(request.headers())?;
    let client_id = match info.client_id.clone() {
        Some(id) => {
            checked_client_id(&id)?;
            id
        }
        None => new_client_id(),
    };
    let services = hippie.services.clone();
    Ok(websocket::upgrade(
        &services,
        conn.clone(),
        &mut request,
        accept,
        move |io| run(hippie, conn, io, channel, client_id, info),
    ))
}

async fn run(
    hippie: Arc<Hippie>,
    conn: Arc<ConnInfo>,
    mut io: WsIo,
    channel: Channel,
    client_id: String,
    info: RequestInfo,
) {
    let services = hippie.services.clone();
    let _guard = services.stats.connection(Transport::WebSocket);
    let ends = Ends::new(&services, &conn, None);
    let attachment = match hippie
        .open_queue(&channel, &client_id, &info, CreatedOver::WebSocket)
        .await
    {
        Ok(attachment) => attachment,
        Err(error) => {
            let _ = io.send_text(error_text(&error), &ends).await;
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
    let ends =
        Ends::new(&services, &conn, info.grant.expires()).or_superseded(attachment.superseded());
    // set_client_id first (on every resume, so the client's reconnect backoff resets), then
    // what was queued while the client was away, then any overflow it missed.
    let mut first = vec![set_client_id_message(attachment.client_id())];
    first.extend(reader.drain().iter().map(|m| HippieWs::frame(m)));
    first.extend(reader.notices());
    let count = first.len();
    let mut end = io.write_texts(first.into_iter(), &ends).await;
    if end.is_ok() {
        services.stats.delivered(count - 1);
        let mut protocol = HippieWs {
            publishes: services.limits.connection_publishes(),
            hippie: hippie.clone(),
            channel,
            info,
        };
        end = Err(websocket::serve(
            &mut io,
            reader.inbox(),
            &services.stats,
            &mut protocol,
            &ends,
            Beats {
                ping: services.lifetimes.ping.subscribe(),
                ping_interval: services.lifetimes.settings.ping_interval,
                keepalive: Some(hippie.keepalive.subscribe()),
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
    hippie: Arc<Hippie>,
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
    async fn on_text(&mut self, io: &mut WsIo, text: &str, ends: &Ends) -> Result<(), End> {
        let limits = &self.hippie.services.limits;
        let published = match limits.publish_on(&mut self.publishes) {
            Ok(()) => {
                publish::stamp_and_publish(&self.hippie, &self.info, &self.channel, text).await
            }
            Err(error) => Err(error),
        };
        match published {
            Ok(()) => Ok(()),
            Err(error) => io.send_text(error_text(&error), ends).await,
        }
    }

    fn binary_refused(&self) -> Bytes {
        error_text(&ClientError::new(
            ErrorCode::BadFrame,
            "binary frames are not supported; send JSON text frames",
        ))
    }

    fn keepalive(&self) -> Option<Bytes> {
        Some(ping_message(epoch_seconds()))
    }
}
