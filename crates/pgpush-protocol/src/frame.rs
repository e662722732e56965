//! Client frames parsed with precise errors, and the server's control frames.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{Channel, ErrorCode, Filter};

/// Delivery mode of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishMode {
    /// Written to the events table: cursor, global order, resumable.
    Durable,
    /// Plain `NOTIFY`: at-most-once, to whoever is connected.
    Ephemeral,
}

impl PublishMode {
    /// Parses `durable` or `ephemeral`.
    pub fn parse(text: &str) -> Option<PublishMode> {
        match text {
            "durable" => Some(PublishMode::Durable),
            "ephemeral" => Some(PublishMode::Ephemeral),
            _ => None,
        }
    }
}

/// Most durable messages per channel a subscribe's `history` may ask for.
pub const MAX_HISTORY: i64 = 1000;

/// A frame a client sent over WebSocket.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// `{"op":"subscribe","channels":[...],"since":"<cursor>","history":<n>,"presence":true,
    /// "filter":<filter>}`
    Subscribe {
        /// Channels to add, validated.
        channels: Vec<Channel>,
        /// Cursor to resume from.
        since: Option<String>,
        /// Without `since`: the last this many durable messages of each channel first.
        history: Option<i64>,
        /// Be present in the channels and receive their joins and leaves.
        presence: bool,
        /// Deliver only the messages of these channels that match; replaces the filter of a
        /// channel subscribed already.
        filter: Option<Filter>,
    },
    /// `{"op":"unsubscribe","channels":[...]}`
    Unsubscribe {
        /// Channels to drop, validated.
        channels: Vec<Channel>,
    },
    /// `{"op":"publish","channel":"a","data":<JSON>,"mode":"durable"}`
    Publish {
        /// Target channel, validated.
        channel: Channel,
        /// The JSON text of `data`, exactly as the client wrote it.
        data: &'a str,
        /// Requested mode; `None` leaves the choice to the server's default.
        mode: Option<PublishMode>,
    },
    /// `{"op":"ping"}`
    Ping,
    /// `{"op":"auth","token":"<jwt>"}`: replaces the connection's token before it expires.
    Auth {
        /// The new token.
        token: String,
    },
}

/// A parsed client frame with its optional `ref`, echoed in the reply.
#[derive(Debug)]
pub struct ParsedFrame<'a> {
    /// The frame.
    pub frame: ClientFrame<'a>,
    /// The JSON text of `ref` (a string or a number), if the client sent one.
    pub reference: Option<&'a str>,
}

/// Why a client frame was refused: a code, a human reason, and the frame's `ref` when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Stable error code.
    pub code: ErrorCode,
    /// What was wrong, for a human.
    pub reason: String,
    /// The JSON text of the frame's `ref`, when it could be read.
    pub reference: Option<String>,
}

