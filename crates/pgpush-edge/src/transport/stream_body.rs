//! A response body that streams a subscriber's queue: SSE and Hippie MXHR differ only in format.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use pgpush_protocol::Message;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::{drain::Ticks, hub::Inbox, stats::Stats};

/// Most messages taken from the queue per poll.
const BATCH: usize = 256;

/// Where a stream's messages come from: a connection's own queue, or (Hippie) a client's queue
/// locked for as long as this connection reads it.
pub(crate) trait InboxSource: Send {
    fn inbox(&mut self) -> &mut Inbox;
}

impl InboxSource for Inbox {
    fn inbox(&mut self) -> &mut Inbox {
        self
    }
}

/// How one streaming transport writes its bytes.
pub(crate) trait StreamFormat: Send + Unpin + 'static {
    /// Appends the chunks for a batch of messages.
    fn encode(&self, batch: &[Arc<Message>], out: &mut VecDeque<Bytes>);
    /// Sent when nothing else went out for the keepalive interval.
    fn keepalive(&self) -> Bytes;
    /// The last bytes when the node drains.
    fn shutdown(&self) -> Option<Bytes>;
    /// The last bytes when the client is cut off as slow.
    fn overflow(&self) -> Option<Bytes>;
    /// The last bytes when the client's token expires.
    fn expired(&self) -> Option<Bytes> {
        None
    }
}

/// The signals that end a stream.
pub(crate) struct StreamEnds {
    /// The node's drain reaching this stream's slot.
    pub(crate) drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Slow-consumer cut of this connection.
    pub(crate) kill: CancellationToken,
    /// A newer connection took over (Hippie), if that can happen.
    pub(crate) superseded: Option<CancellationToken>,
    /// The client's token expiring, when it has one.
    pub(crate) expires: Option<std::time::SystemTime>,
}

/// Body chunks sent before the queue (a replay); an `Err` chunk is sent and ends the stream.
pub(crate) type Prelude = Pin<Box<dyn Stream<Item = Result<Bytes, Bytes>> + Send>>;

/// Streams `inbox` in `F`'s format until one of the ends fires or the queue closes.
pub(crate) struct StreamBody<F: StreamFormat> {
    format: F,
    inbox: Box<dyn InboxSource>,
    /// Kept alive as long as the stream: subscriptions, gauges, attachments.
    _holds: Box<dyn Send>,
    stats: Arc<Stats>,
    pending: VecDeque<Bytes>,
    prelude: Option<Prelude>,
    /// The next keepalive tick (node-wide, shared by every stream).
    keepalive: Option<Pin<Box<dyn Future<Output = Ticks> + Send>>>,
    drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
    superseded: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
    batch: Vec<Arc<Message>>,
    finished: bool,
}

impl<F: StreamFormat> StreamBody<F> {
    /// A body that first sends `preamble`, then what `prelude` yields, then the queue's
    /// messages.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        format: F,
        inbox: Box<dyn InboxSource>,
        holds: Box<dyn Send>,
        stats: Arc<Stats>,
        preamble: Vec<Bytes>,
        prelude: Option<Prelude>,
        keepalive: Option<Ticks>,
        ends: StreamEnds,
    ) -> StreamBody<F> {
        StreamBody {
            format,
            inbox,
            _holds: holds,
            stats,
            pending: preamble.into(),
            prelude,
            keepalive: keepalive.map(Ticks::into_tick),
            drain: ends.drain,
            kill: Box::pin(ends.kill.cancelled_owned()),
            superseded: ends.superseded.map(|t| Box::pin(t.cancelled_owned())),
            expires: ends
                .expires
                .map(|at| Box::pin(tokio::time::sleep_until(super::websocket::deadline(at)))),
            batch: Vec::new(),
            finished: false,
        }
    }

    fn finish(
        &mut self,
        last: Option<Bytes>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::convert::Infallible>>> {
        self.finished = true;
        self.pending.clear();
        match last {
            Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            None => Poll::Ready(None),
        }
    }
}

impl<F: StreamFormat> http_body::Body for StreamBody<F> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if this.drain.as_mut().poll(cx).is_ready() {
            let last = this.format.shutdown();
            return this.finish(last);
        }
        if this.kill.as_mut().poll(cx).is_ready() {
            let last = this.format.overflow();
            return this.finish(last);
        }
        if let Some(superseded) = &mut this.superseded
            && superseded.as_mut().poll(cx).is_ready()
        {
            return this.finish(None);
        }
        if let Some(expires) = &mut this.expires
            && expires.as_mut().poll(cx).is_ready()
        {
            let last = this.format.expired();
            return this.finish(last);
        }
        if this.pending.is_empty()
            && let Some(prelude) = &mut this.prelude
        {
            match prelude.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.pending.push_back(chunk),
                Poll::Ready(Some(Err(last))) => return this.finish(Some(last)),
                Poll::Ready(None) => this.prelude = None,
                // The queue waits until the prelude is sent: it holds later messages.
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.pending.is_empty() && this.prelude.is_none() {
            match this
                .inbox
                .inbox()
                .poll_recv_many(cx, &mut this.batch, BATCH)
            {
                Poll::Ready(0) => return this.finish(None),
                Poll::Ready(count) => {
                    this.format.encode(&this.batch, &mut this.pending);
                    this.batch.clear();
                    this.stats.delivered(count);
                }
                Poll::Pending => {}
            }
        }
        if let Some(next) = this.pending.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(next))));
        }
        if let Some(tick) = &mut this.keepalive
            && let Poll::Ready(ticks) = tick.as_mut().poll(cx)
        {
            *tick = ticks.into_tick();
            return Poll::Ready(Some(Ok(Frame::data(this.format.keepalive()))));
        }
        Poll::Pending
    }
}
