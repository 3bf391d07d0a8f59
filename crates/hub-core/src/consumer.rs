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

    /// Handles several messages at once: what the hub calls instead of [`consume`](Self::consume)
    /// for a consumer configured with `batch_size` > 1 (a store committing a group of rows in one
    /// transaction, a notifier sending a digest). Returns one result per message, in the order
    /// of `batch`: each message is acknowledged, retried or dead-lettered on its own. A result
    /// missing from the end counts as a transient failure; extra results are ignored. A panic,
    /// or the consumer's `timeout` (which applies to the whole call), fails every message of the
    /// batch.
    ///
    /// `cx` handles no single message here: to publish in reply to one, use
    /// `cx.handling(msg.clone()).publish(..)`. Each message's own attempt is
    /// [`Message::attempt`].
    ///
    /// The default calls [`consume`](Self::consume) for each message in turn.
    async fn consume_batch(
        &self,
        cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        let mut out = Vec::with_capacity(batch.len());
        for msg in batch {
            out.push(self.consume(&cx.handling(msg.clone()), msg).await);
        }
        out
    }

    /// How many of the `queued` messages (at least 1) the next batch takes, at most
    /// `batch_size`; the rest stay in the queue. The default takes as many as it may. A
    /// notifier that sends a digest only when a burst is queued takes 1 while few are waiting.
    fn batch_take(&self, queued: usize, batch_size: usize) -> usize {
        queued.min(batch_size)
    }

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

    async fn consume_batch(
        &self,
        cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        (**self).consume_batch(cx, batch).await
    }

    fn batch_take(&self, queued: usize, batch_size: usize) -> usize {
        (**self).batch_take(queued, batch_size)
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
    /// Bytes of messages ([`Message::byte_size`](crate::Message::byte_size)) that may wait
    /// in this consumer's queue (default `None`: no limit of its own, only the hub-wide
    /// `max_queued_bytes`). Whichever of this and `queue_capacity` is reached first makes
    /// the queue full; a queue that is empty always takes one message, whatever its size.
    pub queue_max_bytes: Option<usize>,
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
    /// How failed messages are retried; `None` (default): the backend's default (for AMQP, its
    /// `max_attempts`, `retry_delay` and `retry_delay_max` keys; otherwise
    /// [`RetryPolicy::default`]). A broker backend ([`Backend::redelivers`](crate::Backend::redelivers))
    /// applies it with its own redelivery; for the others the hub keeps the message and gives it
    /// back itself.
    pub retry: Option<RetryPolicy>,
    /// At most this many calls to `consume` (or `consume_batch`) per period (default: no
    /// limit).
    pub rate_limit: Option<RateLimit>,
    /// Messages handed over at once, to [`Consumer::consume_batch`] (default 1: one at a time,
    /// to [`Consumer::consume`]). `concurrency` then counts batches in flight.
    pub batch_size: usize,
    /// With `batch_size` > 1: how long a batch may wait for more messages to fill it, counted
    /// from its first (default 0: take what is queued now).
    pub batch_delay: Duration,
    /// Broker backends: the kind of durable queue and how it is consumed (default: a classic
    /// queue, every hub sharing it consuming).
    pub broker_queue: BrokerQueue,
}

/// RabbitMQ's queue types (`queue_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// A classic queue, on the node that declared it (default).
    #[default]
    Classic,
    /// A replicated quorum queue (Raft): survives the loss of a minority of the cluster's
    /// nodes, counts each message's deliveries, and can dead-letter one past `delivery_limit`.
    Quorum,
    /// A stream: an append-only log read from an offset; messages stay until retention drops
    /// them (reading one removes nothing).
    Stream,
}

impl QueueType {
    /// Its name in configuration and in RabbitMQ's `x-queue-type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
            Self::Stream => "stream",
        }
    }
}

