//! The message envelope every backend produces and every consumer sees.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json::JsonText;

/// Message headers: a JSON object of string keys (a transport's headers or extra fields).
pub type Headers = serde_json::Map<String, Value>;

/// The header that carries which attempt at a message a delivery is: absent on the first
/// delivery (attempt 1), 2 on the first retry, and so on. Set by the hub on every retry, on every
/// backend (AMQP carries it as an AMQP header of the same name); read it with
/// [`Message::attempt`] or [`Context::attempt`](crate::Context::attempt).
pub const ATTEMPTS_HEADER: &str = "x-hub-attempts";

/// One message as consumers see it.
///
/// Cloning is one reference-count increment: fan-out to many consumers never copies the body.
/// In JSON it reads `{"id", "topic", "timestamp" (RFC 3339, UTC), "headers", "body"}` and round-trips.
#[derive(Clone, PartialEq)]
pub struct Message(Arc<Inner>);

/// The id, the topic and any JSON text (body, headers) live in one buffer: a message received
/// as text costs two allocations (this and the `Arc`), not one per field, and on the hot path
/// the worker that frees it is on another thread than the backend that made it.
#[derive(Debug)]
struct Inner {
    text: Box<str>,
    /// Where the id and the topic are in `text`.
    id_at: Range<usize>,
    topic_at: Range<usize>,
    timestamp: Timestamp,
    headers: HeaderStore,
    body: Body,
    /// [`Message::byte_size`], computed once.
    size: usize,
}

impl Inner {
    fn id(&self) -> &str {
        &self.text[self.id_at.clone()]
    }

    fn topic(&self) -> &str {
        &self.text[self.topic_at.clone()]
    }

    fn headers(&self) -> &Headers {
        self.headers.map(&self.text)
    }

    fn body(&self) -> &Value {
        self.body.value(&self.text)
    }
}

impl Inner {
    /// The part of `size` that a header map accounts for (text-held headers are in the text).
    fn headers_size(&self) -> usize {
        match &self.headers {
            HeaderStore::Map(m) => map_size(m),
            HeaderStore::Deferred { source, .. } => source.byte_size(),
            HeaderStore::Raw { .. } | HeaderStore::Envelope { .. } => 0,
        }
    }
}

/// About the bytes `v` takes as JSON text (for a message's size when it holds a parsed value;
/// exact for strings, 8 for a number or a literal).
fn json_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 8,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(|e| json_size(e) + 1).sum::<usize>(),
        Value::Object(o) => map_size(o),
    }
}

/// About the bytes a JSON object takes as text.
fn map_size(m: &Headers) -> usize {
    2 + m
        .iter()
        .map(|(k, v)| k.len() + 4 + json_size(v))
        .sum::<usize>()
}

impl PartialEq for Inner {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
            && self.topic() == other.topic()
            && self.timestamp == other.timestamp
            && self.headers() == other.headers()
            && self.body() == other.body()
    }
}

/// The headers: a map, or JSON in the message's text parsed on first use (a backend that
/// receives headers as JSON then builds no map for consumers that never read them). The text is made of checked parts ([`JsonText`]), so it
/// parses; were it ever not a JSON object, it would read as no headers.
#[derive(Debug)]
enum HeaderStore {
    Map(Headers),
    Raw {
        at: Range<usize>,
        parsed: OnceLock<Headers>,
    },
    /// Read from the whole text (an envelope) by the backend's own function, on first use.
    Envelope {
        read: fn(&str) -> Headers,
        parsed: OnceLock<Headers>,
    },
    /// Kept in the backend's own form (AMQP's header table), converted on first use.
    Deferred {
        source: Box<dyn HeaderSource>,
        parsed: OnceLock<Headers>,
    },
}

/// Headers a backend keeps in its own form, made into JSON only when someone reads them: a
/// consumer that never looks at the headers costs no map (see [`MessageBuilder::header_source`]).
pub trait HeaderSource: Send + Sync + std::fmt::Debug {
    /// The headers, as consumers see them.
    fn headers(&self) -> Headers;
    /// About the bytes they take as JSON text (counted in [`Message::byte_size`]).
    fn byte_size(&self) -> usize;
}

