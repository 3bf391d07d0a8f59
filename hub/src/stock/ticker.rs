use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    BoxError, Context, Message, Pattern, Producer, ProducerConfig, Resources, async_trait,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// `type = "ticker"`: publishes `{"seq": n, "producer": id, ...body}` to `topic` at `rate`
/// messages per second, with optional bursts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickerConfig {
    /// Topic to publish on.
    pub topic: String,
    /// Messages per second (may be fractional, such as 0.5).
    pub rate: f64,
    /// Extra fields merged into every body (a JSON object).
    #[serde(default)]
    pub body: Option<serde_json::Map<String, Value>>,
    /// Extra messages sent all at once, periodically.
    #[serde(default)]
    pub burst: Option<Burst>,
}

/// `[producers.<id>.settings.burst]`: `count` extra messages every `every`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Messages per burst.
    pub count: u64,
    /// Time between bursts, such as `"30s"`.
    #[serde(with = "hub_core::duration")]
    pub every: Duration,
}

struct Ticker {
    cfg: TickerConfig,
}

impl ProducerConfig for TickerConfig {
    const TYPE: &'static str = "ticker";
    const DESCRIPTION: &'static str =
        "publishes to settings.topic at settings.rate messages/s, with optional bursts";

    fn build(self, _: &Resources) -> Result<Arc<dyn Producer>, BoxError> {
        let p = Pattern::new(&self.topic).map_err(|e| format!("topic: {e}"))?;
        if !p.is_literal() {
            return Err(format!("topic {:?}: cannot contain wildcards", self.topic).into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!(
                "rate {}: must be a positive number of messages per second",
                self.rate
            )
            .into());
        }
        Ok(Arc::new(Ticker { cfg: self }))
    }
}

impl Ticker {
    fn message(&self, cx: &Context, seq: u64) -> Message {
        let mut body = self.cfg.body.clone().unwrap_or_default();
        body.insert("seq".into(), json!(seq));
        body.insert("producer".into(), json!(cx.name()));
        Message::new(self.cfg.topic.clone(), Value::Object(body))
    }
}

#[async_trait]
impl Producer for Ticker {
    async fn produce(&self, cx: &Context) -> Result<(), BoxError> {
        // Tick at most every 10 ms and send what the rate owes by then, so high rates do not
        // depend on timer resolution and low rates are exact.
        let period = Duration::from_secs_f64((1.0 / self.cfg.rate).max(0.01));
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seq = 0u64;
        let mut burst_total = 0u64;
        let mut next_burst = self.cfg.burst.as_ref().map(|b| started + b.every);
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let owed = (now.duration_since(started).as_secs_f64() * self.cfg.rate) as u64 + 1;
            if let (Some(at), Some(b)) = (next_burst, &self.cfg.burst)
                && now >= at
            {
                burst_total += b.count;
                next_burst = Some(at + b.every);
            }
            let target = owed + burst_total;
            while seq < target {
                if let Err(e) = cx.publish(self.message(cx, seq)).await {
                    tracing::warn!(producer = %cx.name(), seq, error = %e, "Ticker could not publish.");
                    break;
                }
                seq += 1;
            }
        }
    }
}
