//! Starting the consumers' workers, closing intake, and the shutdown drain.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use super::{Dispatcher, worker};

/// How long aborted workers are waited for after the grace period.
const ABORT_WAIT: Duration = Duration::from_secs(1);

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
                let task = if slot.options.batch_size > 1 {
                    tokio::spawn(tracing::Instrument::instrument(
                        worker::run_batches(shared, i, w),
                        span,
                    ))
                } else {
                    tokio::spawn(tracing::Instrument::instrument(
                        worker::run(shared, i, w),
                        span,
                    ))
                };
                workers.push(task);
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
    /// What is still unfinished then is cut off, settled as [`Verdict::Requeue`](hub_core::Verdict)
    /// (given back as it was), counted as dropped with reason `shutdown`, and reported.
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
        let mut pending = Vec::new();
        for mut handle in workers {
            if tokio::time::timeout_at(deadline, &mut handle)
                .await
                .is_err()
            {
                pending.push(handle);
            }
        }
        // The report comes from the queues and counts, not from which workers ended: it is
        // true whatever became of a worker.
        let mut report = DrainReport::default();
        for slot in &self.shared.slots {
            let state = self.state_of(slot).0;
            // A retry still waiting counts as queued: it never started again.
            let queued = state.backlog + state.retry_waiting;
            if queued > 0 || state.in_flight > 0 {
                warn!(consumer = %slot.name, queued, in_flight = state.in_flight, "Shutdown grace expired; cutting off unfinished messages.");
                report
                    .unfinished
                    .push((slot.name.to_string(), queued, state.in_flight));
            }
        }
        for handle in &pending {
            handle.abort();
        }
        // An aborted worker stops at its next await; one in a `consume` that never awaits
        // cannot be stopped, so it is waited for a moment only (it stays counted in flight).
        let stopped = Instant::now() + ABORT_WAIT;
        for handle in pending {
            if tokio::time::timeout_at(stopped, handle).await.is_err() {
                warn!(
                    "A consumer worker did not stop when aborted (a consume that never awaits); shutdown goes on without it."
                );
            }
        }
        for slot in &self.shared.slots {
            slot.queue.clear();
        }
        self.refresh_gauges();
        report
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
    pub async fn start_consumers(&self) -> Result<(), (String, hub_core::BoxError)> {
        for slot in &self.shared.slots {
            slot.consumer
                .start(&slot.cx)
                .await
                .map_err(|e| (slot.name.to_string(), e))?;
        }
        Ok(())
    }
}
