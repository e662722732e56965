//! A WebSocket test client speaking the native protocol's JSON frames.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

/// What the next frame from the server was.
#[derive(Debug)]
pub enum WsEvent {
    /// A JSON text frame.
    Json(Value),
    /// A binary frame (never sent by pgpush).
    Binary(Vec<u8>),
    /// The server closed: code and reason.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Ended,
    /// Nothing within the timeout.
    TimedOut,
}

/// A connected WebSocket client.
#[derive(Debug)]
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// URL-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl WsClient {
    /// Connects to `url`; panics when the handshake fails.
    pub async fn connect(url: &str) -> WsClient {
        WsClient::try_connect(url)
            .await
            .unwrap_or_else(|e| panic!("websocket connect to {url}: {e}"))
    }

    /// Connects to `url`.
    pub async fn try_connect(url: &str) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        // A small read buffer: tests open a thousand of these.
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let (stream, _) =
            tokio_tungstenite::connect_async_with_config(url, Some(config), false).await?;
        Ok(WsClient { stream })
    }

    /// Connects to `url` from the loopback address `source` (to look like another client).
    pub async fn connect_from(source: std::net::IpAddr, url: &str) -> WsClient {
        let address: std::net::SocketAddr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .and_then(|host| host.parse().ok())
            .expect("ws://<ip:port>/... url");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind source address");
        let stream = socket.connect(address).await.expect("connect");
        let (stream, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .unwrap_or_else(|e| panic!("websocket connect to {url} from {source}: {e}"));
        WsClient { stream }
    }

    /// Sends a JSON text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send(Message::text(value.to_string())).await;
    }

    /// Sends a raw frame.
    pub async fn send(&mut self, message: Message) {
        self.stream.send(message).await.expect("websocket send");
    }

    /// The next data or close frame, skipping pings and pongs.
    pub async fn next_event(&mut self, timeout: Duration) -> WsEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await;
            return match next {
                Err(_) => WsEvent::TimedOut,
                Ok(None) | Ok(Some(Err(_))) => WsEvent::Ended,
                Ok(Some(Ok(Message::Text(text)))) => WsEvent::Json(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}")),
                ),
                Ok(Some(Ok(Message::Binary(data)))) => WsEvent::Binary(data.to_vec()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    WsEvent::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Ok(Some(Ok(_))) => continue,
            };
        }
    }

    /// The next JSON frame; panics on anything else.
    pub async fn next_json(&mut self, timeout: Duration) -> Value {
        match self.next_event(timeout).await {
            WsEvent::Json(value) => value,
            other => panic!("expected a JSON frame, got {other:?}"),
        }
    }

    /// The next frame of `type` `message`; panics on anything else.
    pub async fn next_message(&mut self, timeout: Duration) -> Value {
        let frame = self.next_json(timeout).await;
        assert_eq!(
            frame["type"], "message",
            "expected a message frame, got {frame}"
        );
        frame
    }

    /// Sends `subscribe` and waits for `subscribed`.
    pub async fn subscribe(&mut self, channels: &[&str]) {
        self.send_json(json!({"op": "subscribe", "channels": channels}))
            .await;
        let reply = self.next_json(Duration::from_secs(15)).await;
        assert_eq!(reply["type"], "subscribed", "subscribe reply: {reply}");
    }

    /// Reads frames (discarding data) until the server's close frame; returns its code.
    pub async fn expect_close(&mut self, timeout: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                WsEvent::Json(_) | WsEvent::Binary(_) => continue,
                WsEvent::Close(Some((code, _))) => return code,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Asserts that no data frame arrives for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        match self.next_event(duration).await {
            WsEvent::TimedOut => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}
