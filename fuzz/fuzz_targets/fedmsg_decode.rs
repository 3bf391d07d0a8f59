//! `hub_zeromq::codec::decode` on arbitrary `[topic, body]` frames.
//!
//! Input: byte 0 is the topic frame's length (255: take the topic from the envelope's own
//! `topic`, as serde_json reads it, so that most well-formed envelopes decode); the topic frame
//! follows, then the body frame (the rest).
//!
//! Asserts: never panics, in either format; a decoded fedmsg message holds what serde_json reads
//! in the envelope (body = `msg`, topic = frame 0 = envelope `topic`, id = `msg_id` when it is a
//! string, headers = the non-null extra fedmsg fields plus the lifted correlation ids, the `i`
//! sequence number); a raw body is accepted only when serde_json reads it, and reads back equal.
#![no_main]

use bytes::Bytes;
use hub_core::correlation::{CORRELATION_ID, IN_REPLY_TO};
use hub_zeromq::codec::{Format, decode, decode_with_seq};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// The fedmsg fields kept as headers (codec.rs's `EXTRAS`, written out again on purpose).
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

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (topic, body): (Vec<u8>, &[u8]) = if n == 255 {
        let topic = serde_json::from_slice::<Value>(rest)
            .ok()
            .and_then(|v| v.get("topic")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        (topic.into_bytes(), rest)
    } else {
        let n = usize::from(n).min(rest.len());
        (rest[..n].to_vec(), &rest[n..])
    };
    let frames = [Bytes::from(topic), Bytes::copy_from_slice(body)];

    // Raw: accepted iff serde_json reads the body (ignoring the raw-value-marker refusal,
    // checked in json_differential), and then it reads back equal.
    if let Ok(m) = decode(Format::Raw, &frames) {
        let text = std::str::from_utf8(body).expect("a decoded body is UTF-8");
        let want: Value = serde_json::from_str(text).expect("a decoded raw body is JSON");
        assert_eq!(m.body(), &want, "raw body {text:?}");
        assert_eq!(m.topic().as_bytes(), &frames[0][..]);
    }

    let decoded = decode_with_seq(Format::Fedmsg, &frames);
    // The two entry points agree.
    assert_eq!(
        decoded.as_ref().map(|(m, _)| m.body()).ok(),
        decode(Format::Fedmsg, &frames).as_ref().map(|m| m.body()).ok(),
    );
    let Ok((m, seq)) = decoded else {
        return;
    };
    let text = std::str::from_utf8(body).expect("a decoded envelope is UTF-8");
    assert_eq!(m.topic().as_bytes(), &frames[0][..], "topic is frame 0");
    // serde_json's reading of the envelope; skip the comparison when it refuses.
    let Ok(Value::Object(env)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    assert_eq!(Some(m.body()), env.get("msg"), "body != envelope msg: {text:?}");
    assert_eq!(
        env.get("topic").and_then(Value::as_str),
        Some(m.topic()),
        "envelope topic: {text:?}"
    );
    if let Some(Value::String(id)) = env.get("msg_id") {
        assert_eq!(m.id(), id, "msg_id: {text:?}");
    }
    if let Some(n) = seq {
        assert_eq!(env.get("i").and_then(Value::as_u64), Some(n), "i: {text:?}");
    }
    let mut headers: Map<String, Value> = env.clone();
    headers.retain(|k, v| !v.is_null() && EXTRAS.contains(&k.as_str()));
    if let Some(Value::Object(nested)) = headers.get("headers").cloned() {
        for k in [IN_REPLY_TO, CORRELATION_ID] {
            if !headers.contains_key(k)
                && let Some(v) = nested.get(k)
            {
                headers.insert(k.to_owned(), v.clone());
            }
        }
    }
    let got: Map<String, Value> = m
        .headers()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(got, headers, "headers: {text:?}");
});
