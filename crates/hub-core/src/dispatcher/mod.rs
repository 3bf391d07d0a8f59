//! Routes each delivery to every matching consumer's bounded queue; runs each consumer on its own
//! tasks; settles deliveries; measures backlogs.

mod queue;
mod rate;
mod route_cache;
mod stats;
mod ticket;
mod worker;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::Counter;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::metrics::{BackendMetrics, ConsumerMetrics, DISPATCHER_UNROUTED, HistogramParts};
use crate::topic::{PatternSet, TopicWords};
use crate::{
    Acker, Consumer, ConsumerOptions, Context, Delivery, Message, Pattern, Subscription,
    SubscriptionId, Verdict,
};
use queue::{Offer, Queue, Queued};
use rate::Rate;
use route_cache::RouteCache;
use stats::{Totals, WorkerStats};
use ticket::{Settle, Ticket};

/// Index of a backend registered with a [`DispatcherBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendIndex(usize);

/// Collects backends and consumers, then builds a [`Dispatcher`].
#[derive(Default)]
pub struct DispatcherBuilder {
    backends: Vec<BackendMetrics>,
    slots: Vec<Slot>,
}

impl DispatcherBuilder {
    /// Registers a backend whose deliveries will enter through [`Dispatcher::intake`].
    pub fn backend(&mut self, metrics: BackendMetrics) -> BackendIndex {
        self.backends.push(metrics);
        BackendIndex(self.backends.len() - 1)
    }

    /// Registers a consumer fed by `backend`'s messages that match any of `patterns`.
    /// Its metric series are registered now, with the current recorder.
    ///
    /// # Panics
    /// If `backend` did not come from this builder.
    pub fn consumer(
        &mut self,
        backend: BackendIndex,
        patterns: Vec<Pattern>,
        mut options: ConsumerOptions,
        consumer: Arc<dyn Consumer>,
        cx: Context,
    ) -> SubscriptionId {
        assert!(backend.0 < self.backends.len(), "unknown backend index");
        options.concurrency = options.concurrency.max(1);
        options.queue_capacity = options.queue_capacity.max(1);
        let name: Arc<str> = cx.name().into();
        let now = Instant::now();
        self.slots.push(Slot {
            metrics: ConsumerMetrics::register(&name),
            queue: Queue::new(options.queue_capacity, options.concurrency),
            name,
            backend: backend.0,
            patterns: patterns.into(),
            workers: (0..options.concurrency)
                .map(|_| WorkerStats::new())
                .collect(),
            options,
            consumer,
            cx,
            rate: Mutex::new(Rate::new(now)),
        });
        SubscriptionId(self.slots.len() - 1)
    }

    /// Finishes the routing table. Nothing runs until [`Dispatcher::start`].
    pub fn build(self) -> Dispatcher {
        let clock = quanta::Clock::new();
        let mut routes = vec![PatternSet::new(); self.backends.len()];
        for (i, slot) in self.slots.iter().enumerate() {
            for p in slot.patterns.iter() {
                routes[slot.backend].insert(p, u32::try_from(i).unwrap_or(u32::MAX));
            }
        }
        Dispatcher {
            shared: Arc::new(Shared {
                slots: self.slots,
                routes,
                backends: self.backends,
                unrouted: metrics::counter!(DISPATCHER_UNROUTED),
                epoch: clock.raw(),
                clock,
                workers: Mutex::new(Vec::new()),
            }),
        }
    }
}

pub(crate) struct Slot {
    name: Arc<str>,
    backend: usize,
    patterns: Box<[Pattern]>,
    options: ConsumerOptions,
    consumer: Arc<dyn Consumer>,
    cx: Context,
    queue: Queue,
    metrics: ConsumerMetrics,
    /// One block per worker (`options.concurrency`).
    workers: Box<[WorkerStats]>,
    rate: Mutex<Rate>,
}

/// Consumer indices matched by one delivery, deduplicated; on the stack up to 256 consumers.
#[derive(Clone)]
struct Matched {
    inline: [u64; 4],
    spill: Vec<u64>,
    /// Bits set, kept as they are set: read once per delivery.
    count: usize,
}

