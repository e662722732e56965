//! The Hippie routes: the original Web::Hippie::PubSub protocol on the same URLs, so its
//! unchanged browser clients (hippie.js, hippie.pipe.js, jquery.ev.js, DUI.Stream) keep working.
//! Built on `transport` (WebSocket plumbing, stream bodies, ends), `services`, `http`, `core`,
//! `admission` and `ops`; refusals are plain text, as the original answered.

mod mxhr;
mod poll;
mod publish;
mod queue;
mod ws;

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use pgpush_protocol::{
    ErrorCode,
    hippie::{HippiePathError, HippieRoute, error_message, is_valid_client_id, parse_hippie_path},
};

pub(crate) use queue::Registry;

use crate::{
    admission::policy::{Action, Grant},
    error::ClientError,
    http::{
        Body, ConnInfo, bad_channel_encoding, check_query, client_address, query_pairs, status,
        text,
    },
    services::{Services, drain::Heartbeat},
    settings::HippieSettings,
};

/// Which transport created a client's queue; it decides how long the queue outlives its
/// connection (WebSocket clients reconnect fast, MXHR and poll clients slowly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CreatedOver {
    WebSocket,
    Stream,
}

/// The Hippie side of a node: client queues, counters, and the node's MXHR boundary.
#[derive(Debug)]
pub(crate) struct Hippie {
    pub(crate) config: HippieSettings,
    pub(crate) registry: Arc<Registry>,
    /// The node's components.
    pub(crate) services: Arc<Services>,
    /// Ticks every keepalive interval (never when it is zero).
    pub(crate) keepalive: Heartbeat,
    /// The node's name: where a poll is redirected when the request names no host.
    pub(crate) node_id: String,
    /// One boundary for every MXHR stream of this node, so each message's MXHR part is encoded
    /// once and shared (see `Message::mxhr_part`).
    pub(crate) boundary: String,
    pub(crate) events_published: AtomicU64,
}

impl Hippie {
    pub(crate) fn new(
        config: HippieSettings,
        registry: Arc<Registry>,
        services: Arc<Services>,
        keepalive: Heartbeat,
        node_id: String,
    ) -> Hippie {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let boundary = (0..8)
            .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
            .collect();
        Hippie {
            config,
            registry,
            services,
            keepalive,
            node_id,
            boundary,
            events_published: AtomicU64::new(0),
        }
    }

