//! The frames: what clients send (hub protocol version 1, and Moksha's livesocket) and what
//! the gateway writes. `docs/gateway-protocol.md` is the reference.

use hub_core::{Message, Pattern};
use serde_json::{Map, Value, json};

/// Version of the hub protocol.
pub const PROTOCOL_VERSION: u32 = 1;

/// Moksha's subscribe frame's `topic`.
pub const MOKSHA_SUBSCRIBE: &str = "__topic_subscribe__";

/// A frame a client sent, read ([`parse`]).
#[derive(Debug)]
pub enum Request {
    /// `{"op": "subscribe", "patterns": [...]}`.
    Subscribe {
        /// The patterns, parsed.
        patterns: Vec<Pattern>,
        /// The client's `ref`.
        reference: Value,
    },
    /// `{"op": "unsubscribe", "patterns": [...]}`.
    Unsubscribe {
        /// The patterns as written.
        patterns: Vec<String>,
        /// The client's `ref`.
        reference: Value,
    },
    /// `{"op": "publish", "topic", "body", "headers"}`.
    Publish {
        /// A topic without wildcards.
        topic: String,
        /// A JSON object.
        body: Value,
        /// Headers (empty when none were given).
        headers: Map<String, Value>,
        /// The client's `ref`.
        reference: Value,
    },
    /// `{"op": "ping"}`.
    Ping {
        /// The client's `ref`.
        reference: Value,
    },
    /// Moksha: subscribe to a topic, translated to a pattern.
    MokshaSubscribe(Pattern),
    /// Moksha: publish `{"topic", "body"}` (its `client2server` frames); no reply.
    MokshaPublish {
        /// A topic without wildcards.
        topic: String,
        /// A JSON object.
        body: Value,
    },
}

/// A frame that is not the protocol: the `reason` label, and what to tell the client.
#[derive(Debug)]
pub struct Bad {
    /// The `reason` label of `hub_gateway_bad_frames_total`.
    pub reason: &'static str,
    /// The error frame's text.
    pub message: String,
    /// The client's `ref`, when the frame had one.
    pub reference: Value,
    /// A malformed publish (also counted as a rejected publish).
    pub publish: bool,
}

fn bad(reason: &'static str, message: impl Into<String>, reference: &Value) -> Bad {
    Bad {
        reason,
        message: message.into(),
        reference: reference.clone(),
        publish: false,
    }
}

fn patterns(v: Option<&Value>, reference: &Value) -> Result<Vec<String>, Bad> {
    let list = match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("invalid", "`patterns` must be strings", reference))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(
                "invalid",
                "`patterns` is missing: give a list of topic patterns such as [\"org.example.#\"]",
                reference,
            ));
        }
    };
    if list.is_empty() {
        return Err(bad("invalid", "`patterns` is empty", reference));
    }
    Ok(list)
}

/// Moksha's topic forms to a pattern: Moksha matched a subscribed topic exactly, with `*` as
/// "everything below" at the end (as `org.example.*` in its consumers), and a bare `*` for
/// everything. So `a.b` stays `a.b`, `a.b.*` becomes `a.b.#`, and `*` becomes `#`.
///
/// # Errors
/// The topic does not make a valid pattern.
pub fn moksha_pattern(topic: &str) -> Result<Pattern, String> {
    let t = topic.trim();
    let translated = if t == "*" || t.is_empty() {
        "#".to_owned()
    } else if let Some(prefix) = t.strip_suffix(".*") {
        format!("{prefix}.#")
    } else {
        t.to_owned()
    };
    Pattern::new(&translated).map_err(|e| format!("topic {topic:?}: {e}"))
}

