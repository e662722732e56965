//! JWTs from `Authorization: Bearer` and `?token=`, checked by a node that requires tokens.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    pgpush_edge::fuzzing::token(text);
});
