//! Loading `hub.toml`: the file, then `HUB_` environment overrides; validation that reports every
//! problem at once, each naming its file (or variable), key path and what was expected.
#![allow(
    clippy::result_large_err,
    reason = "figment::Error is large; config loading runs once"
)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Source};
use hub_core::{ConsumerOptions, Pattern, WhenFull};
use serde::Deserialize;

mod failures;

use failures::{BackendFailures, RawDeadLetter, RawRateLimit, RawRetry};
use hub_engine::dead_letter::DeadLetterTarget;

use crate::registry::{BuildBackend, BuildConsumer, BuildProducer, BuildResource, Registry, known};
use hub_engine::settings as collect;

/// The embedded default configuration (`config/hub.toml`), used when `--config` is not given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/hub.toml");

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A TOML file; it must exist.
    File(PathBuf),
    /// The embedded default.
    Embedded,
    /// TOML text (tests, programs that generate their configuration).
    Text(String),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Embedded => f.write_str("embedded default config/hub.toml"),
            Self::Text(_) => f.write_str("inline configuration"),
        }
    }
}

/// `[hub]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// The hub's name: log field, durable queue prefix. Default `"hub"`.
    #[serde(default = "default_name")]
    pub name: String,
    /// How long shutdown waits for queued and in-flight messages. Default `"10s"`.
    #[serde(default = "default_grace", with = "hub_core::duration")]
    pub shutdown_grace: Duration,
    /// The most bytes of messages queued over every consumer (each copy counted). Once
    /// reached, a consumer's queue that is not empty counts as full and its `when_full`
    /// applies. Default 1 GiB.
    #[serde(default = "default_max_queued_bytes")]
    pub max_queued_bytes: usize,
}

fn default_max_queued_bytes() -> usize {
    hub_engine::DEFAULT_MAX_QUEUED_BYTES
}

/// `[http]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address for `/metrics`, `/live`, `/ready`. Default `127.0.0.1:9898` (loopback).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Connections served at once; further ones wait to be accepted. Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The largest request body (`POST /dead-letters/requeue`); larger ones get 413. Default
    /// 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// A connection on which nothing was read or written for this long is closed, so idle
    /// connections cannot hold every `max_connections` place. Default 60 s.
    #[serde(default = "default_idle_timeout", with = "hub_core::duration")]
    pub idle_timeout: Duration,
    /// The token the JSON API's writes (pause, resume) need, in an `Authorization: Bearer`
    /// header: a string, `{ env = "VAR" }` or `{ file = "/path" }`; never logged. Unset (the
    /// default): the API and the page are read-only.
    #[serde(default)]
    pub admin_token: Option<hub_http::SecretSource>,
    /// Messages kept per consumer for the live tail (`GET /api/v1/consumers/{id}/tail`, the
    /// page's tail). Default 0: off (bodies can be private).
    #[serde(default)]
    pub live_tail: usize,
    /// Bytes of each body the live tail shows (longer ones are cut, marked `truncated`).
    /// Default 512.
    #[serde(default = "default_live_tail_bytes")]
    pub live_tail_bytes: usize,
    /// Host names the server answers to besides IP literals and `localhost` (`"*"`: any), a guard against DNS
    /// rebinding. Unset: `localhost` when listening on loopback, any name otherwise.
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_live_tail_bytes() -> usize {
    512
}

fn default_max_connections() -> usize {
    256
}
fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_name() -> String {
    "hub".into()
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9898))
}

impl Default for HubSection {
    fn default() -> Self {
        Self {
            name: default_name(),
            shutdown_grace: default_grace(),
            max_queued_bytes: default_max_queued_bytes(),
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_connections: default_max_connections(),
            max_body_bytes: default_max_body_bytes(),
            admin_token: None,
            idle_timeout: default_idle_timeout(),
            live_tail: 0,
            live_tail_bytes: default_live_tail_bytes(),
            allowed_hosts: None,
        }
    }
}

/// `[consumers.<id>]` without its settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    #[serde(rename = "type")]
    kind: String,
    topics: Vec<String>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    queue_capacity: Option<usize>,
    #[serde(default)]
    queue_max_bytes: Option<usize>,
    #[serde(default)]
    when_full: Option<WhenFull>,
    #[serde(default, with = "hub_core::duration::option")]
    timeout: Option<Duration>,
    #[serde(default)]
    durable: Option<bool>,
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default, with = "hub_core::duration::option")]
    batch_delay: Option<Duration>,
    #[serde(default)]
    dead_letter: Option<RawDeadLetter>,
    #[serde(default)]
    queue_type: Option<hub_core::QueueType>,
    #[serde(default)]
    delivery_limit: Option<u32>,
    #[serde(default)]
    single_active_consumer: Option<bool>,
    #[serde(default)]
    offset: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "read separately, with its own key path")]
    settings: Option<serde::de::IgnoredAny>,
}

