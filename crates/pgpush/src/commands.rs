//! The small commands: `listen` and `notify` (PostgreSQL's notifications and durable events on
//! a terminal), `migrate` and `probe`.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use pgpush_pg::{ConnectOptions, EventStore, Listener, ListenerState, NotificationSink, Publisher};
use pgpush_protocol::Channel;
use tokio::sync::Notify;

use tokio_util::sync::CancellationToken;

/// A failure of a command, printed as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommandError {
    /// No database URL.
    #[error("no database configured: set DATABASE_URL or --database-url")]
    NoDatabase,
    /// A bad channel name.
    #[error("channel {name:?}: {reason}")]
    BadChannel {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: pgpush_protocol::ChannelError,
    },
    /// The database refused or failed.
    #[error("{0}")]
    Database(#[from] pgpush_pg::Error),
    /// The location demo could not be set up or run.
    #[error("{0}")]
    Demo(#[from] pgpush_demo::DemoError),
}

/// Prints each notification as the original C listener did.
struct PrintSink<W> {
    out: Mutex<W>,
    /// Woken by the sequencer's `pgpush_wake`: durable events may be waiting.
    wake: Notify,
    shutdown: CancellationToken,
}

impl<W: Write> PrintSink<W> {
    fn print(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

impl<W: Write + Send + 'static> NotificationSink for PrintSink<W> {
    fn notification(&self, channel: &str, payload: &str, process_id: i32) {
        if channel == pgpush_edge::WAKE_CHANNEL {
            self.wake.notify_one();
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "NOTIFY of '{channel}' received from backend PID {process_id}: '{payload}'"
        );
        let _ = out.flush();
    }

    fn connection_state(&self, state: ListenerState) {
        if !state.is_up() && !self.shutdown.is_cancelled() {
            eprintln!("pgpush listen: connection lost, reconnecting");
        }
    }
}

/// `pgpush listen <channel>...`: LISTENs (identifier-quoted, case kept) and prints every
/// notification until `shutdown`, reconnecting and re-LISTENing as needed.
pub(crate) async fn listen(
    database_url: Option<String>,
    channels: &[String],
    shutdown: CancellationToken,
) -> Result<(), CommandError> {
    let url = database_url.ok_or(CommandError::NoDatabase)?;
    let options = ConnectOptions::parse(&url)?;
    for name in channels {
        Channel::new(name).map_err(|reason| CommandError::BadChannel {
            name: name.clone(),
            reason,
        })?;
    }
    let (listener, task) = Listener::new(options.listener(), &[pgpush_edge::WAKE_CHANNEL]);
    let sink = Arc::new(PrintSink {
        out: Mutex::new(std::io::stdout()),
        wake: Notify::new(),
        shutdown: shutdown.clone(),
    });
    let confirmations: Vec<_> = channels.iter().map(|c| listener.listen(c)).collect();
    let running = tokio::spawn(task.run(sink.clone(), shutdown.clone()));
    for confirmation in confirmations {
        tokio::select! {
            _ = confirmation => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if !shutdown.is_cancelled() {
        eprintln!("pgpush listen: listening on {}", channels.join(", "));
    }
    let events = Publisher::new(options.pool(), 1)?.events();
    follow_durable(&events, channels, &sink, &shutdown).await;
    let _ = running.await;
    Ok(())
}

/// Prints the durable events of `channels` (`pgpush.publish`, which does not NOTIFY them)
/// from now on, after each `pgpush_wake` and every second, until `shutdown`. Without the pgpush
/// schema there are none: it says so once and only waits.
async fn follow_durable<W: Write + Send + 'static>(
    events: &EventStore,
    channels: &[String],
    sink: &PrintSink<W>,
    shutdown: &CancellationToken,
) {
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let mut head = match events.head().await {
        Ok(head) => head.last_position,
        Err(error) => {
            if error.is_not_migrated() {
                eprintln!("pgpush listen: no pgpush schema here, so no durable events to show");
            } else {
                eprintln!("pgpush listen: durable events not shown: {error}");
            }
            shutdown.cancelled().await;
            return;
        }
    };
    loop {
        let mut full = false;
        if let Ok(replay) = events.replay(&names, head, i64::MAX, 1000).await {
            full = replay.rows.len() == 1000;
            for row in replay.rows {
                head = head.max(row.position);
                sink.print(&format!(
                    "durable event on '{}' at position {}: '{}'",
                    row.channel, row.position, row.payload
                ));
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sink.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// `pgpush notify <channel> <payload>`: one `pg_notify`.
pub(crate) async fn notify(
    database_url: Option<String>,
    channel: &str,
    payload: &str,
) -> Result<(), CommandError> {
    let url = database_url.ok_or(CommandError::NoDatabase)?;
    Channel::new(channel).map_err(|reason| CommandError::BadChannel {
        name: channel.to_owned(),
        reason,
    })?;
    let publisher = Publisher::new(ConnectOptions::parse(&url)?.pool(), 1)?;
    publisher.notify(channel, payload).await?;
    Ok(())
}

/// `pgpush migrate`: creates or upgrades the `pgpush` schema, printing what it applied.
pub(crate) async fn migrate(database_url: Option<String>) -> Result<(), CommandError> {
    let url = database_url.ok_or(CommandError::NoDatabase)?;
    let applied = pgpush_edge::migrate(&ConnectOptions::parse(&url)?).await?;
    if applied.is_empty() {
        println!(
            "pgpush schema is up to date (version {})",
            pgpush_pg::SCHEMA_VERSION
        );
    } else {
        for version in applied {
            println!("applied migration {version}");
        }
    }
    Ok(())
}

/// `pgpush probe <url>`: true when the URL answers 200 within 3 seconds.
pub(crate) async fn probe(url: &str) -> bool {
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .body(Empty::<bytes::Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status() == http::StatusCode::OK)
    };
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), attempt).await,
        Ok(Some(true))
    )
}
