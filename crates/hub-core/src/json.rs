//! Checked JSON text, and a one-pass reader of a JSON object's members, for backends that
//! receive JSON on the hot path and keep it as text.
//!
//! The checker accepts exactly what `serde_json` reads into a [`Value`]: one JSON value, its
//! numbers within `f64`'s range, its nesting within serde_json's limit. So a consumer that reads
//! a body it let through finds what was sent, never `null` in its place. It costs less than
//! serde_json: one pass, no visitor, strings scanned sixteen bytes at a time. A 200-byte fedmsg
//! envelope is read, fields included, in about two thirds of the instructions of `serde_json`'s
//! typed decode (BENCHMARKS.md). It is *conservative*: whenever it is not sure (nesting deeper
//! than [`MAX_DEPTH`], a number too long to tell at a glance) it answers "not sure" or asks
//! `serde_json`, so it can be as slow as `serde_json`, never more lenient. Property tests hold it
//! to that against `serde_json` on generated, mutated and random documents.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;
use serde_json::value::RawValue;

/// Containers nested deeper than this are left to `serde_json` (whose own limit is 128).
pub const MAX_DEPTH: u32 = 100;

/// serde_json's private marker for a raw value (with its `raw_value` feature, which this
/// workspace enables): an object whose *first* key is this is read into a [`Value`] as the
/// JSON text in its value (a string), or refused, never as the object that was sent
/// (`{"$serde_json::private::RawValue":0}` reads back as `null` through a `RawValue`). Such an
/// object is refused here, at any depth and however its key is escaped.
pub const RAW_VALUE_MARKER: &str = "$serde_json::private::RawValue";

/// The error [`Strict`] gives for an object led by [`RAW_VALUE_MARKER`].
const MARKER_REFUSAL: &str = "an object whose first key is serde_json's private raw-value marker";

/// What serde_json reads into a [`Value`] (the same numbers, strings, nesting limit), except an
/// object whose first key is [`RAW_VALUE_MARKER`]: the slow path's judge. Keys are read as plain
/// strings, so serde_json's marker handling never applies.
struct Strict;

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut first = true;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if first && key == RAW_VALUE_MARKER {
                return Err(serde::de::Error::custom(MARKER_REFUSAL));
            }
            first = false;
            map.next_value::<Strict>()?;
        }
        Ok(Strict)
    }
}

/// An object's first key at `i` (its opening quote) is not [`RAW_VALUE_MARKER`]: at a glance
/// when it starts with anything but `$` or an escape; otherwise the key is read (rare).
#[inline(always)]
fn not_the_marker(b: &[u8], i: usize) -> bool {
    !matches!(b.get(i + 1), Some(b'$' | b'\\')) || !is_marker(b, i)
}

/// The string at `i` reads as [`RAW_VALUE_MARKER`] (or cannot be read: then the fast reader is
/// not sure either way).
#[cold]
#[inline(never)]
fn is_marker(b: &[u8], i: usize) -> bool {
    let Some(end) = string(b, i, &mut false) else {
        return true;
    };
    b.get(i..end)
        .and_then(|k| serde_json::from_slice::<Cow<'_, str>>(k).ok())
        .is_none_or(|k| k == RAW_VALUE_MARKER)
}

/// Text that is exactly one JSON value, with no whitespace around it, that serde_json reads into
/// a [`Value`]: numbers within `f64`'s range, nesting under 128 levels. (A [`RawValue`] may hold
/// more: `1e400`, or deeper nesting, which no `Value` can hold.)
#[derive(Clone, Copy)]
pub struct JsonText<'a> {
    text: &'a str,
    /// Known to hold no backslash (set by the reader, which saw every byte).
    unescaped: bool,
}

impl<'a> JsonText<'a> {
    /// Checks that `text` is one JSON value (whitespace around it allowed, and left out).
    /// `None` when `serde_json` would not read it into a [`Value`].
    pub fn new(text: &'a str) -> Option<Self> {
        let b = text.as_bytes();
        let start = ws(b, 0);
        let mut escapes = false;
        if let Some(end) = value(b, start, &mut escapes)
            && ws(b, end) == b.len()
            && let Some(text) = text.get(start..end)
        {
            return Some(Self {
                text,
                unescaped: !escapes,
            });
        }
        // Not sure (or invalid): serde_json decides.
        serde_json::from_str::<&RawValue>(text)
            .ok()
            .and_then(Self::from_raw)
    }

