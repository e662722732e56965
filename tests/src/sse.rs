//! A Server-Sent Events test client that parses the stream into events.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One event of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// `id:`
    pub id: Option<String>,
    /// `event:` (empty when absent)
    pub event: String,
    /// `data:` lines joined with `\n`
    pub data: String,
    /// `retry:`
    pub retry: Option<u64>,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {:?}", self.data))
    }
}

/// An open event stream.
#[derive(Debug)]
pub struct SseClient {
    /// Response status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    body: Incoming,
    buffer: Vec<u8>,
    ended: bool,
}

impl SseClient {
    /// Opens `GET path_and_query` with `headers`.
    pub async fn connect(
        address: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let stream = TcpStream::connect(address).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        tokio::spawn(connection);
        let mut builder = Request::get(path_and_query)
            .header("host", address.to_string())
            .header("accept", "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let response = sender
            .send_request(builder.body(Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("send request");
        let (parts, body) = response.into_parts();
        SseClient {
            status: parts.status,
            headers: parts.headers,
            body,
            buffer: Vec::new(),
            ended: false,
        }
    }

    /// The next event (comment-only blocks skipped); `None` when the stream ended or nothing
    /// came within `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = find_block_end(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block[..end]) {
                    return Some(event);
                }
                continue;
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => self.ended = true,
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.buffer.extend_from_slice(data);
                    }
                }
            }
        }
    }

    /// The next `message` event's data as JSON; panics on anything else.
    pub async fn next_message(&mut self, timeout: Duration) -> (Option<String>, serde_json::Value) {
        let event = self
            .next_event(timeout)
            .await
            .unwrap_or_else(|| panic!("no SSE event within {timeout:?}"));
        assert_eq!(
            event.event, "message",
            "expected a message event, got {event:?}"
        );
        (event.id.clone(), event.json())
    }

    /// True once the server ended the stream.
    pub fn ended(&self) -> bool {
        self.ended && find_block_end(&self.buffer).is_none()
    }
}

fn find_block_end(buffer: &[u8]) -> Option<usize> {
    buffer.windows(2).position(|w| w == b"\n\n")
}

fn parse_block(block: &[u8]) -> Option<SseEvent> {
    let text = String::from_utf8_lossy(block);
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    let mut any = false;
    for line in text.split('\n') {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        any = true;
        match field {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.event = value.to_owned(),
            "data" => data.push(value),
            "retry" => event.retry = value.parse().ok(),
            _ => {}
        }
    }
    event.data = data.join("\n");
    any.then_some(event)
}
