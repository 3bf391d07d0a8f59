//! The message envelope every backend produces and every consumer sees.

use std::fmt;
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// Message headers: a JSON object of string keys (AMQP headers, fedmsg's extra envelope fields).
pub type Headers = serde_json::Map<String, Value>;

/// One message as consumers see it.
///
/// Cloning is one reference-count increment: fan-out to many consumers never copies the body.
/// In JSON it reads `{"id", "topic", "timestamp" (RFC 3339, UTC), "headers", "body"}` and round-trips.
#[derive(Clone, PartialEq)]
pub struct Message(Arc<Inner>);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inner {
    id: String,
    topic: String,
    timestamp: Timestamp,
    #[serde(default)]
    headers: HeaderStore,
    body: Body,
}

/// The headers: a map, or the text of a JSON object parsed on first use (a backend that
/// receives headers as JSON, such as fedmsg's envelope fields, then builds no map for
/// consumers that never read them). The text is not checked when the message is built: it is
/// only ever parsed, never copied out as JSON, so text that is not a JSON object reads as no
/// headers.
#[derive(Debug)]
enum HeaderStore {
    Map(Headers),
    Raw {
        text: Box<str>,
        parsed: OnceLock<Headers>,
    },
}

impl Default for HeaderStore {
    fn default() -> Self {
        Self::Map(Headers::new())
    }
}

impl HeaderStore {
    fn map(&self) -> &Headers {
        match self {
            Self::Map(m) => m,
            // JSON object text; anything else (another JSON value, or not JSON) reads as none.
            Self::Raw { text, parsed } => {
                parsed.get_or_init(|| serde_json::from_str(text).unwrap_or_default())
            }
        }
    }

    fn into_map(self) -> Headers {
        match self {
            Self::Map(m) => m,
            Self::Raw { text, parsed } => parsed
                .into_inner()
                .unwrap_or_else(|| serde_json::from_str(&text).unwrap_or_default()),
        }
    }
}

impl PartialEq for HeaderStore {
    fn eq(&self, other: &Self) -> bool {
        self.map() == other.map()
    }
}

impl Serialize for HeaderStore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map().serialize(s)
    }
}

impl<'de> Deserialize<'de> for HeaderStore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Headers::deserialize(d).map(Self::Map)
    }
}

/// The body: a parsed value, or validated JSON text parsed on first use (once, for every
/// consumer). Backends that receive text keep it as text, so a consumer that never looks at the
/// body, or decodes it straight into its own type, never pays for a `Value` tree.
#[derive(Debug)]
enum Body {
    Value(Value),
    Raw {
        text: Box<RawValue>,
        parsed: OnceLock<Value>,
    },
}

impl Body {
    fn value(&self) -> &Value {
        match self {
            Self::Value(v) => v,
            // The text was validated as JSON when it was received; only a nesting deeper than
            // serde_json's recursion limit could fail here, and it reads as null.
            Self::Raw { text, parsed } => {
                parsed.get_or_init(|| serde_json::from_str(text.get()).unwrap_or(Value::Null))
            }
        }
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.value() == other.value()
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(s),
            Self::Raw { text, .. } => text.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::Value)
    }
}

impl Message {
    /// A new message with a fresh UUID4 id, stamped now, with no headers.
    pub fn new(topic: impl Into<String>, body: Value) -> Self {
        Self::builder(topic, body).build()
    }

    /// Starts a message whose id, timestamp and headers can be set.
    pub fn builder(topic: impl Into<String>, body: Value) -> MessageBuilder {
        MessageBuilder {
            id: None,
            topic: topic.into(),
            timestamp: None,
            headers: HeaderStore::default(),
            body: Body::Value(body),
        }
    }

    /// Starts a message whose body is JSON text already validated (as `RawValue` guarantees); it
    /// is parsed only if someone reads [`Message::body`].
    pub fn builder_raw(topic: impl Into<String>, body: Box<RawValue>) -> MessageBuilder {
        MessageBuilder {
            id: None,
            topic: topic.into(),
            timestamp: None,
            headers: HeaderStore::default(),
            body: Body::Raw {
                text: body,
                parsed: OnceLock::new(),
            },
        }
    }