impl Matched {
    fn new() -> Self {
        Self {
            inline: [0; 4],
            spill: Vec::new(),
            count: 0,
        }
    }

    fn insert(&mut self, id: u32) {
        let (word, bit) = ((id / 64) as usize, id % 64);
        let slot = if word < 4 {
            &mut self.inline[word]
        } else {
            if self.spill.len() <= word - 4 {
                self.spill.resize(word - 3, 0);
            }
            &mut self.spill[word - 4]
        };
        self.count += usize::from(*slot & 1 << bit == 0);
        *slot |= 1 << bit;
    }

    fn len(&self) -> usize {
        self.count
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.inline
            .iter()
            .chain(&self.spill)
            .enumerate()
            .flat_map(|(w, &bits)| {
                let mut rest = bits;
                std::iter::from_fn(move || {
                    if rest == 0 {
                        return None;
                    }
                    let b = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    Some(w * 64 + b)
                })
            })
    }
}

pub(crate) struct Shared {
    slots: Vec<Slot>,
    /// Per backend: every pattern of the consumers it feeds, by consumer index.
    routes: Vec<PatternSet>,
    backends: Vec<BackendMetrics>,
    unrouted: Counter,
    /// The dispatcher's clock: times on the hot path are nanoseconds after `epoch`, a `u64`
    /// subtracted without `Instant` arithmetic. The TSC where the CPU has an invariant one
    /// (12 ns a read on this project's 2 vCPU VM, against 34 ns for `Instant::now`; every
    /// message costs one per consumer), else the OS monotonic clock.
    clock: quanta::Clock,
    /// `clock.raw()` when the dispatcher was built.
    epoch: u64,
    workers: Mutex<Vec<(usize, JoinHandle<()>)>>,
}

impl Shared {
    /// Now, in nanoseconds after the dispatcher's epoch.
    fn now_ns(&self) -> u64 {
        self.clock.delta_as_nanos(self.epoch, self.clock.raw())
    }
}

/// The per-consumer queues and tasks. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// The entry point for one backend's deliveries. Cheap to clone; each clone keeps its own cache
/// of recent topics' routes, so give each receiving task its own clone.
pub struct Intake {
    shared: Arc<Shared>,
    backend: usize,
    routes: RouteCache,
}

impl Clone for Intake {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            backend: self.backend,
            routes: RouteCache::default(),
        }
    }
}

/// The hub is shutting down and takes no more messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hub is shutting down and takes no more messages")]
pub struct IntakeClosed;

impl Intake {
    /// Routes one delivery to every matching consumer (or to its target subscription).
    ///
    /// Returns at once unless a matching consumer with `when_full = "block"` is full: then it
    /// waits for room, which is how backpressure reaches the backend.
    ///
    /// # Errors
    /// [`IntakeClosed`] once shutdown has begun; the delivery is settled as a retry.
    pub async fn deliver(&self, delivery: Delivery) -> Result<(), IntakeClosed> {
        let sh = &*self.shared;
        sh.backends[self.backend].count_received(1);
        let Delivery {
            message,
            acker,
            target,
        } = delivery;
        let now = sh.now_ns();
        if let Some(SubscriptionId(i)) = target {
            let settle = match acker {
                Some(a) => Settle::of(&Ticket::new(a, 1)),
                None => Settle::none(),
            };
            return offer(&sh.slots[i], message, settle, now).await;
        }
        let matched = self.route(message.topic());
        let n = matched.len();
        if n == 0 {
            self.unrouted(acker);
            return Ok(());
        }
        let ticket = acker.map(|a| Ticket::new(a, n));
        let mut closed = Ok(());
        // n - 1 copies; the last consumer gets the delivery's own reference (one atomic
        // increment and decrement fewer per delivery).
        let mut own = Some(message);
        for (k, i) in matched.iter().enumerate() {
            let copy = if k + 1 == n { own.take() } else { own.clone() };
            let Some(copy) = copy else { break };
            let settle = ticket.as_ref().map_or_else(Settle::none, Settle::of);
            closed = closed.and(offer(&sh.slots[i], copy, settle, now).await);
        }
        closed
    }

