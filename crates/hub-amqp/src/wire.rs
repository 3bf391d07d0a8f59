//! AMQP message ↔ [`Message`], compatible with fedora-messaging.
//!
//! Inbound: topic = routing key, body = the JSON body, id = `message_id`, timestamp = the
//! `sent-at` header (else the `timestamp` property, else now), headers = the AMQP headers.
//! Outbound: `content_type` `application/json`, `content_encoding` `utf-8`, `delivery_mode` 2,
//! UUID4 `message_id`, and the headers fedora-messaging requires: `fedora_messaging_schema`
//! (default `base.message`), `fedora_messaging_severity` (default 20), `sent-at`.

use std::sync::Arc;

use hub_core::json::JsonText;
use hub_core::{HeaderSource, Headers, Message, correlation};
use jiff::Timestamp;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Number, Value};

/// Header holding how many times the hub has delivered this message (retries): absent on a
/// first delivery (attempt 1), 2 on the first retry's copy, and so on.
pub const ATTEMPTS: &str = hub_core::message::ATTEMPTS_HEADER;
/// Header holding the topic a retry's copy or a dead letter was first published under (the copy
/// travels to the consumer's queue through the default exchange, its routing key the queue's
/// name): restored as the topic when the copy is consumed.
pub const TOPIC: &str = "x-hub-topic";
/// Header the hub adds to a message the broker redelivered (`redelivered` set: it was delivered
/// before and not acknowledged: a crash, a lost connection, a requeue at shutdown), so an
/// idempotent consumer can tell. Quorum queues also pass the broker's own `x-delivery-count`.
pub const REDELIVERED: &str = "x-hub-redelivered";

/// Header a quorum queue adds to a redelivered message: how many times the broker delivered it
/// before (a crash, a lost connection, a requeue).
pub const DELIVERY_COUNT: &str = "x-delivery-count";

/// An integer header value.
fn int(v: &AMQPValue) -> Option<i64> {
    match *v {
        AMQPValue::LongLongInt(i) => Some(i),
        AMQPValue::LongInt(i) => Some(i64::from(i)),
        AMQPValue::LongUInt(i) => Some(i64::from(i)),
        AMQPValue::ShortInt(i) => Some(i64::from(i)),
        AMQPValue::ShortUInt(i) => Some(i64::from(i)),
        AMQPValue::ShortShortInt(i) => Some(i64::from(i)),
        AMQPValue::ShortShortUInt(i) => Some(i64::from(i)),
        _ => None,
    }
}

/// Which attempt at the message a delivery is: the hub's own count of its retries
/// ([`ATTEMPTS`], 1 when absent or 0) plus the broker's count of its redeliveries
/// ([`DELIVERY_COUNT`], quorum queues), so a message that crashed the process counts too.
/// The hub's count is read only from its own retry copies (`retry_copy`: the delivery came
/// through the default exchange, where the copies go, to the consumer's queue by name): a
/// publisher's `x-hub-attempts` (a message another hub's consumer passed on as it was) would
/// have it dead-lettered at its first failure.
pub fn attempt(p: &BasicProperties, retry_copy: bool) -> u32 {
    let header = |name: &str| {
        p.headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(int)
    };
    let hub = if retry_copy {
        header(ATTEMPTS).map_or(1, |n| n.max(1))
    } else {
        1
    };
    let broker = header(DELIVERY_COUNT).map_or(0, |n| n.max(0));
    u32::try_from(hub.saturating_add(broker)).unwrap_or(u32::MAX)
}

/// An AMQP header value as JSON.
pub fn to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_owned()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => Value::Object(table_to_json(t)),
        AMQPValue::ByteArray(b) => {
            Value::String(String::from_utf8_lossy(b.as_slice()).into_owned())
        }
        AMQPValue::Void => Value::Null,
    }
}

/// An AMQP header table as a JSON object.
pub fn table_to_json(t: &FieldTable) -> Headers {
    t.inner()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
        .collect()
}

/// A JSON value as an AMQP header value.
pub fn from_json(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            _ => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(from_json).collect::<Vec<_>>(),
        )),
        Value::Object(o) => AMQPValue::FieldTable(table_from_json(o)),
    }
}

