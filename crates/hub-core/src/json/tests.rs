//! The checker against `serde_json`: never more lenient (soundness, on generated, mutated and
//! hand-picked documents), and sure of itself on ordinary JSON (it would be slow otherwise).

use super::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// The fast path alone: the value's span, or `None` for "invalid or not sure".
fn fast(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let start = ws(b, 0);
    let end = value(b, start, &mut false)?;
    (ws(b, end) == b.len()).then(|| &text[start..end])
}

/// The judge: serde_json reads `text` into a `Value` (and not through its raw-value marker,
/// which `Strict` refuses: see [`RAW_VALUE_MARKER`] and its own tests below); then the span its
/// `RawValue` gives.
fn serde(text: &str) -> Option<&str> {
    serde_json::from_str::<Value>(text).ok()?;
    serde_json::from_str::<Strict>(text).ok()?;
    serde_json::from_str::<&RawValue>(text)
        .ok()
        .map(RawValue::get)
}

/// Soundness: whatever the fast path accepts, serde_json accepts, with the same span.
fn assert_sound(text: &str) {
    if let Some(span) = fast(text) {
        assert_eq!(
            serde(text),
            Some(span),
            "accepted what serde_json rejects: {text:?}"
        );
    }
    assert_eq!(
        JsonText::new(text).map(|t| t.get()),
        serde(text),
        "JsonText::new differs from serde_json on {text:?}"
    );
    let mut values = Vec::new();
    let members = object_members(text, |_, v| {
        values.push(v.get());
        true
    });
    if members.is_some() {
        assert!(
            matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(_))),
            "object_members accepted what serde_json rejects: {text:?}"
        );
    }
    for v in values {
        // Every value handed over reads as a `Value`, even when the object is then refused.
        assert!(
            serde_json::from_str::<Value>(v).is_ok(),
            "object_members handed over {v:?} in {text:?}"
        );
    }
}

#[test]
fn hand_picked_documents() {
    let valid = [
        "0",
        "-0",
        "-0.0e+0",
        "1E5",
        "1e-5",
        "123.456",
        "true",
        "false",
        "null",
        r#""""#,
        r#""a\"b\\c\/d\be\ff\ng\rh\ti\u00e9\uD83D\uDE00\udbff\udfff\uE000""#,
        "1e99",
        "-1.5E-300",
        "1e-400",
        "0e99999",
        "1.7976931348623157e308",
        // Rounds to `f64::MAX` (serde_json's `float_roundtrip`, as `str::parse`).
        "1.7976931348623158e308",
        "18446744073709551616",
        r#""é ü 日本 🎉""#,
        "[]",
        "{}",
        " [ 1 , [ ] , { } , { \"a\" : [ null ] } ] ",
        "\t\n\r{\"k\":\"v\"}\n",
        r#"{"a":{"b":{"c":[1,2,{"d":"e"}]}}}"#,
        r#"{"":0,"":1}"#,
    ];
    for text in valid {
        assert!(fast(text).is_some(), "should be sure of {text:?}");
        assert_sound(text);
    }
    let invalid = [
        "",
        " ",
        "01",
        "-",
        "+1",
        ".5",
        "1.",
        "1.e5",
        "1e",
        "1e+",
        "0x10",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "truex",
        "[1,]",
        "[,1]",
        "{\"a\":1,}",
        "{,}",
        "{\"a\" 1}",
        "{\"a\":}",
        "{1:2}",
        "{'a':1}",
        "[1 2]",
        "[1}",
        "{\"a\":1]",
        "[",
        "]",
        "\"abc",
        "\"a\\x\"",
        "\"a\\u12g4\"",
        "\"a\\u12\"",
        "\"tab\there\"",
        "\"nul\u{0}\"",
        "1 2",
        "{} {}",
        "[1]]",
        "\u{feff}{}",
        // JSON, but no `Value`: serde_json refuses to read these.
        "1e400",
        "-1e400",
        "1.7976931348623159e308",
        "[1e309]",
        r#""\uD800""#,
        r#""\uDC00""#,
        r#""\uD800\u0041""#,
        r#""\uD800\uD800\uDC00""#,
        r#""\uD800x""#,
        r#"{"k\uDFFF":1}"#,
    ];
    for text in invalid {
        assert!(fast(text).is_none(), "accepted invalid {text:?}");
        assert_sound(text);
    }
}

