//! `/v1/sse`: Server-Sent Events, one `message` event per message, batched into body chunks.

use std::{collections::VecDeque, sync::Arc};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pgpush_protocol::{ErrorCode, Message, ServerFrame, sse};

use crate::{
    Node,
    http::{ApiError, Body, ConnInfo, query_channels, query_pairs},
    hub::Session,
    stats::Transport,
    transport::stream_body::{StreamBody, StreamEnds, StreamFormat},
};

/// What a browser waits before reconnecting when the server ends a stream on shutdown.
const RETRY_MILLIS: u64 = 1000;

/// Subscribes to the query's channels, then answers with an endless event stream whose first
/// event, `subscribed`, says the subscription is live.
pub(crate) async fn open(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let channels = query_channels(&query_pairs(&request))?;
    if channels.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "subscribe to at least one channel: /v1/sse?channel=<name>",
        ));
    }
    let (outbox, inbox) = node.hub.outbox(Some(conn.kill.clone()));
    let mut session = Session::new(node.hub.clone(), outbox);
    session
        .subscribe(&channels, node.config.subscribe_timeout)
        .await
        .map_err(|error| ApiError::new(ErrorCode::Unavailable, error.to_string()))?;
    let subscribed = ServerFrame::Subscribed {
        channels: &channels,
        cursor: None,
    }
    .encode();
    let mut first = Vec::new();
    sse::write_event(&mut first, None, "subscribed", &subscribed);

    let guard = node.stats.connection(Transport::Sse);
    let body = StreamBody::new(
        SseFormat,
        Box::new(inbox),
        Box::new((session, guard)),
        node.stats.clone(),
        vec![Bytes::from(first)],
        Some(node.config.sse_keepalive),
        StreamEnds {
            shutdown: node.shutdown.clone(),
            kill: conn.kill.clone(),
            superseded: None,
        },
    );
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx not to buffer the stream even where the proxy config forgot to.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct SseFormat;

impl StreamFormat for SseFormat {
    /// One chunk per batch: the shared encoding itself for one message, a copy for more.
    fn encode(&self, batch: &[Arc<Message>], out: &mut VecDeque<Bytes>) {
        if let [only] = batch {
            out.push_back(only.sse_event().clone());
            return;
        }
        let total = batch.iter().map(|m| m.sse_event().len()).sum();
        let mut chunk = BytesMut::with_capacity(total);
        for message in batch {
            chunk.extend_from_slice(message.sse_event());
        }
        out.push_back(chunk.freeze());
    }

    fn keepalive(&self) -> Bytes {
        Bytes::from(sse::comment("keepalive"))
    }

    fn shutdown(&self) -> Option<Bytes> {
        let mut last = sse::retry(RETRY_MILLIS);
        last.extend_from_slice(&sse::comment("server shutting down; reconnect"));
        Some(Bytes::from(last))
    }

    fn overflow(&self) -> Option<Bytes> {
        let error = ServerFrame::Error {
            code: ErrorCode::SlowConsumer.as_str(),
            reason: "queue overflowed; reconnect",
            reference: None,
        }
        .encode();
        let mut last = Vec::new();
        sse::write_event(&mut last, None, "error", &error);
        Some(Bytes::from(last))
    }
}
