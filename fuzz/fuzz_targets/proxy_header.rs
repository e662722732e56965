//! PROXY protocol v1/v2 headers at the start of a connection (behind nginx's stream module).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgpush_edge::fuzzing::proxy_header(data);
});
