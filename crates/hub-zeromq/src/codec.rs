//! Frames ↔ [`Message`]: fedmsg's two-frame envelope, or raw `[topic, JSON body]`.

use bytes::Bytes;
use hub_core::json::{JsonText, object_members};
use hub_core::{Headers, Message, correlation};
use jiff::Timestamp;
use serde::Deserialize;
use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// Wire format of a ZeroMQ backend (`format = "fedmsg" | "raw"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `[topic, {"topic","msg","msg_id","timestamp","i","username",...}]`, as fedmsg publishes.
    #[default]
    Fedmsg,
    /// `[topic, JSON body]`: id and timestamp are made up on receipt.
    Raw,
}

/// Why a ZeroMQ message was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The message id, when it could be read.
    pub id: Option<String>,
    /// What was wrong.
    pub reason: String,
}

impl Invalid {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            id: None,
            reason: reason.into(),
        }
    }
}

/// Decodes one multipart message.
///
/// # Errors
/// [`Invalid`] for a frame count other than 2, a non-UTF-8 topic, invalid JSON, a fedmsg
/// envelope without `msg` or whose `topic` differs from frame 0, or a bad `timestamp`.
pub fn decode(format: Format, frames: &[Bytes]) -> Result<Message, Invalid> {
    decode_with_seq(format, frames).map(|(m, _)| m)
}

/// [`decode`], also returning fedmsg's `i` sequence number when the envelope has one (read
/// without materializing the headers).
///
/// # Errors
/// As [`decode`].
pub fn decode_with_seq(
    format: Format,
    frames: &[Bytes],
) -> Result<(Message, Option<u64>), Invalid> {
    let [topic, body] = frames else {
        return Err(Invalid::new(format!(
            "expected 2 frames [topic, body], got {}",
            frames.len()
        )));
    };
    let topic = std::str::from_utf8(topic).map_err(|_| Invalid::new("topic frame is not UTF-8"))?;
    let text =
        std::str::from_utf8(body).map_err(|_| Invalid::new("body is not JSON: not UTF-8"))?;
    match format {
        Format::Raw => {
            let raw = match JsonText::new(text) {
                Some(raw) => raw,
                None => {
                    return Err(Invalid::new(format!("body is {}", JsonText::refusal(text))));
                }
            };
            Ok((
                Message::from_json_parts(topic, None, Timestamp::now(), raw, &[]),
                None,
            ))
        }
        Format::Fedmsg => decode_fedmsg(topic, text),
    }
}

/// The extra fedmsg fields, kept as the message's headers, in the order they are written.
const EXTRAS: [&str; 9] = [
    "i",
    "username",
    "crypto",
    "signature",
    "certificate",
    "headers",
    "seq_id",
    "source_name",
    "source_version",
];

/// The headers of a message received as a fedmsg envelope: its [`EXTRAS`] fields that are not
/// null (read only when a consumer asks for the headers).
fn extras_as_headers(envelope: &str) -> Headers {
    let mut map: Headers = serde_json::from_str(envelope).unwrap_or_default();
    map.retain(|k, v| !v.is_null() && EXTRAS.contains(&k.as_str()));
    lift_correlation(&mut map);
    map
}

/// The correlation headers ([`hub_core::correlation`]) travel inside fedmsg's `headers` object
/// (where [`encode`] puts every header that is not a fedmsg field): they are also read at the
/// top level, where the hub looks for them, so that a chain keeps its correlation id across a
/// fedmsg hop.
fn lift_correlation(map: &mut Headers) {
    let Some(Value::Object(nested)) = map.get("headers") else {
        return;
    };
    let lifted: Vec<(String, Value)> = [correlation::IN_REPLY_TO, correlation::CORRELATION_ID]
        .into_iter()
        .filter(|k| !map.contains_key(*k))
        .filter_map(|k| Some((k.to_owned(), nested.get(k)?.clone())))
        .collect();
    map.extend(lifted);
}