    /// Routes several deliveries, as [`Intake::deliver`] would one after the other (same order
    /// for each consumer, same `when_full` policies, same counts), but locks each consumer's
    /// queue once for all its messages in the batch and wakes its worker at most once. A
    /// receiving task that has several messages ready (a socket drained without waiting) should
    /// hand them over this way: the per-message cross-thread hand-off is what costs most.
    ///
    /// A full consumer with `when_full = "block"` makes the call wait for room, as `deliver`
    /// does; every other consumer gets its share of the batch first.
    ///
    /// # Errors
    /// [`IntakeClosed`] once shutdown has begun; what was not queued is settled as a retry.
    pub async fn deliver_many(
        &self,
        batch: impl IntoIterator<Item = Delivery>,
    ) -> Result<(), IntakeClosed> {
        let sh = &*self.shared;
        let now = sh.now_ns();
        let batch = batch.into_iter();
        // A consumer's share is sized for the whole batch at its first message: growing 4, 8,
        // 16, 32, 64 reallocated five times per consumer per batch.
        let expected = batch.size_hint().0;
        let mut per_slot: Vec<VecDeque<Queued>> = Vec::new();
        let mut stage = |i: usize, message: Message, settle: Settle| {
            if per_slot.len() <= i {
                per_slot.resize_with(i + 1, VecDeque::new);
            }
            let staged = &mut per_slot[i];
            if staged.capacity() == 0 {
                staged.reserve_exact(expected.clamp(1, 1024));
            }
            staged.push_back(Queued {
                message,
                settle,
                enqueued_ns: now,
            });
        };
        let mut received = 0;
        for delivery in batch {
            received += 1;
            let Delivery {
                message,
                acker,
                target,
            } = delivery;
            if let Some(SubscriptionId(i)) = target {
                let settle = acker.map_or_else(Settle::none, |a| Settle::of(&Ticket::new(a, 1)));
                stage(i, message, settle);
                continue;
            }
            let matched = self.route(message.topic());
            let n = matched.len();
            if n == 0 {
                self.unrouted(acker);
                continue;
            }
            let ticket = acker.map(|a| Ticket::new(a, n));
            let mut own = Some(message);
            for (k, i) in matched.iter().enumerate() {
                let copy = if k + 1 == n { own.take() } else { own.clone() };
                let Some(copy) = copy else { break };
                stage(
                    i,
                    copy,
                    ticket.as_ref().map_or_else(Settle::none, Settle::of),
                );
            }
        }
        sh.backends[self.backend].count_received(received);
        let mut closed = Ok(());
        let mut waiting = Vec::new();
        for (i, mut entries) in per_slot.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let slot = &sh.slots[i];
            for refused in slot
                .queue
                .try_push_many(&mut entries, slot.options.when_full)
            {
                closed = closed.and(settled(slot, refused));
            }
            if !entries.is_empty() {
                waiting.push((slot, entries));
            }
        }
        // Under `block`, what did not fit waits for room, one message at a time, once every
        // other consumer has its share of the batch.
        for (slot, entries) in waiting {
            for entry in entries {
                let pushed = slot.queue.push(entry, slot.options.when_full).await;
                closed = closed.and(settled(slot, pushed));
            }
        }
        closed
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
            acker.settle(Verdict::Ack);
        }
    }

    /// This backend's metrics.
    pub fn metrics(&self) -> &BackendMetrics {
        &self.shared.backends[self.backend]
    }
}

async fn offer(
    slot: &Slot,
    message: Message,
    settle: Settle,
    now_ns: u64,
) -> Result<(), IntakeClosed> {
    let item = Queued {
        message,
        settle,
        enqueued_ns: now_ns,
    };
    settled(slot, slot.queue.push(item, slot.options.when_full).await)
}

