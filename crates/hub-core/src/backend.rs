//! The `Backend` trait: what feeds messages in and carries them out.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::metrics::BackendMetrics;
use crate::{BackendError, ConsumerOptions, Message, Pattern, PublishError, Sink};

/// The default `max_message_bytes` of the stock backends: 16 MiB, RabbitMQ 4's own default
/// `max_message_size`. A larger message is refused (counted in
/// `hub_backend_oversized_messages_total`, logged with its size and source) before it is
/// decoded, and on a broker dead-lettered with the reason.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A transport: delivers messages into the hub and publishes messages out.
///
/// A backend owns its connection and its reconnects: [`run`](Backend::run) returns `Ok` when
/// asked to stop and `Err` only for failures no reconnect can fix (a queue declared with other
/// arguments, say). Acknowledgements travel with each [`Delivery`] and are settled by the
/// dispatcher, never by the backend itself.
#[async_trait]
#[diagnostic::on_unimplemented(
    note = "implement `hub_core::Backend` with `#[async_trait::async_trait]`"
)]
pub trait Backend: Send + Sync + 'static {
    /// Connects, subscribes, and hands every message to `cx.sink` until `cx.shutdown` is
    /// cancelled; then stops taking new messages and returns. Publishing and settling deliveries
    /// must keep working after `run` returns, until [`close`](Backend::close).
    async fn run(&self, cx: BackendContext) -> Result<(), BackendError>;

    /// Publishes one message. `Ok` means the transport took it (for brokers with confirms: confirmed).
    async fn publish(&self, msg: &Message) -> Result<(), PublishError>;

    /// Releases connections after the hub has drained. Default: nothing to do.
    async fn close(&self) {}

    /// True when this backend redelivers a message settled with [`Verdict::Retry`] itself (a
    /// broker: AMQP republishes a copy after its backoff) and dead-letters one settled with
    /// [`Verdict::Reject`]. False (default): the hub keeps a failed message, gives it back to
    /// the consumer that failed it after the consumer's retry delay, and dead-letters it into
    /// the consumer's dead-letter sink; the backend then only ever sees the final verdict.
    fn redelivers(&self) -> bool {
        false
    }
}

/// What a backend is given when it starts.
pub struct BackendContext {
    /// The configured backend id (`[backends.<id>]`).
    pub id: Arc<str>,
    /// The hub's name (`[hub] name`), for naming durable queues.
    pub hub_name: Arc<str>,
    /// One entry per consumer bound to this backend.
    pub subscriptions: Vec<Subscription>,
    /// Where deliveries go.
    pub sink: Sink,
    /// Cancelled when the hub stops intake.
    pub shutdown: CancellationToken,
    /// Connection state and counters for this backend.
    pub metrics: BackendMetrics,
}

impl fmt::Debug for BackendContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendContext")
            .field("id", &self.id)
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

/// Identifies one consumer's subscription within the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(usize);

impl SubscriptionId {
    /// The subscription numbered `index` (the engine numbers them; a backend only passes them on).
    pub fn new(index: usize) -> Self {
        Self(index)
    }

    /// Its number.
    pub fn index(self) -> usize {
        self.0
    }
}

/// One consumer's interest in a backend's messages.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Pass to [`Delivery::for_subscription`] when the broker already routed the message to this
    /// consumer (one queue per consumer).
    pub id: SubscriptionId,
    /// The consumer's configured name.
    pub consumer: Arc<str>,
    /// The consumer's topic patterns.
    pub patterns: Vec<Pattern>,
    /// The consumer's dispatch options (a broker backend sizes its prefetch from them).
    pub options: ConsumerOptions,
}

/// One message from a backend, with how to acknowledge it. A delivery dropped before the hub
/// took it (a `deliver` future dropped before it ran) settles as [`Verdict::Requeue`].
pub struct Delivery {
    message: Message,
    acker: Unsettled,
    target: Option<SubscriptionId>,
}

/// A delivery's acker until the dispatcher takes it; dropped while still held, it settles the
/// delivery as [`Verdict::Requeue`] (never processed), so no path can lose a settlement.
struct Unsettled(Option<Box<dyn Acker>>);

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(acker) = self.0.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                acker.settle(Verdict::Requeue)
            }));
        }
    }
}

impl Delivery {
    /// A message with no acknowledgement (ZeroMQ, memory): routed to every matching consumer.
    pub fn new(message: Message) -> Self {
        Self {
            message,
            acker: Unsettled(None),
            target: None,
        }
    }

    /// A message the backend wants settled: `acker` is called once, after every consumer that
    /// received it has finished it.
    pub fn with_acker(message: Message, acker: Box<dyn Acker>) -> Self {
        Self {
            message,
            acker: Unsettled(Some(acker)),
            target: None,
        }
    }

    /// Delivers only to the given subscription's consumer (the broker did the routing).
    pub fn for_subscription(mut self, id: SubscriptionId) -> Self {
        self.target = Some(id);
        self
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, its acker (now the caller's to settle exactly once) and its target
    /// subscription: what a [`DeliverySink`](crate::DeliverySink) takes apart.
    pub fn into_parts(self) -> (Message, Option<Box<dyn Acker>>, Option<SubscriptionId>) {
        let Self {
            message,
            mut acker,
            target,
        } = self;
        (message, acker.0.take(), target)
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("acked", &self.acker.0.is_some())
            .field("target", &self.target)
            .finish()
    }
}

/// The dispatcher's verdict on a delivery, once every consumer that got it is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every consumer finished it OK (or none wanted it): acknowledge.
    Ack,
    /// A consumer failed in a way a retry may fix (transient error, timeout, panic): redeliver
    /// later, counting an attempt.
    Retry {
        /// Consumer name and error, for logs and headers.
        reason: String,
        /// The least delay the consumer asked for ([`ConsumeError::retry_after`](crate::ConsumeError::retry_after)),
        /// if any: the backend waits the longer of this and its backoff.
        delay: Option<std::time::Duration>,
    },
    /// The message cannot be processed (invalid message, dropped from a full queue): dead-letter.
    Reject {
        /// Consumer name and error, for logs and headers.
        reason: String,
    },
    /// Not processed: the hub stopped taking or handling messages before it finished (shutdown
    /// before it started, or cut off at the end of the grace period). Give it back to the
    /// source as it was (AMQP: `basic.nack` with requeue); it does not count as an attempt and
    /// is never republished.
    Requeue,
}

impl Verdict {
    /// Merge order when several consumers had the same delivery: the highest rank wins. A retry
    /// wins over everything (the consumer that failed gets its redelivery, counted); a requeue
    /// over a reject (a consumer that never ran it still gets it); a reject over an ack.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Ack => 0,
            Self::Reject { .. } => 1,
            Self::Requeue => 2,
            Self::Retry { .. } => 3,
        }
    }
}

/// Settles one delivery with its backend. Called exactly once per delivery, from any thread;
/// it must not block (hand the work to the backend's own task).
pub trait Acker: Send + Sync + 'static {
    /// Applies the dispatcher's verdict.
    fn settle(&self, verdict: Verdict);

    /// True once the backend can no longer settle this delivery and its source delivers it
    /// again on its own (AMQP: the channel it came on closed, so RabbitMQ put it back in the
    /// queue). A copy not yet started is then dropped instead of being handled twice (counted
    /// as dropped with reason `withdrawn`). Checked before each copy starts: keep it cheap.
    /// The default: never.
    fn withdrawn(&self) -> bool {
        false
    }
}

impl<F: Fn(Verdict) + Send + Sync + 'static> Acker for F {
    fn settle(&self, verdict: Verdict) {
        self(verdict)
    }
}
