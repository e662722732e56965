//! `/v1/sse`: Server-Sent Events, a streaming body that drains the subscriber's queue in batches.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pgpush_protocol::{ErrorCode, Message, ServerFrame, sse};
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{
    Node,
    http::{ApiError, Body, ConnInfo, query_channels, query_pairs},
    hub::{Inbox, Session},
    stats::{ConnectionGuard, Transport},
};

/// Most messages concatenated into one body chunk.
const BATCH: usize = 256;
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
    let (outbox, inbox) = node.hub.outbox(conn.kill.clone());
    let mut session = Session::new(node.hub.clone(), outbox);
    session
        .subscribe(&channels, node.config.subscribe_timeout)
        .await
        .map_err(|error| ApiError::new(ErrorCode::Unavailable, error.to_string()))?;
    let mut first = Vec::new();
    let subscribed = ServerFrame::Subscribed {
        channels: &channels,
        cursor: None,
    }
    .encode();
    sse::write_event(&mut first, None, "subscribed", &subscribed);

    let body = SseBody {
        guard: node.stats.connection(Transport::Sse),
        keepalive: Box::pin(tokio::time::sleep(node.config.sse_keepalive)),
        shutdown: Box::pin(node.shutdown.clone().cancelled_owned()),
        kill: Box::pin(conn.kill.clone().cancelled_owned()),
        pending: Some(Bytes::from(first)),
        node,
        inbox,
        _session: session,
        batch: Vec::new(),
        finished: false,
    };
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

struct SseBody {
    node: Arc<Node>,
    inbox: Inbox,
    _session: Session,
    guard: ConnectionGuard,
    keepalive: Pin<Box<Sleep>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
    pending: Option<Bytes>,
    batch: Vec<Arc<Message>>,
    finished: bool,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let _ = &this.guard;
        if let Some(first) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            this.finished = true;
            let mut last = sse::retry(RETRY_MILLIS);
            last.extend_from_slice(&sse::comment("server shutting down; reconnect"));
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(last)))));
        }
        if this.kill.as_mut().poll(cx).is_ready() {
            this.finished = true;
            let error = ServerFrame::Error {
                code: ErrorCode::SlowConsumer.as_str(),
                reason: "queue overflowed; reconnect",
                reference: None,
            }
            .encode();
            let mut last = Vec::new();
            sse::write_event(&mut last, None, "error", &error);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(last)))));
        }
        match this.inbox.poll_recv_many(cx, &mut this.batch, BATCH) {
            Poll::Ready(0) => {
                this.finished = true;
                return Poll::Ready(None);
            }
            Poll::Ready(count) => {
                let chunk = concat(&this.batch);
                this.batch.clear();
                this.node.stats.delivered(count);
                reset_keepalive(&mut this.keepalive, this.node.config.sse_keepalive);
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            Poll::Pending => {}
        }
        if this.keepalive.as_mut().poll(cx).is_ready() {
            reset_keepalive(&mut this.keepalive, this.node.config.sse_keepalive);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(sse::comment(
                "keepalive",
            ))))));
        }
        Poll::Pending
    }
}

fn reset_keepalive(sleep: &mut Pin<Box<Sleep>>, every: std::time::Duration) {
    sleep.as_mut().reset(tokio::time::Instant::now() + every);
}

/// One body chunk for a batch: the shared encoding itself for one message, a copy for more.
fn concat(batch: &[Arc<Message>]) -> Bytes {
    if let [only] = batch {
        return only.sse_event().clone();
    }
    let total = batch.iter().map(|m| m.sse_event().len()).sum();
    let mut chunk = BytesMut::with_capacity(total);
    for message in batch {
        chunk.extend_from_slice(message.sse_event());
    }
    chunk.freeze()
}
