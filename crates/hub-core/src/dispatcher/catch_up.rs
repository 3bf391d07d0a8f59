//! `hub_consumer_catch_up_seconds`: how long a consumer needs to work off its backlog, and when
//! to say it never will.
//!
//! The estimate is Little's law on the consumer's own recent service time: with a backlog every
//! worker is busy, so `concurrency` messages finish every mean service time, and the backlog
//! takes `backlog × mean / concurrency`. The mean comes from the time spent in `consume` by the
//! messages that finished in the last [`WINDOW`]; when none finished in that window it keeps
//! the last value instead of decaying, so a stuck consumer's figure does not drift. The first
//! completion gives a mean at once.
//!
//! Stuck: with a backlog, nothing finished for longer than `max(3 × mean, MIN_PATIENCE)`,
//! counted from the last completion or from when the consumer's current work began, whichever
//! is later (an idle consumer that just got work is not stuck). Then the gauge is `+Inf` until
//! the next completion. Before any completion there is no mean: the figure is a lower bound
//! (the backlog at the pace of the message in hand so far) until [`FIRST_PATIENCE`] has
//! passed without one, then `+Inf`.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Completions in this window make the mean service time.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);
/// The shortest wait without a completion that counts as stuck.
pub(crate) const MIN_PATIENCE: Duration = Duration::from_secs(1);
/// How long a consumer that never finished anything may work on its first messages before it
/// counts as stuck.
pub(crate) const FIRST_PATIENCE: Duration = Duration::from_secs(10);
/// Samples closer together than this are not kept (scrapes and ticks interleave), which bounds
/// the window to `WINDOW / MIN_SAMPLE` samples.
const MIN_SAMPLE: Duration = Duration::from_millis(200);

/// One reading of a consumer's totals.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    completed: u64,
    duration_ns: u64,
}

/// A consumer's recent mean service time, from successive readings of its totals.
#[derive(Debug)]
pub(crate) struct ServiceTime {
    samples: VecDeque<Sample>,
    mean: Option<Duration>,
}

impl ServiceTime {
    pub fn new(now: Instant) -> Self {
        let mut samples = VecDeque::new();
        samples.push_back(Sample {
            at: now,
            completed: 0,
            duration_ns: 0,
        });
        Self {
            samples,
            mean: None,
        }
    }

    /// Folds in the totals read at `now` (messages completed, their total time in `consume`);
    /// returns the mean service time of the completions of the last [`WINDOW`], or of the last
    /// ones seen if none finished in it; `None` before the first completion.
    pub fn sample(&mut self, now: Instant, completed: u64, duration_ns: u64) -> Option<Duration> {
        // Keep one sample at or before the window's start as the base.
        while self.samples.len() >= 2 && now.saturating_duration_since(self.samples[1].at) >= WINDOW
        {
            self.samples.pop_front();
        }
        if let Some(base) = self.samples.front() {
            let n = completed.saturating_sub(base.completed);
            if let Some(ns) = duration_ns.saturating_sub(base.duration_ns).checked_div(n) {
                self.mean = Some(Duration::from_nanos(ns));
            }
        }
        let newest = self.samples.back().map(|s| s.at);
        if newest.is_none_or(|t| now.saturating_duration_since(t) >= MIN_SAMPLE) {
            self.samples.push_back(Sample {
                at: now,
                completed,
                duration_ns,
            });
        }
        self.mean
    }
}

/// Seconds to work off `backlog` at `concurrency` messages per mean service time; 0 when the
/// backlog is empty; `+Inf` when the consumer counts as stuck (see the module's doc).
/// `stalled_for` is the time since the consumer last made progress (see the module's doc).
pub(crate) fn catch_up_seconds(
    backlog: usize,
    concurrency: usize,
    mean: Option<Duration>,
    stalled_for: Duration,
) -> f64 {
    if backlog == 0 {
        return 0.0;
    }
    let workers = concurrency.max(1) as f64;
    match mean {
        None if stalled_for > FIRST_PATIENCE => f64::INFINITY,
        None => backlog as f64 * stalled_for.as_secs_f64() / workers,
        Some(mean) if stalled_for > (mean * 3).max(MIN_PATIENCE) => f64::INFINITY,
        Some(mean) => backlog as f64 * mean.as_secs_f64() / workers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_completion_gives_a_mean_at_once() {
        let t0 = Instant::now();
        let mut st = ServiceTime::new(t0);
        assert_eq!(st.sample(t0 + 100 * MS, 0, 0), None);
        // One message of 1.4 s finished by t = 2 s.
        assert_eq!(st.sample(t0 + 2 * S, 1, 1_400_000_000), Some(1400 * MS));
    }

    #[test]
    fn the_mean_covers_the_window_and_does_not_decay_while_nothing_completes() {
        let t0 = Instant::now();
        let mut st = ServiceTime::new(t0);
        // 30 s of 10 ms messages, then 30 s of 100 ms ones, sampled every second.
        let (mut done, mut busy) = (0u64, 0u64);
        for s in 1..=60u32 {
            let each = if s <= 30 { 10 } else { 100 };
            let n = 1000 / each;
            done += n;
            busy += n * each * 1_000_000;
            st.sample(t0 + s * S, done, busy);
        }
        assert_eq!(st.sample(t0 + 60 * S, done, busy), Some(100 * MS));
        // Nothing completes for five minutes: the mean stays.
        for s in 61..=360u32 {
            assert_eq!(st.sample(t0 + s * S, done, busy), Some(100 * MS));
        }
        // The window holds at most WINDOW / MIN_SAMPLE + 1 samples.
        for k in 0..1000u32 {
            st.sample(t0 + 400 * S + k * 10 * MS, done, busy);
        }
        assert!(st.samples.len() <= 52, "{}", st.samples.len());
    }

    #[test]
    fn catch_up_cases() {
        let mean = Some(100 * MS);
        assert_eq!(catch_up_seconds(0, 1, None, 60 * S), 0.0);
        assert_eq!(catch_up_seconds(50, 1, mean, 50 * MS), 5.0);
        assert_eq!(catch_up_seconds(50, 5, mean, 50 * MS), 1.0);
        // Stuck: nothing for longer than max(3 × mean, 1 s).
        assert_eq!(catch_up_seconds(50, 1, mean, 900 * MS), 5.0);
        assert_eq!(catch_up_seconds(50, 1, mean, 1100 * MS), f64::INFINITY);
        // A slow consumer (20 s a message) is not stuck after 15 s, and is after 61 s.
        assert_eq!(catch_up_seconds(2, 1, Some(20 * S), 15 * S), 40.0);
        assert_eq!(catch_up_seconds(2, 1, Some(20 * S), 61 * S), f64::INFINITY);
        // Before any completion: a lower bound, then +Inf.
        assert_eq!(catch_up_seconds(10, 2, None, 3 * S), 15.0);
        assert_eq!(catch_up_seconds(10, 2, None, 11 * S), f64::INFINITY);
    }
}