    /// The message id (fedmsg `msg_id`, AMQP `message_id`).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The topic (fedmsg frame 0, AMQP routing key), words separated by `.`.
    pub fn topic(&self) -> &str {
        &self.0.topic
    }

    /// When the message was sent, in UTC.
    pub fn timestamp(&self) -> Timestamp {
        self.0.timestamp
    }

    /// All headers.
    pub fn headers(&self) -> &Headers {
        self.0.headers.map()
    }

    /// One header, if present.
    pub fn header(&self, name: &str) -> Option<&Value> {
        self.headers().get(name)
    }

    /// The JSON body (parsed on first use when it arrived as text).
    pub fn body(&self) -> &Value {
        self.0.body.value()
    }

    /// Decodes the body into a typed struct, without copying it.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the message id, topic and target type when the body does not fit.
    /// Converted with `?` into a [`ConsumeError`](crate::ConsumeError) it is an *invalid message*
    /// error (never retried, dead-lettered where the backend can).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let decoded = match &self.0.body {
            Body::Raw { text, parsed } if parsed.get().is_none() => {
                serde_json::from_str(text.get())
            }
            body => T::deserialize(body.value()),
        };
        decoded.map_err(|source| DecodeError {
            id: self.0.id.clone(),
            topic: self.0.topic.clone(),
            target: std::any::type_name::<T>(),
            source,
        })
    }

    /// Serializes the whole envelope as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing a tree of JSON values and strings cannot fail.
        serde_json::to_string(&*self.0).unwrap_or_default()
    }

    /// Parses an envelope written by [`Message::to_json`].
    ///
    /// # Errors
    /// The JSON error when the text is not such an envelope.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Inner>(text).map(|inner| Self(Arc::new(inner)))
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.0.id)
            .field("topic", &self.0.topic)
            .field("timestamp", &self.0.timestamp)
            .field("headers", self.0.headers.map())
            .field("body", self.0.body.value())
            .finish()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Inner::deserialize(d).map(|inner| Self(Arc::new(inner)))
    }
}

/// Builds a [`Message`] with a chosen id, timestamp or headers.
#[derive(Debug)]
pub struct MessageBuilder {
    id: Option<String>,
    topic: String,
    timestamp: Option<Timestamp>,
    headers: HeaderStore,
    body: Body,
}

impl MessageBuilder {
    /// Sets the id (default: a fresh UUID4).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the timestamp (default: now).
    pub fn timestamp(mut self, ts: Timestamp) -> Self {
        self.timestamp = Some(ts);
        self
    }

    /// Adds one header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let mut map = std::mem::take(&mut self.headers).into_map();
        map.insert(name.into(), value.into());
        self.headers = HeaderStore::Map(map);
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = HeaderStore::Map(headers);
        self
    }

    /// Replaces all headers with the text of a JSON object, parsed only if someone reads
    /// [`Message::headers`] (and not checked before: a backend that assembled the text from
    /// JSON it already validated pays nothing more). Text that is not a JSON object reads as no
    /// headers.
    pub fn headers_json(mut self, object: impl Into<Box<str>>) -> Self {
        self.headers = HeaderStore::Raw {
            text: object.into(),
            parsed: OnceLock::new(),
        };
        self
    }

    /// Finishes the message.
    pub fn build(self) -> Message {
        Message(Arc::new(Inner {
            id: self.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            topic: self.topic,
            timestamp: self.timestamp.unwrap_or_else(Timestamp::now),
            headers: self.headers,
            body: self.body,
        }))
    }
}

/// A message body that does not fit the type a consumer asked for.
#[derive(Debug, thiserror::Error)]
#[error("message {id} on topic {topic}: body does not decode as {target}: {source}")]
pub struct DecodeError {
    id: String,
    topic: String,
    target: &'static str,
    #[source]
    source: serde_json::Error,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Build {
        name: String,
        id: u64,
    }

