//! Settling a delivery once every consumer that received it is done.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::Counter;
use tracing::error;

use hub_core::{Acker, Verdict};

/// Shared by the copies of one delivery in several consumers' queues.
pub(crate) struct Ticket {
    remaining: AtomicUsize,
    /// The worst verdict so far (failures only; the common all-OK path never locks).
    worst: Mutex<Option<Verdict>>,
    acker: Box<dyn Acker>,
    /// `hub_backend_settle_panics_total` of the delivery's backend.
    panics: Counter,
}

impl Ticket {
    pub fn new(acker: Box<dyn Acker>, consumers: usize, panics: &Counter) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(consumers),
            worst: Mutex::new(None),
            acker,
            panics: panics.clone(),
        })
    }

    fn finish(&self, verdict: Verdict) {
        if verdict != Verdict::Ack {
            let mut worst = self.worst.lock().unwrap_or_else(PoisonError::into_inner);
            if worst.as_ref().is_none_or(|w| verdict.rank() > w.rank()) {
                *worst = Some(verdict);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let worst = self
            .worst
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or(Verdict::Ack);
        // A backend's acker is foreign code run on a consumer's worker (or the intake): a panic
        // in it must not take the worker down with it.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.acker.settle(worst))) {
            self.panics.increment(1);
            error!(panic = %panic_text(&*panic), "A backend's acknowledgement (Acker::settle) panicked; the delivery is left to the backend.");
        }
    }
}

/// One consumer's share of a delivery's settlement. Dropped unfinished (shutdown before it ran,
/// cut off by the grace period, a cancelled hand-over), it settles as [`Verdict::Requeue`], so
/// nothing is ever acknowledged without being processed, and nothing is counted as an attempt
/// that never ran.
pub(crate) struct Settle(Option<Arc<Ticket>>);

impl Settle {
    pub fn none() -> Self {
        Self(None)
    }

    pub fn of(ticket: &Arc<Ticket>) -> Self {
        Self(Some(Arc::clone(ticket)))
    }

    /// The backend took the delivery back ([`Acker::withdrawn`]): its source delivers it
    /// again, so a copy not yet started is dropped.
    #[inline]
    pub fn withdrawn(&self) -> bool {
        self.0.as_ref().is_some_and(|t| t.acker.withdrawn())
    }

    /// This consumer's verdict (the delivery settles once every consumer gave one).
    #[inline]
    pub fn finish(mut self, verdict: Verdict) {
        if let Some(t) = self.0.take() {
            t.finish(verdict);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.finish(Verdict::Requeue);
        }
    }
}

/// The text of a caught panic's payload.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
