//! Per-worker counts and histograms. Each block is written by its own worker only, so recording
//! costs plain loads and stores (see [`bump`]); scrapes sum the blocks of a consumer.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Buckets, bump};

/// How a message ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Timeout,
    Panic,
}

/// One worker's counts. Aligned to keep two workers' blocks (and the queue the feeder writes)
/// off each other's cache lines.
#[repr(align(128))]
pub(crate) struct WorkerStats {
    /// Messages taken from the queue and started.
    started: AtomicU64,
    /// Finished messages by [`Outcome`].
    outcomes: [AtomicU64; 4],
    /// Nanoseconds after the dispatcher's epoch of the last completion; `u64::MAX` = never.
    last_completed_ns: AtomicU64,
    pub duration: Buckets,
    pub queue_wait: Buckets,
}

impl WorkerStats {
    pub fn new() -> Self {
        Self {
            started: AtomicU64::new(0),
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            last_completed_ns: AtomicU64::new(u64::MAX),
            duration: Buckets::new(),
            queue_wait: Buckets::new(),
        }
    }

    /// A message was taken and starts now. Owning worker only.
    pub fn start(&self) {
        bump(&self.started, 1);
    }

    /// A started message ended with `outcome`, `at_ns` after the epoch. Owning worker only.
    /// Stored after `start`'s count with release ordering, so a reader that loads the outcomes
    /// first never sees more finished than started.
    pub fn finish(&self, outcome: Outcome, at_ns: u64) {
        bump(&self.outcomes[outcome as usize], 1);
        self.last_completed_ns
            .store(at_ns.min(u64::MAX - 1), Ordering::Relaxed);
    }
}

/// The sum of a consumer's worker blocks, read in an order that keeps
/// `in_flight = started - finished` non-negative.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    /// Finished messages by [`Outcome`] (ok, error, timeout, panic).
    pub outcomes: [u64; 4],
    /// Started and not finished.
    pub in_flight: u64,
    /// The latest completion (nanoseconds after the epoch), if any.
    pub last_completed_ns: Option<u64>,
}

impl Totals {
    pub fn of(workers: &[WorkerStats]) -> Self {
        let mut t = Totals::default();
        let mut started = 0u64;
        for w in workers {
            let mut finished = 0;
            for (sum, c) in t.outcomes.iter_mut().zip(&w.outcomes) {
                let n = c.load(Ordering::Acquire);
                *sum += n;
                finished += n;
            }
            started += w.started.load(Ordering::Acquire).max(finished);
            let last = w.last_completed_ns.load(Ordering::Relaxed);
            if last != u64::MAX {
                t.last_completed_ns = Some(t.last_completed_ns.map_or(last, |l| l.max(last)));
            }
        }
        t.in_flight = started - t.completed();
        t
    }

    /// Finished, any outcome.
    pub fn completed(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}
