//! A minimal HTTP/1.1 client over a fresh TCP connection per request.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A complete response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `address` and reads the whole response.
pub async fn request(
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let stream = TcpStream::connect(address).await.expect("connect");
    exchange(stream, address, method, path_and_query, headers, body).await
}

/// [`request`] from a chosen loopback source address (127.0.0.x), to look like another client.
pub async fn request_from(
    source: std::net::IpAddr,
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source address");
    let stream = socket.connect(address).await.expect("connect");
    exchange(stream, address, method, path_and_query, headers, body).await
}

async fn exchange(
    stream: TcpStream,
    address: SocketAddr,
    method: Method,
    path_and_query: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("host", address.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body.into())).expect("request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("send request {path_and_query}: {e}"));
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    HttpResponse {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET path`.
pub async fn get(address: SocketAddr, path: &str) -> HttpResponse {
    request(address, Method::GET, path, &[], Bytes::new()).await
}

/// `POST path` with `body`.
pub async fn post(address: SocketAddr, path: &str, body: impl Into<Bytes>) -> HttpResponse {
    request(address, Method::POST, path, &[], body).await
}

/// One keep-alive HTTP/1.1 connection for many requests.
#[derive(Debug)]
pub struct HttpConnection {
    address: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpConnection {
    /// Connects.
    pub async fn open(address: SocketAddr) -> HttpConnection {
        let stream = TcpStream::connect(address).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http handshake");
        tokio::spawn(connection);
        HttpConnection { address, sender }
    }

    /// `GET path` on this connection.
    pub async fn get(&mut self, path: &str) -> HttpResponse {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", self.address.to_string())
            .body(Full::new(Bytes::new()))
            .expect("request");
        self.sender.ready().await.expect("connection ready");
        let response = self
            .sender
            .send_request(request)
            .await
            .expect("send request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}
