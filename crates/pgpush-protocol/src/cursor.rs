//! Cursors: a position in the global order of durable events, signed so that a forged or
//! foreign cursor is refused instead of silently skipping or repeating events.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Signs and checks cursors with one deployment's key (stored in its database).
#[derive(Clone)]
pub struct CursorKey {
    key: Vec<u8>,
}

/// Why a string is not a cursor of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not of the form `<position>.<signature>`.
    #[error("malformed cursor")]
    Malformed,
    /// Well-formed, but not signed by this deployment.
    #[error("cursor was not issued by this deployment")]
    Forged,
}

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

/// Hex digits of signature in a cursor (64 bits).
const SIGNATURE_HEX: usize = 16;

impl CursorKey {
    /// A key from the deployment's secret bytes.
    pub fn new(key: &[u8]) -> CursorKey {
        CursorKey { key: key.to_vec() }
    }

    fn mac(&self, position: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        mac.update(b"pgpush-cursor-v1");
        mac.update(&position.to_be_bytes());
        mac
    }

    fn signature(&self, position: i64) -> u64 {
        let digest = self.mac(position).finalize().into_bytes();
        u64::from_be_bytes(digest[..8].try_into().expect("digest is 32 bytes"))
    }

    /// The cursor for `position`: `<position>.<16 hex digits>`. Clients must treat it as opaque.
    pub fn encode(&self, position: i64) -> String {
        format!("{position}.{:016x}", self.signature(position))
    }

    /// The position of a cursor issued by [`CursorKey::encode`] with this key.
    pub fn decode(&self, cursor: &str) -> Result<i64, CursorError> {
        let (digits, signature) = cursor.split_once('.').ok_or(CursorError::Malformed)?;
        // Canonical decimal only: one spelling per position.
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits.len() == 1 || !digits.starts_with('0'));
        if !canonical
            || signature.len() != SIGNATURE_HEX
            || !signature.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(CursorError::Malformed);
        }
        let position: i64 = digits.parse().map_err(|_| CursorError::Malformed)?;
        let signature = u64::from_str_radix(signature, 16).map_err(|_| CursorError::Malformed)?;
        // Checked in constant time, so a forger learns nothing from response timing.
        self.mac(position)
            .verify_truncated_left(&signature.to_be_bytes())
            .map(|()| position)
            .map_err(|_| CursorError::Forged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = CursorKey::new(b"deployment key");
        for position in [0, 1, 42, i64::MAX] {
            let cursor = key.encode(position);
            assert_eq!(key.decode(&cursor), Ok(position), "{cursor}");
        }
        let cursor = key.encode(42);
        let (_, signature) = cursor.split_once('.').unwrap();
        assert_eq!(
            key.decode(&format!("43.{signature}")),
            Err(CursorError::Forged)
        );
        assert_eq!(
            CursorKey::new(b"other deployment").decode(&cursor),
            Err(CursorError::Forged)
        );
        for malformed in [
            "",
            "42",
            "42.",
            ".abc",
            "x.0000000000000000",
            "-1.0000000000000000",
            "042.0000000000000000",
            "42.zzzzzzzzzzzzzzzz",
            "42.00",
            "99999999999999999999.0000000000000000",
            "+42.0000000000000000",
        ] {
            assert_eq!(
                key.decode(malformed),
                Err(CursorError::Malformed),
                "{malformed:?}"
            );
        }
    }
}
