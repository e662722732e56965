//! Channel names: validation (1 to 63 bytes of UTF-8, no NUL) and the reserved `pgpush` prefix.

use std::{fmt, sync::Arc};

/// Longest channel name in bytes: PostgreSQL's identifier limit (NAMEDATALEN - 1).
pub const MAX_CHANNEL_BYTES: usize = 63;

/// Channels whose name starts with this prefix (in any letter case) belong to pgpush itself.
pub const RESERVED_PREFIX: &str = "pgpush";

/// A validated channel name, cheap to clone.
///
/// Names are case-sensitive and kept verbatim: `Foo` and `foo` are different channels, as they
/// are for `pg_notify()`. Quoting for SQL is the database layer's job, not this type's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name is the empty string.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_BYTES`].
    #[error("channel name is {0} bytes long, the limit is 63")]
    TooLong(usize),
    /// The name contains a NUL character, which PostgreSQL cannot store.
    #[error("channel name contains a NUL character")]
    Nul,
}

impl Channel {
    /// Validates `name` and makes it a channel.
    pub fn new(name: &str) -> Result<Channel, ChannelError> {
        if name.is_empty() {
            return Err(ChannelError::Empty);
        }
        if name.len() > MAX_CHANNEL_BYTES {
            return Err(ChannelError::TooLong(name.len()));
        }
        if name.contains('\0') {
            return Err(ChannelError::Nul);
        }
        Ok(Channel(Arc::from(name)))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for names that belong to pgpush itself (prefix `pgpush`, compared without regard to
    /// ASCII case so that no spelling of an internal channel slips past a policy check).
    pub fn is_reserved(&self) -> bool {
        self.0
            .as_bytes()
            .get(..RESERVED_PREFIX.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Channel {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: Result<(), ChannelError>) {
        assert_eq!(Channel::new(name).map(|_| ()), expected, "{name:?}");
    }

    #[test]
    fn validation() {
        check("a", Ok(()));
        check("Foo Bar \"quoted\" ; -- drop", Ok(()));
        check("caf\u{e9}/\u{1f600}", Ok(()));
        check(&"x".repeat(63), Ok(()));
        check(&"x".repeat(64), Err(ChannelError::TooLong(64)));
        // 62 ASCII bytes plus a 2-byte character: 64 bytes though only 63 characters.
        check(
            &format!("{}\u{e9}", "x".repeat(62)),
            Err(ChannelError::TooLong(64)),
        );
        check("", Err(ChannelError::Empty));
        check("a\0b", Err(ChannelError::Nul));
    }

    #[test]
    fn case_is_kept() {
        assert_ne!(Channel::new("Foo").unwrap(), Channel::new("foo").unwrap());
        assert_eq!(Channel::new("Foo").unwrap().as_str(), "Foo");
    }

    #[test]
    fn reserved_in_any_case() {
        for name in ["pgpush", "pgpush_wake", "PGPUSH.x", "PgPush"] {
            assert!(Channel::new(name).unwrap().is_reserved(), "{name}");
        }
        for name in ["pgpus", "my_pgpush", "chat"] {
            assert!(!Channel::new(name).unwrap().is_reserved(), "{name}");
        }
    }
}
