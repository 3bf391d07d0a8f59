//! Routes each delivery to every matching consumer's bounded queue; runs each consumer on its own
//! tasks; settles deliveries; measures backlogs.
//!
//! - `intake.rs`: routing and queueing (`Intake`), one path for a delivery and a batch;
//! - `lifecycle.rs`: starting workers, closing intake, the shutdown drain;
//! - `gauges.rs`: each consumer's state and its series, read consistently at scrape time;
//! - `queue.rs`, `worker.rs`, `ticket.rs`, `stats.rs`, `catch_up.rs`, `route_cache.rs`: the
//!   parts those use.

mod batch;
mod catch_up;
mod failures;
mod gauges;
mod intake;
mod lifecycle;
mod queue;
mod redeliver;
mod route_cache;
mod stats;
mod status;
mod throttle;
mod ticket;
mod worker;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use metrics::Counter;
use tokio::task::JoinHandle;
#[cfg(test)]
use tokio::time::Instant;

use crate::dead_letter::DeadLetterSink;
use crate::metrics::{BackendCounters, ConsumerMetrics, DeadLetterCounters, Registry};
use failures::Failures;
use hub_core::topic::PatternSet;
use hub_core::{Consumer, ConsumerOptions, Context, Pattern, Subscription, SubscriptionId};
use queue::{ByteBudget, Queue};
use stats::WorkerStats;
use throttle::Throttle;

pub use gauges::ConsumerState;
pub use intake::Intake;
pub use lifecycle::DrainReport;
pub use queue::TailEntry;
pub use redeliver::RedeliverError;
pub use status::{
    COARSE_EVERY, COARSE_SAMPLES, ConsumerStatus, FINE_SAMPLES, History, LastError, Outcomes,
    RunState, Sample, UnknownConsumer,
};

/// The default `[hub] max_queued_bytes`: 1 GiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 30;

/// Index of a backend registered with a [`DispatcherBuilder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendIndex(usize);

/// Collects backends and consumers, then builds a [`Dispatcher`].
pub struct DispatcherBuilder {
    registry: Registry,
    backends: Vec<BackendCounters>,
    /// Per backend: its id, and whether it redelivers failed messages itself.
    backend_ids: Vec<(Arc<str>, bool)>,
    hub_name: Arc<str>,
    /// Consumers with no `retry` of their own hand every verdict to their backend, even one
    /// that does not redeliver (a test kit's choice).
    verdicts_to_backend: bool,
    slots: Vec<Slot>,
    /// `[hub] max_queued_bytes`, shared by every consumer's queue.
    budget: Arc<ByteBudget>,
    /// Messages kept per consumer for the live tail (0: off), and the bytes of each text.
    live_tail: (usize, usize),
}

impl DispatcherBuilder {
    /// Registers backend `id`, whose deliveries will enter through [`Dispatcher::intake`]; its
    /// series are registered now.
    pub fn backend(&mut self, id: &str) -> BackendIndex {
        self.backends
            .push(BackendCounters::register(&self.registry, id));
        self.backend_ids.push((id.into(), false));
        BackendIndex(self.backends.len() - 1)
    }

    /// Says that `backend` redelivers failed messages and dead-letters rejected ones itself
    /// ([`Backend::redelivers`](hub_core::Backend::redelivers)); otherwise the hub does.
    ///
    /// # Panics
    /// If `backend` did not come from this builder.
    pub fn backend_redelivers(&mut self, backend: BackendIndex, redelivers: bool) {
        self.backend_ids[backend.0].1 = redelivers;
    }

    /// Consumers configured with no `retry` (`ConsumerOptions::retry` = `None`) hand each
    /// verdict to their backend as it is, as on a broker backend, even when the backend does not
    /// redeliver: what a test kit wants, to show a consumer's own verdict. Off by default.
    pub fn verdicts_to_backend(&mut self, on: bool) {
        self.verdicts_to_backend = on;
    }

