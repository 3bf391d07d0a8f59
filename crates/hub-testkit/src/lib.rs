//! # hub-testkit
//!
//! Runs consumers on the real dispatcher over the in-memory backend, with a private Prometheus
//! recorder, so a consumer author can test in a few lines:
//!
//! ```
//! # use hub_core::{async_trait, Consumer, ConsumeError, Context, Message, Verdict};
//! # struct Hello;
//! # #[async_trait] impl Consumer for Hello {
//! #   async fn consume(&self, cx: &Context, m: &Message) -> Result<(), ConsumeError> {
//! #     cx.publish_json("greeting", m.body().clone()).await.map_err(ConsumeError::transient) } }
//! # #[tokio::main] async fn main() {
//! let hub = hub_testkit::TestHub::builder().consumer("hello", &["person.#"], Hello).start().await;
//! assert_eq!(hub.send("person.new", serde_json::json!({"name": "Ada"})).await, Verdict::Ack);
//! assert_eq!(hub.consumed("hello").len(), 1);
//! assert_eq!(hub.published()[0].topic(), "greeting");
//! assert_eq!(hub.metric(r#"hub_consumer_processed_messages_total{consumer="hello",outcome="ok"}"#), Some(1.0));
//! # }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerOptions, Context, Message, Pattern, Resources,
    Verdict,
};
use hub_engine::{
    ConsumerSpec, EngineBuilder, MemoryBackend, MetricsHandle, RunningEngine, ShutdownReport,
};
use serde_json::Value;

const BACKEND: &str = "memory";

/// What a consumer did with one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// `consume` returned `Ok`.
    Ok(Message),
    /// `consume` returned an error (its text).
    Failed(Message, String),
}

#[derive(Default)]
struct Log(Mutex<Vec<Handled>>);

struct Recording {
    inner: Arc<dyn Consumer>,
    log: Arc<Log>,
}

#[async_trait]
impl Consumer for Recording {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        self.inner.start(cx).await
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let r = self.inner.consume(cx, msg).await;
        let entry = match &r {
            Ok(()) => Handled::Ok(msg.clone()),
            Err(e) => Handled::Failed(msg.clone(), e.to_string()),
        };
        self.log
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
        r
    }

    async fn stop(&self, cx: &Context) {
        self.inner.stop(cx).await;
    }
}

/// Collects consumers for a [`TestHub`].
pub struct TestHubBuilder {
    engine: EngineBuilder,
    resources: Resources,
    logs: HashMap<String, Arc<Log>>,
    backend: Arc<MemoryBackend>,
}

impl TestHubBuilder {
    /// Adds a consumer with default options (concurrency 1, `block`).
    ///
    /// # Panics
    /// On an invalid topic pattern.
    pub fn consumer(self, name: &str, topics: &[&str], consumer: impl Consumer) -> Self {
        self.consumer_with(name, topics, ConsumerOptions::default(), consumer)
    }

