//! The one error a client is told: a stable code, a human reason, and when to retry; each wire
//! renders it once (JSON in `http`, plain text in `hippie`, frames and events in `transport`).

use std::time::Duration;

use pgpush_protocol::{CursorError, ErrorCode};
use tracing::error;

/// A failure a client is answered with, never internals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub reason: String,
    /// Seconds after which a retry may succeed (rate limits).
    pub retry_after: Option<u64>,
}

impl ClientError {
    /// An error with `code` and `reason`.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> ClientError {
        ClientError {
            code,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// `rate_limited`, to retry after `wait` (whole seconds, at least one).
    pub fn rate_limited(wait: Duration, what: &str) -> ClientError {
        let seconds = retry_after_seconds(wait);
        ClientError {
            retry_after: Some(seconds),
            ..ClientError::new(
                ErrorCode::RateLimited,
                format!("too many publishes {what}; retry in {seconds} s"),
            )
        }
    }

    /// What a client is told when the database failed it; the internals go to the log only.
    pub fn database(failure: pgpush_pg::Error) -> ClientError {
        if failure.is_payload_too_large() {
            ClientError::new(ErrorCode::TooLarge, "payload too large")
        } else if failure.is_unavailable() || failure.is_queue_full() {
            ClientError::new(ErrorCode::Unavailable, "database unavailable; retry later")
        } else if failure.is_not_migrated() {
            ClientError::new(
                ErrorCode::Unavailable,
                "durable channels, presence and server-side control need the pgpush schema: run \
                 `pgpush migrate`",
            )
        } else {
            error!(error = %failure, "publish failed");
            ClientError::new(ErrorCode::Internal, "publish failed")
        }
    }

    /// `method_not_allowed` for `method` on a route that exists.
    pub fn method_not_allowed(method: &impl std::fmt::Display) -> ClientError {
        ClientError::new(
            ErrorCode::MethodNotAllowed,
            format!("method {method} is not allowed on this route"),
        )
    }
}

impl From<CursorError> for ClientError {
    fn from(error: CursorError) -> ClientError {
        let reason = match error {
            CursorError::Malformed => "malformed cursor",
            CursorError::Forged => "cursor was not issued by this deployment",
        };
        ClientError::new(ErrorCode::BadCursor, reason)
    }
}

/// Whole seconds to wait, at least 1 (`Retry-After` has no fractions).
fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_says_when_to_retry_in_whole_seconds() {
        let error = ClientError::rate_limited(Duration::from_millis(200), "from your address");
        assert_eq!(error.code, ErrorCode::RateLimited);
        assert_eq!(error.retry_after, Some(1));
        assert_eq!(
            error.reason,
            "too many publishes from your address; retry in 1 s"
        );
        assert_eq!(
            ClientError::rate_limited(Duration::from_millis(2100), "x").retry_after,
            Some(3)
        );
    }

    #[test]
    fn cursor_errors_are_bad_cursor() {
        let forged = ClientError::from(CursorError::Forged);
        assert_eq!(forged.code, ErrorCode::BadCursor);
        assert_eq!(forged.reason, "cursor was not issued by this deployment");
    }
}
