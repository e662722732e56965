//! Publishing from clients: `POST /v1/publish/<channel>` and the WebSocket `publish` op.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use pgpush_protocol::{
    Channel, ErrorCode, MAX_NOTIFY_PAYLOAD_BYTES, PublishMode, publish_reply, url_decode,
};
use tracing::{Instrument, error};

use crate::{
    Node,
    http::{ApiError, Body, ConnInfo, bad_channel_encoding, client_address, json, query_pairs},
    policy::{Action, Grant},
    stats::PublishVia,
    telemetry,
};

/// `POST /v1/publish/<channel>?mode=durable|ephemeral`; the body is the payload.
pub(crate) async fn http_publish(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
    channel_path: &str,
    grant: Grant,
) -> Result<Response<Body>, ApiError> {
    let mode = requested_mode(&request);
    let address = client_address(
        conn.peer.ip(),
        request.headers(),
        &node.config.trusted_proxies,
    );
    let result = match &mode {
        Ok(mode) => http_publish_in(&node, address, request, channel_path, *mode, &grant).await,
        Err(error) => Err(error.clone()),
    };
    let counted = result.as_ref().map(|_| ()).map_err(|e| e.code);
    node.stats
        .count_publish(PublishVia::Http, mode.ok(), &counted);
    result
}

/// The `mode` query parameter (durable when absent).
fn requested_mode(request: &Request<Incoming>) -> Result<PublishMode, ApiError> {
    match query_pairs(request)
        .iter()
        .find(|(name, _)| name == "mode")
        .map(|(_, value)| value.clone())
    {
        None => Ok(PublishMode::Durable),
        Some(value) => PublishMode::parse(&value).ok_or_else(|| {
            ApiError::new(ErrorCode::BadRequest, "mode must be durable or ephemeral")
        }),
    }
}

async fn http_publish_in(
    node: &Node,
    address: std::net::IpAddr,
    request: Request<Incoming>,
    channel_path: &str,
    mode: PublishMode,
    grant: &Grant,
) -> Result<Response<Body>, ApiError> {
    node.limits.publish_from(address)?;
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
                    ApiError::new(
                        ErrorCode::BadRequest,
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?,
        ),
    };
    let traceparent = request_traceparent(request.headers());
    let limit = node.config.max_message_bytes;
    let body = Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::new(ErrorCode::TooLarge, format!("body is over {limit} bytes"))
            } else {
                ApiError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?
        .to_bytes();
    let payload = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(ErrorCode::BadPayload, "payload must be UTF-8 text"))?;
    let cursor = publish(
        node,
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

/// Publishes `payload` on `channel`; returns the cursor of a durable publish (`None` when the
/// sequencer has not positioned it in time). Subscribers, this node's included, receive it
/// through PostgreSQL, exactly once. `idempotency_key` applies to durable publishes; a durable
/// event carries the trace context of this publish (a child of `parent` when given), so the
/// fan-out that delivers it links back to the producer.
pub(crate) async fn publish(
    node: &Node,
    channel: &Channel,
    payload: &str,
    mode: PublishMode,
    idempotency_key: Option<&str>,
    parent: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let span = tracing::debug_span!(
        "publish",
        channel = channel.as_str(),
        mode = ?mode,
        bytes = payload.len()
    );
    telemetry::set_remote_parent(&span, parent);
    let traceparent = telemetry::traceparent(&span).or_else(|| parent.map(str::to_owned));
    publish_in(node, channel, payload, mode, idempotency_key, traceparent)
        .instrument(span)
        .await
}

async fn publish_in(
    node: &Node,
    channel: &Channel,
    payload: &str,
    mode: PublishMode,
    idempotency_key: Option<&str>,
    traceparent: Option<String>,
) -> Result<Option<String>, ApiError> {
    if payload.contains('\0') {
        return Err(ApiError::new(
            ErrorCode::BadPayload,
            "payload must not contain NUL",
        ));
    }
    match mode {
        PublishMode::Durable => {
            let cursor = node
                .durable
                .publish(channel, payload, traceparent.as_deref(), idempotency_key)
                .await?;
            Ok(cursor)
        }
        PublishMode::Ephemeral => {
            if payload.len() > MAX_NOTIFY_PAYLOAD_BYTES {
                return Err(ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "ephemeral payload is {} bytes; NOTIFY carries at most {MAX_NOTIFY_PAYLOAD_BYTES}",
                        payload.len()
                    ),
                ));
            }
            node.publisher
                .notify(channel.as_str(), payload)
                .await
                .map_err(database_error)?;
            Ok(None)
        }
    }
}

/// Maps a database failure to what the client is told; internals go to the log only.
pub(crate) fn database_error(failure: pgpush_pg::Error) -> ApiError {
    if failure.is_payload_too_large() {
        ApiError::new(ErrorCode::TooLarge, "payload too large")
    } else if failure.is_unavailable() || failure.is_queue_full() {
        ApiError::new(ErrorCode::Unavailable, "database unavailable; retry later")
    } else if failure.is_not_migrated() {
        ApiError::new(
            ErrorCode::Unavailable,
            "durable channels need the pgpush schema: run `pgpush migrate`",
        )
    } else {
        error!(error = %failure, "publish failed");
        ApiError::new(ErrorCode::Internal, "publish failed")
    }
}
