//! Where deliveries enter: routing each to its consumers and queueing one copy per consumer.
//!
//! One path for one delivery and for a batch: routing and copying (`copies`), then queueing
//! without waiting (a batch groups each consumer's copies under one lock; a single delivery
//! queues each copy at once), then, under `block`, waiting for room with what a full queue
//! refused (`wait_for_room`). Every copy of every delivery, with its share of the settlement,
//! exists before the first wait: a cancelled call still settles every delivery (the copies it
//! never queued settle as [`Verdict::Requeue`] when dropped), and a full `block` consumer never
//! delays the others.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, TryLockError};

use tracing::debug;

use super::queue::{Offer, Queued};
use super::route_cache::RouteCache;
use super::ticket::{Settle, Ticket};
use super::{Matched, Shared, Slot};
use crate::metrics::BackendCounters;
use hub_core::topic::TopicWords;
use hub_core::{Acker, Admission, Delivery, DeliverySink, IntakeClosed, SubscriptionId, Verdict};

/// The entry point for one backend's deliveries. Cheap to clone; each clone keeps its own cache
/// of recent topics' routes, so give each receiving task its own clone.
pub struct Intake {
    pub(super) shared: Arc<Shared>,
    pub(super) backend: usize,
    pub(super) routes: RouteCache,
    /// The copies of the delivery (or batch) being handed over, kept between calls so a call
    /// allocates nothing; a call that finds it in use (an `Intake` shared between tasks) makes
    /// its own.
    pub(super) staging: Mutex<Option<Box<Staging>>>,
}

impl Intake {
    pub(super) fn new(shared: Arc<Shared>, backend: usize) -> Self {
        Self {
            shared,
            backend,
            routes: RouteCache::default(),
            staging: Mutex::new(None),
        }
    }
}

impl Clone for Intake {
    fn clone(&self) -> Self {
        Self::new(Arc::clone(&self.shared), self.backend)
    }
}

/// Copies of the deliveries being handed over, per consumer, in delivery order. Kept by the
/// intake between calls (cleared), so a call allocates nothing once warm.
#[derive(Default)]
pub(super) struct Staging {
    /// By consumer index.
    per_slot: Vec<VecDeque<Queued>>,
    /// The consumers with copies, in the order they got their first.
    touched: Vec<usize>,
}

impl Staging {
    fn push(&mut self, slot: usize, item: Queued) {
        if self.per_slot.len() <= slot {
            self.per_slot.resize_with(slot + 1, VecDeque::new);
        }
        let items = &mut self.per_slot[slot];
        if items.is_empty() {
            self.touched.push(slot);
        }
        items.push_back(item);
    }
}

impl Intake {
    /// Routes one delivery: [`Sink::deliver`](hub_core::Sink::deliver) on this intake.
    ///
    /// # Errors
    /// [`IntakeClosed`] once shutdown has begun.
    pub async fn deliver(&self, delivery: Delivery) -> Result<(), IntakeClosed> {
        admitted(self.offer(delivery)).await
    }

    /// Routes a batch: [`Sink::deliver_many`](hub_core::Sink::deliver_many) on this intake.
    ///
    /// # Errors
    /// [`IntakeClosed`] once shutdown has begun.
    pub async fn deliver_many(
        &self,
        batch: impl IntoIterator<Item = Delivery>,
    ) -> Result<(), IntakeClosed> {
        admitted(self.offer_many(&mut batch.into_iter())).await
    }
}

/// Waits out an admission.
async fn admitted(admission: Admission) -> Result<(), IntakeClosed> {
    match admission {
        Admission::Done(result) => result,
        Admission::Wait(room) => room.await,
    }
}

impl DeliverySink for Intake {
    /// The batch path's routing, copies and waiting (see [`DeliverySink::offer_many`]), each copy
    /// queued at once (a batch of one has nothing to group).
    fn offer(&self, delivery: Delivery) -> Admission {
        let sh = &*self.shared;
        sh.backends[self.backend].count_received(1);
        let mut closed = Ok(());
        let mut waiting = Vec::new();
        // The copies' bytes go to the hub-wide budget once, after the last copy.
        let mut pending = 0;
        self.copies(delivery, sh.now_ns(), |i, item| {
            let slot = &sh.slots[i];
            match slot
                .queue
                .try_push(item, slot.options.when_full, &mut pending)
            {
                Ok(offer) => closed = closed.and(settled(slot, offer)),
                Err(full) => waiting.push((i, full)),
            }
        });
        sh.budget.add(pending);
        self.admission(closed, waiting)
    }

    /// Locks each consumer's queue once for all its messages in the batch and wakes its worker
    /// at most once: the per-message cross-thread hand-off is what costs most. Every copy is
    /// made before anything waits, so a wait dropped early still settles every delivery.
    fn offer_many(&self, batch: &mut dyn Iterator<Item = Delivery>) -> Admission {
        let sh = &*self.shared;
        let mut staging = self.staging_buffer();
        let now = sh.now_ns();
        let mut received = 0;
        for delivery in batch {
            received += 1;
            self.copies(delivery, now, |i, item| staging.push(i, item));
        }
        sh.backends[self.backend].count_received(received);
        let mut closed = Ok(());
        let mut waiting = Vec::new();
        for &i in &staging.touched {
            let slot = &sh.slots[i];
            let items = &mut staging.per_slot[i];
            for offer in slot.queue.try_push_many(items, slot.options.when_full) {
                closed = closed.and(settled(slot, offer));
            }
            // Under `block`, what did not fit (rarely anything) waits.
            waiting.extend(items.drain(..).map(|item| (i, item)));
        }
        staging.touched.clear();
        if let Ok(mut keep) = self.staging.try_lock() {
            *keep = Some(staging);
        }
        self.admission(closed, waiting)
    }

