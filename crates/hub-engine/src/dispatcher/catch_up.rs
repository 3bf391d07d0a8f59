//! `hub_consumer_catch_up_seconds`: how long a consumer needs to work off its backlog, and when
//! to say it never will.
//!
//! The estimate is Little's law on the consumer's own recent service time: with a backlog every
//! worker is busy, so `concurrency` messages finish every mean service time, and the backlog
//! takes `backlog × mean / concurrency`. The mean is a moving average over completions, not
//! over time (each worker keeps one, the newest completion weighing 0.1, so about the last ten
//! count; see `stats.rs`): it does not change while nothing completes, so a stuck consumer's
//! figure never drifts on its own, and the first completion gives a mean at once.
//!
//! Stuck: with a backlog, nothing finished for longer than `max(3 × mean, MIN_PATIENCE)`,
//! counted from the last completion or from when the consumer's current work began, whichever
//! is later (an idle consumer that just got work is not stuck). Then the gauge is `+Inf` until
//! the next completion. Before any completion there is no mean: the figure is a lower bound
//! (the backlog at the pace of the message in hand so far) until [`FIRST_PATIENCE`] has
//! passed without one, then `+Inf`.

use std::time::Duration;

/// The shortest wait without a completion that counts as stuck.
pub(crate) const MIN_PATIENCE: Duration = Duration::from_secs(1);
/// How long a consumer that never finished anything may work on its first messages before it
/// counts as stuck.
pub(crate) const FIRST_PATIENCE: Duration = Duration::from_secs(10);

/// Seconds to work off `backlog` at `concurrency` messages per mean service time; 0 when the
/// backlog is empty; `+Inf` when the consumer counts as stuck (see the module's doc).
/// `stalled_for` is the time since the consumer last made progress.
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
