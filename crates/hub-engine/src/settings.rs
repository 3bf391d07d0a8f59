//! Reading a settings table with every problem in it reported at once, worded for a person: one
//! wording for `hub check` and for the test kit.
//!
//! serde stops at a table's first bad key, so the table is read again without each key found
//! bad, until it reads (or nothing more can be learnt). Each problem says what to do: the
//! closest known key for a typo, "a whole number" for `usize`, the known values of an enum.

use figment::error::{Error, Kind};
use figment::value::{Dict, Value};

/// At most this many rounds per table (a table has a handful of keys).
const ROUNDS: usize = 32;

/// Reads `value` (the table at `key`) with `parse`, reporting every problem through `issue`
/// (full key path, message). `Some` when it reads in the end, possibly without the keys
/// reported; `None` when it cannot be read at all.
///
/// # Example
/// ```
/// use figment::value::Value;
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct S { path: String, limit: u32 }
/// let table: Value = figment::Figment::from(figment::providers::Serialized::defaults(
///     serde_json::json!({"pth": "x", "limit": -1}),
/// )).extract().unwrap();
/// let mut found = Vec::new();
/// hub_engine::settings::collect("settings", table, |v| v.deserialize::<S>(), &mut |k, m| found.push(format!("{k}: {m}")));
/// let said = |start: &str| found.iter().any(|f| f.starts_with(start));
/// assert!(said("settings.pth: unknown key `pth` (did you mean `path`?)"), "{found:?}");
/// assert!(said("settings.limit: expected a whole number"), "{found:?}");
/// assert!(said("settings.path: missing"), "{found:?}");
/// ```
pub fn collect<B>(
    key: &str,
    value: Value,
    parse: impl Fn(Value) -> Result<B, Error>,
    issue: &mut dyn FnMut(String, String),
) -> Option<B> {
    let (tag, mut dict) = match value {
        Value::Dict(tag, dict) => (tag, dict),
        other => {
            return match parse(other) {
                Ok(b) => Some(b),
                Err(errors) => {
                    for e in errors {
                        let (k, m) = describe(key, &e);
                        issue(k, m);
                    }
                    None
                }
            };
        }
    };
    // Keys taken out after a problem: a "missing" complaint about them is already said.
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..ROUNDS {
        let errors = match parse(Value::Dict(tag, dict.clone())) {
            Ok(b) => return Some(b),
            Err(errors) => errors,
        };
        let mut progressed = false;
        let mut now_missing = Vec::new();
        for e in errors {
            if let Kind::MissingField(field) = &e.kind {
                let at = with_last(&e.path, field);
                if removed.contains(&at.join(".")) {
                    now_missing.push(at);
                    continue;
                }
            }
            let (k, m) = describe(key, &e);
            issue(k, m);
            if let Some(at) = offending(&e)
                && let Some(taken) = remove(&mut dict, &at)
            {
                removed.push(taken.join("."));
                progressed = true;
            }
        }
        if !progressed {
            // A required key taken out is now "missing", and serde names only the first missing
            // key: put back a stand-in that reads, so that the next problem can show.
            for at in &now_missing {
                if let Some(v) = stand_in(&parse, tag, &dict, at) {
                    progressed |= insert(&mut dict, at, v);
                }
            }
            if !progressed {
                return None;
            }
        }
    }
    None
}

/// A value for the key at `path` with which the table no longer complains about that key.
fn stand_in<B>(
    parse: &impl Fn(Value) -> Result<B, Error>,
    tag: figment::value::Tag,
    dict: &Dict,
    path: &[String],
) -> Option<Value> {
    let candidates = [
        Value::from(""),
        Value::from(0u8),
        Value::from(false),
        Value::from(Vec::<Value>::new()),
        Value::from(Dict::new()),
    ];
    candidates.into_iter().find(|candidate| {
        let mut trial = dict.clone();
        if !insert(&mut trial, path, candidate.clone()) {
            return false;
        }
        match parse(Value::Dict(tag, trial)) {
            Ok(_) => true,
            Err(errors) => errors.into_iter().all(|e| {
                let at = match &e.kind {
                    Kind::MissingField(f) => with_last(&e.path, f),
                    _ => e.path.clone(),
                };
                at != path
            }),
        }
    })
}

/// Puts `value` at `path` in `dict` (creating nothing on the way); false when it cannot.
fn insert(dict: &mut Dict, path: &[String], value: Value) -> bool {
    match path {
        [] => false,
        [last] => {
            dict.insert(last.clone(), value);
            true
        }
        [first, rest @ ..] => match dict.get_mut(first) {
            Some(Value::Dict(_, inner)) => insert(inner, rest, value),
            _ => false,
        },
    }
}

/// The path (within the table) of the key to take out after `e`, if one is to blame.
fn offending(e: &Error) -> Option<Vec<String>> {
    match &e.kind {
        Kind::UnknownField(field, _) => Some(with_last(&e.path, field)),
        Kind::MissingField(_) => None,
        _ if e.path.is_empty() => None,
        _ => Some(e.path.clone()),
    }
}