/// What a push did, as the intake reports it: a message the policy dropped is settled as
/// rejected (and logged); one refused because the hub is closing makes the delivery fail.
fn settled(slot: &Slot, offer: Offer) -> Result<(), IntakeClosed> {
    match offer {
        Offer::Accepted => Ok(()),
        Offer::Dropped(victim) => {
            debug!(consumer = %slot.name, message_id = %victim.message.id(), "Queue full; message dropped.");
            victim.settle.finish(Verdict::Reject {
                reason: format!("consumer {}: queue full, message dropped", slot.name),
            });
            Ok(())
        }
        Offer::Closed(_refused) => Err(IntakeClosed),
    }
}

/// A snapshot of one consumer's state.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerState {
    /// Consumer name.
    pub name: String,
    /// Queued, not started.
    pub backlog: usize,
    /// Being handled.
    pub in_flight: usize,
    /// Finished (any outcome).
    pub completed: u64,
    /// Age of the oldest queued message.
    pub oldest_age: Duration,
    /// Estimated seconds to work off the backlog (see the metric).
    pub catch_up_seconds: f64,
}

/// What shutdown left undone, per consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// `(consumer, queued messages never started, messages cut off while in flight)` for every
    /// consumer that did not finish; empty when everything drained in time.
    pub unfinished: Vec<(String, usize, usize)>,
}

impl DrainReport {
    /// True when every queued and in-flight message finished.
    pub fn is_clean(&self) -> bool {
        self.unfinished.is_empty()
    }
}

impl Dispatcher {
    /// Starts collecting backends and consumers.
    pub fn builder() -> DispatcherBuilder {
        DispatcherBuilder::default()
    }

    /// The entry point for `backend`'s deliveries.
    pub fn intake(&self, backend: BackendIndex) -> Intake {
        Intake {
            shared: Arc::clone(&self.shared),
            backend: backend.0,
            routes: RouteCache::default(),
        }
    }

