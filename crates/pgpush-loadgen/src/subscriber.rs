//! Subscribers over every transport: WebSocket (pgpush, the thin broadcaster, Nchan), SSE, long
//! poll and Hippie MXHR. Each connects from a chosen source address, says when it is subscribed,
//! then counts what it receives until told to stop.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::{oneshot, watch},
};
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use crate::{ServerKind, manifest::Transport, tally::Tally, viewport};

/// One subscriber's settings.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) transport: Transport,
    pub(crate) server: ServerKind,
    pub(crate) target: SocketAddr,
    pub(crate) source: IpAddr,
    pub(crate) channel: String,
    /// Ask to be present in the channel.
    pub(crate) presence: bool,
    /// The subscriber's index in the run, and whether it subscribes with its viewport.
    pub(crate) index: usize,
    pub(crate) viewport: bool,
}

/// What a subscriber ends with.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) index: usize,
    pub(crate) tally: Tally,
    pub(crate) disconnected: bool,
}

/// Connects, reports on `ready` (the time to subscribe, or why it failed), then counts
/// messages until `stop` turns true.
pub(crate) async fn run(
    spec: Spec,
    ready: oneshot::Sender<Result<Duration, String>>,
    mut stop: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
) -> Outcome {
    let mut tally = Tally::new();
    let started = Instant::now();
    let mut ready = Some(ready);
    let result = async {
        let mut source = connect(&spec).await?;
        source.until_subscribed().await?;
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(started.elapsed()));
        }
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return anyhow::Ok(false),
                batch = source.next() => {
                    let batch = batch?;
                    for text in batch {
                        if tally.record_text(&text) {
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
    .await;
    let disconnected = match result {
        Ok(disconnected) => disconnected,
        Err(error) => {
            if let Some(ready) = ready.take() {
                let _ = ready.send(Err(format!("{error:#}")));
            }
            true
        }
    };
    Outcome {
        index: spec.index,
        tally,
        disconnected,
    }
}

/// A connected source of message texts.
enum Source {
    WebSocket {
        stream: Box<tokio_tungstenite::WebSocketStream<TcpStream>>,
        expects_subscribed: bool,
    },
    /// SSE or MXHR: a streaming body split into events or parts.
    Stream {
        /// Kept so the connection stays open for the streaming body.
        _sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        body: Incoming,
        buffer: Vec<u8>,
        delimiter: Vec<u8>,
        subscribed_marker: &'static [u8],
    },
    LongPoll {
        sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        target: SocketAddr,
        channel: String,
        cursor: String,
    },
}

async fn tcp(spec: &Spec) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(spec.source, 0))
        .with_context(|| format!("bind {}", spec.source))?;
    let stream = socket
        .connect(spec.target)
        .await
        .with_context(|| format!("connect {}", spec.target))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn http(
    spec: &Spec,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp(spec).await?)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    target: SocketAddr,
    path: &str,
) -> anyhow::Result<hyper::Response<Incoming>> {
    sender.ready().await?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, target.to_string())
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    if response.status() != hyper::StatusCode::OK {
        bail!("GET {path}: {}", response.status());
    }
    Ok(response)
}

