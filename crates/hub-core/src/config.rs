//! The TOML-facing half of consumers, producers and backends: a settings type that builds the
//! runtime half. The `hub` crate's builder registers these by type.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{Backend, BoxError, Consumer, Producer, Resources};

/// Settings of a consumer type, read from `[consumers.<id>.settings]`; builds the consumer.
///
/// Use `#[serde(deny_unknown_fields)]` on the settings struct so typos are errors.
pub trait ConsumerConfig: DeserializeOwned + Send + 'static {
    /// The `type = "..."` that selects this consumer (snake_case).
    const TYPE: &'static str;
    /// One line for `hub consumers`.
    const DESCRIPTION: &'static str = "";

    /// Builds the consumer. Connect to nothing here: do that in [`Consumer::start`]. `hub check`
    /// builds every part to validate it, so `build` may run more than once per process: keep it
    /// free of side effects. Refuse settings that cannot work here (an error names the value).
    ///
    /// # Errors
    /// A settings value the type cannot work with.
    fn build(self, resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError>;
}

/// Settings of a producer type, read from `[producers.<id>.settings]`; builds the producer.
pub trait ProducerConfig: DeserializeOwned + Send + 'static {
    /// The `type = "..."` that selects this producer.
    const TYPE: &'static str;
    /// One line for `hub consumers`.
    const DESCRIPTION: &'static str = "";

    /// Builds the producer.
    ///
    /// # Errors
    /// A settings value the type cannot work with.
    fn build(self, resources: &Resources) -> Result<Arc<dyn Producer>, BoxError>;
}

/// Settings of a backend type, read from the keys of `[backends.<id>]` other than `type`.
pub trait BackendConfig: DeserializeOwned + Send + 'static {
    /// The `type = "..."` that selects this backend.
    const TYPE: &'static str;
    /// Whether it honours the consumer keys `durable` and `queue` (broker queues).
    const DURABLE_QUEUES: bool = false;
    /// One line for `hub consumers`.
    const DESCRIPTION: &'static str = "";

    /// Builds the backend without connecting (connecting happens in [`Backend::run`]).
    ///
    /// # Errors
    /// A settings value the type cannot work with.
    fn build(self, id: &str) -> Result<Arc<dyn Backend>, BoxError>;
}

/// Settings of a shared resource type (a database pool, an HTTP client), read from the keys of
/// `[resources.<id>]` other than `type`; builds the value that consumers and producers then
/// find by id: `resources.named::<T>("<id>")` in their `build`.
///
/// ```toml
/// [resources.main]
/// type = "postgres_pool"
/// url = "host=127.0.0.1 user=postgres dbname=test"
///
/// [consumers.count.settings]
/// pool = "main"          # the consumer's own setting naming the resource
/// ```
pub trait ResourceConfig: DeserializeOwned + Send + 'static {
    /// The `type = "..."` that selects this resource type.
    const TYPE: &'static str;
    /// One line for `hub consumers`.
    const DESCRIPTION: &'static str = "";
    /// What it builds (shared behind an `Arc`).
    type Resource: std::any::Any + Send + Sync;

    /// Builds the resource without connecting (a pool that connects on first use): `hub check`
    /// builds it too. A run builds it once, before any consumer or producer is built.
    ///
    /// # Errors
    /// A settings value the type cannot work with.
    fn build(self, id: &str) -> Result<Self::Resource, BoxError>;
}

/// Serde helpers for human durations (`"50ms"`, `"30s"`, `"1m 30s"`) in settings structs:
/// `#[serde(with = "hub_core::duration")]`, or `hub_core::duration::option` for `Option<Duration>`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `"50ms"`, `"30s"`, `"1m 30s"`, `"2h"` (also ISO 8601 `PT30S`).
    ///
    /// # Errors
    /// A message saying what was expected.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let signed: jiff::SignedDuration = text
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected a duration like \"50ms\", \"30s\" or \"1m 30s\""))?;
        Duration::try_from(signed)
            .map_err(|_| format!("invalid duration {text:?}: must not be negative"))
    }

    /// Deserializes a human duration.
    ///
    /// # Errors
    /// A non-string or unparsable value.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Human::deserialize(d).map(|h| h.0)
    }

    /// A duration written for people; anything but a string is refused as "expected a
    /// duration such as "30s"" (not "expected a string").
    struct Human(Duration);

    impl<'de> Deserialize<'de> for Human {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(HumanVisitor)
        }
    }

    struct HumanVisitor;

    impl serde::de::Visitor<'_> for HumanVisitor {
        type Value = Human;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"30s\" (in quotes)")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Human, E> {
            parse(v).map(Human).map_err(E::custom)
        }
    }

    /// Serializes as `"1.5s"`-style text.
    ///
    /// # Errors
    /// Only the serializer's own.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// The same for `Option<Duration>` (use with `#[serde(default)]`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Deserializes an optional human duration.
        ///
        /// # Errors
        /// A non-string or unparsable value.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<super::Human>::deserialize(d).map(|h| h.map(|h| h.0))
        }

        /// Serializes an optional duration.
        ///
        /// # Errors
        /// Only the serializer's own.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}
