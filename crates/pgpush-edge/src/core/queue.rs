//! One client's bounded queue: the hub's sending side (`Outbox`, never waits) and the
//! connection's receiving side (`Inbox`), with the overflow that cuts a slow client.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
};

use pgpush_protocol::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::settings::QueueLimits;

/// A new queue numbered `id`, holding at most `limits`; `kill` is cancelled when it overflows.
pub(crate) fn bounded(
    id: u64,
    limits: QueueLimits,
    kill: Option<CancellationToken>,
) -> (Arc<Outbox>, Inbox) {
    let (sender, receiver) = mpsc::channel(limits.messages.max(1));
    let outbox = Arc::new(Outbox {
        id,
        sender,
        queued_bytes: AtomicUsize::new(0),
        max_bytes: limits.bytes,
        overflowed: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        missed_reset: Mutex::new(None),
        taken: AtomicI64::new(0),
        kill: Mutex::new(kill),
    });
    let inbox = Inbox {
        receiver,
        outbox: outbox.clone(),
    };
    (outbox, inbox)
}

/// What became of a message offered to a queue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    Overflowed,
    Dropped,
}

/// The sending side of one client's bounded queue, shared by the hub's channel entries.
#[derive(Debug)]
pub struct Outbox {
    id: u64,
    sender: mpsc::Sender<Arc<Message>>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    overflowed: AtomicBool,
    /// Messages not queued since the overflow.
    dropped: AtomicU64,
    /// A reset marker could not be queued (the queue was full): the next reader must be told.
    missed_reset: Mutex<Option<pgpush_protocol::ResetReason>>,
    /// The highest durable position a reader took from the queue.
    taken: AtomicI64,
    /// The connection to cut when the queue overflows, if one is reading it.
    kill: Mutex<Option<CancellationToken>>,
}

impl Outbox {
    /// The subscriber id used by [`Hub::unsubscribe`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sets (or clears) the connection cut when the queue overflows; a queue that outlives
    /// its connections (Hippie) changes it as connections come and go.
    pub fn set_kill(&self, kill: Option<CancellationToken>) {
        *self.kill.lock().unwrap_or_else(|e| e.into_inner()) = kill;
    }

    /// Records that a reader took the durable message at `position`.
    pub fn note_taken(&self, position: i64) {
        self.taken.fetch_max(position, Ordering::AcqRel);
    }

    /// The highest durable position a reader took (0 if none).
    pub fn taken(&self) -> i64 {
        self.taken.load(Ordering::Acquire)
    }

    /// If the queue overflowed, re-opens it and returns how many messages were dropped.
    pub fn take_overflow(&self) -> Option<u64> {
        self.overflowed
            .swap(false, Ordering::AcqRel)
            .then(|| self.dropped.swap(0, Ordering::AcqRel))
    }

    /// The reset a full queue could not take, once (a queue that outlives its connections tells
    /// its next reader).
    pub fn take_missed_reset(&self) -> Option<pgpush_protocol::ResetReason> {
        self.missed_reset
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Queues a reset marker like a message; if the queue cannot take it, the client is cut
    /// (it reconnects with its cursor and is reset then) and the reset is remembered for a
    /// queue that outlives its connections.
    pub(crate) fn offer_reset(&self, marker: &Arc<Message>) {
        if self.offer(marker) != Offer::Queued {
            *self.missed_reset.lock().unwrap_or_else(|e| e.into_inner()) = marker.reset_reason();
            if let Some(kill) = &*self.kill.lock().unwrap_or_else(|e| e.into_inner()) {
                kill.cancel();
            }
        }
    }

    /// Queues `message` without waiting. The first overflow marks the client slow and cancels
    /// its kill token; after that nothing more is queued (only counted) until
    /// [`Outbox::take_overflow`].
    pub(crate) fn offer(&self, message: &Arc<Message>) -> Offer {
        if self.overflowed.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Offer::Dropped;
        }
        let cost = message.queue_cost();
        let queued = self.queued_bytes.fetch_add(cost, Ordering::Relaxed) + cost;
        let result = if queued <= self.max_bytes {
            self.sender.try_send(message.clone())
        } else {
            Err(mpsc::error::TrySendError::Full(message.clone()))
        };
        match result {
            Ok(()) => Offer::Queued,
            Err(error) => {
                self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
                if let mpsc::error::TrySendError::Closed(_) = error {
                    return Offer::Dropped;
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.overflowed.store(true, Ordering::Release);
                if let Some(kill) = &*self.kill.lock().unwrap_or_else(|e| e.into_inner()) {
                    kill.cancel();
                }
                Offer::Overflowed
            }
        }
    }
}

/// The receiving side of one client's queue, owned by its connection task.
#[derive(Debug)]
pub struct Inbox {
    receiver: mpsc::Receiver<Arc<Message>>,
    outbox: Arc<Outbox>,
}

impl Inbox {
    /// Waits for at least one message and moves up to `limit` into `batch`. Returns 0 when the
    /// queue is closed.
    pub async fn recv_many(&mut self, batch: &mut Vec<Arc<Message>>, limit: usize) -> usize {
        let before = batch.len();
        let received = self.receiver.recv_many(batch, limit).await;
        self.account(&batch[before..]);
        received
    }

    /// Moves what is queued right now (up to `limit`) into `batch` without waiting.
    pub fn try_recv_many(&mut self, batch: &mut Vec<Arc<Message>>, limit: usize) -> usize {
        let before = batch.len();
        while batch.len() - before < limit {
            match self.receiver.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        self.account(&batch[before..]);
        batch.len() - before
    }

    /// The queue's sending side.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Poll form of [`Inbox::recv_many`], for response bodies.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut std::task::Context<'_>,
        batch: &mut Vec<Arc<Message>>,
        limit: usize,
    ) -> std::task::Poll<usize> {
        let before = batch.len();
        let polled = self.receiver.poll_recv_many(cx, batch, limit);
        if polled.is_ready() {
            self.account(&batch[before..]);
        }
        polled
    }

    fn account(&self, batch: &[Arc<Message>]) {
        let cost: usize = batch.iter().map(|m| m.queue_cost()).sum();
        self.outbox.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
        // A reset marker sets the position (the history changed there, and may be older than
        // what came before it); what follows it only raises it.
        let reset = batch.iter().rposition(|m| m.reset_reason().is_some());
        if let Some(marker) = reset.and_then(|at| batch[at].position()) {
            self.outbox.taken.store(marker, Ordering::Release);
        }
        let after = reset.map_or(0, |at| at + 1);
        if let Some(position) = batch[after..].iter().rev().find_map(|m| m.position()) {
            self.outbox.note_taken(position);
        }
    }
}
