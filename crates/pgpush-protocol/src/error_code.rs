//! The stable error codes clients branch on, and the HTTP status each one maps to.

use std::fmt;

/// An error a client can receive, as a stable string (`bad_channel`) plus an HTTP status.
///
/// The strings are part of the public protocol (`docs/protocol.md`); never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A WebSocket frame or request that is not what the protocol expects.
    BadFrame,
    /// A WebSocket frame whose `op` is not one of the known operations.
    UnknownOp,
    /// A channel name that is empty, too long or holds NUL.
    BadChannel,
    /// A payload that PostgreSQL cannot carry (not UTF-8, or holds NUL).
    BadPayload,
    /// A query parameter or header with a value that does not parse.
    BadRequest,
    /// A payload above the size limit of its delivery mode.
    TooLarge,
    /// The channel is reserved or outside what the client may touch.
    Forbidden,
    /// Authentication is required or the credentials are not valid.
    Unauthorized,
    /// Too many requests; retry later.
    RateLimited,
    /// The database (or the node's LISTEN connection) is unavailable right now.
    Unavailable,
    /// The node is draining; reconnect elsewhere.
    Draining,
    /// The client did not read fast enough and its bounded queue overflowed.
    SlowConsumer,
    /// A limit on the connection (subscriptions, connections) was reached.
    LimitExceeded,
    /// No such route.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The feature exists in the protocol but is not available on this server.
    NotImplemented,
    /// A cursor that this deployment did not issue or cannot parse.
    BadCursor,
    /// A subscription's filter that does not parse, or is above its bounds.
    BadFilter,
    /// A failure inside the server; details are in its log, never in the response.
    Internal,
    /// The server disconnected the client's user (`pgpush.disconnect`): do not reconnect with
    /// the same token.
    Disconnected,
}

impl ErrorCode {
    /// The code's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::BadPayload => "bad_payload",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Draining => "draining",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::BadCursor => "bad_cursor",
            ErrorCode::BadFilter => "bad_filter",
            ErrorCode::Internal => "internal",
            ErrorCode::Disconnected => "disconnected",
        }
    }

    /// The HTTP status a response with this error carries.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame
            | ErrorCode::UnknownOp
            | ErrorCode::BadChannel
            | ErrorCode::BadPayload
            | ErrorCode::BadRequest
            | ErrorCode::BadCursor
            | ErrorCode::BadFilter => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::Disconnected => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited | ErrorCode::LimitExceeded | ErrorCode::SlowConsumer => 429,
            ErrorCode::Internal => 500,
            ErrorCode::NotImplemented => 501,
            ErrorCode::Unavailable | ErrorCode::Draining => 503,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
