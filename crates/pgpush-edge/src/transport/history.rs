//! `GET /v1/history`: the last durable messages of a channel, oldest first, and where to follow
//! them live from.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::{
    admission::policy::Grant,
    error::ClientError,
    http::{Body, query_filter, query_number, query_one_channel, query_pairs, query_value},
    services::Services,
    transport::poll,
};

/// Messages answered without `limit`.
const DEFAULT_LIMIT: i64 = 50;
/// Most messages one answer holds.
const MAX_LIMIT: i64 = 1000;

/// `GET /v1/history?channel=<ch>&limit=<n>[&before=<cursor>][&filter=<JSON>]`:
/// `{"messages":[...],"cursor":"<c>"}`, the messages as on the WebSocket with their cursors (those
/// the filter matches), `cursor` where to subscribe from to go on live. The token's subscribe
/// permission for the channel applies.
pub(crate) async fn history(
    services: Arc<Services>,
    request: Request<Incoming>,
    grant: Grant,
) -> Result<Response<Body>, ClientError> {
    let pairs = query_pairs(&request);
    let channel = query_one_channel(
        &services.limits,
        &pairs,
        &grant,
        "history takes one channel: /v1/history?channel=<name>&limit=<n>",
    )?;
    let limit = query_number(&pairs, "limit", 1..=MAX_LIMIT)?.unwrap_or(DEFAULT_LIMIT);
    let before = query_value(&pairs, "before");
    let filter = query_filter(&pairs)?;
    let (messages, cursor) = services
        .durable
        .history(&channel, before.as_deref(), limit, filter.as_deref())
        .await?;
    Ok(poll::reply(&messages, cursor.as_deref(), None))
}
