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
//! - [`MemoryBackend`]: in-process loopback, for demos and tests, written against `hub-core`
//!   alone.

mod dispatcher;
mod engine;
pub mod memory;
pub mod metrics;
pub mod settings;

pub use dispatcher::{
    BackendIndex, ConsumerState, Dispatcher, DispatcherBuilder, DrainReport, Intake,
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
}