    /// The text of `raw`, if serde_json reads it into a [`Value`] (a `RawValue` is only
    /// checked as JSON). Parses it: for slow paths.
    pub fn from_raw(raw: &'a RawValue) -> Option<Self> {
        serde_json::from_str::<Strict>(raw.get()).ok()?;
        Some(Self {
            text: raw.get(),
            unescaped: false,
        })
    }

    /// Why [`JsonText::new`] refused `text`: serde_json's error, or the raw-value marker (see
    /// [`RAW_VALUE_MARKER`]). For error messages; `text` is parsed again.
    pub fn refusal(text: &str) -> String {
        match serde_json::from_str::<Strict>(text) {
            Err(e) if e.to_string().contains(MARKER_REFUSAL) => {
                format!("refused: {e} (it would not read back as sent)")
            }
            _ => match serde_json::from_str::<Value>(text) {
                Err(e) => format!("not JSON: {e}"),
                Ok(_) => "not one JSON value".to_owned(),
            },
        }
    }

    /// The JSON text.
    pub fn get(&self) -> &'a str {
        self.text
    }

    /// The value is `null`.
    pub fn is_null(&self) -> bool {
        self.text == "null"
    }

    /// The string this value holds, unescaped; `None` if it is not a string (or holds a lone
    /// surrogate escape, which `serde_json` rejects as a string).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        let inner = self.text.strip_prefix('"')?.strip_suffix('"')?;
        if self.unescaped || !inner.contains('\\') {
            Some(Cow::Borrowed(inner))
        } else {
            serde_json::from_str::<String>(self.text)
                .ok()
                .map(Cow::Owned)
        }
    }

    /// The number this value holds, as `serde_json` reads it into an `f64` (integers convert);
    /// `None` if it is not a number.
    pub fn as_f64(&self) -> Option<f64> {
        // Plain digits that fit a `u64`: exactly serde_json's `u64 as f64`.
        match self.as_u64() {
            Some(n) => Some(n as f64),
            None => serde_json::from_str::<f64>(self.text).ok(),
        }
    }

    /// The number this value holds when it is written as plain digits (no sign, fraction or
    /// exponent) and fits a `u64`, as `str::parse` reads it.
    pub fn as_u64(&self) -> Option<u64> {
        let s = self.text.as_bytes();
        if s.is_empty() || s.len() > 19 {
            // 19 digits always fit; 20 may.
            return self
                .text
                .parse()
                .ok()
                .filter(|_| s.iter().all(u8::is_ascii_digit));
        }
        let mut n: u64 = 0;
        let (chunks, rest) = s.as_chunks::<8>();
        for chunk in chunks {
            n = n * 100_000_000 + eight_digits(*chunk)?;
        }
        for &c in rest {
            if !c.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u64::from(c - b'0');
        }
        Some(n)
    }
}

/// Eight ASCII digits as a number, eight at a time (SWAR); `None` if one is not a digit.
#[inline]
fn eight_digits(chunk: [u8; 8]) -> Option<u64> {
    const NIBBLES: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    let v = u64::from_le_bytes(chunk);
    // Each byte 0x30..=0x39: high nibble 3, and adding 6 does not carry into it.
    if v & NIBBLES != ONES * 0x30 || v.wrapping_add(ONES * 6) & NIBBLES != ONES * 0x30 {
        return None;
    }
    let d = v - ONES * 0x30;
    // Pairs, then fours, then all eight (the first digit is the lowest byte).
    // (simdjson's `parse_eight_digits_unrolled`; the high products wrap away by design.)
    let d = d * 10 + (d >> 8);
    let lo = (d & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32));
    let hi = ((d >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32));
    Some(lo.wrapping_add(hi) >> 32)
}

/// Equal when the texts are.
impl PartialEq for JsonText<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for JsonText<'_> {}

impl fmt::Debug for JsonText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

