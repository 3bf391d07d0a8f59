//! # hub-zeromq
//!
//! The ZeroMQ backend, `type = "zeromq"`, wire-compatible with fedmsg: it subscribes to PUB
//! endpoints (one SUB socket per endpoint, each with its own reconnect loop) and publishes on its
//! own bound PUB socket, brokerless, with the pure-Rust `zeromq` crate.
//!
//! ZeroMQ has no acknowledgements, and a PUB socket drops silently once its queues fill: choose
//! `when_full = "drop_oldest"` or `"drop_newest"` for consumers on this backend so the receive
//! loop never stalls (every drop is counted); `block` makes the receive loop wait for that
//! consumer, and the publisher then drops instead. fedmsg's `i` sequence reveals losses upstream:
//! `hub_zeromq_gaps_total{backend,endpoint}` counts the missing numbers.
//!
//! # Layout
//! - [`codec`]: frames ↔ messages (fedmsg envelope or raw).
//! - `subscriber`: one task per `subscribe` endpoint: connect with retries, filter upstream by
//!   prefix, decode, deliver, count invalid input and gaps.
//! - [`tools`]: `hub tail` and `hub publish`.

pub mod codec;
mod subscriber;
pub mod tools;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use hub_core::{
    Backend, BackendConfig, BackendContext, BackendError, BoxError, DEFAULT_MAX_MESSAGE_BYTES,
    Message, Pattern, PublishError,
};
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::info;
use zeromq::{PubSocket, Socket, SocketOptions, SocketSend, ZmqMessage};

pub use codec::Format;
use subscriber::EndpointStats;

/// `[backends.<id>]` with `type = "zeromq"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZeroMqConfig {
    /// PUB endpoints to connect to and read from, such as `"tcp://127.0.0.1:9940"`.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Endpoint to bind this hub's PUB socket on (optional), such as `"tcp://127.0.0.1:9941"`.
    #[serde(default)]
    pub publish: Option<String>,
    /// `"fedmsg"` (default) or `"raw"`.
    #[serde(default)]
    pub format: Format,
    /// `username` written into outgoing fedmsg envelopes (default: `$USER`, else `"hub"`).
    #[serde(default)]
    pub username: Option<String>,
    /// The largest message (all frames, in bytes) a publisher may send (default 16 MiB,
    /// [`DEFAULT_MAX_MESSAGE_BYTES`]). A larger one is refused as its frame header arrives,
    /// before its body is read, as libzmq's `ZMQ_MAXMSGSIZE` does: the publisher is
    /// disconnected (and reconnected to), the message counted and logged with its size.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}

fn check_endpoint(e: &str) -> Result<(), String> {
    e.parse::<zeromq::Endpoint>()
        .map(|_| ())
        .map_err(|err| format!("endpoint {e:?}: {err} (expected tcp://HOST:PORT or ipc://PATH)"))
}

impl BackendConfig for ZeroMqConfig {
    const TYPE: &'static str = "zeromq";
    const DESCRIPTION: &'static str =
        "ZeroMQ SUB/PUB, fedmsg-compatible: keys subscribe = [..], publish = \"tcp://..\", format";

    fn build(self, id: &str) -> Result<Arc<dyn Backend>, BoxError> {
        if self.subscribe.is_empty() && self.publish.is_none() {
            return Err(
                "set `subscribe` (endpoints to read from), `publish` (endpoint to bind), or both"
                    .into(),
            );
        }
        for e in self.subscribe.iter().chain(&self.publish) {
            check_endpoint(e)?;
        }
        if self.max_message_bytes == 0 {
            return Err("max_message_bytes: must be at least 1".into());
        }
        Ok(Arc::new(ZeroMqBackend::new(id, self)))
    }
}

/// The ZeroMQ backend.
pub struct ZeroMqBackend {
    id: String,
    config: ZeroMqConfig,
    username: String,
    publisher: Mutex<Option<PubSocket>>,
    sequence: AtomicU64,
    endpoints: Vec<Arc<EndpointStats>>,
}

