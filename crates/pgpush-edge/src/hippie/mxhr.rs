//! `<prefix>/mxhr/<channel>`: Hippie's endless `multipart/mixed` stream, LF-only, exact bytes.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;
use pgpush_protocol::{
    Channel, Message,
    hippie::{error_message, mxhr_part, mxhr_preamble, ping_message, set_client_id_message},
};

use crate::{
    hippie::{
        CreatedOver, Hippie, HippieResult, RequestInfo, checked_client_id, epoch_seconds,
        new_client_id, no_cache,
    },
    http::ConnInfo,
    ops::stats::Transport,
    transport::{
        ends::{Ending, Ends},
        stream_body::{StreamBody, StreamFormat},
    },
};

pub(crate) async fn open(
    hippie: Arc<Hippie>,
    conn: Arc<ConnInfo>,
    channel: Channel,
    info: RequestInfo,
) -> HippieResult {
    let services = &hippie.services;
    let client_id = match info.client_id.clone() {
        Some(id) => {
            checked_client_id(&id)?;
            id
        }
        None => new_client_id(),
    };
    let attachment = hippie
        .open_queue(&channel, &client_id, &info, CreatedOver::Stream)
        .await?;
    let mut reader = attachment.read(conn.kill.clone(), true).await;
    attachment.take_fresh();
    let boundary = hippie.boundary.clone();
    // The preamble, set_client_id (on every resume), what was queued, any overflow missed.
    let mut first = vec![
        mxhr_preamble(&boundary),
        mxhr_part(&set_client_id_message(attachment.client_id()), &boundary),
    ];
    let queued = reader.drain();
    services.stats.delivered(queued.len());
    first.extend(queued.iter().map(|m| m.mxhr_part(&boundary).clone()));
    first.extend(
        reader
            .notices()
            .iter()
            .map(|notice| mxhr_part(notice, &boundary)),
    );
    let ends =
        Ends::new(services, &conn, info.grant.expires()).or_superseded(attachment.superseded());
    let guard = services.stats.connection(Transport::Mxhr);
    let body = StreamBody::new(
        MxhrFormat {
            boundary: boundary.clone(),
        },
        Box::new(reader),
        Box::new((attachment, guard)),
        services.stats.clone(),
        ends,
    )
    .starting_with(first)
    .keepalive(hippie.keepalive.subscribe());
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&format!("multipart/mixed; boundary=\"{boundary}\"")) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    no_cache(headers);
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct MxhrFormat {
    boundary: String,
}

impl StreamFormat for MxhrFormat {
    /// One chunk per message, each the message's shared part.
    fn encode(&self, batch: &[Arc<Message>], out: &mut VecDeque<Bytes>) {
        out.extend(batch.iter().map(|m| m.mxhr_part(&self.boundary).clone()));
    }

    fn keepalive(&self) -> Bytes {
        mxhr_part(&ping_message(epoch_seconds()), &self.boundary)
    }

    /// The original never closes the stream: on shutdown it just ends and the client
    /// reconnects. Only a slow client is told why.
    fn last_words(&self, ending: Ending) -> Option<Bytes> {
        match ending {
            Ending::SlowConsumer => Some(mxhr_part(
                &error_message(
                    "slow_consumer",
                    "queue overflowed; reconnect with your client_id",
                ),
                &self.boundary,
            )),
            Ending::Draining
            | Ending::Superseded
            | Ending::TokenExpired
            | Ending::Disconnected
            | Ending::Revoked => None,
        }
    }
}
