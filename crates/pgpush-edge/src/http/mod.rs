//! HTTP plumbing every route shares: the body type, the one place an error becomes a JSON
//! response (and its code an HTTP status), what a connection is, and query-string helpers. It
//! imports only `admission` and `error`.

pub(crate) mod assets;
pub(crate) mod proxy_protocol;

use std::{
    borrow::Cow,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use pgpush_protocol::{Channel, ErrorCode, Filter, MAX_HISTORY, UrlDecodeError, http_error_body};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{
        limits::{ConnectionPermit, Limits},
        policy::{Action, Grant},
    },
    error::ClientError,
};

/// Every response body: full bytes or a stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the server knows about the TCP connection a request came on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    /// Cancelled to cut the connection (a slow consumer); the server drops it after a grace.
    pub(crate) kill: CancellationToken,
    /// Its place under the connection limits: held as long as anything serves the socket, an
    /// upgraded WebSocket included (`None` on the metrics address).
    pub(crate) _permit: Option<ConnectionPermit>,
}

/// The HTTP status of an error code: the only place that knows it.
pub(crate) fn status(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The JSON error response `{"error":"<code>","reason":"<text>"}`, with `Retry-After` when the
/// error says when to retry.
pub fn error_response(error: &ClientError) -> Response<Body> {
    let mut response = json(
        status(error.code),
        http_error_body(error.code, &error.reason),
    );
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// A body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The client's address: the TCP peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy. An untrusted peer cannot spoof it.
pub(crate) fn client_address(
    peer: IpAddr,
    headers: &http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut address = peer.to_canonical();
    if !is_trusted(&address) {
        return address;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) => {
                address = ip.to_canonical();
                if !is_trusted(&address) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    address
}

/// The request's body, at most `limit` bytes (`too_large` above).
pub(crate) async fn read_body(
    request: Request<hyper::body::Incoming>,
    limit: usize,
) -> Result<Bytes, ClientError> {
    Ok(http_body_util::Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ClientError::new(ErrorCode::TooLarge, format!("body is over {limit} bytes"))
            } else {
                ClientError::new(ErrorCode::BadRequest, "could not read the request body")
            }
        })?
        .to_bytes())
}

/// The query string's `name=value` pairs, URL-decoded. The router has checked that the query
/// decodes ([`check_query`]), so nothing is lost or replaced here.
pub(crate) fn query_pairs<B>(request: &Request<B>) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
    request
        .uri()
        .query()
        .and_then(|q| pgpush_protocol::query_pairs(q).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (Cow::Owned(name), Cow::Owned(value)))
        .collect()
}

/// The value of the first `name` parameter, if any.
pub(crate) fn query_value(pairs: &[(Cow<'_, str>, Cow<'_, str>)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.to_string())
}

/// The `name` parameter as a whole number in `range`, if given; `bad_request` naming the range
/// otherwise.
pub(crate) fn query_number(
    pairs: &[(Cow<'_, str>, Cow<'_, str>)],
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, ClientError> {
    query_value(pairs, name)
        .map(|text| {
            text.parse::<i64>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    ClientError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "{name} must be a whole number from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )
                })
        })
        .transpose()
}

/// The `history=<n>` parameter of a subscribe: 0 to [`MAX_HISTORY`] messages per channel.
pub(crate) fn query_history(
    pairs: &[(Cow<'_, str>, Cow<'_, str>)],
) -> Result<Option<i64>, ClientError> {
    query_number(pairs, "history", 0..=MAX_HISTORY)
}

/// The `filter=<JSON>` parameter of a subscribe, parsed once for the subscription;
/// `bad_filter` naming what is wrong.
pub(crate) fn query_filter(
    pairs: &[(Cow<'_, str>, Cow<'_, str>)],
) -> Result<Option<Arc<Filter>>, ClientError> {
    query_value(pairs, "filter")
        .map(|text| {
            Filter::parse(&text)
                .map(Arc::new)
                .map_err(|error| ClientError::new(ErrorCode::BadFilter, error.to_string()))
        })
        .transpose()
}

