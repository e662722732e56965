//! Subscribing with a cursor, and the one pager of what a client missed: batches to send before
//! its live queue (memory first, then the events table a query per batch), or a reset.

use std::sync::Arc;

use futures_util::{Stream, stream};
use pgpush_protocol::{Channel, ErrorCode, Message, ResetReason};

use crate::{
    core::{
        durable::{Durable, Replayed},
        hub::{Replay, Subscription},
        session::Session,
    },
    error::ClientError,
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

/// What a subscriber is sent before it goes live.
#[derive(Debug, Clone, Default)]
pub(crate) struct Start {
    /// Everything after this cursor.
    pub(crate) since: Option<String>,
    /// Without `since`: the last this many durable messages of each channel.
    pub(crate) history: Option<i64>,
    /// Be present in the channels, and receive their joins and leaves.
    pub(crate) presence: bool,
}

/// Subscribes `session` to `channels`, resuming after `start.since` when given, or else
/// starting with the last `start.history` durable messages of each channel up to the
/// registration head (so live messages continue right after them). Errors are `bad_cursor`
/// (malformed or forged) and `unavailable` (database or LISTEN not ready).
pub(crate) async fn subscribe(
    durable: &Durable,
    session: &mut Session,
    channels: &[Channel],
    start: &Start,
) -> Result<Subscription, ClientError> {
    let since = match &start.since {
        Some(cursor) => Some(durable.resume_point(cursor).await?),
        None => None,
    };
    let mut subscription = session
        .subscribe(channels, since)
        .await
        .map_err(|error| ClientError::new(ErrorCode::Unavailable, error.to_string()))?;
    if let (None, Some(limit), Some(head)) = (&since, start.history, subscription.head)
        && limit > 0
    {
        let messages = durable.last_of_channels(channels, head, limit).await?;
        subscription.replay = Replay::Memory(messages);
    }
    Ok(subscription)
}

/// The replay as batches: the memory part at once, the database part one query per batch.
pub(crate) fn batches(
    durable: Arc<Durable>,
    channels: Vec<Channel>,
    replay: Replay,
) -> impl Stream<Item = Result<ReplayBatch, ClientError>> + Send + 'static {
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
