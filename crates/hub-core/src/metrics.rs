//! Metric names, labels and handles: a user contract.
//!
//! Every series is registered once, when the hub is built, so the hot path touches only
//! pre-registered handles and a stuck consumer's series exist from the start (at 0).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `hub_consumer_backlog_messages` | gauge | `consumer` | queued, not yet started |
//! | `hub_consumer_in_flight_messages` | gauge | `consumer` | being handled now |
//! | `hub_consumer_oldest_message_age_seconds` | gauge | `consumer` | how long the oldest queued message has waited; 0 when empty |
//! | `hub_consumer_catch_up_seconds` | gauge | `consumer` | backlog × recent mean service time / concurrency; 0 when empty; `+Inf` while there is a backlog and nothing completes for max(3 × the mean service time, 1 s) |
//! | `hub_consumer_received_messages_total` | counter | `consumer` | messages routed to the consumer |
//! | `hub_consumer_processed_messages_total` | counter | `consumer`, `outcome` = `ok`\|`error`\|`timeout`\|`panic` | finished messages |
//! | `hub_consumer_dropped_messages_total` | counter | `consumer`, `reason` = `queue_full`\|`shutdown` | dropped by `when_full`; or cut off when the shutdown grace expired (queued or in flight; given back to the backend unprocessed) |
//! | `hub_consumer_processing_duration_seconds` | histogram | `consumer` | time in `consume` |
//! | `hub_consumer_queue_wait_seconds` | histogram | `consumer` | time from enqueue to start |
//! | `hub_backend_received_messages_total` | counter | `backend` | messages the backend delivered |
//! | `hub_backend_published_messages_total` | counter | `backend` | messages published through it |
//! | `hub_backend_publish_failures_total` | counter | `backend` | publishes that failed (unavailable, unroutable, unconfirmed) |
//! | `hub_backend_invalid_messages_total` | counter | `backend` | malformed input rejected by it |
//! | `hub_backend_connected` | gauge | `backend` | 1 when connected, else 0 |
//! | `hub_backend_settle_panics_total` | counter | `backend` | the backend's acknowledgement (`Acker::settle`) panicked (caught) |
//! | `hub_dispatcher_unrouted_messages_total` | counter | — | messages no consumer matched |
//!
//! The two histograms are kept by the dispatcher itself (fixed buckets, [`DURATION_BUCKETS`]) and
//! rendered by [`Dispatcher::render_histograms`](crate::Dispatcher::render_histograms) in
//! Prometheus text: recording every sample through a `metrics` recorder cost about a fifth of the
//! dispatch throughput. Everything else goes through the `metrics` facade.
//!
//! Gauges are computed from the queues when [`Dispatcher::refresh_gauges`](crate::Dispatcher::refresh_gauges)
//! runs: the hub calls it on every scrape and once a second, so they are true when scraped.
//! Topics never become labels. Invariant per consumer, exact in every scrape (the counts are
//! read together under the consumer's queue lock) and after shutdown:
//! `received = processed + dropped + backlog + in_flight`, with `in_flight` at most the
//! consumer's concurrency.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};

/// `hub_consumer_backlog_messages`
pub const CONSUMER_BACKLOG: &str = "hub_consumer_backlog_messages";
/// `hub_consumer_in_flight_messages`
pub const CONSUMER_IN_FLIGHT: &str = "hub_consumer_in_flight_messages";
/// `hub_consumer_oldest_message_age_seconds`
pub const CONSUMER_OLDEST_AGE: &str = "hub_consumer_oldest_message_age_seconds";
/// `hub_consumer_catch_up_seconds`
pub const CONSUMER_CATCH_UP: &str = "hub_consumer_catch_up_seconds";
/// `hub_consumer_received_messages_total`
pub const CONSUMER_RECEIVED: &str = "hub_consumer_received_messages_total";
/// `hub_consumer_processed_messages_total`
pub const CONSUMER_PROCESSED: &str = "hub_consumer_processed_messages_total";
/// `hub_consumer_dropped_messages_total`
pub const CONSUMER_DROPPED: &str = "hub_consumer_dropped_messages_total";
/// `hub_consumer_processing_duration_seconds`
pub const CONSUMER_DURATION: &str = "hub_consumer_processing_duration_seconds";
/// `hub_consumer_queue_wait_seconds`
pub const CONSUMER_QUEUE_WAIT: &str = "hub_consumer_queue_wait_seconds";
/// `hub_backend_received_messages_total`
pub const BACKEND_RECEIVED: &str = "hub_backend_received_messages_total";
/// `hub_backend_published_messages_total`
pub const BACKEND_PUBLISHED: &str = "hub_backend_published_messages_total";
/// `hub_backend_publish_failures_total`
pub const BACKEND_PUBLISH_FAILURES: &str = "hub_backend_publish_failures_total";
/// `hub_backend_invalid_messages_total`
pub const BACKEND_INVALID: &str = "hub_backend_invalid_messages_total";
/// `hub_backend_connected`
pub const BACKEND_CONNECTED: &str = "hub_backend_connected";
/// `hub_backend_settle_panics_total`
pub const BACKEND_SETTLE_PANICS: &str = "hub_backend_settle_panics_total";
/// `hub_dispatcher_unrouted_messages_total`
pub const DISPATCHER_UNROUTED: &str = "hub_dispatcher_unrouted_messages_total";

