//! `hub_amqp::wire::decode` / `decode_delivery` on AMQP properties (message id, correlation id,
//! timestamp, a headers table of every AMQP value type, nested) and a body, built from the
//! input with `arbitrary`.
//!
//! Asserts: never panics; a decoded message's topic is the routing key, its body what
//! serde_json reads in the body, its id the `message_id` property when set; and the message
//! encodes (`wire::encode`) and decodes again to the same topic and body.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use hub_amqp::lapin::BasicProperties;
use hub_amqp::lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use hub_amqp::wire;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Keys the decoder looks at, so the fuzzer reaches their branches often.
const KEYS: [&str; 8] = [
    "sent-at",
    "correlation_id",
    "in_reply_to",
    wire::TOPIC,
    wire::ATTEMPTS,
    wire::REDELIVERED,
    "fedora_messaging_schema",
    "x-delivery-count",
];

fn short(u: &mut Unstructured<'_>) -> Result<ShortString> {
    let s: String = if u.ratio(1, 4)? {
        (*u.choose(&KEYS)?).to_owned()
    } else {
        u.arbitrary()?
    };
    // At most 255 bytes, on a character boundary.
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Ok(ShortString::try_new(&s[..end]).expect("at most 255 bytes"))
}

fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<AMQPValue> {
    let kinds = if depth >= 4 { 16 } else { 18 };
    Ok(match u.choose_index(kinds)? {
        0 => AMQPValue::Boolean(u.arbitrary()?),
        1 => AMQPValue::ShortShortInt(u.arbitrary()?),
        2 => AMQPValue::ShortShortUInt(u.arbitrary()?),
        3 => AMQPValue::ShortInt(u.arbitrary()?),
        4 => AMQPValue::ShortUInt(u.arbitrary()?),
        5 => AMQPValue::LongInt(u.arbitrary()?),
        6 => AMQPValue::LongUInt(u.arbitrary()?),
        7 => AMQPValue::LongLongInt(u.arbitrary()?),
        8 => AMQPValue::Float(u.arbitrary()?),
        9 => AMQPValue::Double(u.arbitrary()?),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: u.arbitrary()?,
            value: u.arbitrary()?,
        }),
        11 => AMQPValue::ShortString(short(u)?),
        12 => {
            // Often a timestamp-looking string (for `sent-at`), else any bytes.
            if u.arbitrary()? {
                let s: String = u.arbitrary()?;
                AMQPValue::LongString(LongString::from(s.into_bytes()))
            } else {
                AMQPValue::LongString(LongString::from(u.arbitrary::<Vec<u8>>()?))
            }
        }
        13 => AMQPValue::Timestamp(u.arbitrary()?),
        14 => AMQPValue::ByteArray(ByteArray::from(u.arbitrary::<Vec<u8>>()?)),
        15 => AMQPValue::Void,
        16 => {
            let n = u.choose_index(5)?;
            let mut a = FieldArray::default();
            for _ in 0..n {
                a.push(value(u, depth + 1)?);
            }
            AMQPValue::FieldArray(a)
        }
        _ => AMQPValue::FieldTable(table(u, depth + 1)?),
    })
}

fn table(u: &mut Unstructured<'_>, depth: u32) -> Result<FieldTable> {
    let n = u.choose_index(6)?;
    let mut t = FieldTable::default();
    for _ in 0..n {
        t.insert(short(u)?, value(u, depth)?);
    }
    Ok(t)
}

#[derive(Debug)]
struct Input {
    routing_key: String,
    exchange_empty: bool,
    redelivered: bool,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let routing_key: String = u.arbitrary()?;
        let exchange_empty = u.arbitrary()?;
        let redelivered = u.arbitrary()?;
        let mut properties = BasicProperties::default();
        if u.arbitrary()? {
            properties = properties.with_message_id(short(u)?);
        }
        if u.arbitrary()? {
            properties = properties.with_correlation_id(short(u)?);
        }
        if u.arbitrary()? {
            properties = properties.with_timestamp(u.arbitrary()?);
        }
        if u.arbitrary()? {
            properties = properties.with_headers(table(u, 0)?);
        }
        // The body: the rest, as bytes (mostly JSON once the fuzzer has seen some).
        let body = u.bytes(u.len())?.to_vec();
        Ok(Input {
            routing_key,
            exchange_empty,
            redelivered,
            properties,
            body,
        })
    }
}

fuzz_target!(|input: Input| {
    let p = &input.properties;
    let exchange = if input.exchange_empty { "" } else { "amq.topic" };
    let topic = wire::topic(exchange, &input.routing_key, p);
    let _ = wire::decode_delivery(topic, input.redelivered, p, &input.body);
    if let Some(h) = p.headers() {
        let _ = wire::table_from_json(&wire::table_to_json(h));
    }
    let Ok(m) = wire::decode(&input.routing_key, p, &input.body) else {
        return;
    };
    assert_eq!(m.topic(), input.routing_key);
    let text = std::str::from_utf8(&input.body).expect("a decoded body is UTF-8");
    let want: Value = serde_json::from_str(text).expect("a decoded body is JSON");
    assert_eq!(m.body(), &want, "body {text:?}");
    if let Some(id) = p.message_id() {
        assert_eq!(m.id(), id.as_str());
    }
    let _ = wire::message_id(&m);
    let (props, body) = wire::encode(&m);
    let back = wire::decode(m.topic(), &props, &body).expect("an encoded message decodes");
    assert_eq!(back.topic(), m.topic());
    assert_eq!(back.body(), m.body());
});
