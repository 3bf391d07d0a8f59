//! Each consumer's state, read consistently, and the series computed from it at scrape time.

use std::time::Duration;

use super::queue::Snapshot;
use super::stats::Totals;
use super::{BackendIndex, Dispatcher, Slot, catch_up};
use crate::metrics::HistogramParts;

/// A snapshot of one consumer's state.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerState {
    /// Consumer name.
    pub name: String,
    /// Queued, not started.
    pub backlog: usize,
    /// Bytes of those messages.
    pub backlog_bytes: usize,
    /// Being handled (never more than the consumer's concurrency).
    pub in_flight: usize,
    /// Failed, waiting out their retry delay (kept by the hub; each holds a place in the
    /// queue).
    pub retry_waiting: usize,
    /// Finished (any outcome).
    pub completed: u64,
    /// Age of the oldest queued message.
    pub oldest_age: Duration,
    /// Estimated seconds to work off the backlog (see the metric).
    pub catch_up_seconds: f64,
    /// Paused by an operator ([`Dispatcher::pause`]).
    pub paused: bool,
}

/// One consumer's counts at one moment, consistent with each other.
pub(super) struct Counts {
    pub queue: Snapshot,
    pub totals: Totals,
    /// Taken by a worker and neither finished nor cut off.
    pub in_flight: u64,
    /// Cut off by shutdown: cleared from the queue unstarted, or stopped in flight.
    pub shutdown_dropped: u64,
    /// Dropped unstarted: the backend took the delivery back and delivers it again.
    pub withdrawn: u64,
}

impl Slot {
    /// The queue's counts and the workers' totals, read under the queue's lock: no message
    /// is queued or taken meanwhile, and each worker has at most one message in hand, so
    /// `in_flight` is between 0 and the concurrency and
    /// `received + retried = processed + dropped + shutdown_dropped + withdrawn + backlog +
    /// in_flight + retry_waiting` holds exactly (each attempt is processed once; a retry is
    /// taken again).
    pub(super) fn counts(&self) -> Counts {
        use std::sync::atomic::Ordering::Relaxed;
        let (queue, (totals, cut_off, withdrawn)) = self.queue.snapshot_with(|| {
            let totals = Totals::of(&self.workers);
            (
                totals,
                self.cut_off.load(Relaxed),
                self.withdrawn.load(Relaxed),
            )
        });
        Counts {
            in_flight: queue
                .taken
                .saturating_sub(totals.completed())
                .saturating_sub(cut_off)
                .saturating_sub(withdrawn),
            shutdown_dropped: queue.cleared + cut_off,
            withdrawn,
            queue,
            totals,
        }
    }
}

impl Dispatcher {
    /// Recomputes every consumer's series (backlog, in flight, oldest age, catch-up, and the
    /// exact counts) from the queues now. Call before rendering metrics.
    pub fn refresh_gauges(&self) {
        for b in &self.shared.backends {
            b.flush();
        }
        self.shared
            .queued_bytes
            .set(self.shared.budget.used() as f64);
        for slot in &self.shared.slots {
            let (state, counts) = self.state_of(slot);
            let m = &slot.metrics;
            let [ok, transient, invalid, timeout, panic] = counts.totals.outcomes;
            for (counter, count) in [
                (&m.received, counts.queue.received),
                (&m.ok, ok),
                (&m.transient, transient),
                (&m.invalid, invalid),
                (&m.timeout, timeout),
                (&m.panic, panic),
                (&m.dropped, counts.queue.dropped),
                (&m.dropped_shutdown, counts.shutdown_dropped),
                (&m.dropped_withdrawn, counts.withdrawn),
                (&m.retries, counts.queue.retried),
            ] {
                counter.absolute(count);
            }
            m.backlog.set(state.backlog as f64);
            m.backlog_bytes.set(state.backlog_bytes as f64);
            m.in_flight.set(state.in_flight as f64);
            m.retry_waiting.set(state.retry_waiting as f64);
            m.oldest_age.set(state.oldest_age.as_secs_f64());
            m.catch_up.set(state.catch_up_seconds);
            m.paused.set(if state.paused { 1.0 } else { 0.0 });
        }
    }

    /// Appends the two duration histograms of every consumer, in Prometheus text format (part
    /// of [`MetricsHandle::render`](crate::MetricsHandle::render)).
    pub(crate) fn render_histograms_into(&self, out: &mut String) {
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
        crate::metrics::render_histograms(out, &parts);
        let throttled: Vec<(&str, f64)> = self
            .shared
            .slots
            .iter()
            .filter_map(|s| Some((&*s.name, s.throttle.as_ref()?.waited().as_secs_f64())))
            .collect();
        crate::metrics::render_seconds_counter(out, &throttled);
    }

    /// Messages backend `backend` has delivered so far (`hub_backend_received_messages_total`,
    /// exact).
    pub fn backend_received(&self, backend: BackendIndex) -> u64 {
        self.shared.backends[backend.0].received()
    }

    /// Every consumer's state now.
    pub fn states(&self) -> Vec<ConsumerState> {
        self.shared
            .slots
            .iter()
            .map(|slot| self.state_of(slot).0)
            .collect()
    }

    /// One consumer's state, with the counts it came from.
    pub(super) fn state_of(&self, slot: &Slot) -> (ConsumerState, Counts) {
        let counts = slot.counts();
        let now_ns = self.shared.now_ns();
        let completed = counts.totals.completed();
        let mean = counts.totals.service;
        // Progress is a completion, or the start of the work in hand (a consumer that was idle
        // and just got work has not stalled); with nothing in hand, the oldest queued message.
        let began = counts
            .totals
            .busy_since_ns
            .or(counts.queue.oldest_ns)
            .unwrap_or(now_ns);
        let progress = counts
            .totals
            .last_completed_ns
            .map_or(began, |l| l.max(began));
        let stalled_for = Duration::from_nanos(now_ns.saturating_sub(progress));
        let state = ConsumerState {
            name: slot.name.to_string(),
            backlog: counts.queue.len,
            backlog_bytes: counts.queue.bytes,
            in_flight: usize::try_from(counts.in_flight).unwrap_or(usize::MAX),
            retry_waiting: counts.queue.delayed,
            completed,
            oldest_age: counts.queue.oldest_ns.map_or(Duration::ZERO, |t| {
                Duration::from_nanos(now_ns.saturating_sub(t))
            }),
            catch_up_seconds: catch_up::catch_up_seconds(
                counts.queue.len + counts.queue.delayed,
                slot.options.concurrency,
                mean,
                stalled_for,
            ),
            paused: counts.queue.paused,
        };
        (state, counts)
    }
}
