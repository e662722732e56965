//! One WebSocket subscriber: connects from a chosen source address, then counts and times deliveries.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::{net::TcpSocket, sync::oneshot};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, protocol::WebSocketConfig},
};

type Stream = WebSocketStream<tokio::net::TcpStream>;

/// A connected subscriber, not yet reading.
pub(crate) struct Subscriber {
    stream: Stream,
    channel: String,
    connect_time: Duration,
    delivered: Arc<AtomicU64>,
}

/// A subscriber reading in its own task.
pub(crate) struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<SubscriberResult>,
}

/// What one subscriber saw.
#[derive(Debug)]
pub(crate) struct SubscriberResult {
    /// The channel it subscribed.
    pub(crate) channel: String,
    /// Distinct (channel, seq) received, per channel.
    pub(crate) received: HashMap<String, u64>,
    /// Deliveries of a (channel, seq) already received.
    pub(crate) duplicates: u64,
    /// Deliveries with a seq below the last one on that channel.
    pub(crate) reordered: u64,
    /// Publish-to-receipt latency, microseconds.
    pub(crate) latency: Histogram<u64>,
    /// True when the connection ended early.
    pub(crate) disconnected: bool,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    data: Option<Stamp>,
}

/// The payload every load-generator message carries.
#[derive(Deserialize)]
struct Stamp {
    seq: u64,
    /// Publish time, nanoseconds since the Unix epoch.
    t: u64,
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 2).expect("histogram bounds")
}

impl Subscriber {
    /// Connects from `source` to `/v1/ws?channel=<channel>` and waits for `subscribed`.
    pub(crate) async fn connect(
        target: SocketAddr,
        source: IpAddr,
        channel: String,
        delivered: Arc<AtomicU64>,
    ) -> anyhow::Result<Subscriber> {
        let started = Instant::now();
        let socket = TcpSocket::new_v4()?;
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind {source}"))?;
        let tcp = socket
            .connect(target)
            .await
            .with_context(|| format!("connect {target}"))?;
        tcp.set_nodelay(true)?;
        let url = format!("ws://{target}/v1/ws?channel={channel}");
        let subscribed_channel = channel.clone();
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .max_message_size(Some(16 << 20));
        let (mut stream, _) = client_async_with_config(url, tcp, Some(config)).await?;
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(text))))
                if text.as_str().contains(r#""type":"subscribed""#) => {}
            other => bail!("no subscribed frame: {other:?}"),
        }
        Ok(Subscriber {
            stream,
            channel: subscribed_channel,
            connect_time: started.elapsed(),
            delivered,
        })
    }

    /// Connect times of all subscribers, microseconds.
    pub(crate) fn connect_histogram(subscribers: &[Subscriber]) -> Histogram<u64> {
        let mut h = histogram();
        for s in subscribers {
            let _ = h.record(s.connect_time.as_micros().max(1) as u64);
        }
        h
    }

    /// Starts reading.
    pub(crate) fn spawn(self) -> Running {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.read(stopped));
        Running { stop, task }
    }

    async fn read(mut self, mut stopped: oneshot::Receiver<()>) -> SubscriberResult {
        let mut result = SubscriberResult {
            channel: self.channel.clone(),
            received: HashMap::new(),
            duplicates: 0,
            reordered: 0,
            latency: histogram(),
            disconnected: false,
        };
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut seen: HashMap<String, Vec<bool>> = HashMap::new();
        loop {
            let next = tokio::select! {
                _ = &mut stopped => break,
                next = self.stream.next() => next,
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => {
                    result.disconnected = true;
                    break;
                }
            };
            let received_at = now_nanos();
            let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else {
                continue;
            };
            let (Some(channel), Some(stamp)) = (frame.channel, frame.data) else {
                continue;
            };
            if frame.kind != "message" {
                continue;
            }
            self.delivered.fetch_add(1, Ordering::Relaxed);
            let _ = result
                .latency
                .record((received_at.saturating_sub(stamp.t) / 1000).max(1));
            let seen = seen.entry(channel.to_string()).or_default();
            let index = stamp.seq as usize;
            if seen.len() <= index {
                seen.resize(index + 1, false);
            }
            if seen[index] {
                result.duplicates += 1;
                continue;
            }
            seen[index] = true;
            *result.received.entry(channel.to_string()).or_default() += 1;
            let last = last.entry(channel.to_string()).or_default();
            if stamp.seq < *last {
                result.reordered += 1;
            }
            *last = stamp.seq.max(*last);
        }
        result
    }
}

impl Running {
    /// Stops reading and returns what was seen.
    pub(crate) async fn finish(self) -> SubscriberResult {
        let _ = self.stop.send(());
        self.task.await.expect("subscriber task")
    }
}
