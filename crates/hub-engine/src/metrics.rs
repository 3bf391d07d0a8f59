//! Every metric the hub exposes: names, HELP texts, registration and the one rendering of
//! `/metrics`. A user contract: names and labels do not change once landed.
//!
//! Each hub has its own [`Registry`] (no process-global recorder), so two hubs in one process
//! are scraped apart. Every series is registered once, when the hub is built or a backend
//! starts, so the hot path touches only pre-registered handles and a stuck consumer's series
//! exist from the start (at 0). Backend crates register their own series with the functions
//! here ([`zeromq_endpoint`], [`amqp_queue_messages`]...), never with a name of their own: a test
//! (`tests/metric_names.rs`) fails on a metric-name literal anywhere else in product code.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `hub_consumer_backlog_messages` | gauge | `consumer` | queued, not yet started |
//! | `hub_consumer_backlog_bytes` | gauge | `consumer` | bytes of those messages (`Message::byte_size`) |
//! | `hub_consumer_in_flight_messages` | gauge | `consumer` | being handled now |
//! | `hub_consumer_oldest_message_age_seconds` | gauge | `consumer` | how long the oldest queued message has waited; 0 when empty |
//! | `hub_consumer_catch_up_seconds` | gauge | `consumer` | backlog × recent mean service time / concurrency; 0 when empty; `+Inf` while there is a backlog and nothing completes for max(3 × the mean service time, 1 s) |
//! | `hub_consumer_received_messages_total` | counter | `consumer` | messages routed to the consumer |
//! | `hub_consumer_processed_messages_total` | counter | `consumer`, `outcome` = `ok`\|`transient`\|`invalid`\|`timeout`\|`panic` | finished messages |
//! | `hub_consumer_dropped_messages_total` | counter | `consumer`, `reason` = `queue_full`\|`shutdown`\|`withdrawn` | dropped by `when_full`; or cut off when the shutdown grace expired (queued or in flight; given back to the backend unprocessed); or withdrawn: queued when the backend took the delivery back (an AMQP channel closed, so RabbitMQ redelivers it), dropped instead of handled twice |
//! | `hub_consumer_processing_duration_seconds` | histogram | `consumer` | time in `consume` |
//! | `hub_consumer_queue_wait_seconds` | histogram | `consumer` | time from enqueue to start |
//! | `hub_backend_received_messages_total` | counter | `backend` | messages the backend delivered |
//! | `hub_backend_published_messages_total` | counter | `backend` | messages published through it |
//! | `hub_backend_publish_failures_total` | counter | `backend` | publishes that failed (unavailable, unroutable, unconfirmed) |
//! | `hub_backend_invalid_messages_total` | counter | `backend` | malformed input rejected by it |
//! | `hub_backend_oversized_messages_total` | counter | `backend` | of those, refused for their size (over `max_message_bytes`) |
//! | `hub_backend_connected` | gauge | `backend` | 1 when connected, else 0 |
//! | `hub_backend_settle_panics_total` | counter | `backend` | the backend's acknowledgement (`Acker::settle`) panicked (caught) |
//! | `hub_dispatcher_unrouted_messages_total` | counter | — | messages no consumer matched |
//! | `hub_dispatcher_queued_bytes` | gauge | — | bytes queued over every consumer (each copy counted), held under `[hub] max_queued_bytes` |
//! | `hub_zeromq_endpoint_connected` | gauge | `backend`, `endpoint` | 1 while the ZeroMQ endpoint is connected |
//! | `hub_zeromq_gaps_total` | counter | `backend`, `endpoint` | messages missed, from gaps in fedmsg sequence numbers |
//! | `hub_exec_restarts_total` | counter | `consumer` | an exec program started again (it ended, or a message timed out) |
//! | `hub_exec_protocol_errors_total` | counter | `consumer` | lines from an exec program that were not protocol |
//! | `hub_amqp_queue_messages` | gauge | `consumer` | messages ready in the consumer's RabbitMQ queue (the broker's count, polled) |
//! | `hub_amqp_connection_blocked` | gauge | `backend` | 1 while RabbitMQ blocks the connection (a memory or disk alarm) |
//! | `hub_amqp_republish_failures_total` | counter | `consumer`, `kind` = `retry`\|`dead_letter` | republishes (retry or dead letter) that did not go out at once; the message is held and tried again |
//! | `hub_gateway_clients` | gauge | `transport` = `ws`\|`sse` | clients connected to the gateway |
//! | `hub_gateway_sent_messages_total` | counter | `client` (a `[gateway.tokens]` name, or `anonymous`) | messages written to gateway clients |
//! | `hub_gateway_dropped_messages_total` | counter | `client` | messages a gateway client's full queue dropped (oldest first; the client is told) |
//! | `hub_gateway_published_messages_total` | counter | `client` | messages gateway clients published (accepted by the hub, and forwarded when `forward_to` is set) |
//! | `hub_gateway_rejected_publishes_total` | counter | `client`, `reason` = `not_allowed`\|`invalid`\|`failed` | publishes refused (outside the token's patterns, malformed) or that failed (the hub stopping, the forward failing) |
//! | `hub_gateway_bad_frames_total` | counter | `reason` = `not_json`\|`unknown_op`\|`invalid`\|`too_large`\|`binary` | frames from gateway clients that were not the protocol (answered with an error frame) |
//! | `hub_gateway_disconnects_total` | counter | `reason` = `slow`\|`abuse`\|`shutdown` | gateway clients the hub disconnected |
//!
//! The two histograms are kept by the dispatcher itself (fixed buckets, [`DURATION_BUCKETS`]):
//! recording every sample through a `metrics` recorder cost about a fifth of the dispatch
//! throughput. Everything else goes through the `metrics` facade, into the hub's [`Registry`].
//! [`MetricsHandle::render`] writes the whole text: gauges computed from the queues at that
//! moment, counters, and the histograms.
//! Topics never become labels. Invariant per consumer, exact in every scrape (the counts are
//! read together under the consumer's queue lock) and after shutdown:
//! `received = processed + dropped + backlog + in_flight`, with `in_flight` at most the
//! consumer's concurrency.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hub_core::metrics::{BackendMetrics, BackendSeries, Recorder};
use metrics::{Counter, Gauge, Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::Dispatcher;

/// `hub_consumer_backlog_messages`
pub const CONSUMER_BACKLOG: &str = "hub_consumer_backlog_messages";
/// `hub_consumer_backlog_bytes`
pub const CONSUMER_BACKLOG_BYTES: &str = "hub_consumer_backlog_bytes";
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
/// `hub_consumer_retries_total`
pub const CONSUMER_RETRIES: &str = "hub_consumer_retries_total";
/// `hub_consumer_retry_waiting_messages`
pub const CONSUMER_RETRY_WAITING: &str = "hub_consumer_retry_waiting_messages";
/// `hub_consumer_paused`
pub const CONSUMER_PAUSED: &str = "hub_consumer_paused";
/// `hub_consumer_throttled_seconds_total`
pub const CONSUMER_THROTTLED: &str = "hub_consumer_throttled_seconds_total";
/// `hub_consumer_dead_letters_total`
pub const CONSUMER_DEAD_LETTERS: &str = "hub_consumer_dead_letters_total";
/// `hub_consumer_dead_letter_failures_total`
pub const CONSUMER_DEAD_LETTER_FAILURES: &str = "hub_consumer_dead_letter_failures_total";
/// `hub_backend_received_messages_total`
pub const BACKEND_RECEIVED: &str = "hub_backend_received_messages_total";
/// `hub_backend_published_messages_total`
pub const BACKEND_PUBLISHED: &str = "hub_backend_published_messages_total";
/// `hub_backend_publish_failures_total`
pub const BACKEND_PUBLISH_FAILURES: &str = "hub_backend_publish_failures_total";
/// `hub_backend_invalid_messages_total`
pub const BACKEND_INVALID: &str = "hub_backend_invalid_messages_total";
/// `hub_backend_oversized_messages_total`
pub const BACKEND_OVERSIZED: &str = "hub_backend_oversized_messages_total";
/// `hub_backend_connected`
pub const BACKEND_CONNECTED: &str = "hub_backend_connected";
/// `hub_backend_settle_panics_total`
pub const BACKEND_SETTLE_PANICS: &str = "hub_backend_settle_panics_total";
/// `hub_dispatcher_unrouted_messages_total`
pub const DISPATCHER_UNROUTED: &str = "hub_dispatcher_unrouted_messages_total";
/// `hub_dispatcher_queued_bytes`
pub const DISPATCHER_QUEUED_BYTES: &str = "hub_dispatcher_queued_bytes";
/// `hub_zeromq_endpoint_connected`
pub const ZEROMQ_ENDPOINT_CONNECTED: &str = "hub_zeromq_endpoint_connected";
/// `hub_zeromq_gaps_total`
pub const ZEROMQ_GAPS: &str = "hub_zeromq_gaps_total";
/// `hub_amqp_queue_messages`
pub const AMQP_QUEUE_MESSAGES: &str = "hub_amqp_queue_messages";
/// `hub_amqp_connection_blocked`
pub const AMQP_CONNECTION_BLOCKED: &str = "hub_amqp_connection_blocked";
/// `hub_amqp_node`
pub const AMQP_NODE: &str = "hub_amqp_node";
/// `hub_amqp_resubscribes_total`
pub const AMQP_RESUBSCRIBES: &str = "hub_amqp_resubscribes_total";
/// `hub_amqp_republish_failures_total`
pub const AMQP_REPUBLISH_FAILURES: &str = "hub_amqp_republish_failures_total";
/// `hub_gateway_clients`
pub const GATEWAY_CLIENTS: &str = "hub_gateway_clients";
/// `hub_gateway_sent_messages_total`
pub const GATEWAY_SENT: &str = "hub_gateway_sent_messages_total";
/// `hub_gateway_dropped_messages_total`
pub const GATEWAY_DROPPED: &str = "hub_gateway_dropped_messages_total";
/// `hub_gateway_published_messages_total`
pub const GATEWAY_PUBLISHED: &str = "hub_gateway_published_messages_total";
/// `hub_gateway_rejected_publishes_total`
pub const GATEWAY_REJECTED: &str = "hub_gateway_rejected_publishes_total";
/// `hub_gateway_bad_frames_total`
pub const GATEWAY_BAD_FRAMES: &str = "hub_gateway_bad_frames_total";
/// `hub_gateway_disconnects_total`
pub const GATEWAY_DISCONNECTS: &str = "hub_gateway_disconnects_total";
/// `hub_exec_restarts_total`
pub const EXEC_RESTARTS: &str = "hub_exec_restarts_total";
/// `hub_exec_protocol_errors_total`
pub const EXEC_PROTOCOL_ERRORS: &str = "hub_exec_protocol_errors_total";

/// Histogram buckets (seconds) for the two `_seconds` histograms: 50 µs to 5 min.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// HELP texts of the two histograms (rendered by the dispatcher, not the recorder).
const HISTOGRAM_HELP: [(&str, &str); 2] = [
    (CONSUMER_DURATION, "Time spent handling one message."),
    (
        CONSUMER_QUEUE_WAIT,
        "Time a message waited in the consumer's queue.",
    ),
];

/// HELP text for every series the recorder renders (gauges and counters).
const HELP: &[(&str, Kind, &str)] = &[
    (
        CONSUMER_BACKLOG,
        Kind::Gauge,
        "Messages queued for the consumer, not yet started.",
    ),
    (
        CONSUMER_BACKLOG_BYTES,
        Kind::Gauge,
        "Bytes of the messages queued for the consumer.",
    ),
    (
        DISPATCHER_QUEUED_BYTES,
        Kind::Gauge,
        "Bytes queued over every consumer (each copy counted), held under [hub] max_queued_bytes.",
    ),
    (
        CONSUMER_IN_FLIGHT,
        Kind::Gauge,
        "Messages the consumer is handling now.",
    ),
    (
        CONSUMER_OLDEST_AGE,
        Kind::GaugeSeconds,
        "How long the oldest queued message has waited (0 when the queue is empty).",
    ),
    (
        CONSUMER_CATCH_UP,
        Kind::GaugeSeconds,
        "Time to work off the backlog at the recent mean service time (0 when empty, +Inf while nothing completes).",
    ),
    (
        CONSUMER_RECEIVED,
        Kind::Counter,
        "Messages routed to the consumer.",
    ),
    (
        CONSUMER_PROCESSED,
        Kind::Counter,
        "Messages the consumer finished, by outcome.",
    ),
    (
        CONSUMER_DROPPED,
        Kind::Counter,
        "Messages dropped: the consumer's queue was full, shutdown cut them off, or the backend took them back before they started (an AMQP channel closed: the broker redelivers them).",
    ),
    (
        CONSUMER_RETRIES,
        Kind::Counter,
        "Failed messages set aside for another attempt by the hub (counted when decided; AMQP's broker retries are not counted here).",
    ),
    (
        CONSUMER_RETRY_WAITING,
        Kind::Gauge,
        "Failed messages waiting out their retry delay (each holds its place in the queue).",
    ),
    (
        CONSUMER_PAUSED,
        Kind::Gauge,
        "1 while an operator has paused the consumer (its queue keeps filling under when_full), else 0.",
    ),
    (
        CONSUMER_DEAD_LETTERS,
        Kind::Counter,
        "Messages dead-lettered by the hub, by sink (file, topic, or log when none is configured or it failed at shutdown).",
    ),
    (
        CONSUMER_DEAD_LETTER_FAILURES,
        Kind::Counter,
        "Writes to the consumer's dead-letter sink that failed (each tried again).",
    ),
    (
        BACKEND_RECEIVED,
        Kind::Counter,
        "Messages the backend delivered into the hub.",
    ),
    (
        BACKEND_PUBLISHED,
        Kind::Counter,
        "Messages published through the backend.",
    ),
    (
        BACKEND_PUBLISH_FAILURES,
        Kind::Counter,
        "Publishes through the backend that failed (unavailable, unroutable, unconfirmed).",
    ),
    (
        BACKEND_INVALID,
        Kind::Counter,
        "Malformed messages the backend rejected.",
    ),
    (
        BACKEND_OVERSIZED,
        Kind::Counter,
        "Messages the backend refused for their size (over max_message_bytes); also counted as invalid.",
    ),
    (
        BACKEND_CONNECTED,
        Kind::Gauge,
        "1 while the backend is connected, else 0.",
    ),
    (
        BACKEND_SETTLE_PANICS,
        Kind::Counter,
        "Acknowledgements (the backend's Acker::settle) that panicked; caught.",
    ),
    (
        DISPATCHER_UNROUTED,
        Kind::Counter,
        "Messages that matched no consumer.",
    ),
    (
        ZEROMQ_ENDPOINT_CONNECTED,
        Kind::Gauge,
        "1 while the ZeroMQ endpoint is connected, else 0.",
    ),
    (
        ZEROMQ_GAPS,
        Kind::Counter,
        "Messages missed on the endpoint, from gaps in fedmsg sequence numbers.",
    ),
    (
        AMQP_QUEUE_MESSAGES,
        Kind::Gauge,
        "Messages ready in the consumer's RabbitMQ queue (the broker's count, polled).",
    ),
    (
        AMQP_CONNECTION_BLOCKED,
        Kind::Gauge,
        "1 while RabbitMQ blocks the hub's connection (memory or disk alarm), else 0.",
    ),
    (
        AMQP_NODE,
        Kind::Gauge,
        "1 for the broker node (of `url` or `urls`) each AMQP connection is on, 0 for the others.",
    ),
    (
        AMQP_RESUBSCRIBES,
        Kind::Counter,
        "AMQP subscriptions renewed: the broker cancelled it, or the stall watchdog found messages ready and none arriving.",
    ),
    (
        AMQP_REPUBLISH_FAILURES,
        Kind::Counter,
        "Retries and dead letters that could not be republished at once (held and tried again).",
    ),
    (
        EXEC_RESTARTS,
        Kind::Counter,
        "Times an exec consumer's program was started again after it ended or got stuck.",
    ),
    (
        EXEC_PROTOCOL_ERRORS,
        Kind::Counter,
        "Lines from an exec consumer's program that were not protocol (ignored).",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    GaugeSeconds,
}

/// Describes every series with the current recorder.
fn describe() {
    for &(name, kind, help) in HELP {
        match kind {
            Kind::Counter => describe_counter!(name, Unit::Count, help),
            Kind::Gauge => describe_gauge!(name, Unit::Count, help),
            Kind::GaugeSeconds => describe_gauge!(name, Unit::Seconds, help),
        }
    }
}

/// One hub's metrics: a Prometheus recorder of its own, with every HELP text described.
/// Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        metrics::with_local_recorder(&*recorder, describe);
        Self { recorder, handle }
    }

    /// Runs `register` with this registry as the recorder: handles it creates record here.
    pub(crate) fn register<T>(&self, register: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&*self.recorder, register)
    }

    /// The recorder, for the handles handed to backends.
    pub(crate) fn recorder(&self) -> Arc<dyn Recorder + Send + Sync> {
        self.recorder.clone()
    }

    /// The recorder's part of `/metrics` (counters and gauges).
    fn render_recorded(&self) -> String {
        self.handle.render()
    }
}

