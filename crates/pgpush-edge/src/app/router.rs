//! The router: which handler answers a request, the client's admission before it, the routes
//! the binary adds, and the refusals of routes that do not exist.

use std::{convert::Infallible, pin::Pin, sync::Arc};

use http::{Method, Request, Response};
use hyper::body::Incoming;
use pgpush_pg::Publisher;
use pgpush_protocol::ErrorCode;
use tracing::debug;

use crate::{
    admission::policy::Grant,
    app::{Node, observe},
    error::ClientError,
    hippie,
    http::{Body, ConnInfo, assets, check_query, error_response, query_pairs},
    transport,
};

/// What an extension's route answers with.
pub type ExtensionFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, ClientError>> + Send>>;

/// Pages and GET routes the binary adds to a node (the location demo's), so the serving library
/// knows nothing of them.
pub trait Extension: Send + Sync + std::fmt::Debug + 'static {
    /// HTML pages, (path, text), served on GET and HEAD.
    fn pages(&self) -> &'static [(&'static str, &'static str)];
    /// The paths of the GET routes [`Extension::get`] answers; other methods get 405.
    fn routes(&self) -> &'static [&'static str];
    /// Answers a GET of one of [`Extension::routes`], with the node's publish pool at hand.
    fn get(&self, path: &str, publisher: Publisher) -> ExtensionFuture;
}

/// The routes every node has, for the 405 of a method they do not take.
const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/stats",
    "/v1/ws",
    "/v1/sse",
    "/v1/poll",
    "/v1/history",
    "/v1/presence",
];

/// Routes one request.
pub(crate) async fn route(
    node: Arc<Node>,
    conn: Arc<ConnInfo>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let peer = conn.peer;
    let page = assets::get(&path, &[]).or_else(|| {
        node.extensions
            .iter()
            .find_map(|extension| assets::get(&path, extension.pages()))
    });
    if let Some(page) = page {
        return Ok(if method == Method::GET || method == Method::HEAD {
            page
        } else {
            error_response(&ClientError::method_not_allowed(&method))
        });
    }
    if let Some(hippie) = node.hippie.as_ref().filter(|h| h.owns(&path)) {
        let rest = hippie.rest(&path).to_owned();
        let grant = admit(&node, &request);
        return Ok(hippie::route(hippie.clone(), conn, request, &rest, grant).await);
    }
    let extension = node
        .extensions
        .iter()
        .find(|extension| extension.routes().contains(&path.as_str()));
    let services = node.services.clone();
    let result = match (&method, path.as_str()) {
        _ if let Err(error) = check_query(&request) => Err(error),
        (&Method::GET, "/metrics") if node.metrics_apart => Err(ClientError::new(
            ErrorCode::NotFound,
            "metrics are served on the node's metrics address (--metrics-listen)",
        )),
        // Balancers probe without tokens; the node's numbers are for token holders here (and
        // for anyone who reaches the metrics address, which operators keep private).
        (&Method::GET, "/healthz" | "/readyz") => {
            observe::answer(&node, &path).ok_or_else(|| ClientError::method_not_allowed(&method))
        }
        (&Method::GET, "/metrics" | "/v1/stats") => admit(&node, &request).and_then(|_| {
            observe::answer(&node, &path).ok_or_else(|| ClientError::method_not_allowed(&method))
        }),
        (&Method::GET, _) if let Some(extension) = extension => {
            let publisher = services.publishing.publisher().clone();
            extension.get(&path, publisher).await
        }
        (&Method::GET, "/v1/ws") => admit(&node, &request)
            .and_then(|grant| transport::ws::upgrade(services, conn, request, grant)),
        (&Method::GET, "/v1/sse") => match admit(&node, &request) {
            Ok(grant) => transport::sse::open(services, conn, request, grant).await,
            Err(error) => Err(error),
        },
        (&Method::GET, "/v1/poll") => match admit(&node, &request) {
            Ok(grant) => transport::poll::poll(services, conn, request, grant).await,
            Err(error) => Err(error),
        },
        (&Method::GET, "/v1/history") => match admit(&node, &request) {
            Ok(grant) => transport::history::history(services, request, grant).await,
            Err(error) => Err(error),
        },
        (&Method::GET, "/v1/presence") => match admit(&node, &request) {
            Ok(grant) => transport::presence::presence(services, request, grant).await,
            Err(error) => Err(error),
        },
        (&Method::POST, p) if transport::admin::ROUTES.contains(&p) => {
            match services.admission.admit_operator(request.headers()) {
                Ok(()) => transport::admin::command(services, request, p).await,
                Err(error) => Err(error),
            }
        }
        (&Method::POST, p) if p.starts_with("/v1/publish/") => match admit(&node, &request) {
            Ok(grant) => {
                let channel = &p["/v1/publish/".len()..];
                transport::publish::http_publish(services, conn, request, channel, grant).await
            }
            Err(error) => Err(error),
        },
        (_, p)
            if ROUTES.contains(&p)
                || transport::admin::ROUTES.contains(&p)
                || extension.is_some()
                || p.starts_with("/v1/publish/") =>
        {
            Err(ClientError::method_not_allowed(&method))
        }
        _ => Err(ClientError::new(
            ErrorCode::NotFound,
            format!("no route for {method} {path}"),
        )),
    };
    Ok(result.unwrap_or_else(|error| {
        debug!(code = %error.code, reason = %error.reason, %method, %path, %peer, "request refused");
        error_response(&error)
    }))
}

/// Checks a client request's origin and token (`Authorization: Bearer`, or `?token=`).
fn admit(node: &Node, request: &Request<Incoming>) -> Result<Grant, ClientError> {
    let pairs = query_pairs(request);
    let token = pairs
        .iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.as_ref());
    let grant = node.services.admission.admit(request.headers(), token)?;
    if let Some(subject) = grant.subject() {
        tracing::Span::current().record("subject", subject);
    }
    Ok(grant)
}