    /// Adds a consumer with chosen options.
    ///
    /// # Panics
    /// On an invalid topic pattern.
    pub fn consumer_with(
        mut self,
        name: &str,
        topics: &[&str],
        options: ConsumerOptions,
        consumer: impl Consumer,
    ) -> Self {
        let log = Arc::new(Log::default());
        self.logs.insert(name.to_owned(), Arc::clone(&log));
        let patterns = topics
            .iter()
            .map(|t| Pattern::new(t).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let spec = ConsumerSpec {
            name: name.to_owned(),
            backend: BACKEND.to_owned(),
            patterns,
            options,
        };
        self.engine = self.engine.consumer(
            spec,
            Arc::new(Recording {
                inner: Arc::new(consumer),
                log,
            }),
        );
        self
    }

    /// Adds a shared resource.
    pub fn resource<T: std::any::Any + Send + Sync>(mut self, value: T) -> Self {
        self.resources = self.resources.with(value);
        self
    }

    /// Starts the hub (consumers' start hooks run now).
    ///
    /// # Panics
    /// When a start hook fails or the wiring is wrong: a test failure either way.
    pub async fn start(self) -> TestHub {
        let engine = self
            .engine
            .resources(self.resources)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let metrics = engine.metrics();
        let running = engine.start().await.unwrap_or_else(|e| panic!("{e}"));
        // Wait until the memory backend takes deliveries.
        for _ in 0..1000 {
            if running.readiness().ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        TestHub {
            running: Some(running),
            backend: self.backend,
            logs: self.logs,
            metrics,
        }
    }
}

/// A running hub on the in-memory backend, for tests.
pub struct TestHub {
    running: Option<RunningEngine>,
    backend: Arc<MemoryBackend>,
    logs: HashMap<String, Arc<Log>>,
    metrics: MetricsHandle,
}

impl TestHub {
    /// Starts building.
    pub fn builder() -> TestHubBuilder {
        let backend = Arc::new(MemoryBackend::recording());
        TestHubBuilder {
            engine: EngineBuilder::new("test")
                .backend(BACKEND, Arc::clone(&backend) as Arc<dyn hub_core::Backend>),
            resources: Resources::new(),
            logs: HashMap::new(),
            backend,
        }
    }

    /// Sends a new message and waits (up to 10 s) for the dispatcher's verdict: `Ack` once every
    /// matching consumer finished it OK.
    ///
    /// # Panics
    /// When no verdict comes within 10 s.
    pub async fn send(&self, topic: &str, body: Value) -> Verdict {
        self.send_message(Message::new(topic, body)).await
    }

    /// Sends a prepared message; see [`TestHub::send`].
    ///
    /// # Panics
    /// When no verdict comes within 10 s.
    pub async fn send_message(&self, msg: Message) -> Verdict {
        let rx = self
            .backend
            .send_acked(msg)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap_or_else(|_| panic!("no verdict within 10 s"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Everything consumer `name` handled, in order.
    pub fn handled(&self, name: &str) -> Vec<Handled> {
        self.logs
            .get(name)
            .map(|l| l.0.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// The messages consumer `name` finished OK, in order.
    pub fn consumed(&self, name: &str) -> Vec<Message> {
        self.handled(name)
            .into_iter()
            .filter_map(|h| match h {
                Handled::Ok(m) => Some(m),
                Handled::Failed(..) => None,
            })
            .collect()
    }

    /// Every message published by consumers (through their context), in order.
    pub fn published(&self) -> Vec<Message> {
        self.backend.published()
    }

    /// The Prometheus text of this hub's metrics, gauges refreshed now.
    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// One sample, by its exact series as rendered, such as
    /// `hub_consumer_backlog_messages{consumer="x"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics.sample(series)
    }

    /// Drains and stops the hub (stop hooks run).
    pub async fn shutdown(mut self) -> Option<ShutdownReport> {
        match self.running.take() {
            Some(r) => Some(r.shutdown(Duration::from_secs(10)).await),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Publishes `{"from": <id>}` on `out.relayed` while handling each message.
    struct Relay;

    #[async_trait]
    impl Consumer for Relay {
        async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
            cx.publish_json("out.relayed", json!({ "from": msg.id() }))
                .await
                .map_err(ConsumeError::transient)
        }
    }

    struct Nothing;

    #[async_trait]
    impl Consumer for Nothing {
        async fn consume(&self, _: &Context, _: &Message) -> Result<(), ConsumeError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_backend_written_against_core_runs_and_publishes_carry_the_correlation_id() {
        let hub = TestHub::builder()
            .consumer("relay", &["in.#"], Relay)
            .consumer("seen", &["out.#"], Nothing)
            .start()
            .await;
        let first = Message::builder("in.a", json!({}))
            .header("correlation_id", "origin-7")
            .build();
        assert_eq!(hub.send_message(first.clone()).await, Verdict::Ack);
        let published = hub.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].header("in_reply_to"), Some(&json!(first.id())));
        assert_eq!(
            published[0].header("correlation_id"),
            Some(&json!("origin-7"))
        );
        // Through the memory backend (core's sink), the relayed message reached `seen`.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while hub.consumed("seen").is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "relayed message never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seen = &hub.consumed("seen")[0];
        assert_eq!(seen.header("in_reply_to"), Some(&json!(first.id())));
        hub.shutdown().await;
    }
}
