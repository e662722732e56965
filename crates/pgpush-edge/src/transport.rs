//! Client transports: thin adapters from a subscriber's queue of shared messages to one wire format.

pub(crate) mod poll;
pub(crate) mod sse;
pub(crate) mod stream_body;
pub(crate) mod websocket;
pub(crate) mod ws;