    /// True when `path` is under the Hippie prefix.
    pub(crate) fn owns(&self, path: &str) -> bool {
        path == self.config.prefix
            || path
                .strip_prefix(&self.config.prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The path after `<prefix>/`.
    pub(crate) fn rest<'a>(&self, path: &'a str) -> &'a str {
        path.strip_prefix(&self.config.prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or("")
    }

    /// How long a queue outlives its connection.
    pub(crate) fn window(&self, created_over: CreatedOver) -> Duration {
        match created_over {
            CreatedOver::WebSocket => self.config.ws_window,
            CreatedOver::Stream => self.config.window,
        }
    }

    /// Attaches to (or creates) the queue of `client_id` on `channel` for this request's client,
    /// with the window of the transport that creates it.
    pub(crate) async fn open_queue(
        &self,
        channel: &pgpush_protocol::Channel,
        client_id: &str,
        info: &RequestInfo,
        created_over: CreatedOver,
    ) -> Result<queue::Attachment, ClientError> {
        self.registry
            .attach(channel, client_id, info.address, self.window(created_over))
            .await
            .map_err(|error| ClientError::new(error.code(), error.to_string()))
    }

    fn stats_text(&self) -> String {
        format!(
            "current_subscribers: {}\ntotal_subscribers: {}\nevents_published: {}\n",
            self.registry.len(),
            self.registry.created(),
            self.events_published.load(Ordering::Relaxed),
        )
    }
}

/// A refused Hippie request as the original answered: the status and a plain-text reason.
fn refusal(error: &ClientError) -> Response<Body> {
    text(status(error.code), Bytes::from(error.reason.clone()))
}

/// An error as a Hippie message, for the streams and WebSocket frames.
pub(crate) fn error_text(error: &ClientError) -> Bytes {
    error_message(error.code.as_str(), &error.reason)
}

/// What Hippie handlers return.
pub(crate) type HippieResult = Result<Response<Body>, ClientError>;

/// Routes a request under the Hippie prefix; `rest` is the raw path after `<prefix>/`.
pub(crate) async fn route(
    hippie: Arc<Hippie>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
    rest: &str,
    grant: Result<Grant, ClientError>,
) -> Response<Body> {
    dispatch(hippie, conn, request, rest, grant)
        .await
        .unwrap_or_else(|error| refusal(&error))
}

async fn dispatch(
    hippie: Arc<Hippie>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
    rest: &str,
    grant: Result<Grant, ClientError>,
) -> HippieResult {
    check_query(&request)?;
    let route = match parse_hippie_path(rest) {
        Ok(route) => route,
        Err(HippiePathError::NotFound) => {
            return Err(ClientError::new(ErrorCode::NotFound, "Not found"));
        }
        Err(HippiePathError::BadEncoding(error)) => return Err(bad_channel_encoding(error)),
    };
    let method = request.method().clone();
    let (name, allowed) = match &route {
        HippieRoute::Stats => {
            if method != Method::GET {
                return Err(ClientError::new(
                    ErrorCode::MethodNotAllowed,
                    "Method not allowed",
                ));
            }
            let mut response = text(StatusCode::OK, Bytes::from(hippie.stats_text()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            return Ok(response);
        }
        HippieRoute::Publish(name) => (name, method == Method::GET || method == Method::POST),
        HippieRoute::WebSocket(name) | HippieRoute::Mxhr(name) | HippieRoute::Poll(name) => {
            (name, method == Method::GET)
        }
    };
    if !allowed {
        return Err(ClientError::new(
            ErrorCode::MethodNotAllowed,
            "Method not allowed",
        ));
    }
    if name.is_empty() {
        return Err(ClientError::new(
            ErrorCode::BadRequest,
            "Channel is required",
        ));
    }
    let action = match route {
        HippieRoute::Publish(_) => Action::Publish,
        _ => Action::Subscribe,
    };
    let grant = grant?;
    let channel = grant.channel(action, name)?;
    let request_info = RequestInfo::new(&hippie, &conn, &request, grant);
    match route {
        HippieRoute::WebSocket(_) => ws::upgrade(hippie, conn, request, channel, request_info),
        HippieRoute::Mxhr(_) => mxhr::open(hippie, conn, channel, request_info).await,
        HippieRoute::Poll(_) => poll::handle(hippie, conn, request, channel, request_info).await,
        HippieRoute::Publish(_) => publish::handle(hippie, request, channel, request_info).await,
        HippieRoute::Stats => unreachable!("answered above"),
    }
}

/// What every Hippie handler reads from the request.
#[derive(Debug)]
pub(crate) struct RequestInfo {
    /// `client_id` from the query, else from `X-Hippie-ClientId` (`/pub` also reads its form,
    /// between the two: see [`RequestInfo::client_id_with_form`]).
    pub(crate) client_id: Option<String>,
    query_client_id: Option<String>,
    header_client_id: Option<String>,
    /// The client's address (proxy-aware).
    pub(crate) address: IpAddr,
    /// What the client may do.
    pub(crate) grant: Grant,
}

impl RequestInfo {
    fn new(
        hippie: &Hippie,
        conn: &ConnInfo,
        request: &Request<Incoming>,
        grant: Grant,
    ) -> RequestInfo {
        let from_query = query_pairs(request)
            .into_iter()
            .find(|(name, _)| name == "client_id")
            .map(|(_, value)| value.into_owned());
        let from_header = request
            .headers()
            .get("x-hippie-clientid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        RequestInfo {
            client_id: from_query.clone().or_else(|| from_header.clone()),
            query_client_id: from_query,
            header_client_id: from_header,
            address: client_address(
                conn.peer.ip(),
                request.headers(),
                &hippie.services.lifetimes.settings.trusted_proxies,
            ),
            grant,
        }
    }
}

impl RequestInfo {
    /// The client id in the original's order: query, then form field, then header.
    pub(crate) fn client_id_with_form(&self, form: Option<String>) -> Option<String> {
        self.query_client_id
            .clone()
            .or(form)
            .or_else(|| self.header_client_id.clone())
    }
}

/// A new client id: 128 random bits as 32 hex characters (URL-safe, unguessable).
pub(crate) fn new_client_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Checks a client-supplied id; a refusal names the rule.
pub(crate) fn checked_client_id(id: &str) -> Result<(), ClientError> {
    if is_valid_client_id(id) {
        Ok(())
    } else {
        Err(ClientError::new(
            ErrorCode::BadRequest,
            "client_id must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ -",
        ))
    }
}

/// The origin check of `--hippie-trusted-origin`: a request with an `Origin` that does not
/// match gets 403. Requests without `Origin` (not from a browser) pass.
pub(crate) fn check_origin(hippie: &Hippie, headers: &HeaderMap) -> Result<(), ClientError> {
    let (Some(pattern), Some(origin)) =
        (&hippie.config.trusted_origin, headers.get(header::ORIGIN))
    else {
        return Ok(());
    };
    if origin.to_str().is_ok_and(|origin| pattern.is_match(origin)) {
        Ok(())
    } else {
        Err(ClientError::new(ErrorCode::Forbidden, "origin not allowed"))
    }
}

/// Adds the no-cache headers of the original's MXHR and poll responses.
pub(crate) fn no_cache(headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
    );
    if let Ok(now) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())) {
        headers.insert(header::LAST_MODIFIED, now);
    }
}

/// Seconds since the Unix epoch, with fraction.
pub(crate) fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