/// Histogram buckets (seconds) for the two `_seconds` histograms: 50 µs to 5 min.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Registers HELP text for every metric with the installed recorder. Call after installing it.
pub fn describe() {
    describe_gauge!(
        CONSUMER_BACKLOG,
        Unit::Count,
        "Messages queued for the consumer, not yet started."
    );
    describe_gauge!(
        CONSUMER_IN_FLIGHT,
        Unit::Count,
        "Messages the consumer is handling now."
    );
    describe_gauge!(
        CONSUMER_OLDEST_AGE,
        Unit::Seconds,
        "How long the oldest queued message has waited (0 when the queue is empty)."
    );
    describe_gauge!(
        CONSUMER_CATCH_UP,
        Unit::Seconds,
        "Time to work off the backlog at the recent mean service time (0 when empty, +Inf while nothing completes)."
    );
    describe_counter!(
        CONSUMER_RECEIVED,
        Unit::Count,
        "Messages routed to the consumer."
    );
    describe_counter!(
        CONSUMER_PROCESSED,
        Unit::Count,
        "Messages the consumer finished, by outcome."
    );
    describe_counter!(
        CONSUMER_DROPPED,
        Unit::Count,
        "Messages dropped: the consumer's queue was full, or shutdown cut them off."
    );
    describe_counter!(
        BACKEND_RECEIVED,
        Unit::Count,
        "Messages the backend delivered into the hub."
    );
    describe_counter!(
        BACKEND_PUBLISHED,
        Unit::Count,
        "Messages published through the backend."
    );
    describe_counter!(
        BACKEND_INVALID,
        Unit::Count,
        "Malformed messages the backend rejected."
    );
    describe_gauge!(
        BACKEND_CONNECTED,
        Unit::Count,
        "1 while the backend is connected, else 0."
    );
    describe_counter!(
        BACKEND_SETTLE_PANICS,
        Unit::Count,
        "Acknowledgements (the backend's Acker::settle) that panicked; caught."
    );
    describe_counter!(
        DISPATCHER_UNROUTED,
        Unit::Count,
        "Messages that matched no consumer."
    );
}

/// One consumer's series.
pub(crate) struct ConsumerMetrics {
    pub backlog: Gauge,
    pub in_flight: Gauge,
    pub oldest_age: Gauge,
    pub catch_up: Gauge,
    pub received: Counter,
    pub ok: Counter,
    pub error: Counter,
    pub timeout: Counter,
    pub panic: Counter,
    pub dropped: Counter,
    pub dropped_shutdown: Counter,
}

impl ConsumerMetrics {
    pub fn register(consumer: &str) -> Self {
        let processed = |outcome: &'static str| counter!(CONSUMER_PROCESSED, "consumer" => consumer.to_owned(), "outcome" => outcome);
        let m = Self {
            backlog: gauge!(CONSUMER_BACKLOG, "consumer" => consumer.to_owned()),
            in_flight: gauge!(CONSUMER_IN_FLIGHT, "consumer" => consumer.to_owned()),
            oldest_age: gauge!(CONSUMER_OLDEST_AGE, "consumer" => consumer.to_owned()),
            catch_up: gauge!(CONSUMER_CATCH_UP, "consumer" => consumer.to_owned()),
            received: counter!(CONSUMER_RECEIVED, "consumer" => consumer.to_owned()),
            ok: processed("ok"),
            error: processed("error"),
            timeout: processed("timeout"),
            panic: processed("panic"),
            dropped: counter!(CONSUMER_DROPPED, "consumer" => consumer.to_owned(), "reason" => "queue_full"),
            dropped_shutdown: counter!(CONSUMER_DROPPED, "consumer" => consumer.to_owned(), "reason" => "shutdown"),
        };
        // Series appear only once they hold a value: show every consumer from the start.
        for g in [&m.backlog, &m.in_flight, &m.oldest_age, &m.catch_up] {
            g.set(0.0);
        }
        for c in [
            &m.received,
            &m.ok,
            &m.error,
            &m.timeout,
            &m.panic,
            &m.dropped,
            &m.dropped_shutdown,
        ] {
            c.increment(0);
        }
        m
    }
}

/// One backend's series and connection state. Cheap to clone.
#[derive(Clone)]
pub struct BackendMetrics {
    received: Counter,
    received_count: Arc<AtomicU64>,
    pub(crate) published: Counter,
    pub(crate) publish_failures: Counter,
    invalid: Counter,
    settle_panics: Counter,
    connected_gauge: Gauge,
    connected: Arc<AtomicBool>,
}

