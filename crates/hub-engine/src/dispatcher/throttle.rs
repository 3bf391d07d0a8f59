//! A consumer's rate limit: a token bucket (governor's GCRA) on tokio's clock, taken before a
//! message leaves the consumer's queue, so a throttled consumer's backlog, oldest age and
//! catch-up show the wait.
//!
//! governor's own `until_ready` sleeps on a timer of its own and reads the TSC; this limiter
//! reads tokio's clock and sleeps with tokio, so a paused test clock drives it exactly and the
//! runtime's timer wheel is the only timer.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use hub_core::RateLimit;

/// Nanoseconds after a fixed start on tokio's clock.
#[derive(Clone)]
struct TokioClock {
    start: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.start.elapsed())
    }
}

/// One consumer's limiter, shared by its workers.
pub(crate) struct Throttle {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
    /// Time waited for it, in nanoseconds (before calls, and inside them through
    /// [`hub_core::Context::pace`]).
    waited_ns: AtomicU64,
}

impl Throttle {
    /// The limiter for `limit` (rate and burst at least 1, period at least 1 ns).
    pub fn new(limit: &RateLimit) -> Self {
        let interval = limit.interval().max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
        // `with_period` fails only on a zero period, excluded above.
        let quota = Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let clock = TokioClock {
            start: Instant::now(),
        };
        Self {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            waited_ns: AtomicU64::new(0),
        }
    }

    /// Waits until one more call is allowed and takes it; returns how long it waited (also
    /// added to [`Throttle::waited`]).
    pub async fn acquire(&self) -> Duration {
        let mut waited = Duration::ZERO;
        loop {
            match self.limiter.check() {
                Ok(()) => break,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    tokio::time::sleep(wait).await;
                    waited += wait;
                }
            }
        }
        if !waited.is_zero() {
            self.waited_ns.fetch_add(
                u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        waited
    }

    /// Time waited for it so far.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }
}

/// What a consumer's [`hub_core::Context::pace`] takes from.
#[async_trait::async_trait]
impl hub_core::Pacer for Throttle {
    async fn take(&self, n: u32) {
        for _ in 0..n {
            self.acquire().await;
        }
    }
}
