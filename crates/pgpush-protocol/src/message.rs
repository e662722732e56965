//! One message on a channel (or a reset marker), with its encodings built lazily once per
//! transport and shared.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::{Channel, Payload, ServerFrame, payload::write_json_string, sse};

/// Why a client must reload its state instead of continuing from its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// Retention deleted events after the cursor.
    Expired,
    /// The database's durable history changed under the cursor: PostgreSQL lost events the
    /// client may have received (a failover to an asynchronous standby, a restore from a backup).
    HistoryChanged,
}

impl ResetReason {
    /// The `reason` of the reset frame: `cursor expired` or `history changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::Expired => "cursor expired",
            ResetReason::HistoryChanged => "history changed",
        }
    }

    /// The human text of the Hippie `hippie.error` that tells a Hippie client to reload.
    pub fn hippie_reason(self) -> &'static str {
        match self {
            ResetReason::Expired => {
                "durable messages expired while this client was away; reload your state"
            }
            ResetReason::HistoryChanged => {
                "the database lost durable messages this client may have received (a failover or a restore); reload your state"
            }
        }
    }
}

/// A message on its way to subscribers: the channel, the payload as PostgreSQL carried it,
/// the cursor of a durable message, and each transport's encoding built at most once.
///
/// Fan-out hands every subscriber an `Arc<Message>`; the first connection that needs a given
/// encoding builds it and all others reuse the same bytes, so 10,000 subscribers on one
/// channel cost one encoding per transport.
#[derive(Debug)]
pub struct Message {
    body: Body,
    /// Position in the global order and its cursor, for durable messages.
    durable: Option<(i64, Box<str>)>,
    websocket: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
    hippie: OnceLock<Bytes>,
    mxhr: OnceLock<Bytes>,
    /// The payload parsed, for filters: at most once per message (`None` when not JSON).
    document: OnceLock<Option<serde_json::Value>>,
}

