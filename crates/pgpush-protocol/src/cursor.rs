//! Cursors: a point (epoch, position) of the durable history, signed so that a forged or
//! foreign cursor is refused instead of silently skipping or repeating events.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Signs and checks cursors with one deployment's key (stored in its database).
#[derive(Clone)]
pub struct CursorKey {
    key: Vec<u8>,
}

/// Where a cursor points: a position, and the epoch of the history it was read in.
///
/// `epoch` is `None` for the database's first epoch, which keeps the original spelling
/// `<position>.<signature>` so that cursors issued before epochs existed stay valid (and nodes
/// of the previous release accept the ones issued now, during a rolling upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorPoint {
    /// The epoch's id (`pgpush.epochs.id`), or `None` for the first epoch.
    pub epoch: Option<i64>,
    /// The position in the global order.
    pub position: i64,
}

impl CursorPoint {
    /// A point of the first epoch.
    pub fn first_epoch(position: i64) -> CursorPoint {
        CursorPoint {
            epoch: None,
            position,
        }
    }
}

/// Why a string is not a cursor of this deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not of the form `<position>.<signature>` or `<position>.<epoch>.<signature>`.
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

    fn mac(&self, point: CursorPoint) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes keys of any length");
        match point.epoch {
            None => mac.update(b"pgpush-cursor-v1"),
            Some(epoch) => {
                mac.update(b"pgpush-cursor-v2");
                mac.update(&epoch.to_be_bytes());
            }
        }
        mac.update(&point.position.to_be_bytes());
        mac
    }

    fn signature(&self, point: CursorPoint) -> u64 {
        let digest = self.mac(point).finalize().into_bytes();
        u64::from_be_bytes(digest[..8].try_into().expect("digest is 32 bytes"))
    }

    /// The cursor for `point`: `<position>.<signature>` in the first epoch, else
    /// `<position>.<epoch in hex>.<signature>`. Clients must treat it as opaque.
    pub fn encode(&self, point: CursorPoint) -> String {
        let signature = self.signature(point);
        match point.epoch {
            None => format!("{}.{signature:016x}", point.position),
            Some(epoch) => format!("{}.{epoch:x}.{signature:016x}", point.position),
        }
    }

    /// The point of a cursor issued by [`CursorKey::encode`] with this key.
    pub fn decode(&self, cursor: &str) -> Result<CursorPoint, CursorError> {
        let mut parts = cursor.split('.');
        let (digits, epoch, signature) = match (parts.next(), parts.next(), parts.next()) {
            (Some(digits), Some(signature), None) => (digits, None, signature),
            (Some(digits), Some(epoch), Some(signature)) if parts.next().is_none() => {
                (digits, Some(epoch), signature)
            }
            _ => return Err(CursorError::Malformed),
        };
        // Canonical spellings only: one cursor per point.
        let canonical_decimal = |text: &str| {
            !text.is_empty()
                && text.bytes().all(|b| b.is_ascii_digit())
                && (text.len() == 1 || !text.starts_with('0'))
        };
        let canonical_hex = |text: &str| {
            !text.is_empty()
                && text.len() <= 16
                && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                && (text.len() == 1 || !text.starts_with('0'))
        };
        if !canonical_decimal(digits)
            || epoch.is_some_and(|e| !canonical_hex(e))
            || signature.len() != SIGNATURE_HEX
            || !signature.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(CursorError::Malformed);
        }
        let position: i64 = digits.parse().map_err(|_| CursorError::Malformed)?;
        let epoch = match epoch {
            None => None,
            Some(hex) => Some(
                u64::from_str_radix(hex, 16)
                    .ok()
                    .and_then(|e| i64::try_from(e).ok())
                    .ok_or(CursorError::Malformed)?,
            ),
        };
        let point = CursorPoint { epoch, position };
        let signature = u64::from_str_radix(signature, 16).map_err(|_| CursorError::Malformed)?;
        // Checked in constant time, so a forger learns nothing from response timing.
        self.mac(point)
            .verify_truncated_left(&signature.to_be_bytes())
            .map(|()| point)
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
            for epoch in [None, Some(0), Some(0x0abc_def0_1234_5678), Some(i64::MAX)] {
                let point = CursorPoint { epoch, position };
                let cursor = key.encode(point);
                assert_eq!(key.decode(&cursor), Ok(point), "{cursor}");
            }
        }
        let cursor = key.encode(CursorPoint::first_epoch(42));
        let (_, signature) = cursor.split_once('.').unwrap();
        assert_eq!(
            key.decode(&format!("43.{signature}")),
            Err(CursorError::Forged)
        );
        // The same position in another epoch is another point: its signature does not carry over.
        assert_eq!(
            key.decode(&format!("42.1.{signature}")),
            Err(CursorError::Forged)
        );
        let in_epoch = key.encode(CursorPoint {
            epoch: Some(7),
            position: 42,
        });
        let signature = in_epoch.rsplit('.').next().unwrap();
        assert_eq!(
            key.decode(&format!("42.8.{signature}")),
            Err(CursorError::Forged)
        );
        assert_eq!(
            key.decode(&format!("42.{signature}")),
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
            "42..0000000000000000",
            "42.07.0000000000000000",
            "42.A.0000000000000000",
            "42.ffffffffffffffff.0000000000000000",
            "42.10000000000000000.0000000000000000",
            "42.1.2.0000000000000000",
        ] {
            assert_eq!(
                key.decode(malformed),
                Err(CursorError::Malformed),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn first_epoch_cursors_keep_the_original_spelling() {
        let key = CursorKey::new(b"deployment key");
        let cursor = key.encode(CursorPoint::first_epoch(42));
        let (position, signature) = cursor.split_once('.').unwrap();
        assert_eq!(position, "42");
        assert_eq!(signature.len(), SIGNATURE_HEX);
    }
}