/// Renders one hub's whole `/metrics`. Cheap to clone.
#[derive(Clone)]
pub struct MetricsHandle {
    pub(crate) registry: Registry,
    pub(crate) dispatcher: Dispatcher,
}

impl MetricsHandle {
    /// Renders `dispatcher`'s series, recorded in `registry` (the engine builds these itself;
    /// see [`Engine::metrics`](crate::Engine::metrics)).
    pub fn new(registry: Registry, dispatcher: Dispatcher) -> Self {
        Self {
            registry,
            dispatcher,
        }
    }

    /// The whole `/metrics` text (Prometheus text format 0.0.4): gauges computed from the
    /// queues now, every counter, and the two histograms.
    pub fn render(&self) -> String {
        self.dispatcher.refresh_gauges();
        let mut out = self.registry.render_recorded();
        self.dispatcher.render_histograms_into(&mut out);
        out
    }

    /// The value of one sample line, such as
    /// `hub_consumer_processed_messages_total{consumer="a",outcome="ok"}`, in a fresh render.
    pub fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.render(), series)
    }
}

/// The value of the sample line `series` (name and labels, exactly as rendered) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| match v.trim() {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            v => v.parse().ok(),
        })
}

/// One consumer's series.
pub(crate) struct ConsumerMetrics {
    pub backlog: Gauge,
    pub backlog_bytes: Gauge,
    pub in_flight: Gauge,
    pub oldest_age: Gauge,
    pub catch_up: Gauge,
    pub received: Counter,
    pub ok: Counter,
    pub transient: Counter,
    pub invalid: Counter,
    pub timeout: Counter,
    pub panic: Counter,
    pub dropped: Counter,
    pub dropped_shutdown: Counter,
    pub dropped_withdrawn: Counter,
    pub retries: Counter,
    pub retry_waiting: Gauge,
    pub paused: Gauge,
    pub dead_letter_failures: Counter,
}