    /// The subscriptions fed by `backend`, as handed to it in its context.
    pub fn subscriptions(&self, backend: BackendIndex) -> Vec<Subscription> {
        self.shared
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.backend == backend.0)
            .map(|(i, s)| Subscription {
                id: SubscriptionId(i),
                consumer: Arc::clone(&s.name),
                patterns: s.patterns.to_vec(),
                options: s.options.clone(),
            })
            .collect()
    }

    /// Spawns each consumer's workers on the current tokio runtime.
    pub fn start(&self) {
        let mut workers = self
            .shared
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (i, slot) in self.shared.slots.iter().enumerate() {
            for w in 0..slot.workers.len() {
                let shared = Arc::clone(&self.shared);
                let span = tracing::info_span!("consumer", consumer = %slot.name);
                let task = tracing::Instrument::instrument(worker::run(shared, i, w), span);
                workers.push((i, tokio::spawn(task)));
            }
        }
    }

    /// Refuses new deliveries from now on; queued messages still run.
    pub fn close_intake(&self) {
        for slot in &self.shared.slots {
            slot.queue.close();
        }
    }

    /// Closes intake, then waits up to `grace` for every queued and in-flight message to finish.
    /// What is still unfinished then is cut off, settled as a retry, and reported.
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        self.close_intake();
        let workers: Vec<_> = std::mem::take(
            &mut *self
                .shared
                .workers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let deadline = Instant::now() + grace;
        let mut report = DrainReport::default();
        let mut pending = Vec::new();
        for (i, mut handle) in workers {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                pending.push((i, handle));
            }
        }
        if !pending.is_empty() {
            for (i, slot) in self.shared.slots.iter().enumerate() {
                if pending.iter().any(|(p, _)| *p == i) {
                    let queued = slot.queue.snapshot().len;
                    let in_flight =
                        usize::try_from(Totals::of(&slot.workers).in_flight).unwrap_or(usize::MAX);
                    warn!(consumer = %slot.name, queued, in_flight, "Shutdown grace expired; cutting off unfinished messages.");
                    report
                        .unfinished
                        .push((slot.name.to_string(), queued, in_flight));
                }
            }
            for (_, handle) in &pending {
                handle.abort();
            }
            for (_, handle) in pending {
                let _ = handle.await;
            }
            for slot in &self.shared.slots {
                slot.queue.clear();
            }
        }
        self.refresh_gauges();
        report
    }

    /// Recomputes every consumer's gauges (backlog, in flight, oldest age, catch-up) from the
    /// queues now. Call before rendering metrics.
    pub fn refresh_gauges(&self) {
        for b in &self.shared.backends {
            b.flush();
        }
        let now = Instant::now();
        for slot in &self.shared.slots {
            let (state, queue, totals) = self.state_of(slot, now);
            let m = &slot.metrics;
            let [ok, error, timeout, panic] = totals.outcomes;
            for (counter, count) in [
                (&m.received, queue.received),
                (&m.ok, ok),
                (&m.error, error),
                (&m.timeout, timeout),
                (&m.panic, panic),
                (&m.dropped, queue.dropped),
            ] {
                counter.absolute(count);
            }
            slot.metrics.backlog.set(state.backlog as f64);
            slot.metrics.in_flight.set(state.in_flight as f64);
            slot.metrics.oldest_age.set(state.oldest_age.as_secs_f64());
            slot.metrics.catch_up.set(state.catch_up_seconds);
        }
    }

    /// The two duration histograms of every consumer
    /// (`hub_consumer_processing_duration_seconds`, `hub_consumer_queue_wait_seconds`) in
    /// Prometheus text format; append it to the recorder's output when serving `/metrics`.
    pub fn render_histograms(&self) -> String {
        let mut out = String::new();
        let parts: Vec<HistogramParts<'_>> = self
            .shared
            .slots
            .iter()
            .map(|s| HistogramParts {
                consumer: &s.name,
                duration: s.workers.iter().map(|w| &w.duration).collect(),
                queue_wait: s.workers.iter().map(|w| &w.queue_wait).collect(),
            })
            .collect();
        crate::metrics::render_histograms(&mut out, &parts);
        out
    }

    /// Every consumer's state now.
    pub fn states(&self) -> Vec<ConsumerState> {
        let now = Instant::now();
        self.shared
            .slots
            .iter()
            .map(|slot| self.state_of(slot, now).0)
            .collect()
    }

    /// One consumer's state, with the queue snapshot and worker totals it came from. Reads the
    /// queue before the workers' counts, so a message a worker takes meanwhile is seen twice
    /// (queued and in flight) for one scrape rather than not at all; only the few instructions
    /// between a worker's pop and its `start` can hide one.
    fn state_of(&self, slot: &Slot, now: Instant) -> (ConsumerState, queue::Snapshot, Totals) {
        let queue = slot.queue.snapshot();
        let totals = Totals::of(&slot.workers);
        let now_ns = self.shared.now_ns();
        let completed = totals.completed();
        let rate = slot
            .rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sample(now, completed);
        let since_last = totals
            .last_completed_ns
            .map(|last| Duration::from_nanos(now_ns.saturating_sub(last)));
        let state = ConsumerState {
            name: slot.name.to_string(),
            backlog: queue.len,
            in_flight: usize::try_from(totals.in_flight).unwrap_or(usize::MAX),
            completed,
            oldest_age: queue.oldest_ns.map_or(Duration::ZERO, |t| {
                Duration::from_nanos(now_ns.saturating_sub(t))
            }),
            catch_up_seconds: rate::catch_up_seconds(queue.len, rate, since_last),
        };
        (state, queue, totals)
    }

    /// Runs each consumer's stop hook.
    pub async fn stop_consumers(&self) {
        for slot in &self.shared.slots {
            slot.consumer.stop(&slot.cx).await;
        }
    }

    /// Runs each consumer's start hook, in registration order.
    ///
    /// # Errors
    /// The first consumer name and error that failed.
    pub async fn start_consumers(&self) -> Result<(), (String, crate::BoxError)> {
        for slot in &self.shared.slots {
            slot.consumer
                .start(&slot.cx)
                .await
                .map_err(|e| (slot.name.to_string(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