impl HeaderStore {
    fn map<'a>(&'a self, text: &'a str) -> &'a Headers {
        match self {
            Self::Map(m) => m,
            // JSON object text; anything else (another JSON value, or not JSON) reads as none.
            Self::Raw { at, parsed } => {
                parsed.get_or_init(|| serde_json::from_str(&text[at.clone()]).unwrap_or_default())
            }
            Self::Envelope { read, parsed } => parsed.get_or_init(|| read(text)),
            Self::Deferred { source, parsed } => parsed.get_or_init(|| source.headers()),
        }
    }
}

/// The body: a parsed value, or validated JSON in the message's text, parsed on first use (once,
/// for every consumer). Backends that receive text keep it as text, so a consumer that never
/// looks at the body, or decodes it straight into its own type, never pays for a `Value` tree.
#[derive(Debug)]
enum Body {
    Value(Value),
    Raw {
        at: Range<usize>,
        parsed: OnceLock<Value>,
    },
}

impl Body {
    fn value<'a>(&'a self, text: &'a str) -> &'a Value {
        match self {
            Self::Value(v) => v,
            // The text is a `JsonText`: checked to read as a `Value` when it was received, so
            // this cannot fail (null if it ever did).
            Self::Raw { at, parsed } => parsed
                .get_or_init(|| serde_json::from_str(&text[at.clone()]).unwrap_or(Value::Null)),
        }
    }
}

/// The envelope as it is written and read in JSON.
#[derive(Serialize)]
struct WireOut<'a> {
    id: &'a str,
    topic: &'a str,
    timestamp: Timestamp,
    headers: &'a Headers,
    body: BodyOut<'a>,
}

