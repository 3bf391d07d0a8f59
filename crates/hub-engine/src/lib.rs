//! # hub-engine
//!
//! The engine of `hub`: what runs the plugins written against `hub-core`. It is free to change
//! without breaking them; plugins never name its types, except a backend registering its own
//! series through [`metrics`].
//!
//! - [`EngineBuilder`] / [`Engine`] / [`RunningEngine`]: wire backends, consumers and producers,
//!   start them, and shut them down in order (intake, drain, stop hooks, close).
//! - [`Dispatcher`]: per-consumer bounded queues and workers, routing, settlement, gauges. Its
//!   [`Intake`] is the engine's [`hub_core::DeliverySink`]: backends reach it as a
//!   [`hub_core::Sink`].
//! - [`metrics`]: every metric name and HELP text, each hub's own [`Registry`], and the one
//!   rendering of `/metrics` ([`MetricsHandle::render`]).
//! - [`settings`]: reading a settings table with every problem reported, in words (for
//!   `hub check` and the test kit).
//! - [`dead_letter`]: the dead-letter record and the file and topic sinks the hub writes a
//!   consumer's dead letters to when its backend keeps none (ZeroMQ, memory).
//! - [`MemoryBackend`]: in-process loopback, for demos and tests, written against `hub-core`
//!   alone.

pub mod dead_letter;
mod dispatcher;
mod engine;
pub mod log_throttle;
pub mod memory;
pub mod metrics;
pub mod settings;

pub use dispatcher::{
    BackendIndex, COARSE_EVERY, COARSE_SAMPLES, ConsumerState, ConsumerStatus,
    DEFAULT_MAX_QUEUED_BYTES, Dispatcher, DispatcherBuilder, DrainReport, FINE_SAMPLES, History,
    Intake, LastError, Outcomes, RedeliverError, RunState, Sample, TailEntry, UnknownConsumer,
};
pub use engine::{
    ConsumerSpec, Engine, EngineBuilder, EngineError, Readiness, ReadinessProbe, RunningEngine,
    ShutdownReport,
};
pub use memory::{MemoryBackend, MemoryConfig};
pub use metrics::{MetricsHandle, Registry};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hub_core::{Backend, Message};
    use serde_json::json;

    use crate::{EngineBuilder, MemoryBackend};

    #[tokio::test]
    async fn publishes_are_counted_by_outcome() {
        let mem = Arc::new(MemoryBackend::new());
        let engine = EngineBuilder::new("t")
            .backend("mem", Arc::clone(&mem) as Arc<dyn Backend>)
            .build()
            .unwrap();
        let metrics = engine.metrics();
        // A memory backend that is not running refuses the message.
        let publisher = engine.publisher("mem").unwrap();
        let err = publisher
            .publish(Message::new("a.b", json!({})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not running"), "{err}");
        assert_eq!(
            metrics.sample(r#"hub_backend_publish_failures_total{backend="mem"}"#),
            Some(1.0)
        );
        assert_eq!(
            metrics.sample(r#"hub_backend_published_messages_total{backend="mem"}"#),
            Some(0.0)
        );
    }

    /// A dead letter published on a topic reaches whoever subscribes to it: the record is the
    /// body, the original message inside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_topic_sink_publishes_the_dead_letter_record() {
        use std::sync::Mutex;
        use std::time::Duration;

        use hub_core::{
            ConsumeError, Consumer, ConsumerOptions, Context, Pattern, RetryPolicy, async_trait,
        };

        use crate::ConsumerSpec;
        use crate::dead_letter::{DeadLetter, DeadLetterTarget};

        struct Strict;
        #[async_trait]
        impl Consumer for Strict {
            async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
                Err(ConsumeError::invalid("no such build"))
            }
        }
        #[derive(Default)]
        struct Keep(Mutex<Vec<Message>>);
        #[async_trait]
        impl Consumer for Keep {
            async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
                self.0.lock().unwrap().push(msg.clone());
                Ok(())
            }
        }
        let mem = Arc::new(MemoryBackend::new());
        let keep = Arc::new(Keep::default());
        let spec = |name: &str, topic: &str, dead_letter| ConsumerSpec {
            name: name.into(),
            backend: "mem".into(),
            patterns: vec![Pattern::new(topic).unwrap()],
            options: ConsumerOptions {
                retry: Some(RetryPolicy::default()),
                ..ConsumerOptions::default()
            },
            dead_letter,
        };
        let running = EngineBuilder::new("h")
            .backend("mem", Arc::clone(&mem) as Arc<dyn Backend>)
            .consumer(
                spec(
                    "strict",
                    "work.#",
                    Some(DeadLetterTarget::Topic {
                        topic: "dead.work".into(),
                        backend: None,
                    }),
                ),
                Arc::new(Strict),
            )
            .consumer(
                spec("dead", "dead.#", None),
                Arc::clone(&keep) as Arc<dyn Consumer>,
            )
            .build()
            .unwrap()
            .start()
            .await
            .unwrap();
        let sent = Message::new("work.build", json!({"id": 7}));
        // The memory backend takes messages once it runs.
        for _ in 0..500 {
            if running.readiness().ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running
            .publisher("mem")
            .unwrap()
            .publish(sent.clone())
            .await
            .unwrap();
        for _ in 0..500 {
            if !keep.0.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = keep.0.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].topic(), "dead.work");
        let letter: DeadLetter = got[0].decode().unwrap();
        assert_eq!(letter.consumer, "strict");
        assert_eq!(letter.hub, "h");
        assert_eq!(letter.backend, "mem");
        assert_eq!(letter.attempts, 1);
        assert!(letter.reason.contains("no such build"), "{}", letter.reason);
        let original = letter.to_message().unwrap();
        assert_eq!(original.id(), sent.id());
        assert_eq!(original.body(), &json!({"id": 7}));
        assert_eq!(
            running
                .metrics()
                .sample(r#"hub_consumer_dead_letters_total{consumer="strict",sink="topic"}"#),
            Some(1.0)
        );
        running.shutdown(Duration::from_secs(5)).await;
    }
}