impl ZeroMqBackend {
    /// A backend from its settings (its per-endpoint series are registered when it runs).
    pub fn new(id: &str, config: ZeroMqConfig) -> Self {
        let username = config
            .username
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "hub".into());
        let endpoints = config
            .subscribe
            .iter()
            .map(|e| Arc::new(EndpointStats::new(e)))
            .collect();
        Self {
            id: id.to_owned(),
            config,
            username,
            publisher: Mutex::new(None),
            sequence: AtomicU64::new(0),
            endpoints,
        }
    }

    /// Per subscribe endpoint: `(endpoint, connected, gaps)`.
    pub fn endpoint_stats(&self) -> Vec<(String, bool, u64)> {
        self.endpoints
            .iter()
            .map(|e| {
                (
                    e.endpoint.clone(),
                    e.connected.load(Ordering::Relaxed),
                    e.gaps.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// The SUB prefixes that cover `patterns`: each pattern's literal prefix, minus any prefix that
/// a shorter one already covers (`""` covers everything).
pub fn prefixes<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> Vec<String> {
    let all: BTreeSet<String> = patterns.into_iter().map(Pattern::prefix).collect();
    let mut out: Vec<String> = Vec::new();
    for p in all {
        // BTreeSet order puts a prefix before everything it covers.
        if !out.iter().any(|q| p.starts_with(q.as_str())) {
            out.push(p);
        }
    }
    out
}

#[async_trait]
impl Backend for ZeroMqBackend {
    async fn run(&self, cx: BackendContext) -> Result<(), BackendError> {
        if let Some(endpoint) = &self.config.publish {
            // Subscribers send only subscriptions: the same bound keeps a peer from filling
            // this socket's memory with one huge "subscription".
            let mut options = SocketOptions::default();
            options.max_message_size(self.config.max_message_bytes);
            let mut socket = PubSocket::with_options(options);
            let bound = socket.bind(endpoint).await.map_err(|e| BackendError {
                backend: self.id.clone(),
                message: format!("cannot bind PUB socket on {endpoint} (`publish`): {e}"),
            })?;
            info!(backend = %self.id, endpoint = %bound, "PUB socket bound.");
            *self.publisher.lock().await = Some(socket);
        }
        for stats in &self.endpoints {
            stats.register(cx.metrics.registry(), &self.id);
        }
        let prefixes = prefixes(cx.subscriptions.iter().flat_map(|s| s.patterns.iter()));
        let readiness = subscriber::Readiness::new(cx.metrics.clone(), self.endpoints.clone());
        readiness.update();
        let mut tasks = tokio::task::JoinSet::new();
        if !prefixes.is_empty() {
            for stats in &self.endpoints {
                tasks.spawn(subscriber::run(subscriber::Endpoint {
                    backend: self.id.clone(),
                    stats: Arc::clone(stats),
                    prefixes: prefixes.clone(),
                    format: self.config.format,
                    max_message_bytes: self.config.max_message_bytes,
                    sink: cx.sink.clone(),
                    metrics: cx.metrics.clone(),
                    readiness: readiness.clone(),
                    shutdown: cx.shutdown.clone(),
                }));
            }
        }
        cx.shutdown.cancelled().await;
        while tasks.join_next().await.is_some() {}
        cx.metrics.set_connected(false);
        Ok(())
    }

    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let mut guard = self.publisher.lock().await;
        let Some(socket) = guard.as_mut() else {
            return Err(PublishError::Unavailable {
                backend: self.id.clone(),
                reason: if self.config.publish.is_some() {
                    "the PUB socket is not bound (yet, or any more)".into()
                } else {
                    "no `publish` endpoint is configured".into()
                },
            });
        };
        let i = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let [topic, body] = codec::encode(self.config.format, msg, i, &self.username);
        let mut frames = ZmqMessage::from(topic);
        frames.push_back(body);
        socket
            .send(frames)
            .await
            .map_err(|e| PublishError::Transport {
                backend: self.id.clone(),
                source: Box::new(e),
            })
    }

    async fn close(&self) {
        if let Some(socket) = self.publisher.lock().await.take() {
            let _ = socket.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_patterns_without_overlap() {
        let p = |s: &[&str]| {
            prefixes(
                s.iter()
                    .map(|x| Pattern::new(x).unwrap())
                    .collect::<Vec<_>>()
                    .iter(),
            )
        };
        assert_eq!(
            p(&["org.a.*", "org.a.b.#", "org.c"]),
            vec!["org.a.", "org.c"]
        );
        assert_eq!(p(&["org.#", "*.x"]), vec![""]);
        assert_eq!(p(&["a.b.#"]), vec!["a.b"]);
    }

    #[test]
    fn config_errors_name_the_endpoint() {
        let cfg = ZeroMqConfig {
            subscribe: vec!["tcp//nowhere".into()],
            publish: None,
            format: Format::Fedmsg,
            username: None,
            max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
        };
        let err = cfg.build("z").err().unwrap().to_string();
        assert!(err.contains("\"tcp//nowhere\""), "{err}");
        let none = ZeroMqConfig {
            subscribe: vec![],
            publish: None,
            format: Format::Fedmsg,
            username: None,
            max_message_bytes: hub_core::DEFAULT_MAX_MESSAGE_BYTES,
        };
        assert!(
            none.build("z")
                .err()
                .unwrap()
                .to_string()
                .contains("set `subscribe`")
        );
    }
}
