//! The Hippie wire protocol of the original Perl stack: routes, client ids, MXHR parts, poll
//! bodies, keepalive pings, and the stamping of client publishes with `time` and `address`.

use std::{borrow::Cow, fmt::Write as _};

use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::payload::write_json_string;

/// `type` of the message that tells a client its id; clients treat it as "subscribed".
pub const SET_CLIENT_ID_TYPE: &str = "hippie.pipe.set_client_id";

/// Longest client id accepted from a client.
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// A Hippie route, parsed from the path after the Hippie prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HippieRoute {
    /// `ws/<channel>`: WebSocket, both directions.
    WebSocket(String),
    /// `mxhr/<channel>`: endless `multipart/mixed` response.
    Mxhr(String),
    /// `poll/<channel>`: long poll.
    Poll(String),
    /// `pub/<channel>`: publish.
    Publish(String),
    /// `stats`: counters as text.
    Stats,
}

/// Why a Hippie path is not a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HippiePathError {
    /// Not one of the routes.
    NotFound,
    /// The channel part does not URL-decode (a malformed escape, or not UTF-8).
    BadEncoding(crate::UrlDecodeError),
}

/// Parses `rest`, the raw (still URL-encoded) path after `<prefix>/`. The channel is everything
/// after `<type>/`, URL-decoded, and may contain `/`; an empty channel is returned as empty so
/// the caller can answer "Channel is required".
pub fn parse_hippie_path(rest: &str) -> Result<HippieRoute, HippiePathError> {
    if rest == "stats" {
        return Ok(HippieRoute::Stats);
    }
    let (kind, channel) = rest.split_once('/').ok_or(HippiePathError::NotFound)?;
    let channel = crate::url_decode(channel, false).map_err(HippiePathError::BadEncoding)?;
    match kind {
        "ws" => Ok(HippieRoute::WebSocket(channel)),
        "mxhr" => Ok(HippieRoute::Mxhr(channel)),
        "poll" => Ok(HippieRoute::Poll(channel)),
        "pub" => Ok(HippieRoute::Publish(channel)),
        _ => Err(HippiePathError::NotFound),
    }
}

