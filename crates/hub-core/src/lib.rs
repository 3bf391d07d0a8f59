//! # hub-core
//!
//! The plugin API of `hub`, a daemon and framework for message consumers: depend on this crate
//! alone to write a consumer or a producer; a backend also registers its own metric series
//! through `hub_engine::metrics` (where every metric name lives). The engine that runs them
//! (queues, workers, metrics) is `hub-engine`, free to change without breaking plugins.
//!
//! A message entering from any [`Backend`] is routed by topic [`Pattern`] to every matching
//! [`Consumer`]. Each consumer has its own bounded queue and its own tokio task(s), so a slow
//! consumer never delays another. The hub owns acknowledgements: a delivery is settled with its
//! backend (through its [`Acker`]) only after every consumer that received it has finished it.
//!
//! # What is here
//! - [`Message`] (and [`MessageBuilder`]): topic, JSON body, id, UTC timestamp, headers.
//! - [`JsonText`]: JSON checked in one pass, for backends that keep received JSON as text.
//! - [`Pattern`], [`PatternSet`]: AMQP-style topic patterns (`*` one word, `#` zero or more).
//! - [`Consumer`], [`Producer`], [`Backend`]: the traits; [`Context`]: a publish handle, shared
//!   [`Resources`] and the shutdown signal.
//! - [`Delivery`], [`Acker`], [`Verdict`]: a message in, and how it is settled; [`Sink`]: where
//!   a backend hands deliveries to the hub; [`BackendMetrics`]: a backend's counters.
//! - [`correlation`]: what a consumer publishes while handling a message carries its id
//!   (`in_reply_to`, `correlation_id`).
//! - Errors: [`ConsumeError`], [`PublishError`], [`BackendError`].
//! - Configuration: [`ConsumerConfig`], [`ProducerConfig`], [`BackendConfig`],
//!   [`ResourceConfig`], [`duration`].
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
mod config;
mod consumer;
mod context;
pub mod correlation;
mod error;
pub mod json;
pub mod message;
pub mod metrics;
mod producer;
mod secret;
mod sink;
pub mod topic;

pub use crate::metrics::BackendMetrics;
pub use async_trait::async_trait;
pub use backend::{
    Acker, Backend, BackendContext, DEFAULT_MAX_MESSAGE_BYTES, Delivery, Subscription,
    SubscriptionId, Verdict,
};
pub use config::duration;
pub use config::{BackendConfig, ConsumerConfig, ProducerConfig, ResourceConfig};
pub use consumer::{
    BrokerQueue, Consumer, ConsumerOptions, QueueType, RateLimit, RetryPolicy, StreamOffset,
    WhenFull,
};
pub use context::{Context, MissingResource, Pacer, Publisher, Resources};
pub use error::{BackendError, BoxError, ConsumeError, ErrorKind, PublishError, ResultExt};
/// The timestamp type of [`Message::timestamp`] (a UTC instant), re-exported so that a consumer
/// crate needs no `jiff` dependency of its own.
pub use jiff::Timestamp;
pub use json::JsonText;
pub use message::{DecodeError, HeaderSource, Headers, Message, MessageBuilder};
pub use producer::Producer;
pub use secret::{Secret, SecretSource};
/// JSON values, re-exported so that a consumer crate needs no `serde_json` dependency of its own
/// for bodies ([`Message::body`], [`Context::publish_json`]).
pub use serde_json::{Map, Value, json};
pub use sink::{Admission, DeliverySink, IntakeClosed, RoomWait, Sink};
pub use tokio_util::sync::CancellationToken;
pub use topic::{Pattern, PatternError, PatternSet, TopicWords};
