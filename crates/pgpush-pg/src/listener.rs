//! The node's single LISTEN connection: reference-counted LISTEN/UNLISTEN, heartbeat, reconnect.

use std::{
    collections::HashSet,
    future::poll_fn,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::quote_ident;

/// First reconnect delay; doubles per failed attempt up to [`MAX_BACKOFF`], with jitter.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the connection is checked with a round trip when nothing else happens.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a heartbeat or a LISTEN may take before the connection is declared dead.
/// With the interval above, a dead peer is noticed within 10 s (TCP keepalives back this up).
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(5);

/// Receives what the LISTEN connection hears. Called from the connection's reader task, so
/// implementations must never block or await: hand the message on and return.
pub trait NotificationSink: Send + Sync + 'static {
    /// One `NOTIFY` on a channel this node LISTENs to.
    fn notification(&self, channel: &str, payload: &str, process_id: i32);

    /// The connection went up (every wanted channel LISTENed again) or down. After a
    /// reconnect, notifications sent while it was down are lost: durable readers catch up.
    fn connection_state(&self, state: ListenerState);
}

/// State of the LISTEN connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    /// Not connected yet, or reconnecting after a failure.
    Down,
    /// Connected, with every wanted channel LISTENed. `generation` counts connections made.
    Up {
        /// 1 for the first connection, +1 per reconnect.
        generation: u64,
        /// The server process id of the LISTEN backend.
        backend_pid: i32,
    },
}

impl ListenerState {
    /// True while connected.
    pub fn is_up(self) -> bool {
        matches!(self, ListenerState::Up { .. })
    }
}

enum Command {
    Listen {
        channel: String,
        done: oneshot::Sender<()>,
    },
    Unlisten {
        channel: String,
    },
}

/// Handle to the LISTEN task. Cloning is cheap; the task stops when the shutdown token given to
/// [`ListenerTask::run`] is cancelled.
#[derive(Debug, Clone)]
pub struct Listener {
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ListenerState>,
    listened: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Listen { channel, .. } => write!(f, "Listen({channel:?})"),
            Command::Unlisten { channel } => write!(f, "Unlisten({channel:?})"),
        }
    }
}

impl Listener {
    /// Asks for `LISTEN "<channel>"`. The returned receiver completes once PostgreSQL has
    /// confirmed it (after a reconnect if the connection is down), so notifications committed
    /// after that point reach the sink. Commands run in the order they are issued.
    pub fn listen(&self, channel: &str) -> oneshot::Receiver<()> {
        let (done, confirmed) = oneshot::channel();
        let _ = self.commands.send(Command::Listen {
            channel: channel.to_owned(),
            done,
        });
        confirmed
    }

    /// Asks for `UNLISTEN "<channel>"`.
    pub fn unlisten(&self, channel: &str) {
        let _ = self.commands.send(Command::Unlisten {
            channel: channel.to_owned(),
        });
    }

    /// The connection state, to watch or read.
    pub fn state(&self) -> watch::Receiver<ListenerState> {
        self.state.clone()
    }

    /// Number of channels currently wanted (LISTENed while the connection is up).
    pub fn listened_channels(&self) -> usize {
        self.listened.load(Ordering::Relaxed)
    }
}

impl Listener {
    /// Creates the handle and the task that owns the connection. Run the task with
    /// [`ListenerTask::run`]; commands issued before it runs are kept and applied once connected.
    /// `config` comes from [`crate::ConnectOptions::listener`].
    ///
    /// `permanent` channels are LISTENed on every connection and never UNLISTENed (pgpush's own
    /// wake-up channel); they do not count in [`Listener::listened_channels`].
    pub fn new(config: tokio_postgres::Config, permanent: &[&str]) -> (Listener, ListenerTask) {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ListenerState::Down);
        let listened = Arc::new(AtomicUsize::new(0));
        let task = ListenerTask {
            config,
            commands: command_rx,
            state: state_tx,
            wanted: permanent.iter().map(|c| c.to_string()).collect(),
            permanent: permanent.iter().map(|c| c.to_string()).collect(),
            waiting: Vec::new(),
            listened: listened.clone(),
            generation: 0,
        };
        (
            Listener {
                commands,
                state,
                listened,
            },
            task,
        )
    }
}