/// `path` ending with `field` (figment's path of a key error sometimes holds the key already).
fn with_last(path: &[String], field: &str) -> Vec<String> {
    let mut at = path.to_vec();
    if at.last().map(String::as_str) != Some(field) {
        at.push(field.to_owned());
    }
    at
}

/// Takes the key at `path` out of `dict` (a whole list, for an element of it); the path of
/// what was taken, or `None` when there is nothing there.
fn remove(dict: &mut Dict, path: &[String]) -> Option<Vec<String>> {
    match path {
        [] => None,
        [last] => dict.remove(last).map(|_| vec![last.clone()]),
        [first, rest @ ..] => match dict.get_mut(first) {
            Some(Value::Dict(_, inner)) => {
                let mut taken = remove(inner, rest)?;
                taken.insert(0, first.clone());
                Some(taken)
            }
            Some(Value::Array(..)) => dict.remove(first).map(|_| vec![first.clone()]),
            _ => None,
        },
    }
}

/// The full key path and the message for one error found in the table at `key`.
pub fn describe(key: &str, e: &Error) -> (String, String) {
    let mut path: Vec<&str> = Vec::new();
    if !key.is_empty() {
        path.push(key);
    }
    path.extend(e.path.iter().map(String::as_str));
    let message = match &e.kind {
        Kind::UnknownField(field, known) => {
            if path.last() != Some(&field.as_str()) {
                path.push(field);
            }
            format!(
                "unknown key{}; known keys: {}",
                suggest(field, known),
                list(known)
            )
        }
        Kind::UnknownVariant(value, known) => format!(
            "unknown value{}; expected one of {}",
            suggest(value, known),
            known
                .iter()
                .map(|k| format!("{k:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Kind::MissingField(field) => {
            if path.last() != Some(&field.as_ref()) {
                path.push(field);
            }
            "missing".into()
        }
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {actual}", friendly(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("expected {}, found {actual}", friendly(expected))
        }
        other => other.to_string().replace("``", "`"),
    };
    (path.join("."), message)
}

/// Rust type names as a person says them.
fn friendly(expected: &str) -> String {
    match expected.trim_start_matches("a ").trim_start_matches("an ") {
        "usize" | "u8" | "u16" | "u32" | "u64" | "u128" => "a whole number (0 or more)".into(),
        "isize" | "i8" | "i16" | "i32" | "i64" | "i128" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "string" | "str" => "a string (in quotes)".into(),
        "sequence" => "a list, such as [\"a\", \"b\"]".into(),
        "map" => "a table".into(),
        "boolean" | "bool" => "true or false".into(),
        _ => expected.to_owned(),
    }
}

fn list(known: &[&str]) -> String {
    known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `; did you mean `x`?` for the closest of `known` to `given`, when it is close.
pub fn suggest(given: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (distance(given, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= (given.chars().count() / 3).max(2) => {
            format!(" `{given}` (did you mean `{k}`?)")
        }
        _ => format!(" `{given}`"),
    }
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Error, as the reader returns it"
)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code, reason = "read only to find problems")]
    struct Table {
        topics: Vec<String>,
        when_full: Option<WhenFull>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum WhenFull {
        Block,
        DropOldest,
    }

    #[test]
    fn a_bad_list_element_does_not_hide_the_next_problem() {
        let table: Value = figment::Figment::from(figment::providers::Serialized::defaults(
            serde_json::json!({"topics": ["a", 5], "when_full": "dorp"}),
        ))
        .extract()
        .unwrap();
        let mut found = Vec::new();
        collect("t", table, |v| v.deserialize::<Table>(), &mut |k, m| {
            found.push(format!("{k}: {m}"));
        });
        assert!(found.iter().any(|f| f.starts_with("t.topics")), "{found:?}");
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("t.when_full: unknown value `dorp`")),
            "{found:?}"
        );
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code, reason = "read only to find problems")]
    struct Required {
        kind: String,
        topics: Vec<String>,
    }

    #[test]
    fn a_required_key_with_a_wrong_type_does_not_hide_another_missing_one() {
        let table: Value = figment::Figment::from(figment::providers::Serialized::defaults(
            serde_json::json!({"kind": 3}),
        ))
        .extract()
        .unwrap();
        let mut found = Vec::new();
        collect("c", table, |v| v.deserialize::<Required>(), &mut |k, m| {
            found.push(format!("{k}: {m}"));
        });
        assert!(
            found.iter().any(|f| f.starts_with("c.kind: expected")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f == "c.topics: missing"), "{found:?}");
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn typos_get_the_closest_known_key() {
        let known = &["concurrency", "queue_capacity", "timeout"];
        assert_eq!(
            suggest("concurency", known),
            " `concurency` (did you mean `concurrency`?)"
        );
        assert_eq!(suggest("xyz", known), " `xyz`");
        assert_eq!(distance("pth", "path"), 1);
        assert_eq!(friendly("usize"), "a whole number (0 or more)");
    }
}
