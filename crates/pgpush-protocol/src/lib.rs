//! Sans-IO wire formats of pgpush: everything a client and a server say to each other, with no IO.
//!
//! This is the only crate that defines wire types with serde. Encoders here produce shared
//! [`bytes::Bytes`] so a message fanned out to many subscribers is encoded once per transport.

mod channel;
mod cursor;
mod error_code;
mod filter;
mod frame;
pub mod hippie;
mod message;
mod payload;
pub mod sse;
mod stats;
mod url;

pub use channel::{Channel, ChannelError, MAX_CHANNEL_BYTES, RESERVED_PREFIX};
pub use cursor::{CursorError, CursorKey, CursorPoint};
pub use error_code::ErrorCode;
pub use filter::{
    Filter, FilterError, GeoBox, MAX_FILTER_BYTES, MAX_FILTER_DEPTH, MAX_PATH_SEGMENTS,
    Path as FilterPath,
};
pub use frame::{
    ClientFrame, FrameError, MAX_HISTORY, ParsedFrame, PublishMode, ServerFrame, http_error_body,
    parse_client_frame, poll_reply, publish_reply, raw_reference,
};
pub use message::{Message, ResetReason};
pub use payload::{MAX_NOTIFY_PAYLOAD_BYTES, Payload};
pub use stats::{ConnectionCounts, StatsSnapshot};
pub use url::{UrlDecodeError, query_pairs, url_decode};