/// The task that owns the LISTEN connection; see [`Listener::new`].
pub struct ListenerTask {
    config: tokio_postgres::Config,
    commands: mpsc::UnboundedReceiver<Command>,
    state: watch::Sender<ListenerState>,
    /// Channels that should be LISTENed: the source of truth for re-LISTEN after a reconnect.
    wanted: HashSet<String>,
    /// Channels LISTENed always.
    permanent: HashSet<String>,
    /// Confirmations owed once the connection is up again.
    waiting: Vec<oneshot::Sender<()>>,
    listened: Arc<AtomicUsize>,
    generation: u64,
}

impl std::fmt::Debug for ListenerTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerTask")
            .field("wanted", &self.wanted.len())
            .finish()
    }
}
/// Why a connected session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl ListenerTask {
    /// Connects, reconnects with jittered backoff forever, and hands what it hears to `sink`;
    /// returns when `shutdown` is cancelled.
    pub async fn run(mut self, sink: Arc<dyn NotificationSink>, shutdown: CancellationToken) {
        let sink = &sink;
        let mut failures: u32 = 0;
        // A `listener.reconnect` span lasts from losing the connection until it is back with
        // every channel LISTENed again.
        let mut outage: Option<tracing::Span> = None;
        loop {
            match self.session(sink, &shutdown, &mut outage).await {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => {
                    if self.state.borrow().is_up() {
                        failures = 0;
                        self.set_state(sink, ListenerState::Down);
                    }
                    let delay = backoff(failures);
                    failures = failures.saturating_add(1);
                    outage
                        .get_or_insert_with(|| {
                            tracing::debug_span!(
                                "listener.reconnect",
                                reason = %reason,
                                attempts = tracing::field::Empty,
                                channels = tracing::field::Empty,
                            )
                        })
                        .record("attempts", failures);
                    warn!(%reason, retry_in_ms = delay.as_millis() as u64, "listener connection lost");
                    if !self.wait_offline(delay, &shutdown).await {
                        break;
                    }
                }
            }
        }
        self.set_state(sink, ListenerState::Down);
        debug!("listener stopped");
    }

    fn set_state(&self, sink: &Arc<dyn NotificationSink>, state: ListenerState) {
        self.state.send_replace(state);
        sink.connection_state(state);
    }

    /// Waits out a backoff delay while still recording commands. False on shutdown.
    async fn wait_offline(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = shutdown.cancelled() => return false,
                Some(command) = self.commands.recv() => self.record(command),
            }
        }
    }

    /// Updates the wanted set without a connection; confirmations wait for the next session.
    fn record(&mut self, command: Command) {
        match command {
            Command::Listen { channel, done } => {
                self.wanted.insert(channel);
                self.waiting.push(done);
            }
            Command::Unlisten { channel } => {
                if !self.permanent.contains(&channel) {
                    self.wanted.remove(&channel);
                }
            }
        }
        self.count_listened();
    }

    /// One connection's life: connect, LISTEN everything wanted, then serve commands and
    /// heartbeats until the connection fails or shutdown.
    async fn session(
        &mut self,
        sink: &Arc<dyn NotificationSink>,
        shutdown: &CancellationToken,
        outage: &mut Option<tracing::Span>,
    ) -> SessionEnd {
        let config = self.config.clone();
        let connect = config.connect(NoTls);
        tokio::pin!(connect);
        let (client, mut connection) = loop {
            tokio::select! {
                result = &mut connect => match result {
                    Ok(pair) => break pair,
                    Err(error) => return SessionEnd::Lost(crate::Error::from(error).to_string()),
                },
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                Some(command) = self.commands.recv() => self.record(command),
            }
        };

        let sink_for_state = sink.clone();
        // The reader task: drives the connection and hands notifications to the sink. It never
        // waits on anything but the socket, so PostgreSQL's queue never backs up behind us.
        let sink = sink.clone();
        let (reader_done_tx, mut reader_done) = oneshot::channel::<String>();
        let reader = tokio::spawn(async move {
            let end = poll_fn(|cx| {
                loop {
                    match connection.poll_message(cx) {
                        Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                            sink.notification(n.channel(), n.payload(), n.process_id());
                        }
                        Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                            debug!(%notice, "notice on LISTEN connection");
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(error))) => {
                            return Poll::Ready(crate::Error::from(error).to_string());
                        }
                        Poll::Ready(None) => return Poll::Ready("connection closed".to_owned()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
            let _ = reader_done_tx.send(end);
        });
        let _abort_reader = AbortOnDrop(reader);

        let backend_pid = match round_trip(client.query_one("SELECT pg_backend_pid()", &[])).await {
            Ok(row) => row.get::<_, i32>(0),
            Err(reason) => return SessionEnd::Lost(reason),
        };
        // Re-LISTEN everything wanted, including channels asked for while we were down.
        let wanted: Vec<String> = self.wanted.iter().cloned().collect();
        for chunk in wanted.chunks(500) {
            if let Err(reason) =
                round_trip(client.batch_execute(&statements("LISTEN", chunk))).await
            {
                return SessionEnd::Lost(reason);
            }
        }
        self.generation += 1;
        info!(
            generation = self.generation,
            backend_pid,
            channels = wanted.len(),
            "listener connected"
        );
        self.set_state(
            &sink_for_state,
            ListenerState::Up {
                generation: self.generation,
                backend_pid,
            },
        );
        for done in self.waiting.drain(..) {
            let _ = done.send(());
        }
        if let Some(span) = outage.take() {
            span.record("channels", wanted.len());
        }

        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return SessionEnd::Shutdown,
                end = &mut reader_done => {
                    return SessionEnd::Lost(end.unwrap_or_else(|_| "reader stopped".to_owned()));
                }
                _ = heartbeat.tick() => {
                    if let Err(reason) = round_trip(client.check_connection()).await {
                        return SessionEnd::Lost(format!("heartbeat failed: {reason}"));
                    }
                }
                Some(command) = self.commands.recv() => {
                    // Apply everything queued at once: one round trip for a burst of subscribes.
                    let mut batch = vec![command];
                    while let Ok(more) = self.commands.try_recv() {
                        batch.push(more);
                    }
                    let sql = self.apply(batch);
                    if !sql.is_empty()
                        && let Err(reason) = round_trip(client.batch_execute(&sql)).await {
                            return SessionEnd::Lost(reason);
                        }
                    for done in self.waiting.drain(..) {
                        let _ = done.send(());
                    }
                    heartbeat.reset();
                }
            }
        }
    }

    fn count_listened(&self) {
        self.listened
            .store(self.wanted.len() - self.permanent.len(), Ordering::Relaxed);
    }

    /// Records a batch of commands and returns the SQL that brings the session in line.
    fn apply(&mut self, batch: Vec<Command>) -> String {
        let mut sql = String::new();
        for command in batch {
            match command {
                Command::Listen { channel, done } => {
                    if self.wanted.insert(channel.clone()) {
                        sql.push_str(&statements("LISTEN", &[channel]));
                    }
                    self.waiting.push(done);
                }
                Command::Unlisten { channel } => {
                    if !self.permanent.contains(&channel) && self.wanted.remove(&channel) {
                        sql.push_str(&statements("UNLISTEN", &[channel]));
                    }
                }
            }
        }
        self.count_listened();
        sql
    }
}

