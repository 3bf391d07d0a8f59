//! Where a backend hands its deliveries to the hub: a [`Sink`], defined here so that a
//! backend's delivery path names no engine type (a backend crate still registers its own metric
//! series through `hub_engine::metrics`, where every name lives).

use std::future::Future;
use std::pin::Pin;

use crate::Delivery;

/// The hub is shutting down and takes no more messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hub is shutting down and takes no more messages")]
pub struct IntakeClosed;

/// A wait for room, owned: dropping it settles the copies still waiting as
/// [`Verdict::Requeue`](crate::Verdict::Requeue).
pub type RoomWait = Pin<Box<dyn Future<Output = Result<(), IntakeClosed>> + Send + 'static>>;

/// What an implementation of [`DeliverySink`] answers for a delivery or a batch.
pub enum Admission {
    /// Every copy was queued (or dropped by its consumer's `when_full` policy), or the hub is
    /// closing (`Err`): nothing to wait for.
    Done(Result<(), IntakeClosed>),
    /// A consumer with `when_full = "block"` is full: every other copy is queued, and this
    /// future waits for room for the rest. This is how backpressure reaches the backend.
    Wait(RoomWait),
}

/// The hub side of a [`Sink`]: implemented by the engine (and by test doubles). A backend never
/// calls it directly; it holds a [`Sink`].
///
/// Split into a synchronous offer and an optional owned wait, so that the common case (room in
/// every queue) costs one dynamic call and no allocation.
pub trait DeliverySink: Send + Sync + 'static {
    /// Routes and queues one delivery.
    fn offer(&self, delivery: Delivery) -> Admission;

    /// Routes and queues several deliveries, in order, as [`offer`](Self::offer) would one
    /// after the other, but with each consumer's share queued at once.
    fn offer_many(&self, batch: &mut dyn Iterator<Item = Delivery>) -> Admission;

    /// A handle for another receiving task: same destination, its own per-task caches.
    fn fork(&self) -> Box<dyn DeliverySink>;
}

/// Where a backend delivers: given in [`BackendContext::sink`](crate::BackendContext::sink).
/// Cloning is cheap and gives the clone its own caches (of recent topics' routes): give each
/// receiving task its own clone.
pub struct Sink(Box<dyn DeliverySink>);

impl Sink {
    /// A sink backed by `inner` (the engine builds these; tests may too).
    pub fn new(inner: impl DeliverySink) -> Self {
        Self(Box::new(inner))
    }

    /// Routes one delivery to every matching consumer (or to its target subscription).
    ///
    /// Returns at once unless a matching consumer with `when_full = "block"` is full: then it
    /// waits for room. Every other consumer has its copy before the wait, and a wait cut short
    /// (the returned future dropped, or the queue closed by the shutdown drain) queues the
    /// copies still waiting past their queues' limits: a delivery reaches all the consumers it
    /// matched or none.
    ///
    /// # Errors
    /// [`IntakeClosed`] when the delivery arrives after shutdown has closed a matching
    /// consumer's queue; what was not queued is settled as
    /// [`Verdict::Requeue`](crate::Verdict::Requeue).
    pub async fn deliver(&self, delivery: Delivery) -> Result<(), IntakeClosed> {
        match self.0.offer(delivery) {
            Admission::Done(result) => result,
            Admission::Wait(room) => room.await,
        }
    }

    /// Routes several deliveries, as [`Sink::deliver`] would one after the other (same order
    /// for each consumer, same `when_full` policies, same counts), but queues each consumer's
    /// share under one lock and wakes its worker at most once. A receiving task that has several
    /// messages ready (a socket drained without waiting) should hand them over this way.
    ///
    /// # Errors
    /// As [`Sink::deliver`]; what was not queued is settled as
    /// [`Verdict::Requeue`](crate::Verdict::Requeue).
    pub async fn deliver_many(
        &self,
        batch: impl IntoIterator<Item = Delivery>,
    ) -> Result<(), IntakeClosed> {
        match self.0.offer_many(&mut batch.into_iter()) {
            Admission::Done(result) => result,
            Admission::Wait(room) => room.await,
        }
    }
}

impl Clone for Sink {
    fn clone(&self) -> Self {
        Self(self.0.fork())
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}