/// One consumer's dead-letter counts: into its sink, and logged (no sink, or a sink that still
/// failed at shutdown).
pub(crate) struct DeadLetterCounters {
    pub stored: Option<Counter>,
    pub logged: Counter,
}

impl DeadLetterCounters {
    /// Registers `consumer`'s dead-letter series: `sink="log"`, and `sink=<kind>` if it has one.
    pub fn register(registry: &Registry, consumer: &str, sink: Option<&'static str>) -> Self {
        let m = registry.register(|| Self {
            stored: sink.map(|kind| counter!(CONSUMER_DEAD_LETTERS, "consumer" => consumer.to_owned(), "sink" => kind)),
            logged: counter!(CONSUMER_DEAD_LETTERS, "consumer" => consumer.to_owned(), "sink" => "log"),
        });
        for c in m.stored.iter().chain([&m.logged]) {
            c.increment(0);
        }
        m
    }
}

/// Renders `name` as a counter of seconds with fractions (the recorder's counters are whole
/// numbers): `values` are `(consumer, seconds)`.
pub(crate) fn render_seconds_counter(out: &mut String, values: &[(&str, f64)]) {
    use std::fmt::Write as _;
    if values.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {CONSUMER_THROTTLED} Time the consumer's messages waited for its rate limit.\n# TYPE {CONSUMER_THROTTLED} counter"
    );
    for (consumer, seconds) in values {
        let _ = writeln!(
            out,
            "{CONSUMER_THROTTLED}{{consumer=\"{}\"}} {seconds}",
            escape_label(consumer)
        );
    }
}

