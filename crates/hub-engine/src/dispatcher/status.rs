//! What the status page and `hub top` show of each consumer: pause and resume, the last error,
//! outcome counts, a run state, and an hour of history kept in bounded memory.
//!
//! History: the engine samples every consumer once a second ([`Dispatcher::record_history`]):
//! backlog, oldest age and the rates in and out since the last sample. The last
//! [`FINE_SAMPLES`] samples are kept at that resolution (10 minutes); every
//! [`COARSE_EVERY`] of them are also folded into one coarse sample (the maxima of backlog and
//! age, the mean rates), of which the last [`COARSE_SAMPLES`] are kept (an hour). Each consumer
//! holds at most `FINE_SAMPLES + COARSE_SAMPLES + COARSE_EVERY` samples of 40 bytes: 38 KiB.

use std::collections::VecDeque;
use std::sync::PoisonError;
use std::time::Duration;

use hub_core::{Message, Timestamp, Verdict};

use super::gauges::ConsumerState;
use super::{Dispatcher, Slot};

/// Samples kept at one-second resolution (10 minutes).
pub const FINE_SAMPLES: usize = 600;
/// Fine samples folded into one coarse sample (10 s).
pub const COARSE_EVERY: usize = 10;
/// Coarse samples kept (an hour).
pub const COARSE_SAMPLES: usize = 360;

/// One point of a consumer's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When (Unix time, seconds).
    pub at: f64,
    /// Queued messages (the maximum over a coarse sample's span).
    pub backlog: u64,
    /// Age of the oldest queued message, seconds (the maximum over a coarse span).
    pub oldest_age: f64,
    /// Messages routed to the consumer per second (the mean over a coarse span).
    pub in_per_s: f64,
    /// Messages finished per second, any outcome (the mean over a coarse span).
    pub out_per_s: f64,
}

/// A consumer's recent history: `fine` (1 s) and `coarse` (10 s), oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// One sample a second, the last [`FINE_SAMPLES`].
    pub fine: Vec<Sample>,
    /// One sample per [`COARSE_EVERY`] seconds, the last [`COARSE_SAMPLES`].
    pub coarse: Vec<Sample>,
}

/// The samples as they are kept, with what the next sample's rates are computed from.
#[derive(Debug, Default)]
pub(super) struct HistoryRing {
    fine: VecDeque<Sample>,
    coarse: VecDeque<Sample>,
    /// Fine samples not yet folded into a coarse one.
    pending: Vec<Sample>,
    /// The previous sample's time (seconds) and totals: received, finished, failed, ok,
    /// throttled.
    last: Option<Totals>,
    /// From the last two samples: failures and no success; throttled.
    failing: bool,
    throttled: bool,
}

#[derive(Debug, Clone, Copy)]
struct Totals {
    at: f64,
    received: u64,
    finished: u64,
    failed: u64,
    ok: u64,
    throttled: Duration,
}

impl HistoryRing {
    fn push(&mut self, s: Sample) {
        if self.fine.len() == FINE_SAMPLES {
            self.fine.pop_front();
        }
        self.fine.push_back(s);
        self.pending.push(s);
        if self.pending.len() == COARSE_EVERY {
            let n = self.pending.len() as f64;
            let folded = Sample {
                at: s.at,
                backlog: self.pending.iter().map(|p| p.backlog).max().unwrap_or(0),
                oldest_age: self
                    .pending
                    .iter()
                    .map(|p| p.oldest_age)
                    .fold(0.0, f64::max),
                in_per_s: self.pending.iter().map(|p| p.in_per_s).sum::<f64>() / n,
                out_per_s: self.pending.iter().map(|p| p.out_per_s).sum::<f64>() / n,
            };
            self.pending.clear();
            if self.coarse.len() == COARSE_SAMPLES {
                self.coarse.pop_front();
            }
            self.coarse.push_back(folded);
        }
    }

    /// How many samples it holds (bounded by the constants above).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.fine.len() + self.coarse.len() + self.pending.len()
    }
}

/// A consumer's last failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// When it ended.
    pub at: Timestamp,
    /// The message's id.
    pub message_id: String,
    /// What the consumer (or the hub: a timeout, a panic) said.
    pub reason: String,
}

/// What a consumer is doing, as an operator reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Taking messages as they come.
    Running,
    /// Paused by an operator.
    Paused,
    /// Waiting for its rate limit in the last second.
    Throttled,
    /// Failing: failures and no success in the last second.
    Failing,
}

impl RunState {
    /// `running`, `paused`, `throttled` or `failing`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Throttled => "throttled",
            Self::Failing => "failing",
        }
    }
}

/// Counts since the hub started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Routed to the consumer.
    pub received: u64,
    /// Finished OK.
    pub ok: u64,
    /// Failed with a transient error.
    pub transient: u64,
    /// Failed as invalid.
    pub invalid: u64,
    /// Cut off by the consumer's `timeout`.
    pub timeout: u64,
    /// Panicked.
    pub panic: u64,
    /// Dropped by `when_full`, cut off at shutdown, or withdrawn by the backend unstarted.
    pub dropped: u64,
    /// Set aside for another attempt by the hub.
    pub retried: u64,
    /// Given up on: dead-lettered by the hub, or rejected to a broker that dead-letters.
    pub dead_lettered: u64,
}

/// One consumer as the status page shows it.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    /// Its queue and progress now.
    pub state: ConsumerState,
    /// What it is doing.
    pub run: RunState,
    /// Counts since start.
    pub outcomes: Outcomes,
    /// Messages in and out per second over the last second (0 before the first two samples).
    pub in_per_s: f64,
    /// Messages finished per second over the last second.
    pub out_per_s: f64,
    /// The last failure, if any.
    pub last_error: Option<LastError>,
}

