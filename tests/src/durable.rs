//! Durable-channel clients for tests: a SQL writer that keeps publishing through faults,
//! subscribers that track their cursor and resume on another node when theirs dies, and the
//! bookkeeping that checks exactly-once, in-order delivery.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use crate::{
    TestPostgres,
    ws::{WsClient, WsEvent, encode},
};

/// Publishes `{"n":k}` on a channel through `pgpush.publish` at a steady rate, reconnecting
/// after failures (a URL with several hosts follows a failover).
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts publishing on `channel` at about `rate` per second.
    pub fn start(url: String, channel: &'static str, rate: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let (stopped, count) = (stop.clone(), committed.clone());
        let task = tokio::spawn(async move {
            'connect: while !stopped.load(Ordering::Relaxed) {
                let Ok((client, connection)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                tokio::spawn(connection);
                while !stopped.load(Ordering::Relaxed) {
                    let payload = format!(r#"{{"n":{}}}"#, count.load(Ordering::Relaxed) + 1);
                    if client
                        .execute("SELECT pgpush.publish($1, $2)", &[&channel, &payload])
                        .await
                        .is_err()
                    {
                        continue 'connect;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(1000 / rate)).await;
                }
            }
        });
        Writer {
            stop,
            committed,
            task,
        }
    }

    /// Publishes known to have committed so far.
    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// Stops, and returns the publishes known to have committed.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.committed.load(Ordering::Relaxed)
    }
}

/// Publishes the numbers of `range` on `channel`, one `pgpush.publish` each, in order.
pub async fn publish_numbers(
    pg: &TestPostgres,
    channel: &str,
    range: std::ops::RangeInclusive<i32>,
) {
    let client = pg.client().await;
    for n in range {
        client
            .execute(
                "SELECT pgpush.publish($1, $2::text)",
                &[&channel, &n.to_string()],
            )
            .await
            .expect("pgpush.publish");
    }
}

/// The (position, payload) of every positioned event stored for `channel`, in position order:
/// what every subscriber must get (events still waiting for a position are left out).
pub async fn stored(pg: &TestPostgres, channel: &str) -> Vec<(i64, Value)> {
    pg.client()
        .await
        .query(
            "SELECT position, payload FROM pgpush.events
             WHERE channel = $1 AND position IS NOT NULL ORDER BY position",
            &[&channel],
        )
        .await
        .expect("stored events")
        .iter()
        .map(|row| {
            let payload: &str = row.get(1);
            (
                row.get(0),
                serde_json::from_str(payload).expect("JSON payload"),
            )
        })
        .collect()
}

/// Asserts the events table gave every event exactly one position.
pub async fn assert_positioned_once(pg: &TestPostgres) {
    let row = pg
        .client()
        .await
        .query_one(
            "SELECT count(*) FILTER (WHERE position IS NULL), count(DISTINCT position), count(*)
             FROM pgpush.events",
            &[],
        )
        .await
        .expect("count events");
    let (unpositioned, distinct, total): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(unpositioned, 0, "no event skipped by the sequencer");
    assert_eq!(distinct, total, "no event positioned twice");
}

/// One durable message as a subscriber received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The cursor it carried.
    pub cursor: String,
    /// Its position (the cursor's number; tests may read it, clients must not).
    pub position: i64,
    /// The payload.
    pub data: Value,
}

/// The position inside a cursor. Only tests look inside cursors.
pub fn position_of(cursor: &str) -> i64 {
    cursor
        .split('.')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("cursor position")
}

/// A WebSocket subscriber of durable channels that reconnects, to the next node in the list,
/// with its last cursor whenever its connection ends.
#[derive(Debug)]
pub struct ResumingSubscriber {
    nodes: Vec<SocketAddr>,
    node: usize,
    channels: Vec<String>,
    /// Every durable message received, in order.
    pub received: Vec<Received>,
    /// Connections made after the first.
    pub reconnects: usize,
    /// `reset` frames received.
    pub resets: usize,
    client: Option<WsClient>,
    /// The cursor from the last `subscribed` frame or message.
    pub cursor: Option<String>,
    /// For each reconnect, how long from losing the connection to `subscribed` again.
    pub reconnect_times: Vec<Duration>,
    lost_at: Option<std::time::Instant>,
}