fn statements(verb: &str, channels: &[String]) -> String {
    let mut sql = String::new();
    for channel in channels {
        sql.push_str(verb);
        sql.push(' ');
        sql.push_str(&quote_ident(channel));
        sql.push_str(";\n");
    }
    sql
}

async fn round_trip<T>(
    future: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(ROUND_TRIP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(crate::Error::from(error).to_string()),
        Err(_) => Err(format!("no answer within {ROUND_TRIP_TIMEOUT:?}")),
    }
}

/// Reconnect delay after `failures` failed attempts: 0.5 s doubling to 30 s, times a random
/// factor in [0.5, 1.0] so a fleet of nodes does not reconnect in lockstep.
fn backoff(failures: u32) -> Duration {
    let base = MIN_BACKOFF
        .saturating_mul(1u32 << failures.min(6))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::random_range(0.5..=1.0))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_thirty_seconds() {
        for failures in 0..20 {
            let delay = backoff(failures);
            let base = (0.5 * f64::from(1u32 << failures.min(6))).min(30.0);
            assert!(
                delay.as_secs_f64() >= base * 0.5 - 1e-9,
                "{failures}: {delay:?}"
            );
            assert!(delay.as_secs_f64() <= base + 1e-9, "{failures}: {delay:?}");
        }
    }

    #[test]
    fn listen_statements_quote_names() {
        assert_eq!(
            statements("LISTEN", &["a\"b".to_owned(), "C".to_owned()]),
            "LISTEN \"a\"\"b\";\nLISTEN \"C\";\n"
        );
    }
}