/// `[producers.<id>]` without its settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProducer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "read separately, with its own key path")]
    settings: Option<serde::de::IgnoredAny>,
}

/// A backend, validated.
pub struct BackendEntry {
    /// `[backends.<id>]`
    pub id: String,
    /// Its `type`.
    pub kind: String,
    pub(crate) build: BuildBackend,
}

/// A shared resource, validated.
pub struct ResourceEntry {
    /// `[resources.<id>]`
    pub id: String,
    /// Its `type`.
    pub kind: String,
    pub(crate) build: BuildResource,
}

/// A consumer, validated.
pub struct ConsumerEntry {
    /// `[consumers.<id>]`
    pub id: String,
    /// Its `type`.
    pub kind: String,
    /// The backend id that feeds it.
    pub backend: String,
    /// Its topic patterns.
    pub topics: Vec<Pattern>,
    /// Dispatch options.
    pub options: ConsumerOptions,
    /// Where the hub writes its dead letters (its own `dead_letter`, else its backend's).
    pub dead_letter: Option<DeadLetterTarget>,
    pub(crate) build: BuildConsumer,
}

/// A producer, validated.
pub struct ProducerEntry {
    /// `[producers.<id>]`
    pub id: String,
    /// Its `type`.
    pub kind: String,
    /// The backend id it publishes on.
    pub backend: String,
    pub(crate) build: BuildProducer,
}

/// A whole validated configuration.
pub struct Config {
    /// Where it came from.
    pub source: ConfigSource,
    /// `[hub]`
    pub hub: HubSection,
    /// `[http]`
    pub http: HttpSection,
    /// `[resources.*]`, by id.
    pub resources: Vec<ResourceEntry>,
    /// `[resources.*]` ids declared but not readable (reported): consumers naming them are
    /// told so, not that they do not exist.
    pub(crate) broken_resources: Vec<String>,
    /// `[backends.*]`, by id.
    pub backends: Vec<BackendEntry>,
    /// `[producers.*]`, by id.
    pub producers: Vec<ProducerEntry>,
    /// `[consumers.*]`, by id (with the gateway's taps, `gateway-<backend>`, when `[gateway]`
    /// is set).
    pub consumers: Vec<ConsumerEntry>,
    /// `[gateway]`: the WebSocket/SSE gateway, when set.
    pub gateway: Option<std::sync::Arc<hub_gateway::Gateway>>,
}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file or environment variable the key came from.
    pub source: String,
    /// Dotted key path, such as `consumers.slow.settings.delay`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: key `{}`: {}", self.source, self.key, self.message)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.0 {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

const SECTIONS: &[&str] = &[
    "hub",
    "http",
    "gateway",
    "resources",
    "backends",
    "producers",
    "consumers",
];

struct Loader<'a> {
    figment: Figment,
    fallback_source: String,
    issues: Vec<ConfigIssue>,
    registry: &'a Registry,
    /// Each backend's `retry` and `dead_letter`, defaults for its consumers.
    backend_failures: BTreeMap<String, BackendFailures>,
}