/// True for a client id a client may send: 1 to 128 characters of `[A-Za-z0-9._~-]`, so it is
/// safe to put back into a URL and a `Location` header unescaped.
pub fn is_valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// `{"type":"hippie.pipe.set_client_id","client_id":"<id>"}`
pub fn set_client_id_message(client_id: &str) -> Bytes {
    let mut out = Vec::with_capacity(64 + client_id.len());
    out.extend_from_slice(br#"{"type":"hippie.pipe.set_client_id","client_id":"#);
    write_json_string(&mut out, client_id);
    out.push(b'}');
    Bytes::from(out)
}

/// `{"type":"ping","time":<epoch seconds with fraction>}`
pub fn ping_message(epoch_seconds: f64) -> Bytes {
    Bytes::from(format!(r#"{{"type":"ping","time":{epoch_seconds:.3}}}"#))
}

/// An error reported to a Hippie client as a message:
/// `{"type":"hippie.error","code":"<code>","reason":"<text>"}`.
pub fn error_message(code: &str, reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(64 + reason.len());
    out.extend_from_slice(br#"{"type":"hippie.error","code":"#);
    write_json_string(&mut out, code);
    out.extend_from_slice(br#","reason":"#);
    write_json_string(&mut out, reason);
    out.push(b'}');
    Bytes::from(out)
}

/// The first bytes of an MXHR stream: `--<boundary>\n`.
pub fn mxhr_preamble(boundary: &str) -> Bytes {
    Bytes::from(format!("--{boundary}\n"))
}

/// One MXHR part: `Content-Type: application/json\n\n<json>\n--<boundary>\n` (LF only).
pub fn mxhr_part(json: &[u8], boundary: &str) -> Bytes {
    const HEAD: &[u8] = b"Content-Type: application/json\n\n";
    let mut out = Vec::with_capacity(HEAD.len() + json.len() + boundary.len() + 4);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(json);
    out.extend_from_slice(b"\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.push(b'\n');
    Bytes::from(out)
}

/// A long-poll body: the JSON array of the messages.
pub fn poll_body<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = vec![b'['];
    for (i, message) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.push(b']');
    Bytes::from(out)
}

/// Why a client's message could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StampError {
    /// Not JSON at all.
    #[error("message is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object, so `time` and `address` cannot be set.
    #[error("message must be a JSON object")]
    NotObject,
}

/// Sets `time` (integer epoch seconds) and `address` on a client's JSON object, as the original
/// server did before publishing. Members are kept in order with their values byte for byte; a
/// `time` or `address` the client sent is replaced.
pub fn stamp(message: &str, epoch_seconds: u64, address: &str) -> Result<String, StampError> {
    let members = parse_object(message)?;
    let mut out = String::with_capacity(message.len() + 48);
    out.push('{');
    for (key, value) in members
        .iter()
        .filter(|(k, _)| k != "time" && k != "address")
    {
        let mut quoted = Vec::new();
        write_json_string(&mut quoted, key);
        out.push_str(std::str::from_utf8(&quoted).unwrap_or("\"\""));
        out.push(':');
        out.push_str(value.get());
        out.push(',');
    }
    let mut quoted_address = Vec::new();
    write_json_string(&mut quoted_address, address);
    let _ = write!(
        out,
        r#""time":{epoch_seconds},"address":{}}}"#,
        std::str::from_utf8(&quoted_address).unwrap_or("\"\"")
    );
    Ok(out)
}

/// The members of a JSON object in document order, values as raw JSON.
fn parse_object(text: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, StampError> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                members.push((key, map.next_value::<&RawValue>()?));
            }
            Ok(members)
        }
    }
    // Check it is JSON first, to tell "not JSON" from "not an object".
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| StampError::NotJson(e.to_string()))?;
    if !value.get().trim_start().starts_with('{') {
        return Err(StampError::NotObject);
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer
        .deserialize_map(Members)
        .map_err(|e| StampError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_path(rest: &str, expected: Result<HippieRoute, HippiePathError>) {
        assert_eq!(parse_hippie_path(rest), expected, "{rest}");
    }

    #[test]
    fn paths() {
        use HippieRoute::*;
        check_path("ws/chat", Ok(WebSocket("chat".into())));
        check_path("mxhr/a/b%20c", Ok(Mxhr("a/b c".into())));
        check_path("poll/caf%C3%A9", Ok(Poll("caf\u{e9}".into())));
        check_path("pub/x+y", Ok(Publish("x+y".into())));
        check_path("pub/", Ok(Publish(String::new())));
        check_path("stats", Ok(Stats));
        check_path("message/chat", Err(HippiePathError::NotFound));
        check_path("x/chat", Err(HippiePathError::NotFound));
        check_path("ws", Err(HippiePathError::NotFound));
        check_path("stats/x", Err(HippiePathError::NotFound));
        check_path(
            "ws/%ff",
            Err(HippiePathError::BadEncoding(crate::UrlDecodeError::NotUtf8)),
        );
        check_path(
            "ws/%zz",
            Err(HippiePathError::BadEncoding(
                crate::UrlDecodeError::MalformedEscape,
            )),
        );
    }

    /// Found by the `hippie` fuzz target: a number beyond f64 (`4e3333`) is valid JSON; stamping
    /// keeps it byte for byte and the result is still one JSON object.
    #[test]
    fn stamping_keeps_numbers_beyond_f64() {
        let input = "\n{\"k`\":    \n\n\n44444444444444244444443e333333044444444\n}";
        let stamped = stamp(input, 1, "192.0.2.1").unwrap();
        assert_eq!(
            stamped,
            r#"{"k`":44444444444444244444443e333333044444444,"time":1,"address":"192.0.2.1"}"#
        );
        let members: std::collections::HashMap<String, Box<RawValue>> =
            serde_json::from_str(&stamped).unwrap();
        assert_eq!(members.len(), 3);
    }

    #[test]
    fn client_ids() {
        assert!(is_valid_client_id("0.8123734"));
        assert!(is_valid_client_id("Ab-_~.9"));
        assert!(!is_valid_client_id(""));
        assert!(!is_valid_client_id("a b"));
        assert!(!is_valid_client_id("a\r\nLocation: x"));
        assert!(!is_valid_client_id(&"x".repeat(129)));
    }

    #[test]
    fn messages_and_parts() {
        assert_eq!(
            set_client_id_message("ab\"c").as_ref(),
            br#"{"type":"hippie.pipe.set_client_id","client_id":"ab\"c"}"#
        );
        assert_eq!(
            ping_message(12.5).as_ref(),
            br#"{"type":"ping","time":12.500}"#
        );
        assert_eq!(mxhr_preamble("B1234567").as_ref(), b"--B1234567\n");
        assert_eq!(
            mxhr_part(b"{\"a\":1}", "B1234567").as_ref(),
            b"Content-Type: application/json\n\n{\"a\":1}\n--B1234567\n"
        );
        assert_eq!(poll_body([&b"1"[..], b"{}"]).as_ref(), b"[1,{}]");
        assert_eq!(poll_body(std::iter::empty::<&[u8]>()).as_ref(), b"[]");
    }

    #[test]
    fn stamping() {
        assert_eq!(
            stamp(r#"{"type":"chat", "text":"hi","n":1.50}"#, 99, "10.0.0.1").unwrap(),
            r#"{"type":"chat","text":"hi","n":1.50,"time":99,"address":"10.0.0.1"}"#
        );
        assert_eq!(
            stamp(r#"{"time":"forged","address":"1.2.3.4","x":[1]}"#, 5, "::1").unwrap(),
            r#"{"x":[1],"time":5,"address":"::1"}"#
        );
        assert_eq!(stamp("{}", 1, "a").unwrap(), r#"{"time":1,"address":"a"}"#);
        assert_eq!(stamp("[1]", 1, "a"), Err(StampError::NotObject));
        assert_eq!(stamp("\"s\"", 1, "a"), Err(StampError::NotObject));
        assert!(matches!(stamp("nope", 1, "a"), Err(StampError::NotJson(_))));
        assert!(matches!(
            stamp("{\"a\":1", 1, "a"),
            Err(StampError::NotJson(_))
        ));
    }
}