/// A JSON object as an AMQP table; keys longer than 255 bytes (not representable) are skipped.
pub fn table_from_json(o: &Headers) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        if let Ok(key) = ShortString::try_new(k.as_str()) {
            t.insert(key, from_json(v));
        }
    }
    t
}

/// Why an AMQP message cannot become a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The message id, when it had one.
    pub id: Option<String>,
    /// What was wrong.
    pub reason: String,
}

/// The topic of an inbound message: its routing key, or, for a retry's copy (which arrives
/// through the default exchange, `exchange = ""`, routed by queue name), the topic it was first
/// published under, from [`TOPIC`].
pub fn topic<'a>(exchange: &str, routing_key: &'a str, properties: &'a BasicProperties) -> &'a str {
    if exchange.is_empty()
        && let Some(AMQPValue::LongString(t)) = properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(TOPIC))
        && let Ok(t) = std::str::from_utf8(t.as_bytes())
    {
        return t;
    }
    routing_key
}

/// An inbound AMQP message as a [`Message`]: [`decode`], with [`REDELIVERED`] set when the
/// broker says it was delivered before.
///
/// # Errors
/// [`Malformed`] when the body is not JSON.
pub fn decode_delivery(
    topic: &str,
    redelivered: bool,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Message, Malformed> {
    decode_shared(topic, redelivered, true, Arc::new(properties.clone()), body)
}

/// An inbound AMQP message as a [`Message`].
///
/// # Errors
/// [`Malformed`] when the body is not JSON.
pub fn decode(
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) -> Result<Message, Malformed> {
    decode_shared(routing_key, false, true, Arc::new(properties.clone()), body)
}

/// [`decode_delivery`] on properties the caller shares (the receive loop keeps them for a
/// retry's copy): the message's headers are read from them only when a consumer asks (a
/// consumer that never reads headers costs no map; see [`AmqpHeaders`]). `retry_copy`: the
/// delivery came through the default exchange, so its [`ATTEMPTS`] is the hub's own count
/// (see [`attempt`]); otherwise the header is left out.
///
/// # Errors
/// [`Malformed`] when the body is not JSON.
pub fn decode_shared(
    routing_key: &str,
    redelivered: bool,
    retry_copy: bool,
    properties: Arc<BasicProperties>,
    body: &[u8],
) -> Result<Message, Malformed> {
    let id = properties.message_id().as_ref().map(ShortString::as_str);
    let text = std::str::from_utf8(body).map_err(|_| Malformed {
        id: id.map(str::to_owned),
        reason: "body is not UTF-8 JSON".into(),
    })?;
    // JSON that reads as a `Value` (see `JsonText`): `1e400` or a lone surrogate escape is
    // dead-lettered here, not handed to consumers as `null`.
    let body = JsonText::new(text).ok_or_else(|| Malformed {
        id: id.map(str::to_owned),
        reason: format!("body is {}", JsonText::refusal(text)),
    })?;
    let header = |name: &str| properties.headers().as_ref()?.inner().get(name);
    let timestamp = match header("sent-at") {
        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| s.parse::<Timestamp>().ok()),
        _ => None,
    }
    .or_else(|| {
        properties
            .timestamp()
            .and_then(|t| Timestamp::from_second(i64::try_from(t).ok()?).ok())
    })
    .unwrap_or_else(Timestamp::now);
    let mut b = Message::builder_json(routing_key, body).timestamp(timestamp);
    if let Some(id) = id {
        b = b.id(id);
    }
    let b = b.header_source(Box::new(AmqpHeaders {
        properties,
        redelivered,
        retry_copy,
    }));
    Ok(b.build())
}

/// A delivery's headers, kept as AMQP sent them and made into JSON on first read: the AMQP
/// headers (less a publisher's [`ATTEMPTS`] when it is not the hub's retry copy), plus
/// [`REDELIVERED`] when the broker redelivered it, [`ATTEMPTS`] with the broker's count on a
/// quorum queue's redelivery, and the `correlation_id` property as
/// [`correlation::CORRELATION_ID`] when the headers have none.
#[derive(Debug)]
pub struct AmqpHeaders {
    properties: Arc<BasicProperties>,
    redelivered: bool,
    retry_copy: bool,
}