impl Loader<'_> {
    fn source_of(&self, key: &str) -> String {
        let mut k = key;
        loop {
            if let Some(meta) = self.figment.find_metadata(k) {
                return match &meta.source {
                    Some(Source::File(p)) => p.display().to_string(),
                    _ if meta.name.contains("environment") => {
                        format!(
                            "environment variable HUB_{}",
                            key.replace('.', "__").to_uppercase()
                        )
                    }
                    _ => self.fallback_source.clone(),
                };
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => return self.fallback_source.clone(),
            }
        }
    }

    fn issue(&mut self, key: &str, message: impl Into<String>) {
        let source = self.source_of(key);
        self.issues.push(ConfigIssue {
            source,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn figment_issues(&mut self, prefix: &str, err: figment::Error) {
        for e in err {
            let (key, message) = collect::describe(prefix, &e);
            self.issue(&key, message);
        }
    }

    /// Reads the table at `key` with `parse`, reporting every problem in it (not only the
    /// first): see [`collect`].
    fn read<B>(
        &mut self,
        key: &str,
        value: Value,
        parse: impl Fn(Value) -> Result<B, figment::Error>,
    ) -> Option<B> {
        let mut found = Vec::new();
        let read = collect::collect(key, value, parse, &mut |k, m| found.push((k, m)));
        for (k, mut m) in found {
            if m == "missing" && self.source_of(&k).starts_with("environment variable") {
                // `HUB_CONSUMERS__MyId__X` reaches `consumers.myid`: a new table, with no type.
                m.push_str(
                    " (this table comes only from environment variables, whose names are \
                     lower-cased: an id with upper-case letters cannot be overridden from the \
                     environment; use lower-case ids)",
                );
            }
            self.issue(&k, m);
        }
        read
    }

    fn value(&mut self, key: &str) -> Option<Value> {
        self.figment.find_value(key).ok()
    }

    fn section<T: for<'de> Deserialize<'de> + Default>(&mut self, key: &str) -> T {
        match self.value(key) {
            None => T::default(),
            Some(v) => self
                .read(key, v, |v| v.deserialize::<T>())
                .unwrap_or_default(),
        }
    }

    fn table(&mut self, key: &str) -> Vec<(String, Value)> {
        match self.value(key) {
            None => Vec::new(),
            Some(Value::Dict(_, dict)) => {
                let mut out = Vec::new();
                for (id, v) in dict {
                    let valid = !id.is_empty()
                        && id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if valid {
                        out.push((id, v));
                    } else {
                        self.issue(
                            &format!("{key}.{id}"),
                            "ids may use only letters, digits, `_` and `-`",
                        );
                    }
                }
                out
            }
            Some(_) => {
                self.issue(key, format!("expected a table of [{key}.<id>] sections"));
                Vec::new()
            }
        }
    }

    fn settings(&mut self, key: &str) -> Value {
        self.value(key).unwrap_or_else(|| Value::from(Dict::new()))
    }
}

/// The configured backends' ids, without the gateway's own.
fn user_backends(kinds: &BTreeMap<String, String>) -> impl Iterator<Item = &str> {
    kinds
        .iter()
        .filter(|(_, kind)| kind.as_str() != GATEWAY_KIND)
        .map(|(id, _)| id.as_str())
}

/// The `type` the gateway's own backend shows (status page, `hub check`).
const GATEWAY_KIND: &str = "gateway";

impl Loader<'_> {
    /// `[gateway]`: read and checked; its backend (`gateway`) added to `backends` and `kinds`.
    fn gateway(
        &mut self,
        backends: &mut Vec<BackendEntry>,
        kinds: &mut BTreeMap<String, String>,
    ) -> Option<std::sync::Arc<hub_gateway::Gateway>> {
        use hub_gateway::{BACKEND_ID, Gateway, GatewayConfig};
        let value = self.value("gateway")?;
        let cfg = self.read("gateway", value, |v| v.deserialize::<GatewayConfig>())?;
        if kinds.contains_key(BACKEND_ID) {
            self.issue(
                "backends.gateway",
                "`gateway` is the id of the gateway's own backend when [gateway] is set: rename this backend",
            );
            return None;
        }
        let mut ok = true;
        for id in cfg.attach.iter().flatten() {
            if id != BACKEND_ID && !kinds.contains_key(id) {
                let ids = kinds.keys().cloned().collect::<Vec<_>>().join(", ");
                self.issue(
                    "gateway.attach",
                    format!("unknown backend {id:?}; configured backends: {ids} (and `gateway`, the gateway's own)"),
                );
                ok = false;
            }
        }
        if let Some(id) = &cfg.forward_to
            && !kinds.contains_key(id)
        {
            let ids = kinds.keys().cloned().collect::<Vec<_>>().join(", ");
            self.issue(
                "gateway.forward_to",
                format!("unknown backend {id:?}; configured backends: {ids}"),
            );
            ok = false;
        }
        let gw = match Gateway::new(cfg) {
            Ok(gw) => gw,
            Err(issues) => {
                for (key, message) in issues {
                    self.issue(&format!("gateway.{key}"), message);
                }
                return None;
            }
        };
        if !ok {
            return None;
        }
        let backend = gw.clone();
        backends.push(BackendEntry {
            id: BACKEND_ID.into(),
            kind: GATEWAY_KIND.into(),
            build: Box::new(move |_| Ok(backend.backend())),
        });
        kinds.insert(BACKEND_ID.into(), GATEWAY_KIND.into());
        Some(gw)
    }

    /// One tap per attached backend (`attach`, by default every backend): a consumer
    /// `gateway-<backend>` bound to every topic some client may receive, on a `drop_oldest`
    /// queue, that hands each message to the gateway's clients.
    fn gateway_taps(
        &mut self,
        gw: &std::sync::Arc<hub_gateway::Gateway>,
        kinds: &BTreeMap<String, String>,
        consumers: &mut Vec<ConsumerEntry>,
    ) {
        let attached: Vec<String> = match &gw.config().attach {
            Some(ids) => ids.clone(),
            None => kinds.keys().cloned().collect(),
        };
        for backend in attached {
            let id = format!("gateway-{backend}");
            if consumers.iter().any(|c| c.id == id) {
                self.issue(
                    &format!("consumers.{id}"),
                    "this id is the gateway's tap on that backend: rename the consumer",
                );
                continue;
            }
            let tap = gw.clone();
            consumers.push(ConsumerEntry {
                id,
                kind: "gateway-tap".into(),
                backend,
                topics: gw.tap_patterns(),
                options: ConsumerOptions {
                    queue_capacity: 65_536,
                    when_full: WhenFull::DropOldest,
                    ..ConsumerOptions::default()
                },
                dead_letter: None,
                build: Box::new(move |_| Ok(tap.tap())),
            });
        }
    }
}

/// The registered type names of one kind.
fn names<B>(map: &BTreeMap<&'static str, crate::registry::Kind<B>>) -> Vec<&'static str> {
    map.keys().copied().collect()
}

/// The file (which must exist), the embedded default or the text, then (with `env`) the
/// `HUB_..__..` overrides.
fn open(source: &ConfigSource, env: bool) -> Result<Figment, ConfigErrors> {
    let base = match source {
        ConfigSource::File(path) => {
            if !Path::new(path).is_file() {
                return Err(ConfigErrors(vec![ConfigIssue {
                    source: source.to_string(),
                    key: String::new(),
                    message: "configuration file not found (a missing file is an error, never silent defaults)".into(),
                }]));
            }
            Figment::from(Toml::file_exact(path))
        }
        ConfigSource::Embedded => Figment::from(Toml::string(EMBEDDED_DEFAULT)),
        ConfigSource::Text(text) => Figment::from(Toml::string(text)),
    };
    if !env {
        return Ok(base);
    }
    // Only variables with a `__` are overrides (`HUB_HTTP__LISTEN`); others, like `HUB_CONFIG`,
    // belong to the CLI or to tests.
    Ok(base.merge(
        Env::prefixed("HUB_")
            .filter(|k| k.as_str().contains("__"))
            .split("__"),
    ))
}

/// The sections with one entry per id: backends, producers, consumers. `kinds` maps each
/// configured backend id to its type.
impl Loader<'_> {
    /// The backends that read, and the type of every backend declared with a known one (so
    /// that a consumer naming a backend whose other keys are wrong is not also told it names
    /// no backend).
    fn backends(&mut self) -> (Vec<BackendEntry>, BTreeMap<String, String>) {
        let mut backends = Vec::new();
        let mut kinds = BTreeMap::new();
        for (id, value) in self.table("backends") {
            let key = format!("backends.{id}");
            let Some((tag, dict, kind)) =
                self.typed(&key, value, "backend", &known(&self.registry.backends))
            else {
                continue;
            };
            let registry = self.registry;
            let Some(k) = registry.backends.get(kind.as_str()) else {
                let known = known(&registry.backends);
                self.issue(
                    &format!("{key}.type"),
                    format!(
                        "unknown backend type{}; known: {known}",
                        collect::suggest(&kind, &names(&registry.backends))
                    ),
                );
                continue;
            };
            kinds.insert(id.clone(), kind.clone());
            let mut dict = dict;
            let defaults = self.backend_failure_keys(&key, &mut dict, k.durable_queues);
            self.backend_failures.insert(id.clone(), defaults);
            if let Some(build) = self.read(&key, Value::Dict(tag, dict), |v| (k.parse)(v)) {
                backends.push(BackendEntry { id, kind, build });
            }
        }
        if backends.is_empty() && self.issues.is_empty() {
            let known = known(&self.registry.backends);
            self.issue(
                "backends",
                format!("no backend configured; add [backends.<id>] with type = one of {known}"),
            );
        }
        (backends, kinds)
    }

    /// `[resources.<id>]`: `type`, then that type's keys. Also the ids that do not read.
    fn resources(&mut self) -> (Vec<ResourceEntry>, Vec<String>) {
        let mut out = Vec::new();
        let mut broken = Vec::new();
        for (id, value) in self.table("resources") {
            let key = format!("resources.{id}");
            let Some((tag, dict, kind)) =
                self.typed(&key, value, "resource", &known(&self.registry.resources))
            else {
                broken.push(id);
                continue;
            };
            let registry = self.registry;
            let Some(k) = registry.resources.get(kind.as_str()) else {
                let known = known(&registry.resources);
                self.issue(
                    &format!("{key}.type"),
                    format!(
                        "unknown resource type{}; known: {known}",
                        collect::suggest(&kind, &names(&registry.resources))
                    ),
                );
                broken.push(id);
                continue;
            };
            match self.read(&key, Value::Dict(tag, dict), |v| (k.parse)(v)) {
                Some(build) => out.push(ResourceEntry { id, kind, build }),
                None => broken.push(id),
            }
        }
        (out, broken)
    }

    /// A `[<section>.<id>]` table's `type` taken out of it, with the rest.
    fn typed(
        &mut self,
        key: &str,
        value: Value,
        what: &str,
        known: &str,
    ) -> Option<(figment::value::Tag, Dict, String)> {
        let Value::Dict(tag, mut dict) = value else {
            self.issue(key, "expected a table with `type = \"...\"`");
            return None;
        };
        match dict.remove("type") {
            Some(Value::String(_, s)) => Some((tag, dict, s)),
            Some(_) => {
                self.issue(&format!("{key}.type"), "expected a string");
                None
            }
            None => {
                self.issue(
                    &format!("{key}.type"),
                    format!("missing; known {what} types: {known}"),
                );
                None
            }
        }
    }

    /// The backend `key` names (`backend = ...`), or the only one configured.
    fn resolve(
        &mut self,
        kinds: &BTreeMap<String, String>,
        key: &str,
        backend: Option<String>,
    ) -> Option<String> {
        match backend {
            Some(b) if kinds.contains_key(&b) => Some(b),
            Some(b) => {
                let ids = kinds.keys().cloned().collect::<Vec<_>>().join(", ");
                self.issue(
                    &format!("{key}.backend"),
                    format!("unknown backend {b:?}; configured backends: {ids}"),
                );
                None
            }
            // The gateway's own backend is never the default: a hub with one backend and a
            // gateway still has one backend its consumers default to.
            None if user_backends(kinds).count() == 1 => {
                user_backends(kinds).next().map(str::to_owned)
            }
            None => {
                if user_backends(kinds).next().is_some() {
                    self.issue(
                        &format!("{key}.backend"),
                        "required when more than one backend is configured",
                    );
                }
                None
            }
        }
    }

    fn producers(&mut self, kinds: &BTreeMap<String, String>) -> Vec<ProducerEntry> {
        let mut producers = Vec::new();
        for (id, value) in self.table("producers") {
            let key = format!("producers.{id}");
            let Some(raw) = self.read(&key, value, |v| v.deserialize::<RawProducer>()) else {
                continue;
            };
            let backend = self.resolve(kinds, &key, raw.backend);
            let registry = self.registry;
            let Some(k) = registry.producers.get(raw.kind.as_str()) else {
                let known = known(&registry.producers);
                self.issue(
                    &format!("{key}.type"),
                    format!(
                        "unknown producer type{}; known: {known}",
                        collect::suggest(&raw.kind, &names(&registry.producers))
                    ),
                );
                continue;
            };
            let settings_key = format!("{key}.settings");
            let settings = self.settings(&settings_key);
            // Kept even when its backend is wrong (reported above): `check` still builds it,
            // so a problem only `build` sees is reported in the same round.
            if let Some(build) = self.read(&settings_key, settings, |v| (k.parse)(v)) {
                producers.push(ProducerEntry {
                    id,
                    kind: raw.kind,
                    backend: backend.unwrap_or_default(),
                    build,
                });
            }
        }
        producers
    }

    fn consumers(&mut self, kinds: &BTreeMap<String, String>) -> Vec<ConsumerEntry> {
        let mut consumers = Vec::new();
        for (id, value) in self.table("consumers") {
            let key = format!("consumers.{id}");
            if let Some(raw) = self.read(&key, value, |v| v.deserialize::<RawConsumer>()) {
                consumers.extend(self.consumer(kinds, id, &key, raw));
            }
        }
        consumers
    }

    fn consumer(
        &mut self,
        kinds: &BTreeMap<String, String>,
        id: String,
        key: &str,
        raw: RawConsumer,
    ) -> Option<ConsumerEntry> {
        let backend = self.resolve(kinds, key, raw.backend.clone());
        let mut topics = Vec::new();
        if raw.topics.is_empty() {
            self.issue(
                &format!("{key}.topics"),
                "must list at least one topic pattern (\"#\" for every topic)",
            );
        }
        for (i, t) in raw.topics.iter().enumerate() {
            match Pattern::new(t) {
                Ok(p) => topics.push(p),
                Err(e) => self.issue(&format!("{key}.topics[{i}]"), e.to_string()),
            }
        }
        let options = self.consumer_options(kinds, key, &raw, backend.as_deref());
        let dead_letter = self.dead_letter(kinds, key, &raw, backend.as_deref());
        if let Some(DeadLetterTarget::Topic {
            topic,
            backend: sink_backend,
        }) = &dead_letter
            && (sink_backend.is_none() || sink_backend.as_deref() == backend.as_deref())
            && let Some(p) = topics.iter().find(|p| p.matches(topic))
        {
            // Its own dead letters would come back to it, each wrapping the last.
            self.issue(
                &format!("{key}.dead_letter.topic"),
                format!(
                    "{topic:?} matches this consumer's own pattern {:?} on the same backend: its dead letters would come back to it",
                    p.as_str()
                ),
            );
        }
        let registry = self.registry;
        let Some(k) = registry.consumers.get(raw.kind.as_str()) else {
            let known = known(&registry.consumers);
            self.issue(
                &format!("{key}.type"),
                format!(
                    "unknown consumer type{}; known: {known}",
                    collect::suggest(&raw.kind, &names(&registry.consumers))
                ),
            );
            return None;
        };
        let settings_key = format!("{key}.settings");
        let settings = self.settings(&settings_key);
        // Kept even when its backend or a topic is wrong (reported above): `check` still builds
        // it, so a problem only `build` sees is reported in the same round.
        let build = self.read(&settings_key, settings, |v| (k.parse)(v))?;
        Some(ConsumerEntry {
            id,
            kind: raw.kind,
            backend: backend.unwrap_or_default(),
            topics,
            options,
            dead_letter,
            build,
        })
    }

    /// Takes a backend's `retry` and `dead_letter` out of its table (they are the hub's, not
    /// the backend type's) and checks them.
    fn backend_failure_keys(
        &mut self,
        key: &str,
        dict: &mut Dict,
        broker_queues: bool,
    ) -> BackendFailures {
        let mut out = BackendFailures::default();
        if let Some(v) = dict.remove("retry") {
            let k = format!("{key}.retry");
            out.retry = self.read(&k, v, |v| v.deserialize::<RawRetry>());
            if let Some(Err(problems)) = failures::retry_policy(out.retry.as_ref(), None) {
                for (field, m) in problems {
                    self.issue(&format!("{k}.{field}"), m);
                }
            }
        }
        if let Some(v) = dict.remove("dead_letter") {
            let k = format!("{key}.dead_letter");
            if broker_queues {
                self.issue(&k, "this backend keeps its own dead letters (its dead-letter queue; see `dead_letter_exchange`)");
            } else if let Some(raw) = self.read(&k, v, |v| v.deserialize::<RawDeadLetter>()) {
                if let Err((field, m)) = raw.target() {
                    self.issue(&join_key(&k, field), m);
                }
                out.dead_letter = Some(raw);
            }
        }
        if broker_queues {
            // AMQP's own keys (`max_attempts`, `retry_delay`, `retry_delay_max`, left for the
            // backend to read) are the base its `retry` table and its consumers' `retry` keys
            // are merged over, key by key. Bad values are the backend's to report.
            let legacy = RawRetry::from_parts(
                dict.get("max_attempts")
                    .and_then(|v| v.deserialize::<u32>().ok()),
                dict.get("retry_delay")
                    .and_then(|v| v.as_str())
                    .and_then(|t| hub_core::duration::parse(t).ok()),
                dict.get("retry_delay_max")
                    .and_then(|v| v.as_str())
                    .and_then(|t| hub_core::duration::parse(t).ok()),
            );
            out.retry = Some(match out.retry.take() {
                Some(own) => own.over(&legacy),
                None => legacy,
            });
        }
        out
    }

    /// A consumer's dead-letter sink: its own `dead_letter`, else its backend's.
    fn dead_letter(
        &mut self,
        kinds: &BTreeMap<String, String>,
        key: &str,
        raw: &RawConsumer,
        backend: Option<&str>,
    ) -> Option<DeadLetterTarget> {
        let k = format!("{key}.dead_letter");
        let broker = backend.is_some_and(|b| self.broker_queues(kinds, b));
        if let Some(own) = &raw.dead_letter {
            if broker {
                self.issue(&k, format!("backend {:?} keeps its own dead letters (its dead-letter queue; see `dead_letter_exchange`)", backend.unwrap_or_default()));
                return None;
            }
            if let Some(b) = own.backend().filter(|b| !kinds.contains_key(*b)) {
                let ids = kinds.keys().cloned().collect::<Vec<_>>().join(", ");
                self.issue(
                    &format!("{k}.backend"),
                    format!("unknown backend {b:?}; configured backends: {ids}"),
                );
            }
            return match own.target() {
                Ok(t) => Some(t),
                Err((field, m)) => {
                    self.issue(&join_key(&k, field), m);
                    None
                }
            };
        }
        let inherited = self.backend_failures.get(backend?)?.dead_letter.as_ref()?;
        inherited.target().ok()
    }

    /// Whether backend `id` has broker queues (and so its own retries and dead letters).
    fn broker_queues(&self, kinds: &BTreeMap<String, String>, id: &str) -> bool {
        let kind = kinds.get(id).map_or("", String::as_str);
        self.registry
            .backends
            .get(kind)
            .is_some_and(|k| k.durable_queues)
    }

    /// `queue_type`, `delivery_limit`, `single_active_consumer` and `offset`, checked against
    /// each other and `durable` (whether the backend has broker queues is checked by the caller).
    fn broker_queue(&mut self, key: &str, raw: &RawConsumer) -> hub_core::BrokerQueue {
        use hub_core::QueueType;
        let mut q = hub_core::BrokerQueue {
            kind: raw.queue_type.unwrap_or_default(),
            delivery_limit: raw.delivery_limit,
            single_active_consumer: raw.single_active_consumer.unwrap_or(false),
            offset: hub_core::StreamOffset::default(),
        };
        let kept = raw.durable == Some(true) || raw.queue.is_some();
        let needs_durable = [
            (
                q.kind != QueueType::Classic,
                "queue_type",
                "a quorum queue or a stream outlives the connection",
            ),
            (
                q.single_active_consumer,
                "single_active_consumer",
                "hubs share the queue",
            ),
        ];
        for (set, k, why) in needs_durable {
            if set && !kept {
                self.issue(
                    &format!("{key}.{k}"),
                    format!("needs `durable = true` (or a `queue` name): {why}"),
                );
            }
        }
        if raw.delivery_limit.is_some() && q.kind != QueueType::Quorum {
            self.issue(
                &format!("{key}.delivery_limit"),
                "applies to quorum queues: set `queue_type = \"quorum\"`",
            );
        }
        if raw.delivery_limit == Some(0) {
            self.issue(&format!("{key}.delivery_limit"), "must be at least 1");
        }
        if q.kind == QueueType::Stream && q.single_active_consumer {
            self.issue(
                &format!("{key}.single_active_consumer"),
                "does not apply to streams (each hub reads a stream from its own offset)",
            );
        }
        match (&raw.offset, q.kind) {
            (None, _) => {}
            (Some(o), QueueType::Stream) => match o.parse() {
                Ok(o) => q.offset = o,
                Err(e) => self.issue(&format!("{key}.offset"), e),
            },
            (Some(_), _) => self.issue(
                &format!("{key}.offset"),
                "applies to streams: set `queue_type = \"stream\"`",
            ),
        }
        q
    }

    /// A consumer's queue options, checked (`durable` and `queue` only where the backend has
    /// broker queues).
    fn consumer_options(
        &mut self,
        kinds: &BTreeMap<String, String>,
        key: &str,
        raw: &RawConsumer,
        backend: Option<&str>,
    ) -> ConsumerOptions {
        let defaults = ConsumerOptions::default();
        let options = ConsumerOptions {
            concurrency: raw.concurrency.unwrap_or(defaults.concurrency),
            queue_capacity: raw.queue_capacity.unwrap_or(defaults.queue_capacity),
            queue_max_bytes: raw.queue_max_bytes,
            when_full: raw.when_full.unwrap_or(defaults.when_full),
            timeout: raw.timeout,
            durable: raw.durable.unwrap_or(false),
            queue: raw.queue.clone(),
            retry: None,
            rate_limit: None,
            batch_size: raw.batch_size.unwrap_or(defaults.batch_size),
            batch_delay: raw.batch_delay.unwrap_or(defaults.batch_delay),
            broker_queue: self.broker_queue(key, raw),
        };
        if options.batch_size == 0 {
            self.issue(
                &format!("{key}.batch_size"),
                "must be at least 1 (1: one message at a time)",
            );
        }
        if raw.batch_delay.is_some() && options.batch_size <= 1 {
            self.issue(
                &format!("{key}.batch_delay"),
                "applies to batches only: set batch_size above 1",
            );
        }
        let mut options = options;
        let inherited = backend
            .and_then(|b| self.backend_failures.get(b))
            .and_then(|f| f.retry.clone());
        match failures::retry_policy(raw.retry.as_ref(), inherited.as_ref()) {
            None => {}
            Some(Ok(p)) => options.retry = Some(p),
            Some(Err(problems)) => {
                for (field, m) in problems {
                    self.issue(&format!("{key}.retry.{field}"), m);
                }
            }
        }
        if options.broker_queue.kind == hub_core::QueueType::Stream {
            // A stream keeps every message: a retry is the hub's own, in place (a copy
            // republished would be appended to the stream, for every reader to see).
            let mut p = options.retry.unwrap_or_default();
            p.in_order = true;
            options.retry = Some(p);
        }
        if let Some(r) = &raw.rate_limit {
            match r.limit() {
                Ok(l) => options.rate_limit = Some(l),
                Err(problems) => {
                    for (field, m) in problems {
                        self.issue(&format!("{key}.rate_limit.{field}"), m);
                    }
                }
            }
        }
        if let Some(b) = backend {
            let kind = kinds.get(b).map_or("", String::as_str);
            let honours = self
                .registry
                .backends
                .get(kind)
                .is_some_and(|k| k.durable_queues);
            for (set, k) in [
                (raw.durable.is_some(), "durable"),
                (raw.queue.is_some(), "queue"),
                (raw.queue_type.is_some(), "queue_type"),
                (raw.delivery_limit.is_some(), "delivery_limit"),
                (
                    raw.single_active_consumer.is_some(),
                    "single_active_consumer",
                ),
                (raw.offset.is_some(), "offset"),
            ] {
                if set && !honours {
                    self.issue(&format!("{key}.{k}"), format!("backend {b:?} (type {kind}) has no broker queues; `{k}` applies to amqp backends"));
                }
            }
        }
        if options.queue.as_deref() == Some("") {
            self.issue(&format!("{key}.queue"), "must not be empty");
        }
        if options.concurrency == 0 {
            self.issue(&format!("{key}.concurrency"), "must be at least 1");
        }
        if options.queue_capacity == 0 {
            self.issue(&format!("{key}.queue_capacity"), "must be at least 1");
        }
        if options.queue_max_bytes == Some(0) {
            self.issue(
                &format!("{key}.queue_max_bytes"),
                "must be at least 1 (leave it out for no limit of its own)",
            );
        }
        if options.timeout == Some(Duration::ZERO) {
            self.issue(
                &format!("{key}.timeout"),
                "must be longer than 0s (leave it out for no limit)",
            );
        }
        options
    }
}

/// Reads a configuration against the registered types: what reads (parts with problems
/// included where they could still be built) and every problem found.
///
/// # Errors
/// Only a file that cannot be opened or is not TOML.
pub(crate) fn load_partial(
    source: &ConfigSource,
    registry: &Registry,
    env: bool,
) -> Result<(Config, Vec<ConfigIssue>), ConfigErrors> {
    let mut l = Loader {
        figment: open(source, env)?,
        fallback_source: source.to_string(),
        issues: Vec::new(),
        registry,
        backend_failures: BTreeMap::new(),
    };
    let top: Dict = match l.figment.extract() {
        Ok(d) => d,
        Err(e) => {
            l.figment_issues("", e);
            return Err(ConfigErrors(l.issues));
        }
    };
    for key in top.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            l.issue(
                key,
                format!(
                    "unknown section{}; expected one of {}",
                    collect::suggest(key, SECTIONS),
                    SECTIONS.join(", ")
                ),
            );
        }
    }
    let hub: HubSection = l.section("hub");
    let http: HttpSection = l.section("http");
    if let Some(token) = &http.admin_token {
        match token.resolve() {
            Ok(t) if t.expose().trim().is_empty() => {
                l.issue(
                    "http.admin_token",
                    "is empty: give a token, or leave the key out",
                );
            }
            Ok(_) => {}
            Err(e) => l.issue("http.admin_token", e),
        }
    }
    if hub.name.is_empty() {
        l.issue("hub.name", "must not be empty");
    }
    let (resources, broken_resources) = l.resources();
    let (mut backends, mut kinds) = l.backends();
    let gateway = l.gateway(&mut backends, &mut kinds);
    if let Some(gw) = &gateway
        && gw.config().ping_interval >= http.idle_timeout
    {
        l.issue(
            "gateway.ping_interval",
            format!(
                "{:?} is not below [http] idle_timeout ({:?}): idle clients would be cut off before a ping",
                gw.config().ping_interval,
                http.idle_timeout
            ),
        );
    }
    let producers = l.producers(&kinds);
    let mut consumers = l.consumers(&kinds);
    if let Some(gw) = &gateway {
        l.gateway_taps(gw, &kinds, &mut consumers);
    }
    let config = Config {
        source: source.clone(),
        hub,
        http,
        resources,
        broken_resources,
        backends,
        producers,
        consumers,
        gateway,
    };
    Ok((config, l.issues))
}