/// Reads one text frame (also the fuzz target `gateway_frame`'s entry).
///
/// # Errors
/// Why the frame is not the protocol.
pub fn parse(text: &str) -> Result<Request, Bad> {
    let none = Value::Null;
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad("not_json", format!("not JSON: {e}"), &none))?;
    let Value::Object(mut o) = v else {
        return Err(bad("not_json", "expected a JSON object", &none));
    };
    let reference = o.remove("ref").unwrap_or(Value::Null);
    let Some(op) = o.get("op") else {
        // Moksha's livesocket: {"topic": "__topic_subscribe__", "body": "<topic>"}.
        if o.get("topic").and_then(Value::as_str) == Some(MOKSHA_SUBSCRIBE) {
            let topic = o.get("body").and_then(Value::as_str).ok_or_else(|| {
                bad(
                    "invalid",
                    "__topic_subscribe__ needs the topic as `body`",
                    &reference,
                )
            })?;
            return moksha_pattern(topic)
                .map(Request::MokshaSubscribe)
                .map_err(|e| bad("invalid", e, &reference));
        }
        // Any other {"topic", "body"}: Moksha's publish.
        if o.get("topic").is_some() && o.get("body").is_some() {
            return read_publish(&mut o, &reference)
                .map(|(topic, body, _)| Request::MokshaPublish { topic, body })
                .map_err(|mut b| {
                    b.publish = true;
                    b
                });
        }
        return Err(bad(
            "unknown_op",
            "expected `op` (hub protocol: subscribe, unsubscribe, publish, ping) or Moksha's {\"topic\": \"__topic_subscribe__\", \"body\": \"<topic>\"}",
            &reference,
        ));
    };
    match op.as_str() {
        Some("subscribe") => {
            let list = patterns(o.get("patterns").or_else(|| o.get("pattern")), &reference)?;
            let patterns = list
                .iter()
                .map(|p| {
                    Pattern::new(p)
                        .map_err(|e| bad("invalid", format!("pattern {p:?}: {e}"), &reference))
                })
                .collect::<Result<_, _>>()?;
            Ok(Request::Subscribe {
                patterns,
                reference,
            })
        }
        Some("unsubscribe") => Ok(Request::Unsubscribe {
            patterns: patterns(o.get("patterns").or_else(|| o.get("pattern")), &reference)?,
            reference,
        }),
        Some("publish") => match read_publish(&mut o, &reference) {
            Ok((topic, body, headers)) => Ok(Request::Publish {
                topic,
                body,
                headers,
                reference,
            }),
            Err(mut b) => {
                b.publish = true;
                Err(b)
            }
        },
        Some("ping") => Ok(Request::Ping { reference }),
        Some(other) => Err(bad(
            "unknown_op",
            format!("unknown op {other:?}; expected subscribe, unsubscribe, publish or ping"),
            &reference,
        )),
        None => Err(bad("unknown_op", "`op` must be a string", &reference)),
    }
}

/// A publish's topic (a literal), body (an object) and headers (an object, or none).
fn read_publish(
    o: &mut Map<String, Value>,
    reference: &Value,
) -> Result<(String, Value, Map<String, Value>), Bad> {
    let topic = match o.get("topic") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(bad("invalid", "publish needs `topic`, a string", reference));
        }
    };
    match Pattern::new(&topic) {
        Ok(p) if p.is_literal() => {}
        Ok(_) => {
            return Err(bad(
                "invalid",
                format!("topic {topic:?}: a published topic cannot hold wildcards"),
                reference,
            ));
        }
        Err(e) => return Err(bad("invalid", format!("topic {topic:?}: {e}"), reference)),
    }
    let body = match o.remove("body") {
        Some(b @ Value::Object(_)) => b,
        Some(_) => return Err(bad("invalid", "`body` must be a JSON object", reference)),
        None => {
            return Err(bad(
                "invalid",
                "publish needs `body`, a JSON object",
                reference,
            ));
        }
    };
    let headers = match o.remove("headers") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(h)) => h,
        Some(_) => {
            return Err(bad("invalid", "`headers` must be a JSON object", reference));
        }
    };
    Ok((topic, body, headers))
}

/// `{"type": "message", "id", "topic", "timestamp", "headers", "body"}`: the message's own
/// envelope with `type` in front (written once per message).
pub fn hub_frame(msg: &Message) -> String {
    let envelope = msg.to_json();
    let rest = envelope.strip_prefix('{').unwrap_or(&envelope);
    let mut out = String::with_capacity(envelope.len() + 20);
    out.push_str("{\"type\":\"message\",");
    out.push_str(rest);
    out
}

/// Moksha's frame: `{"topic": ..., "body": ...}`, where Moksha's `body` was the whole fedmsg
/// envelope: `{"topic", "msg" (the message's body), "msg_id", "timestamp" (Unix seconds),
/// "headers"}` here, so a Moksha page reading `body.msg` works unchanged.
pub fn moksha_frame(msg: &Message) -> String {
    let seconds = msg.timestamp().as_millisecond() as f64 / 1000.0;
    json!({
        "topic": msg.topic(),
        "body": {
            "topic": msg.topic(),
            "msg": msg.body(),
            "msg_id": msg.id(),
            "timestamp": seconds,
            "headers": msg.headers(),
        },
    })
    .to_string()
}

/// An SSE event carrying `frame` (a hub frame) with `id` as its event id.
pub(crate) fn sse_event(id: &str, frame: &str) -> axum::body::Bytes {
    // Ids and frames are one line each (JSON text has no raw newline; ids come from backends:
    // a newline in one would end the field, so it is cut there).
    let id = id.split(['\n', '\r']).next().unwrap_or_default();
    format!("id: {id}\nevent: message\ndata: {frame}\n\n").into()
}

/// `{"type": "error", "error", "ref"}`.
pub(crate) fn error_frame(message: &str, reference: &Value) -> String {
    json!({ "type": "error", "error": message, "ref": reference }).to_string()
}

/// A query-string value decoded: `%XX` and `+` (browsers and curl encode `#` as `%23`); a bad
/// escape is kept as written, and bytes that are not UTF-8 become U+FFFD.
pub fn decode_query_value(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
