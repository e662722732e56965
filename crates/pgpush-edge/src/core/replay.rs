//! Subscribing with a cursor, and the one pager of what a client missed: batches to send before
//! its live queue (memory first, then the events table a query per batch), or a reset.

use std::sync::Arc;

use futures_util::{Stream, stream};
use pgpush_protocol::{Channel, ErrorCode, Filter, Message, ResetReason};

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
    /// Messages in position order (those the filter matches).
    Messages {
        /// The messages to send.
        messages: Vec<Arc<Message>>,
        /// The last event read from the table for this batch, matched or not: a poll that sent
        /// every message continues after it (`None` for the memory part, read up to the head).
        read_up_to: Option<Arc<Message>>,
    },
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
    /// Only the messages that match, replayed and live.
    pub(crate) filter: Option<Arc<Filter>>,
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
        .subscribe(channels, since, start.filter.as_ref())
        .await
        .map_err(|error| ClientError::new(ErrorCode::Unavailable, error.to_string()))?;
    if let (None, Some(limit), Some(head)) = (&since, start.history, subscription.head)
        && limit > 0
    {
        let messages = durable
            .last_of_channels(channels, head, limit, start.filter.as_deref())
            .await?;
        subscription.replay = Replay::Memory(messages);
    }
    Ok(subscription)
}

/// The replay as batches of what `filter` matches: the memory part at once, the database part
/// one query per batch (a batch the filter leaves empty is not sent; the next is read).
pub(crate) fn batches(
    durable: Arc<Durable>,
    channels: Vec<Channel>,
    replay: Replay,
    filter: Option<Arc<Filter>>,
) -> impl Stream<Item = Result<ReplayBatch, ClientError>> + Send + 'static {
    let matches = move |message: &Arc<Message>| {
        filter
            .as_ref()
            .is_none_or(|filter| filter.matches(message.document()))
    };
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
    stream::unfold(start, move |mut state| {
        let durable = durable.clone();
        let channels = channels.clone();
        let matches = matches.clone();
        async move {
            loop {
                match state {
                    State::Done => return None,
                    State::Lost => {
                        return Some((
                            Ok(ReplayBatch::Reset(ResetReason::HistoryChanged)),
                            State::Done,
                        ));
                    }
                    State::Memory(mut messages) => {
                        messages.retain(&matches);
                        if messages.is_empty() {
                            return None;
                        }
                        let batch = ReplayBatch::Messages {
                            messages,
                            read_up_to: None,
                        };
                        return Some((Ok(batch), State::Done));
                    }
                    State::Database { from, upto } => {
                        match durable.replay_chunk(&channels, from, upto).await {
                            Err(error) => return Some((Err(error), State::Done)),
                            Ok(Replayed::Expired) => {
                                return Some((
                                    Ok(ReplayBatch::Reset(ResetReason::Expired)),
                                    State::Done,
                                ));
                            }
                            Ok(Replayed::Messages { mut messages, more }) => {
                                let read_up_to = messages.last().cloned();
                                state = match read_up_to.as_ref().and_then(|m| m.position()) {
                                    Some(last) if more && last < upto => {
                                        State::Database { from: last, upto }
                                    }
                                    _ => State::Done,
                                };
                                messages.retain(&matches);
                                if !messages.is_empty() {
                                    let batch = ReplayBatch::Messages {
                                        messages,
                                        read_up_to,
                                    };
                                    return Some((Ok(batch), state));
                                }
                            }
                        }
                    }
                }
            }
        }
    })
}
