//! WebSocket client frames (`subscribe`, `publish`, ...) as the native protocol parses them.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    if let Ok(frame) = pgpush_protocol::parse_client_frame(text) {
        let _ = format!("{frame:?}");
    }
});