impl BackendMetrics {
    /// Registers the series for backend `id` with the current recorder.
    pub fn register(id: &str) -> Self {
        let m = Self {
            received: counter!(BACKEND_RECEIVED, "backend" => id.to_owned()),
            received_count: Arc::new(AtomicU64::new(0)),
            published: counter!(BACKEND_PUBLISHED, "backend" => id.to_owned()),
            publish_failures: counter!(BACKEND_PUBLISH_FAILURES, "backend" => id.to_owned()),
            invalid: counter!(BACKEND_INVALID, "backend" => id.to_owned()),
            settle_panics: counter!(BACKEND_SETTLE_PANICS, "backend" => id.to_owned()),
            connected_gauge: gauge!(BACKEND_CONNECTED, "backend" => id.to_owned()),
            connected: Arc::new(AtomicBool::new(false)),
        };
        m.received.increment(0);
        m.published.increment(0);
        m.publish_failures.increment(0);
        m.invalid.increment(0);
        m.settle_panics.increment(0);
        m.connected_gauge.set(0.0);
        m
    }

    /// Counts `n` deliveries (a plain atomic; copied to the counter by [`BackendMetrics::flush`]).
    pub(crate) fn count_received(&self, n: u64) {
        self.received_count.fetch_add(n, Ordering::Relaxed);
    }

    /// Copies the exact delivery count into `hub_backend_received_messages_total`.
    pub(crate) fn flush(&self) {
        self.received
            .absolute(self.received_count.load(Ordering::Relaxed));
    }

    /// Records whether the backend is connected (gauge and readiness).
    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
        self.connected_gauge.set(if up { 1.0 } else { 0.0 });
    }

    /// Whether the backend last said it was connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Counts one malformed message the backend rejected.
    pub fn invalid(&self) {
        self.invalid.increment(1);
    }

    /// `hub_backend_settle_panics_total`: acknowledgements of this backend's that panicked
    /// (caught by the dispatcher).
    pub(crate) fn settle_panics(&self) -> &Counter {
        &self.settle_panics
    }
}

/// [`DURATION_BUCKETS`] in nanoseconds, for comparing a sample without floating point.
const BUCKET_NANOS: [u64; DURATION_BUCKETS.len()] = {
    let mut out = [0u64; DURATION_BUCKETS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (DURATION_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A fixed-bucket histogram of durations written by **one** task (a consumer's worker): a
/// sample is two plain loads and stores, no locked instruction. Readers (scrapes) may see a
/// sample's bucket before its sum; both only grow.
pub(crate) struct Buckets {
    /// Per bucket of [`DURATION_BUCKETS`] (not cumulative), then the overflow (+Inf) bucket.
    counts: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Buckets {
    pub fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one sample of `nanos` nanoseconds. Only the owning task may call this (single
    /// writer).
    pub fn record(&self, nanos: u64) {
        // Prometheus buckets are `le` (less than or equal): the first bound >= the value.
        let i = BUCKET_NANOS.partition_point(|&b| b < nanos);
        bump(&self.counts[i], 1);
        bump(&self.sum_nanos, nanos);
    }

    /// Appends `name{labels,le=..}` bucket, `_sum` and `_count` lines for the sum of `parts`
    /// (one histogram per worker of the consumer).
    pub fn render(parts: &[&Buckets], out: &mut String, name: &str, label: &str, value: &str) {
        let value = escape_label(value);
        let mut cumulative = 0u64;
        for i in 0..=DURATION_BUCKETS.len() {
            cumulative += parts
                .iter()
                .map(|p| p.counts[i].load(Ordering::Relaxed))
                .sum::<u64>();
            let le = DURATION_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(
                out,
                "{name}_bucket{{{label}=\"{value}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = parts
            .iter()
            .map(|p| p.sum_nanos.load(Ordering::Relaxed))
            .sum::<u64>() as f64
            / 1e9;
        let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {cumulative}");
    }
}

/// Adds `n` to an atomic that only the calling task writes: a load and a store, which on x86
/// are plain moves, instead of a locked read-modify-write. Concurrent readers see either value.
pub(crate) fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
}

/// Escapes a Prometheus label value.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Both histograms of one consumer, one pair per worker.
pub(crate) struct HistogramParts<'a> {
    pub consumer: &'a str,
    pub duration: Vec<&'a Buckets>,
    pub queue_wait: Vec<&'a Buckets>,
}

/// HELP and TYPE lines of the two histograms, then each consumer's series.
pub(crate) fn render_histograms(out: &mut String, consumers: &[HistogramParts<'_>]) {
    for (name, help, duration) in [
        (CONSUMER_DURATION, "Time spent handling one message.", true),
        (
            CONSUMER_QUEUE_WAIT,
            "Time a message waited in the consumer's queue.",
            false,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for m in consumers {
            let parts = if duration { &m.duration } else { &m.queue_wait };
            Buckets::render(parts, out, name, "consumer", m.consumer);
        }
    }
}
