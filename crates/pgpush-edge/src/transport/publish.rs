//! `POST /v1/publish/<channel>`: publishing over plain HTTP.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pgpush_protocol::{ErrorCode, PublishMode, publish_reply, url_decode};

use crate::{
    admission::policy::{Action, Grant},
    error::ClientError,
    http::{Body, ConnInfo, bad_channel_encoding, client_address, json, query_pairs, read_body},
    ops::{stats::PublishVia, telemetry},
    services::Services,
};

/// `POST /v1/publish/<channel>?mode=durable|ephemeral`; the body is the payload.
pub(crate) async fn http_publish(
    services: Arc<Services>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
    channel_path: &str,
    grant: Grant,
) -> Result<Response<Body>, ClientError> {
    let mode = requested_mode(&request);
    let address = client_address(
        conn.peer.ip(),
        request.headers(),
        &services.lifetimes.settings.trusted_proxies,
    );
    let result = match &mode {
        Ok(mode) => http_publish_in(&services, address, request, channel_path, *mode, &grant).await,
        Err(error) => Err(error.clone()),
    };
    let counted = result.as_ref().map(|_| ()).map_err(|e| e.code);
    services
        .stats
        .count_publish(PublishVia::Http, mode.ok(), &counted);
    result
}

/// The `mode` query parameter (durable when absent).
fn requested_mode(request: &Request<Incoming>) -> Result<PublishMode, ClientError> {
    match query_pairs(request)
        .iter()
        .find(|(name, _)| name == "mode")
        .map(|(_, value)| value.clone())
    {
        None => Ok(PublishMode::Durable),
        Some(value) => PublishMode::parse(&value).ok_or_else(|| {
            ClientError::new(ErrorCode::BadRequest, "mode must be durable or ephemeral")
        }),
    }
}

async fn http_publish_in(
    services: &Services,
    address: std::net::IpAddr,
    request: Request<Incoming>,
    channel_path: &str,
    mode: PublishMode,
    grant: &Grant,
) -> Result<Response<Body>, ClientError> {
    services.limits.publish_from(address)?;
    let name = url_decode(channel_path, false).map_err(bad_channel_encoding)?;
    let channel = grant.channel(Action::Publish, &name)?;
    let idempotency_key = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .filter(|key| (1..=255).contains(&key.len()))
                .map(str::to_owned)
                .ok_or_else(|| {
                    ClientError::new(
                        ErrorCode::BadRequest,
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?,
        ),
    };
    let traceparent = request_traceparent(request.headers());
    let limit = services.lifetimes.settings.max_message_bytes;
    let body = read_body(request, limit).await?;
    let payload = std::str::from_utf8(&body)
        .map_err(|_| ClientError::new(ErrorCode::BadPayload, "payload must be UTF-8 text"))?;
    let cursor = services
        .publishing
        .publish(
            &channel,
            payload,
            mode,
            idempotency_key.as_deref(),
            traceparent.as_deref(),
        )
        .await?;
    // A durable event not positioned in time is committed but has no cursor yet: 202.
    let status = if mode == PublishMode::Durable && cursor.is_none() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok(json(
        status,
        publish_reply(&channel, mode, cursor.as_deref()),
    ))
}

/// A `traceparent` header, if it is a valid W3C trace context.
fn request_traceparent(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    telemetry::valid_traceparent(value).then(|| value.to_owned())
}