/// The `presence=1` parameter of a subscribe (`1`/`true` or `0`/`false`; absent: false).
pub(crate) fn query_presence(pairs: &[(Cow<'_, str>, Cow<'_, str>)]) -> Result<bool, ClientError> {
    match query_value(pairs, "presence").as_deref() {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(_) => Err(ClientError::new(
            ErrorCode::BadRequest,
            "presence must be 1 or 0",
        )),
    }
}

/// Refuses a query string that does not URL-decode: `bad_channel` when it is a `channel`,
/// `bad_request` otherwise. Checked once per request, before any route reads the query.
pub(crate) fn check_query<B>(request: &Request<B>) -> Result<(), ClientError> {
    let Some(query) = request.uri().query() else {
        return Ok(());
    };
    match pgpush_protocol::query_pairs(query) {
        Ok(_) => Ok(()),
        Err((name, error)) if name == "channel" => Err(bad_channel_encoding(error)),
        Err((name, error)) => Err(ClientError::new(
            ErrorCode::BadRequest,
            format!("query parameter {name:?}: {error}"),
        )),
    }
}

/// The refusal of a channel name that does not URL-decode, on every route.
pub(crate) fn bad_channel_encoding(error: UrlDecodeError) -> ClientError {
    ClientError::new(ErrorCode::BadChannel, format!("channel name: {error}"))
}

/// Every `channel=` of the query, validated, checked against the client's grant and the
/// subscription limit.
pub(crate) fn query_channels(
    limits: &Limits,
    pairs: &[(Cow<'_, str>, Cow<'_, str>)],
    grant: &Grant,
) -> Result<Vec<Channel>, ClientError> {
    let mut channels: Vec<Channel> = Vec::new();
    for (_, value) in pairs.iter().filter(|(name, _)| name == "channel") {
        let channel = grant.channel(Action::Subscribe, value)?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
        limits.check_subscriptions(0, channels.len())?;
    }
    Ok(channels)
}

/// The one `channel` a route about a single channel takes (subscribe permission checked);
/// `bad_request` showing `usage` for none or several.
pub(crate) fn query_one_channel(
    limits: &Limits,
    pairs: &[(Cow<'_, str>, Cow<'_, str>)],
    grant: &Grant,
    usage: &str,
) -> Result<Channel, ClientError> {
    let mut channels = query_channels(limits, pairs, grant)?;
    match (channels.pop(), channels.is_empty()) {
        (Some(channel), true) => Ok(channel),
        _ => Err(ClientError::new(ErrorCode::BadRequest, usage)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(peer: &str, forwarded: &[&str], trusted: &[&str], expected: &str) {
        let mut headers = http::HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        let got = client_address(peer.parse().unwrap(), &headers, &trusted);
        assert_eq!(
            got.to_string(),
            expected,
            "{peer} {forwarded:?} {trusted:?}"
        );
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        check("203.0.113.9", &["1.2.3.4"], &[], "203.0.113.9");
        check("203.0.113.9", &["1.2.3.4"], &["10.0.0.0/8"], "203.0.113.9");
        check("10.0.0.2", &["1.2.3.4"], &["10.0.0.0/8"], "1.2.3.4");
        check(
            "10.0.0.2",
            &["6.6.6.6, 1.2.3.4, 10.0.0.7"],
            &["10.0.0.0/8"],
            "1.2.3.4",
        );
        check(
            "10.0.0.2",
            &["6.6.6.6", "1.2.3.4"],
            &["10.0.0.0/8"],
            "1.2.3.4",
        );
        check("10.0.0.2", &[], &["10.0.0.0/8"], "10.0.0.2");
        check("10.0.0.2", &["garbage"], &["10.0.0.0/8"], "10.0.0.2");
        check(
            "::ffff:127.0.0.1",
            &["9.9.9.9"],
            &["127.0.0.1/32"],
            "9.9.9.9",
        );
    }
}
