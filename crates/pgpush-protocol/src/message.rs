//! One message on a channel, with its encodings built lazily once per transport and shared.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::{Channel, Payload, payload::write_json_string, sse};

/// A message on its way to subscribers: the channel, the payload as PostgreSQL carried it,
/// the cursor of a durable message, and each transport's encoding built at most once.
///
/// Fan-out hands every subscriber an `Arc<Message>`; the first connection that needs a given
/// encoding builds it and all others reuse the same bytes, so 10,000 subscribers on one
/// channel cost one encoding per transport.
#[derive(Debug)]
pub struct Message {
    channel: Channel,
    payload: Payload,
    /// Position in the global order and its cursor, for durable messages.
    durable: Option<(i64, Box<str>)>,
    websocket: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
    hippie: OnceLock<Bytes>,
    mxhr: OnceLock<Bytes>,
}

impl Message {
    /// An ephemeral message (a NOTIFY).
    pub fn ephemeral(channel: Channel, payload: Payload) -> Message {
        Message::new(channel, payload, None)
    }

    /// A durable message at `position`, whose cursor is `cursor`.
    pub fn durable(channel: Channel, payload: Payload, position: i64, cursor: String) -> Message {
        Message::new(channel, payload, Some((position, cursor.into_boxed_str())))
    }

    fn new(channel: Channel, payload: Payload, durable: Option<(i64, Box<str>)>) -> Message {
        Message {
            channel,
            payload,
            durable,
            websocket: OnceLock::new(),
            sse: OnceLock::new(),
            hippie: OnceLock::new(),
            mxhr: OnceLock::new(),
        }
    }

    /// The channel the message was published on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The cursor of a durable message.
    pub fn cursor(&self) -> Option<&str> {
        self.durable.as_ref().map(|(_, cursor)| &**cursor)
    }

    /// The position of a durable message in the global order.
    pub fn position(&self) -> Option<i64> {
        self.durable.as_ref().map(|(position, _)| *position)
    }

    /// The WebSocket text frame (and long-poll array element):
    /// `{"type":"message","channel":"a","data":<payload>,"cursor":"c"}`.
    pub fn websocket_text(&self) -> &Bytes {
        self.websocket.get_or_init(|| {
            let mut out = Vec::with_capacity(self.payload.len() + 64);
            out.extend_from_slice(br#"{"type":"message","channel":"#);
            write_json_string(&mut out, self.channel.as_str());
            out.extend_from_slice(br#","data":"#);
            self.payload.write_json(&mut out);
            if let Some(cursor) = self.cursor() {
                out.extend_from_slice(br#","cursor":"#);
                write_json_string(&mut out, cursor);
            }
            out.push(b'}');
            Bytes::from(out)
        })
    }

    /// The Server-Sent Events block: `id:` (durable only), `event: message`, and
    /// `data: {"channel":"a","data":<payload>}` split over lines.
    pub fn sse_event(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let mut data = Vec::with_capacity(self.payload.len() + 32);
            data.extend_from_slice(br#"{"channel":"#);
            write_json_string(&mut data, self.channel.as_str());
            data.extend_from_slice(br#","data":"#);
            self.payload.write_json(&mut data);
            data.push(b'}');
            let mut out = Vec::with_capacity(data.len() + 64);
            sse::write_event(&mut out, self.cursor(), "message", &data);
            Bytes::from(out)
        })
    }

    /// The Hippie form: the payload itself as a JSON value (a JSON string for text), used as
    /// a WebSocket frame and as a long-poll array element.
    pub fn hippie_json(&self) -> &Bytes {
        self.hippie.get_or_init(|| {
            let mut out = Vec::with_capacity(self.payload.len() + 2);
            self.payload.write_json(&mut out);
            Bytes::from(out)
        })
    }

    /// The Hippie MXHR part for `boundary`. A node uses one boundary for all its streams (a
    /// JSON text can never contain `\n--`, so no payload can collide with it), which is what
    /// lets this part be built once and shared.
    pub fn mxhr_part(&self, boundary: &str) -> &Bytes {
        self.mxhr
            .get_or_init(|| crate::hippie::mxhr_part(self.hippie_json(), boundary))
    }

    /// Bytes this message occupies in a subscriber's queue accounting.
    pub fn queue_cost(&self) -> usize {
        self.payload.len() + 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(channel: &str, payload: &str, cursor: Option<&str>) -> Message {
        let channel = Channel::new(channel).unwrap();
        match cursor {
            Some(cursor) => Message::durable(channel, Payload::new(payload), 1, cursor.into()),
            None => Message::ephemeral(channel, Payload::new(payload)),
        }
    }

    #[test]
    fn websocket_envelope() {
        let m = message("Chat \"room\"", r#"{"z":1, "a":0.10}"#, None);
        assert_eq!(
            m.websocket_text().as_ref(),
            br#"{"type":"message","channel":"Chat \"room\"","data":{"z":1, "a":0.10}}"#
        );
        let m = message("c", "not json", Some("42.abc"));
        assert_eq!(
            m.websocket_text().as_ref(),
            br#"{"type":"message","channel":"c","data":"not json","cursor":"42.abc"}"#
        );
    }

    #[test]
    fn encodings_are_shared() {
        let m = message("c", "1", None);
        assert_eq!(m.websocket_text().as_ptr(), m.websocket_text().as_ptr());
        assert_eq!(m.sse_event().as_ptr(), m.sse_event().as_ptr());
    }

    #[test]
    fn sse_envelope() {
        let m = message("c", "{\n\"a\":1}", Some("9"));
        assert_eq!(
            std::str::from_utf8(m.sse_event()).unwrap(),
            "id: 9\nevent: message\ndata: {\"channel\":\"c\",\"data\":{\ndata: \"a\":1}}\n\n"
        );
    }
}
