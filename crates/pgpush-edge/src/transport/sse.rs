//! `/v1/sse`: Server-Sent Events, one `message` event per message, batched into body chunks.

use std::{collections::VecDeque, sync::Arc};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pgpush_protocol::{ErrorCode, Message, ServerFrame, sse};

use futures_util::{StreamExt, stream};

use crate::{
    admission::policy::Grant,
    core::{
        replay::{self, ReplayBatch, Start},
        session::Session,
    },
    error::ClientError,
    http::{
        Body, ConnInfo, query_channels, query_filter, query_history, query_pairs, query_presence,
        query_value,
    },
    ops::stats::Transport,
    services::Services,
    transport::{
        be_present,
        ends::{Ending, Ends},
        stream_body::{StreamBody, StreamFormat},
    },
};

/// What a browser waits before reconnecting when the node drains: a random time up to this,
/// so reconnects spread over the other nodes.
const MAX_RETRY_MILLIS: u64 = 3000;

/// Subscribes to the query's channels, then answers with an endless event stream whose first
/// event, `subscribed`, says the subscription is live.
pub(crate) async fn open(
    services: Arc<Services>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
    grant: Grant,
) -> Result<Response<Body>, ClientError> {
    let pairs = query_pairs(&request);
    let channels = query_channels(&services.limits, &pairs, &grant)?;
    if channels.is_empty() {
        return Err(ClientError::new(
            ErrorCode::BadRequest,
            "subscribe to at least one channel: /v1/sse?channel=<name>",
        ));
    }
    // A browser reconnecting sends the last event id it saw; it overrides `since`. One that is
    // not a cursor's text is refused like any bad cursor, never ignored.
    let last_event_id = match request.headers().get("last-event-id") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ClientError::new(
                ErrorCode::BadCursor,
                "Last-Event-ID is not a cursor (not ASCII)",
            )
        })?),
    };
    let cursor = last_event_id
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| query_value(&pairs, "since"));
    let (outbox, inbox) = services.hub.outbox(Some(conn.kill.clone()));
    let mut session = Session::new(services.hub.clone(), outbox);
    let durable = &services.durable;
    let start = Start {
        since: cursor,
        history: query_history(&pairs)?,
        presence: query_presence(&pairs)?,
        filter: query_filter(&pairs)?,
    };
    let subscription = replay::subscribe(durable, &mut session, &channels, &start).await?;
    let presence_id = match start.presence {
        true => be_present(&services, &mut session, &grant, &channels),
        false => None,
    };
    let subscribed = ServerFrame::Subscribed {
        channels: &channels,
        cursor: durable.subscription_cursor(&subscription).as_deref(),
        presence_id: presence_id.as_deref(),
    }
    .encode();
    let mut subscribed_event = Vec::new();
    sse::write_event(&mut subscribed_event, None, "subscribed", &subscribed);

    // The replay, then `subscribed`, then the live queue.
    let stats = services.stats.clone();
    let prelude = replay::batches(
        durable.clone(),
        channels.clone(),
        subscription.replay,
        start.filter,
    )
    .map(move |batch| match batch {
        Ok(ReplayBatch::Messages { messages, .. }) => {
            stats.delivered(messages.len());
            let mut chunks = VecDeque::new();
            SseFormat.encode(&messages, &mut chunks);
            Ok(chunks.into_iter().next().unwrap_or_default())
        }
        Ok(ReplayBatch::Reset(reason)) => {
            stats.count_resets(reason, 1);
            let mut event = Vec::new();
            let reset = ServerFrame::Reset {
                reason: reason.as_str(),
                cursor: None,
            }
            .encode();
            sse::write_event(&mut event, None, "reset", &reset);
            Ok(Bytes::from(event))
        }
        // Live messages are queued behind the replay: end the stream rather than leave a
        // gap; the browser reconnects with its last event id.
        Err(error) => Err(error_event(&error)),
    })
    .chain(stream::once(
        async move { Ok(Bytes::from(subscribed_event)) },
    ));

    let guard = services.stats.connection(Transport::Sse);
    let control = services.control.register(session.outbox(), &grant);
    let ends = Ends::new(&services, &conn, grant.expires()).or_ordered(control.order());
    let body = StreamBody::new(
        SseFormat,
        Box::new(inbox),
        Box::new((session, guard, control)),
        services.stats.clone(),
        ends,
    )
    .after(Box::pin(prelude))
    .keepalive(services.lifetimes.sse_keepalive.subscribe());
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

/// `event: error` with the error frame as data: how an error reaches an SSE client.
fn error_event(error: &ClientError) -> Bytes {
    let frame = ServerFrame::Error {
        code: error.code.as_str(),
        reason: &error.reason,
        reference: None,
    }
    .encode();
    let mut event = Vec::new();
    sse::write_event(&mut event, None, "error", &frame);
    Bytes::from(event)
}

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

    fn last_words(&self, ending: Ending) -> Option<Bytes> {
        match ending {
            Ending::Draining => {
                let mut last = sse::retry(rand::random_range(250..=MAX_RETRY_MILLIS));
                last.extend_from_slice(&sse::comment(
                    "node draining; reconnect with Last-Event-ID",
                ));
                Some(Bytes::from(last))
            }
            Ending::SlowConsumer => Some(error_event(&ClientError::new(
                ErrorCode::SlowConsumer,
                "queue overflowed; reconnect",
            ))),
            Ending::TokenExpired => Some(error_event(&ClientError::new(
                ErrorCode::Unauthorized,
                "token expired; reconnect with a fresh token",
            ))),
            Ending::Disconnected => Some(error_event(&ClientError::new(
                ErrorCode::Disconnected,
                "disconnected by the server; do not reconnect with this token",
            ))),
            Ending::Revoked => Some(error_event(&ClientError::new(
                ErrorCode::Unauthorized,
                "the token has been revoked",
            ))),
            Ending::Superseded => None,
        }
    }
}
