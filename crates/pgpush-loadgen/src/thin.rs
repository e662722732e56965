//! The thinnest tokio WebSocket broadcaster we could write, as the practical limit of a machine:
//! no database, no hub, no queues of its own — a `broadcast` channel per channel name and one
//! task per connection that writes whatever is waiting with one flush. It speaks pgpush's URLs
//! and envelope (`/v1/ws?channel=`, `POST /v1/publish/<channel>`), so the same load generator
//! measures both.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{
            Role, WebSocketConfig,
            frame::{
                Frame,
                coding::{Data, OpCode},
            },
        },
    },
};

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Bytes>>>>;

fn sender(channels: &Channels, name: &str) -> broadcast::Sender<Bytes> {
    channels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_owned())
        .or_insert_with(|| broadcast::channel(4096).0)
        .clone()
}

/// Serves until the process is stopped.
pub(crate) async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "thin broadcaster listening on http://{}",
        listener.local_addr()?
    );
    let channels: Channels = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let channels = channels.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(channels.clone(), request));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

async fn handle(
    channels: Channels,
    mut request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    if let Some(name) = path.strip_prefix("/v1/publish/") {
        let name = name.to_owned();
        let Ok(body) = request.into_body().collect().await else {
            return Ok(empty(StatusCode::BAD_REQUEST));
        };
        // One encoding per message, shared by every subscriber.
        let frame = Bytes::from(format!(
            r#"{{"type":"message","channel":"{name}","data":{}}}"#,
            String::from_utf8_lossy(&body.to_bytes())
        ));
        let _ = sender(&channels, &name).send(frame);
        return Ok(empty(StatusCode::OK));
    }
    if path != "/v1/ws" {
        return Ok(empty(StatusCode::NOT_FOUND));
    }
    let name = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("channel=")))
        .unwrap_or("")
        .to_owned();
    let Some(key) = request
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return Ok(empty(StatusCode::BAD_REQUEST));
    };
    let mut receiver = sender(&channels, &name).subscribe();
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(16 * 1024);
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let subscribed = Bytes::from(format!(r#"{{"type":"subscribed","channels":["{name}"]}}"#));
        if socket.send(text(subscribed)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                received = receiver.recv() => {
                    let Ok(first) = received else { return };
                    if socket.feed(text(first)).await.is_err() {
                        return;
                    }
                    while let Ok(more) = receiver.try_recv() {
                        if socket.feed(text(more)).await.is_err() {
                            return;
                        }
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                }
                incoming = socket.next() => {
                    if !matches!(incoming, Some(Ok(_))) {
                        return;
                    }
                }
            }
        }
    });
    let mut response = empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert("upgrade", "websocket".parse().expect("header"));
    headers.insert("connection", "Upgrade".parse().expect("header"));
    headers.insert("sec-websocket-accept", key.parse().expect("header"));
    Ok(response)
}

fn text(bytes: Bytes) -> Message {
    Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
}