/// A fedmsg envelope's fields, borrowed from the frame (`msg` and the extras stay JSON text:
/// the body is parsed only if a consumer reads it). Absent and `null` read the same.
#[derive(Debug, Default, PartialEq)]
struct Envelope<'a> {
    topic: Option<Cow<'a, str>>,
    msg: Option<JsonText<'a>>,
    msg_id: Option<Cow<'a, str>>,
    timestamp: Option<f64>,
    /// In [`EXTRAS`]' order.
    extras: [Option<JsonText<'a>>; 9],
}

impl<'a> Envelope<'a> {
    /// One pass of [`hub_core::json::object_members`]. `None` when the envelope is invalid or
    /// unusual (a field of the wrong type, a repeated field): [`Envelope::read_serde`] decides.
    fn read_fast(text: &'a str) -> Option<Self> {
        let mut env = Envelope::default();
        let mut seen = 0u16;
        let read = object_members(text, |key, value| {
            // Slots 0..9 are EXTRAS' (matched as bytes: compared inline, no call).
            let slot = match key.as_bytes() {
                b"i" => 0,
                b"username" => 1,
                b"crypto" => 2,
                b"signature" => 3,
                b"certificate" => 4,
                b"headers" => 5,
                b"seq_id" => 6,
                b"source_name" => 7,
                b"source_version" => 8,
                b"topic" => 9,
                b"msg" => 10,
                b"msg_id" => 11,
                b"timestamp" => 12,
                _ => return true, // not a fedmsg field: ignored
            };
            if seen & (1 << slot) != 0 {
                return false;
            }
            seen |= 1 << slot;
            if value.is_null() {
                return true;
            }
            // A string or number field that is not one (`None`): serde_json names the error.
            match slot {
                9 => {
                    env.topic = value.as_str();
                    env.topic.is_some()
                }
                10 => {
                    env.msg = Some(value);
                    true
                }
                11 => {
                    env.msg_id = value.as_str();
                    env.msg_id.is_some()
                }
                12 => {
                    env.timestamp = value.as_f64();
                    env.timestamp.is_some()
                }
                n => {
                    env.extras[n] = Some(value);
                    true
                }
            }
        });
        read.map(|()| env)
    }

    /// The same fields through serde_json (typed, borrowed): exact error messages for invalid
    /// envelopes, and the rare valid one the fast reader is not sure of. The envelope must read
    /// as a `Value` first, as the fast reader requires of it (numbers in `f64`'s range, paired
    /// surrogate escapes, nesting under 128).
    fn read_serde(text: &'a str) -> Result<Self, Invalid> {
        // What serde_json does not read as it was sent (its raw-value marker, at any depth):
        // refused whole, never read with a field missing or turned into `null`.
        if JsonText::new(text).is_none() {
            #[derive(serde::Deserialize)]
            struct IdOnly {
                msg_id: Option<String>,
            }
            let id = serde_json::from_str::<IdOnly>(text)
                .ok()
                .and_then(|e| e.msg_id);
            let reason = JsonText::refusal(text);
            return Err(Invalid {
                id,
                reason: if reason.starts_with("not JSON") {
                    format!("body is {reason}")
                } else {
                    format!("fedmsg envelope {reason}")
                },
            });
        }
        let whole: Value = serde_json::from_str(text)
            .map_err(|e| Invalid::new(format!("body is not JSON: {e}")))?;
        let env: SerdeEnvelope<'_> = serde_json::from_str(text).map_err(|e| {
            // A field of the wrong type (rare): the map names the field.
            let id = whole
                .get("msg_id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let reason = match (
                whole.get("msg_id"),
                whole.get("timestamp"),
                whole.get("topic"),
            ) {
                (Some(v), _, _) if !v.is_string() && !v.is_null() => {
                    "msg_id is not a string".to_owned()
                }
                (_, Some(v), _) if !v.is_number() && !v.is_null() => {
                    "timestamp is not a number".to_owned()
                }
                (_, _, Some(v)) if !v.is_string() => "envelope topic is not a string".to_owned(),
                _ => format!("fedmsg envelope: {e}"),
            };
            Invalid { id, reason }
        })?;
        // Members of a document that reads as a `Value`: each reads as one.
        let raw = |v: Option<&'a RawValue>| v.and_then(JsonText::from_raw);
        Ok(Envelope {
            topic: env.topic,
            msg: raw(env.msg),
            msg_id: env.msg_id,
            timestamp: env.timestamp,
            extras: [
                raw(env.i),
                raw(env.username),
                raw(env.crypto),
                raw(env.signature),
                raw(env.certificate),
                raw(env.headers),
                raw(env.seq_id),
                raw(env.source_name),
                raw(env.source_version),
            ],
        })
    }
}