impl HeaderSource for AmqpHeaders {
    fn headers(&self) -> Headers {
        let p = &self.properties;
        let mut headers = p.headers().as_ref().map(table_to_json).unwrap_or_default();
        if !self.retry_copy {
            headers.remove(ATTEMPTS);
        }
        if self.redelivered {
            headers.insert(REDELIVERED.into(), Value::Bool(true));
        }
        // A quorum queue's redelivery: the consumer sees the broker's count in its attempt.
        if headers.contains_key(DELIVERY_COUNT) {
            headers.insert(ATTEMPTS.into(), Value::from(attempt(p, self.retry_copy)));
        }
        // A publisher that sets only the AMQP property: read it where the hub looks for it.
        if let Some(c) = p.correlation_id() {
            headers
                .entry(correlation::CORRELATION_ID)
                .or_insert_with(|| Value::from(c.as_str()));
        }
        headers
    }

    fn byte_size(&self) -> usize {
        fn value(v: &AMQPValue) -> usize {
            match v {
                AMQPValue::LongString(s) => s.as_bytes().len() + 2,
                AMQPValue::ShortString(s) => s.as_str().len() + 2,
                AMQPValue::ByteArray(b) => b.as_slice().len() + 2,
                AMQPValue::FieldArray(a) => {
                    2 + a.as_slice().iter().map(|e| value(e) + 1).sum::<usize>()
                }
                AMQPValue::FieldTable(t) => table(t),
                _ => 8,
            }
        }
        fn table(t: &FieldTable) -> usize {
            2 + t
                .inner()
                .iter()
                .map(|(k, v)| k.as_str().len() + 4 + value(v))
                .sum::<usize>()
        }
        let extra = if self.redelivered { 30 } else { 0 };
        self.properties.headers().as_ref().map_or(2, table) + extra
    }
}

