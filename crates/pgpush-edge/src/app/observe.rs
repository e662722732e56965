//! The operator's routes, on the client port and on the metrics address: `/healthz`, `/readyz`,
//! `/metrics`, `/v1/stats`.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use pgpush_protocol::{ErrorCode, StatsSnapshot};

use crate::{
    app::Node,
    error::ClientError,
    http::{Body, error_response, json, text},
    ops::metrics::{self, NodeState},
};

/// The answer to a GET of `path`, when it is one of the operator's routes.
pub(crate) fn answer(node: &Node, path: &str) -> Option<Response<Body>> {
    Some(match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match node.not_ready_reason() {
            None => json(StatusCode::OK, Bytes::from_static(br#"{"ready":true}"#)),
            Some(reason) => error_response(&ClientError::new(ErrorCode::Unavailable, reason)),
        },
        "/metrics" => {
            let exposition = metrics::render(&node.services.stats, node_state(node));
            let mut response = text(StatusCode::OK, exposition);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/v1/stats" => json(
            StatusCode::OK,
            Bytes::from(serde_json::to_vec(&stats_snapshot(node)).unwrap_or_default()),
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
    Ok(match answer(&node, path) {
        Some(response) if method == Method::GET => response,
        Some(_) => error_response(&ClientError::method_not_allowed(method)),
        None => error_response(&ClientError::new(
            ErrorCode::NotFound,
            format!("no route for {method} {path}"),
        )),
    })
}

/// The `/v1/stats` document.
fn stats_snapshot(node: &Node) -> StatsSnapshot {
    let services = &node.services;
    let mut snapshot = services.stats.snapshot(
        &node.node_id,
        services.hub.listener_up(),
        services.hub.channels_listened(),
        hippie_queues(node),
    );
    snapshot.durable_head = services.durable.head();
    snapshot.durable_epoch = services.durable.epoch().map(|epoch| format!("{epoch:x}"));
    snapshot.sequencer = node.sequencer.as_ref().is_some_and(|s| s.is_leader());
    snapshot
}

/// What the metrics report beside the counters.
fn node_state(node: &Node) -> NodeState {
    let services = &node.services;
    NodeState {
        node: node.node_id.clone(),
        sockets: services.limits.open_sockets() as u64,
        channels_listened: services.hub.channels_listened() as u64,
        listener_up: services.hub.listener_up(),
        sequencer_leader: node.sequencer.as_ref().is_some_and(|s| s.is_leader()),
        draining: services.lifetimes.shutdown.is_cancelled(),
        hippie_queues: hippie_queues(node) as u64,
        durable_head: services.durable.head(),
        pool: services.publishing.publisher().pool_status(),
    }
}

fn hippie_queues(node: &Node) -> usize {
    node.hippie.as_ref().map_or(0, |h| h.registry.len())
}
