//! `/v1/poll`: stateless long and interval polling with a cursor.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pgpush_protocol::{ErrorCode, Message, ResetReason, poll_reply};

use crate::{
    admission::policy::Grant,
    core::{
        replay::{self, ReplayBatch, Start},
        session::Session,
    },
    error::ClientError,
    http::{
        Body, ConnInfo, json, query_channels, query_filter, query_history, query_pairs,
        query_presence, query_value,
    },
    ops::stats::Transport,
    services::Services,
    transport::ends::Ends,
};

/// Longest hold, and the default.
const MAX_WAIT: Duration = Duration::from_secs(25);
/// Most messages one poll answers with.
const MAX_MESSAGES: usize = 1000;

/// `GET /v1/poll?channel=a&cursor=<c>&wait=<seconds>`: without a cursor, the current cursor at
/// once; with one, what came after it (from memory or the events table), or, when nothing did,
/// whatever arrives within `wait` seconds (`wait=0`: interval polling).
pub(crate) async fn poll(
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
            "poll at least one channel: /v1/poll?channel=<name>",
        ));
    }
    let value = |name: &str| query_value(&pairs, name);
    let wait = match value("wait") {
        None => MAX_WAIT,
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s).min(MAX_WAIT))
            .ok_or_else(|| {
                ClientError::new(
                    ErrorCode::BadRequest,
                    "wait must be a number of seconds from 0 to 25",
                )
            })?,
    };
    let cursor = value("cursor");
    let history = query_history(&pairs)?;
    let filter = query_filter(&pairs)?;
    if query_presence(&pairs)? {
        return Err(ClientError::new(
            ErrorCode::BadRequest,
            "presence needs a lasting connection (WebSocket or SSE); a poller reads GET /v1/presence",
        ));
    }
    // First poll: where to start from (a node that just started reads the head first), after
    // the channels' last `history` messages. Without durable channels (turned off, no schema
    // yet) there is no cursor: it is held like any poll.
    let durable = &services.durable;
    if cursor.is_none() && durable.wait_started(Duration::from_secs(5)).await {
        let head = durable.head();
        let messages = match (history, head) {
            (Some(limit), Some(head)) if limit > 0 => {
                durable
                    .last_of_channels(&channels, head, limit, filter.as_deref())
                    .await?
            }
            _ => Vec::new(),
        };
        let current = head.and_then(|head| durable.cursor(head));
        return Ok(reply(&messages, current.as_deref(), None));
    }
    let stats = &services.stats;
    let _guard = stats.connection(Transport::Poll);
    let (outbox, mut inbox) = services.hub.outbox(Some(conn.kill.clone()));
    let mut session = Session::new(services.hub.clone(), outbox);
    let start = Start {
        since: cursor,
        history: None,
        presence: false,
        filter: filter.clone(),
    };
    let subscription = replay::subscribe(durable, &mut session, &channels, &start).await?;
    let registered = durable.subscription_cursor(&subscription);
    let mut replay = std::pin::pin!(replay::batches(
        durable.clone(),
        channels.clone(),
        subscription.replay,
        filter.clone(),
    ));
    match replay.next().await {
        Some(Ok(ReplayBatch::Reset(reason))) => {
            stats.count_resets(reason, 1);
            return Ok(reply(&[], registered.as_deref(), Some(reason)));
        }
        Some(Ok(ReplayBatch::Messages {
            mut messages,
            read_up_to,
        })) => {
            // A long replay comes in pages: the next poll continues after the last message
            // sent, or, when all were, after the last event the filter looked at.
            let truncated = messages.len() > MAX_MESSAGES;
            messages.truncate(MAX_MESSAGES);
            stats.delivered(messages.len());
            let cursor = match (&filter, truncated, &read_up_to) {
                (Some(_), false, Some(read)) => read.cursor(),
                (Some(_), false, None) => registered.as_deref(),
                _ => last_cursor(&messages).or(registered.as_deref()),
            };
            return Ok(reply(&messages, cursor, None));
        }
        Some(Err(error)) => return Err(error),
        None => {}
    }
    // Up to date: hold until something arrives, the wait passes or the connection ends (any
    // ending answers with what there is).
    // Cursor markers (a filter left events out) move the cursor but do not end the hold.
    let mut messages = Vec::new();
    if !wait.is_zero() {
        let ends = Ends::new(&services, &conn, grant.expires());
        let deadline = tokio::time::Instant::now() + wait;
        while messages.iter().all(|m: &Arc<Message>| m.is_cursor_marker()) {
            tokio::select! {
                received = inbox.recv_many(&mut messages, MAX_MESSAGES) => if received == 0 { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ends.wait() => break,
            }
        }
    }
    // With a filter, every event up to the head was matched already: the cursor goes there.
    let head = filter.as_ref().and_then(|_| durable.head());
    let room = MAX_MESSAGES.saturating_sub(messages.len());
    inbox.try_recv_many(&mut messages, room);
    // At a reset marker the history changed: what came before it is lost, what follows goes
    // on from the marker's cursor.
    let mut reset = None;
    if let Some(at) = messages.iter().rposition(|m| m.reset_reason().is_some()) {
        reset = messages[at].reset_reason();
        messages.drain(..at);
    }
    let last = messages.iter().rev().find(|m| m.cursor().is_some());
    let cursor = match (head, last.and_then(|m| m.position())) {
        (Some(head), last) if reset.is_none() && last.is_none_or(|last| last < head) => {
            durable.cursor(head).or(registered)
        }
        _ => last_cursor(&messages).map(str::to_owned).or(registered),
    };
    messages.retain(|m| m.reset_reason().is_none() && !m.is_cursor_marker());
    stats.delivered(messages.len());
    Ok(reply(&messages, cursor.as_deref(), reset))
}

/// The cursor of the last durable message (or reset marker) of a batch.
fn last_cursor(messages: &[Arc<Message>]) -> Option<&str> {
    messages.iter().rev().find_map(|m| m.cursor())
}

pub(crate) fn reply(
    messages: &[Arc<Message>],
    cursor: Option<&str>,
    reset: Option<ResetReason>,
) -> Response<Body> {
    json(
        StatusCode::OK,
        poll_reply(
            messages.iter().map(|m| m.websocket_text().as_ref()),
            cursor,
            reset,
        ),
    )
}
