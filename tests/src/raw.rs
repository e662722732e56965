//! Raw HTTP/1.1 over a TCP socket: status line, headers and chunk boundaries exactly as sent.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A response read straight off the socket.
#[derive(Debug)]
pub struct RawResponse {
    /// `HTTP/1.1 200 OK`
    pub status_line: String,
    /// Header lines as sent (name and value split at the first `:`).
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Every body byte seen so far (chunk framing removed).
    pub body_seen: Vec<u8>,
}

impl RawResponse {
    /// Sends `GET path` and reads the status line and headers.
    pub async fn get(
        address: SocketAddr,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> RawResponse {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n");
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut response = RawResponse {
            status_line: String::new(),
            headers: Vec::new(),
            stream,
            buffer: Vec::new(),
            body_seen: Vec::new(),
        };
        let head = response
            .read_until(b"\r\n\r\n", Duration::from_secs(10))
            .await
            .expect("response head");
        let head = String::from_utf8(head).expect("head is text");
        let mut lines = head.trim_end_matches("\r\n\r\n").split("\r\n");
        response.status_line = lines.next().unwrap_or_default().to_owned();
        response.headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
            .collect();
        response
    }

    /// The value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next chunk of a chunked body; `None` at the last chunk, on close, or on timeout.
    pub async fn next_chunk(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let size_line = self.read_until(b"\r\n", timeout).await?;
        let size_text = String::from_utf8_lossy(&size_line[..size_line.len() - 2]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return None;
        }
        let data = self.read_exact(size + 2, timeout).await?;
        assert_eq!(&data[size..], b"\r\n", "chunk not terminated by CRLF");
        let chunk = data[..size].to_vec();
        self.body_seen.extend_from_slice(&chunk);
        Some(chunk)
    }

    async fn fill(&mut self, timeout: Duration) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match tokio::time::timeout(timeout, self.stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buffer.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    async fn read_until(&mut self, delimiter: &[u8], timeout: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(at) = self
                .buffer
                .windows(delimiter.len())
                .position(|w| w == delimiter)
            {
                return Some(self.buffer.drain(..at + delimiter.len()).collect());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.fill(left).await {
                return None;
            }
        }
    }

    async fn read_exact(&mut self, n: usize, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.buffer.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.fill(left).await {
                return None;
            }
        }
        Some(self.buffer.drain(..n).collect())
    }
}

/// A Hippie MXHR client: reads parts and hands out their JSON.
#[derive(Debug)]
pub struct MxhrClient {
    /// The raw response.
    pub response: RawResponse,
    /// The boundary from `Content-Type`.
    pub boundary: String,
    body: Vec<u8>,
    started: bool,
}

impl MxhrClient {
    /// Opens `GET path` and checks the response is a multipart stream.
    pub async fn open(address: SocketAddr, path: &str) -> MxhrClient {
        let response = RawResponse::get(address, path, &[]).await;
        assert_eq!(response.status_line, "HTTP/1.1 200 OK", "{response:?}");
        let content_type = response
            .header("content-type")
            .expect("content-type")
            .to_owned();
        let boundary = content_type
            .strip_prefix("multipart/mixed; boundary=\"")
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or_else(|| panic!("bad content-type {content_type:?}"))
            .to_owned();
        MxhrClient {
            response,
            boundary,
            body: Vec::new(),
            started: false,
        }
    }

    /// The next part's JSON text (pings included); `None` when the stream ends or times out.
    pub async fn next_text(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let opening = format!("--{}\n", self.boundary);
        let head = "Content-Type: application/json\n\n";
        let close = format!("\n--{}\n", self.boundary);
        loop {
            if !self.started && self.body.len() >= opening.len() {
                assert_eq!(
                    &self.body[..opening.len()],
                    opening.as_bytes(),
                    "stream must open with --boundary LF"
                );
                self.body.drain(..opening.len());
                self.started = true;
            }
            if self.started
                && let Some(end) = find(&self.body, close.as_bytes())
            {
                let part: Vec<u8> = self.body.drain(..end + close.len()).collect();
                let part = String::from_utf8(part).expect("part is UTF-8");
                let json = part
                    .strip_prefix(head)
                    .unwrap_or_else(|| panic!("part must start with {head:?}: {part:?}"));
                return Some(json[..json.len() - close.len()].to_owned());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let chunk = self.response.next_chunk(left).await?;
            self.body.extend_from_slice(&chunk);
        }
    }

    /// The next non-ping part, parsed.
    pub async fn next_json(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = self.next_text(left).await?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("part is not JSON ({e}): {text}"));
            if value["type"] != "ping" {
                return Some(value);
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
