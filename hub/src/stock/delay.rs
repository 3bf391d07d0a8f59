use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Resources, async_trait,
};
use serde::Deserialize;

/// `type = "delay"`: sleeps `delay` per message, then succeeds. For demos and load tests.
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

#[async_trait]
impl Consumer for Delay {
    async fn consume(&self, _cx: &Context, _msg: &Message) -> Result<(), ConsumeError> {
        tokio::time::sleep(self.0).await;
        Ok(())
    }
}