#[test]
fn long_strings_are_checked_to_their_end() {
    for len in [63, 64, 65, 79, 80, 81, 100, 1000] {
        let run = "x".repeat(len);
        for (text, valid) in [
            (format!(r#""{run}""#), true),
            (format!(r#""{run}\"{run}""#), true),
            (format!(r#""{run}\u00e9""#), true),
            (format!(r#""{run}é日""#), true),
            (format!("\"{run}\u{1}\""), false),
            (format!("\"{run}\n{run}\""), false),
            (format!("\"{run}\u{1f}x\""), false),
            (format!(r#""{run}\x""#), false),
            (format!(r#""{run}"#), false),
            (format!(r#""{run}\"#), false),
        ] {
            assert_eq!(fast(&text).is_some(), valid, "{len}: {text:?}");
            assert_sound(&text);
        }
    }
}

#[test]
fn deep_nesting_is_left_to_serde_json() {
    for depth in [1, 99, 100, 101, 127, 128, 129, 300] {
        for (open, close) in [("[", "]"), ("{\"k\":", "}")] {
            let text = format!("{}0{}", open.repeat(depth), close.repeat(depth));
            let want_fast = depth <= MAX_DEPTH as usize;
            assert_eq!(fast(&text).is_some(), want_fast, "depth {depth} {open}");
            assert_sound(&text);
        }
    }
}

#[test]
fn string_values_and_numbers_read_as_serde_json_reads_them() {
    fn s(t: &str) -> Option<Cow<'_, str>> {
        JsonText::new(t).and_then(|j| j.as_str())
    }
    assert_eq!(s(r#""plain""#).as_deref(), Some("plain"));
    assert!(matches!(s(r#""plain""#), Some(Cow::Borrowed(_))));
    assert_eq!(s(r#""t\u00e9\"""#).as_deref(), Some("té\""));
    assert_eq!(
        s(r#""lone \uD800""#),
        None,
        "serde_json rejects a lone surrogate"
    );
    assert_eq!(s("12"), None);
    let n = |t: &str| JsonText::new(t).and_then(|j| j.as_f64());
    for t in [
        "0",
        "1717171717",
        "1717171717.5",
        "-3",
        "1e3",
        "123456789012345678",
        "12345678901234567890123",
        "0.1",
    ] {
        assert_eq!(n(t), serde_json::from_str::<f64>(t).ok(), "{t}");
    }
    assert_eq!(n("1e400"), None, "out of range, as serde_json says");
    assert_eq!(n(r#""1""#), None);
    assert!(JsonText::new("null").is_some_and(|j| j.is_null()));
}

#[test]
fn object_members_hands_over_keys_and_values_in_order() {
    let text = r#" {"a": 1, "b\u0063": {"x": [true]}, "s": "v" , "n":null} "#;
    let mut seen = Vec::new();
    let done = object_members(text, |k, v| {
        seen.push((k.to_owned(), v.get().to_owned()));
        true
    });
    assert_eq!(done, Some(()));
    let want = [
        ("a", "1"),
        ("bc", r#"{"x": [true]}"#),
        ("s", r#""v""#),
        ("n", "null"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(seen, want);
    // The caller can stop it, and that reads as "decide with serde_json".
    assert_eq!(object_members(text, |k, _| k != "s"), None);
    // Not an object, or invalid after the members already handed over.
    assert_eq!(object_members("[1]", |_, _| true), None);
    assert_eq!(object_members(r#"{"a":1,"b":tru}"#, |_, _| true), None);
    assert_eq!(object_members(r#"{"a":1} x"#, |_, _| true), None);
    assert_eq!(object_members(r#"{"\uDC00":1}"#, |_, _| true), None);
}

/// JSON values of every kind, with strings drawn to exercise escapes and non-ASCII text.
fn values() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        "[a-z\"\\\\/\\x00-\\x1fé日🎉 ]{0,24}".prop_map(Value::String),
        // Long runs (past the 64 bytes scanned 16 at a time), with the odd escape or control.
        "[a-z]{60,140}[\"\\\\\\x01\\x1f\\n]?[a-z é]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"\\\\é]{0,6}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A document written compactly or pretty, its whitespace then stirred.
fn documents() -> impl Strategy<Value = String> {
    (values(), any::<bool>()).prop_map(|(v, pretty)| {
        if pretty {
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            serde_json::to_string(&v).unwrap_or_default()
        }
    })
}

/// One edit of a document: a byte removed, replaced or inserted, from JSON's own alphabet.
fn mutated() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = " \t\n{}[],:\"\\/0123456789.eE+-tfnulrsabx\u{0}\u{1f}é"
        .chars()
        .collect();
    (
        documents(),
        any::<prop::sample::Index>(),
        prop::sample::select(alphabet),
        0..3u8,
    )
        .prop_map(|(doc, at, c, op)| {
            let mut chars: Vec<char> = doc.chars().collect();
            let i = at.index(chars.len() + 1);
            match op {
                0 if i < chars.len() => {
                    chars.remove(i);
                }
                1 if i < chars.len() => chars[i] = c,
                _ => chars.insert(i, c),
            }
            chars.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn sure_of_every_generated_document(doc in documents()) {
        prop_assert_eq!(fast(&doc), serde(&doc));
    }

    #[test]
    fn never_more_lenient_than_serde_json_after_an_edit(doc in mutated()) {
        assert_sound(&doc);
    }

    #[test]
    fn never_more_lenient_than_serde_json_on_noise(
        doc in "[ \t{}\\[\\],:\"\\\\/0-9.eE+\\-truefalsnbx\\x00\\x1fé]{0,32}"
    ) {
        assert_sound(&doc);
    }

    /// Surrogate escapes, paired or not, in strings and keys: exactly serde_json's verdict.
    #[test]
    fn surrogate_escapes_are_judged_as_serde_json_judges_them(
        parts in prop::collection::vec(
            prop::sample::select(vec![
                r"\uD800", r"\udbff", r"\uDC00", r"\uDFFF", r"\uD83D", r"\uDE00", r"\u0041",
                r"\uE000", r"\uD7FF", r"\n", r"\", "u", "x", "é",
            ]),
            0..6,
        ),
        as_key in any::<bool>(),
    ) {
        let s = format!("\"{}\"", parts.concat());
        let text = if as_key { format!("{{{s}:1}}") } else { s };
        prop_assert_eq!(fast(&text), serde(&text), "{}", text);
        assert_sound(&text);
    }

    /// Plain digits read eight at a time as `str::parse` reads them one by one; anything else
    /// (the bytes either side of `0`–`9` included) is not a plain integer.
    #[test]
    fn plain_integers_read_as_str_parse_reads_them(
        s in "[0-9]{1,21}|[0-9]{0,9}[-.eE/:a \x00\u{e9}][0-9]{0,9}"
    ) {
        let text = JsonText { text: &s, unescaped: true };
        let plain = s.bytes().all(|c| c.is_ascii_digit());
        prop_assert_eq!(text.as_u64(), s.parse::<u64>().ok().filter(|_| plain), "{}", s);
        if let Some(j) = JsonText::new(&s) {
            prop_assert_eq!(j.as_f64(), serde_json::from_str::<f64>(&s).ok(), "{}", s);
        }
    }

    /// Numbers near and past the edge of `f64`'s range: exactly serde_json's verdict.
    #[test]
    fn numbers_are_in_range_as_serde_json_reads_them(
        int in "-?(0|[1-9][0-9]{0,24}|[1-9]{300,320})",
        frac in proptest::option::of("[0-9]{1,20}"),
        exp in proptest::option::of((prop::sample::select(vec!["e", "E+", "e-"]), 0u32..420)),
    ) {
        let mut text = int;
        if let Some(f) = frac {
            text = format!("{text}.{f}");
        }
        if let Some((e, n)) = exp {
            text = format!("{text}{e}{n}");
        }
        prop_assert_eq!(fast(&text), serde(&text), "{}", text);
        let member = format!(r#"{{"n":{text}}}"#);
        prop_assert_eq!(object_members(&member, |_, _| true).is_some(), serde(&member).is_some());
    }

    #[test]
    fn members_of_generated_objects_are_the_object(
        m in prop::collection::btree_map("[a-z\"\\\\é]{0,6}", values(), 0..8)
    ) {
        let object: Map<String, Value> = m.into_iter().collect();
        let text = serde_json::to_string(&Value::Object(object.clone())).unwrap_or_default();
        // Compared as text: serde_json's default float parsing does not round-trip exactly.
        let want: Vec<(String, String)> = object
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_string(v).unwrap_or_default()))
            .collect();
        let mut read = Vec::new();
        let done = object_members(&text, |k, v| {
            read.push((k.to_owned(), v.get().to_owned()));
            true
        });
        prop_assert_eq!(done, Some(()));
        prop_assert_eq!(read, want);
    }
}

/// serde_json's raw-value marker as an object's first key: serde_json (with `raw_value`) reads
/// such an object as something else than was sent (a number or a body turned into `null`, or
/// the text in its string), so it is refused, at any depth, however the key is escaped; as any
/// other key, or as a later key, it is an ordinary key.
#[test]
fn the_raw_value_marker_as_a_first_key_is_refused_everywhere() {
    let refused = [
        r#"{"$serde_json::private::RawValue":0}"#,
        r#"{"\u0024serde_json::private::RawValue":0}"#,
        r#"{"$serde_json::private::RawValue":"1e400"}"#,
        r#"{"$serde_json::private::RawValue":"{\"a\":1}"}"#,
        r#"[1,{"$serde_json::private::RawValue":"2"}]"#,
        r#"{"a":{"$serde_json::private::RawValue":"true"}}"#,
        r#" { "$serde_json::private::RawValue" : "null" } "#,
    ];
    for text in refused {
        assert!(JsonText::new(text).is_none(), "accepted {text}");
        assert!(
            JsonText::refusal(text).contains("raw-value marker"),
            "{text}: {}",
            JsonText::refusal(text)
        );
        assert_eq!(object_members(text, |_, _| true), None, "{text}");
    }
    let accepted = [
        r#"{"a":1,"$serde_json::private::RawValue":2}"#,
        r#"{"$other":1}"#,
        r#"{"\u0024x":[1,2]}"#,
        r#"{"$serde_json::private::RawValueX":3}"#,
    ];
    for text in accepted {
        let j = JsonText::new(text).unwrap_or_else(|| panic!("refused {text}"));
        let v: Value = serde_json::from_str(j.get()).unwrap();
        assert!(v.is_object(), "{text} reads back as an object: {v}");
    }
}
