//! `X-Forwarded-For` headers from a trusted proxy (the client address behind nginx's http mode).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgpush_edge::fuzzing::forwarded_for(data);
});
