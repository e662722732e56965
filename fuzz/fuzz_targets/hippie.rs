//! Hippie request paths (`ws/<channel>`, `pub/<channel>`, ...) and the JSON messages clients
//! publish, which the server stamps with `time` and `address`.
#![no_main]
use pgpush_protocol::hippie::{parse_hippie_path, stamp};

libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = parse_hippie_path(text);
    if let Ok(stamped) = stamp(text, 1_700_000_000, "192.0.2.1") {
        // A stamped message is still one JSON object (values raw: numbers beyond f64, such as
        // 4e3333, are valid JSON and are kept byte for byte).
        let _: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(&stamped).expect("stamped output is a JSON object");
    }
});
