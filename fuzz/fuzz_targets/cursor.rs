//! Cursors from `since=`, `cursor=` and `Last-Event-ID` (both spellings, with and without an
//! epoch): decoding never panics, and what decodes encodes back to the same point.
#![no_main]
use std::sync::OnceLock;

use pgpush_protocol::CursorKey;

libfuzzer_sys::fuzz_target!(|text: &str| {
    static KEY: OnceLock<CursorKey> = OnceLock::new();
    let key = KEY.get_or_init(|| CursorKey::new(b"fuzzing key of thirty-two bytes!"));
    if let Ok(point) = key.decode(text) {
        assert_eq!(key.decode(&key.encode(point)), Ok(point));
    }
});