    #[test]
    fn json_round_trip_keeps_every_field() {
        let ts: Timestamp = "2026-11-22T19:00:00.123456789Z".parse().unwrap();
        let m = Message::builder("org.example.build", json!({"name": "x", "id": 7}))
            .id("2026-abc")
            .timestamp(ts)
            .header("sent-at", "2026-11-22T19:00:00+00:00")
            .build();
        let text = m.to_json();
        assert!(
            text.contains(r#""timestamp":"2026-11-22T19:00:00.123456789Z""#),
            "{text}"
        );
        let back = Message::from_json(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.timestamp(), ts);
        assert_eq!(
            back.header("sent-at"),
            Some(&json!("2026-11-22T19:00:00+00:00"))
        );
    }

    #[test]
    fn raw_headers_read_like_a_map() {
        let raw = r#"{"i":3,"username":"apache"}"#;
        let m = Message::builder("a.b", json!({})).headers_json(raw).build();
        assert_eq!(m.header("i"), Some(&json!(3)));
        assert_eq!(m.header("username"), Some(&json!("apache")));
        let same = Message::builder("a.b", json!({}))
            .id(m.id())
            .timestamp(m.timestamp())
            .header("i", 3)
            .header("username", "apache")
            .build();
        assert_eq!(m, same);
        assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
        // Adding a header to raw headers keeps the others; text that is not a JSON object (or
        // not JSON at all) is empty, and such a message still serializes as valid JSON.
        let m = Message::builder("a.b", json!({}))
            .headers_json(r#"{"i":3}"#)
            .header("trace", "t")
            .build();
        assert_eq!(m.headers().len(), 2);
        for not_object in ["[1]", "{\"i\":", "not json"] {
            let m = Message::builder("a.b", json!({}))
                .headers_json(not_object)
                .build();
            assert!(m.headers().is_empty(), "{not_object}");
            let back = Message::from_json(&m.to_json()).unwrap();
            assert!(back.headers().is_empty());
        }
    }

    #[test]
    fn clone_shares_the_body() {
        let m = Message::new("a", json!({"big": "x".repeat(1000)}));
        let c = m.clone();
        assert!(std::ptr::eq(m.body(), c.body()));
    }

    #[test]
    fn decode_gives_typed_struct_or_a_clear_error() {
        let m = Message::builder("org.b", json!({"name": "n", "id": 3}))
            .id("m-1")
            .build();
        assert_eq!(
            m.decode::<Build>().unwrap(),
            Build {
                name: "n".into(),
                id: 3
            }
        );
        let bad = Message::builder("org.b", json!({"name": "n"}))
            .id("m-2")
            .build();
        let err = bad.decode::<Build>().unwrap_err().to_string();
        assert!(err.contains("message m-2 on topic org.b"), "{err}");
        assert!(err.contains("missing field `id`"), "{err}");
    }

    #[test]
    fn raw_bodies_are_parsed_lazily_and_behave_like_values() {
        let raw = RawValue::from_string(r#"{"name": "n", "id": 9}"#.to_owned()).unwrap();
        let m = Message::builder_raw("t", raw).id("r-1").build();
        assert_eq!(
            m.decode::<Build>().unwrap(),
            Build {
                name: "n".into(),
                id: 9
            }
        );
        assert_eq!(m.body(), &json!({"name": "n", "id": 9}));
        assert_eq!(
            m,
            Message::builder("t", json!({"id": 9, "name": "n"}))
                .id("r-1")
                .timestamp(m.timestamp())
                .build()
        );
        assert!(
            m.to_json().contains(r#""body":{"name": "n", "id": 9}"#),
            "raw text is written as is"
        );
        assert_eq!(Message::from_json(&m.to_json()).unwrap().body(), m.body());
        let bad = Message::builder_raw(
            "t",
            RawValue::from_string(r#"{"id": 1}"#.to_owned()).unwrap(),
        )
        .build();
        assert!(
            bad.decode::<Build>()
                .unwrap_err()
                .to_string()
                .contains("missing field `name`")
        );
    }

    #[test]
    fn new_messages_get_unique_ids_and_utc_now() {
        let a = Message::new("t", Value::Null);
        let b = Message::new("t", Value::Null);
        assert_ne!(a.id(), b.id());
        let age = Timestamp::now().duration_since(a.timestamp());
        assert!(age.as_secs_f64() < 5.0);
    }
}