impl ConsumerMetrics {
    /// Registers `consumer`'s series in `registry`, each at 0.
    pub fn register(registry: &Registry, consumer: &str) -> Self {
        let m = registry.register(|| {
            let processed = |outcome: &'static str| counter!(CONSUMER_PROCESSED, "consumer" => consumer.to_owned(), "outcome" => outcome);
            Self {
                backlog: gauge!(CONSUMER_BACKLOG, "consumer" => consumer.to_owned()),
                backlog_bytes: gauge!(CONSUMER_BACKLOG_BYTES, "consumer" => consumer.to_owned()),
                in_flight: gauge!(CONSUMER_IN_FLIGHT, "consumer" => consumer.to_owned()),
                oldest_age: gauge!(CONSUMER_OLDEST_AGE, "consumer" => consumer.to_owned()),
                catch_up: gauge!(CONSUMER_CATCH_UP, "consumer" => consumer.to_owned()),
                received: counter!(CONSUMER_RECEIVED, "consumer" => consumer.to_owned()),
                ok: processed("ok"),
                transient: processed("transient"),
                invalid: processed("invalid"),
                timeout: processed("timeout"),
                panic: processed("panic"),
                dropped: counter!(CONSUMER_DROPPED, "consumer" => consumer.to_owned(), "reason" => "queue_full"),
                dropped_shutdown: counter!(CONSUMER_DROPPED, "consumer" => consumer.to_owned(), "reason" => "shutdown"),
                dropped_withdrawn: counter!(CONSUMER_DROPPED, "consumer" => consumer.to_owned(), "reason" => "withdrawn"),
                retries: counter!(CONSUMER_RETRIES, "consumer" => consumer.to_owned()),
                retry_waiting: gauge!(CONSUMER_RETRY_WAITING, "consumer" => consumer.to_owned()),
                paused: gauge!(CONSUMER_PAUSED, "consumer" => consumer.to_owned()),
                dead_letter_failures: counter!(CONSUMER_DEAD_LETTER_FAILURES, "consumer" => consumer.to_owned()),
            }
        });
        // Series appear only once they hold a value: show every consumer from the start.
        for g in [
            &m.backlog,
            &m.backlog_bytes,
            &m.in_flight,
            &m.oldest_age,
            &m.catch_up,
            &m.retry_waiting,
            &m.paused,
        ] {
            g.set(0.0);
        }
        for c in [
            &m.received,
            &m.ok,
            &m.transient,
            &m.invalid,
            &m.timeout,
            &m.panic,
            &m.dropped,
            &m.dropped_shutdown,
            &m.dropped_withdrawn,
            &m.retries,
            &m.dead_letter_failures,
        ] {
            c.increment(0);
        }
        m
    }
}

