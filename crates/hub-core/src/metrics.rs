//! The handles a backend counts with. Every series' name, HELP text and rendering live in the
//! engine's metrics module (`hub_engine::metrics`); this crate holds only handles, so a plugin
//! never writes a metric name.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use metrics::{Counter, Gauge, Recorder};

/// The series every backend has, as the engine registered them.
pub struct BackendSeries {
    /// `hub_backend_connected`.
    pub connected: Gauge,
    /// `hub_backend_invalid_messages_total`.
    pub invalid: Counter,
    /// `hub_backend_oversized_messages_total`.
    pub oversized: Counter,
}

/// One backend's connection state and counters, given in
/// [`BackendContext::metrics`](crate::BackendContext::metrics). Cheap to clone.
#[derive(Clone)]
pub struct BackendMetrics(Arc<Inner>);

struct Inner {
    connected: AtomicBool,
    /// Why the backend is not connected, as its last failed attempt said.
    down_reason: std::sync::Mutex<Option<String>>,
    series: BackendSeries,
    registry: Arc<dyn Recorder + Send + Sync>,
}

impl BackendMetrics {
    /// Handles registered by the engine; `registry` is the hub's own recorder, where a backend's
    /// extra series are registered (through the engine's metrics module).
    pub fn new(series: BackendSeries, registry: Arc<dyn Recorder + Send + Sync>) -> Self {
        Self(Arc::new(Inner {
            connected: AtomicBool::new(false),
            down_reason: std::sync::Mutex::new(None),
            series,
            registry,
        }))
    }

    /// Handles that record nothing (for tests of a backend outside a hub).
    pub fn detached() -> Self {
        Self::new(
            BackendSeries {
                connected: Gauge::noop(),
                invalid: Counter::noop(),
                oversized: Counter::noop(),
            },
            Arc::new(metrics::NoopRecorder),
        )
    }

    /// Records whether the backend is connected (gauge and readiness). Connected clears the
    /// reason given by [`BackendMetrics::set_down_reason`].
    pub fn set_connected(&self, up: bool) {
        if up && self.0.connected.load(Ordering::Relaxed) != up {
            *self
                .0
                .down_reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        self.0.connected.store(up, Ordering::Relaxed);
        self.0.series.connected.set(if up { 1.0 } else { 0.0 });
    }

    /// Why the backend cannot connect, in words an operator can act on (the OS's or the
    /// broker's, with the redacted address; never a secret): shown by `/ready` while it is
    /// down. Call it at each failed attempt; connecting clears it.
    pub fn set_down_reason(&self, reason: impl Into<String>) {
        *self
            .0
            .down_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.into());
    }

    /// The reason given by [`BackendMetrics::set_down_reason`] since the backend last
    /// connected, if any.
    pub fn down_reason(&self) -> Option<String> {
        self.0
            .down_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the backend last said it was connected.
    pub fn is_connected(&self) -> bool {
        self.0.connected.load(Ordering::Relaxed)
    }

    /// Counts one malformed message the backend rejected.
    pub fn invalid(&self) {
        self.0.series.invalid.increment(1);
    }

    /// Counts one message refused for its size (over the backend's `max_message_bytes`): it
    /// counts as invalid too.
    pub fn oversized(&self) {
        self.0.series.invalid.increment(1);
        self.0.series.oversized.increment(1);
    }

    /// The hub's recorder: pass it to the engine's metrics module to register a backend's own
    /// series (`hub_engine::metrics::zeromq_endpoint(..)`, say).
    pub fn registry(&self) -> &dyn Recorder {
        &*self.0.registry
    }
}

impl fmt::Debug for BackendMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendMetrics")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}