/// A UUID4-shaped `message_id` for fedora-messaging: the id itself when it is a UUID, the UUID
/// part of a fedmsg `<year>-<uuid>` id, else a fresh one.
pub fn message_id(msg: &Message) -> String {
    let id = msg.id();
    if uuid::Uuid::parse_str(id).is_ok() {
        return id.to_owned();
    }
    match id.split_once('-') {
        Some((y, rest)) if y.len() == 4 && uuid::Uuid::parse_str(rest).is_ok() => rest.to_owned(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// `sent-at` as fedora-messaging writes it: UTC, seconds, `+00:00`.
pub fn sent_at(ts: Timestamp) -> String {
    let secs = ts.as_second();
    Timestamp::from_second(secs)
        .unwrap_or(ts)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// Properties and body for publishing `msg`.
pub fn encode(msg: &Message) -> (BasicProperties, Vec<u8>) {
    let mut headers = msg.headers().clone();
    headers
        .entry("fedora_messaging_schema")
        .or_insert_with(|| Value::from("base.message"));
    headers
        .entry("fedora_messaging_severity")
        .or_insert_with(|| Value::from(20));
    headers.insert("sent-at".into(), Value::from(sent_at(msg.timestamp())));
    let mut properties = BasicProperties::default();
    // The correlation id travels as a header (what fedora-messaging reads) and as the AMQP
    // property (what other AMQP tools read).
    // (A short string: at most 255 bytes; a longer one stays a header only.)
    if let Some(Value::String(c)) = headers.get(correlation::CORRELATION_ID)
        && c.len() <= 255
    {
        properties = properties.with_correlation_id(ShortString::from(c.as_str()));
    }
    let properties = properties
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(message_id(msg)))
        .with_timestamp(u64::try_from(msg.timestamp().as_second()).unwrap_or(0))
        .with_headers(table_from_json(&headers));
    // Serializing a JSON value cannot fail.
    let body = serde_json::to_vec(msg.body()).unwrap_or_default();
    (properties, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_the_fedora_messaging_shape() {
        let m = Message::builder(
            "org.fedoraproject.prod.bodhi.update.comment",
            json!({"a": [1, 2], "b": "é"}),
        )
        .id("2026-7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11")
        .timestamp("2026-11-22T19:00:00.75Z".parse().unwrap())
        .header("fedora_messaging_user_alice", true)
        .build();
        let (props, body) = encode(&m);
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(props.content_encoding().as_ref().unwrap().as_str(), "utf-8");
        assert_eq!(*props.delivery_mode(), Some(2));
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            "7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11"
        );
        let h = table_to_json(props.headers().as_ref().unwrap());
        assert_eq!(h["fedora_messaging_schema"], "base.message");
        assert_eq!(h["fedora_messaging_severity"], 20);
        assert_eq!(h["sent-at"], "2026-11-22T19:00:00+00:00");
        assert_eq!(h["fedora_messaging_user_alice"], true);
        let back = decode(m.topic(), &props, &body).unwrap();
        assert_eq!(back.topic(), m.topic());
        assert_eq!(back.body(), m.body());
        assert_eq!(back.id(), "7c2e8a3c-6f2b-4d4e-9d61-2f0a7e5c1b11");
        assert_eq!(back.timestamp().as_second(), m.timestamp().as_second());
    }

    #[test]
    fn a_non_json_body_is_malformed_with_its_id() {
        let props = BasicProperties::default().with_message_id("m-1".into());
        let err = decode("t", &props, b"<xml/>").unwrap_err();
        assert_eq!(err.id.as_deref(), Some("m-1"));
        assert!(err.reason.contains("not JSON"), "{err:?}");
        // JSON, but not what a consumer could read back: malformed too, with the reason.
        for (body, why) in [
            (&br#"{"n": 1e400}"#[..], "number out of range"),
            (br#"{"s": "\uDC00"}"#, "surrogate"),
        ] {
            let err = decode("t", &props, body).unwrap_err();
            assert_eq!(err.id.as_deref(), Some("m-1"));
            assert!(err.reason.contains(why), "{err:?}");
        }
        let ok = decode("t", &props, br#" {"n": 1e300} "#).unwrap();
        assert_eq!(ok.body(), &serde_json::json!({"n": 1e300}));
    }

    #[test]
    fn a_retry_copy_gets_its_topic_back_and_redeliveries_say_so() {
        let mut h = FieldTable::default();
        h.insert(
            TOPIC.into(),
            AMQPValue::LongString("org.x.build.done".into()),
        );
        let props = BasicProperties::default().with_headers(h);
        // A copy through the default exchange, routed by queue name: its first topic.
        assert_eq!(topic("", "hub.keeper", &props), "org.x.build.done");
        // Through any other exchange the routing key is the topic, whatever the headers say.
        assert_eq!(topic("amq.topic", "org.y", &props), "org.y");
        assert_eq!(topic("", "q", &BasicProperties::default()), "q");
        let m = decode_delivery("org.x.build.done", true, &props, b"{}").unwrap();
        assert_eq!(m.topic(), "org.x.build.done");
        assert_eq!(m.header(REDELIVERED), Some(&serde_json::json!(true)));
        let m = decode_delivery("t", false, &props, b"{}").unwrap();
        assert_eq!(m.header(REDELIVERED), None);
    }

    /// Numbers are read as sent, correctly rounded, and so survive a hop: found by the
    /// `amqp_decode` fuzz target (FUZZING.md). serde_json's default float parsing can be one
    /// unit in the last place off: the first body read as `8.87888888888889e39`, not
    /// `8.878888888888888e39`, and a number re-encoded by the hub could read back as another;
    /// hub-core enables serde_json's `float_roundtrip` feature for the whole build.
    #[test]
    fn numbers_are_read_exactly_and_survive_encode_and_decode() {
        let props = BasicProperties::default();
        for text in [
            "8878888888888888888888888888878888888888",
            "88888888888888888888888888888888888888888887",
            "[0.30000000000000004, 2.2250738585072011e-308, 1.7976931348623157e308]",
        ] {
            let m = decode("a.b", &props, text.as_bytes()).unwrap();
            let want: Value = match text.parse::<f64>() {
                Ok(f) => Value::from(f),
                Err(_) => text[1..text.len() - 1]
                    .split(", ")
                    .map(|n| Value::from(n.parse::<f64>().unwrap()))
                    .collect(),
            };
            assert_eq!(m.body(), &want, "{text}");
            let (props, body) = encode(&m);
            let back = decode("a.b", &props, &body).unwrap();
            assert_eq!(back.body(), m.body(), "{text}");
        }
    }
}
