//! `<prefix>/poll/<channel>`: Hippie long poll, with the 302 handshake and a hold timeout.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel,
    hippie::{poll_body, set_client_id_message},
};

use crate::{
    hippie::{
        CreatedOver, Hippie, HippieResult, RequestInfo, checked_client_id, new_client_id, no_cache,
    },
    http::{Body, ConnInfo, full, json},
    ops::stats::Transport,
    transport::ends::Ends,
};

/// Most messages one poll answers with.
const MAX_BATCH: usize = 1024;

pub(crate) async fn handle(
    hippie: Arc<Hippie>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
    channel: Channel,
    info: RequestInfo,
) -> HippieResult {
    let Some(client_id) = info.client_id.clone() else {
        return Ok(redirect_with_new_id(&hippie, &request));
    };
    checked_client_id(&client_id)?;
    let attachment = hippie
        .open_queue(&channel, &client_id, &info, CreatedOver::Stream)
        .await?;
    let stats = &hippie.services.stats;
    let _guard = stats.connection(Transport::Poll);
    let mut reader = attachment.read(conn.kill.clone(), false).await;
    let mut messages = Vec::new();
    if attachment.take_fresh() {
        messages.push(set_client_id_message(attachment.client_id()));
    }
    let mut queued = reader.drain();
    if messages.is_empty() && queued.is_empty() {
        // Hold until something arrives, the hold time passes, or the connection ends (a newer
        // poll takes over, the node drains): any of them answers with what there is.
        let ends = Ends::new(&hippie.services, &conn, info.grant.expires())
            .or_superseded(attachment.superseded());
        let mut batch = Vec::new();
        tokio::select! {
            _ = reader.inbox().recv_many(&mut batch, MAX_BATCH) => {}
            _ = ends.wait() => {}
            _ = tokio::time::sleep(hippie.config.poll_hold) => {}
        }
        queued = batch;
        queued.extend(reader.drain());
    }
    stats.delivered(queued.len());
    messages.extend(queued.iter().map(|m| m.hippie_json().clone()));
    messages.extend(reader.notices());
    let mut response = json(
        StatusCode::OK,
        poll_body(messages.iter().map(|m| m.as_ref())),
    );
    no_cache(response.headers_mut());
    Ok(response)
}

/// No client_id: `302` to the same path with `?client_id=<new>` (no queue yet).
fn redirect_with_new_id(hippie: &Hippie, request: &Request<Incoming>) -> Response<Body> {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| hippie.node_id.clone());
    let location = format!(
        "http://{host}{}?client_id={}",
        request.uri().path(),
        new_client_id()
    );
    let mut response = Response::new(full(""));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}
