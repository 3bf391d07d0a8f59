//! Per-worker counts and histograms. Each block is written by its own worker only, so recording
//! costs plain loads and stores (see [`bump`]); scrapes sum the blocks of a consumer.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Buckets, bump};

/// How a message ended.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    Ok,
    /// `ConsumeError::transient`: a retry may help.
    Transient,
    /// `ConsumeError::invalid`: the message itself is bad.
    Invalid,
    Timeout,
    Panic,
}

/// "Never", in the nanosecond fields below.
const NEVER: u64 = u64::MAX;

/// The newest completion's weight in a worker's mean service time: about the last ten count.
pub(crate) const SERVICE_WEIGHT: f64 = 0.1;

/// One worker's counts. Aligned to keep two workers' blocks (and the queue the feeder writes)
/// off each other's cache lines.
#[repr(align(128))]
pub(crate) struct WorkerStats {
    /// Finished messages by [`Outcome`].
    outcomes: [AtomicU64; 5],
    /// When the message last taken started (nanoseconds after the dispatcher's epoch); `NEVER`
    /// before the first. The worker is busy while this is at or after `last_completed_ns`.
    started_ns: AtomicU64,
    /// When the last message finished (nanoseconds after the epoch); `NEVER` before the first.
    last_completed_ns: AtomicU64,
    /// Moving average of the time in `consume` per message, over completions (weight
    /// [`SERVICE_WEIGHT`] for the newest), as `f64` nanoseconds' bits; `NEVER` before the first.
    /// One value, written once per completion: a reader never sees half an update.
    service_ns: AtomicU64,
    pub duration: Buckets,
    pub queue_wait: Buckets,
}

impl WorkerStats {
    pub fn new() -> Self {
        Self {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            started_ns: AtomicU64::new(NEVER),
            last_completed_ns: AtomicU64::new(NEVER),
            service_ns: AtomicU64::new(NEVER),
            duration: Buckets::new(),
            queue_wait: Buckets::new(),
        }
    }

    /// A message was taken and starts at `at_ns`. Owning worker only.
    pub fn start(&self, at_ns: u64) {
        self.started_ns
            .store(at_ns.min(NEVER - 1), Ordering::Relaxed);
    }

    /// A started message ended with `outcome`, `at_ns` after the epoch, having taken
    /// `took_ns`. Owning worker only.
    pub fn finish(&self, outcome: Outcome, at_ns: u64, took_ns: u64) {
        bump(&self.outcomes[outcome as usize], 1);
        self.last_completed_ns
            .store(at_ns.min(NEVER - 1), Ordering::Relaxed);
        let took = took_ns as f64;
        let mean = match self.service_ns.load(Ordering::Relaxed) {
            NEVER => took,
            bits => {
                let prev = f64::from_bits(bits);
                prev + SERVICE_WEIGHT * (took - prev)
            }
        };
        self.service_ns.store(mean.to_bits(), Ordering::Relaxed);
    }
}

/// The sum of a consumer's worker blocks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Totals {
    /// Finished messages by [`Outcome`] (ok, transient, invalid, timeout, panic).
    pub outcomes: [u64; 5],
    /// The latest completion (nanoseconds after the epoch), if any.
    pub last_completed_ns: Option<u64>,
    /// When the longest-running message in hand started, if a worker is busy.
    pub busy_since_ns: Option<u64>,
    /// The workers' mean service times (see [`WorkerStats`]), averaged over those that finished
    /// something; `None` before the first completion.
    pub service: Option<std::time::Duration>,
}

impl Totals {
    pub fn of(workers: &[WorkerStats]) -> Self {
        let mut t = Totals::default();
        let (mut service_sum, mut serving) = (0.0, 0u32);
        for w in workers {
            for (sum, c) in t.outcomes.iter_mut().zip(&w.outcomes) {
                *sum += c.load(Ordering::Acquire);
            }
            let last = w.last_completed_ns.load(Ordering::Relaxed);
            let started = w.started_ns.load(Ordering::Relaxed);
            if last != NEVER {
                t.last_completed_ns = Some(t.last_completed_ns.map_or(last, |l| l.max(last)));
            }
            if started != NEVER && (last == NEVER || started >= last) {
                t.busy_since_ns = Some(t.busy_since_ns.map_or(started, |b| b.min(started)));
            }
            let service = w.service_ns.load(Ordering::Relaxed);
            if service != NEVER {
                service_sum += f64::from_bits(service);
                serving += 1;
            }
        }
        if serving > 0 {
            let mean = service_sum / f64::from(serving);
            t.service = Some(std::time::Duration::from_nanos(mean.max(0.0) as u64));
        }
        t
    }

    /// Finished, any outcome.
    pub fn completed(&self) -> u64 {
        self.outcomes.iter().sum()
    }
}