    fn fork(&self) -> Box<dyn DeliverySink> {
        Box::new(self.clone())
    }
}

impl Intake {
    /// Done, or a wait for room for the copies a full `block` queue refused.
    fn admission(
        &self,
        closed: Result<(), IntakeClosed>,
        waiting: Vec<(usize, Queued)>,
    ) -> Admission {
        if waiting.is_empty() {
            return Admission::Done(closed);
        }
        let shared = Arc::clone(&self.shared);
        Admission::Wait(Box::pin(async move {
            closed.and(wait_for_room(&shared, waiting).await)
        }))
    }

    /// The staging area, empty: this intake's own, or a new one if another task is using it.
    fn staging_buffer(&self) -> Box<Staging> {
        let kept = match self.staging.try_lock() {
            Ok(mut buffer) => buffer.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => None,
        };
        kept.unwrap_or_default()
    }

    /// Routes one delivery and makes its copies, each with its share of the settlement, in
    /// consumer order: `queue(consumer index, copy)`. A delivery no consumer wants is settled
    /// here (acknowledged, counted as unrouted).
    fn copies(&self, delivery: Delivery, now: u64, mut queue: impl FnMut(usize, Queued)) {
        let (message, acker, target) = delivery.into_parts();
        let item = |message, settle| Queued {
            message,
            settle,
            enqueued_ns: now,
        };
        if let Some(i) = target.map(SubscriptionId::index) {
            let panics = &self.metrics().settle_panics;
            let settle =
                acker.map_or_else(Settle::none, |a| Settle::of(&Ticket::new(a, 1, panics)));
            queue(i, item(message, settle));
            return;
        }
        let matched = self.route(message.topic());
        let n = matched.len();
        if n == 0 {
            self.unrouted(acker);
            return;
        }
        let ticket = acker.map(|a| Ticket::new(a, n, &self.metrics().settle_panics));
        // n - 1 copies; the last consumer gets the delivery's own reference (one atomic
        // increment and decrement fewer per delivery).
        let mut own = Some(message);
        for (k, i) in matched.iter().enumerate() {
            let copy = if k + 1 == n { own.take() } else { own.clone() };
            let Some(copy) = copy else { break };
            let settle = ticket.as_ref().map_or_else(Settle::none, Settle::of);
            queue(i, item(copy, settle));
        }
    }

    /// The consumers whose patterns match `topic` (cached per intake).
    fn route(&self, topic: &str) -> Matched {
        let sh = &*self.shared;
        self.routes.get_or_insert(topic, || {
            let mut matched = Matched::new();
            sh.routes[self.backend]
                .for_each_match(&TopicWords::new(topic), |id| matched.insert(id));
            matched
        })
    }

    /// A delivery that matched no consumer: counted as unrouted and acknowledged.
    fn unrouted(&self, acker: Option<Box<dyn Acker>>) {
        self.shared.unrouted.increment(1);
        if let Some(acker) = acker {
            let ticket = Ticket::new(acker, 1, &self.metrics().settle_panics);
            Settle::of(&ticket).finish(Verdict::Ack);
        }
    }

    /// This backend's metrics.
    pub(crate) fn metrics(&self) -> &BackendCounters {
        &self.shared.backends[self.backend]
    }
}

/// What a push did, as the intake reports it: a message the policy dropped is settled as
/// rejected (and logged); one refused because the hub is closing makes the delivery fail (and
/// settles, when dropped, as a requeue).
fn settled(slot: &Slot, offer: Offer) -> Result<(), IntakeClosed> {
    match offer {
        Offer::Accepted => Ok(()),
        Offer::Dropped(victim) => {
            debug!(consumer = %slot.name, message_id = %victim.message.id(), "Queue full; message dropped.");
            let reason = format!("consumer {}: queue full, message dropped", slot.name);
            victim.settle.finish(Verdict::Reject { reason });
            Ok(())
        }
        Offer::Closed(_refused) => Err(IntakeClosed),
    }
}

/// Under `block`, the copies that found their queue full wait for room, one at a time, in
/// order. Each is stamped again when it enters its queue (its queue wait starts then). A wait
/// cut short, by the shutdown drain closing a queue or by its future being dropped (a
/// producer stopped at shutdown), queues the copies still waiting past their queues' limits,
/// closed or not, since their deliveries' other copies may be queued already: a consumer never
/// misses a message another consumer of it got.
async fn wait_for_room(
    sh: &Arc<Shared>,
    waiting: Vec<(usize, Queued)>,
) -> Result<(), IntakeClosed> {
    let mut left = Abandoned {
        shared: Arc::clone(sh),
        current: None,
        waiting: waiting.into(),
    };
    let mut closed = Ok(());
    while let Some((i, item)) = left.waiting.pop_front() {
        let slot = &sh.slots[i];
        let held = left.current.insert((i, Some(item)));
        let pushed = slot
            .queue
            .push_held(&mut held.1, slot.options.when_full, || sh.now_ns())
            .await;
        left.current = None;
        match pushed {
            Offer::Closed(item) => slot.queue.push_past_limits(*item),
            other => closed = closed.and(settled(slot, other)),
        }
    }
    closed
}

/// The copies a wait for room still holds (the one being pushed, then the rest); queued past
/// their limits if the wait is dropped.
struct Abandoned {
    shared: Arc<Shared>,
    current: Option<(usize, Option<Queued>)>,
    waiting: VecDeque<(usize, Queued)>,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let current = self.current.take().and_then(|(i, item)| Some((i, item?)));
        for (i, mut item) in current.into_iter().chain(self.waiting.drain(..)) {
            let slot = &self.shared.slots[i];
            item.enqueued_ns = self.shared.now_ns();
            slot.queue.push_past_limits(item);
        }
    }
}