/// Parses one client text frame.
pub fn parse_client_frame(text: &str) -> Result<ParsedFrame<'_>, FrameError> {
    let fields: BTreeMap<&str, &RawValue> = serde_json::from_str(text).map_err(|error| {
        let reason = if error.is_data() {
            "a frame must be a JSON object".to_owned()
        } else {
            format!("frame is not valid JSON: {error}")
        };
        FrameError {
            code: ErrorCode::BadFrame,
            reason,
            reference: None,
        }
    })?;
    let reference = match fields.get("ref") {
        None => None,
        Some(raw)
            if raw.get().starts_with(['"', '-'])
                || raw.get().starts_with(|c: char| c.is_ascii_digit()) =>
        {
            Some(raw.get())
        }
        Some(_) => return Err(bad_frame(None, "\"ref\" must be a string or a number")),
    };
    let fail = |code, reason: String| FrameError {
        code,
        reason,
        reference: reference.map(str::to_owned),
    };
    let op: &str = match fields.get("op") {
        None => return Err(fail(ErrorCode::BadFrame, "frame has no \"op\"".into())),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| fail(ErrorCode::BadFrame, "\"op\" must be a string".into()))?,
    };
    let frame = match op {
        "subscribe" => ClientFrame::Subscribe {
            channels: channel_list(&fields, &fail)?,
            since: match fields.get("since") {
                None => None,
                Some(raw) => Some(serde_json::from_str::<String>(raw.get()).map_err(|_| {
                    fail(
                        ErrorCode::BadCursor,
                        "\"since\" must be a cursor string".into(),
                    )
                })?),
            },
            history: match fields.get("history") {
                None => None,
                Some(raw) => Some(
                    serde_json::from_str::<i64>(raw.get())
                        .ok()
                        .filter(|n| (0..=MAX_HISTORY).contains(n))
                        .ok_or_else(|| {
                            fail(
                                ErrorCode::BadFrame,
                                format!(
                                    "\"history\" must be a whole number from 0 to {MAX_HISTORY}"
                                ),
                            )
                        })?,
                ),
            },
            presence: match fields.get("presence") {
                None => false,
                Some(raw) => serde_json::from_str::<bool>(raw.get()).map_err(|_| {
                    fail(
                        ErrorCode::BadFrame,
                        "\"presence\" must be true or false".into(),
                    )
                })?,
            },
            filter: match fields.get("filter") {
                None => None,
                Some(raw) => Some(
                    Filter::parse(raw.get())
                        .map_err(|error| fail(ErrorCode::BadFilter, error.to_string()))?,
                ),
            },
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            channels: channel_list(&fields, &fail)?,
        },
        "publish" => {
            let channel: String = match fields.get("channel") {
                Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
                    fail(ErrorCode::BadFrame, "\"channel\" must be a string".into())
                })?,
                None => {
                    return Err(fail(
                        ErrorCode::BadFrame,
                        "publish needs \"channel\"".into(),
                    ));
                }
            };
            let channel = Channel::new(&channel)
                .map_err(|error| fail(ErrorCode::BadChannel, format!("{channel:?}: {error}")))?;
            let data = fields
                .get("data")
                .ok_or_else(|| fail(ErrorCode::BadFrame, "publish needs \"data\"".into()))?
                .get();
            let mode = match fields.get("mode") {
                None => None,
                Some(raw) => Some(
                    serde_json::from_str::<&str>(raw.get())
                        .ok()
                        .and_then(PublishMode::parse)
                        .ok_or_else(|| {
                            fail(
                                ErrorCode::BadFrame,
                                "\"mode\" must be \"durable\" or \"ephemeral\"".into(),
                            )
                        })?,
                ),
            };
            ClientFrame::Publish {
                channel,
                data,
                mode,
            }
        }
        "ping" => ClientFrame::Ping,
        "auth" => ClientFrame::Auth {
            token: fields
                .get("token")
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
                .ok_or_else(|| fail(ErrorCode::BadFrame, "auth needs a \"token\" string".into()))?,
        },
        other => {
            return Err(fail(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {other:?}; expected subscribe, unsubscribe, publish, ping or auth"
                ),
            ));
        }
    };
    Ok(ParsedFrame { frame, reference })
}

fn bad_frame(reference: Option<&str>, reason: &str) -> FrameError {
    FrameError {
        code: ErrorCode::BadFrame,
        reason: reason.to_owned(),
        reference: reference.map(str::to_owned),
    }
}

fn channel_list(
    fields: &BTreeMap<&str, &RawValue>,
    fail: &dyn Fn(ErrorCode, String) -> FrameError,
) -> Result<Vec<Channel>, FrameError> {
    let names: Vec<String> = fields
        .get("channels")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .filter(|names: &Vec<String>| !names.is_empty())
        .ok_or_else(|| {
            fail(
                ErrorCode::BadFrame,
                "\"channels\" must be a non-empty array of strings".into(),
            )
        })?;
    names
        .iter()
        .map(|name| {
            Channel::new(name)
                .map_err(|error| fail(ErrorCode::BadChannel, format!("{name:?}: {error}")))
        })
        .collect()
}

