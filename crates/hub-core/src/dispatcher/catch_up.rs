//! The recent completion rate behind `hub_consumer_catch_up_seconds`.

use std::time::Duration;

use tokio::time::Instant;

/// Time constant of the moving average: completions over roughly the last ten seconds count most.
const TAU: f64 = 10.0;
/// Samples closer together than this reuse the previous estimate (scrapes and ticks interleave).
const MIN_SAMPLE: Duration = Duration::from_millis(200);

/// An exponentially weighted moving average of completions per second, time-weighted so that
/// irregular sampling (scrapes) gives the same answer as a steady tick.
#[derive(Debug)]
pub(crate) struct Rate {
    last_at: Instant,
    last_count: u64,
    per_second: Option<f64>,
}

impl Rate {
    pub fn new(now: Instant) -> Self {
        Self {
            last_at: now,
            last_count: 0,
            per_second: None,
        }
    }

    /// Folds in the completion count seen at `now`; returns the current rate.
    pub fn sample(&mut self, now: Instant, count: u64) -> f64 {
        let dt = now.saturating_duration_since(self.last_at);
        if dt >= MIN_SAMPLE {
            let dt = dt.as_secs_f64();
            let inst = count.saturating_sub(self.last_count) as f64 / dt;
            self.per_second = Some(match self.per_second {
                None => inst,
                Some(prev) => prev + (1.0 - (-dt / TAU).exp()) * (inst - prev),
            });
            self.last_at = now;
            self.last_count = count;
        }
        self.per_second.unwrap_or(0.0)
    }
}

/// Seconds to work off `backlog`: 0 when empty; +Inf when nothing completes (never, or not for
/// the longer of ten seconds and three mean service intervals); else backlog / rate.
pub(crate) fn catch_up_seconds(
    backlog: usize,
    rate: f64,
    since_last_completion: Option<Duration>,
) -> f64 {
    if backlog == 0 {
        return 0.0;
    }
    let Some(idle) = since_last_completion else {
        return f64::INFINITY;
    };
    let patience = if rate > 0.0 {
        (3.0 / rate).max(TAU)
    } else {
        TAU
    };
    if rate <= 0.0 || idle.as_secs_f64() > patience {
        return f64::INFINITY;
    }
    backlog as f64 / rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_is_learned() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0);
        let mut rate = 0.0;
        for s in 1..=30u64 {
            rate = r.sample(t0 + Duration::from_secs(s), s * 100);
        }
        assert!((rate - 100.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn rate_decays_when_completions_stop() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0);
        r.sample(t0 + Duration::from_secs(1), 100);
        let later = r.sample(t0 + Duration::from_secs(11), 100);
        assert!(later < 100.0 * 0.4 && later > 0.0, "{later}");
    }

    #[test]
    fn catch_up_cases() {
        assert_eq!(catch_up_seconds(0, 0.0, None), 0.0);
        assert_eq!(catch_up_seconds(5, 0.0, None), f64::INFINITY);
        assert_eq!(
            catch_up_seconds(50, 10.0, Some(Duration::from_millis(50))),
            5.0
        );
        assert_eq!(
            catch_up_seconds(50, 10.0, Some(Duration::from_secs(11))),
            f64::INFINITY
        );
        // A slow consumer (one message per 20 s) is not declared stuck after 15 s.
        assert_eq!(
            catch_up_seconds(2, 0.05, Some(Duration::from_secs(15))),
            40.0
        );
    }
}
