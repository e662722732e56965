//! Channel names, raw and from URL query strings, checked as a client's subscriptions.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(channel) = pgpush_protocol::Channel::new(text)
    {
        assert!(!channel.as_str().is_empty() && channel.as_str().len() <= 63);
    }
    pgpush_edge::fuzzing::query(data);
});