/// One backend's series: the handles given to the backend itself ([`BackendMetrics`]) and the
/// engine's own. Cheap to clone.
#[derive(Clone)]
pub(crate) struct BackendCounters {
    /// What the backend itself holds.
    pub shared: BackendMetrics,
    received: Counter,
    received_count: Arc<AtomicU64>,
    pub published: Counter,
    pub publish_failures: Counter,
    pub settle_panics: Counter,
}

impl BackendCounters {
    /// Registers the series of backend `id` in `registry`, each at 0.
    pub fn register(registry: &Registry, id: &str) -> Self {
        let backend = || id.to_owned();
        let m = registry.register(|| {
            let series = BackendSeries {
                connected: gauge!(BACKEND_CONNECTED, "backend" => backend()),
                invalid: counter!(BACKEND_INVALID, "backend" => backend()),
                oversized: counter!(BACKEND_OVERSIZED, "backend" => backend()),
            };
            series.invalid.increment(0);
            series.oversized.increment(0);
            Self {
                shared: BackendMetrics::new(series, registry.recorder()),
                received: counter!(BACKEND_RECEIVED, "backend" => backend()),
                received_count: Arc::new(AtomicU64::new(0)),
                published: counter!(BACKEND_PUBLISHED, "backend" => backend()),
                publish_failures: counter!(BACKEND_PUBLISH_FAILURES, "backend" => backend()),
                settle_panics: counter!(BACKEND_SETTLE_PANICS, "backend" => backend()),
            }
        });
        // Series appear only once they hold a value: show every backend from the start.
        m.shared.set_connected(false);
        for c in [
            &m.received,
            &m.published,
            &m.publish_failures,
            &m.settle_panics,
        ] {
            c.increment(0);
        }
        m
    }