    /// The most bytes queued in all (`[hub] max_queued_bytes`; default
    /// [`DEFAULT_MAX_QUEUED_BYTES`]): the sum of [`Message::byte_size`](hub_core::Message::byte_size)
    /// over every consumer's queue (each copy counted). Once reached, a queue that is not empty
    /// counts as full (its consumer's `when_full` applies) until the total falls below it.
    pub fn max_queued_bytes(&mut self, limit: usize) {
        self.budget.set_limit(limit);
    }

    /// Keeps the last `n` messages each consumer received, for the live tail
    /// ([`Dispatcher::tail`]; `[http] live_tail`), each text cut to `bytes` (`[http]
    /// live_tail_bytes`). 0 (the default): none, bodies can be private.
    pub fn live_tail(&mut self, n: usize, bytes: usize) {
        self.live_tail = (n, bytes);
    }

    /// The hub's name, written into its dead letters.
    pub fn hub_name(&mut self, name: &str) {
        self.hub_name = name.into();
    }

    /// Where consumer `id`'s dead letters go (when the hub keeps them: its backend does not
    /// redeliver). Without one they are logged, whole, at error level.
    ///
    /// # Panics
    /// If `id` did not come from this builder.
    pub fn dead_letters(&mut self, id: SubscriptionId, sink: Arc<dyn DeadLetterSink>) {
        let slot = &mut self.slots[id.index()];
        slot.failures.counters =
            DeadLetterCounters::register(&self.registry, &slot.name, Some(sink.kind()));
        slot.failures.sink = Some(sink);
    }

    /// The metric handles of a backend registered here, as handed to it in its context.
    ///
    /// # Panics
    /// If `backend` did not come from this builder.
    pub fn backend_metrics(&self, backend: BackendIndex) -> hub_core::BackendMetrics {
        self.backends[backend.0].shared.clone()
    }

    /// A publisher through `backend` that counts into its series.
    ///
    /// # Panics
    /// If `index` did not come from this builder.
    pub fn publisher(
        &self,
        index: BackendIndex,
        backend: Arc<dyn hub_core::Backend>,
    ) -> hub_core::Publisher {
        let m = &self.backends[index.0];
        hub_core::Publisher::new(backend, m.published.clone(), m.publish_failures.clone())
    }

