//! HTTP plumbing: the router, the one place errors become responses, and small helpers.

use std::{
    borrow::Cow,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use pgpush_protocol::{Channel, ErrorCode, UrlDecodeError, http_error_body};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    Node, assets, hippie, metrics,
    policy::{Action, Grant},
    publish, transport,
};

/// Every response body: full bytes or a stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// What the server knows about the TCP connection a request came on.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The peer's address.
    pub(crate) peer: SocketAddr,
    /// Cancelled to cut the connection (a slow consumer); the server drops it after a grace.
    pub(crate) kill: CancellationToken,
    /// Its place under the connection limits: held as long as anything serves the socket, an
    /// upgraded WebSocket included (`None` on the metrics address).
    pub(crate) _permit: Option<crate::limits::ConnectionPermit>,
}

/// An error answered to a client: a stable code and a human reason, never internals.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) reason: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub(crate) retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, reason: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The JSON error response `{"error":"<code>","reason":"<text>"}`.
    pub(crate) fn into_response(self) -> Response<Body> {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json(status, http_error_body(self.code, &self.reason));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Routes one request.
pub(crate) async fn route(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let conn_for_log = conn.clone();
    if let Some(page) = assets::get(&path) {
        return Ok(if method == Method::GET || method == Method::HEAD {
            page
        } else {
            not_allowed(&method).into_response()
        });
    }
    let result = match (&method, path.as_str()) {
        (_, p) if node.hippie.as_ref().is_some_and(|h| h.owns(p)) => {
            let rest = node
                .hippie
                .as_ref()
                .map(|h| h.rest(p).to_owned())
                .unwrap_or_default();
            let grant = admit(&node, &request);
            return Ok(hippie::route(node, conn, request, &rest, grant).await);
        }
        _ if let Err(error) = check_query(&request) => Err(error),
        (&Method::GET, "/metrics") if node.config.metrics_listen.is_some() => Err(ApiError::new(
            ErrorCode::NotFound,
            "metrics are served on the node's metrics address (--metrics-listen)",
        )),
        // Balancers probe without tokens; the node's numbers are for token holders here (and
        // for anyone who reaches the metrics address, which operators keep private).
        (&Method::GET, "/healthz" | "/readyz") => {
            Ok(observe(&node, &path).unwrap_or_else(|| not_allowed(&method).into_response()))
        }
        (&Method::GET, "/metrics" | "/v1/stats") => admit(&node, &request)
            .map(|_| observe(&node, &path).unwrap_or_else(|| not_allowed(&method).into_response())),
        (&Method::GET, "/demo/people") => demo_people(&node).await,
        (&Method::GET, "/v1/ws") => match admit(&node, &request) {
            Ok(grant) => transport::ws::upgrade(node, conn, request, grant),
            Err(error) => Err(error),
        },
        (&Method::GET, "/v1/sse") => match admit(&node, &request) {
            Ok(grant) => transport::sse::open(node, conn, request, grant).await,
            Err(error) => Err(error),
        },
        (&Method::GET, "/v1/poll") => match admit(&node, &request) {
            Ok(grant) => transport::poll::poll(node, conn, request, grant).await,
            Err(error) => Err(error),
        },
        (&Method::POST, p) if p.starts_with("/v1/publish/") => match admit(&node, &request) {
            Ok(grant) => {
                publish::http_publish(node, conn, request, &p["/v1/publish/".len()..], grant).await
            }
            Err(error) => Err(error),
        },
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/v1/stats" | "/v1/ws" | "/v1/sse" | "/v1/poll"
            | "/demo/people",
        ) => Err(not_allowed(&method)),
        (_, p) if p.starts_with("/v1/publish/") => Err(not_allowed(&method)),
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no route for {method} {path}"),
        )),
    };
    Ok(result.unwrap_or_else(|error| {
        debug!(code = %error.code, reason = %error.reason, %method, %path, peer = %conn_for_log.peer, "request refused");
        error.into_response()
    }))
}