/// Reads a JSON object in one pass, handing each member to `member` as it is read: the key
/// (unescaped) and the value, checked.
///
/// `Some(())` when `text` is one JSON object, whitespace around it allowed, and `member` never
/// returned `false`. `None` when the object is invalid, when `member` stopped the reading, or
/// when the reader is not sure (see the module doc): then the caller must discard what
/// `member` gathered and decide with `serde_json` (reading a [`Value`], or through
/// [`JsonText::from_raw`]). Every value handed over is a [`JsonText`] whatever the result; only
/// the whole object's validity waits for `Some`.
pub fn object_members<'a>(
    text: &'a str,
    mut member: impl FnMut(&str, JsonText<'a>) -> bool,
) -> Option<()> {
    let b = text.as_bytes();
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        if !not_the_marker(b, i) {
            return None;
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let k = i;
            let mut escapes = false;
            i = string(b, i, &mut escapes)?;
            let unescaped;
            let key = if escapes {
                // Rare: serde_json unescapes (and rejects a lone surrogate, as it would).
                unescaped = serde_json::from_str::<String>(text.get(k..i)?).ok()?;
                &unescaped
            } else {
                text.get(k + 1..i - 1)?
            };
            i = ws(b, i);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let v = ws(b, i + 1);
            let mut escapes = false;
            // Strings and numbers, most members' values, are read here without a call.
            i = match b.get(v) {
                Some(b'"') => string(b, v, &mut escapes)?,
                Some(b'-' | b'0'..=b'9') => number(b, v)?,
                _ => value(b, v, &mut escapes)?,
            };
            let value = JsonText {
                text: text.get(v..i)?,
                unescaped: !escapes,
            };
            if !member(key, value) {
                return None;
            }
            i = ws(b, i);
            match b.get(i) {
                Some(b',') => i = ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (ws(b, i) == b.len()).then_some(())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// A mask whose lowest set bit is in the first byte of `w` (little-endian) that ends a run of
/// plain string bytes: `"`, `\` or a control character. Zero if there is none. Bytes above that
/// one may be flagged falsely (a borrow), never bytes below it.
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (quote | backslash | control) & HIGH
}

// The reader: free functions over `(bytes, index)`, returning the index past what they read
// (LLVM keeps the index in a register). The text is a `&str`, so strings need no UTF-8 check.

#[inline(always)]
fn ws(b: &[u8], mut i: usize) -> usize {
    // Compact JSON has none: one comparison says so.
    while let Some(&c) = b.get(i)
        && c <= b' '
        && matches!(c, b' ' | b'\n' | b'\r' | b'\t')
    {
        i += 1;
    }
    i
}

/// True if `s` holds a control character (below 0x20), which JSON strings may not.
#[inline]
fn has_control(s: &[u8]) -> bool {
    let mut words = s.chunks_exact(8);
    let mut seen = 0;
    for w in words.by_ref() {
        let mut a = [0; 8];
        a.copy_from_slice(w);
        let w = u64::from_le_bytes(a);
        seen |= w.wrapping_sub(ONES * 0x20) & !w;
    }
    seen & HIGH != 0 || words.remainder().iter().any(|&c| c < 0x20)
}

/// At an opening quote: the index past the closing one. Sets `escapes` on a backslash.
#[inline(always)]
fn string(b: &[u8], mut i: usize, escapes: &mut bool) -> Option<usize> {
    i += 1;
    // Sixteen bytes at a time for the first 64 (keys, ids, short values end there); past that
    // memchr (SIMD) finds the run's end, then one pass rules out control characters before
    // it. Per 1 KB envelope: 3 613 -> 2 291 instructions; per 200 B: unchanged.
    let mut short = 4;
    loop {
        while let Some(chunk) = b.get(i..).and_then(<[u8]>::first_chunk::<16>) {
            let w = u128::from_le_bytes(*chunk);
            let lo = string_stops(w as u64);
            let hi = string_stops((w >> 64) as u64);
            if lo != 0 {
                i += (lo.trailing_zeros() / 8) as usize;
                break;
            }
            if hi != 0 {
                i += 8 + (hi.trailing_zeros() / 8) as usize;
                break;
            }
            i += 16;
            if short > 1 {
                short -= 1;
            } else {
                i = long_run(b, i)?;
                break;
            }
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => {
                *escapes = true;
                i = escape(b, i)?;
            }
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// Inside a long string: the index of the next `"` or `\`, or `None` if a control character
/// comes first (or neither comes).
#[inline(never)]
fn long_run(b: &[u8], i: usize) -> Option<usize> {
    let rest = b.get(i..)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if has_control(rest.get(..end)?) {
        return None;
    }
    Some(i + end)
}

/// At a backslash: the index past one escape, checked as serde_json checks one in a string it
/// reads: `\u` takes four hex digits, and a UTF-16 surrogate must come as a pair, a leading one
/// (`D800`–`DBFF`) followed at once by an escaped trailing one (`DC00`–`DFFF`).
fn escape(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(i + 2),
        b'u' => match hex4(b, i + 2)? {
            0xD800..=0xDBFF => {
                if b.get(i + 6..i + 8) != Some(b"\\u") {
                    return None;
                }
                matches!(hex4(b, i + 8)?, 0xDC00..=0xDFFF).then_some(i + 12)
            }
            0xDC00..=0xDFFF => None,
            _ => Some(i + 6),
        },
        _ => None,
    }
}

/// The four hex digits at `i`, as a number.
fn hex4(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4)?
        .iter()
        .try_fold(0, |n, &c| Some(n * 16 + char::from(c).to_digit(16)?))
}

#[inline(always)]
fn digits(b: &[u8], mut i: usize) -> usize {
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    i
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, within `f64`'s range as
/// serde_json reads it; what may follow is the caller's to check.
#[inline(always)]
fn number(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    let int_at = i;
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(b, i + 1),
        _ => return None,
    };
    // Below 10^(200 + 99): in range whatever the fraction, so only numbers with a long integer
    // part or a long exponent are read to know (`1e400` is JSON, but no `Value`).
    let mut sure = i - int_at <= 200;
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !matches!(b.get(i), Some(b'0'..=b'9')) {
            return None;
        }
        i = digits(b, i);
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        if !matches!(b.get(i), Some(b'0'..=b'9')) {
            return None;
        }
        let exp_at = i;
        i = digits(b, i);
        sure &= i - exp_at <= 2;
    }
    if sure || in_range(b.get(start..i)?) {
        Some(i)
    } else {
        None
    }
}

/// A number's text reads as a finite `f64`, as serde_json reads it (correctly rounded, as
/// `str::parse` does: hub-core enables its `float_roundtrip` feature).
#[cold]
#[inline(never)]
fn in_range(number: &[u8]) -> bool {
    serde_json::from_slice::<f64>(number).is_ok()
}

/// At an object member's key: the index past the key, the colon and the whitespace after it.
#[inline(always)]
fn key(b: &[u8], i: usize, escapes: &mut bool) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = ws(b, string(b, i, escapes)?);
    if b.get(i) != Some(&b':') {
        return None;
    }
    Some(ws(b, i + 1))
}

/// At a value's first byte: the index past the value. Iterative: nesting costs one bit of
/// `objects` per level, not a stack frame.
fn value(b: &[u8], mut i: usize, escapes: &mut bool) -> Option<usize> {
    // Bit d is set when the container at depth d is an object (else an array); `object` is
    // the innermost one's bit.
    let mut objects: u128 = 0;
    let mut depth: u32 = 0;
    let mut object = false;
    loop {
        match *b.get(i)? {
            b'"' => i = string(b, i, escapes)?,
            b'{' => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    if !not_the_marker(b, i) {
                        return None;
                    }
                    objects |= 1 << depth;
                    depth += 1;
                    object = true;
                    i = key(b, i, escapes)?;
                    continue;
                }
            }
            b'[' => {
                i = ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    if depth == MAX_DEPTH {
                        return None;
                    }
                    objects &= !(1 << depth);
                    depth += 1;
                    object = false;
                    continue;
                }
            }
            b'-' | b'0'..=b'9' => i = number(b, i)?,
            b't' if b.get(i..i + 4) == Some(b"true") => i += 4,
            b'f' if b.get(i..i + 5) == Some(b"false") => i += 5,
            b'n' if b.get(i..i + 4) == Some(b"null") => i += 4,
            _ => return None,
        }
        // A value ended: close what ends here, then go on to the next value.
        loop {
            if depth == 0 {
                return Some(i);
            }
            i = ws(b, i);
            match *b.get(i)? {
                b',' => {
                    i = ws(b, i + 1);
                    if object {
                        i = key(b, i, escapes)?;
                    }
                    break;
                }
                c if c == if object { b'}' } else { b']' } => {
                    i += 1;
                    depth -= 1;
                    object = depth > 0 && objects >> (depth - 1) & 1 == 1;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