/// Reads and validates a configuration against the registered types.
///
/// # Errors
/// Every problem found, at once.
pub(crate) fn load(
    source: &ConfigSource,
    registry: &Registry,
    env: bool,
) -> Result<Config, ConfigErrors> {
    match load_partial(source, registry, env)? {
        (config, issues) if issues.is_empty() => Ok(config),
        (_, issues) => Err(ConfigErrors(issues)),
    }
}

/// `key.field`, or `key` when `field` is empty.
fn join_key(key: &str, field: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{key}.{field}")
    }
}

/// The string at dotted `key` of a configuration (with its environment overrides), read
/// without validating the rest: `hub dead` reads an AMQP backend's `url` this way.
pub(crate) fn raw_string(source: &ConfigSource, key: &str) -> Option<String> {
    open(source, true).ok()?.find_value(key).ok()?.into_string()
}

/// A list of strings of the configuration as written (e.g. an AMQP backend's `urls`).
pub(crate) fn raw_strings(source: &ConfigSource, key: &str) -> Vec<String> {
    let Some(v) = open(source, true).ok().and_then(|f| f.find_value(key).ok()) else {
        return Vec::new();
    };
    v.into_array()
        .unwrap_or_default()
        .into_iter()
        .filter_map(figment::value::Value::into_string)
        .collect()
}