/// The location demo's people, for the map page to start from (nodes started with `--demo`).
async fn demo_people(node: &Node) -> Result<Response<Body>, ApiError> {
    if !node.config.demo {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "the location demo is off on this node (start it with --demo)",
        ));
    }
    let client = node.publisher.client().await.map_err(|error| {
        ApiError::new(
            ErrorCode::Unavailable,
            format!("database unavailable: {error}"),
        )
    })?;
    let people = pgpush_demo::people(&client).await.map_err(|error| {
        debug!(%error, "demo snapshot failed");
        ApiError::new(
            ErrorCode::Unavailable,
            "the location demo is not set up in this database (run `pgpush demo setup`)",
        )
    })?;
    Ok(json(StatusCode::OK, Bytes::from(people)))
}

fn not_allowed(method: &Method) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("method {method} is not allowed on this route"),
    )
}

/// Checks a client request's origin and token (`Authorization: Bearer`, or `?token=`).
fn admit(node: &Node, request: &Request<Incoming>) -> Result<Grant, ApiError> {
    let pairs = query_pairs(request);
    let token = pairs
        .iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.as_ref());
    let grant = node.admission.admit(request.headers(), token)?;
    if let Some(subject) = grant.subject() {
        tracing::Span::current().record("subject", subject);
    }
    Ok(grant)
}

/// The operator's routes, served on the client port and on the metrics address:
/// `/healthz`, `/readyz`, `/metrics`, `/v1/stats` (GET).
pub(crate) fn observe(node: &Node, path: &str) -> Option<Response<Body>> {
    Some(match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(node),
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics::render(node));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/v1/stats" => json(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&node.stats_snapshot()).unwrap_or_default()),
        ),
        _ => return None,
    })
}

/// Routes a request on the metrics address: the operator's routes only.
pub(crate) async fn metrics_route(
    node: Arc<Node>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path();
    let method = request.method();
    Ok(match observe(&node, path) {
        Some(response) if method == Method::GET => response,
        Some(_) => not_allowed(method).into_response(),
        None => ApiError::new(ErrorCode::NotFound, format!("no route for {method} {path}"))
            .into_response(),
    })
}

fn readyz(node: &Node) -> Response<Body> {
    match node.not_ready_reason() {
        None => json(StatusCode::OK, Bytes::from_static(br#"{"ready":true}"#)),
        Some(reason) => ApiError::new(ErrorCode::Unavailable, reason).into_response(),
    }
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

/// Refuses a query string that does not URL-decode: `bad_channel` when it is a `channel`,
/// `bad_request` otherwise. Checked once per request, before any route reads the query.
pub(crate) fn check_query<B>(request: &Request<B>) -> Result<(), ApiError> {
    let Some(query) = request.uri().query() else {
        return Ok(());
    };
    match pgpush_protocol::query_pairs(query) {
        Ok(_) => Ok(()),
        Err((name, error)) if name == "channel" => Err(bad_channel_encoding(error)),
        Err((name, error)) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("query parameter {name:?}: {error}"),
        )),
    }
}

/// The refusal of a channel name that does not URL-decode, on every route.
pub(crate) fn bad_channel_encoding(error: UrlDecodeError) -> ApiError {
    ApiError::new(ErrorCode::BadChannel, format!("channel name: {error}"))
}

/// Every `channel=` of the query, validated, checked against the client's grant and the
/// subscription limit.
pub(crate) fn query_channels(
    node: &Node,
    pairs: &[(Cow<'_, str>, Cow<'_, str>)],
    grant: &Grant,
) -> Result<Vec<Channel>, ApiError> {
    let mut channels: Vec<Channel> = Vec::new();
    for (_, value) in pairs.iter().filter(|(name, _)| name == "channel") {
        let channel = grant.channel(Action::Subscribe, value)?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
        check_subscription_count(node, 0, channels.len())?;
    }
    Ok(channels)
}

/// `limit_exceeded` when a connection holding `existing` channels would hold more than the
/// node's `--max-subscriptions` after `new` more.
pub(crate) fn check_subscription_count(
    node: &Node,
    existing: usize,
    new: usize,
) -> Result<(), ApiError> {
    let max = node.config.security.max_subscriptions;
    if existing + new > max {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("a connection may subscribe to at most {max} channels"),
        ));
    }
    Ok(())
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
