//! A response body that streams a subscriber's queue: SSE and Hippie MXHR differ only in format.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use crate::{
    core::queue::Inbox,
    ops::stats::Stats,
    services::drain::Ticks,
    transport::ends::{Ending, Ends},
};
use bytes::Bytes;
use futures_util::Stream;
use http_body::Frame;
use pgpush_protocol::Message;

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
    /// The last bytes when the connection ends for `ending`, if any.
    fn last_words(&self, ending: Ending) -> Option<Bytes>;
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
    ends: Pin<Box<dyn Future<Output = Ending> + Send>>,
    batch: Vec<Arc<Message>>,
    finished: bool,
}

impl<F: StreamFormat> StreamBody<F> {
    /// A body that streams `inbox` until `ends`, keeping `holds` alive as long.
    pub(crate) fn new(
        format: F,
        inbox: Box<dyn InboxSource>,
        holds: Box<dyn Send>,
        stats: Arc<Stats>,
        ends: Ends,
    ) -> StreamBody<F> {
        StreamBody {
            format,
            inbox,
            _holds: holds,
            stats,
            pending: VecDeque::new(),
            prelude: None,
            keepalive: None,
            ends: ends.into_future(),
            batch: Vec::new(),
            finished: false,
        }
    }

    /// Sends `preamble` first.
    pub(crate) fn starting_with(mut self, preamble: Vec<Bytes>) -> StreamBody<F> {
        self.pending = preamble.into();
        self
    }

    /// Sends what `prelude` yields before the queue's messages.
    pub(crate) fn after(mut self, prelude: Prelude) -> StreamBody<F> {
        self.prelude = Some(prelude);
        self
    }

    /// Sends the format's keepalive on every tick with nothing else to send.
    pub(crate) fn keepalive(mut self, ticks: Ticks) -> StreamBody<F> {
        self.keepalive = Some(ticks.into_tick());
        self
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
        if let Poll::Ready(ending) = this.ends.as_mut().poll(cx) {
            let last = this.format.last_words(ending);
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