    /// Registers a consumer fed by `backend`'s messages that match any of `patterns`.
    /// Its metric series are registered now.
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
        options.batch_size = options.batch_size.max(1);
        let name: Arc<str> = cx.name().into();
        let failures = Failures {
            policy: options.retry.unwrap_or_default(),
            local: true,
            sink: None,
            counters: DeadLetterCounters::register(&self.registry, &name, None),
            hub: Arc::clone(&self.hub_name),
            backend: Arc::clone(&self.backend_ids[backend.0].0),
        };
        let throttle = options
            .rate_limit
            .as_ref()
            .map(|l| Arc::new(Throttle::new(l)));
        let cx = match &throttle {
            Some(t) => cx.with_pacer(Arc::clone(t) as Arc<dyn hub_core::Pacer>),
            None => cx,
        };
        self.slots.push(Slot {
            throttle,
            last_error: Mutex::new(None),
            dead_lettered: AtomicU64::new(0),
            history: Mutex::new(status::HistoryRing::default()),
            failures,
            metrics: ConsumerMetrics::register(&self.registry, &name),
            queue: Queue::new(
                options.queue_capacity,
                options.queue_max_bytes.unwrap_or(usize::MAX),
                Arc::clone(&self.budget),
                options.concurrency,
                options.batch_size,
            ),
            name,
            backend: backend.0,
            patterns: patterns.into(),
            workers: (0..options.concurrency)
                .map(|_| WorkerStats::new())
                .collect(),
            options,
            consumer,
            cx,
            cut_off: AtomicU64::new(0),
            withdrawn: AtomicU64::new(0),
        });
        SubscriptionId::new(self.slots.len() - 1)
    }

    /// Finishes the routing table. Nothing runs until [`Dispatcher::start`].
    pub fn build(mut self) -> Dispatcher {
        for slot in &mut self.slots {
            slot.queue.set_tail(self.live_tail.0, self.live_tail.1);
            let passed_on = self.verdicts_to_backend && slot.options.retry.is_none();
            slot.failures.local = !self.backend_ids[slot.backend].1 && !passed_on;
            slot.failures.hub = Arc::clone(&self.hub_name);
        }
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
                unrouted: BackendCounters::unrouted(&self.registry),
                queued_bytes: crate::metrics::queued_bytes(&self.registry),
                budget: self.budget,
                epoch: clock.raw(),
                clock,
                #[cfg(test)]
                test_epoch: Instant::now(),
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
    /// Messages in flight when the shutdown grace expired and their worker was stopped.
    cut_off: AtomicU64,
    /// Copies dropped unstarted because their backend took the delivery back
    /// ([`hub_core::Acker::withdrawn`]).
    withdrawn: AtomicU64,
    /// The rate limit, if any (also the context's pacer), with the time waited for it.
    throttle: Option<Arc<Throttle>>,
    /// The last failure, for the status page.
    last_error: Mutex<Option<status::LastError>>,
    /// Messages given up on (dead-lettered by the hub, or rejected to the broker).
    dead_lettered: AtomicU64,
    /// Samples of the last hour.
    history: Mutex<status::HistoryRing>,
    /// Retries and dead letters.
    failures: Failures,
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
    backends: Vec<BackendCounters>,
    unrouted: Counter,
    /// `hub_dispatcher_queued_bytes`, set at scrape time from `budget`.
    queued_bytes: metrics::Gauge,
    budget: Arc<ByteBudget>,
    /// The dispatcher's clock: times on the hot path are nanoseconds after `epoch`, a `u64`
    /// subtracted without `Instant` arithmetic. The TSC where the CPU has an invariant one
    /// (12 ns a read on this project's 2 vCPU VM, against 34 ns for `Instant::now`; every
    /// message costs one per consumer), else the OS monotonic clock.
    clock: quanta::Clock,
    /// `clock.raw()` when the dispatcher was built.
    epoch: u64,
    /// Unit tests read tokio's clock instead, so that the paused clock drives every time the
    /// dispatcher measures (service times, ages, stalls).
    #[cfg(test)]
    test_epoch: Instant,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// Now, in nanoseconds after the dispatcher's epoch.
    #[cfg(not(test))]
    fn now_ns(&self) -> u64 {
        self.clock.delta_as_nanos(self.epoch, self.clock.raw())
    }

    /// Now, in nanoseconds after the dispatcher's epoch (tokio's clock, under test).
    #[cfg(test)]
    fn now_ns(&self) -> u64 {
        let _ = (&self.clock, self.epoch);
        u64::try_from(self.test_epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The per-consumer queues and tasks. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl Dispatcher {
    /// Starts collecting backends and consumers, whose series go to `registry`.
    pub fn builder(registry: Registry) -> DispatcherBuilder {
        DispatcherBuilder {
            registry,
            backends: Vec::new(),
            backend_ids: Vec::new(),
            hub_name: "hub".into(),
            verdicts_to_backend: false,
            slots: Vec::new(),
            budget: Arc::new(ByteBudget::new(DEFAULT_MAX_QUEUED_BYTES)),
            live_tail: (0, 0),
        }
    }

    /// The entry point for `backend`'s deliveries.
    pub fn intake(&self, backend: BackendIndex) -> Intake {
        Intake::new(Arc::clone(&self.shared), backend.0)
    }

    /// The subscriptions fed by `backend`, as handed to it in its context.
    pub fn subscriptions(&self, backend: BackendIndex) -> Vec<Subscription> {
        self.shared
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.backend == backend.0)
            .map(|(i, s)| Subscription {
                id: SubscriptionId::new(i),
                consumer: Arc::clone(&s.name),
                patterns: s.patterns.to_vec(),
                options: s.options.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
