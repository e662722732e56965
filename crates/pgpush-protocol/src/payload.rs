//! Payload text, classified once as JSON (embedded verbatim) or plain text (embedded as a JSON string).

use bytes::Bytes;

/// Largest payload `NOTIFY` accepts, in bytes (PostgreSQL rejects 8,000 with SQLSTATE 22023).
pub const MAX_NOTIFY_PAYLOAD_BYTES: usize = 7_999;

/// The text of a message as PostgreSQL carried it, and whether it is valid JSON.
///
/// A JSON payload is written into envelopes byte for byte (key order, whitespace and number
/// digits kept); any other text becomes a JSON string, so every envelope is valid JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    text: Bytes,
    is_json: bool,
}

impl Payload {
    /// Classifies `text`.
    pub fn new(text: impl Into<String>) -> Payload {
        let text: String = text.into();
        let is_json = is_json(&text);
        Payload {
            text: Bytes::from(text),
            is_json,
        }
    }

    /// The text exactly as received.
    pub fn text(&self) -> &str {
        // Constructed only from `String`, so always UTF-8.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// Length of the text in bytes.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// True when the text is empty.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// True when the text is a JSON document.
    pub fn is_json(&self) -> bool {
        self.is_json
    }

    /// Appends the payload as a JSON value: verbatim when it is JSON, as a JSON string otherwise.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if self.is_json {
            out.extend_from_slice(&self.text);
        } else {
            write_json_string(out, self.text());
        }
    }
}

/// True when `text` is one complete JSON value (surrounding whitespace allowed).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// Appends `text` as a JSON string literal.
pub(crate) fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Serialising a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(out, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected_json: &str) {
        let mut out = Vec::new();
        Payload::new(text).write_json(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected_json, "{text:?}");
    }

    #[test]
    fn json_is_kept_byte_for_byte() {
        check(r#"{"b": 1, "a": 2}"#, r#"{"b": 1, "a": 2}"#);
        check(
            "{\n  \"x\" : 1.50000000000000000001\n}",
            "{\n  \"x\" : 1.50000000000000000001\n}",
        );
        check("[1,2 , 3]", "[1,2 , 3]");
        check("42", "42");
        check("\"already a string\"", "\"already a string\"");
        check(" null ", " null ");
    }

    #[test]
    fn text_becomes_a_json_string() {
        check("", r#""""#);
        check("plain text", r#""plain text""#);
        check("{not json", r#""{not json""#);
        check("line\nbreak \"q\" \u{e9}", r#""line\nbreak \"q\" é""#);
        check("{} {}", r#""{} {}""#);
    }
}
