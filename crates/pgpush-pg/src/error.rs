//! The crate's one error type: opaque, with predicates for the cases callers branch on.

use std::{error::Error as StdError, fmt};

/// A failure talking to PostgreSQL.
///
/// Callers branch with the `is_*` predicates; everything else is for logs.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Unavailable,
    Rejected,
    PayloadTooLarge,
    QueueFull,
    NotMigrated,
    Invalid,
    Db,
}

impl Error {
    pub(crate) fn config(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Error {
        Error {
            kind: Kind::Config,
            source: Some(source.into()),
        }
    }

    pub(crate) fn unavailable(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Error {
        Error {
            kind: Kind::Unavailable,
            source: Some(source.into()),
        }
    }

    /// The pgpush schema is there but not as this build needs it.
    pub(crate) fn schema(detail: &'static str) -> Error {
        Error {
            kind: Kind::NotMigrated,
            source: Some(detail.into()),
        }
    }

    /// True when the database could not be reached (connect failure, closed connection, pool
    /// timeout) or refused this node (see [`Error::is_rejected`]): a client's request may
    /// succeed later.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable | Kind::Rejected)
    }

    /// True when the server refused the connection for a reason retrying does not change: a
    /// wrong password, no `pg_hba.conf` entry, a database or role that does not exist.
    pub fn is_rejected(&self) -> bool {
        self.kind == Kind::Rejected
    }

    /// True when a `NOTIFY` payload was above PostgreSQL's 7,999-byte limit.
    pub fn is_payload_too_large(&self) -> bool {
        self.kind == Kind::PayloadTooLarge
    }

    /// True when PostgreSQL's notification queue is full (SQLSTATE 54000).
    pub fn is_queue_full(&self) -> bool {
        self.kind == Kind::QueueFull
    }

    /// True when the `pgpush` schema is missing: run `pgpush migrate`.
    pub fn is_not_migrated(&self) -> bool {
        self.kind == Kind::NotMigrated
    }

    /// True when PostgreSQL refused the arguments (a bad channel name, a NULL payload).
    pub fn is_invalid(&self) -> bool {
        self.kind == Kind::Invalid
    }

    /// True for a bad connection URL.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(error: tokio_postgres::Error) -> Error {
        use tokio_postgres::error::SqlState;
        let kind = match error.code() {
            Some(code) if *code == SqlState::INVALID_PARAMETER_VALUE => Kind::PayloadTooLarge,
            // The constraints of pgpush.events (see migrations/0001).
            Some(code) if *code == SqlState::CHECK_VIOLATION => {
                match error.as_db_error().and_then(|e| e.constraint()) {
                    Some("events_payload_size") => Kind::PayloadTooLarge,
                    _ => Kind::Invalid,
                }
            }
            Some(code) if *code == SqlState::NOT_NULL_VIOLATION => Kind::Invalid,
            Some(code)
                if *code == SqlState::UNDEFINED_TABLE
                    || *code == SqlState::INVALID_SCHEMA_NAME
                    || *code == SqlState::UNDEFINED_COLUMN
                    || *code == SqlState::UNDEFINED_FUNCTION =>
            {
                Kind::NotMigrated
            }
            Some(code) if *code == SqlState::PROGRAM_LIMIT_EXCEEDED => Kind::QueueFull,
            Some(code)
                if code.code().starts_with("28")
                    || *code == SqlState::INVALID_CATALOG_NAME
                    || *code == SqlState::INSUFFICIENT_PRIVILEGE
                        && error
                            .as_db_error()
                            .is_some_and(|e| e.message().contains("CONNECT")) =>
            {
                Kind::Rejected
            }
            Some(code)
                if *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CRASH_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW =>
            {
                Kind::Unavailable
            }
            Some(_) => Kind::Db,
            None => Kind::Unavailable,
        };
        Error {
            kind,
            source: Some(Box::new(error)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(error: deadpool_postgres::PoolError) -> Error {
        match error {
            deadpool_postgres::PoolError::Backend(error) => Error::from(error),
            other => Error::unavailable(other),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            Kind::Config => "bad database configuration",
            Kind::Unavailable => "database unavailable",
            Kind::Rejected => "the database refused the connection",
            Kind::PayloadTooLarge => "payload too large for NOTIFY",
            Kind::QueueFull => "notification queue full",
            Kind::NotMigrated => "the pgpush schema is missing or old (run `pgpush migrate`)",
            Kind::Invalid => "invalid arguments",
            Kind::Db => "database error",
        };
        f.write_str(what)?;
        write_causes(f, self.source())
    }
}

/// Writes each cause of a chain once, after ": ". Some errors print their own cause too
/// (tokio-postgres' "error connecting to server: Connection refused" has that `io::Error` as its
/// source), so a cause whose text is already written is skipped; tokio-postgres' generic
/// "db error" is left out before the server's own message.
fn write_causes(
    f: &mut fmt::Formatter<'_>,
    mut next: Option<&(dyn StdError + 'static)>,
) -> fmt::Result {
    let mut written = String::new();
    while let Some(error) = next {
        let text = error.to_string();
        let text = text.strip_prefix("db error: ").unwrap_or(&text);
        if text != "db error" && !written.contains(text) {
            write!(f, ": {text}")?;
            written.push_str(text);
        }
        next = error.source();
    }
    Ok(())
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