enum BodyOut<'a> {
    Value(&'a Value),
    Text(&'a str),
}

impl Serialize for BodyOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Value(v) => v.serialize(s),
            // Written as is; the text was validated when received, so borrowing it as a
            // `RawValue` (a scan, no copy) cannot fail: null if it ever did.
            Self::Text(t) => match serde_json::from_str::<&RawValue>(t) {
                Ok(raw) => raw.serialize(s),
                Err(_) => Value::Null.serialize(s),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    id: String,
    topic: String,
    timestamp: Timestamp,
    #[serde(default)]
    headers: Headers,
    body: Value,
}

impl Serialize for Inner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let body = match &self.body {
            Body::Value(v) => BodyOut::Value(v),
            Body::Raw { at, .. } => BodyOut::Text(&self.text[at.clone()]),
        };
        WireOut {
            id: self.id(),
            topic: self.topic(),
            timestamp: self.timestamp,
            headers: self.headers(),
            body,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        Ok(Message::builder(w.topic, w.body)
            .id(w.id)
            .timestamp(w.timestamp)
            .headers(w.headers)
            .into_inner())
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
            headers: Headers::new(),
            source: None,
            body: BodyIn::Value(body),
        }
    }

    /// Starts a message whose body is checked JSON text ([`JsonText::new`]), copied as is and
    /// parsed only if someone reads [`Message::body`]; a consumer that decodes it into its own
    /// type never pays for a `Value` tree.
    pub fn builder_json(topic: impl Into<String>, body: JsonText<'_>) -> MessageBuilder {
        MessageBuilder {
            id: None,
            topic: topic.into(),
            timestamp: None,
            headers: Headers::new(),
            source: None,
            body: BodyIn::Text(body.get().into()),
        }
    }

    /// A message received as JSON text, built the way a backend builds one per message at line
    /// rate: every part is copied once, into the message's single text buffer.
    ///
    /// `id` `None` gets a fresh UUID4. `body` is kept as text (parsed if a consumer reads it).
    /// `headers` become a JSON object of those fields, parsed only if a consumer reads
    /// [`Message::headers`]; no fields, no headers.
    pub fn from_json_parts(
        topic: &str,
        id: Option<&str>,
        timestamp: Timestamp,
        body: JsonText<'_>,
        headers: &[(&str, JsonText<'_>)],
    ) -> Self {
        // Filled only when needed (46 bytes not written per received message).
        let mut fresh;
        let id = match id {
            Some(id) => id,
            None => {
                fresh = uuid::Uuid::encode_buffer();
                uuid::Uuid::new_v4().hyphenated().encode_lower(&mut fresh)
            }
        };
        let body = body.get();
        // `{"k":v,"k":v}`, exactly (an escaped key makes it grow, which is rare), so that
        // boxing the text does not reallocate it.
        let header_len = match headers.len() {
            0 => 0,
            n => {
                headers
                    .iter()
                    .map(|(k, v)| k.len() + v.get().len() + 3)
                    .sum::<usize>()
                    + n
                    + 1
            }
        };
        let mut text = String::with_capacity(id.len() + topic.len() + body.len() + header_len);
        text.push_str(id);
        text.push_str(topic);
        let body_at = text.len()..text.len() + body.len();
        text.push_str(body);
        let headers = if headers.is_empty() {
            HeaderStore::Map(Headers::new())
        } else {
            let start = text.len();
            text.push('{');
            for (n, (k, v)) in headers.iter().enumerate() {
                if n > 0 {
                    text.push(',');
                }
                push_json_string(&mut text, k);
                text.push(':');
                text.push_str(v.get());
            }
            text.push('}');
            HeaderStore::Raw {
                at: start..text.len(),
                parsed: OnceLock::new(),
            }
        };
        Message(Arc::new(Inner {
            id_at: 0..id.len(),
            topic_at: id.len()..id.len() + topic.len(),
            size: text.len(),
            text: text.into_boxed_str(),
            timestamp,
            headers,
            body: Body::Raw {
                at: body_at,
                parsed: OnceLock::new(),
            },
        }))
    }

    /// A message received as one JSON object (an envelope) that holds its parts, built with
    /// a single copy: the whole text, in which the parts are then found again. `topic`, `id`
    /// and `body` must be slices of `envelope` (as a reader of it hands them out): `None` if
    /// one is not. The headers are what `read_headers` makes of the whole envelope text, called
    /// only if a consumer reads [`Message::headers`] (once per message).
    pub fn from_json_envelope(
        envelope: &str,
        topic: &str,
        id: &str,
        timestamp: Timestamp,
        body: JsonText<'_>,
        read_headers: fn(&str) -> Headers,
    ) -> Option<Self> {
        let topic_at = span_in(envelope, topic)?;
        let id_at = span_in(envelope, id)?;
        let body_at = span_in(envelope, body.get())?;
        Some(Message(Arc::new(Inner {
            size: envelope.len(),
            text: envelope.into(),
            id_at,
            topic_at,
            timestamp,
            headers: HeaderStore::Envelope {
                read: read_headers,
                parsed: OnceLock::new(),
            },
            body: Body::Raw {
                at: body_at,
                parsed: OnceLock::new(),
            },
        })))
    }

    /// About how many bytes the message holds (its text: id, topic, body and headers as
    /// received; a body or headers held as parsed values are estimated as JSON text). What
    /// the queues' byte limits (`queue_max_bytes`, `[hub] max_queued_bytes`) count.
    pub fn byte_size(&self) -> usize {
        self.0.size
    }

    /// The message id (fedmsg `msg_id`, AMQP `message_id`).
    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// The topic (fedmsg frame 0, AMQP routing key), words separated by `.`.
    pub fn topic(&self) -> &str {
        self.0.topic()
    }

    /// When the message was sent, in UTC.
    pub fn timestamp(&self) -> Timestamp {
        self.0.timestamp
    }

    /// All headers.
    pub fn headers(&self) -> &Headers {
        self.0.headers()
    }

    /// One header, if present.
    pub fn header(&self, name: &str) -> Option<&Value> {
        self.headers().get(name)
    }

    /// Which attempt at this message a delivery is ([`ATTEMPTS_HEADER`]; 1 when absent or not a
    /// positive number).
    pub fn attempt(&self) -> u32 {
        self.header(ATTEMPTS_HEADER)
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n >= 1)
            .unwrap_or(1)
    }

    /// The JSON body (parsed on first use when it arrived as text).
    pub fn body(&self) -> &Value {
        self.0.body()
    }

    /// Decodes the body into a typed struct, without copying it.
    ///
    /// # Errors
    /// A [`DecodeError`] naming the message id, topic and target type when the body does not fit.
    /// Converted with `?` into a [`ConsumeError`](crate::ConsumeError) it is an *invalid message*
    /// error (never retried, dead-lettered where the backend can).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let decoded = match &self.0.body {
            Body::Raw { at, parsed } if parsed.get().is_none() => {
                serde_json::from_str(&self.0.text[at.clone()])
            }
            _ => T::deserialize(self.0.body()),
        };
        decoded.map_err(|source| DecodeError {
            id: self.id().to_owned(),
            topic: self.topic().to_owned(),
            target: std::any::type_name::<T>(),
            source,
        })
    }

    /// A copy of this message (same id, topic, timestamp and body) with `extra` headers added
    /// where the message has none of that name.
    pub fn with_headers_added<K: Into<String>>(
        &self,
        extra: impl IntoIterator<Item = (K, Value)>,
    ) -> Self {
        let mut headers = self.headers().clone();
        for (k, v) in extra {
            headers.entry(k.into()).or_insert(v);
        }
        self.with_header_map(headers)
    }

    /// A copy of this message (same id, topic, timestamp and body) with header `name` set to
    /// `value`, replacing any it had (the hub sets [`ATTEMPTS_HEADER`] this way on a retry).
    #[must_use]
    pub fn with_header_set(&self, name: &str, value: Value) -> Self {
        let mut headers = self.headers().clone();
        headers.insert(name.to_owned(), value);
        self.with_header_map(headers)
    }

    /// This message without the hub's bookkeeping ([`ATTEMPTS_HEADER`]): the same message when
    /// it has none. What the hub publishes, and what enters it from a publisher, starts its
    /// own count of attempts: a count from elsewhere (a message a consumer passes on, a client
    /// that sets it) would have it dead-lettered at its first failure.
    #[must_use]
    pub fn without_attempts(self) -> Self {
        if self.header(ATTEMPTS_HEADER).is_none() {
            return self;
        }
        let mut headers = self.headers().clone();
        headers.remove(ATTEMPTS_HEADER);
        self.with_header_map(headers)
    }

    fn with_header_map(&self, headers: Headers) -> Self {
        let inner = &*self.0;
        Message(Arc::new(Inner {
            text: inner.text.clone(),
            id_at: inner.id_at.clone(),
            topic_at: inner.topic_at.clone(),
            timestamp: inner.timestamp,
            size: inner.size - inner.headers_size() + map_size(&headers),
            headers: HeaderStore::Map(headers),
            body: match &inner.body {
                Body::Value(v) => Body::Value(v.clone()),
                Body::Raw { at, .. } => Body::Raw {
                    at: at.clone(),
                    parsed: OnceLock::new(),
                },
            },
        }))
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

/// Where `part` lies in `whole`, if it is a slice of it.
fn span_in(whole: &str, part: &str) -> Option<Range<usize>> {
    // Addresses compared, never dereferenced: a slice of `whole` starts within it.
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let at = start..start.checked_add(part.len())?;
    whole.get(at.clone()).map(|_| at)
}

/// Appends `s` as a JSON string (quoted, escaped).
fn push_json_string(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serializing a string cannot fail.
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id())
            .field("topic", &self.topic())
            .field("timestamp", &self.0.timestamp)
            .field("headers", self.headers())
            .field("body", self.body())
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

#[derive(Debug)]
enum BodyIn {
    Value(Value),
    /// Checked JSON text ([`JsonText`]).
    Text(Box<str>),
}

/// Builds a [`Message`] with a chosen id, timestamp or headers.
#[derive(Debug)]
pub struct MessageBuilder {
    id: Option<String>,
    topic: String,
    timestamp: Option<Timestamp>,
    headers: Headers,
    source: Option<Box<dyn HeaderSource>>,
    body: BodyIn,
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
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Replaces all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self.source = None;
        self
    }

    /// Takes the headers from `source` when first read, instead of a map (replacing any set
    /// with [`header`](Self::header) or [`headers`](Self::headers)).
    pub fn header_source(mut self, source: Box<dyn HeaderSource>) -> Self {
        self.headers = Headers::new();
        self.source = Some(source);
        self
    }

    /// Finishes the message.
    pub fn build(self) -> Message {
        Message(Arc::new(self.into_inner()))
    }

    fn into_inner(self) -> Inner {
        let id = self.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let body_text = match &self.body {
            BodyIn::Text(text) => text,
            BodyIn::Value(_) => "",
        };
        let mut text = String::with_capacity(id.len() + self.topic.len() + body_text.len());
        text.push_str(&id);
        text.push_str(&self.topic);
        let body_at = text.len()..text.len() + body_text.len();
        text.push_str(body_text);
        let value_size = match &self.body {
            BodyIn::Value(v) => json_size(v),
            BodyIn::Text(_) => 0,
        };
        let (headers, headers_size) = match self.source {
            Some(source) => {
                let size = source.byte_size();
                (
                    HeaderStore::Deferred {
                        source,
                        parsed: OnceLock::new(),
                    },
                    size,
                )
            }
            None => {
                let size = map_size(&self.headers);
                (HeaderStore::Map(self.headers), size)
            }
        };
        Inner {
            id_at: 0..id.len(),
            topic_at: id.len()..id.len() + self.topic.len(),
            size: text.len() + value_size + headers_size,
            text: text.into_boxed_str(),
            timestamp: self.timestamp.unwrap_or_else(Timestamp::now),
            headers,
            body: match self.body {
                BodyIn::Value(v) => Body::Value(v),
                BodyIn::Text(_) => Body::Raw {
                    at: body_at,
                    parsed: OnceLock::new(),
                },
            },
        }
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
    fn json_bodies_are_parsed_lazily_and_behave_like_values() {
        let text = JsonText::new(r#" {"name": "n", "id": 9} "#).unwrap();
        let m = Message::builder_json("t", text).id("r-1").build();
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
            "the text is written as is"
        );
        assert_eq!(Message::from_json(&m.to_json()).unwrap().body(), m.body());
        let bad = Message::builder_json("t", JsonText::new(r#"{"id": 1}"#).unwrap()).build();
        assert!(
            bad.decode::<Build>()
                .unwrap_err()
                .to_string()
                .contains("missing field `name`")
        );
    }

    #[test]
    fn messages_from_json_parts_read_like_built_ones() {
        let ts: Timestamp = "2026-11-22T19:00:00Z".parse().unwrap();
        let body = JsonText::new(r#" {"n": 1}"#).unwrap();
        let three: &RawValue = serde_json::from_str("3").unwrap();
        let three = JsonText::from_raw(three).unwrap();
        let who = JsonText::new(r#""apache""#).unwrap();
        let m = Message::from_json_parts(
            "org.a",
            Some("2026-x"),
            ts,
            body,
            &[("i", three), ("user \"name\"", who)],
        );
        let built = Message::builder("org.a", json!({"n": 1}))
            .id("2026-x")
            .timestamp(ts)
            .header("i", 3)
            .header("user \"name\"", "apache")
            .build();
        assert_eq!(m, built);
        assert_eq!((m.id(), m.topic()), ("2026-x", "org.a"));
        assert_eq!(m.header("user \"name\""), Some(&json!("apache")));
        assert!(
            m.to_json().contains(r#""body":{"n": 1}"#),
            "body text kept as is"
        );
        assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
        // No id: a fresh UUID4; no header fields: no headers.
        let bare = Message::from_json_parts("t", None, ts, body, &[]);
        assert!(uuid::Uuid::parse_str(bare.id()).is_ok(), "{}", bare.id());
        assert!(bare.headers().is_empty());
        assert_eq!(bare.topic(), "t");
    }

    #[test]
    fn messages_from_an_envelope_find_their_parts_in_one_copy() {
        let ts: Timestamp = "2026-11-22T19:00:00Z".parse().unwrap();
        let text = r#"{"i": 3, "msg": {"n": 1}, "msg_id": "2026-x", "skip": 1, "topic": "org.a", "username": null}"#;
        let part = |s: &str| {
            let at = text.find(s).unwrap();
            &text[at..at + s.len()]
        };
        let body = JsonText::new(part(r#"{"n": 1}"#)).unwrap();
        let m =
            Message::from_json_envelope(text, part("org.a"), part("2026-x"), ts, body, |text| {
                let mut map: Headers = serde_json::from_str(text).unwrap_or_default();
                map.retain(|k, v| {
                    !v.is_null() && ["i", "username", "signature"].contains(&k.as_str())
                });
                map
            })
            .unwrap();
        // The headers are what the backend's reader makes of the envelope; the body text is kept as is.
        let built = Message::builder("org.a", json!({"n": 1}))
            .id("2026-x")
            .timestamp(ts)
            .header("i", 3)
            .build();
        assert_eq!(m, built);
        assert!(m.to_json().contains(r#""body":{"n": 1}"#));
        assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
        // Parts that are not slices of the envelope (equal text elsewhere) are refused.
        let elsewhere = String::from("org.a");
        let refused =
            Message::from_json_envelope(text, &elsewhere, part("2026-x"), ts, body, |_| {
                Headers::new()
            });
        assert!(refused.is_none());
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
