//! # hub-core
//!
//! The core of `hub`, a daemon and framework for message consumers. Depend on this crate alone to
//! write a consumer or a backend.
//!
//! A message entering from any [`Backend`] is routed by topic [`Pattern`] to every matching
//! [`Consumer`]. Each consumer has its own bounded queue and its own tokio task(s), so a slow
//! consumer never delays another, and its backlog is measured (see [`metrics`] for the metric
//! contract). The dispatcher owns acknowledgements: a delivery is settled with its backend only
//! after every consumer that received it has finished it.
//!
//! # Layout
//! - [`message`]: the [`Message`] envelope (topic, JSON body, id, UTC timestamp, headers).
//! - [`json`]: [`JsonText`], JSON checked in one pass, and an object's members read in one pass
//!   (for backends that keep received JSON as text).
//! - [`topic`]: AMQP-style topic [`Pattern`]s (`*` one word, `#` zero or more).
//! - [`Consumer`], [`Backend`], [`Producer`]: the traits; [`Context`]: publish handle and shared
//!   [`Resources`].
//! - [`Dispatcher`]: per-consumer queues and workers, routing, settlement, gauges.
//! - [`EngineBuilder`]: wires backends, consumers and producers, and shuts them down in order.
//! - [`MemoryBackend`]: in-process loopback, for demos and tests.
//!
//! # A consumer
//! ```
//! use hub_core::{async_trait, Consumer, ConsumeError, Context, Message};
//!
//! #[derive(serde::Deserialize)]
//! struct Build { name: String }
//!
//! struct PrintBuilds;
//!
//! #[async_trait]
//! impl Consumer for PrintBuilds {
//!     async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
//!         let build: Build = msg.decode()?; // a bad body is an invalid-message error
//!         println!("{} built", build.name);
//!         Ok(())
//!     }
//! }
//! ```

mod backend;
mod consumer;
mod context;
mod dispatcher;
mod engine;
mod error;
mod factory;
pub mod json;
pub mod memory;
pub mod message;
pub mod metrics;
mod producer;
pub mod topic;

pub use crate::metrics::BackendMetrics;
pub use async_trait::async_trait;
pub use backend::{
    Acker, Backend, BackendContext, Delivery, Subscription, SubscriptionId, Verdict,
};
pub use consumer::{Consumer, ConsumerOptions, WhenFull};
pub use context::{Context, Publisher, Resources};
pub use dispatcher::{
    BackendIndex, ConsumerState, Dispatcher, DispatcherBuilder, DrainReport, Intake, IntakeClosed,
};
pub use engine::{
    ConsumerSpec, Engine, EngineBuilder, EngineError, Readiness, ReadinessProbe, RunningEngine,
    ShutdownReport,
};
pub use error::{BackendError, BoxError, ConsumeError, ErrorKind, PublishError, ResultExt};
pub use factory::duration;
pub use factory::{BackendConfig, ConsumerConfig, MemoryConfig, ProducerConfig};
pub use json::JsonText;
pub use memory::MemoryBackend;
pub use message::{DecodeError, Headers, Message, MessageBuilder};
pub use producer::Producer;
pub use tokio_util::sync::CancellationToken;
pub use topic::{Pattern, PatternError, PatternSet, TopicWords};
