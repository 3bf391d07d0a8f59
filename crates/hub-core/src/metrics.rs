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

/// How many past outages a backend remembers ([`BackendMetrics::outages`]).
pub const OUTAGES_KEPT: usize = 10;

/// A time a backend that had been connected was not: from `since` to `until` (`None` while it
/// lasts), with the last reason its attempts gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// When the connection was lost.
    pub since: crate::Timestamp,
    /// When it came back, if it has.
    pub until: Option<crate::Timestamp>,
    /// Why, as the last failed attempt said (if it said).
    pub reason: Option<String>,
}

struct Inner {
    connected: AtomicBool,
    /// Why the backend is not connected, as its last failed attempt said.
    down_reason: std::sync::Mutex<Option<String>>,
    /// The last [`OUTAGES_KEPT`] outages, oldest first (the first connection is not one).
    outages: std::sync::Mutex<std::collections::VecDeque<Outage>>,
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
            outages: std::sync::Mutex::new(std::collections::VecDeque::new()),
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
    /// reason given by [`BackendMetrics::set_down_reason`]; a connection lost opens an outage
    /// ([`BackendMetrics::outages`]), its return closes it.
    pub fn set_connected(&self, up: bool) {
        let was = self.0.connected.swap(up, Ordering::Relaxed);
        if up && !was {
            *self
                .0
                .down_reason
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        if was != up {
            let mut outages = self
                .0
                .outages
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if up {
                if let Some(o) = outages.back_mut().filter(|o| o.until.is_none()) {
                    o.until = Some(crate::Timestamp::now());
                }
            } else {
                if outages.len() == OUTAGES_KEPT {
                    outages.pop_front();
                }
                outages.push_back(Outage {
                    since: crate::Timestamp::now(),
                    until: None,
                    reason: None,
                });
            }
        }
        self.0.series.connected.set(if up { 1.0 } else { 0.0 });
    }

    /// Why the backend cannot connect, in words an operator can act on (the OS's or the
    /// broker's, with the redacted address; never a secret): shown by `/ready` while it is
    /// down. Call it at each failed attempt; connecting clears it.
    pub fn set_down_reason(&self, reason: impl Into<String>) {
        let reason = reason.into();
        if let Some(o) = self
            .0
            .outages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .back_mut()
            .filter(|o| o.until.is_none())
        {
            o.reason = Some(reason.clone());
        }
        *self
            .0
            .down_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }

    /// The last [`OUTAGES_KEPT`] outages, oldest first: times a backend that had been
    /// connected was not (the status page's "recent outages").
    pub fn outages(&self) -> Vec<Outage> {
        self.0
            .outages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
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

#[cfg(test)]
mod outage_tests {
    use super::*;

    #[test]
    fn outages_open_on_a_lost_connection_and_close_on_its_return() {
        let m = BackendMetrics::detached();
        m.set_down_reason("connection refused");
        assert!(m.outages().is_empty(), "not connected yet is not an outage");
        m.set_connected(true);
        assert!(m.outages().is_empty());
        m.set_connected(false);
        m.set_down_reason("connection reset by peer");
        let o = m.outages();
        assert_eq!(o.len(), 1);
        assert!(o[0].until.is_none());
        assert_eq!(o[0].reason.as_deref(), Some("connection reset by peer"));
        m.set_connected(true);
        let o = m.outages();
        assert!(o[0].until.is_some_and(|u| u >= o[0].since));
        for _ in 0..15 {
            m.set_connected(false);
            m.set_connected(true);
        }
        assert_eq!(m.outages().len(), OUTAGES_KEPT, "bounded");
    }
}