impl Slot {
    /// Notes a failed message (the reason of `verdict`) as the consumer's last error.
    pub(super) fn note_failure(&self, message: &Message, verdict: &Verdict) {
        let reason = match verdict {
            Verdict::Retry { reason, .. } | Verdict::Reject { reason } => reason.clone(),
            Verdict::Ack | Verdict::Requeue => return,
        };
        let error = LastError {
            at: Timestamp::now(),
            message_id: message.id().to_owned(),
            reason,
        };
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

/// An unknown consumer name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no consumer named {0:?}")]
pub struct UnknownConsumer(pub String);

impl Dispatcher {
    fn slot(&self, name: &str) -> Result<&Slot, UnknownConsumer> {
        self.shared
            .slots
            .iter()
            .find(|s| &*s.name == name)
            .ok_or_else(|| UnknownConsumer(name.to_owned()))
    }

    /// Pauses consumer `name`: its workers take nothing more (what is in hand finishes), its
    /// queue keeps filling under its `when_full` policy, `hub_consumer_paused` is 1. A shutdown
    /// drains a paused consumer all the same. Returns whether it was running.
    ///
    /// # Errors
    /// No consumer has that name.
    pub fn pause(&self, name: &str) -> Result<bool, UnknownConsumer> {
        let changed = self.slot(name)?.queue.set_paused(true);
        self.refresh_gauges();
        Ok(changed)
    }

    /// Resumes consumer `name` where it stopped. Returns whether it was paused.
    ///
    /// # Errors
    /// No consumer has that name.
    pub fn resume(&self, name: &str) -> Result<bool, UnknownConsumer> {
        let changed = self.slot(name)?.queue.set_paused(false);
        self.refresh_gauges();
        Ok(changed)
    }

    /// The live tail of consumer `name`: the last messages it received, oldest first (empty
    /// when the live tail is off: [`DispatcherBuilder::live_tail`](super::DispatcherBuilder::live_tail)).
    ///
    /// # Errors
    /// No consumer has that name.
    pub fn tail(&self, name: &str) -> Result<Vec<super::TailEntry>, UnknownConsumer> {
        Ok(self.slot(name)?.queue.tail())
    }

    /// Samples every consumer for its history (the engine calls this once a second).
    pub fn record_history(&self) {
        let at = Timestamp::now().as_millisecond() as f64 / 1000.0;
        for slot in &self.shared.slots {
            let (state, counts) = self.state_of(slot);
            let [ok, transient, invalid, timeout, panic] = counts.totals.outcomes;
            let now = Totals {
                at,
                received: counts.queue.received,
                finished: ok + transient + invalid + timeout + panic,
                failed: transient + invalid + timeout + panic,
                ok,
                throttled: slot
                    .throttle
                    .as_ref()
                    .map_or(Duration::ZERO, |t| t.waited()),
            };
            let mut h = slot.history.lock().unwrap_or_else(PoisonError::into_inner);
            let (in_per_s, out_per_s) = match h.last {
                Some(prev) if now.at > prev.at => {
                    let dt = now.at - prev.at;
                    h.failing = now.failed > prev.failed && now.ok == prev.ok;
                    h.throttled = now.throttled > prev.throttled;
                    (
                        now.received.saturating_sub(prev.received) as f64 / dt,
                        now.finished.saturating_sub(prev.finished) as f64 / dt,
                    )
                }
                _ => (0.0, 0.0),
            };
            h.last = Some(now);
            h.push(Sample {
                at,
                backlog: state.backlog as u64,
                oldest_age: state.oldest_age.as_secs_f64(),
                in_per_s,
                out_per_s,
            });
        }
    }

    /// Every consumer's status, in registration order.
    pub fn status(&self) -> Vec<ConsumerStatus> {
        self.shared
            .slots
            .iter()
            .map(|slot| self.status_of(slot))
            .collect()
    }

    /// One consumer's status and history.
    ///
    /// # Errors
    /// No consumer has that name.
    pub fn consumer_status(
        &self,
        name: &str,
    ) -> Result<(ConsumerStatus, History), UnknownConsumer> {
        let slot = self.slot(name)?;
        let status = self.status_of(slot);
        let h = slot.history.lock().unwrap_or_else(PoisonError::into_inner);
        let history = History {
            fine: h.fine.iter().copied().collect(),
            coarse: h.coarse.iter().copied().collect(),
        };
        Ok((status, history))
    }

    fn status_of(&self, slot: &Slot) -> ConsumerStatus {
        let (state, counts) = self.state_of(slot);
        let [ok, transient, invalid, timeout, panic] = counts.totals.outcomes;
        let outcomes = Outcomes {
            received: counts.queue.received,
            ok,
            transient,
            invalid,
            timeout,
            panic,
            dropped: counts.queue.dropped + counts.shutdown_dropped + counts.withdrawn,
            retried: counts.queue.retried,
            dead_lettered: slot
                .dead_lettered
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let h = slot.history.lock().unwrap_or_else(PoisonError::into_inner);
        let last = h.fine.back().copied();
        let run = if state.paused {
            RunState::Paused
        } else if h.failing {
            RunState::Failing
        } else if h.throttled {
            RunState::Throttled
        } else {
            RunState::Running
        };
        drop(h);
        ConsumerStatus {
            run,
            outcomes,
            in_per_s: last.map_or(0.0, |s| s.in_per_s),
            out_per_s: last.map_or(0.0, |s| s.out_per_s),
            last_error: slot
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            state,
        }
    }

    /// Samples held in `name`'s history (bounded: see the module's documentation).
    #[cfg(test)]
    pub(super) fn history_len(&self, name: &str) -> usize {
        self.slot(name).map_or(0, |s| {
            s.history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
    }
}
