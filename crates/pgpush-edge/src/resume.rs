//! Subscribing with a cursor: what a client missed, as a stream of batches to send before its
//! live queue (memory first, then the events table in batches), or a reset.

use std::sync::Arc;

use futures_util::{Stream, stream};
use pgpush_protocol::{Channel, CursorPoint, ErrorCode, Message, ResetReason};

use crate::{
    Node,
    durable::{Durable, Replayed},
    http::ApiError,
    hub::{Replay, Session},
};

/// One step of a replay.
#[derive(Debug)]
pub(crate) enum ReplayBatch {
    /// Messages in position order.
    Messages(Vec<Arc<Message>>),
    /// The client's cursor names events that are gone (retention deleted them, or the
    /// database's history lost them): it must reload its state. Nothing more is replayed; live
    /// messages continue.
    Reset(ResetReason),
}

/// A subscription made with an optional cursor.
#[derive(Debug)]
pub(crate) struct Resumed {
    /// The point of the durable head when the subscriber was registered: the connection's
    /// cursor once the replay is sent.
    pub(crate) head_point: Option<CursorPoint>,
    /// What to replay.
    pub(crate) replay: Replay,
}

impl Resumed {
    /// The connection's cursor once the replay is sent: the registration head.
    pub(crate) fn cursor(&self, durable: &Durable) -> Option<String> {
        durable.encode(self.head_point?)
    }
}

/// Subscribes `session` to `channels`, resuming after `cursor` when given. Errors are
/// `bad_cursor` (malformed or forged) and `unavailable` (database or LISTEN not ready).
pub(crate) async fn subscribe(
    node: &Node,
    session: &mut Session,
    channels: &[Channel],
    cursor: Option<&str>,
) -> Result<Resumed, ApiError> {
    let since = match cursor {
        Some(cursor) => Some(node.durable.resume_point(cursor).await?),
        None => None,
    };
    let subscription = session
        .subscribe(channels, since, node.config.subscribe_timeout)
        .await
        .map_err(|error| ApiError::new(ErrorCode::Unavailable, error.to_string()))?;
    Ok(Resumed {
        head_point: subscription.cursor,
        replay: subscription.replay,
    })
}

/// The replay as batches: the memory part at once, the database part one query per batch.
pub(crate) fn batches(
    durable: Arc<Durable>,
    channels: Vec<Channel>,
    replay: Replay,
) -> impl Stream<Item = Result<ReplayBatch, ApiError>> + Send + 'static {
    enum State {
        Memory(Vec<Arc<Message>>),
        Database { from: i64, upto: i64 },
        Lost,
        Done,
    }
    let start = match replay {
        Replay::Nothing => State::Done,
        Replay::Lost => State::Lost,
        Replay::Memory(messages) => State::Memory(messages),
        Replay::Database { after, upto } => State::Database { from: after, upto },
    };
    stream::unfold(start, move |state| {
        let durable = durable.clone();
        let channels = channels.clone();
        async move {
            match state {
                State::Done => None,
                State::Lost => Some((
                    Ok(ReplayBatch::Reset(ResetReason::HistoryChanged)),
                    State::Done,
                )),
                State::Memory(messages) if messages.is_empty() => None,
                State::Memory(messages) => Some((Ok(ReplayBatch::Messages(messages)), State::Done)),
                State::Database { from, upto } => {
                    match durable.replay_chunk(&channels, from, upto).await {
                        Err(error) => Some((Err(error), State::Done)),
                        Ok(Replayed::Expired) => {
                            Some((Ok(ReplayBatch::Reset(ResetReason::Expired)), State::Done))
                        }
                        Ok(Replayed::Messages { messages, more }) => {
                            let next = match messages.last().and_then(|m| m.position()) {
                                Some(last) if more && last < upto => {
                                    State::Database { from: last, upto }
                                }
                                _ => State::Done,
                            };
                            if messages.is_empty() {
                                None
                            } else {
                                Some((Ok(ReplayBatch::Messages(messages)), next))
                            }
                        }
                    }
                }
            }
        }
    })
}
