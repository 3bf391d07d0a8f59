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

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use futures_util::FutureExt;
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, ConsumerOptions, Context, ErrorKind, Message,
    Pattern, Resources, Verdict,
};
use hub_engine::{
    ConsumerSpec, EngineBuilder, MemoryBackend, MetricsHandle, RunningEngine, ShutdownReport,
};
use serde_json::Value;

mod pki;
mod proxy;
pub use pki::{TestPki, localhost_pki};
pub use proxy::TcpProxy;

const BACKEND: &str = "memory";

/// What a consumer did with one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// `consume` returned `Ok`.
    Ok(Message),
    /// `consume` failed: how, and the error's text.
    Failed(Message, Failure, String),
}

/// How a message failed, as the hub counts it (`outcome` label of
/// `hub_consumer_processed_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `ConsumeError::transient`: retried.
    Transient,
    /// `ConsumeError::invalid`: rejected (dead-lettered where the backend can).
    Invalid,
    /// The consumer's `timeout` expired (or the shutdown grace cut it off).
    Timeout,
    /// `consume` panicked (the text is the panic message).
    Panic,
}

impl Handled {
    /// The message, whatever became of it.
    pub fn message(&self) -> &Message {
        match self {
            Self::Ok(m) | Self::Failed(m, ..) => m,
        }
    }

    /// How it failed, if it did.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Self::Ok(_) => None,
            Self::Failed(_, f, _) => Some(*f),
        }
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<Handled>>);

impl Log {
    fn push(&self, entry: Handled) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(entry);
    }
}

struct Recording {
    inner: Arc<dyn Consumer>,
    log: Arc<Log>,
}

/// Records a call that never returned (its future was dropped: a timeout or the shutdown
/// grace) when dropped unfinished.
struct Unfinished<'a> {
    log: &'a Log,
    msg: &'a Message,
    done: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.done && !std::thread::panicking() {
            self.log.push(Handled::Failed(
                self.msg.clone(),
                Failure::Timeout,
                "did not finish: the consumer's timeout (or the shutdown grace) cut it off".into(),
            ));
        }
    }
}