/// Where a stream consumer starts reading (`offset`) when it has no stored offset of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamOffset {
    /// The oldest message the stream still holds.
    First,
    /// The last chunk of the stream (the most recent messages).
    Last,
    /// Only what arrives from now on (default).
    #[default]
    Next,
    /// Messages from this time on.
    Time(jiff::Timestamp),
}

impl std::str::FromStr for StreamOffset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "first" => Ok(Self::First),
            "last" => Ok(Self::Last),
            "next" => Ok(Self::Next),
            t => t.parse().map(Self::Time).map_err(|_| {
                format!("{t:?}: expected \"first\", \"last\", \"next\" or an RFC 3339 time such as \"2026-12-01T00:00:00Z\"")
            }),
        }
    }
}

/// Broker backends: how a consumer's durable queue is declared and consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerQueue {
    /// `queue_type` (default classic).
    pub kind: QueueType,
    /// Quorum queues: deliveries after which the broker dead-letters a message itself (one
    /// that keeps killing the process); `None`: the broker's default.
    pub delivery_limit: Option<u32>,
    /// Of all the hubs consuming the queue, one at a time does (in order); another takes over
    /// when it goes.
    pub single_active_consumer: bool,
    /// Streams: where to start without a stored offset.
    pub offset: StreamOffset,
}

/// How a consumer's failed messages (transient error, timeout, panic) are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included, before the message is dead-lettered (default 3;
    /// 1: never retried).
    pub max_attempts: u32,
    /// Delay before the first retry (default 1 s); it doubles with each attempt.
    pub delay: Duration,
    /// The longest delay (default 1 min).
    pub max_delay: Duration,
    /// False (default): a message waiting for its retry is set aside and the consumer goes on
    /// with the next ones (at `concurrency = 1`, it comes back after them: order is not kept).
    /// True: the worker waits for the retry and tries again before taking the next message
    /// (strict order at `concurrency = 1`; the queue waits behind a failing message).
    pub in_order: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            in_order: false,
        }
    }
}

impl RetryPolicy {
    /// The delay before the attempt after attempt `attempt` (1-based) of the message with id
    /// `id`: `delay` doubled per attempt up to `max_delay`, plus a jitter of 0 to 20 % taken
    /// from the id, so messages that failed together do not all come back at once, and the
    /// configured delay is never shortened. At least `asked` (the consumer's own
    /// [`ConsumeError::retry_after`](crate::ConsumeError::retry_after)), if given, up to
    /// `max_delay`: a peer's `Retry-After: 3600` does not hold a message (and, on AMQP, its
    /// unacknowledged delivery) longer than the consumer allows.
    pub fn delay_after(&self, attempt: u32, id: &str, asked: Option<Duration>) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let base = self.delay.saturating_mul(factor).min(self.max_delay);
        // FNV-1a of the id and the attempt: spread, stable per message (tests can predict it).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.bytes().chain(attempt.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let jitter = base.mul_f64((h % 1000) as f64 / 5000.0);
        let with_jitter = base.saturating_add(jitter);
        asked.map_or(with_jitter, |a| with_jitter.max(a.min(self.max_delay)))
    }
}

/// A token bucket: at most `burst` calls at once, refilled at `rate` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Calls allowed per `per` (at least 1).
    pub rate: u32,
    /// The period (longer than zero).
    pub per: Duration,
    /// Calls allowed at once after a quiet moment (at least 1; default: `rate`).
    pub burst: u32,
}

impl RateLimit {
    /// The time one call's token takes to come back: `per / rate`.
    pub fn interval(&self) -> Duration {
        self.per / self.rate.max(1)
    }
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        Self {
            concurrency: 1,
            queue_capacity: 1024,
            queue_max_bytes: None,
            when_full: WhenFull::Block,
            timeout: None,
            durable: false,
            queue: None,
            retry: None,
            rate_limit: None,
            batch_size: 1,
            batch_delay: Duration::ZERO,
            broker_queue: BrokerQueue::default(),
        }
    }
}
