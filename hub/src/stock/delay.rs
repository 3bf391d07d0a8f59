use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Resources, async_trait,
};
use serde::Deserialize;

/// `type = "delay"`: takes `delay` per message, then succeeds. For demos and load tests, so its
/// figure is exact: `"0ms"` does not wait at all; a timer alone would round up to the runtime's
/// 1 ms tick (a `"1ms"` delay took 2.05 ms), so the last two milliseconds are waited by
/// yielding until the deadline (the worker's thread stays available to other tasks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// Time spent on each message, such as `"250ms"`.
    #[serde(with = "hub_core::duration")]
    pub delay: Duration,
}

struct Delay(Duration);

impl ConsumerConfig for DelayConfig {
    const TYPE: &'static str = "delay";
    const DESCRIPTION: &'static str = "sleeps settings.delay per message (demos, load tests)";

    fn build(self, _: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        Ok(Arc::new(Delay(self.delay)))
    }
}

/// What a timer may overshoot by (its 1 ms tick, and waking up): waited by yielding instead.
const TIMER_SLACK: Duration = Duration::from_millis(2);

#[async_trait]
impl Consumer for Delay {
    async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        if self.0.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.0;
        if let Some(coarse) = self.0.checked_sub(TIMER_SLACK) {
            tokio::time::sleep(coarse).await;
        }
        while tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::metrics::Counter;
    use hub_core::{CancellationToken, Publisher};
    use hub_engine::MemoryBackend;

    /// How long 200 messages take in `consume` (wall time, one after the other).
    async fn handling_time(delay: Duration) -> Duration {
        let consumer = Delay(delay);
        let mem: Arc<dyn hub_core::Backend> = Arc::new(MemoryBackend::new());
        let cx = Context::new(
            "delay",
            Publisher::new(mem, Counter::noop(), Counter::noop()),
            Resources::new(),
            CancellationToken::new(),
        );
        let msg = Message::new("t", serde_json::json!({}));
        let start = std::time::Instant::now();
        for _ in 0..200 {
            consumer
                .consume(&cx, &msg)
                .await
                .expect("delay never fails");
        }
        start.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delay_takes_what_it_says() {
        // Never early; within 40 % in at least one of five runs (a loaded host can only make
        // a run slower, never faster: 285-350 ms were seen with a release build beside it).
        // The bug this guards against, the timer's 1 ms tick, made it 410 ms (2.05 ms each).
        let mut runs = Vec::new();
        for _ in 0..5 {
            let took = handling_time(Duration::from_millis(1)).await;
            assert!(took >= Duration::from_millis(200), "early: {took:?}");
            runs.push(took);
            if took <= Duration::from_millis(280) {
                break;
            }
        }
        assert!(
            runs.iter().any(|t| *t <= Duration::from_millis(280)),
            "200 × 1 ms took {runs:?}"
        );
        let zero = handling_time(Duration::ZERO).await;
        assert!(zero < Duration::from_millis(20), "200 × 0 ms took {zero:?}");
        let coarse = handling_time(Duration::from_millis(5)).await;
        assert!(
            coarse >= Duration::from_secs(1) && coarse <= Duration::from_millis(1200),
            "200 × 5 ms took {coarse:?}"
        );
    }
}
