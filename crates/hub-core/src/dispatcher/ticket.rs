//! Settling a delivery once every consumer that received it is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{Acker, Verdict};

/// Shared by the copies of one delivery in several consumers' queues.
pub(crate) struct Ticket {
    remaining: AtomicUsize,
    /// The worst verdict so far (failures only; the common all-OK path never locks).
    worst: Mutex<Option<Verdict>>,
    acker: Box<dyn Acker>,
}

impl Ticket {
    pub fn new(acker: Box<dyn Acker>, consumers: usize) -> Arc<Self> {
        Arc::new(Self {
            remaining: AtomicUsize::new(consumers),
            worst: Mutex::new(None),
            acker,
        })
    }

    fn finish(&self, verdict: Verdict) {
        if verdict != Verdict::Ack {
            let mut worst = self.worst.lock().unwrap_or_else(PoisonError::into_inner);
            if worst.as_ref().is_none_or(|w| verdict.rank() > w.rank()) {
                *worst = Some(verdict);
            }
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let worst = self
                .worst
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            self.acker.settle(worst.unwrap_or(Verdict::Ack));
        }
    }
}

/// One consumer's share of a delivery's settlement. Dropped unfinished (shutdown, abort), it
/// counts as a retry, so nothing is ever acknowledged without being processed.
pub(crate) struct Settle(Option<Arc<Ticket>>);

impl Settle {
    pub fn none() -> Self {
        Self(None)
    }

    pub fn of(ticket: &Arc<Ticket>) -> Self {
        Self(Some(Arc::clone(ticket)))
    }

    pub fn finish(mut self, verdict: Verdict) {
        if let Some(t) = self.0.take() {
            t.finish(verdict);
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.finish(Verdict::Retry {
                reason: "not processed before shutdown".into(),
            });
        }
    }
}
