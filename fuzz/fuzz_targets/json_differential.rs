//! `hub_core::json` (the one-pass JSON checker and object reader) against serde_json.
//!
//! Asserts, for any UTF-8 text:
//! - `JsonText::new(text)` accepts iff serde_json reads it into a `Value` AND no object in it
//!   has [`RAW_VALUE_MARKER`] as its first key (after unescaping): such objects are refused on
//!   purpose. The marker check is written here independently: a walk over serde_json's
//!   deserializer that reads every key as a plain `String`.
//! - When accepted: `get()` is the text without the JSON whitespace around it, and reads as the
//!   same `Value`; `is_null`, `as_str`, `as_f64`, `as_u64` agree with that `Value`.
//! - `object_members(text, ..)`: every member it hands over is a valid `JsonText`; when it
//!   returns `Some`, the text is accepted, and serde_json reads an object with the same members
//!   (keys, and each value's text parsed equal), in the same order, repeats included.
#![no_main]

use std::fmt;

use hub_core::json::{JsonText, RAW_VALUE_MARKER, object_members};
use libfuzzer_sys::fuzz_target;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

/// Walks a document; `Err` when some object's first key is the marker (or the text is invalid).
struct NoMarker;

impl<'de> DeserializeSeed<'de> for NoMarker {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NoMarker {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        while a.next_element_seed(NoMarker)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(k) = a.next_key::<String>()? {
            if first && k == RAW_VALUE_MARKER {
                return Err(de::Error::custom("marker"));
            }
            first = false;
            a.next_value_seed(NoMarker)?;
        }
        Ok(())
    }
}

/// An object's members in order, repeats kept (keys read as plain strings).
struct Members<'a>(std::marker::PhantomData<&'a ()>);

impl<'de> Visitor<'de> for Members<'de> {
    type Value = Vec<(String, &'de RawValue)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = a.next_key::<String>()? {
            out.push((k, a.next_value::<&'de RawValue>()?));
        }
        Ok(out)
    }
}

fn members(text: &str) -> Option<Vec<(String, &RawValue)>> {
    let mut d = serde_json::Deserializer::from_str(text);
    let out = d
        .deserialize_map(Members(std::marker::PhantomData))
        .ok()?;
    d.end().ok()?;
    Some(out)
}

/// serde_json's `Value`, and the independent marker check, on `text`.
fn expected(text: &str) -> Option<Value> {
    let v = serde_json::from_str::<Value>(text).ok()?;
    let mut d = serde_json::Deserializer::from_str(text);
    NoMarker.deserialize(&mut d).ok()?;
    d.end().ok()?;
    Some(v)
}

fn is_json_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let want = expected(text);
    let got = JsonText::new(text);
    match (&got, &want) {
        (None, None) => {}
        (Some(j), None) => panic!("accepted what serde_json refuses (or the marker): {text:?} as {j:?}"),
        (None, Some(v)) => panic!("refused what serde_json reads: {text:?} = {v:?}"),
        (Some(j), Some(v)) => {
            assert_eq!(j.get(), text.trim_matches(is_json_ws), "get() of {text:?}");
            let back: Value = serde_json::from_str(j.get()).expect("get() reads back");
            assert_eq!(&back, v, "{text:?}");
            assert_eq!(j.is_null(), v.is_null(), "is_null {text:?}");
            assert_eq!(j.as_str().as_deref(), v.as_str(), "as_str {text:?}");
            assert_eq!(j.as_f64().map(f64::to_bits), v.as_f64().map(f64::to_bits), "as_f64 {text:?}");
            if j.get().bytes().all(|b| b.is_ascii_digit()) {
                assert_eq!(j.as_u64(), v.as_u64(), "as_u64 {text:?}");
            } else {
                assert_eq!(j.as_u64(), None, "as_u64 of a non-digit text {text:?}");
            }
        }
    }

    let mut handed: Vec<(String, String)> = Vec::new();
    let read = object_members(text, |k, v| {
        handed.push((k.to_owned(), v.get().to_owned()));
        true
    });
    for (k, v) in &handed {
        assert!(expected(v).is_some(), "member {k:?} value {v:?} is not a JsonText ({text:?})");
    }
    if read.is_some() {
        assert!(want.is_some(), "object_members read what JsonText refuses: {text:?}");
        let serde = members(text).expect("serde_json reads the object");
        assert_eq!(serde.len(), handed.len(), "member count {text:?}");
        for ((k, v), (sk, sv)) in handed.iter().zip(&serde) {
            assert_eq!(k, sk, "key {text:?}");
            let a: Value = serde_json::from_str(v).expect("member value");
            let b: Value = serde_json::from_str(sv.get()).expect("serde member value");
            assert_eq!(a, b, "value of {k:?} in {text:?}");
        }
    }
});
