//! Strict URL decoding of paths and query strings: a malformed `%` escape or bytes that are not
//! UTF-8 after decoding are errors, never replaced or kept as they are, so a name has one
//! meaning on every route.

/// Why a URL component does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlDecodeError {
    /// A `%` not followed by two hex digits.
    #[error("a %-escape is not two hex digits")]
    MalformedEscape,
    /// The decoded bytes are not UTF-8.
    #[error("not UTF-8 after URL decoding")]
    NotUtf8,
}

/// Decodes one path or query component: `%XX` escapes, and `+` as a space in a query
/// (`plus_is_space`; in a path `+` stays `+`).
pub fn url_decode(text: &str, plus_is_space: bool) -> Result<String, UrlDecodeError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .ok_or(UrlDecodeError::MalformedEscape)?;
                let digits =
                    std::str::from_utf8(hex).map_err(|_| UrlDecodeError::MalformedEscape)?;
                out.push(
                    u8::from_str_radix(digits, 16).map_err(|_| UrlDecodeError::MalformedEscape)?,
                );
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| UrlDecodeError::NotUtf8)
}

/// The `name=value` pairs of a query string, decoded; the first that does not decode is the
/// error, with its (raw) name.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, (String, UrlDecodeError)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded_name = url_decode(name, true).map_err(|e| (name.to_owned(), e))?;
            let value = url_decode(value, true).map_err(|e| (decoded_name.clone(), e))?;
            Ok((decoded_name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_strictly() {
        assert_eq!(url_decode("caf%C3%A9+x", true).as_deref(), Ok("café x"));
        assert_eq!(url_decode("a+b", false).as_deref(), Ok("a+b"));
        assert_eq!(url_decode("%2Fa%2f", false).as_deref(), Ok("/a/"));
        assert_eq!(url_decode("%FF", true), Err(UrlDecodeError::NotUtf8));
        assert_eq!(url_decode("%EF%BF%BD", true).as_deref(), Ok("\u{fffd}"));
        for malformed in ["%ZZ", "%", "%4", "a%g1", "%+1"] {
            assert_eq!(
                url_decode(malformed, true),
                Err(UrlDecodeError::MalformedEscape),
                "{malformed}"
            );
        }
    }

    #[test]
    fn query_pairs_name_the_bad_one() {
        assert_eq!(
            query_pairs("channel=a&channel=b%20c&wait=0&flag").unwrap(),
            [
                ("channel", "a"),
                ("channel", "b c"),
                ("wait", "0"),
                ("flag", "")
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(
            query_pairs("wait=1&channel=%FF"),
            Err(("channel".to_owned(), UrlDecodeError::NotUtf8))
        );
        assert_eq!(
            query_pairs("%ZZ=1"),
            Err(("%ZZ".to_owned(), UrlDecodeError::MalformedEscape))
        );
    }
}
