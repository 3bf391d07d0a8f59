//! The `Consumer` trait and its per-consumer dispatch options.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{BoxError, ConsumeError, Context, Message};

/// Reacts to messages. One instance serves one configured consumer.
///
/// Implement it with `#[async_trait]` on the `impl` block (`hub_core::async_trait`, re-exported):
/// without it the compiler reports E0195 ("lifetime parameters or bounds on method `consume` do
/// not match the trait declaration"), which means exactly that.
///
/// `consume` takes `&self` so that the dispatcher can run it with `concurrency` N > 1 (N calls in
/// flight at once, for slow HTTP peers); at the default N = 1 calls never overlap and messages
/// arrive in order. Keep mutable state behind a `Mutex` or in atomics.
#[async_trait]
#[diagnostic::on_unimplemented(
    note = "implement `hub_core::Consumer` with `#[async_trait::async_trait]`"
)]
pub trait Consumer: Send + Sync + 'static {
    /// Runs once before the first message. An error stops the hub from starting.
    async fn start(&self, _cx: &Context) -> Result<(), BoxError> {
        Ok(())
    }

    /// Handles one message. Return a [`ConsumeError`] of kind transient when a retry may help,
    /// invalid when the message itself is at fault. Panics are caught and counted (also one
    /// raised before the future is returned, by a `consume` written without `async_trait`).
    ///
    /// The consumer's `timeout` can only interrupt this future at an `.await`: work that never
    /// awaits (a long CPU-bound parse) runs to its end whatever the timeout, holds its runtime
    /// thread meanwhile, and counts as `ok` if it succeeds. Move such work to
    /// `tokio::task::spawn_blocking(..).await`, whose await the timeout does cover.
    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError>;

    /// Runs once after the last message, during shutdown.
    async fn stop(&self, _cx: &Context) {}
}

/// A shared consumer is a consumer: what [`ConsumerConfig::build`](crate::ConsumerConfig::build)
/// returns (`Arc<dyn Consumer>`) can go wherever an `impl Consumer` is asked for (the test
/// kit's `TestHub::builder().consumer(..)`, a wrapper of your own).
#[async_trait]
impl<C: Consumer + ?Sized> Consumer for std::sync::Arc<C> {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        (**self).start(cx).await
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        (**self).consume(cx, msg).await
    }

    async fn stop(&self, cx: &Context) {
        (**self).stop(cx).await;
    }
}

/// What to do with a new message when a consumer's queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for room: backpressure to the backend (which may then pause its own intake).
    #[default]
    Block,
    /// Drop the new message and count it.
    DropNewest,
    /// Drop the oldest queued message to make room, and count it.
    DropOldest,
}

/// How the dispatcher runs one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// Messages handled at once (default 1: strict order).
    pub concurrency: usize,
    /// Messages that may wait in this consumer's queue (default 1024).
    pub queue_capacity: usize,
    /// Policy when the queue is full (default `block`).
    pub when_full: WhenFull,
    /// Longest time one message may take; `None` (default) means no limit. Enforced at the
    /// consumer's awaits only (see [`Consumer::consume`]).
    pub timeout: Option<Duration>,
    /// Broker backends: keep this consumer's queue across hub and broker restarts, shared by
    /// every hub of the same name (default false: a transient queue gone with the connection).
    pub durable: bool,
    /// Broker backends: the queue name (default for a durable queue: `<hub name>.<consumer>`).
    pub queue: Option<String>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            queue_capacity: 1024,
            when_full: WhenFull::Block,
            timeout: None,
            durable: false,
            queue: None,
        }
    }
}