impl ResumingSubscriber {
    /// A subscriber of `channels` that starts on `nodes[first]`.
    pub fn new(nodes: Vec<SocketAddr>, first: usize, channels: &[&str]) -> ResumingSubscriber {
        ResumingSubscriber {
            nodes,
            node: first,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            received: Vec::new(),
            reconnects: 0,
            resets: 0,
            client: None,
            cursor: None,
            reconnect_times: Vec::new(),
            lost_at: None,
        }
    }

    /// Connects (or reconnects) until a node accepts, and waits for `subscribed`.
    pub async fn connect(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let address = self.nodes[self.node];
            let mut url = format!("ws://{address}/v1/ws?");
            for channel in &self.channels {
                url.push_str(&format!("channel={}&", encode(channel)));
            }
            if let Some(cursor) = &self.cursor {
                url.push_str(&format!("since={}", encode(cursor)));
            }
            if let Ok(mut client) = WsClient::try_connect(&url).await
                && self.read_until_subscribed(&mut client).await
            {
                self.client = Some(client);
                if let Some(lost_at) = self.lost_at.take() {
                    self.reconnect_times.push(lost_at.elapsed());
                }
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no node took the subscriber back within 30 s"
            );
            self.node = (self.node + 1) % self.nodes.len();
            self.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads the replay and the `subscribed` frame; false when the connection failed first.
    async fn read_until_subscribed(&mut self, client: &mut WsClient) -> bool {
        loop {
            match client.next_event(Duration::from_secs(15)).await {
                WsEvent::Json(frame) => match frame["type"].as_str() {
                    Some("subscribed") => {
                        if let Some(cursor) = frame["cursor"].as_str() {
                            self.cursor = Some(cursor.to_owned());
                        }
                        return true;
                    }
                    Some("reset") => self.resets += 1,
                    Some("message") => self.record(&frame),
                    _ => return false,
                },
                _ => return false,
            }
        }
    }

    fn record(&mut self, frame: &Value) {
        let Some(cursor) = frame["cursor"].as_str() else {
            return;
        };
        self.received.push(Received {
            cursor: cursor.to_owned(),
            position: position_of(cursor),
            data: frame["data"].clone(),
        });
        self.cursor = Some(cursor.to_owned());
    }

    /// Receives until it holds `count` durable messages, reconnecting as needed; panics after
    /// `timeout`.
    pub async fn receive_until(&mut self, count: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.received.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "received {} of {count} messages within {timeout:?}",
                self.received.len()
            );
            if self.client.is_none() {
                self.connect().await;
            }
            let client = self.client.as_mut().expect("connected");
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match client.next_event(left.min(Duration::from_secs(5))).await {
                WsEvent::Json(frame) if frame["type"] == "message" => self.record(&frame),
                WsEvent::Json(frame) if frame["type"] == "reset" => self.resets += 1,
                WsEvent::Json(_) | WsEvent::TimedOut => {}
                WsEvent::Close(_) | WsEvent::Ended | WsEvent::Binary(_) => {
                    self.client = None;
                    self.lost_at = Some(std::time::Instant::now());
                    self.node = (self.node + 1) % self.nodes.len();
                    self.reconnects += 1;
                }
            }
        }
    }

    /// Asserts positions only increase (so nothing repeats and nothing is reordered).
    pub fn assert_in_order_once(&self) {
        for pair in self.received.windows(2) {
            assert!(
                pair[0].position < pair[1].position,
                "out of order or repeated: {} then {}",
                pair[0].position,
                pair[1].position
            );
        }
    }
}