    /// Registers `hub_dispatcher_unrouted_messages_total`, at 0.
    pub fn unrouted(registry: &Registry) -> Counter {
        let c = registry.register(|| counter!(DISPATCHER_UNROUTED));
        c.increment(0);
        c
    }

    /// Counts `n` deliveries (a plain atomic; copied to the counter by [`BackendCounters::flush`]).
    pub fn count_received(&self, n: u64) {
        self.received_count.fetch_add(n, Ordering::Relaxed);
    }

    /// Deliveries counted so far.
    pub fn received(&self) -> u64 {
        self.received_count.load(Ordering::Relaxed)
    }

    /// Copies the exact delivery count into `hub_backend_received_messages_total`.
    pub fn flush(&self) {
        self.received
            .absolute(self.received_count.load(Ordering::Relaxed));
    }
}

/// `hub_dispatcher_queued_bytes`, registered at 0.
pub(crate) fn queued_bytes(registry: &Registry) -> Gauge {
    let g = registry.register(|| gauge!(DISPATCHER_QUEUED_BYTES));
    g.set(0.0);
    g
}

/// The series of one ZeroMQ endpoint (`hub-zeromq`).
pub struct ZeroMqEndpointSeries {
    /// `hub_zeromq_endpoint_connected`
    pub connected: Gauge,
    /// `hub_zeromq_gaps_total`
    pub gaps: Counter,
}

