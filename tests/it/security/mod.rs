//! Hostile input: tokens and their claims on every transport, reserved and unlisted channels in
//! any spelling, origins, every limit with its code while others keep receiving, a connection
//! flood, slow and half-open sockets, and SQL injection through channel names.

mod channels;
mod limits;
mod timeouts;
mod tokens;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use base64::Engine;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use pgpush_tests::{
    Edge, EdgeOptions, SseClient, TestPostgres, WsClient,
    http::{request, request_from},
    wait_until,
    ws::WsEvent,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::SOON;

const SECRET: &str = "a test secret that is long enough for HS256";

use pgpush_tests::tokens::{hs256 as token_with, now};

/// A token for `chat` only, valid for an hour.
fn chat_token() -> String {
    token_with(
        SECRET,
        json!({"sub": "alice", "exp": now() + 3600, "subscribe": ["chat"], "publish": ["chat"]}),
    )
}

/// The HTTP status of a WebSocket handshake to `url` with extra headers (101 when it upgrades).
async fn ws_status(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("handshake failed without a status: {error}"),
    }
}

/// Status and error code of a plain request.
async fn status_and_code(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let response = request(address, method, path, headers, body.to_owned()).await;
    let code = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| response.text());
    (response.status.as_u16(), code)
}

fn tokens_node(extra: &[&str]) -> EdgeOptions {
    let mut args = vec!["--jwt-secret", SECRET, "--jwt-leeway", "0s"];
    args.extend_from_slice(extra);
    EdgeOptions::args(&args)
}
