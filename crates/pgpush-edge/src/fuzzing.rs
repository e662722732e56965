//! Entry points for the fuzz targets in `fuzz/`: the node's own parsers of network input.
//!
//! Not a stable API; each function only has to return (any result) for every input.

use std::sync::OnceLock;

use crate::{admission::Admission, settings::AdmissionSettings};

/// A PROXY protocol v1/v2 header at the start of a connection.
pub fn proxy_header(data: &[u8]) {
    let _ = crate::http::proxy_protocol::parse(data);
}

/// A token from `Authorization: Bearer` or `?token=`, checked by a node with an HS256 secret.
pub fn token(data: &str) {
    static ADMISSION: OnceLock<Admission> = OnceLock::new();
    let admission = ADMISSION.get_or_init(|| {
        let settings = AdmissionSettings {
            jwt_secret: Some("fuzzing secret".to_owned()),
            ..open_settings()
        };
        Admission::new(&settings).expect("tokens configured")
    });
    let _ = admission.admit(&http::HeaderMap::new(), Some(data));
    if let Ok(value) = http::HeaderValue::from_str(&format!("Bearer {data}")) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        let _ = admission.admit(&headers, None);
    }
}

/// A query string or form body: every `channel=` checked as a client's subscription.
pub fn query(data: &[u8]) {
    static ADMISSION: OnceLock<Admission> = OnceLock::new();
    let admission = ADMISSION.get_or_init(|| Admission::new(&open_settings()).expect("no tokens"));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let (Ok(grant), Ok(pairs)) = (
        admission.admit(&http::HeaderMap::new(), None),
        pgpush_protocol::query_pairs(text),
    ) {
        for (name, value) in pairs {
            if name == "channel" {
                let _ = grant.channel(crate::admission::policy::Action::Subscribe, &value);
            }
        }
    }
}

/// An `X-Forwarded-For` header seen from a trusted proxy.
pub fn forwarded_for(data: &[u8]) {
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-forwarded-for", value);
        let trusted = ["127.0.0.0/8".parse().expect("a network")];
        let _ = crate::http::client_address(
            "127.0.0.1".parse().expect("an address"),
            &headers,
            &trusted,
        );
    }
}

/// The admission settings of a node started with the defaults: every channel, any origin.
fn open_settings() -> AdmissionSettings {
    AdmissionSettings {
        jwt_leeway: std::time::Duration::from_secs(30),
        subscribe_allow: vec!["*".to_owned()],
        publish_allow: vec!["*".to_owned()],
        ..AdmissionSettings::default()
    }
}