#[derive(Debug)]
enum Body {
    /// A message published on a channel.
    Event { channel: Channel, payload: Payload },
    /// Not a message: the point in a client's queue where its history changed. What follows
    /// continues from the marker's cursor; the client must reload its state first.
    Reset(ResetReason),
    /// A server frame that travels in the queue, in order with messages (a presence join or
    /// leave, an unsubscribe by the server): its JSON, and its `type` as the SSE event name.
    Signal { event: &'static str, frame: Bytes },
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

    /// A reset marker at `position` (what follows in the queue comes after it), whose cursor is
    /// `cursor`: every transport tells the client to reload its state and gives it the cursor.
    pub fn reset(reason: ResetReason, position: i64, cursor: String) -> Message {
        Message::with_body(
            Body::Reset(reason),
            Some((position, cursor.into_boxed_str())),
        )
    }

    /// A server frame sent in order with the queue's messages: `frame` (JSON with `"type":
    /// event`) as the WebSocket text and long-poll element, and as an SSE event named `event`.
    pub fn signal(event: &'static str, frame: Bytes) -> Message {
        Message::with_body(Body::Signal { event, frame }, None)
    }

    /// A cursor marker: no message, only the point a filtered subscriber has been brought to
    /// (every durable event up to `position` was matched against its filter). The WebSocket
    /// frame `{"type":"cursor","cursor":"c"}`, an SSE `cursor` event whose id is the cursor.
    pub fn cursor_marker(position: i64, cursor: String) -> Message {
        let mut frame = Vec::with_capacity(cursor.len() + 28);
        frame.extend_from_slice(br#"{"type":"cursor","cursor":"#);
        write_json_string(&mut frame, &cursor);
        frame.push(b'}');
        Message::with_body(
            Body::Signal {
                event: "cursor",
                frame: Bytes::from(frame),
            },
            Some((position, cursor.into_boxed_str())),
        )
    }

    /// True for a cursor marker (it carries no message, and no reset).
    pub fn is_cursor_marker(&self) -> bool {
        matches!(
            self.body,
            Body::Signal {
                event: "cursor",
                ..
            }
        )
    }

    /// The payload as parsed JSON, for filters; parsed the first time it is asked for and
    /// shared after (`None` for a payload that is not JSON, and for markers and signals).
    pub fn document(&self) -> Option<&serde_json::Value> {
        self.document
            .get_or_init(|| match &self.body {
                Body::Event { payload, .. } if payload.is_json() => {
                    serde_json::from_str(payload.text()).ok()
                }
                _ => None,
            })
            .as_ref()
    }

    fn new(channel: Channel, payload: Payload, durable: Option<(i64, Box<str>)>) -> Message {
        Message::with_body(Body::Event { channel, payload }, durable)
    }

    fn with_body(body: Body, durable: Option<(i64, Box<str>)>) -> Message {
        Message {
            body,
            durable,
            websocket: OnceLock::new(),
            sse: OnceLock::new(),
            hippie: OnceLock::new(),
            mxhr: OnceLock::new(),
            document: OnceLock::new(),
        }
    }

    /// The channel the message was published on (`None` for a reset marker).
    pub fn channel(&self) -> Option<&Channel> {
        match &self.body {
            Body::Event { channel, .. } => Some(channel),
            Body::Reset(_) | Body::Signal { .. } => None,
        }
    }

    /// Why the client must reload, for a reset marker.
    pub fn reset_reason(&self) -> Option<ResetReason> {
        match self.body {
            Body::Event { .. } | Body::Signal { .. } => None,
            Body::Reset(reason) => Some(reason),
        }
    }

    /// The cursor of a durable message (or of a reset marker).
    pub fn cursor(&self) -> Option<&str> {
        self.durable.as_ref().map(|(_, cursor)| &**cursor)
    }

    /// The position of a durable message (or of a reset marker) in the global order.
    pub fn position(&self) -> Option<i64> {
        self.durable.as_ref().map(|(position, _)| *position)
    }

    /// The WebSocket text frame (and long-poll array element):
    /// `{"type":"message","channel":"a","data":<payload>,"cursor":"c"}`.
    ///
    /// A reset marker is the reset frame `{"type":"reset","reason":"...","cursor":"c"}`.
    pub fn websocket_text(&self) -> &Bytes {
        self.websocket.get_or_init(|| {
            let (channel, payload) = match &self.body {
                Body::Event { channel, payload } => (channel, payload),
                Body::Reset(reason) => return self.reset_frame(*reason),
                Body::Signal { frame, .. } => return frame.clone(),
            };
            let mut out = Vec::with_capacity(payload.len() + 64);
            out.extend_from_slice(br#"{"type":"message","channel":"#);
            write_json_string(&mut out, channel.as_str());
            out.extend_from_slice(br#","data":"#);
            payload.write_json(&mut out);
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
    ///
    /// A reset marker is `id: <cursor>`, `event: reset` and the reset frame as data, so the
    /// browser's `Last-Event-ID` moves to the new history.
    pub fn sse_event(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let (channel, payload) = match &self.body {
                Body::Event { channel, payload } => (channel, payload),
                Body::Reset(reason) => {
                    let mut out = Vec::new();
                    sse::write_event(&mut out, self.cursor(), "reset", &self.reset_frame(*reason));
                    return Bytes::from(out);
                }
                Body::Signal { event, frame } => {
                    let mut out = Vec::with_capacity(frame.len() + 32);
                    sse::write_event(&mut out, self.cursor(), event, frame);
                    return Bytes::from(out);
                }
            };
            let mut data = Vec::with_capacity(payload.len() + 32);
            data.extend_from_slice(br#"{"channel":"#);
            write_json_string(&mut data, channel.as_str());
            data.extend_from_slice(br#","data":"#);
            payload.write_json(&mut data);
            data.push(b'}');
            let mut out = Vec::with_capacity(data.len() + 64);
            sse::write_event(&mut out, self.cursor(), "message", &data);
            Bytes::from(out)
        })
    }

    /// The Hippie form: the payload itself as a JSON value (a JSON string for text), used as
    /// a WebSocket frame and as a long-poll array element. A reset marker is a `hippie.error`
    /// with code `reset`.
    pub fn hippie_json(&self) -> &Bytes {
        self.hippie.get_or_init(|| match &self.body {
            Body::Event { payload, .. } => {
                let mut out = Vec::with_capacity(payload.len() + 2);
                payload.write_json(&mut out);
                Bytes::from(out)
            }
            Body::Reset(reason) => crate::hippie::error_message("reset", reason.hippie_reason()),
            // Hippie clients never ask for presence and are never controlled: not reached.
            Body::Signal { frame, .. } => frame.clone(),
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
        match &self.body {
            Body::Event { payload, .. } => payload.len() + 64,
            Body::Reset(_) => 64,
            Body::Signal { frame, .. } => frame.len() + 64,
        }
    }

    fn reset_frame(&self, reason: ResetReason) -> Bytes {
        ServerFrame::Reset {
            reason: reason.as_str(),
            cursor: self.cursor(),
        }
        .encode()
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
    fn a_signal_is_its_frame_on_the_websocket_and_an_event_of_its_type_on_sse() {
        let frame = Bytes::from_static(br#"{"type":"join","channel":"c","client":{"id":"n.1"}}"#);
        let m = Message::signal("join", frame.clone());
        assert_eq!(m.websocket_text(), &frame);
        assert_eq!(
            m.sse_event().as_ref(),
            b"event: join\ndata: {\"type\":\"join\",\"channel\":\"c\",\"client\":{\"id\":\"n.1\"}}\n\n"
        );
        assert_eq!(
            (m.channel(), m.position(), m.reset_reason()),
            (None, None, None)
        );
    }

    #[test]
    fn a_cursor_marker_moves_the_cursor_and_carries_no_message() {
        let m = Message::cursor_marker(12, "12.sig".into());
        assert!(m.is_cursor_marker());
        assert_eq!(
            (m.channel(), m.position(), m.cursor()),
            (None, Some(12), Some("12.sig"))
        );
        assert_eq!(
            m.websocket_text().as_ref(),
            br#"{"type":"cursor","cursor":"12.sig"}"#
        );
        assert_eq!(
            std::str::from_utf8(m.sse_event()).unwrap(),
            "id: 12.sig\nevent: cursor\ndata: {\"type\":\"cursor\",\"cursor\":\"12.sig\"}\n\n"
        );
        assert!(m.document().is_none());
        assert!(!Message::signal("join", Bytes::from_static(b"{}")).is_cursor_marker());
    }

    #[test]
    fn the_payload_is_parsed_once_for_filters() {
        let m = message("c", r#"{"a":[1,2]}"#, None);
        let first = m.document().unwrap() as *const serde_json::Value;
        assert_eq!(m.document().unwrap()["a"][1], 2);
        assert_eq!(first, m.document().unwrap() as *const serde_json::Value);
        assert!(message("c", "text", None).document().is_none());
    }

    #[test]
    fn encodings_are_shared() {
        let m = message("c", "1", None);
        assert_eq!(m.websocket_text().as_ptr(), m.websocket_text().as_ptr());
        assert_eq!(m.sse_event().as_ptr(), m.sse_event().as_ptr());
    }

    #[test]
    fn reset_marker_on_every_transport() {
        let m = Message::reset(
            ResetReason::HistoryChanged,
            7,
            "7.ab.0123456789abcdef".into(),
        );
        assert_eq!(m.channel(), None);
        assert_eq!(m.position(), Some(7));
        assert_eq!(
            m.websocket_text().as_ref(),
            br#"{"type":"reset","reason":"history changed","cursor":"7.ab.0123456789abcdef"}"#
        );
        assert_eq!(
            std::str::from_utf8(m.sse_event()).unwrap(),
            "id: 7.ab.0123456789abcdef\nevent: reset\ndata: {\"type\":\"reset\",\"reason\":\"history changed\",\"cursor\":\"7.ab.0123456789abcdef\"}\n\n"
        );
        let hippie: serde_json::Value = serde_json::from_slice(m.hippie_json()).unwrap();
        assert_eq!(hippie["type"], "hippie.error");
        assert_eq!(hippie["code"], "reset");
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
