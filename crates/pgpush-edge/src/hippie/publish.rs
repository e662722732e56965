//! `<prefix>/pub/<channel>` and client frames: stamp `time` and `address`, then publish.

use std::{sync::Arc, sync::atomic::Ordering};

use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use pgpush_protocol::{Channel, ErrorCode, PublishMode, hippie::stamp};

use crate::{
    admission::policy::Action,
    error::ClientError,
    hippie::{Hippie, HippieResult, RequestInfo, check_origin},
    http::{query_pairs, text},
    ops::stats::PublishVia,
};

/// Stamps a client's JSON object and publishes it (ephemeral, as the original did).
pub(crate) async fn stamp_and_publish(
    hippie: &Hippie,
    info: &RequestInfo,
    channel: &Channel,
    message: &str,
) -> Result<(), ClientError> {
    let result = stamp_and_publish_in(hippie, info, channel, message).await;
    hippie.services.stats.count_publish(
        PublishVia::Hippie,
        Some(PublishMode::Ephemeral),
        &result.as_ref().map_err(|e| e.code),
    );
    result
}

async fn stamp_and_publish_in(
    hippie: &Hippie,
    info: &RequestInfo,
    channel: &Channel,
    message: &str,
) -> Result<(), ClientError> {
    info.grant.check(Action::Publish, channel)?;
    let services = &hippie.services;
    services.limits.publish_from(info.address)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamped = stamp(message, now, &info.address.to_string())
        .map_err(|error| ClientError::new(ErrorCode::BadPayload, error.to_string()))?;
    services
        .publishing
        .publish(channel, &stamped, PublishMode::Ephemeral, None, None)
        .await?;
    hippie.events_published.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub(crate) async fn handle(
    hippie: Arc<Hippie>,
    request: Request<Incoming>,
    channel: Channel,
    info: RequestInfo,
) -> HippieResult {
    check_origin(&hippie, request.headers())?;
    let query: Vec<(String, String)> = query_pairs(&request)
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut form: Vec<(String, String)> = Vec::new();
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if request.method() == Method::POST {
        let limit = hippie.services.lifetimes.settings.max_message_bytes;
        let body = match Limited::new(request.into_body(), limit).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => {
                return Err(ClientError::new(
                    ErrorCode::TooLarge,
                    format!("Body is over {limit} bytes"),
                ));
            }
        };
        if is_form || !body.is_empty() {
            let text = std::str::from_utf8(&body)
                .map_err(|_| ClientError::new(ErrorCode::BadRequest, "form body is not UTF-8"))?;
            form = pgpush_protocol::query_pairs(text).map_err(|(name, error)| {
                ClientError::new(
                    ErrorCode::BadRequest,
                    format!("form field {name:?}: {error}"),
                )
            })?;
        }
    }
    let find = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let client_id = info.client_id_with_form(find(&form, "client_id"));
    if hippie.config.require_client_id
        && !client_id
            .as_deref()
            .is_some_and(|id| hippie.registry.contains(&channel, id))
    {
        return Err(ClientError::new(
            ErrorCode::Forbidden,
            "a client_id of a live client is required to publish",
        ));
    }
    let Some(message) = find(&form, "message").or_else(|| find(&query, "message")) else {
        return Err(ClientError::new(
            ErrorCode::BadRequest,
            "message is required",
        ));
    };
    stamp_and_publish(&hippie, &info, &channel, &message).await?;
    Ok(text(
        StatusCode::OK,
        format!("Event published on {channel}"),
    ))
}