async fn connect(spec: &Spec) -> anyhow::Result<Source> {
    let channel = &spec.channel;
    let mut presence = if spec.presence { "&presence=1" } else { "" }.to_owned();
    if spec.viewport {
        presence.push_str(&viewport::filter_query(spec.index));
    }
    match spec.transport {
        Transport::WebSocket => {
            let path = match spec.server {
                ServerKind::Nchan => format!("/sub/{channel}"),
                ServerKind::Pgpush | ServerKind::Thin => {
                    format!("/v1/ws?channel={channel}{presence}")
                }
            };
            let config = WebSocketConfig::default()
                .read_buffer_size(16 * 1024)
                .max_message_size(Some(16 << 20));
            let url = format!("ws://{}{path}", spec.target);
            let (stream, _) =
                tokio_tungstenite::client_async_with_config(url, tcp(spec).await?, Some(config))
                    .await?;
            Ok(Source::WebSocket {
                stream: Box::new(stream),
                expects_subscribed: spec.server != ServerKind::Nchan,
            })
        }
        Transport::Sse => {
            let mut sender = http(spec).await?;
            let response = get(
                &mut sender,
                spec.target,
                &format!("/v1/sse?channel={channel}{presence}"),
            )
            .await?;
            Ok(Source::Stream {
                _sender: sender,
                body: response.into_body(),
                buffer: Vec::new(),
                delimiter: b"\n\n".to_vec(),
                subscribed_marker: b"event: subscribed",
            })
        }
        Transport::Hippie => {
            let mut sender = http(spec).await?;
            let response = get(
                &mut sender,
                spec.target,
                &format!("/_hippie/mxhr/{channel}"),
            )
            .await?;
            let boundary = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("boundary=\"").nth(1))
                .map(|b| b.trim_end_matches('"').to_owned())
                .context("MXHR response without a boundary")?;
            Ok(Source::Stream {
                _sender: sender,
                body: response.into_body(),
                buffer: Vec::new(),
                delimiter: format!("\n--{boundary}\n").into_bytes(),
                subscribed_marker: b"hippie.pipe.set_client_id",
            })
        }
        Transport::LongPoll => {
            let mut sender = http(spec).await?;
            let first = get(
                &mut sender,
                spec.target,
                &format!("/v1/poll?channel={channel}"),
            )
            .await?;
            let body = first.into_body().collect().await?.to_bytes();
            let cursor = cursor_of(&body).context("first poll answered no cursor")?;
            Ok(Source::LongPoll {
                sender,
                target: spec.target,
                channel: channel.clone(),
                cursor,
            })
        }
        Transport::None | Transport::Mixed => bail!("not a subscriber transport"),
    }
}

fn cursor_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Reply {
        cursor: Option<String>,
    }
    serde_json::from_slice::<Reply>(body).ok()?.cursor
}

impl Source {
    /// Reads until the server says the subscription is live.
    async fn until_subscribed(&mut self) -> anyhow::Result<()> {
        match self {
            Source::WebSocket {
                stream,
                expects_subscribed,
            } => {
                if !*expects_subscribed {
                    return Ok(());
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    match tokio::time::timeout_at(deadline, stream.next()).await {
                        Ok(Some(Ok(Message::Text(text))))
                            if text.as_str().contains(r#""type":"subscribed""#) =>
                        {
                            return Ok(());
                        }
                        Ok(Some(Ok(_))) => continue,
                        other => bail!("no subscribed frame: {other:?}"),
                    }
                }
            }
            Source::Stream {
                subscribed_marker, ..
            } => {
                let marker = *subscribed_marker;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let parts = tokio::time::timeout_at(deadline, self.next())
                        .await
                        .context("not subscribed within 30 s")??;
                    if parts
                        .iter()
                        .any(|p| p.windows(marker.len()).any(|w| w == marker))
                    {
                        return Ok(());
                    }
                }
            }
            Source::LongPoll { .. } => Ok(()),
        }
    }

    /// The next message texts.
    async fn next(&mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        match self {
            Source::WebSocket { stream, .. } => loop {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => return Ok(vec![text.as_bytes().to_vec()]),
                    Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.into()),
                    None => bail!("connection ended"),
                }
            },
            Source::Stream {
                body,
                buffer,
                delimiter,
                ..
            } => loop {
                let mut parts = Vec::new();
                while let Some(at) = buffer
                    .windows(delimiter.len())
                    .position(|w| w == delimiter.as_slice())
                {
                    parts.push(buffer.drain(..at + delimiter.len()).collect());
                }
                if !parts.is_empty() {
                    return Ok(parts);
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            buffer.extend_from_slice(data);
                        }
                    }
                    Some(Err(error)) => return Err(error.into()),
                    None => bail!("stream ended"),
                }
            },
            Source::LongPoll {
                sender,
                target,
                channel,
                cursor,
            } => {
                let path = format!("/v1/poll?channel={channel}&cursor={cursor}&wait=25");
                let response = get(sender, *target, &path).await?;
                let body = response.into_body().collect().await?.to_bytes();
                if let Some(next) = cursor_of(&body) {
                    *cursor = next;
                }
                #[derive(serde::Deserialize)]
                struct Reply<'a> {
                    #[serde(borrow)]
                    messages: Vec<&'a serde_json::value::RawValue>,
                }
                let reply: Reply = serde_json::from_slice(&body).context("poll reply")?;
                Ok(reply
                    .messages
                    .iter()
                    .map(|m| m.get().as_bytes().to_vec())
                    .collect())
            }
        }
    }
}
