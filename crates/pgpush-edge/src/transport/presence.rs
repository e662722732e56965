//! `GET /v1/presence`: who is present in a channel, on every node of the cluster.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pgpush_protocol::ErrorCode;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{
    admission::policy::Grant,
    error::ClientError,
    http::{Body, json, query_one_channel, query_pairs},
    services::Services,
};

/// `GET /v1/presence?channel=<ch>`: `{"channel":"<ch>","count":<n>,"clients":[{"id","user",
/// "info"}]}`, oldest first. The token's subscribe permission for the channel applies.
pub(crate) async fn presence(
    services: Arc<Services>,
    request: Request<Incoming>,
    grant: Grant,
) -> Result<Response<Body>, ClientError> {
    let pairs = query_pairs(&request);
    let channel = query_one_channel(
        &services.limits,
        &pairs,
        &grant,
        "presence takes one channel: /v1/presence?channel=<name>",
    )?;
    let present = services
        .presence
        .list(&channel)
        .await
        .map_err(ClientError::database)?;
    #[derive(Serialize)]
    struct Client<'a> {
        id: &'a str,
        user: Option<&'a str>,
        info: Option<&'a RawValue>,
    }
    #[derive(Serialize)]
    struct Answer<'a> {
        channel: &'a str,
        count: usize,
        clients: Vec<Client<'a>>,
    }
    let infos: Vec<Option<Box<RawValue>>> = present
        .iter()
        .map(|p| p.info.clone().and_then(|i| RawValue::from_string(i).ok()))
        .collect();
    let answer = Answer {
        channel: channel.as_str(),
        count: present.len(),
        clients: present
            .iter()
            .zip(&infos)
            .map(|(p, info)| Client {
                id: &p.id,
                user: p.user.as_deref(),
                info: info.as_deref(),
            })
            .collect(),
    };
    let body = serde_json::to_vec(&answer)
        .map_err(|_| ClientError::new(ErrorCode::Internal, "could not encode the answer"))?;
    Ok(json(StatusCode::OK, body.into()))
}
