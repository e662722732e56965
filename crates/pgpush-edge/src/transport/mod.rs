//! Client transports: thin adapters from a subscriber's queue of shared messages to one wire
//! format (`ws` over `websocket`, `sse` over `stream_body`, `poll`), the HTTP publish, history,
//! presence and admin routes, and why a connection ends (`ends`). They import `services`, `http`,
//! `core`, `admission`, `ops`.

use std::sync::Arc;

use pgpush_protocol::Channel;

use crate::{
    admission::policy::Grant,
    core::{presence::Identity, session::Session},
    services::Services,
};

pub(crate) mod admin;
pub(crate) mod ends;
pub(crate) mod history;
pub(crate) mod poll;
pub(crate) mod presence;
pub(crate) mod publish;
pub(crate) mod sse;
pub(crate) mod stream_body;
pub(crate) mod websocket;
pub(crate) mod ws;

/// Makes `session` present in `channels` as `grant`'s user (its token's `sub` and `info`);
/// returns the connection's presence id.
pub(crate) fn be_present(
    services: &Services,
    session: &mut Session,
    grant: &Grant,
    channels: &[Channel],
) -> Option<Arc<str>> {
    let identity = Identity {
        user: grant.subject().map(Arc::from),
        info: grant.info().cloned(),
    };
    session.be_present(&services.presence, &identity, channels);
    session.presence_id().cloned()
}