/// A control frame from the server to a WebSocket client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame<'a> {
    /// The channels are subscribed (LISTEN confirmed by PostgreSQL, replay done).
    Subscribed {
        /// The channels of the request.
        channels: &'a [Channel],
        /// The connection's position once replay is done (durable channels only).
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
        /// The connection's id in the channels' presence, when it asked to be present.
        #[serde(skip_serializing_if = "Option::is_none")]
        presence_id: Option<&'a str>,
    },
    /// The channels are no longer subscribed.
    Unsubscribed {
        /// The channels of the request.
        channels: &'a [Channel],
    },
    /// The client's cursor names events that are gone (retention deleted them, or the
    /// database's history changed): reload state, then continue.
    Reset {
        /// Why: `cursor expired` or `history changed`.
        reason: &'a str,
        /// Where what follows continues from, when the reset comes live (a marker in the queue).
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    /// A publish was accepted.
    Ack {
        /// The publish frame's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
        /// The cursor of a durable publish.
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    },
    /// Reply to `ping`.
    Pong {
        /// The ping frame's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
    /// A request failed; the connection stays open unless a close frame follows.
    Error {
        /// Stable error code.
        code: &'a str,
        /// Human text.
        reason: &'a str,
        /// The failed frame's `ref`.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a RawValue>,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> Bytes {
        // These types serialise infallibly (strings, numbers, raw JSON already validated).
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Turns the JSON text of a `ref` back into a raw value for a reply.
pub fn raw_reference(text: Option<&str>) -> Option<Box<RawValue>> {
    text.and_then(|t| RawValue::from_string(t.to_owned()).ok())
}

/// The JSON body answering a successful `POST /v1/publish/<channel>`:
/// `{"channel":"a","mode":"durable","cursor":"c"}` (cursor for durable publishes only).
pub fn publish_reply(channel: &Channel, mode: PublishMode, cursor: Option<&str>) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        channel: &'a Channel,
        mode: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<&'a str>,
    }
    let mode = match mode {
        PublishMode::Durable => "durable",
        PublishMode::Ephemeral => "ephemeral",
    };
    Bytes::from(
        serde_json::to_vec(&Body {
            channel,
            mode,
            cursor,
        })
        .unwrap_or_default(),
    )
}

/// The `/v1/poll` answer: `{"messages":[...],"cursor":"c"}`, plus `"reset":true` and its
/// `"reason"` when the client must reload its state (then `messages` are what follows the
/// reset). `messages` are WebSocket message frames.
pub fn poll_reply<'a>(
    messages: impl IntoIterator<Item = &'a [u8]>,
    cursor: Option<&str>,
    reset: Option<crate::ResetReason>,
) -> Bytes {
    let mut out = Vec::from(&br#"{"messages":["#[..]);
    for (i, message) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message);
    }
    out.extend_from_slice(br#"],"cursor":"#);
    match cursor {
        Some(cursor) => crate::payload::write_json_string(&mut out, cursor),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(reason) = reset {
        out.extend_from_slice(br#","reset":true,"reason":"#);
        crate::payload::write_json_string(&mut out, reason.as_str());
    }
    out.push(b'}');
    Bytes::from(out)
}

/// The JSON body of an HTTP error response: `{"error":"<code>","reason":"<text>"}`.
pub fn http_error_body(code: ErrorCode, reason: &str) -> Bytes {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        reason: &'a str,
    }
    Bytes::from(
        serde_json::to_vec(&Body {
            error: code.as_str(),
            reason,
        })
        .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, code: ErrorCode, reason_part: &str, reference: Option<&str>) {
        let error = parse_client_frame(text).expect_err(text);
        assert_eq!(error.code, code, "{text}: {error:?}");
        assert!(
            error.reason.contains(reason_part),
            "{text}: {:?}",
            error.reason
        );
        assert_eq!(error.reference.as_deref(), reference, "{text}");
    }

    #[test]
    fn auth_carries_a_token() {
        let parsed = parse_client_frame(r#"{"op":"auth","token":"a.b.c","ref":7}"#).unwrap();
        assert!(matches!(parsed.frame, ClientFrame::Auth { ref token } if token == "a.b.c"));
        assert_eq!(parsed.reference, Some("7"));
        let missing = parse_client_frame(r#"{"op":"auth","token":5,"ref":"x"}"#).unwrap_err();
        assert_eq!(missing.code, ErrorCode::BadFrame);
        assert_eq!(missing.reference.as_deref(), Some("\"x\""));
    }

    #[test]
    fn subscribe_with_history() {
        let parsed =
            parse_client_frame(r#"{"op":"subscribe","channels":["a"],"history":50}"#).unwrap();
        assert!(matches!(
            parsed.frame,
            ClientFrame::Subscribe {
                history: Some(50),
                since: None,
                ..
            }
        ));
        for bad in ["-1", "1001", "2.5", "\"7\"", "null"] {
            let frame = format!(r#"{{"op":"subscribe","channels":["a"],"history":{bad}}}"#);
            let error = parse_client_frame(&frame).unwrap_err();
            assert_eq!(error.code, ErrorCode::BadFrame, "{bad}");
            assert!(error.reason.contains("history"), "{}", error.reason);
        }
    }

    #[test]
    fn subscribe_with_a_filter() {
        let parsed = parse_client_frame(
            r#"{"op":"subscribe","channels":["a"],"filter":{"path":"x","op":"exists"}}"#,
        )
        .unwrap();
        match parsed.frame {
            ClientFrame::Subscribe {
                filter: Some(filter),
                ..
            } => assert_eq!(filter.canonical(), r#"{"op":"exists","path":"x"}"#),
            other => panic!("{other:?}"),
        }
        let error = parse_client_frame(
            r#"{"op":"subscribe","channels":["a"],"filter":{"path":"x","op":"near"},"ref":3}"#,
        )
        .unwrap_err();
        assert_eq!(error.code, ErrorCode::BadFilter);
        assert_eq!(error.reference.as_deref(), Some("3"));
        assert!(
            error.reason.contains("unknown op \"near\""),
            "{}",
            error.reason
        );
    }

    #[test]
    fn subscribe_with_presence() {
        let parsed =
            parse_client_frame(r#"{"op":"subscribe","channels":["a"],"presence":true}"#).unwrap();
        assert!(matches!(
            parsed.frame,
            ClientFrame::Subscribe { presence: true, .. }
        ));
        let parsed = parse_client_frame(r#"{"op":"subscribe","channels":["a"]}"#).unwrap();
        assert!(matches!(
            parsed.frame,
            ClientFrame::Subscribe {
                presence: false,
                ..
            }
        ));
        let error =
            parse_client_frame(r#"{"op":"subscribe","channels":["a"],"presence":1}"#).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadFrame);
        assert!(error.reason.contains("presence"), "{}", error.reason);
    }

    #[test]
    fn subscribe_and_friends() {
        let parsed =
            parse_client_frame(r#"{"op":"subscribe","channels":["a","B c"],"since":"5"}"#).unwrap();
        match parsed.frame {
            ClientFrame::Subscribe {
                channels, since, ..
            } => {
                assert_eq!(
                    channels,
                    [Channel::new("a").unwrap(), Channel::new("B c").unwrap()]
                );
                assert_eq!(since.as_deref(), Some("5"));
            }
            other => panic!("{other:?}"),
        }
        let parsed = parse_client_frame(r#"{"op":"ping","ref":7}"#).unwrap();
        assert!(matches!(parsed.frame, ClientFrame::Ping));
        assert_eq!(parsed.reference, Some("7"));
        let parsed = parse_client_frame(
            r#"{"ref":"r1","op":"publish","channel":"c","data": {"k" : [1, 2.50]},"x":1}"#,
        )
        .unwrap();
        match parsed.frame {
            ClientFrame::Publish {
                channel,
                data,
                mode,
            } => {
                assert_eq!(channel.as_str(), "c");
                assert_eq!(data, r#"{"k" : [1, 2.50]}"#);
                assert_eq!(mode, None);
            }
            other => panic!("{other:?}"),
        }
        let parsed =
            parse_client_frame(r#"{"op":"publish","channel":"c","data":null,"mode":"ephemeral"}"#)
                .unwrap();
        assert!(matches!(
            parsed.frame,
            ClientFrame::Publish {
                data: "null",
                mode: Some(PublishMode::Ephemeral),
                ..
            }
        ));
    }

    #[test]
    fn precise_errors() {
        check_err("nope", ErrorCode::BadFrame, "not valid JSON", None);
        check_err("[1]", ErrorCode::BadFrame, "JSON object", None);
        check_err(
            r#"{"channels":["a"]}"#,
            ErrorCode::BadFrame,
            "no \"op\"",
            None,
        );
        check_err(
            r#"{"op":"dance","ref":"r"}"#,
            ErrorCode::UnknownOp,
            "\"dance\"",
            Some("\"r\""),
        );
        check_err(
            r#"{"op":"subscribe","ref":1}"#,
            ErrorCode::BadFrame,
            "\"channels\"",
            Some("1"),
        );
        check_err(
            r#"{"op":"subscribe","channels":[]}"#,
            ErrorCode::BadFrame,
            "non-empty",
            None,
        );
        check_err(
            r#"{"op":"subscribe","channels":["ok",""]}"#,
            ErrorCode::BadChannel,
            "empty",
            None,
        );
        let long = "x".repeat(64);
        check_err(
            &format!(r#"{{"op":"unsubscribe","channels":["{long}"]}}"#),
            ErrorCode::BadChannel,
            "64 bytes",
            None,
        );
        check_err(
            r#"{"op":"subscribe","channels":["a\u0000"]}"#,
            ErrorCode::BadChannel,
            "NUL",
            None,
        );
        check_err(
            r#"{"op":"publish","channel":"c"}"#,
            ErrorCode::BadFrame,
            "\"data\"",
            None,
        );
        check_err(
            r#"{"op":"publish","channel":"c","data":1,"mode":"loud"}"#,
            ErrorCode::BadFrame,
            "\"mode\"",
            None,
        );
        check_err(
            r#"{"op":"ping","ref":{"a":1}}"#,
            ErrorCode::BadFrame,
            "\"ref\"",
            None,
        );
        check_err(
            r#"{"op":"subscribe","channels":["a"],"since":5}"#,
            ErrorCode::BadCursor,
            "cursor",
            None,
        );
    }

    #[test]
    fn server_frames() {
        let channels = [Channel::new("a").unwrap()];
        let reference = raw_reference(Some("\"r1\""));
        assert_eq!(
            ServerFrame::Subscribed {
                channels: &channels,
                cursor: None,
                presence_id: None,
            }
            .encode()
            .as_ref(),
            br#"{"type":"subscribed","channels":["a"]}"#
        );
        assert_eq!(
            ServerFrame::Subscribed {
                channels: &channels,
                cursor: Some("7.x"),
                presence_id: Some("n.3"),
            }
            .encode()
            .as_ref(),
            br#"{"type":"subscribed","channels":["a"],"cursor":"7.x","presence_id":"n.3"}"#
        );
        assert_eq!(
            ServerFrame::Error {
                code: "bad_frame",
                reason: "x",
                reference: reference.as_deref()
            }
            .encode()
            .as_ref(),
            br#"{"type":"error","code":"bad_frame","reason":"x","ref":"r1"}"#
        );
        assert_eq!(
            ServerFrame::Pong { reference: None }.encode().as_ref(),
            br#"{"type":"pong"}"#
        );
        assert_eq!(
            http_error_body(ErrorCode::NotFound, "no route").as_ref(),
            br#"{"error":"not_found","reason":"no route"}"#
        );
    }
}