/// Registers a ZeroMQ endpoint's series, at 0, in the hub's `registry`
/// ([`BackendMetrics::registry`]).
pub fn zeromq_endpoint(
    registry: &dyn Recorder,
    backend: &str,
    endpoint: &str,
) -> ZeroMqEndpointSeries {
    let labels = [
        ("backend", backend.to_owned()),
        ("endpoint", endpoint.to_owned()),
    ];
    let s = metrics::with_local_recorder(registry, || ZeroMqEndpointSeries {
        connected: gauge!(ZEROMQ_ENDPOINT_CONNECTED, &labels),
        gaps: counter!(ZEROMQ_GAPS, &labels),
    });
    s.connected.set(0.0);
    s.gaps.increment(0);
    s
}

/// Registers `hub_amqp_queue_messages` for `consumer`, at 0.
pub fn amqp_queue_messages(registry: &dyn Recorder, consumer: &str) -> Gauge {
    let g = metrics::with_local_recorder(
        registry,
        || gauge!(AMQP_QUEUE_MESSAGES, "consumer" => consumer.to_owned()),
    );
    g.set(0.0);
    g
}

/// Registers `hub_amqp_connection_blocked` for `backend`, at 0.
pub fn amqp_connection_blocked(registry: &dyn Recorder, backend: &str) -> Gauge {
    let g = metrics::with_local_recorder(
        registry,
        || gauge!(AMQP_CONNECTION_BLOCKED, "backend" => backend.to_owned()),
    );
    g.set(0.0);
    g
}

/// Registers `hub_amqp_node` for one connection of `backend` on `node` (`host:port`), at 0.
pub fn amqp_node(registry: &dyn Recorder, backend: &str, connection: &str, node: &str) -> Gauge {
    let g = metrics::with_local_recorder(
        registry,
        || gauge!(AMQP_NODE, "backend" => backend.to_owned(), "connection" => connection.to_owned(), "node" => node.to_owned()),
    );
    g.set(0.0);
    g
}

/// Why an AMQP subscription was renewed (`reason` label of `hub_amqp_resubscribes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResubscribeReason {
    /// The broker cancelled the subscription (the queue was deleted, its node went away).
    Cancelled,
    /// The queue had messages ready and no consumer of ours.
    NoConsumer,
    /// The queue had messages ready and none arrived for `stall_timeout` while there was room.
    Stalled,
    /// The broker closed the consumer's channel (a delivery unacknowledged past RabbitMQ's
    /// `consumer_timeout`, another channel error) while the connection stayed up.
    ChannelClosed,
}

impl ResubscribeReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::NoConsumer => "no_consumer",
            Self::Stalled => "stalled",
            Self::ChannelClosed => "channel_closed",
        }
    }
}

/// Registers `hub_amqp_resubscribes_total` for `consumer` and `reason`, at 0.
pub fn amqp_resubscribes(
    registry: &dyn Recorder,
    consumer: &str,
    reason: ResubscribeReason,
) -> Counter {
    let c = metrics::with_local_recorder(
        registry,
        || counter!(AMQP_RESUBSCRIBES, "consumer" => consumer.to_owned(), "reason" => reason.as_str()),
    );
    c.increment(0);
    c
}

/// What an AMQP republish was for (`kind` label of `hub_amqp_republish_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepublishKind {
    /// A retry, republished to the consumer's queue.
    Retry,
    /// A dead letter.
    DeadLetter,
}

