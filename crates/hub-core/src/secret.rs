//! Values that may be secrets: given inline, from an environment variable, or from a file.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// Where a secret value (a header value, a signing secret, a token, a password) comes from:
/// `"text"`, `{ env = "VAR" }` or `{ file = "/path" }`. Read once, when the part holding it is
/// built (so `hub check` reports a missing variable or an unreadable file); a file's trailing
/// newline is trimmed. Its `Debug` never shows an inline value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The value itself, written in the configuration.
    Value(String),
    /// The value of this environment variable.
    Env(String),
    /// The contents of this file, trailing newline trimmed.
    File(PathBuf),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(_) => f.write_str("\"<redacted>\""),
            Self::Env(var) => write!(f, "{{ env = {var:?} }}"),
            Self::File(path) => write!(f, "{{ file = {path:?} }}"),
        }
    }
}

impl SecretSource {
    /// Reads the value. The error says what is missing (never the value), without the key:
    /// the caller names it.
    ///
    /// # Errors
    /// An unset (or non-UTF-8) environment variable, or an unreadable file.
    pub fn resolve(&self) -> Result<Secret, String> {
        match self {
            Self::Value(v) => Ok(Secret(v.clone())),
            Self::Env(var) => match std::env::var(var) {
                Ok(v) => Ok(Secret(v)),
                Err(std::env::VarError::NotPresent) => {
                    Err(format!("environment variable {var} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {var} is not valid UTF-8"))
                }
            },
            Self::File(path) => match std::fs::read_to_string(path) {
                Ok(mut v) => {
                    let kept = v.trim_end_matches(['\n', '\r']).len();
                    v.truncate(kept);
                    Ok(Secret(v))
                }
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            },
        }
    }
}

/// A secret read from its [`SecretSource`]. `Debug` shows `<redacted>`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value: keep it out of logs and error messages.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

const EXPECTED: &str = "a string, { env = \"VAR\" } or { file = \"/path\" }";

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SourceVisitor)
    }
}

struct SourceVisitor;

impl<'de> Visitor<'de> for SourceVisitor {
    type Value = SecretSource;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
        Ok(SecretSource::Value(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SecretSource, E> {
        Ok(SecretSource::Value(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format!(
                "empty table: expected {EXPECTED}"
            )));
        };
        let source = match key.as_str() {
            "env" => SecretSource::Env(map.next_value::<String>()?),
            "file" => SecretSource::File(map.next_value::<PathBuf>()?),
            other => {
                return Err(de::Error::custom(format!(
                    "unknown key `{other}`: expected {EXPECTED}"
                )));
            }
        };
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(format!(
                "give one of `env` or `file`: expected {EXPECTED}"
            )));
        }
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_an_inline_value() {
        let s = SecretSource::Value("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let r = s.resolve().map(|r| format!("{r:?}")).unwrap_or_default();
        assert_eq!(r, "<redacted>");
    }

    #[test]
    fn reads_the_three_shapes() {
        let v: Result<SecretSource, _> = serde_json::from_str(r#""abc""#);
        assert_eq!(v.ok(), Some(SecretSource::Value("abc".into())));
        let v: Result<SecretSource, _> = serde_json::from_str(r#"{"env": "X"}"#);
        assert_eq!(v.ok(), Some(SecretSource::Env("X".into())));
        let v: Result<SecretSource, _> = serde_json::from_str(r#"{"file": "/x"}"#);
        assert_eq!(v.ok(), Some(SecretSource::File("/x".into())));
        let e = serde_json::from_str::<SecretSource>(r#"{"vault": "x"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unknown key `vault`"), "{e}");
        let e = serde_json::from_str::<SecretSource>("3")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("{ env = \\\"VAR\\\" }") || e.contains("env"),
            "{e}"
        );
    }
}
