//! `POST /v1/admin/{disconnect,unsubscribe,revoke}`: server-side control over HTTP, for the
//! operator's key only; each calls the SQL function of the same name, so every node acts.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pgpush_protocol::{Channel, ErrorCode};
use serde::Deserialize;

use crate::{
    error::ClientError,
    http::{Body, json, read_body},
    services::Services,
};

/// The largest admin request body.
const MAX_BODY: usize = 4096;

/// The admin routes.
pub(crate) const ROUTES: &[&str] = &[
    "/v1/admin/disconnect",
    "/v1/admin/unsubscribe",
    "/v1/admin/revoke",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Disconnect {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Unsubscribe {
    user: String,
    channel: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    jti: String,
    /// Seconds since the Unix epoch: the token's `exp`, normally.
    until: f64,
}

/// Runs one admin command (the caller checked the operator's key); answers `{"ok":true}`.
pub(crate) async fn command(
    services: Arc<Services>,
    request: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ClientError> {
    let body = read_body(request, MAX_BODY).await?;
    let store = &services.control.store;
    let done = match path {
        "/v1/admin/disconnect" => {
            let Disconnect { user } = parse(&body, r#"{"user":"<sub>"}"#)?;
            store.disconnect(&user).await
        }
        "/v1/admin/unsubscribe" => {
            let Unsubscribe { user, channel } =
                parse(&body, r#"{"user":"<sub>","channel":"<channel>"}"#)?;
            Channel::new(&channel).map_err(|error| {
                ClientError::new(ErrorCode::BadChannel, format!("{channel:?}: {error}"))
            })?;
            store.unsubscribe(&user, &channel).await
        }
        _ => {
            let Revoke { jti, until } = parse(&body, r#"{"jti":"<jti>","until":<unix seconds>}"#)?;
            if !until.is_finite() || until < 0.0 {
                return Err(ClientError::new(
                    ErrorCode::BadRequest,
                    "until must be seconds since the Unix epoch",
                ));
            }
            store.revoke_token(&jti, until).await
        }
    };
    done.map_err(ClientError::database)?;
    Ok(json(StatusCode::OK, Bytes::from_static(br#"{"ok":true}"#)))
}

/// The body as `T`, or `bad_request` showing the expected form.
fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], form: &str) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|error| {
        ClientError::new(
            ErrorCode::BadRequest,
            format!("the body must be JSON {form}: {error}"),
        )
    })
}