/// [`Envelope`] as serde_json reads it: `null` is `None`, other keys are ignored.
#[derive(Deserialize)]
struct SerdeEnvelope<'a> {
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow)]
    msg: Option<&'a RawValue>,
    #[serde(borrow, default)]
    msg_id: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<f64>,
    #[serde(borrow)]
    i: Option<&'a RawValue>,
    #[serde(borrow)]
    username: Option<&'a RawValue>,
    #[serde(borrow)]
    crypto: Option<&'a RawValue>,
    #[serde(borrow)]
    signature: Option<&'a RawValue>,
    #[serde(borrow)]
    certificate: Option<&'a RawValue>,
    #[serde(borrow)]
    headers: Option<&'a RawValue>,
    #[serde(borrow)]
    seq_id: Option<&'a RawValue>,
    #[serde(borrow)]
    source_name: Option<&'a RawValue>,
    #[serde(borrow)]
    source_version: Option<&'a RawValue>,
}

/// Decodes the envelope in one pass of hub-core's JSON reader (serde_json when that is not
/// sure, which gives the same message or the same error). The extra fields become the
/// message's headers, kept as JSON text: a map is built only if a consumer reads them.
fn decode_fedmsg(topic: &str, text: &str) -> Result<(Message, Option<u64>), Invalid> {
    let env = match Envelope::read_fast(text) {
        Some(env) => env,
        // The fast reader only reads objects: whatever else this is, say so first.
        None if !text.trim_start().starts_with('{') => {
            return Err(Invalid::new("fedmsg envelope is not a JSON object"));
        }
        None => Envelope::read_serde(text)?,
    };
    let id = env.msg_id.as_deref();
    let fail = |reason: String| Invalid {
        id: id.map(str::to_owned),
        reason,
    };
    match env.topic.as_deref() {
        Some(t) if t == topic => {}
        Some(t) => {
            return Err(fail(format!(
                "topic envelope mismatch: frame {topic:?}, envelope {t:?}"
            )));
        }
        None => return Err(fail("envelope has no topic".into())),
    }
    let body = env.msg.ok_or_else(|| fail("envelope has no msg".into()))?;
    let timestamp = match env.timestamp {
        None => Timestamp::now(),
        Some(secs) => timestamp_from_secs(secs).map_err(fail)?,
    };
    let seq = env.extras[0].and_then(|i| i.as_u64());
    // The usual envelope (topic and id with no escapes, so they are slices of the text): one
    // copy of the whole text, in which the message finds its parts.
    if let (Some(Cow::Borrowed(topic)), Some(Cow::Borrowed(id))) = (&env.topic, &env.msg_id)
        && let Some(msg) =
            Message::from_json_envelope(text, topic, id, timestamp, body, extras_as_headers)
    {
        return Ok((msg, seq));
    }
    // The extra fields become the headers: at most nine, gathered on the stack.
    let mut headers: [(&str, JsonText<'_>); 9] = [("", body); 9];
    let mut n = 0;
    for (k, v) in EXTRAS.into_iter().zip(env.extras) {
        if let Some(v) = v {
            headers[n] = (k, v);
            n += 1;
        }
    }
    let msg = Message::from_json_parts(topic, id, timestamp, body, &headers[..n]);
    // Rare (an escaped topic or id): the headers are read now, for the correlation ones.
    let mut lifted = msg.headers().clone();
    lift_correlation(&mut lifted);
    if lifted.len() > msg.headers().len() {
        let msg = msg.with_headers_added(lifted);
        return Ok((msg, seq));
    }
    Ok((msg, seq))
}

/// Seconds after the epoch (a fedmsg `timestamp`), to the nanosecond; beyond ±1e10 s (the
/// year 2286) it is out of range.
fn timestamp_from_secs(secs: f64) -> Result<Timestamp, String> {
    if secs.is_nan() || secs.abs() > 1e10 {
        return Err(format!("timestamp {secs} is out of range"));
    }
    // In range, so `as` truncates exactly, and the fraction is exact too.
    let whole = secs as i64;
    let fraction = secs - whole as f64;
    let at = if fraction == 0.0 {
        // Whole seconds, what fedmsg sends: no 128-bit arithmetic.
        Timestamp::from_second(whole)
    } else {
        // The fraction scaled on its own: `secs * 1e9` would round to ~256 ns.
        let nanos = (fraction * 1e9).round() as i64;
        Timestamp::from_nanosecond(i128::from(whole) * 1_000_000_000 + i128::from(nanos))
    };
    at.map_err(|e| format!("timestamp {secs}: {e}"))
}

/// A fedmsg `msg_id`: the message id when it already reads `<year>-<uuid>`, `<year>-<id>` when
/// it is a bare UUID, else a fresh `<year>-<uuid4>`.
pub fn fedmsg_id(msg: &Message) -> String {
    let id = msg.id();
    let year = msg.timestamp().to_zoned(jiff::tz::TimeZone::UTC).year();
    let is_uuid = |s: &str| uuid::Uuid::parse_str(s).is_ok();
    match id.split_once('-') {
        Some((y, rest))
            if y.len() == 4 && y.bytes().all(|b| b.is_ascii_digit()) && is_uuid(rest) =>
        {
            id.to_owned()
        }
        _ if is_uuid(id) => format!("{year}-{id}"),
        _ => format!("{year}-{}", uuid::Uuid::new_v4()),
    }
}

/// Encodes one message as two frames. For fedmsg: sorted keys, compact separators, integer
/// `timestamp`, `i` = the publisher's counter (from 1), `username`; the message's headers that
/// are fedmsg fields (`crypto`, `signature`, ...) are kept, others travel under `headers`.
pub fn encode(format: Format, msg: &Message, i: u64, username: &str) -> [Bytes; 2] {
    let topic = Bytes::copy_from_slice(msg.topic().as_bytes());
    let body = match format {
        Format::Raw => serde_json::to_vec(msg.body()),
        Format::Fedmsg => {
            // serde_json's Map is a BTreeMap here (no `preserve_order`): keys come out sorted.
            let mut env = Map::new();
            let mut extra = Map::new();
            for (k, v) in msg.headers() {
                match k.as_str() {
                    "crypto" | "signature" | "certificate" | "seq_id" | "source_name"
                    | "source_version" => {
                        env.insert(k.clone(), v.clone());
                    }
                    "headers" => {
                        if let Value::Object(h) = v {
                            extra.extend(h.clone());
                        }
                    }
                    "i" | "username" => {}
                    _ => {
                        extra.insert(k.clone(), v.clone());
                    }
                }
            }
            env.insert("topic".into(), json!(msg.topic()));
            env.insert("msg".into(), msg.body().clone());
            env.insert("msg_id".into(), json!(fedmsg_id(msg)));
            env.insert("timestamp".into(), json!(msg.timestamp().as_second()));
            env.insert("i".into(), json!(i));
            env.insert("username".into(), json!(username));
            if !extra.is_empty() {
                env.insert("headers".into(), Value::Object(extra));
            }
            serde_json::to_vec(&Value::Object(env))
        }
    };
    // Serializing JSON values cannot fail.
    [topic, Bytes::from(body.unwrap_or_default())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(topic: &[u8], body: &str) -> Vec<Bytes> {
        vec![
            Bytes::copy_from_slice(topic),
            Bytes::copy_from_slice(body.as_bytes()),
        ]
    }

    #[test]
    fn decodes_a_real_fedmsg_envelope() {
        let body = r#"{"i": 3, "msg": {"build": 42}, "msg_id": "2024-7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11",
            "timestamp": 1717171717.5, "topic": "org.fedoraproject.prod.buildsys.build.state.change",
            "username": "apache", "crypto": "x509", "signature": "c2ln\n", "certificate": "Y2VydA==\n"}"#;
        let m = decode(
            Format::Fedmsg,
            &frames(b"org.fedoraproject.prod.buildsys.build.state.change", body),
        )
        .unwrap();
        assert_eq!(
            m.topic(),
            "org.fedoraproject.prod.buildsys.build.state.change"
        );
        assert_eq!(m.body(), &json!({"build": 42}));
        assert_eq!(m.id(), "2024-7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11");
        assert_eq!(m.timestamp().as_millisecond(), 1_717_171_717_500);
        assert_eq!(m.header("i"), Some(&json!(3)));
        assert_eq!(m.header("username"), Some(&json!("apache")));
        assert_eq!(m.header("crypto"), Some(&json!("x509")));
        assert!(m.header("msg").is_none() && m.header("topic").is_none());
        // Read in one pass, without serde_json; a repeated field or one of the wrong type is
        // left to serde_json, which rejects it.
        assert!(Envelope::read_fast(body).is_some());
        for odd in [
            r#"{"topic": "a.b", "topic": "a.b", "msg": {}}"#,
            r#"{"topic": "a.b", "msg": {}, "timestamp": "yesterday"}"#,
            r#"{"topic": 7, "msg": {}}"#,
        ] {
            assert_eq!(Envelope::read_fast(odd), None, "{odd}");
            assert!(
                decode(Format::Fedmsg, &frames(b"a.b", odd)).is_err(),
                "{odd}"
            );
        }
    }

    #[test]
    fn rejects_malformed_input() {
        let ok = r#"{"topic": "a.b", "msg": {}, "msg_id": "x", "timestamp": 1}"#;
        let one = vec![Bytes::from_static(b"a.b")];
        let three = vec![
            Bytes::from_static(b"a.b"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
        ];
        let cases: Vec<(Vec<Bytes>, &str)> = vec![
            (one, "expected 2 frames"),
            (three, "got 3"),
            (frames(b"a.b", "{not json"), "not JSON"),
            (frames(b"\xff\xfe", ok), "not UTF-8"),
            (frames(b"a.c", ok), "topic envelope mismatch"),
            (frames(b"a.b", r#"{"topic": "a.b"}"#), "no msg"),
            (frames(b"a.b", r#"[1, 2]"#), "not a JSON object"),
            (
                frames(
                    b"a.b",
                    r#"{"topic": "a.b", "msg": {}, "timestamp": "yesterday"}"#,
                ),
                "timestamp",
            ),
            // JSON that no consumer could read back: refused, not turned into null.
            (
                frames(b"a.b", r#"{"topic": "a.b", "msg": {"n": 1e400}}"#),
                "number out of range",
            ),
            (
                frames(b"a.b", r#"{"topic": "a.b", "msg": "\uD800"}"#),
                "hex escape",
            ),
            (
                frames(
                    b"a.b",
                    &format!(
                        r#"{{"topic": "a.b", "msg": {}{}}}"#,
                        "[".repeat(200),
                        "]".repeat(200)
                    ),
                ),
                "recursion limit",
            ),
        ];
        for (f, want) in cases {
            let err = decode(Format::Fedmsg, &f).unwrap_err();
            assert!(err.reason.contains(want), "{want}: {err:?}");
        }
        let err = decode(Format::Fedmsg, &frames(b"a.c", ok)).unwrap_err();
        assert_eq!(err.id.as_deref(), Some("x"), "the id is logged when known");
    }

    #[test]
    fn timestamps_are_exact_to_the_nanosecond() {
        let ns = |secs: f64| timestamp_from_secs(secs).map(|t| t.as_nanosecond());
        // Exact to the nanosecond, even where `secs * 1e9` is not.
        assert_eq!(ns(1_763_000_000.0), Ok(1_763_000_000_000_000_000));
        assert_eq!(ns(9_999_999_999.0), Ok(9_999_999_999_000_000_000));
        assert_eq!(ns(-86_400.0), Ok(-86_400_000_000_000));
        assert_eq!(ns(1_717_171_717.25), Ok(1_717_171_717_250_000_000));
        // The same range either way: ±1e10 s.
        assert_eq!(ns(1e10), Ok(10_000_000_000_000_000_000));
        assert_eq!(ns(-1e10), Ok(-10_000_000_000_000_000_000));
        for bad in [
            1e10 + 1.0,
            -1e10 - 1.0,
            1e10 + 0.5,
            f64::NAN,
            f64::INFINITY,
            -1e300,
        ] {
            assert!(ns(bad).unwrap_err().contains("out of range"), "{bad}");
        }
    }

    #[test]
    fn encodes_what_fedmsg_accepts() {
        let m = Message::builder("org.example.prod.app.thing", json!({"z": 1, "a": "é"}))
            .id("7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11")
            .timestamp("2026-11-22T19:00:00.9Z".parse().unwrap())
            .header("trace", "t-1")
            .build();
        let [topic, body] = encode(Format::Fedmsg, &m, 7, "hub");
        assert_eq!(&topic[..], b"org.example.prod.app.thing");
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(
            text,
            r#"{"headers":{"trace":"t-1"},"i":7,"msg":{"a":"é","z":1},"msg_id":"2026-7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11","timestamp":1795374000,"topic":"org.example.prod.app.thing","username":"hub"}"#
        );
        // And it decodes back to the same message (id, topic, body; timestamp to the second).
        let back = decode(Format::Fedmsg, &[topic, body]).unwrap();
        assert_eq!(back.id(), "2026-7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11");
        assert_eq!(back.body(), m.body());
        assert_eq!(back.header("headers"), Some(&json!({"trace": "t-1"})));
    }

    #[test]
    fn fedmsg_ids_have_a_year_and_a_uuid() {
        let m = Message::new("a", json!({}));
        let id = fedmsg_id(&m);
        let (year, rest) = id.split_once('-').unwrap();
        assert_eq!(year.len(), 4);
        assert!(uuid::Uuid::parse_str(rest).is_ok());
        let odd = Message::builder("a", json!({})).id("not-a-uuid").build();
        assert!(uuid::Uuid::parse_str(fedmsg_id(&odd).split_once('-').unwrap().1).is_ok());
    }

    #[test]
    fn raw_format_is_topic_and_body() {
        let err = decode(Format::Raw, &frames(b"x.y", r#"{"k": 1e400}"#)).unwrap_err();
        assert!(err.reason.contains("number out of range"), "{err:?}");
        let m = decode(Format::Raw, &frames(b"x.y", r#"{"k": true}"#)).unwrap();
        assert_eq!((m.topic(), m.body()), ("x.y", &json!({"k": true})));
        let [t, b] = encode(Format::Raw, &m, 1, "u");
        assert_eq!((&t[..], &b[..]), (&b"x.y"[..], &br#"{"k":true}"#[..]));
    }

    /// serde_json's raw-value marker as an object's first key (a differential fuzz run found it):
    /// accepted before and read back as `null` (a `msg`), or made every header disappear (in
    /// `headers`); now each shape is refused as malformed, with the reason, never half-read.
    #[test]
    fn the_raw_value_marker_is_refused_in_msg_headers_and_raw_bodies() {
        let marker = "$serde_json::private::RawValue";
        let shapes = [
            format!(r#"{{"topic": "a.b", "msg_id": "m1", "msg": {{"{marker}": 0}}}}"#),
            r#"{"topic": "a.b", "msg_id": "m1", "msg": {"\u0024serde_json::private::RawValue": 0}}"#.to_owned(),
            format!(r#"{{"topic": "a.b", "msg_id": "m1", "msg": {{"k": [{{"{marker}": "1"}}]}}}}"#),
            format!(
                r#"{{"topic": "a.b", "msg_id": "m1", "msg": {{}}, "headers": {{"{marker}": "{{}}"}}}}"#
            ),
            format!(r#"{{"{marker}": "{{}}", "topic": "a.b", "msg": {{}}}}"#),
        ];
        for text in &shapes {
            let err = decode(Format::Fedmsg, &frames(b"a.b", text)).unwrap_err();
            assert!(err.reason.contains("raw-value marker"), "{text}: {err:?}");
            if text.contains("m1") {
                assert_eq!(err.id.as_deref(), Some("m1"), "{text}");
            }
        }
        let raw = format!(r#"{{"{marker}": "1e400"}}"#);
        let err = decode(Format::Raw, &frames(b"x.y", &raw)).unwrap_err();
        assert!(err.reason.contains("raw-value marker"), "{err:?}");
        // Not first, it is an ordinary key, read back as sent.
        let later = format!(r#"{{"topic": "a.b", "msg": {{"a": 1, "{marker}": 2}}}}"#);
        let m = decode(Format::Fedmsg, &frames(b"a.b", &later)).unwrap();
        assert_eq!(m.body(), &json!({"a": 1, marker: 2}));
    }

    /// Envelope fields as they come: any fedmsg field or another, any JSON value, repeats
    /// possible, in any order.
    fn envelopes() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let mut keys = vec![
            "topic",
            "msg",
            "msg_id",
            "timestamp",
            "other",
            "t\\u006fpic",
        ];
        keys.extend(EXTRAS);
        let key = prop::sample::select(keys);
        let value = prop::sample::select(vec![
            r#""a.b""#,
            r#""a\u002eb""#,
            r#""\uD800""#,
            "null",
            "true",
            "0",
            "1717171717",
            "1717171717.25",
            "-1",
            "1e400",
            "12345678901234567890",
            r#"{"n": [1, {"x": null}]}"#,
            "[]",
            r#""2026-7c2e8a3c""#,
            r#""é""#,
        ]);
        prop::collection::vec((key, value), 0..8).prop_map(|members| {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!(r#""{k}": {v}"#))
                .collect();
            format!("{{{}}}", body.join(", "))
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// A decoded envelope's message holds what serde_json reads in the envelope: the body,
        /// the id, and as headers the extra fedmsg fields that are not null.
        #[test]
        fn decoded_messages_hold_the_envelope_fields(more in envelopes()) {
            // Topic and body first, so that most envelopes decode.
            let text = match more.as_str() {
                "{}" => r#"{"topic": "a.b", "msg": [1]}"#.to_owned(),
                _ => format!(r#"{{"topic": "a.b", "msg": [1], {}"#, &more[1..]),
            };
            let Ok(m) = decode(Format::Fedmsg, &frames(b"a.b", &text)) else {
                return Ok(());
            };
            // Whatever decodes reads as a `Value` (`1e400` and lone surrogates do not).
            let Ok(Value::Object(env)) = serde_json::from_str::<Value>(&text) else {
                proptest::prop_assert!(false, "decoded what serde_json cannot read: {}", text);
                return Ok(());
            };
            proptest::prop_assert_eq!(m.topic(), "a.b");
            proptest::prop_assert_eq!(Some(m.body()), env.get("msg"), "{}", text);
            if let Some(Value::String(id)) = env.get("msg_id") {
                proptest::prop_assert_eq!(m.id(), id.as_str());
            }
            let mut headers = env.clone();
            headers.retain(|k, v| !v.is_null() && EXTRAS.contains(&k.as_str()));
            lift_correlation(&mut headers);
            proptest::prop_assert_eq!(m.headers(), &headers, "{}", text);
        }

        /// The fast reader gives what serde_json gives, or leaves the envelope to it.
        #[test]
        fn fast_envelope_reader_agrees_with_serde(text in envelopes(), cut in 0usize..200) {
            for text in [text.clone(), text.chars().take(cut).collect()] {
                if let Some(fast) = Envelope::read_fast(&text) {
                    let slow = Envelope::read_serde(&text);
                    proptest::prop_assert_eq!(Ok(fast), slow, "{}", text);
                }
            }
        }
    }
}