#[async_trait]
impl Consumer for Recording {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        self.inner.start(cx).await
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let mut pending = Unfinished {
            log: &self.log,
            msg,
            done: false,
        };
        let call = AssertUnwindSafe(async { self.inner.consume(cx, msg).await }).catch_unwind();
        let r = call.await;
        pending.done = true;
        match r {
            Ok(r) => {
                self.log.push(match &r {
                    Ok(()) => Handled::Ok(msg.clone()),
                    Err(e) => Handled::Failed(msg.clone(), failure_of(e), e.to_string()),
                });
                r
            }
            Err(panic) => {
                let text = panic_text(&*panic);
                self.log
                    .push(Handled::Failed(msg.clone(), Failure::Panic, text));
                // The hub catches it too, and counts it as `outcome="panic"`.
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// A batch (`batch_size` > 1): the consumer's own `consume_batch`, each message recorded
    /// with its result (a panic or a cut-off call recorded for every message of the batch).
    async fn consume_batch(
        &self,
        cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        let mut pending: Vec<Unfinished<'_>> = batch
            .iter()
            .map(|msg| Unfinished {
                log: &self.log,
                msg,
                done: false,
            })
            .collect();
        let call =
            AssertUnwindSafe(async { self.inner.consume_batch(cx, batch).await }).catch_unwind();
        let r = call.await;
        for p in &mut pending {
            p.done = true;
        }
        match r {
            Ok(results) => {
                for (i, msg) in batch.iter().enumerate() {
                    self.log.push(match results.get(i) {
                        Some(Ok(())) => Handled::Ok(msg.clone()),
                        Some(Err(e)) => Handled::Failed(msg.clone(), failure_of(e), e.to_string()),
                        None => Handled::Failed(
                            msg.clone(),
                            Failure::Transient,
                            "consume_batch returned no result for this message".into(),
                        ),
                    });
                }
                results
            }
            Err(panic) => {
                let text = panic_text(&*panic);
                for msg in batch {
                    self.log
                        .push(Handled::Failed(msg.clone(), Failure::Panic, text.clone()));
                }
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn batch_take(&self, queued: usize, batch_size: usize) -> usize {
        self.inner.batch_take(queued, batch_size)
    }

    async fn stop(&self, cx: &Context) {
        self.inner.stop(cx).await;
    }
}

/// How a consumer's error is counted.
fn failure_of(e: &ConsumeError) -> Failure {
    match e.kind() {
        ErrorKind::Transient => Failure::Transient,
        ErrorKind::Invalid => Failure::Invalid,
    }
}

/// The text of a caught panic's payload.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic with a non-string payload)".into())
}

/// Collects consumers for a [`TestHub`].
pub struct TestHubBuilder {
    engine: EngineBuilder,
    resources: Resources,
    logs: HashMap<String, Arc<Log>>,
    backend: Arc<MemoryBackend>,
    dead_letters: Option<std::path::PathBuf>,
}

impl TestHubBuilder {
    /// Adds a consumer with default options (concurrency 1, `block`, no `retry`).
    ///
    /// A consumer with no `retry` policy (here, or `retry: None` in
    /// [`TestHubBuilder::consumer_with`]) is not retried by the test hub: [`TestHub::send`]
    /// returns its own verdict (`Retry` for a transient failure, `Reject` for an invalid one), as
    /// a broker would receive it. Give a [`hub_core::RetryPolicy`] to test the hub's retries and
    /// dead letters instead (the attempt number is on the context: `cx.attempt()`); `send` then
    /// returns the final verdict.
    ///
    /// # Panics
    /// On an invalid topic pattern.
    pub fn consumer(self, name: &str, topics: &[&str], consumer: impl Consumer) -> Self {
        self.consumer_with(name, topics, ConsumerOptions::default(), consumer)
    }

    /// Sends the dead letters of the consumers added after this call to the JSON-lines file
    /// `path` (as `dead_letter = { file = "..." }` does), where a test can read them; without
    /// it, a dead letter is logged and counted only.
    #[must_use]
    pub fn dead_letter_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.dead_letters = Some(path.into());
        self
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
            dead_letter: self
                .dead_letters
                .clone()
                .map(hub_engine::dead_letter::DeadLetterTarget::File),
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

    /// Adds a consumer built as the hub builds it: `settings` is the TOML of its
    /// `[consumers.<name>.settings]` table, read into `C` (so `deny_unknown_fields`, defaults and
    /// custom deserializers apply), then `C::build` with this hub's resources (add them first).
    ///
    /// # Panics
    /// When the settings do not read as `C`, or `build` refuses them, with the error: use
    /// [`build_consumer`] to assert on that error instead.
    pub fn consumer_from_settings<C: ConsumerConfig>(
        self,
        name: &str,
        topics: &[&str],
        settings: &str,
    ) -> Self {
        let consumer = build_consumer::<C>(settings, &self.resources)
            .unwrap_or_else(|e| panic!("consumer {name}: {e}"));
        self.consumer(name, topics, consumer)
    }

    /// Adds a shared resource found by id (what `[resources.<id>]` builds in the hub).
    pub fn resource_named<T: std::any::Any + Send + Sync>(mut self, id: &str, value: T) -> Self {
        self.resources = self.resources.with_named(id, value);
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

/// Reads `settings` (the TOML of a `[consumers.<name>.settings]` table) into `C` and builds it,
/// as the hub does. The error names the key and what was expected, as `hub check` would.
///
/// # Errors
/// The settings do not read as `C` (every problem, one per line), or `C::build` refuses them.
#[allow(
    clippy::result_large_err,
    reason = "figment::Error is large; settings are read once per test"
)]
pub fn build_consumer<C: ConsumerConfig>(
    settings: &str,
    resources: &Resources,
) -> Result<Arc<dyn Consumer>, String> {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    let table: figment::value::Value = Figment::from(Toml::string(settings))
        .extract()
        .map_err(|e| format!("settings: {e}"))?;
    build_from::<C>(table, resources)
}

/// [`build_consumer`] from JSON settings (`{"path": "out.jsonl"}`), for settings kept as JSON.
///
/// # Errors
/// As [`build_consumer`].
#[allow(
    clippy::result_large_err,
    reason = "figment::Error is large; settings are read once per test"
)]
pub fn build_consumer_json<C: ConsumerConfig>(
    settings: &Value,
    resources: &Resources,
) -> Result<Arc<dyn Consumer>, String> {
    use figment::Figment;
    use figment::providers::Serialized;
    let table: figment::value::Value = Figment::from(Serialized::defaults(settings))
        .extract()
        .map_err(|e| format!("settings: {e}"))?;
    build_from::<C>(table, resources)
}

#[allow(
    clippy::result_large_err,
    reason = "figment::Error is large; settings are read once per test"
)]
fn build_from<C: ConsumerConfig>(
    table: figment::value::Value,
    resources: &Resources,
) -> Result<Arc<dyn Consumer>, String> {
    let mut found = Vec::new();
    let read = hub_engine::settings::collect(
        "settings",
        table,
        |v| v.deserialize::<C>(),
        &mut |key, message| found.push(format!("{key}: {message}")),
    );
    let config = match read {
        Some(config) if found.is_empty() => config,
        _ => return Err(found.join("\n")),
    };
    config
        .build(resources)
        .map_err(|e| format!("settings rejected by {}::build: {e}", C::TYPE))
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
                .verdicts_to_backend(true)
                .backend(BACKEND, Arc::clone(&backend) as Arc<dyn hub_core::Backend>),
            resources: Resources::new(),
            logs: HashMap::new(),
            backend,
            dead_letters: None,
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
        self.send_message_within(msg, Duration::from_secs(10)).await
    }

    /// Sends a prepared message and waits up to `within` for its verdict (a test of an outage
    /// waits longer than [`TestHub::send`]'s 10 s).
    ///
    /// # Panics
    /// When no verdict comes within `within`.
    pub async fn send_message_within(&self, msg: Message, within: Duration) -> Verdict {
        let rx = self
            .backend
            .send_acked(msg)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        tokio::time::timeout(within, rx)
            .await
            .unwrap_or_else(|_| panic!("no verdict within {within:?}"))
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

    /// Rejects messages whose body says `"bad": true`, in batches.
    struct Rows;

    #[async_trait]
    impl Consumer for Rows {
        async fn consume(&self, _: &Context, _: &Message) -> Result<(), ConsumeError> {
            unreachable!("given batches")
        }

        async fn consume_batch(
            &self,
            _: &Context,
            batch: &[Message],
        ) -> Vec<Result<(), ConsumeError>> {
            batch
                .iter()
                .map(|m| match m.body()["bad"].as_bool() {
                    Some(true) => Err(ConsumeError::invalid("bad row")),
                    _ => Ok(()),
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn a_batch_consumer_is_given_batches_and_each_message_is_recorded() {
        let options = ConsumerOptions {
            batch_size: 10,
            ..ConsumerOptions::default()
        };
        let hub = TestHub::builder()
            .consumer_with("rows", &["#"], options, Rows)
            .start()
            .await;
        assert_eq!(hub.send("a", json!({})).await, Verdict::Ack);
        assert!(matches!(
            hub.send("a", json!({"bad": true})).await,
            Verdict::Reject { .. }
        ));
        let handled = hub.handled("rows");
        assert_eq!(handled.len(), 2);
        assert_eq!(handled[0].failure(), None);
        assert_eq!(handled[1].failure(), Some(Failure::Invalid));
        hub.shutdown().await;
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

    /// Fails as its body says.
    struct Moody;

    #[async_trait]
    impl Consumer for Moody {
        async fn consume(&self, _: &Context, msg: &Message) -> Result<(), ConsumeError> {
            match msg.body()["do"].as_str() {
                Some("panic") => panic!("bad day"),
                Some("hang") => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                }
                Some("down") => Err(ConsumeError::transient("database down")),
                Some("bad") => Err(ConsumeError::invalid("no such build")),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn every_outcome_is_reported_with_its_kind() {
        let options = ConsumerOptions {
            timeout: Some(Duration::from_millis(50)),
            ..ConsumerOptions::default()
        };
        let hub = TestHub::builder()
            .consumer_with("moody", &["m.#"], options, Moody)
            .start()
            .await;
        for what in ["ok", "down", "bad", "panic", "hang"] {
            hub.send("m.x", json!({ "do": what })).await;
        }
        let kinds: Vec<Option<Failure>> =
            hub.handled("moody").iter().map(Handled::failure).collect();
        assert_eq!(
            kinds,
            vec![
                None,
                Some(Failure::Transient),
                Some(Failure::Invalid),
                Some(Failure::Panic),
                Some(Failure::Timeout)
            ]
        );
        let handled = hub.handled("moody");
        assert!(matches!(&handled[3], Handled::Failed(_, _, text) if text == "bad day"));
        assert!(matches!(&handled[1], Handled::Failed(_, _, text) if text == "database down"));
        for (outcome, n) in [
            ("ok", 1.0),
            ("transient", 1.0),
            ("invalid", 1.0),
            ("panic", 1.0),
            ("timeout", 1.0),
        ] {
            assert_eq!(
                hub.metric(&format!(
                    r#"hub_consumer_processed_messages_total{{consumer="moody",outcome="{outcome}"}}"#
                )),
                Some(n),
                "{outcome}"
            );
        }
        hub.shutdown().await;
    }

    #[tokio::test]
    async fn a_built_consumer_goes_straight_in() {
        let built: Arc<dyn Consumer> = Arc::new(Moody);
        let hub = TestHub::builder()
            .consumer("m", &["#"], built)
            .start()
            .await;
        assert_eq!(hub.send("a.b", json!({})).await, Verdict::Ack);
        hub.shutdown().await;
    }
}