/// Registers `hub_amqp_republish_failures_total` for `consumer` and `kind`, at 0.
pub fn amqp_republish_failures(
    registry: &dyn Recorder,
    consumer: &str,
    kind: RepublishKind,
) -> Counter {
    let kind = match kind {
        RepublishKind::Retry => "retry",
        RepublishKind::DeadLetter => "dead_letter",
    };
    let c = metrics::with_local_recorder(
        registry,
        || counter!(AMQP_REPUBLISH_FAILURES, "consumer" => consumer.to_owned(), "kind" => kind),
    );
    c.increment(0);
    c
}

/// An exec consumer's series (`hub-exec`).
pub struct ExecSeries {
    /// `hub_exec_restarts_total`
    pub restarts: Counter,
    /// `hub_exec_protocol_errors_total`
    pub protocol_errors: Counter,
}

/// Registers an exec consumer's series, at 0, in the hub's `registry`
/// ([`hub_core::Context::metrics_registry`]).
pub fn exec_series(registry: &dyn Recorder, consumer: &str) -> ExecSeries {
    let s = metrics::with_local_recorder(registry, || ExecSeries {
        restarts: counter!(EXEC_RESTARTS, "consumer" => consumer.to_owned()),
        protocol_errors: counter!(EXEC_PROTOCOL_ERRORS, "consumer" => consumer.to_owned()),
    });
    s.restarts.increment(0);
    s.protocol_errors.increment(0);
    s
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
    for (k, (name, help)) in HISTOGRAM_HELP.into_iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for m in consumers {
            let parts = if k == 0 { &m.duration } else { &m.queue_wait };
            Buckets::render(parts, out, name, "consumer", m.consumer);
        }
    }
}

/// One gateway client credential's series (`hub-gateway`): `client` is a `[gateway.tokens]`
/// name or `anonymous`, so the label set is bounded by the configuration.
pub struct GatewayClientSeries {
    /// `hub_gateway_sent_messages_total`
    pub sent: Counter,
    /// `hub_gateway_dropped_messages_total`
    pub dropped: Counter,
    /// `hub_gateway_published_messages_total`
    pub published: Counter,
    /// `hub_gateway_rejected_publishes_total{reason="not_allowed"}`
    pub rejected_not_allowed: Counter,
    /// `hub_gateway_rejected_publishes_total{reason="invalid"}`
    pub rejected_invalid: Counter,
    /// `hub_gateway_rejected_publishes_total{reason="failed"}`
    pub rejected_failed: Counter,
}

/// Registers the series of gateway credential `client`, each at 0.
pub fn gateway_client(registry: &dyn Recorder, client: &str) -> GatewayClientSeries {
    let c = || client.to_owned();
    let s = metrics::with_local_recorder(registry, || GatewayClientSeries {
        sent: counter!(GATEWAY_SENT, "client" => c()),
        dropped: counter!(GATEWAY_DROPPED, "client" => c()),
        published: counter!(GATEWAY_PUBLISHED, "client" => c()),
        rejected_not_allowed: counter!(GATEWAY_REJECTED, "client" => c(), "reason" => "not_allowed"),
        rejected_invalid: counter!(GATEWAY_REJECTED, "client" => c(), "reason" => "invalid"),
        rejected_failed: counter!(GATEWAY_REJECTED, "client" => c(), "reason" => "failed"),
    });
    for counter in [
        &s.sent,
        &s.dropped,
        &s.published,
        &s.rejected_not_allowed,
        &s.rejected_invalid,
        &s.rejected_failed,
    ] {
        counter.increment(0);
    }
    s
}

/// Registers `hub_gateway_clients` for `transport` (`ws`, `sse`), at 0.
pub fn gateway_clients(registry: &dyn Recorder, transport: &'static str) -> Gauge {
    let g = metrics::with_local_recorder(
        registry,
        || gauge!(GATEWAY_CLIENTS, "transport" => transport),
    );
    g.set(0.0);
    g
}

/// Registers `hub_gateway_bad_frames_total` for `reason`, at 0.
pub fn gateway_bad_frames(registry: &dyn Recorder, reason: &'static str) -> Counter {
    let c = metrics::with_local_recorder(
        registry,
        || counter!(GATEWAY_BAD_FRAMES, "reason" => reason),
    );
    c.increment(0);
    c
}

/// Registers `hub_gateway_disconnects_total` for `reason`, at 0.
pub fn gateway_disconnects(registry: &dyn Recorder, reason: &'static str) -> Counter {
    let c = metrics::with_local_recorder(
        registry,
        || counter!(GATEWAY_DISCONNECTS, "reason" => reason),
    );
    c.increment(0);
    c
}
