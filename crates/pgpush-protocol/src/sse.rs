//! Server-Sent Events framing: events with `id:`/`event:`/`data:` fields, comments and `retry:`.

/// Appends one event. `data` is split into one `data:` line per line of text, as the SSE
/// standard requires; a browser joins them back with `\n`.
pub fn write_event(out: &mut Vec<u8>, id: Option<&str>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    // SSE ends a line at CR LF, lone LF or lone CR; every one of them starts a new data line.
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(end) => {
                out.extend_from_slice(&rest[..end]);
                out.push(b'\n');
                let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[end + skip..];
            }
            None => {
                out.extend_from_slice(rest);
                out.push(b'\n');
                break;
            }
        }
    }
    out.push(b'\n');
}

/// A comment line, which clients ignore; used as a keepalive.
pub fn comment(text: &str) -> Vec<u8> {
    format!(": {text}\n\n").into_bytes()
}

/// A `retry:` field telling the browser how long to wait before reconnecting.
pub fn retry(millis: u64) -> Vec<u8> {
    format!("retry: {millis}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: Option<&str>, data: &str, expected: &str) {
        let mut out = Vec::new();
        write_event(&mut out, id, "message", data.as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn events() {
        check(None, "{}", "event: message\ndata: {}\n\n");
        check(Some("7"), "x", "id: 7\nevent: message\ndata: x\n\n");
        check(
            None,
            "{\n\"a\": 1\r\n}\r",
            "event: message\ndata: {\ndata: \"a\": 1\ndata: }\ndata: \n\n",
        );
        check(None, "", "event: message\ndata: \n\n");
    }
}
