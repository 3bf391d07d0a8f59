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
use hub_core::metrics::DURATION_BUCKETS;
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerOptions, ConsumerSpec, Context, EngineBuilder,
    MemoryBackend, Message, Pattern, Resources, RunningEngine, ShutdownReport, Verdict,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
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
        let recorder = PrometheusBuilder::new()
            .set_buckets(DURATION_BUCKETS)
            .unwrap_or_else(|e| panic!("{e}"))
            .build_recorder();
        let handle = recorder.handle();
        let engine = self.engine.resources(self.resources);
        let engine = metrics::with_local_recorder(&recorder, || engine.build())
            .unwrap_or_else(|e| panic!("{e}"));
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
            metrics: handle,
            _recorder: recorder,
        }
    }
}

/// A running hub on the in-memory backend, for tests.
pub struct TestHub {
    running: Option<RunningEngine>,
    backend: Arc<MemoryBackend>,
    logs: HashMap<String, Arc<Log>>,
    metrics: PrometheusHandle,
    _recorder: PrometheusRecorder,
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
        let Some(r) = &self.running else {
            return self.metrics.render();
        };
        r.dispatcher().refresh_gauges();
        self.metrics.render() + &r.dispatcher().render_histograms()
    }

    /// One sample, by its exact series as rendered, such as
    /// `hub_consumer_backlog_messages{consumer="x"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics_text().lines().find_map(|l| {
            let v = l.strip_prefix(series)?.strip_prefix(' ')?;
            if v == "+Inf" {
                Some(f64::INFINITY)
            } else {
                v.parse().ok()
            }
        })
    }

    /// Drains and stops the hub (stop hooks run).
    pub async fn shutdown(mut self) -> Option<ShutdownReport> {
        match self.running.take() {
            Some(r) => Some(r.shutdown(Duration::from_secs(10)).await),
            None => None,
        }
    }
}
