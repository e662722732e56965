//! Client transports: thin adapters from a subscriber's queue of shared messages to one wire
//! format (`ws` over `websocket`, `sse` over `stream_body`, `poll`), the HTTP publish and history
//! routes, and why a connection ends (`ends`). They import `services`, `http`, `core`,
//! `admission`, `ops`.

pub(crate) mod ends;
pub(crate) mod history;
pub(crate) mod poll;
pub(crate) mod publish;
pub(crate) mod sse;
pub(crate) mod stream_body;
pub(crate) mod websocket;
pub(crate) mod ws;
